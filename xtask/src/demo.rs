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
    fresh_namespace(paths)?;
    start_quickstart(paths)?;
    let drained = drain_the_node(paths)?;
    wait_for("the next attempt to run", Duration::from_secs(180), || {
        jsonpath(paths, "tj/quickstart", "{.status.attempt}") == "2"
            && jsonpath(paths, "tj/quickstart", "{.status.phase}") == "Running"
    })?;
    let resumed_after = drained.elapsed();
    wait_for_success(paths)?;
    report(paths, resumed_after)?;
    step(format!(
        "demo done in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    controlplane::print_usage(paths);
    Ok(())
}

/// The demo namespace with the operator installed, no job of an earlier
/// run, and a fresh volume.
fn fresh_namespace(paths: &Paths) -> Result<()> {
    step(format!(
        "namespace {NAMESPACE:?}, emptied of an earlier run, with a fresh volume"
    ));
    // The namespace itself stays between runs: the chart's Role for the
    // operator lives in it, and deleting it would cut the operator off.
    if !succeeds(kubectl(paths)?.args(["get", "namespace", NAMESPACE])) {
        run(kubectl(paths)?.args(["create", "namespace", NAMESPACE]))?;
    }
    install_operator(paths)?;
    for kind in ["trainingjobs", "persistentvolumeclaims"] {
        run(kubectl(paths)?
            .args([
                "delete",
                kind,
                "--all",
                "-n",
                NAMESPACE,
                "--wait=true",
                "--timeout=120s",
            ])
            .stdout(std::process::Stdio::null()))?;
    }
    provision_volume(paths, NAMESPACE, "quickstart-checkpoints", "ReadWriteOnce")
}

/// Applies the quickstart and waits for its trainer's first 100 steps.
fn start_quickstart(paths: &Paths) -> Result<()> {
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
    })
}

/// Drains the node under the job and uncordons it again, as new capacity;
/// returns when the drain began.
fn drain_the_node(paths: &Paths) -> Result<Instant> {
    step(format!(
        "preempting: kubectl drain {} (the cloud taking the node away)",
        controlplane::NODE_NAME
    ));
    let drained = Instant::now();
    let drain = kubectl(paths)?
        .args([
            "drain",
            controlplane::NODE_NAME,
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
        controlplane::NODE_NAME
    ));
    run(kubectl(paths)?.args(["uncordon", controlplane::NODE_NAME]))?;
    if !drain.success() {
        bail!("kubectl drain failed");
    }
    Ok(drained)
}

fn wait_for_success(paths: &Paths) -> Result<()> {
    step("waiting for the job to succeed");
    let waited = controlplane::wait_condition(
        paths,
        Some(NAMESPACE),
        "tj/quickstart",
        "Succeeded",
        Duration::from_secs(300),
    );
    run(kubectl(paths)?.args(["get", "tj", "-n", NAMESPACE]))?;
    if let Err(e) = waited {
        let _ = run(kubectl(paths)?.args(["describe", "tj", "-n", NAMESPACE, "quickstart"]));
        bail!(
            "the quickstart job did not succeed ({e}); the operator's log: \
             kubectl -n trainingjob-system logs deploy/{OPERATOR}"
        );
    }
    Ok(())
}

/// What the preemption cost, and whether the trainer ended as an
/// uninterrupted run does.
fn report(paths: &Paths, resumed_after: Duration) -> Result<()> {
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
         reason:               {}\n  \
         steps lost:           {}\n  \
         time to resume:       {:.1}s from the drain to the next attempt running\n  \
         grace in force:       {}s\n  \
         the new attempt:      {resumed}\n  \
         the trainer ended:    {last}",
        jsonpath(paths, "tj/quickstart", "{.status.interruptions[0].reason}"),
        jsonpath(
            paths,
            "tj/quickstart",
            "{.status.interruptions[0].stepsLost}"
        ),
        resumed_after.as_secs_f64(),
        jsonpath(paths, "tj/quickstart", "{.status.gracePeriodSeconds}"),
    );
    let reference = uninterrupted_final_line(paths)?;
    println!(
        "  an uninterrupted run: {reference}\n  identical:            {}",
        if reference == last {
            "yes, bit for bit"
        } else {
            "NO"
        }
    );
    if reference != last {
        bail!("the preempted run ended differently from an uninterrupted one");
    }
    Ok(())
}

