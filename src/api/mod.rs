//! The `TrainingJob` custom resource (`trainingjob.dev/v1alpha1`).
//!
//! Every doc comment here becomes `kubectl explain` text, so it is written for
//! the user of the API, not for the reader of this code. Validation that the
//! schema and CEL can state lives here too (see `schema.rs`), so `kubectl
//! apply` refuses a bad spec with a message that says what to change.

// Each printcolumn repeats `type_ = ...`, which clippy mistakes for one
// attribute given twice.
#![allow(clippy::duplicated_attributes)]

mod cel;
pub mod checks;
mod schema;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The name a pod template's trainer container has when there are several.
pub const TRAINER_CONTAINER: &str = "trainer";

/// A long-running training job that survives spot preemptions: a gang of
/// pods, one per rank, that checkpoints inside the preemption notice and
/// resumes from its latest complete checkpoint on new capacity.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "trainingjob.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    plural = "trainingjobs",
    shortname = "tj",
    category = "all",
    namespaced,
    status = "TrainingJobStatus",
    validation = schema::name_length_rule(),
    validation = schema::name_dns_label_rule(),
    validation = schema::hostname_length_rule(),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Attempt", type_ = "integer", json_path = ".status.attempt"),
    printcolumn(
        name = "Preemptions",
        type_ = "integer",
        json_path = ".status.preemptions"
    ),
    printcolumn(
        name = "Step",
        type_ = "integer",
        description = "step of the last complete checkpoint",
        json_path = ".status.lastCheckpoint.step"
    ),
    printcolumn(
        name = "Grace",
        type_ = "integer",
        description = "terminationGracePeriodSeconds of the current attempt",
        json_path = ".status.gracePeriodSeconds"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = schema::spec_rules()))]
pub struct TrainingJobSpec {
    /// Number of pods in the gang, one per node. Each pod gets its RANK
    /// (0..replicas-1) and WORLD_SIZE in its environment. Replicas above 1
    /// need a ReadWriteMany checkpoint claim.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 4096))]
    pub replicas: i32,

    /// The pod each rank runs. Exactly one container is the trainer: the one
    /// named `trainer`, or the only container. Its `command` is required and
    /// must be exec form (the program and its arguments, no `sh -c`): the
    /// operator runs it under its launcher, which forwards SIGTERM to it.
    #[schemars(schema_with = "schema::pod_template")]
    pub template: PodTemplateSpec,

    /// Where checkpoints live.
    pub checkpoint: CheckpointSpec,

    /// Size of /dev/shm, a memory-backed emptyDir. Without it the container
    /// runtime's 64Mi default applies, which DataLoader workers outgrow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_memory: Option<SharedMemorySpec>,

    /// What the infrastructure gives before it takes a node away.
    #[serde(default)]
    pub preemption: PreemptionSpec,

    /// Run on spot capacity: adds the provider's spot node selector and
    /// toleration to every pod, on top of the template's own. Unset: the
    /// operator's default provider, if the platform team set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spot: Option<SpotSpec>,

    /// Application failures (a trainer that exits non-zero without having
    /// been signalled) retried before the job is Failed. Preemptions never
    /// count against it.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 1000))]
    pub backoff_limit: i32,
}

/// The volume that holds checkpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Name of a PersistentVolumeClaim in the job's namespace. It must be
    /// ReadWriteMany when replicas is above 1, since every rank writes to it.
    #[schemars(schema_with = "schema::dns_subdomain")]
    pub claim_name: String,

    /// Where the claim is mounted in the trainer container; the trainer finds
    /// it in TJ_CHECKPOINT_DIR. An absolute path other than `/`.
    #[serde(default = "default_mount_path")]
    #[schemars(schema_with = "schema::mount_path")]
    pub mount_path: String,

    /// Expected size of one checkpoint (e.g. `14Gi`). Used to size the grace
    /// period until a real save has been measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::optional_positive_quantity")]
    pub size_hint: Option<String>,

    /// The directory inside the claim that holds this job's checkpoints.
    /// By default one named after the job, so that two jobs sharing a claim
    /// never resume from, or clean up, each other's checkpoints. Set `""`
    /// to use the claim's root: for a claim that already holds this job's
    /// checkpoints at its root, or to share checkpoints between jobs on
    /// purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::sub_path")]
    pub sub_path: Option<String>,
}

