//! What `helm uninstall` runs before it removes the operator: releases the
//! operator's finalizers so that nothing it owned is left Terminating.
//!
//! Only the operator removes `finalizers::REPORT_FINALIZER`. Once it is
//! uninstalled, a training pod that still holds the finalizer can never be
//! deleted, and neither can its namespace. So the chart's pre-delete hook
//! runs `trainingjob-operator release-finalizers`: it first stops the
//! operator (scales its Deployment to zero and waits for its pods to be
//! gone), so that no new pod with the finalizer appears behind it, then
//! takes the finalizer off every pod the operator manages. The pods keep
//! running; their reports are simply no longer collected.

use crate::finalizers;
use crate::finalizers::REPORT_FINALIZER;
use crate::labels::MANAGED_BY;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

#[derive(clap::Args)]
pub struct Args {
    /// The namespace whose training pods to release (default: all).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// The operator's Deployment, as NAMESPACE/NAME: scaled to zero, and
    /// its pods waited out, before anything is released.
    #[arg(long)]
    stop_deployment: Option<String>,
    /// How long to wait for the operator to stop and the pods to let go.
    #[arg(long, default_value_t = 120)]
    timeout_seconds: u64,
}

/// The subcommand: 0 when every managed pod is free of the finalizer.
pub async fn main(args: Args) -> i32 {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .try_init();
    let client = match Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot build a Kubernetes client: {e}");
            return 1;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_seconds);
    if let Some(target) = &args.stop_deployment {
        if let Err(e) = stop_operator(&client, target, deadline).await {
            warn!("could not stop the operator {target}: {e}");
            return 1;
        }
    }
    match release_all(&client, args.namespace.as_deref(), deadline).await {
        Ok(released) => {
            info!("released {released} pod(s) from {REPORT_FINALIZER}");
            0
        }
        Err(e) => {
            warn!("could not release every pod: {e}");
            1
        }
    }
}

/// Scales `namespace/name` to zero and waits until none of its pods is left.
async fn stop_operator(client: &Client, target: &str, deadline: Instant) -> Result<(), String> {
    let (ns, name) = target
        .split_once('/')
        .ok_or_else(|| format!("{target:?} is not NAMESPACE/NAME"))?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let Some(deployment) = deployments.get_opt(name).await.map_err(|e| e.to_string())? else {
        info!("deployment {target} is already gone");
        return Ok(());
    };
    let selector = deployment
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("deployment {target} selects its pods by no label"))?;
    let scale = serde_json::json!({"spec": {"replicas": 0}});
    deployments
        .patch_scale(name, &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .map_err(|e| e.to_string())?;
    info!("scaled {target} to zero; waiting for its pods to be gone");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selected = ListParams::default().labels(&selector);
    loop {
        let left = pods
            .list_metadata(&selected)
            .await
            .map_err(|e| e.to_string())?;
        if left.items.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = left.items.iter().map(|p| p.name_any()).collect();
        wait_or_give_up(deadline, &format!("operator pods still there: {names:?}")).await?;
    }
}

/// Takes the finalizer off every managed pod, listing again until none
/// holds it: a release that lost a compare-and-swap is retried on the next
/// listing. Returns how many pods were released.
async fn release_all(
    client: &Client,
    namespace: Option<&str>,
    deadline: Instant,
) -> Result<usize, String> {
    let pods: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let managed =
        ListParams::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    let mut released = std::collections::BTreeSet::new();
    loop {
        let holding: Vec<Pod> = pods
            .list(&managed)
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|p| p.finalizers().iter().any(|f| f == REPORT_FINALIZER))
            .collect();
        if holding.is_empty() {
            return Ok(released.len());
        }
        for pod in &holding {
            let ns = pod.namespace().unwrap_or_default();
            finalizers::release(&Api::namespaced(client.clone(), &ns), pod)
                .await
                .map_err(|e| e.to_string())?;
            released.insert(format!("{ns}/{}", pod.name_any()));
        }
        let names: Vec<String> = holding.iter().map(|p| p.name_any()).collect();
        wait_or_give_up(deadline, &format!("pods still holding it: {names:?}")).await?;
    }
}

/// A short pause before the next look, or the error once `deadline` passed.
async fn wait_or_give_up(deadline: Instant, state: &str) -> Result<(), String> {
    if Instant::now() >= deadline {
        return Err(format!("timed out; {state}"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}
