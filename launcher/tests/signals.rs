//! Signals, exits and reaping, with the real launcher binary, real Python
//! trainers and real signals.

mod support;

use support::*;

fn train(dir: &TempDir, extra: &[&str]) -> std::process::Command {
    let t = train_py();
    let mut cmd = vec!["python3", t.to_str().unwrap()];
    cmd.extend_from_slice(extra);
    launcher(dir, &cmd)
}

fn field<'a>(line: &'a str, after: &str) -> &'a str {
    line.split(after)
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
}

#[test]
fn sigterm_mid_run_saves_reports_and_next_start_resumes_at_next_step() {
    let dir = TempDir::new("sigterm");
    let args = [
        "--total-steps",
        "40",
        "--step-seconds",
        "0.02",
        "--ckpt-every",
        "1000",
    ];
    let mut r = Running::start(train(&dir, &args));
    r.wait_line("step 5 ");
    r.signal(libc::SIGTERM);
    let f = r.wait();

    assert_eq!(f.code(), 0, "stderr:\n{}", f.stderr);
    let saved = f.line_starting("saved step ").expect("saved on SIGTERM");
    assert!(saved.contains("(SIGTERM)"), "{saved}");
    let stopped_at: u64 = field(&saved, "saved step ").parse().unwrap();
    assert_eq!(
        f.steps().last(),
        Some(&stopped_at),
        "finished the step it was in, then stopped"
    );
    assert!(stopped_at < 40, "stopped early, at {stopped_at}");
    let stop = f.line_starting("stop: SIGTERM").unwrap();
    assert!(stop.contains("deadline from launcher"), "{stop}");
    let left: f64 = field(&stop, "time_left ")
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(left > 0.0 && left <= 29.0, "{stop}");

    let rep = dir.report();
    assert_eq!(rep["state"], "signalled");
    assert_eq!(rep["exitCode"], 0);
    assert_eq!(rep["signal"]["name"], "SIGTERM");
    assert!(rep["signal"]["atUnixMs"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(rep["signalToExitSeconds"].as_f64().unwrap() > 0.0);
    assert!(rep.get("termSignal").is_none());
    assert_eq!(rep["signalHonoured"], true, "{rep}");
    assert_eq!(rep["saves"]["count"], 1, "{rep}");
    assert!(rep["saves"]["lastSeconds"].as_f64().unwrap() > 0.0, "{rep}");
    assert!(rep["saves"]["lastBytes"].as_u64().unwrap() > 0);
    assert!(rep["saves"]["p95Seconds"].as_f64().unwrap() > 0.0);
    assert!(rep["saves"]["bytesPerSecond"].as_f64().unwrap() > 0.0);
    assert_eq!(rep["lastCheckpoint"]["step"], stopped_at);
    assert!(rep["lastCheckpoint"]["path"]
        .as_str()
        .unwrap()
        .ends_with(&format!("step-{stopped_at}")));

    let f2 = run(train(&dir, &args));
    assert_eq!(f2.code(), 0, "stderr:\n{}", f2.stderr);
    assert!(
        f2.stdout
            .starts_with(&format!("resumed from step {stopped_at} ")),
        "{}",
        f2.stdout
    );
    assert_eq!(f2.steps().first(), Some(&(stopped_at + 1)));
    assert_eq!(f2.steps().last(), Some(&40));
    let rep = dir.report();
    assert_eq!(rep["state"], "completed");
    assert_eq!(rep["resumedFrom"]["step"], stopped_at);
    assert_eq!(rep["lastCheckpoint"]["step"], 40);
}

#[test]
fn five_preemptions_end_with_the_same_weights_and_loss_as_an_uninterrupted_run() {
    let base = [
        "--total-steps",
        "60",
        "--step-seconds",
        "0.01",
        "--ckpt-every",
        "7",
    ];
    let clean = TempDir::new("uninterrupted");
    let want = run(train(&clean, &base));
    assert_eq!(want.code(), 0, "{}", want.stderr);
    let want_final = want.line_starting("final ").expect("final line");

    let dir = TempDir::new("preempted");
    let mut resume_at = 0u64;
    for i in 0..5 {
        // Alternate the two layouts: resume must not care which was written.
        let fmt = if i % 2 == 0 { "dir" } else { "file" };
        let mut args = base.to_vec();
        args.extend(["--format", fmt]);
        let mut r = Running::start(train(&dir, &args));
        r.wait_line(&format!("step {} ", resume_at + 3));
        r.signal(libc::SIGTERM);
        let f = r.wait();
        assert_eq!(f.code(), 0, "preemption {i}: {}", f.stderr);
        assert_eq!(
            f.steps().first(),
            Some(&(resume_at + 1)),
            "preemption {i} resumed where the last stopped"
        );
        let stopped = *f.steps().last().unwrap();
        assert!(
            stopped < 60,
            "preemption {i} came too late to interrupt anything"
        );
        assert_eq!(dir.report()["state"], "signalled");
        assert_eq!(dir.report()["lastCheckpoint"]["step"], stopped);
        resume_at = stopped;
    }
    let last = run(train(&dir, &base));
    assert_eq!(last.code(), 0, "{}", last.stderr);
    assert_eq!(last.steps().first(), Some(&(resume_at + 1)));
    assert_eq!(last.line_starting("final ").unwrap(), want_final);
    assert_eq!(dir.report()["state"], "completed");
}

#[test]
fn dataloader_like_workers_survive_sigterm_and_the_trainer_checkpoints() {
    let dir = TempDir::new("dataloader");
    let fx = fixture("dataloader_trainer.py");
    let mut r = Running::start(launcher(&dir, &["python3", fx.to_str().unwrap()]));
    let workers: Vec<i32> = r.wait_line("workers ")["workers ".len()..]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    r.wait_line("step 3");
    r.signal(libc::SIGTERM);
    let f = r.wait();
    assert_eq!(f.code(), 0, "stdout:\n{}\nstderr:\n{}", f.stdout, f.stderr);
    assert!(f.stdout.contains("workers stopped cleanly"), "{}", f.stdout);
    let saved = f.line_starting("saved step ").unwrap();
    let step: u64 = field(&saved, "saved step ").parse().unwrap();
    assert!(dir.ckpt().join(format!("step-{step}.ckpt")).is_file());
    let rep = dir.report();
    assert_eq!(rep["state"], "signalled");
    assert_eq!(rep["lastCheckpoint"]["step"], step);
    assert_eq!(workers.len(), 3);
    assert!(workers.iter().all(|&w| !exists(w)), "workers reaped");
}

/// The control experiment: the same trainer, with SIGTERM sent to its whole
/// process group (what a naive init would do), dies without saving. This is
/// what makes the test above mean something.
#[test]
fn control_group_sigterm_crashes_the_dataloader_like_trainer() {
    let dir = TempDir::new("dataloader-group");
    let fx = fixture("dataloader_trainer.py");
    let mut r = Running::start(launcher(&dir, &["python3", fx.to_str().unwrap()]));
    r.wait_line("step 3");
    signal(-r.pid(), libc::SIGTERM);
    let f = r.wait();
    assert_ne!(f.code(), 0);
    // The workers died of the group's SIGTERM; the main process notices
    // either in its SIGCHLD handler or as a broken pipe to a dead worker,
    // whichever comes first under load.
    assert!(
        f.stderr.contains("is killed by signal") || f.stderr.contains("BrokenPipe"),
        "{}",
        f.stderr
    );
    assert_eq!(dir.report()["state"], "signalled");
    assert_ne!(dir.report()["exitCode"], 0);
}

#[test]
fn trainer_behind_a_shell_still_gets_sigterm() {
    let t = train_py();
    let t = t.to_str().unwrap();
    let args = "--total-steps 400 --step-seconds 0.02 --ckpt-every 1000";
    // dash forks for the first command and waits; bash with `&&` likewise.
    let scripts = [
        ("sh", format!("python3 {t} {args}; echo shell-still-here")),
        (
            "bash",
            format!("cd / && python3 {t} {args} && echo shell-still-here"),
        ),
        (
            "sh",
            format!("sh -c 'python3 {t} {args}' ; echo shell-still-here"),
        ),
    ];
    for (shell, script) in scripts {
        let dir = TempDir::new("shell");
        let mut r = Running::start(launcher(&dir, &[shell, "-c", &script]));
        r.wait_line("step 3 ");
        r.signal(libc::SIGTERM);
        let f = r.wait();
        assert_eq!(
            f.code(),
            0,
            "{shell} -c {script:?}\n{}\n{}",
            f.stdout,
            f.stderr
        );
        assert!(f.stdout.contains("saved step"), "{}", f.stdout);
        assert!(f.stdout.contains("shell-still-here"), "{}", f.stdout);
        assert!(f.steps().len() < 400);
        assert_eq!(dir.report()["state"], "signalled");
    }
}

#[test]
fn sigusr1_saves_without_stopping() {
    let dir = TempDir::new("usr1");
    let args = [
        "--total-steps",
        "30",
        "--step-seconds",
        "0.02",
        "--ckpt-every",
        "1000",
    ];
    let mut r = Running::start(train(&dir, &args));
    r.wait_line("step 3 ");
    r.signal(libc::SIGUSR1);
    let saved = r.wait_line("saved step ");
    assert!(saved.contains("(SIGUSR1)"), "{saved}");
    let f = r.wait();
    assert_eq!(f.code(), 0);
    assert_eq!(f.steps().last(), Some(&30), "kept training to the end");
    let rep = dir.report();
    assert_eq!(rep["state"], "completed");
    assert!(rep.get("signal").is_none(), "SIGUSR1 is not a stop: {rep}");
    assert_eq!(rep["saves"]["count"], 2);
    assert_eq!(rep["lastCheckpoint"]["step"], 30);
}

#[test]
fn orphaned_zombies_are_reaped_while_the_trainer_runs() {
    let dir = TempDir::new("zombies");
    let fx = fixture("zombies.py");
    let mut r = Running::start(launcher(&dir, &["python3", fx.to_str().unwrap(), "20"]));
    // The orphans print from their own processes, so lines can interleave
    // ("readyorphan 12"): find every "orphan <pid>" wherever it stands.
    let pids = |out: &str| -> Vec<i32> {
        out.split("orphan ")
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                digits.parse().ok()
            })
            .collect()
    };
    r.wait_until("20 orphans", |r| pids(&r.stdout()).len() == 20);
    let orphans = pids(&r.stdout());
    // Re-parented to the launcher and exited: only the launcher can reap them.
    r.wait_until("orphans reaped", |_| orphans.iter().all(|&p| !exists(p)));
    assert!(
        r.child.try_wait().unwrap().is_none(),
        "trainer still running"
    );
    r.signal(libc::SIGTERM);
    let f = r.wait();
    // The trainer has no handler: it dies of the forwarded SIGTERM.
    assert_eq!(f.code(), 128 + libc::SIGTERM);
    let rep = dir.report();
    assert_eq!(rep["state"], "signalled");
    assert_eq!(rep["termSignal"], "SIGTERM");
    assert_eq!(rep["exitCode"], 143);
}

