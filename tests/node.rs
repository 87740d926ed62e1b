//! End-to-end tests on the real node: what the kubelet, containerd and runc
//! do to a container's processes and mounts. The product's whole premise is
//! that a SIGTERM reaches PID 1, SIGKILL follows the grace period, and
//! /dev/shm is what the pod says; these tests pin that down on a real
//! kubelet, not a simulation.
//!
//! The pods run `probe` from the test image (`images/test/probe.c`), which
//! appends `key=value` records (start, each signal and when it arrived,
//! statfs of /dev/shm) to stdout and to /dev/termination-log. Pods that are
//! deleted carry a finalizer, so after the kubelet has killed them the pod
//! object, with its termination message, exit code and conditions, stays
//! readable until the test lets it go.
//!
//! `kubectl drain` cordons the whole node, which would stop the pods of
//! tests running beside it from scheduling. So every test holds `NODE_LOCK`
//! shared, and the drain test holds it exclusively: it runs alone, and
//! uncordons before it lets go. Other test binaries run after this one, never
//! beside it (cargo runs test binaries one at a time).

mod common;

use common::{kubectl, kubectl_ok, kubectl_with_input, stderr, wait_until, TempNamespace};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TEST_IMAGE: &str = "localhost/tjo-test:dev";
/// The label `cargo xtask cluster up` gives its real node (not kwok's).
const NODE_LABEL: &str = "trainingjob.dev/local-node=true";
/// Holds deleted pods until the test has read their final status.
const FINALIZER: &str = "trainingjob.dev/node-test-hold";
const START: Duration = Duration::from_secs(90);

static NODE_LOCK: RwLock<()> = RwLock::new(());

/// For tests that only need the node schedulable.
fn node_shared() -> RwLockReadGuard<'static, ()> {
    NODE_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

/// For the test that cordons the node.
fn node_exclusive() -> RwLockWriteGuard<'static, ()> {
    NODE_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

fn node_name() -> String {
    let name = kubectl_ok(&[
        "get",
        "nodes",
        "-l",
        NODE_LABEL,
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    assert!(
        !name.trim().is_empty(),
        "no node labelled {NODE_LABEL}: is `cargo xtask cluster up` running with its node?"
    );
    name.trim().to_string()
}

/// A pod that runs the test image with `command` on the real node.
fn pod(name: &str, command: &[&str]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "nodeSelector": {"trainingjob.dev/local-node": "true"},
            "containers": [{
                "name": "main",
                "image": TEST_IMAGE,
                "imagePullPolicy": "Never",
                "command": command,
            }],
        },
    })
}

fn create(ns: &str, obj: &Value) {
    let out = kubectl_with_input(&["create", "-n", ns, "-f", "-"], Some(&obj.to_string()));
    assert!(out.status.success(), "kubectl create: {}", stderr(&out));
}

