//! JobSet (sigs.k8s.io/jobset) on the local cluster, for the benchmark that
//! runs one trainer under a batch/v1 Job, a JobSet and a TrainingJob. Set
//! up as Kueue is (see kueue.rs and webhooks.rs): its manager built from
//! the Go module proxy at a pinned version and run as a host process, its
//! CRD from the module's own source, and its webhooks registered by URL on
//! loopback with a certificate signed by the cluster's CA.

use crate::daemon;
use crate::util::{run, step, succeeds, write, Paths};
use crate::webhooks::{self, manifests, serves};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The JobSet release the test bed runs.
pub const JOBSET: &str = "v0.12.0";
const MODULE: &str = "sigs.k8s.io/jobset";
/// The webhook server and the health probes, on loopback only, beside
/// Kueue's (9443 and 9440).
const WEBHOOK_PORT: u16 = 9445;
const HEALTH_PORT: u16 = 9441;
/// The label the JobSet controller puts on every pod of a JobSet (through
/// its Jobs' pod templates); the pod webhooks see only such pods.
pub const JOBSET_NAME_LABEL: &str = "jobset.sigs.k8s.io/jobset-name";

fn state_dir(paths: &Paths) -> PathBuf {
    paths.state.join("jobset")
}

fn cert_dir(paths: &Paths) -> PathBuf {
    state_dir(paths).join("certs")
}

