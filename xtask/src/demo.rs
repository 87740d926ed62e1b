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
        "quickstart-a1-r0",
        "-c",
        "trainer",
        "--tail=3",
    ]))?;
    println!("\nThe trainer's last lines:\n{logs}");
    step(format!(
        "demo done in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    controlplane::print_usage(paths);
    Ok(())
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
