//! The soak's two operator replicas: one leads, one stands by, both
//! host processes so that a SIGKILL is exactly that. What a killed replica
//! counted dies with it, so its metrics are read on every poll and folded
//! into the totals when it is killed.

use crate::daemon;
use crate::util::{output, step, wait_for, Paths};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const NAMES: [&str; 2] = ["soak-operator-a", "soak-operator-b"];
const PORTS: [u16; 2] = [18081, 18082];
pub const LEASE: &str = "trainingjob-operator-soak";

pub struct Operators {
    bin: PathBuf,
    namespace: String,
    /// Reconcile failures by error kind, of replicas already killed.
    errors_of_the_dead: BTreeMap<String, f64>,
    /// The latest scrape of each live replica.
    last: [BTreeMap<String, f64>; 2],
    pub peak_rss_kib: u64,
    /// Replicas that exited on their own (a leader that cannot renew its
    /// Lease stops) and were started again.
    pub exits: u32,
}

impl Operators {
    pub fn start(paths: &Paths, namespace: &str) -> Result<Self> {
        crate::util::apt_install(&["curl"])?;
        // A bench's or an earlier soak's operator would act beside these.
        daemon::stop(paths, "trainingjob-operator", Duration::from_secs(10))?;
        let bin = crate::release::static_binaries(paths)?.join("trainingjob-operator");
        let ops = Self {
            bin,
            namespace: namespace.to_string(),
            errors_of_the_dead: BTreeMap::new(),
            last: Default::default(),
            peak_rss_kib: 0,
            exits: 0,
        };
        for (i, name) in NAMES.iter().enumerate() {
            daemon::stop(paths, name, Duration::from_secs(10))?;
            ops.spawn(paths, i)?;
        }
        Ok(ops)
    }

    fn spawn(&self, paths: &Paths, i: usize) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["run", "--namespace", &self.namespace, "--leader-elect"])
            .args(["--lease-namespace", &self.namespace, "--lease-name", LEASE])
            .args(["--listen", &format!("127.0.0.1:{}", PORTS[i])])
            .args(["--operator-image", crate::images::OPERATOR_IMAGE])
            .env("POD_NAME", NAMES[i])
            .env("KUBECONFIG", paths.kubeconfig());
        daemon::spawn(paths, NAMES[i], cmd)?;
        wait_for(
            &format!("{} to serve /healthz", NAMES[i]),
            Duration::from_secs(60),
            || {
                crate::util::succeeds(
                    Command::new("curl")
                        .args(["-sf", &format!("http://127.0.0.1:{}/healthz", PORTS[i])]),
                )
            },
        )
        .with_context(|| daemon::log_tail(paths, NAMES[i], 20))
    }

    /// The replica holding the Lease, if the API server can say.
    pub fn leader<K: Fn() -> Command>(&self, k: &K) -> Option<usize> {
        let holder = output(k().args([
            "get",
            "lease",
            LEASE,
            "-n",
            &self.namespace,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]))
        .ok()?;
        NAMES.iter().position(|n| *n == holder.trim())
    }

    /// SIGKILL, as an OOM kill or a lost node does it: no handover. The
    /// replica comes back at once as a new process, as its Deployment would
    /// bring it back.
    pub fn kill(&mut self, paths: &Paths, which: &[usize]) -> Result<()> {
        self.scrape(paths);
        for &i in which {
            if let Some(pid) = daemon::pid(paths, NAMES[i]) {
                step(format!("SIGKILL {} (pid {pid})", NAMES[i]));
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                wait_for(
                    "the killed operator to die",
                    Duration::from_secs(10),
                    || !daemon::alive(paths, NAMES[i]),
                )?;
            }
            self.bury(i);
        }
        Ok(())
    }

    /// Does what a Deployment does for a replica that exited: starts it
    /// again.
    pub fn supervise(&mut self, paths: &Paths) {
        (0..NAMES.len()).for_each(|i| self.supervise_one(paths, i));
    }

    pub fn supervise_one(&mut self, paths: &Paths, i: usize) {
        let name = NAMES[i];
        if daemon::alive(paths, name) {
            return;
        }
        step(format!(
            "{name} exited: {}",
            daemon::log_tail(paths, name, 1).trim()
        ));
        self.exits += 1;
        self.bury(i);
        if let Err(e) = self.spawn(paths, i) {
            eprintln!("could not start {name} again: {e:#}");
        }
    }

    /// What a replica that died had counted joins the totals.
    fn bury(&mut self, i: usize) {
        for (kind, n) in std::mem::take(&mut self.last[i]) {
            *self.errors_of_the_dead.entry(kind).or_default() += n;
        }
    }

    pub fn restart(&self, paths: &Paths, which: &[usize]) -> Result<()> {
        which.iter().try_for_each(|&i| self.spawn(paths, i))
    }

    /// Reads each live replica's reconcile failures and peak RSS.
    pub fn scrape(&mut self, paths: &Paths) {
        for i in 0..2 {
            let Some(pid) = daemon::pid(paths, NAMES[i]) else {
                continue;
            };
            if let Some(kib) = peak_rss_kib(pid) {
                self.peak_rss_kib = self.peak_rss_kib.max(kib);
            }
            let url = format!("http://127.0.0.1:{}/metrics", PORTS[i]);
            if let Ok(text) = output(Command::new("curl").args(["-sf", "--max-time", "5", &url])) {
                self.last[i] = reconcile_failures(&text);
            }
        }
    }

    /// Reconcile failures by kind over every replica that ever ran.
    pub fn errors(&self) -> BTreeMap<String, f64> {
        let mut all = self.errors_of_the_dead.clone();
        for (kind, n) in self.last.iter().flatten() {
            *all.entry(kind.clone()).or_default() += n;
        }
        all
    }

    pub fn stop(&self, paths: &Paths) {
        for name in NAMES {
            let _ = daemon::stop(paths, name, Duration::from_secs(10));
        }
    }

    pub fn log_tail(paths: &Paths) -> String {
        NAMES
            .iter()
            .map(|n| format!("--- {n}:\n{}", daemon::log_tail(paths, n, 15)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn peak_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `trainingjob_reconcile_failures_total{kind="api"} 3` lines, by kind.
pub fn reconcile_failures(metrics: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("trainingjob_reconcile_failures_total{kind=\"")?;
            let (kind, value) = rest.split_once("\"}")?;
            Some((kind.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reconcile_failures_are_read_by_kind() {
        let text = "# HELP x\ntrainingjob_reconcile_failures_total{kind=\"api\"} 3\n\
                    trainingjob_reconcile_failures_total{kind=\"conflict\"} 1\ntrainingjob_reconciles_total 9\n";
        let got = super::reconcile_failures(text);
        assert_eq!(got.get("api"), Some(&3.0));
        assert_eq!(got.get("conflict"), Some(&1.0));
        assert_eq!(got.len(), 2);
    }
}
