//! The report finalizer on training pods (see `pods::REPORT_FINALIZER`):
//! when a pod may let go of it, and the small loop that releases the pods of
//! jobs that no longer exist.

use crate::api::TrainingJob;
use crate::pods::{MANAGED_BY, REPORT_FINALIZER};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// Whether the pod holds our finalizer and has nothing more to report: its
/// containers have all stopped, or it was deleted before it was scheduled.
pub fn releasable(pod: &Pod) -> bool {
    let holds = pod.finalizers().iter().any(|f| f == REPORT_FINALIZER);
    let status = pod.status.as_ref();
    let terminal = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let unscheduled = pod.spec.as_ref().is_none_or(|s| s.node_name.is_none());
    holds && (terminal || (pod.metadata.deletion_timestamp.is_some() && unscheduled))
}

/// Removes our finalizer. The resourceVersion makes it a compare-and-swap,
/// so another writer's finalizer is never dropped by a stale list.
pub async fn release(api: &Api<Pod>, pod: &Pod) -> kube::Result<()> {
    let rest: Vec<String> = pod
        .finalizers()
        .iter()
        .filter(|f| *f != REPORT_FINALIZER)
        .cloned()
        .collect();
    let patch = serde_json::json!({
        "metadata": {"finalizers": rest, "resourceVersion": pod.resource_version()}
    });
    match api
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Gone already, or changed under us: the next event retries.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Releases the finished pods of TrainingJobs that were deleted: with no
/// job left, no reconcile of it would ever let them go.
pub async fn release_orphans(client: Client, namespace: Option<String>) {
    let pods: Api<Pod> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let config =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    Controller::new(pods, config)
        .shutdown_on_signal()
        .run(
            reconcile_orphan,
            |_, _: &kube::Error, _| Action::requeue(Duration::from_secs(10)),
            Arc::new(client),
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile_orphan(pod: Arc<Pod>, client: Arc<Client>) -> kube::Result<Action> {
    if !releasable(&pod) {
        return Ok(Action::await_change());
    }
    let ns = pod.namespace().unwrap_or_default();
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "TrainingJob")
        .cloned();
    let jobs: Api<TrainingJob> = Api::namespaced((*client).clone(), &ns);
    let orphaned = match &owner {
        None => true,
        Some(o) => match jobs.get_opt(&o.name).await? {
            None => true,
            Some(job) => {
                job.uid().as_deref() != Some(o.uid.as_str())
                    || job.metadata.deletion_timestamp.is_some()
            }
        },
    };
    if orphaned {
        info!(pod = %pod.name_any(), ns = %ns, "releasing a finished pod of a deleted TrainingJob");
        if let Err(e) = release(&Api::namespaced((*client).clone(), &ns), &pod).await {
            warn!(pod = %pod.name_any(), "could not release: {e}");
            return Err(e);
        }
    }
    Ok(Action::await_change())
}
