//! `cargo xtask demo`: the README's main command. A real local cluster, the
//! operator, and the quickstart TrainingJob run to completion.

use crate::controlplane::{self, kubectl};
use crate::util::{output, run, step, succeeds, wait_for, Paths};
use crate::{daemon, release};
use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

pub const NAMESPACE: &str = "demo";
const OPERATOR: &str = "trainingjob-operator";

pub fn run_demo(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    crate::cluster_up(paths, false)?;
    crate::images::build_and_import(paths)?;
    crate::test::install_crd(paths)?;
    start_operator(paths)?;

    step(format!(
        "a fresh namespace {NAMESPACE:?} with a volume for the checkpoints"
    ));
    let _ = output(kubectl(paths)?.args([
        "delete",
        "namespace",
        NAMESPACE,
        "--ignore-not-found",
        "--wait=true",
    ]));
    run(kubectl(paths)?.args(["create", "namespace", NAMESPACE]))?;
    provision_volume(paths, NAMESPACE, "quickstart-checkpoints", "ReadWriteOnce")?;

    step("kubectl apply -f examples/quickstart.yaml");
    run(kubectl(paths)?
        .args(["apply", "-n", NAMESPACE, "-f"])
        .arg(paths.root.join("examples/quickstart.yaml")))?;
    let pod = "quickstart-a1-r0";
    wait_for("the trainer to get going", Duration::from_secs(300), || {
        jsonpath(paths, "tj/quickstart", "{.status.phase}") == "Running"
            && output(
                kubectl(paths)
                    .unwrap()
                    .args(["logs", "-n", NAMESPACE, pod, "-c", "trainer"]),
            )
            .map(|l| l.lines().filter(|l| l.starts_with("step ")).count() >= 100)
            .unwrap_or(false)
    })?;

    step(format!(
        "preempting: kubectl drain {} (the cloud taking the node away)",
        crate::node::NODE_NAME
    ));
    let drained = Instant::now();
    let drain = kubectl(paths)?
        .args([
            "drain",
            crate::node::NODE_NAME,
            "--pod-selector=trainingjob.dev/job=quickstart",
        ])
        .args([
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=120s",
        ])
        .status()?;
    step(format!(
        "new capacity: kubectl uncordon {}",
        crate::node::NODE_NAME
    ));
    run(kubectl(paths)?.args(["uncordon", crate::node::NODE_NAME]))?;
    if !drain.success() {
        bail!("kubectl drain failed");
    }
    wait_for("the next attempt to run", Duration::from_secs(180), || {
        jsonpath(paths, "tj/quickstart", "{.status.attempt}") == "2"
            && jsonpath(paths, "tj/quickstart", "{.status.phase}") == "Running"
    })?;
    let resumed_after = drained.elapsed();

    step("waiting for the job to succeed");
    let waited = kubectl(paths)?
        .args([
            "wait",
            "-n",
            NAMESPACE,
            "tj/quickstart",
            "--for=condition=Succeeded",
            "--timeout=300s",
        ])
        .status()?;
    run(kubectl(paths)?.args(["get", "tj", "-n", NAMESPACE]))?;
    if !waited.success() {
        let _ = run(kubectl(paths)?.args(["describe", "tj", "-n", NAMESPACE, "quickstart"]));
        bail!(
            "the quickstart job did not succeed; the operator's log is {}",
            daemon::log_file(paths, OPERATOR).display()
        );
    }
    let logs = output(kubectl(paths)?.args([
        "logs",
        "-n",
        NAMESPACE,
        "quickstart-a2-r0",
        "-c",
        "trainer",
    ]))?;
    let resumed = logs
        .lines()
        .find(|l| l.starts_with("resumed from"))
        .unwrap_or("(no resume line)");
    let last = logs
        .lines()
        .rev()
        .find(|l| l.starts_with("final "))
        .unwrap_or("(no final line)");
    println!(
        "\nPreempted by kubectl drain and resumed:\n  \
         reason:            {}\n  \
         steps lost:        {}\n  \
         time to resume:    {:.1}s from the drain to the next attempt running\n  \
         grace in force:    {}s\n  \
         the new attempt:   {resumed}\n  \
         the trainer ended: {last}",
        jsonpath(paths, "tj/quickstart", "{.status.interruptions[0].reason}"),
        jsonpath(
            paths,
            "tj/quickstart",
            "{.status.interruptions[0].stepsLost}"
        ),
        resumed_after.as_secs_f64(),
        jsonpath(paths, "tj/quickstart", "{.status.gracePeriodSeconds}"),
    );
    step(format!(
        "demo done in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    controlplane::print_usage(paths);
    Ok(())
}

fn jsonpath(paths: &Paths, object: &str, path: &str) -> String {
    kubectl(paths)
        .and_then(|mut k| {
            output(k.args([
                "get",
                "-n",
                NAMESPACE,
                object,
                "-o",
                &format!("jsonpath={path}"),
            ]))
        })
        .unwrap_or_default()
}

/// The operator from this checkout, run beside the cluster with the admin
/// kubeconfig. Restarted when the binary changed since it was started.
pub fn start_operator(paths: &Paths) -> Result<()> {
    crate::util::apt_install(&["curl"])?;
    let bin = release::static_binaries(paths)?.join(OPERATOR);
    daemon::stop(paths, OPERATOR, Duration::from_secs(10))?;
    let mut cmd = Command::new(&bin);
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:18080",
        "--operator-image",
        crate::images::OPERATOR_IMAGE,
    ])
    .env("KUBECONFIG", paths.kubeconfig());
    daemon::spawn(paths, OPERATOR, cmd)?;
    wait_for("the operator to be ready", Duration::from_secs(60), || {
        succeeds(Command::new("curl").args(["-sf", "http://127.0.0.1:18080/readyz"]))
    })
    .with_context(|| daemon::log_tail(paths, OPERATOR, 20))
}

/// A hostPath PersistentVolume bound in advance to `ns/claim`: the local
/// cluster has no dynamic provisioner.
pub fn provision_volume(paths: &Paths, ns: &str, claim: &str, mode: &str) -> Result<()> {
    let manifest = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {ns}-{claim}\nspec:\n  capacity: {{storage: 1Gi}}\n  \
         accessModes: [{mode}]\n  persistentVolumeReclaimPolicy: Retain\n  storageClassName: \"\"\n  \
         claimRef: {{namespace: {ns}, name: {claim}}}\n  hostPath: {{path: /var/lib/tjo-volumes/{ns}/{claim}, type: DirectoryOrCreate}}\n"
    );
    // A volume left from an earlier run still holds that run's checkpoints.
    let _ = output(kubectl(paths)?.args([
        "delete",
        "pv",
        &format!("{ns}-{claim}"),
        "--ignore-not-found",
    ]));
    let _ = std::fs::remove_dir_all(format!("/var/lib/tjo-volumes/{ns}/{claim}"));
    let mut child = kubectl(paths)?
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(manifest.as_bytes())?;
    if !child.wait()?.success() {
        bail!("creating the PersistentVolume for {ns}/{claim} failed");
    }
    Ok(())
}
