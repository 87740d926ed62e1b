//! The operator's own copies of the admission rules on what it owns, for
//! objects stored before a rule existed: pure functions the pod builder and
//! preflight can call. They agree with the CEL rules in `cel.rs` wherever CEL
//! can judge, and go further where it cannot (`..` is resolved here).

use super::cel::{OPERATOR_ENV, RESERVED_NAME_PREFIX};
use super::{TrainingJob, TRAINER_CONTAINER};
use crate::shell::shell_form;
use k8s_openapi::api::core::v1::Container;
use kube::ResourceExt;

/// The mount paths the operator owns in the trainer, with what owns them.
const RESERVED_PATHS: &[(&str, &str)] = &[
    ("/tj", "the operator's launcher"),
    ("/dev/shm", "the operator's /dev/shm (spec.sharedMemory)"),
    ("/dev/termination-log", "the launcher's report"),
];

/// `path` with `//`, `.` and `..` resolved and no trailing `/`, as the
/// container runtime would mount it (`..` stops at the root).
pub fn canonical_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

/// What owns `mount_path` when it is, or is below, a path the operator
/// mounts or reads in the trainer.
pub fn reserved_mount_path(mount_path: &str) -> Option<&'static str> {
    let path = canonical_path(mount_path);
    RESERVED_PATHS.iter().find_map(|(reserved, owner)| {
        let below = path
            .strip_prefix(reserved)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        below.then_some(*owner)
    })
}

/// Whether the trainer's env var `name` is one the operator sets.
pub fn reserved_env(name: &str) -> bool {
    name.starts_with("TJ_") || OPERATOR_ENV.contains(&name)
}

/// Whether a volume or container `name` has the operator's prefix.
pub fn reserved_name(name: &str) -> bool {
    name.starts_with(RESERVED_NAME_PREFIX)
}

/// Why the job's `name` cannot name its objects with `replicas` ranks:
/// the label value, the headless Service and the hostnames `<name>-r<rank>`.
pub fn name_problem(name: &str, replicas: i32) -> Option<String> {
    if name.len() > 63 {
        return Some(format!(
            "metadata.name {name:?} has {} characters; at most 63 fit in a label value",
            name.len()
        ));
    }
    if replicas <= 1 {
        return None;
    }
    let dns_label = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let hostname = format!("{name}-r{}", replicas - 1);
    if !dns_label {
        Some(format!(
            "metadata.name {name:?} is not a DNS-1035 label, which a Service name and hostname must be with {replicas} replicas"
        ))
    } else if hostname.len() > 63 {
        Some(format!(
            "the hostname {hostname} has {} characters; at most 63 fit",
            hostname.len()
        ))
    } else {
        None
    }
}

/// Every problem the admission rules would have refused in `job`'s name,
/// trainer and owned names, one sentence each that names the field. Empty
/// for a job the current CRD admits (quantities are `quantity::bytes`'s).
pub fn problems(job: &TrainingJob) -> Vec<String> {
    let spec = &job.spec;
    let mut found: Vec<String> = name_problem(&job.name_any(), spec.replicas)
        .into_iter()
        .collect();
    let Some(pod) = spec.template.spec.as_ref() else {
        return found;
    };
    let inits = pod.init_containers.iter().flatten();
    for c in pod.containers.iter().chain(inits) {
        if reserved_name(&c.name) {
            found.push(format!(
                "container {:?}: the tj- prefix is the operator's",
                c.name
            ));
        }
    }
    for v in pod
        .volumes
        .iter()
        .flatten()
        .filter(|v| reserved_name(&v.name))
    {
        found.push(format!(
            "volume {:?}: the tj- prefix is the operator's",
            v.name
        ));
    }
    if let Some(owner) = reserved_mount_path(&spec.checkpoint.mount_path) {
        found.push(format!(
            "checkpoint.mountPath {:?} is {owner}'s",
            spec.checkpoint.mount_path
        ));
    }
    if let Some(trainer) = trainer(&pod.containers) {
        found.extend(trainer_problems(trainer, &spec.checkpoint.mount_path));
    }
    found
}

/// The trainer: the container named `trainer`, or the only one.
fn trainer(containers: &[Container]) -> Option<&Container> {
    match containers {
        [only] => Some(only),
        _ => containers.iter().find(|c| c.name == TRAINER_CONTAINER),
    }
}

fn trainer_problems(t: &Container, checkpoint: &str) -> Vec<String> {
    let command = t.command.as_deref().unwrap_or_default();
    let args = t.args.as_deref().unwrap_or_default();
    let mut found = Vec::new();
    if command.first().is_some_and(|p| p.contains("$(")) {
        found.push(format!(
            "the trainer's command[0] {:?} is expanded from env",
            command[0]
        ));
    }
    if let Some(shell) = shell_form(command, args) {
        found.push(format!("the trainer's command is shell form: {shell}"));
    }
    for m in t.volume_mounts.iter().flatten() {
        if let Some(owner) = reserved_mount_path(&m.mount_path) {
            found.push(format!(
                "the trainer's mount {:?} is {owner}'s",
                m.mount_path
            ));
        } else if canonical_path(&m.mount_path) == canonical_path(checkpoint) {
            found.push(format!(
                "the trainer's mount {:?} is the checkpoint claim's",
                m.mount_path
            ));
        }
    }
    for e in t.env.iter().flatten().filter(|e| reserved_env(&e.name)) {
        found.push(format!(
            "the trainer's env {}: the operator sets it",
            e.name
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_compared_after_canonicalising() {
        for path in [
            "/tj",
            "/tj/",
            "//tj//launcher",
            "/tj/launcher",
            "/dev//shm",
            "/dev/shm/",
            "/dev/./shm/x",
            "/data/../tj",
            "/../dev/termination-log",
        ] {
            assert!(reserved_mount_path(path).is_some(), "{path} got through");
        }
        for path in [
            "/tjx",
            "/data/tj",
            "/dev/shmem",
            "/dev",
            "/checkpoints",
            "/tj/../data",
        ] {
            assert_eq!(reserved_mount_path(path), None, "{path} refused");
        }
    }

    #[test]
    fn the_operators_env_and_names_are_reserved() {
        assert!(reserved_env("TJ_REPORT_PATH"));
        assert!(reserved_env("RANK"));
        assert!(!reserved_env("LOCAL_RANK"));
        assert!(reserved_name("tj-shm"));
        assert!(!reserved_name("tjx"));
    }

    #[test]
    fn names_fit_their_objects() {
        assert_eq!(name_problem("1st-run", 1), None);
        assert_eq!(name_problem(&"x".repeat(63), 1), None);
        assert!(name_problem(&"x".repeat(64), 1).is_some());
        assert!(name_problem("1st-run", 2).is_some());
        assert!(name_problem("llm.v2", 2).is_some());
        assert!(name_problem(&"x".repeat(61), 2).is_some());
        assert_eq!(name_problem(&"x".repeat(59), 12), None);
        assert!(name_problem(&"x".repeat(60), 12).is_some());
    }
}