/// Brings JobSet up against the running control plane; a no-op when it is
/// already up and answering.
pub fn up(paths: &Paths) -> Result<()> {
    if webhooks::serving(paths, "jobset", HEALTH_PORT, &probe()) {
        step("jobset already up");
        return Ok(());
    }
    let started = Instant::now();
    let src = webhooks::module_source(MODULE, JOBSET)?;
    let bin = binary(paths, &src)?;
    let ca_bundle = webhooks::serving_cert(paths, &cert_dir(paths), "jobset-webhook")?;
    install_crds(paths, &src)?;
    register_webhooks(paths, &src, &ca_bundle)?;
    let config = write_config(paths)?;
    spawn(paths, &bin, &config)?;
    webhooks::wait_serving(paths, "jobset", HEALTH_PORT, &probe())?;
    step(format!(
        "jobset {JOBSET} up in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

pub fn down(paths: &Paths) -> Result<()> {
    daemon::stop(paths, "jobset", Duration::from_secs(20))
}

pub fn status(paths: &Paths) {
    webhooks::print_status(paths, "jobset", HEALTH_PORT);
}

/// The manager (the module's root package), built inside the downloaded
/// module and cached by version. Not `go install …@version` as for Kueue:
/// that also asks the proxy for the module's version list (to report a
/// deprecation), which a proxy serving only pinned versions may refuse,
/// while a build in the module needs nothing but its go.sum's pins.
fn binary(paths: &Paths, src: &Path) -> Result<PathBuf> {
    let bin = paths.cache.join(format!("jobset-{JOBSET}")).join("bin");
    if bin.join("jobset").is_file() {
        return Ok(bin);
    }
    if !succeeds(Command::new("go").arg("version")) {
        bail!("the Go toolchain is needed to build jobset, and `go version` failed");
    }
    step(format!(
        "building jobset {JOBSET} from the Go module proxy (first time only; about 5 minutes on 2 cores)"
    ));
    let started = Instant::now();
    let partial = bin.with_file_name("bin.partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    // What JobSet's Makefile sets, so the manager logs its real version.
    let ldflags = format!("-s -w -X {MODULE}/pkg/version.GitVersion={JOBSET}");
    run(Command::new("go")
        .args(["build", &format!("-ldflags={ldflags}"), "-o"])
        .arg(partial.join("jobset"))
        .arg(".")
        // The module cache is read-only: -mod=readonly builds from go.sum
        // as it is, and no go.work from above may take part.
        .current_dir(src)
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .stdin(Stdio::null()))
    .context("building jobset (its go.mod needs the Go release it names, or newer)")?;
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::rename(&partial, &bin)?;
    step(format!(
        "jobset built in {:.0}s into {}",
        started.elapsed().as_secs_f64(),
        bin.display()
    ));
    Ok(bin)
}

/// The JobSet CRD as released, but without the conversion webhook its
/// kustomization adds: v1alpha2 is the one version served, so the API
/// server never converts, and the manager registers no /convert handler
/// (JobSet has no hub type) that the webhook could reach.
fn install_crds(paths: &Paths, src: &Path) -> Result<()> {
    step(format!("installing jobset {JOBSET}'s CRD"));
    let crds = manifests(paths, &src.join("config/components/crd/bases"))?;
    webhooks::apply_crds(paths, crds)
}

/// The release's webhook configurations (config/components/webhook), named
/// as its kustomize namePrefix names them, pointed at the manager on
/// loopback, with the pod webhooks scoped as its kustomize patches scope
/// them (see `scope_pod_webhook`).
fn register_webhooks(paths: &Paths, src: &Path, ca_bundle: &str) -> Result<()> {
    let file = src.join("config/components/webhook/manifests.yaml");
    let mut configs = manifests(paths, &file)?;
    for config in &mut configs {
        let kind = config["kind"].as_str().unwrap_or_default().to_string();
        config["metadata"]["name"] = json!(match kind.as_str() {
            "MutatingWebhookConfiguration" => "jobset-mutating-webhook-configuration",
            _ => "jobset-validating-webhook-configuration",
        });
        let hooks = config["webhooks"].as_array_mut().context("no webhooks")?;
        webhooks::point_at_loopback(hooks, WEBHOOK_PORT, ca_bundle)?;
        hooks
            .iter_mut()
            .filter(|h| serves(h, ""))
            .for_each(scope_pod_webhook);
    }
    webhooks::server_side_apply(paths, configs)
}

/// JobSet's pod webhooks (exclusive placement) keep failurePolicy Fail, as
/// upstream, but see only pods that carry the JobSet name label. Without
/// the selector every pod created in the cluster would go through this
/// manager, so a JobSet manager that is down (stopped, crashed, still
/// starting) would block every other pod: the operator's, Kueue's, the
/// tests'. Only the JobSet controller's pods carry that label.
fn scope_pod_webhook(hook: &mut Value) {
    hook["objectSelector"] = json!({"matchExpressions": [{
        "key": JOBSET_NAME_LABEL,
        "operator": "Exists",
    }]});
}

/// The manager's Configuration (config.jobset.x-k8s.io/v1alpha1).
fn write_config(paths: &Paths) -> Result<PathBuf> {
    let file = state_dir(paths).join("config.yaml");
    // JSON is YAML, and serde_json writes it without a YAML library.
    let config = json!({
        "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "health": {"healthProbeBindAddress": format!("127.0.0.1:{HEALTH_PORT}")},
        // "0": no metrics server; nothing scrapes it here.
        "metrics": {"bindAddress": "0"},
        "webhook": {
            "host": "127.0.0.1",
            "port": WEBHOOK_PORT,
            "certDir": cert_dir(paths),
        },
        // One manager, started and stopped by xtask: nothing to elect.
        "leaderElection": {"leaderElect": false},
        // Its cert manager would write a Secret and patch the webhook
        // configurations' caBundle for an in-cluster Service; ours point at
        // loopback with the cluster CA's bundle instead.
        "internalCertManagement": {"enable": false},
    });
    write(&file, serde_json::to_string_pretty(&config)?)?;
    Ok(file)
}

/// Runs the manager with the admin kubeconfig. It needs no namespace of its
/// own: without leader election and cert management it keeps nothing in one.
fn spawn(paths: &Paths, bin: &Path, config: &Path) -> Result<()> {
    let mut cmd = Command::new(bin.join("jobset"));
    cmd.arg(format!("--config={}", config.display()))
        .env("KUBECONFIG", paths.kubeconfig());
    daemon::spawn(paths, "jobset", cmd)
}

/// What proves the API server gets answers from JobSet's webhooks: the
/// smallest valid JobSet, whose dry-run create goes through its mutating
/// and validating webhooks, over the same URL, certificate and caBundle as
/// the pods'. Its image is never pulled (a dry run
/// creates nothing), so it names no registry.
fn probe() -> Value {
    let pod = json!({"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "probe", "image": "tjo-xtask-probe"}],
    }});
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "tjo-xtask-probe", "namespace": "default"},
        "spec": {"replicatedJobs": [{
            "name": "probe",
            "template": {"spec": {"template": pod}},
        }]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_webhooks_see_only_jobset_pods() {
        let mut hook = json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}]});
        assert!(serves(&hook, "") && !serves(&hook, "jobset.x-k8s.io"));
        scope_pod_webhook(&mut hook);
        let expr = &hook["objectSelector"]["matchExpressions"][0];
        assert_eq!(expr["key"], JOBSET_NAME_LABEL);
        assert_eq!(expr["operator"], "Exists");
    }

    #[test]
    fn the_probe_is_a_jobset_in_a_namespace_that_always_exists() {
        let p = probe();
        assert_eq!(p["kind"], "JobSet");
        assert_eq!(p["metadata"]["namespace"], "default");
        let image = &p["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
            ["containers"][0]["image"];
        assert!(!image.as_str().unwrap().contains('/'), "no registry host");
    }
}