#[test]
fn exit_status_and_state_follow_the_trainer() {
    let dir = TempDir::new("exits");
    let f = run(launcher(&dir, &["true"]));
    assert_eq!(
        (f.code(), dir.report()["state"].clone()),
        (0, "completed".into())
    );

    let f = run(launcher(&dir, &["sh", "-c", "exit 3"]));
    assert_eq!(f.code(), 3);
    assert_eq!(dir.report()["state"], "failed");
    assert_eq!(dir.report()["exitCode"], 3);

    let f = run(launcher(
        &dir,
        &["python3", "-c", "import os; os.kill(os.getpid(), 9)"],
    ));
    assert_eq!(f.code(), 137);
    let rep = dir.report();
    assert_eq!(
        (rep["state"].as_str(), rep["termSignal"].as_str()),
        (Some("failed"), Some("SIGKILL"))
    );

    let f = run(launcher(&dir, &["/nonexistent/trainer"]));
    assert_eq!(f.code(), 127);
    assert_eq!(dir.report()["state"], "failed");
}

#[test]
fn environment_for_the_trainer() {
    let dir = TempDir::new("env");
    let mut cmd = launcher(
        &dir,
        &["sh", "-c", "echo grace=$TJ_GRACE_SECONDS deadline=$TJ_DEADLINE_SECONDS attempt=$TJ_ATTEMPT rank=$TJ_RANK resume=${TJ_RESUME_PATH-unset} file=$TJ_DEADLINE_FILE"],
    );
    // A stale resume path from the pod spec must not reach the trainer.
    cmd.env("TJ_GRACE_SECONDS", "45")
        .env("TJ_ATTEMPT", "4")
        .env("TJ_RANK", "0")
        .env("TJ_RESUME_PATH", "/stale");
    let f = run(cmd);
    let line = f.stdout.trim();
    assert!(
        line.starts_with("grace=45 deadline=44 attempt=4 rank=0 resume=unset file="),
        "{line}"
    );
    assert!(line.contains(dir.shm().to_str().unwrap()), "{line}");
    assert_eq!(dir.report()["attempt"], 4);
}

