//! The soak's Kueue route: the jobs of one slot queue through a
//! ClusterQueue whose GPU quota is that one job's, and the fault is a pod
//! of higher priority in the same queue, for which Kueue evicts the job's
//! workload. Where Kueue is not up, the slot runs without a queue and the
//! fault is skipped.

use crate::soak::{Soak, NS};
use crate::util::{output, step, wait_for};
use anyhow::Result;
use serde_json::{json, Value};
use std::process::Stdio;
use std::time::Duration;

/// The slot whose jobs go through Kueue.
pub const SLOT: usize = 0;
const QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
const PRIORITY_LABEL: &str = "kueue.x-k8s.io/priority-class";
const LOCAL_QUEUE: &str = "training";
const CLUSTER_QUEUE: &str = "soak";
const PREEMPTOR: &str = "kueue-preemptor";

/// Whether the test bed's Kueue answers.
pub fn up(paths: &crate::util::Paths) -> bool {
    crate::controlplane::kubectl(paths).is_ok_and(|mut k| {
        crate::util::succeeds(
            k.args(["get", "crd", "clusterqueues.kueue.x-k8s.io"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        ) && crate::daemon::alive(paths, "kueue")
    })
}

/// The queue, its priorities and a GPU quota of exactly one rank.
pub fn prepare<K: Fn() -> std::process::Command>(k: &K) -> Result<()> {
    let objects = [
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
               "metadata": {"name": "soak"}}),
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
               "metadata": {"name": "soak-low"}, "value": 100}),
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
               "metadata": {"name": "soak-high"}, "value": 1000}),
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
        "metadata": {"name": CLUSTER_QUEUE},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                "flavors": [{"name": "soak", "resources": [
                    {"name": "cpu", "nominalQuota": "64"},
                    {"name": "memory", "nominalQuota": "256Gi"},
                    {"name": "nvidia.com/gpu", "nominalQuota": "1"},
                ]}],
            }],
        }}),
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
               "metadata": {"name": LOCAL_QUEUE, "namespace": NS},
               "spec": {"clusterQueue": CLUSTER_QUEUE}}),
    ];
    for o in &objects {
        crate::controlplane::apply_json(k, None, o)?;
    }
    let cq = format!("clusterqueues.kueue.x-k8s.io/{CLUSTER_QUEUE}");
    wait_for(
        "the soak's ClusterQueue to be active",
        Duration::from_secs(60),
        || {
            output(k().args([
                "get",
                &cq,
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Active")].status}"#,
            ]))
            .is_ok_and(|s| s.trim() == "True")
        },
    )
}

/// The labels that put a TrainingJob in the queue at low priority.
pub fn labels() -> Value {
    json!({QUEUE_LABEL: LOCAL_QUEUE, PRIORITY_LABEL: "soak-low"})
}

/// Work of higher priority in the same queue: Kueue evicts the job's
/// workload to admit it. It goes once the operator has counted the
/// preemption, so the job is admitted again.
pub fn preempt(s: &mut Soak, pick: u64) -> Result<Option<Vec<String>>> {
    if !s.jobs.iter().any(|j| j.queued) {
        return Ok(None);
    }
    let Some(j) = s.pick_job(pick, |j| j.slot == SLOT && j.queued) else {
        return Ok(None);
    };
    let name = s.jobs[j].name.clone();
    let before = s.jobs[j].counted();
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": PREEMPTOR, "labels": {QUEUE_LABEL: LOCAL_QUEUE, PRIORITY_LABEL: "soak-high"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "work",
                "image": crate::images::TRAINER_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["python3", "-c", "import time; time.sleep(3600)"],
                "resources": {"limits": {"memory": "64Mi", "nvidia.com/gpu": 1}},
            }],
        },
    });
    crate::controlplane::apply_json(&&*s.k, Some(NS), &pod)?;
    step(format!(
        "  {PREEMPTOR} queued at high priority beside {name}"
    ));
    let counted = wait_for(
        "the operator to count Kueue's eviction",
        Duration::from_secs(180),
        || {
            s.poll();
            s.jobs[j].counted() > before
        },
    );
    let _ = output((s.k)().args([
        "delete",
        "pod",
        "-n",
        NS,
        PREEMPTOR,
        "--grace-period=0",
        "--force",
        "--wait=true",
    ]));
    if counted.is_err() {
        eprintln!("Kueue's eviction of {name} was not counted:\n{}", s.state());
    }
    Ok(Some(vec![name]))
}

/// The ClusterQueue and the priorities are cluster-wide: they go with the
/// soak.
pub fn clean_up<K: Fn() -> std::process::Command>(k: &K) {
    for what in [
        format!("clusterqueues.kueue.x-k8s.io/{CLUSTER_QUEUE}"),
        "workloadpriorityclasses.kueue.x-k8s.io/soak-low".into(),
        "workloadpriorityclasses.kueue.x-k8s.io/soak-high".into(),
        "resourceflavors.kueue.x-k8s.io/soak".into(),
    ] {
        let _ = output(k().args(["delete", &what, "--ignore-not-found", "--wait=false"]));
    }
}
