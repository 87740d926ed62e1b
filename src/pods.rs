//! The pod builder: one pod per rank for an attempt, built from the job's
//! template with the launcher injected. Pure: no API calls, so every setting
//! is unit-tested without a cluster.

use crate::accelerators;
use crate::api::{checks, SpotProvider, TrainingJob, TRAINER_CONTAINER};
use crate::quantity;
use crate::shell::shell_form;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, PersistentVolumeClaimVolumeSource, Pod, PodSpec,
    Service, ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use thiserror::Error;

use crate::finalizers::REPORT_FINALIZER;
use crate::labels::{job_labels, ATTEMPT_LABEL, JOB_LABEL, RANK_LABEL};

/// Where the init container puts the launcher, and where it runs from.
pub const LAUNCHER_DIR: &str = "/tj";
pub const LAUNCHER_PATH: &str = "/tj/launcher";
/// The launcher's path inside the operator image.
pub const LAUNCHER_IN_IMAGE: &str = "/launcher";
pub const MASTER_PORT: i32 = 29500;

const LAUNCHER_VOLUME: &str = "tj-launcher";
const CHECKPOINT_VOLUME: &str = "tj-checkpoints";
const SHM_VOLUME: &str = "tj-shm";

/// What the builder cannot turn into a pod. Each says what to change.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum BuildError {
    #[error("the pod template has no containers: add the trainer container")]
    NoContainers,
    #[error("the pod template has {0} containers and none is named `trainer`: name the one to run under the launcher `trainer`")]
    NoTrainer(usize),
    #[error("the trainer container has no command: give it in exec form, e.g. [\"python\", \"train.py\"]")]
    NoCommand,
    #[error("the trainer's command is shell form ({0}): a shell does not forward SIGTERM; give the program and its arguments directly")]
    ShellForm(String),
    #[error(
        "the pod template has a volume named {0:?}: names starting with `tj-` are the operator's; rename it"
    )]
    VolumeNameTaken(String),
    #[error("the pod template mounts something at {0}, a path the operator owns (/tj, /dev/shm, /dev/termination-log): remove that mount, and use sharedMemory for /dev/shm")]
    MountTaken(String),
    #[error("the pod template has a container named {0:?}: names starting with `tj-` are the operator's; rename it")]
    ContainerNameTaken(String),
}

/// Everything about one attempt that is decided outside the builder.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptPlan {
    pub attempt: i32,
    pub grace_seconds: i64,
    pub checkpoint_interval_seconds: Option<i64>,
    pub shm_bytes: Option<u64>,
    /// The operator's image: the init container copies the launcher from it.
    pub operator_image: String,
    /// Whose spot nodes to run on: the spec's, or the operator's default.
    pub spot: Option<SpotProvider>,
}

pub fn pod_name(job: &str, attempt: i32, rank: i32) -> String {
    format!("{job}-a{attempt}-r{rank}")
}

/// The headless Service of a multi-rank job, and rank 0's address in it.
pub fn service_name(job: &str) -> String {
    job.to_string()
}

fn rank_hostname(job: &str, rank: i32) -> String {
    format!("{job}-r{rank}")
}

/// The index of the trainer container: the one named `trainer`, or the only one.
pub fn trainer_index(containers: &[Container]) -> Result<usize, BuildError> {
    match containers.len() {
        0 => Err(BuildError::NoContainers),
        1 => Ok(0),
        n => containers
            .iter()
            .position(|c| c.name == TRAINER_CONTAINER)
            .ok_or(BuildError::NoTrainer(n)),
    }
}

pub fn owner_reference(job: &TrainingJob) -> OwnerReference {
    job.controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: TrainingJob::api_version(&()).into_owned(),
            kind: TrainingJob::kind(&()).into_owned(),
            name: job.name_any(),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}

/// The pods of one attempt, rank 0 first.
pub fn build_pods(job: &TrainingJob, plan: &AttemptPlan) -> Result<Vec<Pod>, BuildError> {
    (0..job.spec.replicas.max(1))
        .map(|rank| build_pod(job, plan, rank))
        .collect()
}

