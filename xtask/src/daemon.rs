//! Long-running processes of the local cluster: started detached in their
//! own session, tracked by pid files, logs kept per daemon.

use crate::util::{step, wait_for, Paths};
use anyhow::{Context, Result};
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn pid_file(paths: &Paths, name: &str) -> PathBuf {
    paths.pids().join(format!("{name}.pid"))
}

pub fn log_file(paths: &Paths, name: &str) -> PathBuf {
    paths.logs().join(format!("{name}.log"))
}

/// The pid of a daemon that is still running, if any.
pub fn pid(paths: &Paths, name: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file(paths, name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    // A zombie still has a /proc entry, so look at its state, not only existence.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

pub fn alive(paths: &Paths, name: &str) -> bool {
    pid(paths, name).is_some()
}

/// Starts `cmd` detached (new session, no stdin, output to its log file).
/// A no-op when the daemon is already running.
pub fn spawn(paths: &Paths, name: &str, mut cmd: Command) -> Result<()> {
    if alive(paths, name) {
        return Ok(());
    }
    fs::create_dir_all(paths.pids())?;
    fs::create_dir_all(paths.logs())?;
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_file(paths, name))?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start {name}: {cmd:?}"))?;
    fs::write(pid_file(paths, name), child.id().to_string())?;
    step(format!(
        "started {name} (pid {}, log {})",
        child.id(),
        log_file(paths, name).display()
    ));
    Ok(())
}

/// SIGTERM, then SIGKILL after `grace`; waits until the process is gone.
pub fn stop(paths: &Paths, name: &str, grace: Duration) -> Result<()> {
    let Some(pid) = pid(paths, name) else {
        let _ = fs::remove_file(pid_file(paths, name));
        return Ok(());
    };
    step(format!("stopping {name} (pid {pid})"));
    signal(pid, "TERM");
    if wait_for(&format!("{name} to exit"), grace, || !alive(paths, name)).is_err() {
        signal(pid, "KILL");
        wait_for(&format!("{name} to die"), Duration::from_secs(10), || {
            !alive(paths, name)
        })?;
    }
    let _ = fs::remove_file(pid_file(paths, name));
    Ok(())
}

fn signal(pid: i32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// The last lines of a daemon's log, for error messages.
pub fn log_tail(paths: &Paths, name: &str, lines: usize) -> String {
    let text = fs::read_to_string(log_file(paths, name)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