/// The example trainer's last line with the quickstart's settings and
/// nothing interrupting it, run here on the host.
fn uninterrupted_final_line(paths: &Paths) -> Result<String> {
    let dir = paths.state.join("demo-reference");
    let _ = std::fs::remove_dir_all(&dir);
    let out = output(
        Command::new("python3")
            .arg(paths.root.join("examples/trainer/train.py"))
            .args([
                "--total-steps",
                "600",
                "--ckpt-every",
                "100",
                "--checkpoint-dir",
            ])
            .arg(&dir),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out
        .lines()
        .rev()
        .find(|l| l.starts_with("final "))
        .unwrap_or_default()
        .to_string())
}

fn jsonpath(paths: &Paths, object: &str, path: &str) -> String {
    controlplane::jsonpath(paths, NAMESPACE, object, path)
}

/// The operator in the cluster, installed the way platform teams do: with
/// Helm, from this checkout's chart and image, managing the demo namespace.
pub fn install_operator(paths: &Paths) -> Result<()> {
    step("helm upgrade --install trainingjob-operator charts/trainingjob-operator");
    let helm = crate::helm::helm(paths)?.join("helm");
    // This checkout's image, not the chart's published one. Its tag is
    // always `dev`: an annotation with the image's input hash rolls the pod
    // exactly when the image was rebuilt.
    let image_key = crate::images::imported_key(crate::images::OPERATOR_IMAGE).unwrap_or_default();
    run(Command::new(helm)
        .env("KUBECONFIG", paths.kubeconfig())
        .args(["upgrade", "--install", OPERATOR, "charts/trainingjob-operator"])
        .args(["--namespace", "trainingjob-system", "--create-namespace", "--take-ownership"])
        .args(["--set", &format!("watchNamespace={NAMESPACE}")])
        .args(crate::images::operator_image_values())
        .args(["--set-string", &format!("podAnnotations.trainingjob\\.dev/image={image_key}")])
        .args(["--wait", "--timeout", "180s"])
        .current_dir(&paths.root))
    .with_context(|| "helm could not install the operator; `kubectl -n trainingjob-system describe pods` says why")?;
    run(kubectl(paths)?.args(["get", "pods", "-n", "trainingjob-system"]))
}

/// The operator from this checkout, run beside the cluster with the admin
/// kubeconfig and scoped to `namespace` (for the benchmarks, which time the
/// operator alone). Restarted on every call so it is this build's.
pub fn start_operator(paths: &Paths, namespace: &str) -> Result<()> {
    crate::util::apt_install(&["curl"])?;
    let bin = release::static_binaries(paths)?.join(OPERATOR);
    daemon::stop(paths, OPERATOR, Duration::from_secs(10))?;
    let mut cmd = Command::new(&bin);
    cmd.args([
        "run",
        "--namespace",
        namespace,
        "--listen",
        "127.0.0.1:18080",
    ])
    .args(["--operator-image", crate::images::OPERATOR_IMAGE])
    .env("KUBECONFIG", paths.kubeconfig());
    daemon::spawn(paths, OPERATOR, cmd)?;
    wait_for("the operator to be ready", Duration::from_secs(60), || {
        succeeds(Command::new("curl").args(["-sf", "http://127.0.0.1:18080/readyz"]))
    })
    .with_context(|| daemon::log_tail(paths, OPERATOR, 20))
}

/// Where `ns/claim`'s volume lies on the node (see `provision_volume`).
pub fn volume_dir(ns: &str, claim: &str) -> std::path::PathBuf {
    std::path::Path::new(VOLUMES).join(ns).join(claim)
}

const VOLUMES: &str = "/var/lib/tjo-volumes";

/// A hostPath PersistentVolume bound in advance to `ns/claim`: the local
/// cluster has no dynamic provisioner.
pub fn provision_volume(paths: &Paths, ns: &str, claim: &str, mode: &str) -> Result<()> {
    let path = volume_dir(ns, claim);
    let manifest = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {ns}-{claim}\nspec:\n  capacity: {{storage: 1Gi}}\n  \
         accessModes: [{mode}]\n  persistentVolumeReclaimPolicy: Retain\n  storageClassName: \"\"\n  \
         claimRef: {{namespace: {ns}, name: {claim}}}\n  hostPath: {{path: {}, type: DirectoryOrCreate}}\n",
        path.display()
    );
    // A volume left from an earlier run still holds that run's checkpoints.
    let _ = output(kubectl(paths)?.args([
        "delete",
        "pv",
        &format!("{ns}-{claim}"),
        "--ignore-not-found",
    ]));
    let _ = std::fs::remove_dir_all(&path);
    controlplane::kubectl_apply(paths, None, &manifest)
        .with_context(|| format!("creating the PersistentVolume for {ns}/{claim}"))
}