/// Counts steps, records each in the progress file, checkpoints step 2, and
/// ignores SIGTERM.
const IGNORES_SIGTERM: &str = r#"
import json, os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
d, progress = os.environ["TJ_CHECKPOINT_DIR"], os.environ["TJ_PROGRESS_FILE"]
step = 0
while True:
    step += 1
    time.sleep(0.01)
    with open(progress + ".part", "w") as f:
        json.dump({"step": step}, f)
    os.replace(progress + ".part", progress)
    if step == 2:
        with open(f"{d}/step-2.ckpt.tmp", "wb") as f:
            f.write(b"weights")
        os.rename(f"{d}/step-2.ckpt.tmp", f"{d}/step-2.ckpt")
    print(f"step {step}", flush=True)
"#;

#[test]
fn a_trainer_that_ignores_sigterm_is_reported_before_the_sigkill() {
    let dir = TempDir::new("ignores");
    let mut r = Running::start(launcher_with(
        &dir,
        &["--grace-seconds", "1"],
        &["python3", "-c", IGNORES_SIGTERM],
    ));
    r.wait_line("step 5");
    r.signal(libc::SIGTERM);
    let path = dir.report_path();
    r.wait_until("the report to say the signal was not honoured", |_| {
        read_report(&path).is_some_and(|v| v["signalHonoured"] == false)
    });
    // What the kubelet does when the grace period is over.
    r.kill_container();
    let f = r.wait();
    assert_eq!(f.code(), 128 + libc::SIGKILL);
    assert!(f.stderr.contains("did not honour"), "{}", f.stderr);
    let rep = dir.report();
    assert_eq!(rep["state"], "signalled", "a preemption: {rep}");
    assert_eq!(rep["signalHonoured"], false, "{rep}");
    assert_eq!(rep["signal"]["name"], "SIGTERM");
    assert_eq!(rep["lastCheckpoint"]["step"], 2, "{rep}");
    let last = rep["lastStep"].as_u64().expect("last step");
    assert!(last >= 5, "{rep}");
    assert!(rep.get("exitCode").is_none(), "{rep}");
}

