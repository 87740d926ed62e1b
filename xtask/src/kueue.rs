//! Kueue (sigs.k8s.io/kueue), the GPU cluster's job queue, on the local
//! cluster: its manager built from the Go module proxy at a pinned version
//! and run as a host process like the control plane, its CRDs from the
//! module's own source, and its webhooks registered by URL on loopback
//! (the API server runs on this host too, so it reaches them there).
//!
//! Only the plain-Pod integration is enabled, which is what TrainingJobs
//! use: the operator's pods carry the queue-name and pod-group labels, and
//! Kueue admits and evicts each attempt's gang as one Workload.

use crate::controlplane::kubectl;
use crate::daemon;
use crate::util::{run, step, succeeds, write, Paths};
use crate::webhooks::{self, manifests, serves};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The Kueue release the test bed runs.
pub const KUEUE: &str = "v0.19.2";
const MODULE: &str = "sigs.k8s.io/kueue";
/// The webhook server and the health probes, on loopback only: nothing
/// but the API server and xtask itself needs them.
const WEBHOOK_PORT: u16 = 9443;
const HEALTH_PORT: u16 = 9440;
/// The label a pod asks for a queue with; the pod webhooks see only such pods.
pub const QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// Kueue's own namespace: excluded from management, as upstream does.
const NAMESPACE: &str = "kueue-system";
/// Where the manager reads its metrics certificate when it does not manage
/// certificates itself. The path is fixed in cmd/kueue/main.go, so the
/// manager sees our folder there through a mount of its own (see `spawn`).
const METRICS_CERT_DIR: &str = "/etc/kueue/metrics/certs";

fn state_dir(paths: &Paths) -> PathBuf {
    paths.state.join("kueue")
}

fn cert_dir(paths: &Paths) -> PathBuf {
    state_dir(paths).join("certs")
}

