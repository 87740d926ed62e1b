//! Shared helpers for the launcher's process tests: real launcher binary, real
//! Python trainers, real signals. Waiting is always "poll for a condition until
//! a deadline", never a fixed sleep.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous: the suite shares two cores with other builds.
pub const DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn examples() -> PathBuf {
    repo().join("examples/trainer")
}

pub fn train_py() -> PathBuf {
    examples().join("train.py")
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "launcher-it-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("shm")).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn ckpt(&self) -> PathBuf {
        self.0.join("ckpt")
    }
    pub fn shm(&self) -> PathBuf {
        self.0.join("shm")
    }
    pub fn report_path(&self) -> PathBuf {
        self.0.join("report.json")
    }
    /// The report as the kubelet would read it, checked to be at most 4 KiB
    /// of valid JSON.
    pub fn report(&self) -> serde_json::Value {
        let bytes = std::fs::read(self.report_path()).expect("report written");
        assert!(bytes.len() <= 4096, "report is {} bytes", bytes.len());
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "report is not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `launcher run -- <cmd>` with the report, shm and checkpoint paths inside
/// `dir`, and no operator variables leaking in from the test's environment.
/// LAUNCHER_BIN runs the suite against another build (the static release
/// binary that ships).
pub fn launcher(dir: &TempDir, cmd: &[&str]) -> Command {
    launcher_with(dir, &[], cmd)
}

/// [`launcher`] with `launcher run` flags before the `--`.
pub fn launcher_with(dir: &TempDir, flags: &[&str], cmd: &[&str]) -> Command {
    let bin =
        std::env::var_os("LAUNCHER_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_launcher").into());
    let mut c = Command::new(bin);
    c.arg("run").args(flags).arg("--").args(cmd);
    for k in [
        "TJ_RESUME_PATH",
        "TJ_RESUME_STEP",
        "TJ_RANK",
        "TJ_ATTEMPT",
        "TJ_PROBE",
        "TJ_DEADLINE_FILE",
        "TJ_PROGRESS_FILE",
        "TJ_WORLD_SIZE",
        "TJ_REPORT_MAX_BYTES",
        "TJ_LOCK_TIMEOUT_SECONDS",
    ] {
        c.env_remove(k);
    }
    c.env("TJ_REPORT_PATH", dir.report_path())
        .env("TJ_SHM_DIR", dir.shm())
        .env("TJ_CHECKPOINT_DIR", dir.ckpt())
        .env("TJ_GRACE_SECONDS", "30")
        .env("TJ_EXAMPLES", examples())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

pub fn python(script: &Path) -> Vec<String> {
    vec!["python3".into(), script.to_string_lossy().into_owned()]
}

pub struct Running {
    pub child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| 128 + self.status.signal().unwrap_or(0))
    }
    /// The `step N` lines, in order.
    pub fn steps(&self) -> Vec<u64> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("step "))
            .filter_map(|r| r.split_whitespace().next()?.parse().ok())
            .collect()
    }
    pub fn line_starting(&self, prefix: &str) -> Option<String> {
        self.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .map(str::to_string)
    }
}

fn collect(r: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            let mut g = b.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    buf
}

impl Running {
    /// Starts the launcher in its own process group, so a test can play the
    /// container runtime and kill everything in it at once.
    pub fn start(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().expect("launcher starts");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        Running { child, out, err }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Polls until `cond` holds, failing the test with both outputs if the
    /// deadline passes first.
    pub fn wait_until(&mut self, what: &str, mut cond: impl FnMut(&Running) -> bool) {
        let t0 = Instant::now();
        while !cond(self) {
            if t0.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!(
                    "timed out waiting for {what}\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                if !cond(self) {
                    // The output may still be in the pipes: let the readers
                    // reach EOF before concluding it never came.
                    self.wait_for_readers();
                    if !cond(self) {
                        panic!(
                            "launcher exited ({st}) before {what}\n--- stdout\n{}\n--- stderr\n{}",
                            self.stdout(),
                            self.stderr()
                        );
                    }
                }
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    /// The pipes close when the last writer exits; waits for the reader
    /// threads to see EOF (each holds a reference to its buffer until then)
    /// rather than guessing how long that takes.
    fn wait_for_readers(&self) {
        let t0 = Instant::now();
        while Arc::strong_count(&self.out) + Arc::strong_count(&self.err) > 2
            && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(POLL);
        }
    }

    /// Waits for a stdout line starting with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str) -> String {
        self.wait_until(&format!("a line starting {prefix:?}"), |r| {
            r.stdout().lines().any(|l| l.starts_with(prefix))
        });
        self.stdout()
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap()
            .to_string()
    }

    pub fn signal(&self, sig: i32) {
        signal(self.pid(), sig);
    }

    /// SIGKILL to the launcher's whole process group: what the runtime does
    /// when the grace period runs out.
    pub fn kill_container(&self) {
        signal(-self.pid(), libc::SIGKILL);
    }

    pub fn wait(mut self) -> Finished {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if t0.elapsed() > DEADLINE {
                let _ = self.child.kill();
                panic!(
                    "launcher did not exit\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(POLL);
        };
        self.wait_for_readers();
        Finished {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

pub fn signal(pid: i32, sig: i32) {
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(
        r,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// Runs to completion.
pub fn run(cmd: Command) -> Finished {
    let mut r = Running::start(cmd);
    drop(r.child.stdin.take());
    r.wait()
}

/// Whether a process exists at all (a zombie still does).
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a process exists and has not exited (a zombie has: its files,
/// and so its locks, are already released).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 1..];
            after
                .split_whitespace()
                .next()
                .map(|st| st != "Z" && st != "X")
        })
        .unwrap_or(false)
}

/// The report at `path`, if it is there and parses (for polling it).
pub fn read_report(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