/// /dev/shm for the trainer: either a size, or the DataLoader settings it is
/// derived from. Memory-backed, so it counts against the pod's memory limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.sizeLimit) != has(self.dataLoader)",
    "message": "set exactly one of sharedMemory.sizeLimit (e.g. 16Gi) or sharedMemory.dataLoader (workers, prefetchFactor, batchBytes)"
}]))]
pub struct SharedMemorySpec {
    /// Size of /dev/shm (e.g. `16Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::optional_positive_quantity")]
    pub size_limit: Option<String>,

    /// Derive the size from the DataLoader: workers x prefetchFactor x
    /// batchBytes, plus headroom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_loader: Option<DataLoaderSpec>,
}

/// The trainer's DataLoader, whose workers pass batches through /dev/shm.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataLoaderSpec {
    /// DataLoader worker processes per pod (`num_workers`).
    #[schemars(range(min = 0, max = 1024))]
    pub workers: i32,

    /// Batches each worker keeps in flight (`prefetch_factor`).
    #[serde(default = "default_prefetch_factor")]
    #[schemars(range(min = 1, max = 1024))]
    pub prefetch_factor: i32,

    /// Size of one batch in shared memory (e.g. `256Mi`).
    #[schemars(schema_with = "schema::positive_quantity")]
    pub batch_bytes: String,
}

/// The preemption notice the infrastructure gives, and how many preemptions
/// the job tolerates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.noticeSeconds) || self.minGraceSeconds <= self.noticeSeconds",
    "message": "preemption.minGraceSeconds must not exceed preemption.noticeSeconds: the node is gone when the notice ends"
}]))]
pub struct PreemptionSpec {
    /// Seconds between the provider's preemption notice and the node going
    /// away. Unset: the operator's default, else the spot provider's documented
    /// figure (GKE 15, EKS and Karpenter 120, AKS 30), else 30. The grace
    /// period never exceeds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub notice_seconds: Option<i32>,

    /// The shortest grace period the operator sets, whatever it measures.
    #[serde(default = "default_min_grace_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub min_grace_seconds: i32,

    /// Preemptions tolerated before the job is Failed. Never counted
    /// against backoffLimit.
    #[serde(default = "default_max_preemptions")]
    #[schemars(range(min = 0, max = 100000))]
    pub max_preemptions: i32,

    /// How long a training pod stays bound to a node that stopped answering
    /// (NotReady or unreachable) before Kubernetes evicts it: the pods'
    /// tolerationSeconds for node.kubernetes.io/not-ready and unreachable.
    /// Kubernetes' own default is 300 s, which a gang would spend waiting
    /// on one lost rank while the others train on.
    #[serde(default = "default_node_unreachable_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub node_unreachable_seconds: i32,
}

impl Default for PreemptionSpec {
    fn default() -> Self {
        Self {
            notice_seconds: None,
            min_grace_seconds: default_min_grace_seconds(),
            max_preemptions: default_max_preemptions(),
            node_unreachable_seconds: default_node_unreachable_seconds(),
        }
    }
}

/// Spot capacity to run on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpotSpec {
    /// Whose spot nodes: GKE (`cloud.google.com/gke-spot`), EKS managed node
    /// groups (`eks.amazonaws.com/capacityType: SPOT`), Karpenter
    /// (`karpenter.sh/capacity-type: spot`) or AKS
    /// (`kubernetes.azure.com/scalesetpriority: spot`).
    pub provider: SpotProvider,
}

/// A cloud's spot node labelling and taint conventions.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SpotProvider {
    #[serde(rename = "GKE")]
    Gke,
    #[serde(rename = "EKS")]
    Eks,
    Karpenter,
    #[serde(rename = "AKS")]
    Aks,
}

fn default_replicas() -> i32 {
    1
}
fn default_backoff_limit() -> i32 {
    3
}
fn default_mount_path() -> String {
    "/checkpoints".into()
}
fn default_prefetch_factor() -> i32 {
    2
}
fn default_min_grace_seconds() -> i32 {
    5
}
fn default_node_unreachable_seconds() -> i32 {
    30
}
fn default_max_preemptions() -> i32 {
    100
}

/// Where a job is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Phase {
    /// Pods are being created or scheduled.
    #[default]
    Pending,
    /// Every rank's trainer is running.
    Running,
    /// A rank was disrupted; the rest of the gang is being stopped.
    Stopping,
    /// Every old pod is gone; the next attempt is being created.
    Resuming,
    /// The trainer exited 0 without having been signalled.
    Succeeded,
    /// backoffLimit or maxPreemptions was exhausted, or the spec cannot run.
    Failed,
}

