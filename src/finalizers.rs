//! The report finalizer on training pods: when a pod may let go of it, and
//! the small loop that releases the pods of jobs that no longer exist.

use crate::api::TrainingJob;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

/// Keeps a finished pod's object, and with it the launcher's report in its
/// termination message, until the operator has recorded the report: the
/// kubelet deletes a deleted pod's object right after its containers stop,
/// and a report read from a watch event alone would be lost to an operator
/// restart. The Job controller tracks pods the same way.
pub const REPORT_FINALIZER: &str = "trainingjob.dev/report";

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
/// job left, no reconcile of it would ever let them go. Fed by the
/// controller's own pod watch and judged against its job cache, so it
/// costs no watch and no read of its own.
pub struct Orphans {
    tx: mpsc::UnboundedSender<Arc<Pod>>,
    listed: watch::Sender<bool>,
}

impl Orphans {
    pub fn spawn(client: Client, jobs: Store<TrainingJob>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Arc<Pod>>();
        let listed = watch::Sender::new(false);
        let mut ready = listed.subscribe();
        tokio::spawn(async move {
            // Before the first list of jobs, every pod would look orphaned.
            // (Not Store::wait_until_ready: it wakes only one waiter, and the
            // controller's runner is already that one.)
            if ready.wait_for(|listed| *listed).await.is_err() {
                return;
            }
            while let Some(pod) = rx.recv().await {
                if orphaned(&jobs, &pod) {
                    release_orphan(&client, &pod).await;
                }
            }
        });
        Self { tx, listed }
    }

    /// The job cache holds a whole list: orphans can be told apart now.
    pub fn jobs_listed(&self, event: &watcher::Event<TrainingJob>) {
        if matches!(event, watcher::Event::InitDone) {
            self.listed.send_replace(true);
        }
    }

    /// Looks at a pod the watch delivered.
    pub fn offer(&self, event: &watcher::Event<Pod>) {
        if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = event {
            if releasable(p) {
                let _ = self.tx.send(Arc::new(p.clone()));
            }
        }
    }
}

fn orphaned(jobs: &Store<TrainingJob>, pod: &Pod) -> bool {
    let ns = pod.namespace().unwrap_or_default();
    let owner = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "TrainingJob");
    match owner {
        None => true,
        Some(o) => match jobs.get(&ObjectRef::new(&o.name).within(&ns)) {
            None => true,
            Some(job) => {
                job.uid().as_deref() != Some(o.uid.as_str())
                    || job.metadata.deletion_timestamp.is_some()
            }
        },
    }
}

/// A few tries: a pod that stays finished sends no further event.
async fn release_orphan(client: &Client, pod: &Pod) {
    let ns = pod.namespace().unwrap_or_default();
    let api = Api::namespaced(client.clone(), &ns);
    for delay in [1, 5, 30] {
        info!(pod = %pod.name_any(), ns = %ns, "releasing a finished pod of a deleted TrainingJob");
        match release(&api, pod).await {
            Ok(()) => return,
            Err(e) => warn!(pod = %pod.name_any(), "could not release: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(delay)).await;
    }
}