pub fn build_pod(job: &TrainingJob, plan: &AttemptPlan, rank: i32) -> Result<Pod, BuildError> {
    let name = job.name_any();
    let template_meta = job.spec.template.metadata.clone().unwrap_or_default();
    let mut pod_spec: PodSpec = job.spec.template.spec.clone().unwrap_or_default();
    let trainer = trainer_index(&pod_spec.containers)?;
    check_reserved(&pod_spec, trainer)?;
    add_volumes(&mut pod_spec, job, plan);
    let report_budget = report_budget(&pod_spec);
    let c = &mut pod_spec.containers[trainer];
    wrap_command(c, job, plan, rank, report_budget)?;
    set_env(c, job, plan, rank);
    add_mounts(c, job, plan)?;
    c.termination_message_policy = Some("File".into());
    c.termination_message_path = None;
    let accelerators = accelerators::match_requests_and_limits(c);
    let inits = pod_spec.init_containers.get_or_insert_with(Vec::new);
    inits.insert(0, launcher_installer(&plan.operator_image));
    pod_spec.restart_policy = Some("Never".into());
    pod_spec.termination_grace_period_seconds = Some(plan.grace_seconds);
    // The trainer needs no API access: its report travels in the
    // termination message. A token is mounted only when the template asks.
    if pod_spec.automount_service_account_token.is_none() {
        pod_spec.automount_service_account_token = Some(false);
    }
    if job.spec.replicas > 1 {
        pod_spec.hostname = Some(rank_hostname(&name, rank));
        pod_spec.subdomain = Some(service_name(&name));
    }
    schedule(&mut pod_spec, &accelerators, plan.spot);
    tolerate_lost_node(&mut pod_spec, job.spec.preemption.node_unreachable_seconds);
    let mut labels = template_meta.labels.unwrap_or_default();
    labels.extend(job_labels(job));
    labels.insert(RANK_LABEL.into(), rank.to_string());
    labels.insert(ATTEMPT_LABEL.into(), plan.attempt.to_string());
    let mut annotations = template_meta.annotations.unwrap_or_default();
    crate::queue::pod_group(job, plan.attempt, &mut labels, &mut annotations);
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name, plan.attempt, rank)),
            namespace: job.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![owner_reference(job)]),
            finalizers: Some(vec![REPORT_FINALIZER.into()]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: None,
    })
}

/// Names and paths the operator owns, which the template may not use.
fn check_reserved(spec: &PodSpec, trainer: usize) -> Result<(), BuildError> {
    let volumes = spec.volumes.iter().flatten().map(|v| &v.name);
    if let Some(v) = volumes.into_iter().find(|n| checks::reserved_name(n)) {
        return Err(BuildError::VolumeNameTaken(v.clone()));
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    if let Some(c) = containers
        .into_iter()
        .find(|c| checks::reserved_name(&c.name))
    {
        return Err(BuildError::ContainerNameTaken(c.name.clone()));
    }
    let mounts = spec.containers[trainer].volume_mounts.iter().flatten();
    match mounts
        .into_iter()
        .find(|m| checks::reserved_mount_path(&m.mount_path).is_some())
    {
        Some(m) => Err(BuildError::MountTaken(m.mount_path.clone())),
        None => Ok(()),
    }
}

fn add_volumes(pod_spec: &mut PodSpec, job: &TrainingJob, plan: &AttemptPlan) {
    let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
    volumes.push(Volume {
        name: LAUNCHER_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("64Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    });
    volumes.push(Volume {
        name: CHECKPOINT_VOLUME.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: job.spec.checkpoint.claim_name.clone(),
            read_only: None,
        }),
        ..Default::default()
    });
    if let Some(bytes) = plan.shm_bytes {
        volumes.push(Volume {
            name: SHM_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity(quantity::format_bytes(bytes))),
            }),
            ..Default::default()
        });
    }
}

/// The kubelet keeps 12 KiB of termination message for a whole pod,
/// shared among its containers: the launcher's report gets its share.
pub const POD_MESSAGE_BYTES: usize = 12 * 1024;
pub const REPORT_MAX_BYTES: usize = 4096;

fn report_budget(spec: &PodSpec) -> usize {
    let containers = spec.containers.len() + spec.init_containers.iter().flatten().count() + 1;
    (POD_MESSAGE_BYTES / containers.max(1)).min(REPORT_MAX_BYTES)
}

