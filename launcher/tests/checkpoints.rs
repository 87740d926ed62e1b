//! Checkpoint resolution, cleanup, save measurement and the report, with the
//! real launcher binary on real directories.

mod support;

use std::fs;
use std::path::Path;
use std::time::Instant;
use support::*;

const PRINT_RESUME: &str = "echo resume=${TJ_RESUME_PATH-none} step=${TJ_RESUME_STEP-none}";

fn resolve(dir: &TempDir) -> (Finished, serde_json::Value) {
    let f = run(launcher(dir, &["sh", "-c", PRINT_RESUME]));
    assert_eq!(f.code(), 0, "{}", f.stderr);
    (f, dir.report())
}

fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap();
}

fn skipped_paths(rep: &serde_json::Value) -> Vec<String> {
    rep["skipped"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let p = s["path"].as_str().unwrap();
                    p.rsplit('/').next().unwrap().to_string()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hugging_face_layout_is_recognised() {
    let dir = TempDir::new("hf");
    let c = dir.ckpt();
    for step in [100, 150] {
        mkdir(&c.join(format!("checkpoint-{step}")));
        fs::write(c.join(format!("checkpoint-{step}/model.safetensors")), b"w").unwrap();
    }
    fs::write(c.join("checkpoint-100/trainer_state.json"), b"{}").unwrap();
    // Killed while writing trainer_state.json (in place): empty, or torn.
    for (step, state) in [(175, ""), (160, r#"{"global_step": 160, "log_hi"#)] {
        mkdir(&c.join(format!("checkpoint-{step}")));
        fs::write(
            c.join(format!("checkpoint-{step}/trainer_state.json")),
            state,
        )
        .unwrap();
    }
    // Transformers' JIT save had not removed its incomplete marker.
    mkdir(&c.join("checkpoint-170"));
    fs::write(c.join("checkpoint-170/trainer_state.json"), b"{}").unwrap();
    fs::write(c.join("checkpoint-170/checkpoint-is-incomplete.txt"), b"").unwrap();
    // 150 never got its trainer_state.json: the Trainer died mid-save.
    mkdir(&c.join("tmp-checkpoint-200"));
    fs::write(c.join("tmp-checkpoint-200/model.safetensors"), b"partial").unwrap();

    let (f, rep) = resolve(&dir);
    let want = c.join("checkpoint-100");
    assert_eq!(
        f.stdout.trim(),
        format!("resume={} step=100", want.display())
    );
    assert_eq!(rep["resumedFrom"]["step"], 100);
    assert_eq!(
        skipped_paths(&rep),
        [
            "checkpoint-175",
            "checkpoint-170",
            "checkpoint-160",
            "checkpoint-150"
        ]
    );
    let reasons: Vec<&str> = rep["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons[0].contains("not a whole JSON object"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("checkpoint-is-incomplete.txt"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].contains("not a whole JSON object"),
        "{reasons:?}"
    );
    assert!(reasons[3].contains("no trainer_state.json"), "{reasons:?}");
    assert_eq!(rep["cleaned"]["tmpEntries"], 1);
    assert!(
        !c.join("tmp-checkpoint-200").exists(),
        "staging leftover removed"
    );
    assert!(
        c.join("checkpoint-150").exists(),
        "incomplete checkpoints are kept, not deleted"
    );
}

#[test]
fn pytorch_dcp_layout_is_recognised() {
    let dir = TempDir::new("dcp");
    let c = dir.ckpt();
    for name in ["step-300", "step-400", "global_step_350"] {
        mkdir(&c.join(name));
        fs::write(c.join(name).join("__0_0.distcp"), b"shard").unwrap();
    }
    fs::write(c.join("step-300/.metadata"), b"meta").unwrap();
    fs::write(c.join("global_step_350/.metadata"), b"meta").unwrap();
    let (f, rep) = resolve(&dir);
    assert_eq!(
        f.stdout.trim(),
        format!("resume={} step=350", c.join("global_step_350").display())
    );
    assert_eq!(skipped_paths(&rep), ["step-400"]);

    fs::remove_dir_all(c.join("global_step_350")).unwrap();
    let (f, _) = resolve(&dir);
    assert!(
        f.stdout.trim().ends_with("step-300 step=300"),
        "{}",
        f.stdout
    );
}

#[test]
fn saves_in_hf_and_dcp_layouts_are_measured_while_running() {
    let dir = TempDir::new("live");
    let script = r#"
import os, sys, time
d = os.environ["TJ_CHECKPOINT_DIR"]
# DCP: directory created in place, shards, then .metadata via a rename.
os.makedirs(f"{d}/step-500")
with open(f"{d}/step-500/__0_0.distcp", "wb") as f: f.write(b"x" * 4096)
time.sleep(0.2)
with open(f"{d}/step-500/.metadata.tmp", "wb") as f: f.write(b"m")
os.rename(f"{d}/step-500/.metadata.tmp", f"{d}/step-500/.metadata")
# Hugging Face: staged under tmp-checkpoint-N, renamed when done.
os.makedirs(f"{d}/tmp-checkpoint-600")
with open(f"{d}/tmp-checkpoint-600/model.safetensors", "wb") as f: f.write(b"y" * 8192)
with open(f"{d}/tmp-checkpoint-600/trainer_state.json", "w") as f: f.write("{}")
time.sleep(0.2)
os.rename(f"{d}/tmp-checkpoint-600", f"{d}/checkpoint-600")
"#;
    let f = run(launcher(&dir, &["python3", "-c", script]));
    assert_eq!(f.code(), 0, "{}", f.stderr);
    let rep = dir.report();
    assert_eq!(rep["state"], "completed");
    assert_eq!(rep["saves"]["count"], 2, "{rep}");
    // Timed from when the launcher sees each event, so a loaded machine can
    // shave off its wake-up lag; the 0.2 s the saves took must still show.
    assert!(
        rep["saves"]["lastSeconds"].as_f64().unwrap() >= 0.1,
        "{rep}"
    );
    assert!(rep["saves"]["p95Seconds"].as_f64().unwrap() >= 0.1, "{rep}");
    assert_eq!(rep["saves"]["lastBytes"], 8192 + 2);
    assert_eq!(rep["lastCheckpoint"]["step"], 600);
    assert_eq!(rep["lastCheckpoint"]["bytes"], 8192 + 2);
}

/// Runs `script` (Python) as the trainer on `dir`; returns the report.
fn run_py(dir: &TempDir, script: &str) -> (Finished, serde_json::Value) {
    let f = run(launcher(dir, &["python3", "-c", script]));
    assert_eq!(f.code(), 0, "{}", f.stderr);
    (f, dir.report())
}

/// One save, timed: `count` 1 and the 0.2 s the script spends in it (less
/// at most the launcher's wake-up lag on a loaded machine).
fn assert_one_timed_save(rep: &serde_json::Value, step: u64) {
    assert_eq!(rep["saves"]["count"], 1, "{rep}");
    assert!(
        rep["saves"]["lastSeconds"].as_f64().unwrap() >= 0.1,
        "{rep}"
    );
    assert_eq!(rep["lastCheckpoint"]["step"], step, "{rep}");
}

#[test]
fn saves_that_rewrite_a_checkpoint_in_place_are_timed_and_unskip_it() {
    let dir = TempDir::new("inplace");
    let c = dir.ckpt();
    fs::create_dir_all(&c).unwrap();
    fs::write(c.join("step-3.ckpt"), b"old weights").unwrap();
    // A file rewritten in place (torch.save onto the same name).
    let (_, rep) = run_py(
        &dir,
        r#"
import os, time
with open(os.environ["TJ_CHECKPOINT_DIR"] + "/step-3.ckpt", "wb") as f:
    f.write(b"new "); f.flush(); time.sleep(0.2); f.write(b"weights")
"#,
    );
    assert_one_timed_save(&rep, 3);

    // A torn directory, skipped at start, then completed in place by the
    // same attempt: timed, and no longer listed as skipped.
    mkdir(&c.join("step-8"));
    fs::write(c.join("step-8/w.bin"), b"he").unwrap();
    let (f, rep) = run_py(
        &dir,
        r#"
import os, time
d = os.environ["TJ_CHECKPOINT_DIR"] + "/step-8"
with open(d + "/w.bin", "wb") as f:
    f.write(b"hel"); f.flush(); time.sleep(0.2); f.write(b"lo")
with open(d + "/MANIFEST.json", "w") as f:
    f.write('{"step": 8, "files": [{"path": "w.bin", "bytes": 5}]}')
"#,
    );
    assert!(
        f.stderr.contains("step-8: no MANIFEST.json"),
        "{}",
        f.stderr
    );
    assert_one_timed_save(&rep, 8);
    assert!(rep.get("skipped").is_none(), "stale entry kept: {rep}");

    // A Hugging Face directory saved again in place, trainer_state.json last.
    mkdir(&c.join("checkpoint-9"));
    fs::write(c.join("checkpoint-9/trainer_state.json"), b"{}").unwrap();
    let (_, rep) = run_py(
        &dir,
        r#"
import os, time
d = os.environ["TJ_CHECKPOINT_DIR"] + "/checkpoint-9"
with open(d + "/model.safetensors", "wb") as f:
    f.write(b"w"); f.flush(); time.sleep(0.2)
with open(d + "/trainer_state.json", "w") as f:
    f.write('{"global_step": 9}')
"#,
    );
    assert_eq!(rep["resumedFrom"]["step"], 9);
    assert_one_timed_save(&rep, 9);
}

#[test]
fn hugging_face_jit_save_completes_when_its_incomplete_marker_goes() {
    let dir = TempDir::new("hf-jit");
    // What transformers' trainer_jit_checkpoint.py does: makedirs, marker,
    // _save_checkpoint (trainer_state.json last), remove the marker.
    let (_, rep) = run_py(
        &dir,
        r#"
import os, time
d = os.environ["TJ_CHECKPOINT_DIR"] + "/checkpoint-12"
os.makedirs(d)
open(d + "/checkpoint-is-incomplete.txt", "w").write("in progress")
open(d + "/model.safetensors", "wb").write(b"w" * 100)
open(d + "/trainer_state.json", "w").write('{"global_step": 12}')
time.sleep(0.2)
os.remove(d + "/checkpoint-is-incomplete.txt")
"#,
    );
    assert_one_timed_save(&rep, 12);
    let (f, rep) = resolve(&dir);
    assert!(
        f.stdout.trim().ends_with("checkpoint-12 step=12"),
        "{}",
        f.stdout
    );
    assert_eq!(rep["resumedFrom"]["step"], 12);
}

#[test]
fn multi_rank_checkpoint_is_complete_only_with_every_ranks_files() {
    let dir = TempDir::new("ranks");
    // Two ranks as threads, with gather/barrier standing in for
    // torch.distributed.
    let script = r#"
import os, sys, threading
sys.path.insert(0, os.environ["TJ_EXAMPLES"])
import tjckpt
bar = threading.Barrier(2)
box = {}
def rank(r, step):
    def gather(obj):
        box[r] = obj
        bar.wait()
        return [box[0], box[1]] if r == 0 else None
    ck = tjckpt.Checkpointer(rank=r, world_size=2, install_signals=False)
    ck.save_dir_distributed(step, {"model.bin": bytes([r]) * (100 + r)}, gather, bar.wait)
for step in (20, 30):
    ts = [threading.Thread(target=rank, args=(r, step)) for r in (0, 1)]
    [t.start() for t in ts]
    [t.join() for t in ts]
"#;
    let f = run(launcher(&dir, &["python3", "-c", script]));
    assert_eq!(f.code(), 0, "{}", f.stderr);
    assert_eq!(dir.report()["saves"]["count"], 2);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.ckpt().join("step-20/MANIFEST.json")).unwrap())
            .unwrap();
    assert_eq!(m["worldSize"], 2);
    let files: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["rank-00000/model.bin", "rank-00001/model.bin"]);

    // Rank 1's part of step 30 goes missing (a volume that lost it).
    fs::remove_file(dir.ckpt().join("step-30/rank-00001/model.bin")).unwrap();

    let (f, rep) = resolve(&dir);
    assert!(
        f.stdout.trim().ends_with("/step-20 step=20"),
        "{}",
        f.stdout
    );
    assert_eq!(skipped_paths(&rep), ["step-30"]);
    assert!(rep["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("rank-00001/model.bin, which is missing"));
}

#[test]
fn corrupt_manifests_are_skipped_and_reported() {
    let dir = TempDir::new("corrupt");
    let c = dir.ckpt();
    let good = |step: u64, manifest: String| {
        let d = c.join(format!("step-{step}"));
        mkdir(&d);
        fs::write(d.join("w.bin"), b"hello").unwrap();
        fs::write(d.join("MANIFEST.json"), manifest).unwrap();
    };
    let sha = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    good(
        4,
        format!(r#"{{"step":4,"files":[{{"path":"w.bin","bytes":5,"sha256":"{sha}"}}]}}"#),
    );
    good(
        5,
        r#"{"step":5,"files":[{"path":"w.bin","bytes":6}]}"#.into(),
    );
    good(6, r#"{"step":6,"files":[{"path":"w.bin","by"#.into());
    good(
        7,
        format!(
            r#"{{"files":[{{"path":"w.bin","bytes":5,"sha256":"{}"}}]}}"#,
            "0".repeat(64)
        ),
    );
    good(
        8,
        r#"{"files":[{"path":"w.bin","bytes":5},{"path":"rank-00001/w.bin","bytes":5}]}"#.into(),
    );
    mkdir(&c.join("step-9"));
    fs::write(c.join("step-10.ckpt"), b"").unwrap();

    let (f, rep) = resolve(&dir);
    assert_eq!(
        f.stdout.trim(),
        format!("resume={} step=4", c.join("step-4").display())
    );
    assert_eq!(
        skipped_paths(&rep),
        [
            "step-10.ckpt",
            "step-9",
            "step-8",
            "step-7",
            "step-6",
            "step-5"
        ]
    );
    let reasons: Vec<&str> = rep["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap())
        .collect();
    assert!(reasons[0].contains("empty"), "{reasons:?}");
    assert!(reasons[1].contains("no MANIFEST.json"), "{reasons:?}");
    assert!(reasons[2].contains("missing"), "{reasons:?}");
    assert!(reasons[3].contains("sha256"), "{reasons:?}");
    assert!(reasons[4].contains("not valid"), "{reasons:?}");
    assert!(reasons[5].contains("6 bytes, found 5"), "{reasons:?}");
    assert!(f.stderr.contains("skipping"), "{}", f.stderr);
}

/// SIGKILLs launcher and trainer together `rounds` times, each time in the
/// middle of a save; returns (last step resumed from, kills that landed
/// while a temporary existed).
fn kill_mid_save(dir: &TempDir, rounds: usize) -> (u64, usize) {
    let fx = fixture("saver.py");
    let mut resumed = 0u64;
    let mut killed_mid_save = 0;
    for i in 0..rounds {
        // -S: no site packages needed, and 200 interpreter starts add up.
        let mut r = Running::start(launcher(dir, &["python3", "-S", fx.to_str().unwrap()]));
        let first = r.wait_line("leftovers ");
        assert_eq!(first, "leftovers 0", "round {i}: temporaries left behind");
        r.wait_until("resumed or fresh", |r| {
            r.stdout().contains("\nresumed ") || r.stdout().contains("\nfresh")
        });
        if i > 0 {
            let out = r.stdout();
            let line = out
                .lines()
                .find(|l| l.starts_with("resumed "))
                .unwrap_or_else(|| {
                    panic!("round {i}: nothing to resume from\n{out}\n{}", r.stderr())
                });
            assert!(line.ends_with(" ok"), "round {i}: torn checkpoint: {line}");
            let step: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            assert!(
                step >= resumed,
                "round {i}: went back from {resumed} to {step}"
            );
            resumed = step;
        }
        // One save completes, then kill during the next one.
        r.wait_line("saved ");
        r.wait_until("a save in progress", |_| {
            names_in(&dir.ckpt()).iter().any(|n| n.ends_with(".tmp"))
        });
        r.kill_container();
        r.wait();
        if names_in(&dir.ckpt()).iter().any(|n| n.ends_with(".tmp")) {
            killed_mid_save += 1;
        }
        // Whatever the kill interrupted, the report is still whole.
        assert_eq!(dir.report()["state"], "running");
    }
    (resumed, killed_mid_save)
}

#[test]
fn sigkill_mid_save_200_times_always_resumes_from_a_complete_checkpoint() {
    let t0 = Instant::now();
    // Two independent checkpoint directories side by side: each round waits
    // on interpreter start-up and fsync more than on the CPU.
    let lanes: Vec<(u64, usize)> = std::thread::scope(|s| {
        let h: Vec<_> = (0..2)
            .map(|lane| {
                s.spawn(move || kill_mid_save(&TempDir::new(&format!("kill200-{lane}")), 100))
            })
            .collect();
        h.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (lane, (resumed, mid_save)) in lanes.iter().enumerate() {
        assert!(*resumed >= 75, "lane {lane} made progress: {resumed}");
        assert!(
            *mid_save >= 75,
            "lane {lane}: kills landed mid-save {mid_save}/100 times"
        );
    }
    eprintln!(
        "200 SIGKILLs: {:?} (resumed up to, mid-save kills) per lane, {:.1}s",
        lanes,
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn stale_shm_entries_are_removed_and_live_ones_kept() {
    let dir = TempDir::new("shm");
    let shm = dir.shm();
    // pid_max is at most 4194304, so this owner is certainly gone.
    let dead = 4_194_399;
    let me = std::process::id();
    for name in [
        format!("torch_{dead}_0"),
        format!("torch_{me}_0"),
        "psm_held".into(),
        "psm_orphan".into(),
        "sem.mp-abc".into(),
        "dataset.bin".into(),
        format!("tj-deadline-{dead}"),
    ] {
        fs::write(shm.join(name), b"x").unwrap();
    }
    let held = shm.join("psm_held");
    let mut holder = Running::start({
        let mut c = std::process::Command::new("python3");
        c.args([
            "-c",
            "import mmap,sys; f=open(sys.argv[1],'r+b'); m=mmap.mmap(f.fileno(),1); f.close(); print('ready',flush=True); sys.stdin.read()",
            held.to_str().unwrap(),
        ]);
        c
    });
    holder.wait_line("ready");
    let f = run(launcher(&dir, &["true"]));
    assert_eq!(f.code(), 0);
    assert_eq!(
        names_in(&shm),
        ["dataset.bin", "psm_held", format!("torch_{me}_0").as_str()]
    );
    assert_eq!(dir.report()["cleaned"]["shmEntries"], 4);
    drop(holder.child.stdin.take());
    holder.wait();
}

#[test]
fn report_stays_under_4096_bytes_whatever_the_path_lengths() {
    let dir = TempDir::new("longpath");
    // Close to PATH_MAX, in components the filesystem accepts.
    let mut deep = dir.ckpt();
    while deep.as_os_str().len() < 3600 {
        deep = deep.join("d".repeat(200));
    }
    mkdir(&deep);
    for step in 1000..1300 {
        mkdir(&deep.join(format!("step-{step}")));
    }
    fs::write(deep.join("step-1.ckpt"), b"weights").unwrap();
    let mut cmd = launcher(&dir, &["sh", "-c", PRINT_RESUME]);
    cmd.env("TJ_CHECKPOINT_DIR", &deep);
    let f = run(cmd);
    assert_eq!(f.code(), 0, "{}", f.stderr);
    let raw = fs::read(dir.report_path()).unwrap();
    let rep = dir.report();
    assert_eq!(rep["state"], "completed");
    assert_eq!(rep["resumedFrom"]["step"], 1);
    assert!(rep["resumedFrom"]["path"]
        .as_str()
        .unwrap()
        .ends_with("/step-1.ckpt"));
    let shown = rep["skipped"].as_array().unwrap().len() as u64;
    assert!(shown > 0, "some skipped entries are still shown");
    assert_eq!(shown + rep["skippedOmitted"].as_u64().unwrap(), 300);
    assert!(raw.len() > 3000, "used the space: {}", raw.len());
    assert!(f.stdout.trim().ends_with("/step-1.ckpt step=1"));

    // A pod with many containers leaves this one a smaller share of the
    // kubelet's 12 KiB: the report shrinks to it, still whole JSON.
    for budget in [1024usize, 256, 64] {
        let mut cmd = launcher_with(
            &dir,
            &["--report-max-bytes", &budget.to_string()],
            &["true"],
        );
        cmd.env("TJ_CHECKPOINT_DIR", &deep);
        assert_eq!(run(cmd).code(), 0);
        let raw = fs::read(dir.report_path()).unwrap();
        assert!(raw.len() <= budget, "{budget}: {} bytes", raw.len());
        let rep: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(rep["state"], "completed", "{budget}: {rep}");
        if budget >= 256 {
            assert_eq!(rep["lastCheckpoint"]["step"], 1, "{budget}: {rep}");
            assert_eq!(rep["exitCode"], 0, "{budget}: {rep}");
        }
    }
}

#[test]
fn probe_measures_the_checkpoint_volume_and_leaves_nothing() {
    let dir = TempDir::new("probe");
    let mut cmd = launcher(&dir, &["true"]);
    cmd.env("TJ_PROBE", "1").env("TJ_PROBE_BYTES", "1048576");
    let f = run(cmd);
    assert_eq!(f.code(), 0, "{}", f.stderr);
    let rep = dir.report();
    assert_eq!(rep["probe"]["bytes"], 1_048_576);
    assert!(rep["probe"]["seconds"].as_f64().unwrap() > 0.0);
    assert!(rep["probe"]["bytesPerSecond"].as_f64().unwrap() > 0.0);
    // Only the launcher's own directory (the rank's lock file) is left.
    assert_eq!(names_in(&dir.ckpt()), [".tj"]);
    assert_eq!(names_in(&dir.ckpt().join(".tj")), ["rank-0.lock"]);
}

#[test]
fn only_rank_zero_removes_temporaries() {
    let dir = TempDir::new("rank1");
    mkdir(&dir.ckpt().join("step-3.tmp"));
    let mut cmd = launcher(&dir, &["true"]);
    cmd.env("TJ_RANK", "1");
    assert_eq!(run(cmd).code(), 0);
    assert!(
        dir.ckpt().join("step-3.tmp").exists(),
        "another rank may be writing it"
    );
    let mut cmd = launcher(&dir, &["true"]);
    cmd.env("TJ_RANK", "0");
    assert_eq!(run(cmd).code(), 0);
    assert!(!dir.ckpt().join("step-3.tmp").exists());
}