fn get_pod(ns: &str, name: &str) -> Option<Value> {
    let out = kubectl(&["get", "pod", name, "-n", ns, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

/// Fails at once, rather than at the deadline, when the container cannot
/// start: most often the test image was never imported.
fn fail_fast(p: &Value) {
    let waiting = &p["status"]["containerStatuses"][0]["state"]["waiting"];
    let reason = waiting["reason"].as_str().unwrap_or_default();
    assert!(
        !matches!(
            reason,
            "ErrImageNeverPull" | "CreateContainerError" | "CreateContainerConfigError"
        ),
        "pod {} cannot start: {reason}: {} (is {TEST_IMAGE} imported? `cargo xtask images`)",
        p["metadata"]["name"],
        waiting["message"]
    );
}

fn wait_for_phase(ns: &str, name: &str, want: &str) -> Value {
    wait_until(&format!("pod {name} to be {want}"), START, || {
        let p = get_pod(ns, name)?;
        fail_fast(&p);
        assert!(
            want != "Succeeded" || phase(&p) != "Failed",
            "pod {name} failed: {}",
            p["status"]
        );
        (phase(&p) == want).then_some(p)
    })
}

fn logs(ns: &str, name: &str) -> Option<String> {
    let out = kubectl(&["logs", name, "-n", ns]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until the pod's logs contain `needle` (the probe has set up its
/// signal handlers by the time it logs `event=started`).
fn wait_for_log(ns: &str, name: &str, needle: &str) {
    wait_until(&format!("{needle:?} in the logs of {name}"), START, || {
        fail_fast(&get_pod(ns, name)?);
        logs(ns, name).filter(|l| l.contains(needle)).map(|_| ())
    });
}

/// The main container's terminated state, once the kubelet reports it.
fn wait_for_termination(ns: &str, name: &str, timeout: Duration) -> Value {
    wait_until(
        &format!("container of {name} to terminate"),
        timeout,
        || {
            let p = get_pod(ns, name)?;
            let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
            t.is_object().then(|| t.clone())
        },
    )
}

/// The probe's `key=value` records.
fn records(text: &str) -> Vec<HashMap<String, String>> {
    text.lines()
        .filter(|l| l.starts_with("event="))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Milliseconds since the epoch of an API timestamp (`2026-01-02T03:04:05Z`).
fn api_time_ms(t: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| -> i64 { t[r].parse().expect("an RFC 3339 UTC time") };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm), valid for any Gregorian date.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    ((days * 24 + n(11..13)) * 3600 + n(14..16) * 60 + n(17..19)) * 1000
}

/// A pod created with a finalizer; dropping this lets it go, so the test's
/// namespace can be deleted whatever the test's outcome.
struct HeldPod<'a> {
    ns: &'a str,
    name: String,
}

impl<'a> HeldPod<'a> {
    fn create(ns: &'a str, mut spec: Value) -> Self {
        spec["metadata"]["finalizers"] = json!([FINALIZER]);
        create(ns, &spec);
        let name = spec["metadata"]["name"].as_str().unwrap().to_string();
        Self { ns, name }
    }
}

impl Drop for HeldPod<'_> {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "patch",
            "pod",
            &self.name,
            "-n",
            self.ns,
            "--type=json",
            "-p",
            r#"[{"op": "remove", "path": "/metadata/finalizers"}]"#,
        ]);
        let _ = kubectl(&["delete", "pod", &self.name, "-n", self.ns, "--wait=false"]);
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn an_exec_form_pod_runs_and_kubectl_logs_returns_its_output() {
    let _node = node_shared();
    let ns = TempNamespace::new("node-exec");
    create(
        &ns.name,
        &pod(
            "echo",
            &["/bin/probe", "echo", "hello", "from", "exec", "form"],
        ),
    );
    let p = wait_for_phase(&ns.name, "echo", "Succeeded");
    assert_eq!(p["spec"]["nodeName"].as_str(), Some(node_name().as_str()));
    assert_eq!(logs(&ns.name, "echo").unwrap(), "hello from exec form\n");
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn deleting_a_pod_sends_sigterm_to_pid_1_then_sigkill_after_the_grace_period() {
    let _node = node_shared();
    let ns = TempNamespace::new("node-sigterm");
    let grace = 4;
    let mut spec = pod("victim", &["/bin/probe", "hold"]);
    spec["spec"]["terminationGracePeriodSeconds"] = json!(grace);
    let held = HeldPod::create(&ns.name, spec);
    wait_for_log(&ns.name, &held.name, "event=started");

    let deleted_at = now_ms();
    kubectl_ok(&["delete", "pod", &held.name, "-n", &ns.name, "--wait=false"]);
    let terminated = wait_for_termination(&ns.name, &held.name, START);

    let report = terminated["message"].as_str().unwrap_or_default();
    let recs = records(report);
    assert_eq!(recs[0]["event"], "started", "{report}");
    assert_eq!(recs[0]["pid"], "1", "the probe must be PID 1: {report}");
    let signals: Vec<_> = recs.iter().filter(|r| r["event"] == "signal").collect();
    assert_eq!(
        signals.len(),
        1,
        "exactly one catchable signal, SIGTERM: {report}"
    );
    assert_eq!(signals[0]["signal"], "TERM", "{report}");
    let term_at: i64 = signals[0]["at_ms"].parse().unwrap();
    // The probe ignores SIGTERM, so only SIGKILL can have ended it.
    assert_eq!(terminated["exitCode"], 137, "{terminated}");
    let finished = api_time_ms(terminated["finishedAt"].as_str().unwrap());
    eprintln!(
        "SIGTERM {} ms after the delete request; SIGKILL about {} ms after SIGTERM (grace {grace}s)",
        term_at - deleted_at,
        finished - term_at
    );
    // finishedAt has whole seconds: allow one second of truncation.
    assert!(
        term_at >= deleted_at - 1000 && term_at < deleted_at + 30_000,
        "SIGTERM came {} ms after the delete request",
        term_at - deleted_at
    );
    assert!(
        finished >= term_at + (grace - 1) * 1000,
        "killed {} ms after SIGTERM, before the {grace}s grace period",
        finished - term_at
    );
}

/// The failure mode this product exists to remove: a shell as PID 1 gets
/// SIGTERM, ignores it (PID 1 has no default signal actions) and does not
/// forward it, so the trainer never learns of the preemption and dies by
/// SIGKILL mid-step. A shell execs a lone command (`sh -c "python train.py"`
/// happens to be safe); anything after it — `; upload-logs`, `| tee log` —
/// keeps the shell as PID 1, as here.
#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_shell_form_command_never_passes_sigterm_to_its_child() {
    let _node = node_shared();
    let ns = TempNamespace::new("node-shell");
    let grace = 3;
    let mut spec = pod(
        "shell",
        &[
            "/bin/sh",
            "-c",
            "/bin/probe hold --name child; echo the trainer exited",
        ],
    );
    spec["spec"]["terminationGracePeriodSeconds"] = json!(grace);
    let held = HeldPod::create(&ns.name, spec);
    wait_for_log(&ns.name, &held.name, "event=started name=child");

    let deleted_at = now_ms();
    kubectl_ok(&["delete", "pod", &held.name, "-n", &ns.name, "--wait=false"]);
    let terminated = wait_for_termination(&ns.name, &held.name, START);

    let report = terminated["message"].as_str().unwrap_or_default();
    let recs = records(report);
    assert_eq!(recs.len(), 1, "only the child's start, no signal: {report}");
    assert_eq!(recs[0]["name"], "child");
    assert_ne!(recs[0]["pid"], "1", "the shell, not the child, is PID 1");
    assert_eq!(terminated["exitCode"], 137, "{terminated}");
    let finished = api_time_ms(terminated["finishedAt"].as_str().unwrap());
    eprintln!(
        "shell-form pod killed {} ms after the delete request (grace {grace}s); the child saw no signal",
        finished - deleted_at
    );
    assert!(
        finished >= deleted_at + (grace - 1) * 1000,
        "the child died {} ms after the delete request, before the grace period ran out",
        finished - deleted_at
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_memory_emptydir_at_dev_shm_has_its_size_limit_and_the_default_is_64_mib() {
    let _node = node_shared();
    let ns = TempNamespace::new("node-shm");
    let mut sized = pod("sized", &["/bin/probe", "shm"]);
    sized["spec"]["volumes"] = json!([
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}}
    ]);
    sized["spec"]["containers"][0]["volumeMounts"] = json!([
        {"name": "shm", "mountPath": "/dev/shm"}
    ]);
    create(&ns.name, &sized);
    create(&ns.name, &pod("default", &["/bin/probe", "shm"]));

    let shm_bytes = |name: &str| -> u64 {
        let p = wait_for_phase(&ns.name, name, "Succeeded");
        let report = p["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let recs = records(&report);
        assert_eq!(recs[0]["event"], "statfs", "{report}");
        // 0x01021994 is TMPFS_MAGIC: memory-backed either way.
        assert_eq!(recs[0]["type"], "0x1021994", "{report}");
        recs[0]["bytes"].parse().unwrap()
    };
    assert_eq!(shm_bytes("sized"), 256 << 20);
    assert_eq!(shm_bytes("default"), 64 << 20);
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_pod_asking_for_a_gpu_is_scheduled_and_runs() {
    let _node = node_shared();
    let ns = TempNamespace::new("node-gpu");
    let mut gpu = pod("gpu", &["/bin/probe", "echo", "got a gpu"]);
    gpu["spec"]["containers"][0]["resources"] = json!({"limits": {"nvidia.com/gpu": 1}});
    create(&ns.name, &gpu);
    // More GPUs than the node has: proves the 8 are really accounted for.
    let mut greedy = pod("greedy", &["/bin/probe", "echo", "unreachable"]);
    greedy["spec"]["containers"][0]["resources"] = json!({"limits": {"nvidia.com/gpu": 9}});
    create(&ns.name, &greedy);

    let p = wait_for_phase(&ns.name, "gpu", "Succeeded");
    assert_eq!(p["spec"]["nodeName"].as_str(), Some(node_name().as_str()));
    assert_eq!(logs(&ns.name, "gpu").unwrap(), "got a gpu\n");
    let why = wait_until("the scheduler to reject 9 GPUs", START, || {
        let p = get_pod(&ns.name, "greedy")?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")?
            .clone();
        Some(c)
    });
    assert_eq!(why["reason"], "Unschedulable", "{why}");
    assert!(
        why["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nvidia.com/gpu"),
        "{why}"
    );
}

/// Uncordons the node when the drain test ends, however it ends.
struct Uncordon(String);

impl Drop for Uncordon {
    fn drop(&mut self) {
        let out = kubectl(&["uncordon", &self.0]);
        if !out.status.success() {
            eprintln!("could not uncordon {}: {}", self.0, stderr(&out));
        }
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn kubectl_drain_evicts_the_pod_with_a_disruption_target_condition() {
    let _node = node_exclusive();
    let ns = TempNamespace::new("node-drain");
    let node = node_name();
    let mut spec = pod("evicted", &["/bin/probe", "hold", "--exit-on-term"]);
    spec["metadata"]["labels"]["trainingjob.dev/drain-test"] = json!(ns.name);
    spec["spec"]["terminationGracePeriodSeconds"] = json!(10);
    let held = HeldPod::create(&ns.name, spec);
    wait_for_log(&ns.name, &held.name, "event=started");

    let uncordon = Uncordon(node.clone());
    // Only this test's pod is evicted. The finalizer keeps it from ever
    // disappearing, so drain is told to stop waiting for a pod whose
    // deletion is a second overdue, which it is once the probe has exited.
    let selector = format!("trainingjob.dev/drain-test={}", ns.name);
    let out = kubectl(&[
        "drain",
        &node,
        "--pod-selector",
        &selector,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        // A bare pod has no controller to recreate it; the operator's pods
        // will have their TrainingJob as controller and need no --force.
        "--force",
        "--skip-wait-for-delete-timeout=1",
        "--timeout=120s",
    ]);
    assert!(out.status.success(), "kubectl drain: {}", stderr(&out));
    let unschedulable = kubectl_ok(&["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(unschedulable.trim(), "true", "drain cordons the node");

    let terminated = wait_for_termination(&ns.name, &held.name, START);
    let p = get_pod(&ns.name, &held.name).expect("the finalizer keeps the pod");
    let target = p["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget"))
        .unwrap_or_else(|| panic!("no DisruptionTarget condition: {}", p["status"]));
    assert_eq!(target["status"], "True", "{target}");
    assert_eq!(target["reason"], "EvictionByEvictionAPI", "{target}");
    let recs = records(terminated["message"].as_str().unwrap_or_default());
    assert!(
        recs.iter()
            .any(|r| r["event"] == "signal" && r["signal"] == "TERM"),
        "the evicted pod got SIGTERM: {terminated}"
    );
    assert_eq!(
        terminated["exitCode"], 0,
        "it exited on SIGTERM: {terminated}"
    );

    drop(uncordon);
    let unschedulable = kubectl_ok(&["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"]);
    assert_eq!(unschedulable.trim(), "", "the node is schedulable again");
}

#[test]
fn api_times_convert_to_epoch_milliseconds() {
    assert_eq!(api_time_ms("1970-01-01T00:00:00Z"), 0);
    assert_eq!(api_time_ms("2000-03-01T00:00:01Z"), 951_868_801_000);
    assert_eq!(api_time_ms("2026-11-26T00:30:20Z"), 1_795_653_020_000);
}
