//! `cargo xtask bench`: timings that the tests must not assert, printed.
//!
//! resume: on the local cluster, the time from the last pod of an attempt
//! being gone (the first watch event that shows it Succeeded or Failed, or
//! deleted: its containers can no longer run; the object itself may linger
//! for the operator to read its report) to the next attempt's pod being
//! created (its ADDED event), over repeated preemptions. Both times are when
//! this process received the events from one watch, in the API server's
//! order.

use crate::controlplane::kubectl;
use crate::demo::{provision_volume, start_operator};
use crate::util::{output, run, step, wait_for, Paths};
use anyhow::{Context, Result};
use serde_json::Value;
use std::io::BufReader;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "bench";

pub fn resume(paths: &Paths, rounds: u32) -> Result<()> {
    crate::cluster_up(paths, false)?;
    crate::images::build_and_import(paths)?;
    crate::test::install_crd(paths)?;
    start_operator(paths, NAMESPACE)?;
    fresh_namespace(paths, NAMESPACE, "ReadWriteOnce")?;
    let manifest = r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: ckpt}
spec: {accessModes: [ReadWriteOnce], storageClassName: "", resources: {requests: {storage: 1Gi}}}
---
apiVersion: trainingjob.dev/v1alpha1
kind: TrainingJob
metadata: {name: bench}
spec:
  checkpoint: {claimName: ckpt}
  template:
    spec:
      containers:
      - name: trainer
        image: localhost/tjo-trainer:dev
        imagePullPolicy: Never
        command: ["python3", "/opt/trainer/train.py", "--total-steps", "100000000", "--step-seconds", "0.05", "--ckpt-every", "100"]
"#;
    crate::controlplane::kubectl_apply(paths, Some(NAMESPACE), manifest)?;

    let events = Arc::new(Mutex::new(Vec::<(Instant, String, String)>::new()));
    let mut watch = kubectl(paths)?
        .args([
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = watch.stdout.take().context("watch stdout")?;
    let sink = events.clone();
    std::thread::spawn(move || {
        for ev in serde_json::Deserializer::from_reader(BufReader::new(stdout))
            .into_iter::<Value>()
            .flatten()
        {
            let name = ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let terminal = matches!(
                ev["object"]["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
            let kind = match ev["type"].as_str().unwrap_or_default() {
                "DELETED" => "GONE",
                _ if terminal => "GONE",
                other => other,
            }
            .to_string();
            sink.lock().unwrap().push((Instant::now(), kind, name));
        }
    });

    let mut samples = Vec::new();
    step(format!("{rounds} preemptions by kubectl delete pod"));
    for attempt in 1..=rounds as i32 {
        let pod = format!("bench-a{attempt}-r0");
        let next = format!("bench-a{}-r0", attempt + 1);
        wait_for(&format!("{pod} running"), Duration::from_secs(120), || {
            jsonpath(paths, "{.status.phase}") == "Running"
                && jsonpath(paths, "{.status.attempt}") == attempt.to_string()
        })?;
        run(kubectl(paths)?
            .args(["delete", "pod", "-n", NAMESPACE, &pod, "--wait=false"])
            .stdout(Stdio::null()))?;
        let seen = |kind: &str, name: &str| {
            events
                .lock()
                .unwrap()
                .iter()
                .find(|(_, k, n)| k == kind && n == name)
                .map(|(t, _, _)| *t)
        };
        let mut pair = None;
        wait_for(
            &format!("{pod} gone and {next} created"),
            Duration::from_secs(120),
            || {
                pair = seen("GONE", &pod).zip(seen("ADDED", &next));
                pair.is_some()
            },
        )?;
        let (gone, created) = pair.expect("waited for");
        samples.push(created.saturating_duration_since(gone).as_secs_f64() * 1000.0);
    }
    let _ = watch.kill();
    let _ = output(kubectl(paths)?.args(["delete", "namespace", NAMESPACE, "--wait=false"]));
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "resume: last old pod gone -> next attempt's pod created, {} preemptions: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        samples.len(),
        pct(0.50),
        pct(0.99),
        samples.last().copied().unwrap_or_default()
    );
    Ok(())
}

/// An empty namespace `ns` with a volume provisioned for its claim `ckpt`:
/// a namespace left from an earlier run still holds that run's jobs.
pub fn fresh_namespace(paths: &Paths, ns: &str, mode: &str) -> Result<()> {
    fresh_namespace_with(paths, ns, &[("ckpt", mode)])
}

/// The same, with a volume for each (claim, access mode).
/// An earlier run's namespace that will not go (seen after a soak: the
/// controller-manager's namespace controller backs off for minutes after
/// the API server restarts) stops the run with what is left in it, rather
/// than a wait with no end.
pub fn fresh_namespace_with(paths: &Paths, ns: &str, claims: &[(&str, &str)]) -> Result<()> {
    let deleted = output(kubectl(paths)?.args([
        "delete",
        "namespace",
        ns,
        "--ignore-not-found",
        "--wait=true",
        "--timeout=300s",
    ]));
    if let Err(e) = deleted {
        let left = output(kubectl(paths)?.args(["get", "all,pvc", "-n", ns])).unwrap_or_default();
        anyhow::bail!(
            "namespace {ns} from an earlier run is still being deleted after 5 minutes \
             ({e:#}); what is left:\n{left}\n`cargo xtask cluster down` and `up` start afresh"
        );
    }
    run(kubectl(paths)?
        .args(["create", "namespace", ns])
        .stdout(Stdio::null()))?;
    claims
        .iter()
        .try_for_each(|(claim, mode)| provision_volume(paths, ns, claim, mode))
}

fn jsonpath(paths: &Paths, path: &str) -> String {
    crate::controlplane::jsonpath(paths, NAMESPACE, "tj/bench", path)
}