/// Brings Kueue up against the running control plane; a no-op when it is
/// already up and answering.
pub fn up(paths: &Paths) -> Result<()> {
    if webhooks::serving(paths, "kueue", HEALTH_PORT, &probe()) {
        step("kueue already up");
        return Ok(());
    }
    let started = Instant::now();
    let bin = binary(paths)?;
    let src = webhooks::module_source(MODULE, KUEUE)?;
    let ca_bundle = webhooks::serving_cert(paths, &cert_dir(paths), "kueue-webhook")?;
    install_crds(paths, &src, &ca_bundle)?;
    register_webhooks(paths, &src, &ca_bundle)?;
    let config = write_config(paths)?;
    spawn(paths, &bin, &config)?;
    webhooks::wait_serving(paths, "kueue", HEALTH_PORT, &probe())?;
    step(format!(
        "kueue {KUEUE} up in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

pub fn down(paths: &Paths) -> Result<()> {
    daemon::stop(paths, "kueue", Duration::from_secs(20))
}

pub fn status(paths: &Paths) {
    webhooks::print_status(paths, "kueue", HEALTH_PORT);
}

/// The manager, built with `go install` (Kueue's go.mod has no replace
/// directives) and cached by version.
fn binary(paths: &Paths) -> Result<PathBuf> {
    let bin = paths.cache.join(format!("kueue-{KUEUE}")).join("bin");
    if bin.join("kueue").is_file() {
        return Ok(bin);
    }
    if !succeeds(Command::new("go").arg("version")) {
        bail!("the Go toolchain is needed to build kueue, and `go version` failed");
    }
    step(format!(
        "building kueue {KUEUE} from the Go module proxy (first time only; about 10 minutes on 2 cores)"
    ));
    let started = Instant::now();
    let partial = bin.with_file_name("bin.partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    // What Kueue's Makefile sets, so the manager logs its real version.
    let ldflags = format!("-s -w -X {MODULE}/pkg/version.GitVersion={KUEUE}");
    run(Command::new("go")
        .args(["install", &format!("-ldflags={ldflags}")])
        .arg(format!("{MODULE}/cmd/kueue@{KUEUE}"))
        .env("GOBIN", &partial)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .stdin(Stdio::null()))
    .context("building kueue (its go.mod needs the Go release it names, or newer)")?;
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::rename(&partial, &bin)?;
    step(format!(
        "kueue built in {:.0}s into {}",
        started.elapsed().as_secs_f64(),
        bin.display()
    ));
    Ok(bin)
}

/// Kueue's CRDs, with the conversion webhooks its kustomization enables
/// (v1beta1 <-> v1beta2), pointed at the manager on loopback. Objects are
/// stored as v1beta2, which is what the manager and the tests use, so the
/// API server calls that webhook only for v1beta1 clients.
fn install_crds(paths: &Paths, src: &Path, ca_bundle: &str) -> Result<()> {
    step(format!("installing kueue {KUEUE}'s CRDs"));
    let crd = src.join("config/components/crd");
    let converted = converted_crds(&std::fs::read_to_string(crd.join("kustomization.yaml"))?);
    let mut crds = manifests(paths, &crd.join("bases"))?;
    for c in &mut crds {
        let plural = c["spec"]["names"]["plural"].as_str().unwrap_or_default();
        if converted.iter().any(|p| p == plural) {
            c["spec"]["conversion"] = json!({
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": client_config("/convert", ca_bundle),
                    "conversionReviewVersions": ["v1"],
                },
            });
        }
    }
    webhooks::apply_crds(paths, crds)
}

/// The plurals whose conversion webhook the release's kustomization turns
/// on (`- path: patches/webhook_in_<plural>.yaml`, not commented out).
fn converted_crds(kustomization: &str) -> Vec<String> {
    kustomization
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("- path: patches/webhook_in_")?
                .strip_suffix(".yaml")
                .map(String::from)
        })
        .collect()
}

fn client_config(path: &str, ca_bundle: &str) -> Value {
    webhooks::client_config(WEBHOOK_PORT, path, ca_bundle)
}

/// The release's webhook configurations (config/components/webhook), for
/// the two things this test bed enables: Kueue's own objects and plain
/// Pods. The other integrations' webhooks (Job, Deployment, StatefulSet,
/// ...) are left out: with failurePolicy Fail they would make every such
/// object in the cluster wait on this manager.
fn register_webhooks(paths: &Paths, src: &Path, ca_bundle: &str) -> Result<()> {
    let file = src.join("config/components/webhook/manifests.yaml");
    let mut configs = manifests(paths, &file)?;
    for config in &mut configs {
        let kind = config["kind"].as_str().unwrap_or_default().to_string();
        // The names Kueue's own release gives them (kustomize namePrefix).
        config["metadata"]["name"] = json!(match kind.as_str() {
            "MutatingWebhookConfiguration" => "kueue-mutating-webhook-configuration",
            _ => "kueue-validating-webhook-configuration",
        });
        let hooks = config["webhooks"].as_array_mut().context("no webhooks")?;
        hooks.retain(|w| serves(w, "") || serves(w, "kueue.x-k8s.io"));
        webhooks::point_at_loopback(hooks, WEBHOOK_PORT, ca_bundle)?;
        hooks
            .iter_mut()
            .filter(|h| serves(h, ""))
            .for_each(scope_pod_webhook);
    }
    webhooks::server_side_apply(paths, configs)
}

/// Upstream's namespace selector (from its kustomization), plus an object
/// selector on the queue-name label. failurePolicy stays Fail, as upstream:
/// a pod that asks for a queue must not start unqueued while Kueue is down,
/// and with the object selector a pod that does not ask (every other test's)
/// never waits on Kueue at all. The cost: Kueue's defaulting of pods to a
/// LocalQueue named `default` does not happen here.
fn scope_pod_webhook(hook: &mut Value) {
    hook["namespaceSelector"] = json!({"matchExpressions": [{
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", NAMESPACE],
    }]});
    hook["objectSelector"] = json!({"matchExpressions": [{
        "key": QUEUE_LABEL,
        "operator": "Exists",
    }]});
}

/// The manager's Configuration (config.kueue.x-k8s.io/v1beta2).
fn write_config(paths: &Paths) -> Result<PathBuf> {
    let file = state_dir(paths).join("config.yaml");
    // JSON is YAML, and serde_json writes it without a YAML library.
    let config = json!({
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
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
        "internalCertManagement": {"enable": false},
        "manageJobsWithoutQueueName": false,
        "managedJobsNamespaceSelector": {"matchExpressions": [{
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["kube-system", NAMESPACE],
        }]},
        "integrations": {"frameworks": ["pod"]},
        // The visibility API is an aggregated API server of its own, which
        // would need an APIService and a port; no test reads it.
        "featureGates": {"VisibilityOnDemand": false},
    });
    write(&file, serde_json::to_string_pretty(&config)?)?;
    Ok(file)
}

/// Runs the manager with the admin kubeconfig, in a mount namespace of its
/// own where the certificate folder also appears at METRICS_CERT_DIR: the
/// manager refuses to start without a certificate there, and the host's
/// /etc gets only the empty mount point, never a key.
fn spawn(paths: &Paths, bin: &Path, config: &Path) -> Result<()> {
    kubectl_ensure_namespace(paths)?;
    std::fs::create_dir_all(METRICS_CERT_DIR)
        .with_context(|| format!("creating the mount point {METRICS_CERT_DIR}"))?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
        .arg("kueue")
        .arg(cert_dir(paths))
        .arg(METRICS_CERT_DIR)
        .arg(bin.join("kueue"))
        .arg(format!("--config={}", config.display()))
        .env("KUBECONFIG", paths.kubeconfig());
    daemon::spawn(paths, "kueue", cmd)
}

fn kubectl_ensure_namespace(paths: &Paths) -> Result<()> {
    if succeeds(kubectl(paths)?.args(["get", "namespace", NAMESPACE])) {
        return Ok(());
    }
    run(kubectl(paths)?
        .args(["create", "namespace", NAMESPACE])
        .stdout(Stdio::null()))
}

/// What proves the API server gets answers from Kueue's webhooks: a
/// ResourceFlavor's dry-run create goes through its mutating and validating
/// webhooks, over the same URL, certificate and caBundle as the pods'.
fn probe() -> Value {
    json!({
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "ResourceFlavor",
        "metadata": {"name": "tjo-xtask-probe"},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_webhooks_are_read_from_the_kustomization() {
        let k = "patches:\n- path: patches/webhook_in_localqueues.yaml\n\
                 #- path: patches/webhook_in_resourceflavors.yaml\n";
        assert_eq!(converted_crds(k), vec!["localqueues".to_string()]);
    }

    #[test]
    fn pod_webhooks_see_only_pods_that_ask_for_a_queue() {
        let mut hook = json!({"rules": [{"apiGroups": [""], "resources": ["pods"]}]});
        assert!(serves(&hook, "") && !serves(&hook, "kueue.x-k8s.io"));
        scope_pod_webhook(&mut hook);
        assert_eq!(
            hook["objectSelector"]["matchExpressions"][0]["key"],
            QUEUE_LABEL
        );
        assert_eq!(
            hook["objectSelector"]["matchExpressions"][0]["operator"],
            "Exists"
        );
    }
}
