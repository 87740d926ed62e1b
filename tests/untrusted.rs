//! Mistaken specs and hostile trainers on the real node: a refusal the
//! schema could not foresee is named in status once and retried with
//! backoff; a trainer cannot turn its own exit into a preemption.
//! Each test has its own namespace and its own operator process.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn events(ns: &str, reason: &str) -> usize {
    let out = kubectl_ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        &format!("reason={reason}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    out.split_whitespace().count()
}

fn log_count(op: &Operator, needle: &str) -> usize {
    std::fs::read_to_string(&op.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_pod_refused_by_pod_security_is_named_once_and_retried_with_backoff() {
    let ns = TempNamespace::new("restricted");
    kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let op = Operator::start(&ns.name);
    // No securityContext: restricted refuses it, which no schema can know.
    let cmd = ["python3", "-c", "print('never runs')"];
    let applied = Instant::now();
    apply(&ns.name, &job("open", "ckpt", &cmd, ""));
    wait_condition(&ns.name, "tj/open", "SpecProblem", Duration::from_secs(10));
    println!("SpecProblem {:?} after the apply", applied.elapsed());
    let message = jsonpath(
        &ns.name,
        "tj/open",
        r#"{.status.conditions[?(@.type=="SpecProblem")].message}"#,
    );
    assert!(message.contains("PodSecurity"), "{message}");
    assert!(
        message.contains("spec.template"),
        "names the field: {message}"
    );
    // Watch it for a minute: one event, no pod, and refused creates no
    // faster than the backoff (10 s, then as long as the problem lasted).
    let window = Instant::now() + Duration::from_secs(60);
    // A fixed window sampled every 2 s: nothing is awaited here, the test
    // watches that nothing happens faster than the backoff allows.
    while Instant::now() < window {
        assert!(pod_names(&ns.name, "open").is_empty(), "no pod may start");
        assert!(events(&ns.name, "SpecCannotRun") <= 1, "a second event");
        std::thread::sleep(Duration::from_secs(2));
    }
    let tries = log_count(&op, "dry run refused");
    println!("dry runs refused in the first 60 s: {tries}");
    assert_eq!(events(&ns.name, "SpecCannotRun"), 1);
    // A 5-second retry would have made 12; the backoff makes at most 6.
    assert!((1..=6).contains(&tries), "{tries} dry runs in 60 s");
}

/// A trainer that signals itself, or claims a peer stopped it, with no
/// disruption in the cluster, has failed: it cannot escape backoffLimit.
fn spoof_fails_the_job(name: &str, script: &str) {
    let ns = TempNamespace::new(name);
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let _op = Operator::start(&ns.name);
    let cmd = ["python3", "-c", script];
    let spec = "  backoffLimit: 0\n";
    let manifest = job(name, "ckpt", &cmd, "").replace("  backoffLimit: 2\n", spec);
    apply(&ns.name, &manifest);
    let object = format!("tj/{name}");
    wait_condition(&ns.name, &object, "Failed", Duration::from_secs(120));
    assert_eq!(jsonpath(&ns.name, &object, "{.status.failures}"), "1");
    assert_eq!(jsonpath(&ns.name, &object, "{.status.preemptions}"), "0");
    let message = jsonpath(
        &ns.name,
        &object,
        r#"{.status.conditions[?(@.type=="Failed")].message}"#,
    );
    assert!(message.contains("no rank was taken away"), "{message}");
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_trainer_that_signals_its_own_pid_1_has_failed() {
    let script = "import os, signal, time\n\
                  signal.signal(signal.SIGTERM, lambda *a: os._exit(0))\n\
                  os.kill(1, signal.SIGTERM)\n\
                  time.sleep(30)\n";
    spoof_fails_the_job("selfkill", script);
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_spoofed_peer_stop_counts_as_a_failure() {
    let script = "import json, os\n\
                  p = os.environ['TJ_PROGRESS_FILE']\n\
                  open(p + '.tmp', 'w').write(json.dumps({'step': 5, 'peerStop': {'rank': 1, 'signal': 'SIGTERM'}}))\n\
                  os.rename(p + '.tmp', p)\n";
    spoof_fails_the_job("peerspoof", script);
}