/// What the operator observed. Written by the operator only.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// Where the job is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The current attempt, from 1. Every preemption or failure starts a new one.
    #[serde(default)]
    pub attempt: i32,

    /// Preemptions so far (never counted as failures).
    #[serde(default)]
    pub preemptions: i32,

    /// Application failures so far, counted against backoffLimit.
    #[serde(default)]
    pub failures: i32,

    /// Preemptions over the life of the job by reason (the route that took
    /// a rank away: EvictionByEvictionAPI, PreemptionByScheduler,
    /// DeletionByPodGC, TerminationNotice, ...). Never reset; interruptions
    /// keeps only the latest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub preemptions_by_reason: BTreeMap<String, i32>,

    /// Steps trained and then redone over the life of the job: the sum of
    /// every interruption's stepsLost. Never reset.
    #[serde(default)]
    pub steps_lost: i64,

    /// The checkpoint step the current attempt resumed from; unset when it
    /// started from scratch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from_step: Option<i64>,

    /// Attempts in a row, before the current one, that ended without a
    /// newer checkpoint than they resumed from. From 3 on, NoProgress is
    /// set and the next attempt waits a backoff.
    #[serde(default)]
    pub attempts_without_progress: i32,

    /// The latest complete checkpoint a pod reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<CheckpointStatus>,

    /// Save figures measured by the launcher across attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save: Option<SaveStatus>,

    /// terminationGracePeriodSeconds of the current attempt's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<i64>,

    /// Periodic checkpoint interval that bounds the work lost to a
    /// preemption (Young/Daly, from the measured save cost and the observed
    /// time between preemptions). Exported to the trainer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_checkpoint_interval_seconds: Option<i64>,

    /// The latest preemptions and failures, newest last (at most
    /// MAX_INTERRUPTIONS): which attempt, which rank, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interruptions: Vec<Interruption>,

    /// Ready, Succeeded, Failed, and one condition per problem found.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
}

/// How many interruptions status keeps.
pub const MAX_INTERRUPTIONS: usize = 10;

/// Why an attempt ended before the job did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Interruption {
    /// The attempt that ended.
    pub attempt: i32,
    /// Preemption (never counted against backoffLimit) or Failure.
    pub kind: InterruptionKind,
    /// The first rank seen interrupted.
    pub rank: i32,
    /// A machine-readable reason, e.g. EvictionByEvictionAPI, PodDeleted,
    /// DeletionByTaintManager, TerminatedAfterSignal, ExitCode.
    pub reason: String,
    /// What happened, for people.
    pub message: String,
    /// Steps the trainer completed after the last checkpoint it saved in
    /// that attempt: work the next attempt redoes. From the launchers'
    /// reports (lastStep), so known once the attempt's pods have ended and
    /// only for trainers that report progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_lost: Option<i64>,
    /// When the operator saw it (for a failure: when the trainer exited).
    /// Backoff before the next attempt runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// Where the time from `time` to training again went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<ResumeTimeline>,
}

/// When each step from an interruption back to training happened. Each is
/// set once, as the operator sees it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResumeTimeline {
    /// The operator asked every remaining rank of the attempt to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signalled: Option<Time>,
    /// No pod of the attempt could run any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_pods_gone: Option<Time>,
    /// The next attempt's pods were created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Time>,
    /// The last of them was bound to a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<Time>,
    /// The last of their trainers started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<Time>,
    /// The first step the resumed trainer finished, from the launcher's
    /// report of the next attempt (so known once that attempt ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step: Option<Time>,
}

/// Whether an interruption was the infrastructure's doing or the trainer's.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum InterruptionKind {
    /// The pod was taken away (preemption, eviction, deletion, node loss).
    Preemption,
    /// The trainer exited non-zero without having been signalled.
    Failure,
}

/// A complete checkpoint, as the launcher found it on the volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Training step the checkpoint was taken at.
    pub step: i64,
    /// Path inside the trainer container.
    pub path: String,
    /// Size on disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Seconds the save took, from the temporary name appearing to the rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_seconds: Option<f64>,
    /// When the save completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Save figures the launcher measured.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SaveStatus {
    /// Saves measured.
    #[serde(default)]
    pub count: i64,
    /// 95th percentile of save duration in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_seconds: Option<f64>,
    /// Measured checkpoint write throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<i64>,
    /// Throughput of the volume's write probe (write, fsync, rename), a first
    /// bound before any real save is measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_bytes_per_second: Option<i64>,
}

#[cfg(test)]
mod tests;
