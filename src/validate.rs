//! What keeps a spec from running that the schema could not judge: each
//! problem names the field and says what to change. Pure: the claim is
//! passed in by whoever read it, and the API server's own refusals arrive
//! as `Refused`.

use crate::api::TrainingJob;
use crate::pods::{self, AttemptPlan, BuildError};
use crate::{quantity, shm};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum SpecProblem {
    /// The pod template cannot become a training pod.
    Template(BuildError),
    /// /dev/shm cannot be sized, or does not fit the memory limit.
    SharedMemory(String),
    ClaimMissing {
        claim: String,
        namespace: String,
    },
    /// Several ranks write to a claim that only one node can mount.
    ClaimNotShared {
        claim: String,
        replicas: i32,
        modes: Vec<String>,
    },
    /// A rule the CRD enforces now, broken by an object stored before it.
    Rule(String),
    /// The API server refused to create an object built from the spec.
    Refused {
        kind: &'static str,
        name: String,
        code: u16,
        message: String,
    },
}

impl SpecProblem {
    /// The spec field to change.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Template(_) | Self::Refused { .. } => "spec.template",
            Self::Rule(_) => "spec",
            Self::SharedMemory(_) => "spec.sharedMemory",
            Self::ClaimMissing { .. } | Self::ClaimNotShared { .. } => "spec.checkpoint.claimName",
        }
    }
}

impl fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.field())?;
        match self {
            Self::Template(e) => write!(f, "{e}"),
            Self::Rule(e) => write!(f, "{e}"),
            Self::SharedMemory(e) => write!(f, "{e}"),
            Self::ClaimMissing { claim, namespace } => write!(
                f,
                "PersistentVolumeClaim {claim:?} not found in namespace {namespace:?}; create it or fix the name"
            ),
            Self::ClaimNotShared { claim, replicas, modes } => write!(
                f,
                "replicas is {replicas} but PersistentVolumeClaim {claim:?} is {}: every rank writes checkpoints to it, \
                 so it must be ReadWriteMany (or use replicas: 1)",
                if modes.is_empty() { "not ReadWriteMany".to_string() } else { modes.join(", ") }
            ),
            Self::Refused { kind, name, code, message } => write!(
                f,
                "the API server refused {kind} {name} ({code}): {message}; change the template so that it is admitted"
            ),
        }
    }
}

/// One message for a condition, the problems in order.
pub fn describe(problems: &[SpecProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What the job's own spec says that cannot run.
pub fn validate(job: &TrainingJob) -> Vec<SpecProblem> {
    let mut problems: Vec<SpecProblem> = crate::api::checks::problems(job)
        .into_iter()
        .map(SpecProblem::Rule)
        .collect();
    let shm_bytes = match shm_bytes(job) {
        Ok(bytes) => bytes,
        Err(e) => {
            problems.push(SpecProblem::SharedMemory(e));
            None
        }
    };
    // Rank 0 with the real /dev/shm decides whether the template can take
    // the operator's volumes and mounts; every rank is built the same way.
    let probe = AttemptPlan {
        attempt: 1,
        grace_seconds: 1,
        checkpoint_interval_seconds: None,
        shm_bytes,
        operator_image: String::new(),
        spot: None,
    };
    // The rules above already say what the builder would trip on first.
    if let (Err(e), true) = (pods::build_pod(job, &probe, 0), problems.is_empty()) {
        problems.push(SpecProblem::Template(e));
    }
    problems
}

/// The /dev/shm size in bytes, checked against the trainer's memory limit.
pub fn shm_bytes(job: &TrainingJob) -> Result<Option<u64>, String> {
    let Some(spec) = &job.spec.shared_memory else {
        return Ok(None);
    };
    let bytes = shm::size_bytes(spec).map_err(|e| e.to_string())?;
    if let Some(bytes) = bytes {
        shm::check_against_memory_limit(bytes, trainer_memory_limit(job))?;
    }
    Ok(bytes)
}

fn trainer_memory_limit(job: &TrainingJob) -> Option<u64> {
    let containers = &job.spec.template.spec.as_ref()?.containers;
    let trainer = &containers[pods::trainer_index(containers).ok()?];
    let limit = trainer.resources.as_ref()?.limits.as_ref()?.get("memory")?;
    quantity::bytes(&limit.0).ok()
}

/// Whether the checkpoint claim, as read from the API, can hold the job.
pub fn claim(
    job: &TrainingJob,
    namespace: &str,
    pvc: Option<&PersistentVolumeClaim>,
) -> Option<SpecProblem> {
    let claim = job.spec.checkpoint.claim_name.clone();
    let Some(pvc) = pvc else {
        return Some(SpecProblem::ClaimMissing {
            claim,
            namespace: namespace.into(),
        });
    };
    let modes = pvc
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default();
    (job.spec.replicas > 1 && !modes.iter().any(|m| m == "ReadWriteMany")).then_some(
        SpecProblem::ClaimNotShared {
            claim,
            replicas: job.spec.replicas,
            modes,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value) -> TrainingJob {
        let mut base = json!({
            "checkpoint": {"claimName": "c"},
            "template": {"spec": {"containers": [{"name": "trainer", "image": "i", "command": ["t"],
                "resources": {"limits": {"memory": "1Gi"}}}]}}
        });
        base.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "j", "namespace": "ns"}, "spec": base
        }))
        .unwrap()
    }

    #[test]
    fn a_plain_job_has_no_problem() {
        assert_eq!(validate(&job(json!({}))), vec![]);
    }

    #[test]
    fn a_shm_larger_than_the_memory_limit_names_the_field() {
        let p = validate(&job(json!({"sharedMemory": {"sizeLimit": "2Gi"}})));
        assert_eq!(p.len(), 1);
        assert!(p[0]
            .to_string()
            .starts_with("spec.sharedMemory: /dev/shm of 2Gi does not fit"));
    }

    #[test]
    fn a_template_mount_at_dev_shm_beside_shared_memory_is_a_problem() {
        let mut j = job(json!({"sharedMemory": {"sizeLimit": "64Mi"}}));
        let c = &mut j.spec.template.spec.as_mut().unwrap().containers[0];
        c.volume_mounts = Some(vec![k8s_openapi::api::core::v1::VolumeMount {
            name: "mine".into(),
            mount_path: "/dev/shm".into(),
            ..Default::default()
        }]);
        let p = validate(&j);
        assert!(
            matches!(&p[..], [SpecProblem::Rule(r)] if r.contains("/dev/shm")),
            "{p:?}"
        );
    }

    #[test]
    fn the_claim_must_exist_and_be_shared_for_several_ranks() {
        let j = job(json!({"replicas": 2}));
        let missing = claim(&j, "ns", None).unwrap();
        assert_eq!(missing.field(), "spec.checkpoint.claimName");
        let rwo: PersistentVolumeClaim = serde_json::from_value(
            json!({"metadata": {"name": "c"}, "spec": {"accessModes": ["ReadWriteOnce"]}}),
        )
        .unwrap();
        assert!(claim(&j, "ns", Some(&rwo))
            .unwrap()
            .to_string()
            .contains("must be ReadWriteMany"));
        assert_eq!(claim(&job(json!({})), "ns", Some(&rwo)), None);
    }
}