/// The trainer's command under the launcher. Its settings travel as flags,
/// so nothing in the template's env can turn them off.
fn wrap_command(
    c: &mut Container,
    job: &TrainingJob,
    plan: &AttemptPlan,
    rank: i32,
    report_budget: usize,
) -> Result<(), BuildError> {
    let command = c.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err(BuildError::NoCommand);
    }
    if let Some(shell) = shell_form(&command, c.args.as_deref().unwrap_or_default()) {
        return Err(BuildError::ShellForm(shell));
    }
    let flags = [
        ("--checkpoint-dir", job.spec.checkpoint.mount_path.clone()),
        ("--report", "/dev/termination-log".to_string()),
        ("--grace-seconds", plan.grace_seconds.to_string()),
        ("--attempt", plan.attempt.to_string()),
        ("--rank", rank.to_string()),
        ("--report-max-bytes", report_budget.to_string()),
    ];
    let mut wrapped = vec![LAUNCHER_PATH.to_string(), "run".into()];
    for (flag, value) in flags {
        wrapped.extend([flag.to_string(), value]);
    }
    wrapped.push("--".into());
    wrapped.extend(command);
    c.command = Some(wrapped);
    Ok(())
}

fn set_env(c: &mut Container, job: &TrainingJob, plan: &AttemptPlan, rank: i32) {
    let name = job.name_any();
    let world = job.spec.replicas.max(1);
    let master_addr = if world > 1 {
        let ns = job.namespace().unwrap_or_default();
        format!(
            "{}.{}.{ns}.svc",
            rank_hostname(&name, 0),
            service_name(&name)
        )
    } else {
        "localhost".into()
    };
    let mut ours = vec![
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world.to_string()),
        ("MASTER_ADDR", master_addr),
        ("MASTER_PORT", MASTER_PORT.to_string()),
        ("TJ_JOB_NAME", name),
        ("TJ_RANK", rank.to_string()),
        ("TJ_WORLD_SIZE", world.to_string()),
        ("TJ_ATTEMPT", plan.attempt.to_string()),
        ("TJ_GRACE_SECONDS", plan.grace_seconds.to_string()),
        ("TJ_CHECKPOINT_DIR", job.spec.checkpoint.mount_path.clone()),
    ];
    if let Some(interval) = plan.checkpoint_interval_seconds {
        ours.push(("TJ_CHECKPOINT_INTERVAL_SECONDS", interval.to_string()));
    }
    let env = c.env.get_or_insert_with(Vec::new);
    // Ours win over the template's: a stale RANK from the template would
    // make two pods claim the same rank.
    env.retain(|e| !ours.iter().any(|(k, _)| *k == e.name));
    env.extend(ours.into_iter().map(|(k, v)| EnvVar {
        name: k.into(),
        value: Some(v),
        value_from: None,
    }));
}

fn add_mounts(c: &mut Container, job: &TrainingJob, plan: &AttemptPlan) -> Result<(), BuildError> {
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    let mut wanted = vec![
        (LAUNCHER_VOLUME, LAUNCHER_DIR.to_string(), true),
        (
            CHECKPOINT_VOLUME,
            job.spec.checkpoint.mount_path.clone(),
            false,
        ),
    ];
    if plan.shm_bytes.is_some() {
        wanted.push((SHM_VOLUME, "/dev/shm".into(), false));
    }
    for (volume, path, read_only) in wanted {
        if mounts
            .iter()
            .any(|m| checks::canonical_path(&m.mount_path) == checks::canonical_path(&path))
        {
            return Err(BuildError::MountTaken(path));
        }
        let sub_path = (volume == CHECKPOINT_VOLUME)
            .then(|| checkpoint_sub_path(job))
            .flatten();
        mounts.push(VolumeMount {
            name: volume.into(),
            mount_path: path,
            read_only: read_only.then_some(true),
            sub_path,
            ..Default::default()
        });
    }
    Ok(())
}

/// The job's directory in its claim: its name unless the spec says
/// otherwise; `""` is the claim's root.
pub fn checkpoint_sub_path(job: &TrainingJob) -> Option<String> {
    match &job.spec.checkpoint.sub_path {
        Some(p) if p.is_empty() => None,
        Some(p) => Some(p.clone()),
        None => Some(job.name_any()),
    }
}

