//! The four ways `bench peers` takes trainer pods away, as a cluster does: a
//! node drain, the Eviction API, a pod deletion, and preemption by the
//! scheduler for a higher-priority pod. Each comes with the cloud's notice:
//! pods still there when it ends are deleted with no grace, as if their node
//! had vanished.

use anyhow::Result;
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The test bed's one real node.
const NODE: &str = "tjo-node";
pub const PRIORITY_CLASS: &str = "peers-preemptor";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Drain,
    Evict,
    Delete,
    Preempt,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Drain, Kind::Evict, Kind::Delete, Kind::Preempt];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Drain => "node drain",
            Kind::Evict => "Eviction API",
            Kind::Delete => "pod deletion",
            Kind::Preempt => "scheduler preemption",
        }
    }

    /// Drains and preemption take every trainer pod on the node; the others
    /// one pod of each workload.
    pub fn whole_node(self) -> bool {
        matches!(self, Kind::Drain | Kind::Preempt)
    }
}

/// Takes `pods` away by `kind`. Returns once the API server has the request;
/// what must go on (the drain, the preemptor, the notice) runs in the
/// returned thread, which ends when the node is usable again.
pub fn apply<K>(
    kubectl: &K,
    ns: &str,
    kind: Kind,
    pods: &[String],
    notice: Duration,
) -> Result<JoinHandle<()>>
where
    K: Fn() -> Command + Clone + Send + 'static,
{
    let started = Instant::now();
    match kind {
        Kind::Evict => pods
            .iter()
            .try_for_each(|p| evict(kubectl, ns, p).map(drop))?,
        Kind::Delete => {
            crate::util::run(
                kubectl()
                    .args(["delete", "pod", "-n", ns, "--wait=false"])
                    .args(pods)
                    .stdout(Stdio::null()),
            )?;
        }
        Kind::Preempt => create_preemptor(kubectl, ns)?,
        Kind::Drain => {}
    }
    let (k, ns, pods) = (kubectl.clone(), ns.to_string(), pods.to_vec());
    Ok(std::thread::spawn(move || {
        let drain = (kind == Kind::Drain).then(|| {
            let k = k.clone();
            std::thread::spawn(move || drain(&k))
        });
        if kind == Kind::Preempt {
            end_preemption(&k, &ns, started + notice + Duration::from_secs(60));
        }
        enforce_notice(&k, &ns, &pods, started + notice);
        if let Some(d) = drain {
            let _ = d.join();
            let _ = crate::util::output(k().args(["uncordon", NODE]));
        }
    }))
}

/// Whether the API server accepted the eviction.
pub fn evict<K: Fn() -> Command>(kubectl: &K, ns: &str, pod: &str) -> Result<bool> {
    let body = json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": pod, "namespace": ns},
    });
    let status = crate::util::run_with_input(
        kubectl()
            .args([
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction"),
                "-f",
                "-",
            ])
            .stdout(Stdio::null()),
        body.to_string().as_bytes(),
    )?;
    // A pod that is already going cannot be evicted again; that is fine.
    if !status.success() {
        eprintln!("eviction of {ns}/{pod} refused (already terminating?)");
    }
    Ok(status.success())
}

/// Blocks until every trainer pod has left the node (the notice's forced
/// deletions included), as `kubectl drain` does.
fn drain<K: Fn() -> Command>(kubectl: &K) {
    let _ = crate::util::output(kubectl().args([
        "drain",
        NODE,
        "--pod-selector",
        "bench=peers",
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=600s",
    ]));
}

/// A pod of higher priority that needs all 8 GPUs: the scheduler preempts
/// every trainer pod to place it.
pub fn create_preemptor<K: Fn() -> Command>(kubectl: &K, ns: &str) -> Result<()> {
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "preemptor", "namespace": ns},
        "spec": {
            "priorityClassName": PRIORITY_CLASS,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "c",
                "image": crate::images::TRAINER_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["python3", "-c", "import time; time.sleep(3600)"],
                "resources": {"limits": {"nvidia.com/gpu": 8}},
            }],
        },
    });
    crate::controlplane::apply_json(kubectl, Some(ns), &pod)
}

/// Once the preemptor is placed (every victim gone), it goes too: the
/// capacity comes back for the trainers.
pub fn end_preemption<K: Fn() -> Command>(kubectl: &K, ns: &str, deadline: Instant) {
    while Instant::now() < deadline {
        let node = crate::util::output(kubectl().args([
            "get",
            "pod",
            "-n",
            ns,
            "preemptor",
            "-o",
            "jsonpath={.spec.nodeName}",
        ]))
        .unwrap_or_default();
        if !node.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = crate::util::output(kubectl().args([
        "delete",
        "pod",
        "-n",
        ns,
        "preemptor",
        "--grace-period=0",
        "--force",
        "--wait=true",
    ]));
}

/// At the end of the notice the node is gone: whatever of `pods` still runs
/// is deleted with no grace.
fn enforce_notice<K: Fn() -> Command>(kubectl: &K, ns: &str, pods: &[String], at: Instant) {
    loop {
        let left: Vec<String> = pods
            .iter()
            .filter(|p| still_running(kubectl, ns, p))
            .cloned()
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= at {
            eprintln!(
                "notice over: {} still running, deleted with no grace",
                left.join(", ")
            );
            let _ = crate::util::output(
                kubectl()
                    .args([
                        "delete",
                        "pod",
                        "-n",
                        ns,
                        "--grace-period=0",
                        "--force",
                        "--wait=false",
                    ])
                    .args(&left),
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn still_running<K: Fn() -> Command>(kubectl: &K, ns: &str, pod: &str) -> bool {
    let out = crate::util::output(kubectl().args([
        "get",
        "pod",
        "-n",
        ns,
        pod,
        "-o",
        "json",
        "--ignore-not-found",
    ]))
    .unwrap_or_default();
    let Ok(v) = serde_json::from_str::<Value>(&out) else {
        return false;
    };
    !matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}
