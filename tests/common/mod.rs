//! Shared helpers for the tests that run against the real local cluster.
//!
//! These tests are `#[ignore]`d so a plain `cargo test` needs no cluster;
//! `cargo xtask test` brings the cluster up, sets KUBECONFIG and a PATH with
//! the pinned kubectl, and runs them with `--include-ignored`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_cluster() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "these tests need the local cluster: run them with `cargo xtask test`, \
         or `cargo xtask cluster up` and export the KUBECONFIG it prints"
    );
}

/// Runs kubectl with `args`, feeding `stdin` if given.
pub fn kubectl_with_input(args: &[&str], stdin: Option<&str>) -> Output {
    require_cluster();
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl is on PATH");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn kubectl(args: &[&str]) -> Output {
    kubectl_with_input(args, None)
}

/// Runs kubectl and returns stdout, panicking with stderr on failure.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `check` until it returns Some or the deadline passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// A namespace of its own for one test, deleted (without waiting) on drop.
pub struct TempNamespace {
    pub name: String,
}

impl TempNamespace {
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        kubectl_ok(&["create", "namespace", &name]);
        // Namespaced objects need the default ServiceAccount before pods can be admitted.
        wait_until(
            "the namespace's default ServiceAccount",
            Duration::from_secs(60),
            || {
                kubectl(&["get", "serviceaccount", "default", "-n", &name])
                    .status
                    .success()
                    .then_some(())
            },
        );
        Self { name }
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
