//! Running under Kueue (its plain-Pod integration). A TrainingJob labelled
//! with a Kueue queue becomes one Kueue pod group per attempt: every pod of
//! the attempt carries the queue, the group's name and its size, so Kueue
//! admits the gang as one workload or not at all, and evicts it as one.
//! Kueue's own webhook adds the scheduling gate; a gated pod is queued, and
//! a pod Kueue takes away to reclaim quota is a preemption like any other.

use crate::api::TrainingJob;
use kube::ResourceExt;
use std::collections::BTreeMap;

pub const QUEUE_NAME_LABEL: &str = "kueue.x-k8s.io/queue-name";
pub const PRIORITY_CLASS_LABEL: &str = "kueue.x-k8s.io/priority-class";
pub const POD_GROUP_NAME_LABEL: &str = "kueue.x-k8s.io/pod-group-name";
pub const POD_GROUP_TOTAL_COUNT_ANNOTATION: &str = "kueue.x-k8s.io/pod-group-total-count";
pub const RETRIABLE_IN_GROUP_ANNOTATION: &str = "kueue.x-k8s.io/retriable-in-group";

/// Group labels and annotation for one pod of `attempt`, when the job names
/// a queue. A group per attempt: the next attempt is a new workload that
/// Kueue admits whole, while the evicted one finishes with its pods.
pub fn pod_group(
    job: &TrainingJob,
    attempt: i32,
    labels: &mut BTreeMap<String, String>,
    annotations: &mut BTreeMap<String, String>,
) {
    let Some(queue) = job.labels().get(QUEUE_NAME_LABEL) else {
        return;
    };
    labels.insert(QUEUE_NAME_LABEL.into(), queue.clone());
    if let Some(priority) = job.labels().get(PRIORITY_CLASS_LABEL) {
        labels.insert(PRIORITY_CLASS_LABEL.into(), priority.clone());
    }
    labels.insert(
        POD_GROUP_NAME_LABEL.into(),
        format!("{}-a{attempt}", job.name_any()),
    );
    annotations.insert(
        POD_GROUP_TOTAL_COUNT_ANNOTATION.into(),
        job.spec.replicas.max(1).to_string(),
    );
    // The operator replaces a group with the next attempt's, never a pod
    // within it. Without this, Kueue keeps an evicted group's finalizer on
    // pods that exited non-zero, waiting for replacements that never come,
    // and the next attempt waits on those pods forever.
    annotations.insert(RETRIABLE_IN_GROUP_ANNOTATION.into(), "false".into());
}