#[test]
fn operator_flags_win_over_the_templates_env() {
    let dir = TempDir::new("flags");
    let echo = "echo grace=$TJ_GRACE_SECONDS deadline=$TJ_DEADLINE_SECONDS \
                attempt=$TJ_ATTEMPT rank=$TJ_RANK";
    let report = dir.report_path();
    let mut cmd = launcher_with(
        &dir,
        &[
            "--report",
            report.to_str().unwrap(),
            "--grace-seconds",
            "12",
            "--attempt",
            "7",
            "--rank",
            "0",
            "--report-max-bytes",
            "1024",
        ],
        &["sh", "-c", echo],
    );
    // What a template could set to turn the report off or mislead.
    cmd.env("TJ_REPORT_PATH", "/nonexistent/report")
        .env("TJ_GRACE_SECONDS", "45")
        .env("TJ_ATTEMPT", "4")
        .env("TJ_RANK", "3")
        .env("TJ_REPORT_MAX_BYTES", "64");
    let f = run(cmd);
    assert_eq!(f.code(), 0, "{}", f.stderr);
    assert_eq!(f.stdout.trim(), "grace=12 deadline=11 attempt=7 rank=0");
    let rep = dir.report();
    assert_eq!(rep["attempt"], 7);
    assert_eq!(rep["state"], "completed");
    // Rank 0's lock, not rank 3's.
    assert!(dir.ckpt().join(".tj/rank-0.lock").is_file());
    assert!(!dir.ckpt().join(".tj/rank-3.lock").exists());
}
