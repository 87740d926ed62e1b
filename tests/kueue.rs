//! TrainingJobs under Kueue (the test bed's, started by `cargo xtask
//! cluster up`, with its plain-Pod integration): each attempt's gang is one
//! Kueue pod group, admitted as one, and preempted as one by a workload of
//! higher priority; the job then waits in the queue and resumes from its
//! newest checkpoint, ending exactly like an uninterrupted run.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

/// The label that puts a TrainingJob (and its pods) in a LocalQueue.
const QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
const PRIORITY_LABEL: &str = "kueue.x-k8s.io/priority-class";
/// The scheduling gate Kueue's pod webhook adds until it admits the pod.
const ADMISSION_GATE: &str = "kueue.x-k8s.io/admission";
/// Every test's ClusterQueue uses this one flavor (no node labels: the one
/// real node has it all).
const FLAVOR: &str = "tjo-default";
const LOCAL_QUEUE: &str = "training";

/// Cluster-wide objects every Kueue test shares: the flavor and the two
/// priorities. Applying them again is a no-op.
fn shared_kueue_objects() -> String {
    format!(
        r#"apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata:
  name: {FLAVOR}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: WorkloadPriorityClass
metadata:
  name: low
value: 100
description: "training that yields to anything more urgent"
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: WorkloadPriorityClass
metadata:
  name: high
value: 1000
description: "work that preempts low-priority training"
"#
    )
}

/// A ClusterQueue for one test namespace, sized like the node (8 GPUs),
/// where higher priority preempts lower, and the namespace's LocalQueue.
/// One ClusterQueue per test, not one for all: tests that run side by side
/// must never preempt each other's workloads.
fn queues(ns: &str) -> String {
    format!(
        r#"apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata:
  name: {ns}
spec:
  namespaceSelector:
    matchLabels: {{kubernetes.io/metadata.name: {ns}}}
  preemption:
    withinClusterQueue: LowerPriority
  resourceGroups:
  - coveredResources: [cpu, memory, nvidia.com/gpu]
    flavors:
    - name: {FLAVOR}
      resources:
      - {{name: cpu, nominalQuota: "64"}}
      - {{name: memory, nominalQuota: 256Gi}}
      - {{name: nvidia.com/gpu, nominalQuota: "8"}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata:
  name: {LOCAL_QUEUE}
  namespace: {ns}
spec:
  clusterQueue: {ns}
"#
    )
}

/// The test's queues; the ClusterQueue goes with it (the LocalQueue goes
/// with the namespace).
struct Queues {
    cluster_queue: String,
}

impl Queues {
    fn new(ns: &str) -> Self {
        for manifest in [shared_kueue_objects(), queues(ns)] {
            let out = kubectl_with_input(&["apply", "-f", "-"], Some(&manifest));
            assert!(
                out.status.success(),
                "applying Kueue objects (is Kueue up? `cargo xtask cluster up` starts it): {}",
                stderr(&out)
            );
        }
        let cq = format!("clusterqueues.kueue.x-k8s.io/{ns}");
        wait_until_or(
            "the ClusterQueue to be active",
            Duration::from_secs(60),
            || {
                let path = r#"{.status.conditions[?(@.type=="Active")].status}"#;
                (jsonpath(ns, &cq, path) == "True").then_some(())
            },
            || jsonpath(ns, &cq, "{.status}"),
        );
        Self {
            cluster_queue: ns.to_string(),
        }
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["delete", "clusterqueue.kueue.x-k8s.io", &self.cluster_queue])
            .arg("--wait=false")
            .output();
    }
}

fn final_line(logs: &str) -> Option<String> {
    logs.lines()
        .rev()
        .find(|l| l.starts_with("final "))
        .map(String::from)
}

fn trainer_logs(ns: &str, pod: &str) -> String {
    String::from_utf8_lossy(&kubectl(&["logs", "-n", ns, pod, "-c", "trainer"]).stdout).into_owned()
}

/// A two-rank job of 4 GPUs a rank (the whole node), in the test's queue
/// at priority `low`.
fn queued_job(name: &str, claim: &str, args: &[&str]) -> String {
    let mut cmd = vec!["python3", "/opt/trainer/train.py", "--step-seconds", "0.05"];
    cmd.extend(args);
    job(name, claim, &cmd, "  replicas: 2\n")
        .replacen(
            &format!("  name: {name}\n"),
            &format!(
                "  name: {name}\n  labels: {{{QUEUE_LABEL}: {LOCAL_QUEUE}, {PRIORITY_LABEL}: low}}\n"
            ),
            1,
        )
        .replacen(
            "            memory: 256Mi\n",
            "            memory: 256Mi\n            nvidia.com/gpu: 4\n",
            1,
        )
}

