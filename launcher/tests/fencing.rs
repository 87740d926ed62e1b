//! The per-rank fencing lock, with real launchers, a real Python trainer
//! caught mid-save and real signals: a force-deleted pod's trainer that is
//! still saving keeps the next attempt's trainer from starting.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

/// A launcher for the fenced trainer: report and /dev/shm its own (in
/// `dir`), the checkpoint directory `shared`, as two pods of one rank share
/// the volume.
fn fenced(dir: &TempDir, shared: &Path, release: &Path, flags: &[&str]) -> Command {
    let fx = fixture("fenced.py");
    let mut c = launcher_with(
        dir,
        flags,
        &["python3", fx.to_str().unwrap(), release.to_str().unwrap()],
    );
    c.env("TJ_CHECKPOINT_DIR", shared);
    c
}

/// Starts the first attempt and waits until its trainer is mid-save; returns
/// the launcher and the trainer's pid.
fn first_attempt_mid_save(dir: &TempDir, shared: &Path, release: &Path) -> (Running, i32) {
    let mut a = Running::start(fenced(dir, shared, release, &["--attempt", "1"]));
    let line = a.wait_line("pid ");
    let pid = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    a.wait_line("saving");
    assert_eq!(read_report(&dir.report_path()).unwrap()["lock"], "held");
    (a, pid)
}

fn lock_state(dir: &TempDir) -> Option<String> {
    read_report(&dir.report_path())?["lock"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn a_trainer_still_saving_keeps_the_next_attempt_waiting_until_it_is_gone() {
    let (d1, d2) = (TempDir::new("fence-a1"), TempDir::new("fence-a2"));
    let shared = d1.ckpt();
    let release = d1.path().join("release");
    let (mut a, trainer) = first_attempt_mid_save(&d1, &shared, &release);

    // The pod is force-deleted and its launcher dies, but the trainer lives
    // on, still holding the lock it inherited.
    a.signal(libc::SIGKILL);
    a.child.wait().unwrap();
    assert!(alive(trainer));

    let mut cmd = fenced(&d2, &shared, &release, &["--attempt", "2"]);
    cmd.env("FENCED_PREDECESSOR", trainer.to_string());
    let mut b = Running::start(cmd);
    b.wait_until("the second launcher to wait for the lock", |r| {
        r.stderr().contains("waiting for") && lock_state(&d2).as_deref() == Some("waiting")
    });
    assert!(b.stderr().contains("rank-0.lock"), "{}", b.stderr());
    assert!(
        !b.stdout().contains("pid "),
        "trainer started: {}",
        b.stdout()
    );
    assert!(
        shared.join("step-1.ckpt.tmp").exists(),
        "the waiting launcher must not clean a live writer's temporary"
    );

    // The save finishes and the old trainer exits: only now may the new one
    // start, and it resumes from what the old one saved.
    std::fs::File::create(&release).unwrap();
    let line = b.wait_line("pid ");
    assert!(
        line.ends_with("resume 1 predecessor gone"),
        "{line}\n{}",
        b.stderr()
    );
    let f = b.wait();
    assert_eq!(f.code(), 0, "{}", f.stderr);
    assert!(f.stderr.contains("got "), "{}", f.stderr);
    let rep = d2.report();
    assert_eq!(rep["lock"], "held");
    assert!(rep["lockWaitSeconds"].as_f64().unwrap() > 0.0, "{rep}");
    assert_eq!(rep["resumedFrom"]["step"], 1);
    assert_eq!(rep["attempt"], 2);
    a.wait_until("the first trainer's output to end", |r| {
        r.stdout().contains("saved 1")
    });
    eprintln!(
        "fencing: the next launcher waited {}s for the old trainer",
        rep["lockWaitSeconds"]
    );
}

#[test]
fn the_wait_is_bounded_a_stop_signal_ends_it_and_other_ranks_are_not_held() {
    let d1 = TempDir::new("fence-b1");
    let shared = d1.ckpt();
    let release = d1.path().join("release");
    let (a, _) = first_attempt_mid_save(&d1, &shared, &release);

    let d2 = TempDir::new("fence-b2");
    let f = run(fenced(
        &d2,
        &shared,
        &release,
        &["--lock-timeout-seconds", "0.3"],
    ));
    assert_eq!(f.code(), 75, "{}", f.stderr);
    assert!(f.stderr.contains("gave up waiting for"), "{}", f.stderr);
    assert!(f.stderr.contains("rank-0.lock"), "{}", f.stderr);
    assert!(!f.stdout.contains("pid "), "trainer started: {}", f.stdout);
    let rep = d2.report();
    assert_eq!(rep["state"], "failed");
    assert_eq!(rep["exitCode"], 75);
    assert_eq!(rep["lock"], "timedOut");
    assert!(rep["lockWaitSeconds"].as_f64().unwrap() >= 0.3, "{rep}");

    // A pod deleted while it waits stops waiting.
    let d3 = TempDir::new("fence-b3");
    let mut b = Running::start(fenced(&d3, &shared, &release, &[]));
    b.wait_until("the third launcher to wait", |_| {
        lock_state(&d3).as_deref() == Some("waiting")
    });
    b.signal(libc::SIGTERM);
    let f = b.wait();
    assert_eq!(f.code(), 128 + libc::SIGTERM, "{}", f.stderr);
    assert!(!f.stdout.contains("pid "), "trainer started: {}", f.stdout);
    assert_eq!(d3.report()["state"], "signalled");

    // Rank 1 has its own lock.
    let d4 = TempDir::new("fence-b4");
    let mut cmd = launcher_with(&d4, &["--rank", "1"], &["true"]);
    cmd.env("TJ_CHECKPOINT_DIR", &shared);
    let f = run(cmd);
    assert_eq!(f.code(), 0, "{}", f.stderr);
    assert_eq!(d4.report()["lock"], "held");
    assert_eq!(d4.report()["lockWaitSeconds"], 0.0);
    assert!(shared.join(".tj/rank-1.lock").is_file());

    assert!(
        shared.join("step-1.ckpt.tmp").exists(),
        "left alone throughout"
    );
    std::fs::File::create(&release).unwrap();
    let f = a.wait();
    assert_eq!(f.code(), 0, "{}", f.stderr);
    assert!(f.stdout.contains("saved 1"), "{}", f.stdout);
}
