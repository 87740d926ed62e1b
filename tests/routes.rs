//! Every other route by which a cluster takes a node or a pod away, on the
//! real node: the VM lost, the node unreachable but maybe alive, scheduler
//! preemption, a forced deletion and a cloud's termination-notice taint.
//! Each must end with the gang resumed from the newest complete checkpoint,
//! counted as a preemption, and the final line of an uninterrupted run.
//!
//! Every test here stops, taints or fills the one node, so they take turns
//! on `NODE`, and each puts the node back however it ends.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

static NODE: Mutex<()> = Mutex::new(());
const NODE_NAME: &str = "tjo-node";
/// Where the kubelet writes container logs (xtask/src/node.rs POD_LOGS).
const POD_LOGS: &str = "/var/log/tjo-pods";
const STEPS: &str = "600";
const CKPT_EVERY: &str = "50";

fn xtask(args: &[&str]) {
    let xtask = std::env::var_os("TJO_XTASK")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target/debug/xtask"));
    let status = Command::new(&xtask)
        .args(args)
        .current_dir(root())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", xtask.display()));
    assert!(status.success(), "xtask {args:?} failed");
}

/// Puts the node back however a test ends: no test taint left, the kubelet
/// running, the node Ready with its GPUs, and no fake node beside it.
struct NodeBack;

impl Drop for NodeBack {
    fn drop(&mut self) {
        for taint in [
            "node.kubernetes.io/out-of-service-",
            "cloud.google.com/impending-node-termination-",
        ] {
            let _ = kubectl(&["taint", "nodes", NODE_NAME, taint]);
        }
        let _ = kubectl(&[
            "delete",
            "priorityclass",
            "tjo-test-high",
            "--ignore-not-found",
        ]);
        // A fake node left Ready would keep the next test's zone lit.
        let _ = kubectl(&["delete", "nodes", "-l", "type=kwok", "--ignore-not-found"]);
        xtask(&["cluster", "up"]);
    }
}

/// A pod's trainer paused (containerd's cgroup freezer) for as long as this
/// lives. A trainer whose node stopped answering runs on, and how long a
/// test keeps its node away depends on the machine's load: on a loaded one
/// the trainer reached its last step before the next attempt could start.
struct Paused(Vec<String>);

impl Paused {
    fn trainer(ns: &str, pod: &str) -> Self {
        let filter = format!(
            r#"labels."io.kubernetes.pod.namespace"=="{ns}",labels."io.kubernetes.pod.name"=="{pod}",labels."io.kubernetes.container.name"=="trainer""#
        );
        let listed = ctr(&["containers", "ls", "-q", &filter]);
        let ids: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert!(
            !ids.is_empty(),
            "no trainer container of {ns}/{pod} in containerd: {}",
            stderr(&listed)
        );
        for id in &ids {
            let out = ctr(&["tasks", "pause", id]);
            assert!(
                out.status.success(),
                "ctr tasks pause {id}: {}",
                stderr(&out)
            );
        }
        Self(ids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = ctr(&["tasks", "resume", id]);
        }
    }
}

/// The newest step each pod's trainer printed as saved, read from the
/// kubelet's log files as they grow: the logs of a pod on a lost node, or
/// of one deleted at once, are gone from the API before a test could ask.
struct SavedSteps {
    /// By pod: the newest step saved, and the last step trained.
    steps: Arc<Mutex<BTreeMap<String, (i64, i64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl SavedSteps {
    fn follow(ns: &str) -> Self {
        let steps = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, halt, prefix) = (steps.clone(), stop.clone(), format!("{ns}_"));
        std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                scan_saved(&prefix, &s);
                // A poll interval, not a synchronisation: saves are seconds apart.
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { steps, stop }
    }

    fn newest(&self, pod: &str) -> Option<i64> {
        self.steps.lock().unwrap().get(pod).map(|s| s.0)
    }

    fn last_step(&self, pod: &str) -> Option<i64> {
        self.steps.lock().unwrap().get(pod).map(|s| s.1)
    }
}

impl Drop for SavedSteps {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn scan_saved(prefix: &str, into: &Mutex<BTreeMap<String, (i64, i64)>>) {
    let Ok(dirs) = std::fs::read_dir(POD_LOGS) else {
        return;
    };
    for dir in dirs.flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let Some(pod) = name.strip_prefix(prefix).and_then(|r| r.rsplit_once('_')) else {
            continue;
        };
        let Ok(files) = std::fs::read_dir(dir.path().join("trainer")) else {
            continue;
        };
        for f in files.flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let saved = text
                .lines()
                .filter_map(|l| number_after(l, "saved step "))
                .max();
            // CRI log lines: "<time> stdout F step 12 loss ...".
            let trained = text
                .lines()
                .filter_map(|l| number_after(l, " F step "))
                .max();
            if let (Some(saved), Some(trained)) = (saved, trained) {
                let mut map = into.lock().unwrap();
                let e = map.entry(pod.0.to_string()).or_insert((saved, trained));
                *e = (e.0.max(saved), e.1.max(trained));
            }
        }
    }
}

