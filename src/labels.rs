//! The labels on everything the operator makes, so one selector finds it all.

use crate::api::TrainingJob;
use kube::ResourceExt;
use std::collections::BTreeMap;

pub const JOB_LABEL: &str = "trainingjob.dev/job";
pub const RANK_LABEL: &str = "trainingjob.dev/rank";
pub const ATTEMPT_LABEL: &str = "trainingjob.dev/attempt";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "trainingjob-operator";

/// The selector of every object the operator made: its watches see nothing else.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

pub fn job_labels(job: &TrainingJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "trainingjob".into()),
        (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
        (JOB_LABEL.into(), job.name_any()),
    ])
}