/// A plain Pod through Kueue at priority `high` that wants all 8 GPUs, and
/// runs until the test says it is done (`release`), so the test decides
/// how long the TrainingJob stays preempted, not a timer.
fn preemptor(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{{QUEUE_LABEL}: {LOCAL_QUEUE}, {PRIORITY_LABEL}: high}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: work
    image: {TRAINER_IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "until [ -e /tmp/release ]; do sleep 0.1; done"]
    resources:
      limits: {{memory: 64Mi, nvidia.com/gpu: "8"}}
"#
    )
}

fn release(ns: &str, pod: &str) {
    let args = ["exec", "-n", ns, pod, "--", "touch", "/tmp/release"];
    wait_until_or(
        &format!("{pod} to take the release"),
        Duration::from_secs(120),
        || kubectl(&args).status.success().then_some(()),
        || stderr(&kubectl(&args)),
    );
}

fn workload(name: &str) -> String {
    format!("workloads.kueue.x-k8s.io/{name}")
}

/// The scheduling gates of a pod, space-separated.
fn gates(ns: &str, pod: &str) -> String {
    jsonpath(ns, &format!("pod/{pod}"), "{.spec.schedulingGates[*].name}")
}

/// What the operator must put on an attempt's pods for Kueue to treat the
/// gang as one pod group.
fn assert_pod_group(ns: &str, pod: &str, group: &str) {
    let labels = jsonpath(ns, &format!("pod/{pod}"), "{.metadata.labels}");
    let count = jsonpath(
        ns,
        &format!("pod/{pod}"),
        r"{.metadata.annotations.kueue\.x-k8s\.io/pod-group-total-count}",
    );
    for want in [
        format!(r#""{QUEUE_LABEL}":"{LOCAL_QUEUE}""#),
        format!(r#""kueue.x-k8s.io/pod-group-name":"{group}""#),
        format!(r#""{PRIORITY_LABEL}":"low""#),
        // Added by Kueue's pod webhook: the pod is Kueue's to admit.
        r#""kueue.x-k8s.io/managed":"true""#.to_string(),
    ] {
        assert!(labels.contains(&want), "{pod} lacks {want}: {labels}");
    }
    assert_eq!(count, "2", "{pod}'s pod-group-total-count");
}

/// The reason of the job's Ready condition.
fn ready_reason(ns: &str, job: &str) -> String {
    jsonpath(
        ns,
        &format!("tj/{job}"),
        r#"{.status.conditions[?(@.type=="Ready")].reason}"#,
    )
}

/// What Kueue wrote on a pod it stopped: its TerminationTarget condition.
fn termination_target(watch: &PodWatch, pod: &str) -> Option<String> {
    let last = watch.last(pod)?;
    let conds = last["status"]["conditions"].as_array()?.clone();
    conds
        .iter()
        .find(|c| c["type"] == "TerminationTarget" || c["type"] == "DisruptionTarget")
        .map(|c| format!("{} {}: {}", c["type"], c["reason"], c["message"]))
}

/// Attempt 1 admitted as one group of two, then training past a checkpoint.
fn wait_admitted_and_training(ns: &str) {
    wait_condition(ns, &workload("kq-a1"), "Admitted", Duration::from_secs(120));
    for rank in 0..2 {
        assert_pod_group(ns, &format!("kq-a1-r{rank}"), "kq-a1");
    }
    wait_until_or(
        "attempt 1 to train past its first checkpoint",
        Duration::from_secs(180),
        || {
            let running = jsonpath(ns, "tj/kq", "{.status.phase}") == "Running";
            (running && trainer_logs(ns, "kq-a1-r0").contains("saved step 50")).then_some(())
        },
        || format!("status: {}", jsonpath(ns, "tj/kq", "{.status}")),
    );
}

/// Work of higher priority that needs the whole node: Kueue evicts the
/// TrainingJob's workload, and with it both ranks, which save on the way
/// out. Returns the step they saved.
fn preempt(ns: &str, watch: &PodWatch) -> i64 {
    apply(ns, &preemptor("urgent"));
    let r0 = watch.wait_report("kq-a1-r0", Duration::from_secs(120));
    let r1 = watch.wait_report("kq-a1-r1", Duration::from_secs(120));
    for (pod, report) in [("kq-a1-r0", &r0), ("kq-a1-r1", &r1)] {
        println!(
            "{pod}: {} ({}), Kueue's mark: {:?}",
            report["state"],
            report["lastCheckpoint"]["step"],
            termination_target(watch, pod)
        );
    }
    let saved = r0["lastCheckpoint"]["step"].as_i64().expect("a checkpoint");
    assert_eq!(saved, r1["lastCheckpoint"]["step"].as_i64().unwrap_or(-1));
    // A lone pod's Workload has a generated name: its gate going is the
    // sign that Kueue admitted it.
    wait_until_or(
        "Kueue to admit the preemptor",
        Duration::from_secs(120),
        || {
            let phase = jsonpath(ns, "pod/urgent", "{.status.phase}");
            (!phase.is_empty() && !gates(ns, "urgent").contains(ADMISSION_GATE)).then_some(())
        },
        || kubectl_ok(&["get", "workloads.kueue.x-k8s.io", "-n", ns, "-o", "yaml"]),
    );
    saved
}

/// While the preemptor runs: one preemption, the next attempt's pods held
/// at Kueue's gate, the job Queued, its last checkpoint the one saved.
fn assert_queued(ns: &str, saved: i64) {
    wait_until_or(
        "attempt 2's pods, gated by Kueue, and the job Queued",
        Duration::from_secs(120),
        || {
            let gated = (0..2).all(|r| gates(ns, &format!("kq-a2-r{r}")).contains(ADMISSION_GATE));
            (gated && ready_reason(ns, "kq") == "Queued").then_some(())
        },
        || {
            format!(
                "pods: {:?}, gates: {:?}, status: {}",
                pod_names(ns, "kq"),
                gates(ns, "kq-a2-r0"),
                jsonpath(ns, "tj/kq", "{.status}")
            )
        },
    );
    assert_eq!(jsonpath(ns, "tj/kq", "{.status.preemptions}"), "1");
    assert_eq!(jsonpath(ns, "tj/kq", "{.status.failures}"), "0");
    assert_eq!(
        jsonpath(ns, "tj/kq", "{.status.interruptions[0].kind}"),
        "Preemption"
    );
    assert_eq!(
        jsonpath(ns, "tj/kq", "{.status.interruptions[0].reason}"),
        "WorkloadEvictedDueToPreempted",
        "Kueue's TerminationTarget names the route"
    );
    println!(
        "recorded as: {}",
        jsonpath(ns, "tj/kq", "{.status.interruptions[0]}")
    );
    let last_checkpoint = jsonpath(ns, "tj/kq", "{.status.lastCheckpoint.step}");
    assert_eq!(last_checkpoint, saved.to_string(), "status.lastCheckpoint");
    let preemptor = jsonpath(ns, "pod/urgent", "{.status.phase}");
    assert!(
        preemptor == "Pending" || preemptor == "Running",
        "the job stays queued while the preemptor has not finished: {preemptor}"
    );
}

/// The preemptor done, the gang is admitted again as attempt 2's group and
/// both ranks resume from step `saved`.
fn wait_resumed(ns: &str, saved: i64) {
    release(ns, "urgent");
    wait_condition(ns, &workload("kq-a2"), "Admitted", Duration::from_secs(120));
    for rank in 0..2 {
        let pod = format!("kq-a2-r{rank}");
        assert_pod_group(ns, &pod, "kq-a2");
        wait_until_or(
            &format!("{pod} to resume"),
            Duration::from_secs(120),
            || {
                trainer_logs(ns, &pod)
                    .contains("resumed from step")
                    .then_some(())
            },
            || format!("status: {}", jsonpath(ns, "tj/kq", "{.status}")),
        );
        let logs = trainer_logs(ns, &pod);
        assert!(
            logs.contains(&format!("resumed from step {saved} path")),
            "{pod} must resume from the newest checkpoint, step {saved}: {logs}"
        );
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_job_preempted_by_kueue_waits_gated_then_resumes_from_its_newest_checkpoint() {
    let args = ["--total-steps", "400", "--ckpt-every", "50"];
    let reference = uninterrupted(&args);
    let ns = TempNamespace::new("kueue");
    let _queues = Queues::new(&ns.name);
    let ns = &ns.name;
    claim(ns, "shared", "ReadWriteMany");
    let watch = PodWatch::start(ns);
    let _op = Operator::start(ns);
    apply(ns, &queued_job("kq", "shared", &args));

    wait_admitted_and_training(ns);
    let saved = preempt(ns, &watch);
    assert_queued(ns, saved);
    wait_resumed(ns, saved);

    wait_condition(ns, "tj/kq", "Succeeded", Duration::from_secs(240));
    let last = final_line(&trainer_logs(ns, "kq-a2-r0")).expect("a final line");
    assert_eq!(
        last, reference,
        "the run preempted by Kueue must end exactly like an uninterrupted one"
    );
    assert_eq!(jsonpath(ns, "tj/kq", "{.status.preemptions}"), "1");
    assert_eq!(jsonpath(ns, "tj/kq", "{.status.failures}"), "0");
}