fn number_after(line: &str, marker: &str) -> Option<i64> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// One job, its operator and its observers.
struct Run {
    ns: TempNamespace,
    watch: PodWatch,
    saved: SavedSteps,
    _op: Operator,
    reference: String,
}

const JOB: &str = "route";

impl Run {
    /// A job of `replicas` ranks, each asking for `gpus` of the node's.
    fn start(prefix: &str, replicas: i32, gpus: u32) -> Self {
        Self::start_with(prefix, replicas, gpus, STEPS, &[])
    }

    /// `extra`: trainer flags that change how it runs, not what it computes.
    fn start_with(
        prefix: &str,
        replicas: i32,
        gpus: u32,
        steps: &'static str,
        extra: &[&'static str],
    ) -> Self {
        let args = ["--total-steps", steps, "--ckpt-every", CKPT_EVERY];
        let reference = uninterrupted(&args);
        let ns = TempNamespace::new(prefix);
        gang_claim(&ns.name, "ckpt", replicas);
        let watch = PodWatch::start(&ns.name);
        let saved = SavedSteps::follow(&ns.name);
        let op = Operator::start(&ns.name);
        let mut flags = vec!["--ckpt-every", CKPT_EVERY];
        flags.extend_from_slice(extra);
        let cmd = train(steps, &flags);
        let spec = format!("  replicas: {replicas}\n");
        let mut manifest = job(JOB, "ckpt", &cmd, &spec);
        if gpus > 0 {
            let limits = format!("memory: 256Mi\n            nvidia.com/gpu: {gpus}");
            manifest = manifest.replace("memory: 256Mi", &limits);
        }
        apply(&ns.name, &manifest);
        wait_training(&ns.name, JOB, 1, 70);
        Self {
            ns,
            watch,
            saved,
            _op: op,
            reference,
        }
    }

    fn status(&self, path: &str) -> String {
        jsonpath(&self.ns.name, &format!("tj/{JOB}"), path)
    }

    fn wait_status(&self, what: &str, timeout: Duration, ok: impl Fn(&Run) -> bool) {
        wait_until_or(
            what,
            timeout,
            || ok(self).then_some(()),
            || {
                format!(
                    "status: {}\npods: {:?}",
                    self.status("{.status}"),
                    self.watch.pods()
                )
            },
        )
    }

    /// The checks every route shares, once the job has resumed and ended.
    /// `reasons`: what may have taken the pod, when more than one part of
    /// Kubernetes (or the operator) races to.
    fn finish(&self, route: &str, reasons: &[&str]) {
        wait_condition(
            &self.ns.name,
            &format!("tj/{JOB}"),
            "Succeeded",
            Duration::from_secs(300),
        );
        let s: Value = serde_json::from_str(&self.status("{.status}")).unwrap();
        let i = &s["interruptions"][0];
        let reason = i["reason"].as_str().unwrap_or_default();
        assert!(reasons.contains(&reason), "{route}: {reasons:?}: {s}");
        assert_eq!(
            (s["preemptions"].as_i64(), s["failures"].as_i64()),
            (Some(1), Some(0)),
            "{route}: {s}"
        );
        assert_eq!(s["preemptionsByReason"][reason], 1, "{route}: {s}");
        let newest = self
            .saved
            .newest(&format!("{JOB}-a1-r0"))
            .expect("attempt 1 saved");
        let resumed = self
            .watch
            .report(&format!("{JOB}-a2-r0"))
            .expect("attempt 2's report");
        assert_eq!(
            resumed["resumedFrom"]["step"], newest,
            "{route}: attempt 2 resumes from the newest complete checkpoint"
        );
        let last = final_line(&trainer_logs(&self.ns.name, &format!("{JOB}-a2-r0")));
        assert_eq!(last.as_deref(), Some(self.reference.as_str()), "{route}");
        let t = &i["timeline"];
        println!(
            "{route}: resumed from step {newest} after waiting {}s for the rank's lock, steps lost {}, \
             seen {} signalled {} gone {} created {} scheduled {} running {} first step {}",
            resumed["lockWaitSeconds"], i["stepsLost"], i["time"], t["signalled"], t["oldPodsGone"], t["created"],
            t["scheduled"], t["running"], t["firstStep"]
        );
        assert!(
            i["stepsLost"].is_i64(),
            "{route}: steps lost are reported: {i}"
        );
        assert_eq!(
            s["stepsLost"], i["stepsLost"],
            "{route}: the ledger's total"
        );
        let described = kubectl_ok(&["describe", "-n", &self.ns.name, &format!("tj/{JOB}")]);
        assert!(
            described.contains("Old Pods Gone:") && described.contains("First Step:"),
            "{route}: kubectl describe shows the timeline:\n{described}"
        );
        for mark in [
            "signalled",
            "oldPodsGone",
            "created",
            "scheduled",
            "running",
            "firstStep",
        ] {
            assert!(t[mark].is_string(), "{route}: no {mark} in {t}");
        }
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_lost_vm_is_a_preemption_by_podgc_and_the_job_resumes_when_capacity_returns() {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let _back = NodeBack;
    let run = Run::start("nodeloss", 1, 0);
    xtask(&["node", "stop", "--kill"]);
    kubectl_ok(&["delete", "node", NODE_NAME, "--wait=false"]);
    run.wait_status("PodGC to take the pod", Duration::from_secs(180), |r| {
        r.status("{.status.interruptions[0].reason}") == "DeletionByPodGC"
    });
    xtask(&["cluster", "up"]);
    run.finish("node loss", &["DeletionByPodGC"]);
    // The trainer died mid-step: what it trained past its newest checkpoint
    // is lost, as its launcher last saw it (at most a second behind).
    let a1 = format!("{JOB}-a1-r0");
    let trained = run.saved.last_step(&a1).unwrap() - run.saved.newest(&a1).unwrap();
    let reported: i64 = run
        .status("{.status.interruptions[0].stepsLost}")
        .parse()
        .unwrap();
    println!("node loss: {trained} steps trained past the checkpoint, {reported} reported lost");
    let per_second = 20; // --step-seconds 0.05
    assert!(
        reported <= trained && reported >= trained - 2 * per_second,
        "steps lost: reported {reported}, trained past the checkpoint {trained}"
    );
}

/// A `WaitingForNode` message names attempt 1's pod, the node, and the
/// taint that releases it.
fn names_the_pod_and_the_release(message: &str) {
    for needed in [
        format!("{JOB}-a1-r0").as_str(),
        NODE_NAME,
        "node.kubernetes.io/out-of-service",
    ] {
        assert!(message.contains(needed), "{needed} in {message}");
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn an_unreachable_node_is_held_while_its_zone_is_dark_then_taken_for_lost_and_released_by_the_out_of_service_taint(
) {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let _back = NodeBack;
    // The real node alone: stopping it darkens its whole zone.
    kubectl_ok(&["delete", "nodes", "-l", "type=kwok", "--ignore-not-found"]);
    // Long enough that the first trainer, which runs on unseen, is still
    // training when its node comes back and the next attempt starts. It is
    // paused while the zone is dark, the phase whose length the machine's
    // load decides, and runs on unseen from when the zone answers.
    let run = Run::start_with("unreachable", 1, 0, "4000", &[]);
    xtask(&["node", "stop"]);
    let paused = Paused::trainer(&run.ns.name, &format!("{JOB}-a1-r0"));
    let waiting = r#"{.status.conditions[?(@.type=="WaitingForNode")].message}"#;
    run.wait_status("the zone hold", Duration::from_secs(240), |r| {
        r.status(waiting).contains("its zone")
    });
    let held = run.status(waiting);
    names_the_pod_and_the_release(&held);
    assert_eq!(
        (
            run.status("{.status.attempt}"),
            run.status("{.status.preemptions}")
        ),
        ("1".into(), "0".into()),
        "nothing is taken for lost while every node of the zone is dark: {held}"
    );
    // A node that answers in the same zone: the zone is no longer dark, so
    // after nodeUnreachableSeconds the rank is taken for lost.
    xtask(&["cluster", "up", "--no-node", "--fake-nodes", "1"]);
    drop(paused);
    run.wait_status(
        "WaitingForNode for the old pod",
        Duration::from_secs(240),
        |r| r.status(waiting).contains("attempt 2 waits"),
    );
    let message = run.status(waiting);
    names_the_pod_and_the_release(&message);
    let events = kubectl_ok(&[
        "get",
        "events",
        "-n",
        &run.ns.name,
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(events.contains("WaitingForNode"), "{events}");
    assert_eq!(
        run.status("{.status.attempt}"),
        "1",
        "no second trainer while the first may run"
    );
    kubectl_ok(&[
        "taint",
        "nodes",
        NODE_NAME,
        "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute",
    ]);
    run.wait_status("attempt 2", Duration::from_secs(180), |r| {
        r.status("{.status.attempt}") == "2"
    });
    kubectl_ok(&[
        "taint",
        "nodes",
        NODE_NAME,
        "node.kubernetes.io/out-of-service-",
    ]);
    xtask(&["cluster", "up"]);
    // Once the zone answers, the node lifecycle controller taints the node
    // and the taint manager evicts after the pods' toleration, the same
    // 30 s the operator counts: either may come first.
    run.finish(
        "unreachable node",
        &["NodeUnreachable", "DeletionByTaintManager"],
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_higher_priority_pod_preempts_a_rank_and_the_gang_waits_for_room_without_burning_attempts() {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let _back = NodeBack;
    let run = Run::start("schedpreempt", 1, 8);
    apply(&run.ns.name, PREEMPTOR);
    let pending = format!("{JOB}-a2-r0");
    let unschedulable = r#"{.status.conditions[?(@.type=="PodScheduled")].reason}"#;
    run.wait_status(
        "attempt 2 to wait for room",
        Duration::from_secs(180),
        |r| jsonpath(&r.ns.name, &format!("pod/{pending}"), unschedulable) == "Unschedulable",
    );
    assert_eq!(
        run.status("{.status.attempt}"),
        "2",
        "waiting burns no attempt"
    );
    assert_eq!(run.status("{.status.phase}"), "Resuming");
    kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &run.ns.name,
        "preemptor",
        "--wait=false",
    ]);
    run.finish("scheduler preemption", &["PreemptionByScheduler"]);
}

/// A pod of a higher PriorityClass that needs every GPU of the node.
const PREEMPTOR: &str = r#"apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata: {name: tjo-test-high}
value: 1000000
---
apiVersion: v1
kind: Pod
metadata: {name: preemptor}
spec:
  priorityClassName: tjo-test-high
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: hog
    image: localhost/tjo-trainer:dev
    imagePullPolicy: Never
    command: [python3, -c, "import signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); signal.pause()"]
    resources: {limits: {nvidia.com/gpu: 8, memory: 64Mi}}
"#;

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_termination_notice_taint_stops_every_rank_at_once_on_one_step() {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let _back = NodeBack;
    let run = Run::start("notice", 2, 0);
    kubectl_ok(&[
        "taint",
        "nodes",
        NODE_NAME,
        "cloud.google.com/impending-node-termination=true:NoSchedule",
    ]);
    let r0 = run
        .watch
        .wait_report(&format!("{JOB}-a1-r0"), Duration::from_secs(120));
    let r1 = run
        .watch
        .wait_report(&format!("{JOB}-a1-r1"), Duration::from_secs(120));
    assert_eq!(
        r0["lastCheckpoint"]["step"], r1["lastCheckpoint"]["step"],
        "{r0} {r1}"
    );
    run.wait_status(
        "attempt 2 held back by the taint",
        Duration::from_secs(120),
        |r| r.status("{.status.attempt}") == "2",
    );
    kubectl_ok(&[
        "taint",
        "nodes",
        NODE_NAME,
        "cloud.google.com/impending-node-termination-",
    ]);
    run.finish("termination notice", &["TerminationNotice"]);
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_forced_deletion_mid_save_resumes_from_the_previous_complete_checkpoint() {
    let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
    // Every save takes 3 s, longer than the kubelet's 2 s minimum grace
    // for a forced deletion: the save in flight is torn.
    let run = Run::start_with(
        "forced",
        1,
        0,
        STEPS,
        &["--save-seconds", "3", "--always-save"],
    );
    let dir = format!("/var/lib/tjo-volumes/{}/ckpt/{JOB}", run.ns.name);
    wait_until_or(
        "a save in flight",
        Duration::from_secs(60),
        || {
            let entries = std::fs::read_dir(&dir).ok()?;
            let names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names
                .iter()
                .any(|n| n.ends_with(".tmp") && !n.ends_with(".deleting.tmp"))
                .then_some(())
        },
        || format!("{dir}: {:?}", std::fs::read_dir(&dir).map(|d| d.count())),
    );
    let pod = format!("{JOB}-a1-r0");
    kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &run.ns.name,
        &pod,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    run.finish("forced deletion", &["PodDeleted"]);
}