/// Accelerator tolerations and the spot provider's selector and toleration.
fn schedule(pod_spec: &mut PodSpec, accelerators: &[String], spot: Option<SpotProvider>) {
    let tolerations = pod_spec.tolerations.get_or_insert_with(Vec::new);
    let mut add_toleration = |t: Toleration| {
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    };
    for resource in accelerators {
        add_toleration(accelerators::toleration(resource));
    }
    if let Some(provider) = spot {
        let (label, value, taint) = spot_convention(provider);
        pod_spec
            .node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert(label.into(), value.into());
        if taint {
            add_toleration(Toleration {
                key: Some(label.into()),
                operator: Some("Equal".into()),
                value: Some(value.into()),
                effect: Some("NoSchedule".into()),
                ..Default::default()
            });
        }
    }
    if pod_spec.tolerations.as_ref().is_some_and(|t| t.is_empty()) {
        pod_spec.tolerations = None;
    }
}

/// The taints a node gets when it stops answering.
pub const NODE_LOST_TAINTS: &[&str] = &[
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// Bounds how long a pod stays on a lost node (the DefaultTolerationSeconds
/// admission plugin would give 300 s). A template's own toleration of the
/// same taint wins.
fn tolerate_lost_node(pod_spec: &mut PodSpec, seconds: i32) {
    let tolerations = pod_spec.tolerations.get_or_insert_with(Vec::new);
    for key in NODE_LOST_TAINTS {
        if !tolerations.iter().any(|t| t.key.as_deref() == Some(key)) {
            tolerations.push(Toleration {
                key: Some(key.to_string()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(i64::from(seconds.max(0))),
                ..Default::default()
            });
        }
    }
}

/// Node label, value, and whether spot nodes are also tainted with it.
fn spot_convention(provider: SpotProvider) -> (&'static str, &'static str, bool) {
    match provider {
        SpotProvider::Gke => ("cloud.google.com/gke-spot", "true", true),
        SpotProvider::Eks => ("eks.amazonaws.com/capacityType", "SPOT", false),
        SpotProvider::Karpenter => ("karpenter.sh/capacity-type", "spot", false),
        SpotProvider::Aks => ("kubernetes.azure.com/scalesetpriority", "spot", true),
    }
}

/// The unprivileged user the launcher's installer runs as.
pub const INSTALLER_UID: i64 = 65532;

/// Copies the launcher out of the operator's image into the shared emptyDir.
fn launcher_installer(image: &str) -> Container {
    let tiny = BTreeMap::from([
        ("cpu".to_string(), Quantity("10m".into())),
        ("memory".to_string(), Quantity("16Mi".into())),
    ]);
    Container {
        name: "tj-launcher-install".into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            LAUNCHER_IN_IMAGE.into(),
            "install".into(),
            LAUNCHER_PATH.into(),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: LAUNCHER_VOLUME.into(),
            mount_path: LAUNCHER_DIR.into(),
            ..Default::default()
        }]),
        resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(tiny.clone()),
            limits: Some(tiny),
            ..Default::default()
        }),
        // Restricted on its own, whatever the pod's securityContext says:
        // a pod-level runAsUser: 0 would otherwise fail runAsNonRoot, and
        // PodSecurity `restricted` wants a seccomp profile on every container.
        security_context: Some(k8s_openapi::api::core::v1::SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(INSTALLER_UID),
            run_as_group: Some(INSTALLER_UID),
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The headless Service that gives every rank a DNS name, so rank 0 is
/// reachable as MASTER_ADDR. Only multi-rank jobs get one.
pub fn build_service(job: &TrainingJob) -> Option<Service> {
    if job.spec.replicas <= 1 {
        return None;
    }
    Some(Service {
        metadata: ObjectMeta {
            name: Some(service_name(&job.name_any())),
            namespace: job.namespace(),
            labels: Some(job_labels(job)),
            owner_references: Some(vec![owner_reference(job)]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            // Ranks rendezvous before any is Ready.
            publish_not_ready_addresses: Some(true),
            selector: Some(BTreeMap::from([(JOB_LABEL.to_string(), job.name_any())])),
            ports: Some(vec![ServicePort {
                name: Some("rendezvous".into()),
                port: MASTER_PORT,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests;
