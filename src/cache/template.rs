//! The cached job's pod template, kept as its JSON.
//!
//! `k8s_openapi`'s types are large before any field is set (a `PodSpec` is
//! over a kilobyte inline, each `Container` two), so a template held as
//! typed values was 3.5 KB of the 6.7 KB each TrainingJob took in the
//! reflector store, for a template whose JSON is a few hundred bytes. A
//! reconcile reads the template only to build pods and to check the spec,
//! so the store keeps the JSON and each reconcile parses its own copy.

use crate::api::TrainingJob;
use crate::error::{Error, Result};
use kube::ResourceExt;

/// Where the cached copy keeps the template. It is never written back:
/// the operator writes only the job's status, and `full_job` takes it out.
const TEMPLATE_JSON: &str = "trainingjob.dev/cached-template";

/// Drops what the operator never reads (managedFields, often the largest
/// part of a job, and the last-applied annotation) and folds the template
/// into its JSON.
pub fn strip_job(job: &mut TrainingJob) {
    job.metadata.managed_fields = None;
    let template = std::mem::take(&mut job.spec.template);
    let annotations = job.annotations_mut();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    // A user's annotation of this name would be taken for the template.
    annotations.remove(TEMPLATE_JSON);
    match serde_json::to_string(&template) {
        Ok(json) => {
            annotations.insert(TEMPLATE_JSON.into(), json);
        }
        Err(_) => job.spec.template = template,
    }
    if job.annotations().is_empty() {
        job.metadata.annotations = None;
    }
}

/// The job as the API server holds it, template and all, from the cache's
/// copy; a job that was never stripped is returned as it is.
pub fn full_job(cached: &TrainingJob) -> Result<TrainingJob> {
    let mut job = cached.clone();
    let Some(json) = job.annotations_mut().remove(TEMPLATE_JSON) else {
        return Ok(job);
    };
    if job.annotations().is_empty() {
        job.metadata.annotations = None;
    }
    job.spec.template = serde_json::from_str(&json)
        .map_err(|e| Error::CachedTemplate(format!("{}: {e}", job.name_any())))?;
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job() -> TrainingJob {
        serde_json::from_value(json!({
            "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "j", "namespace": "ns", "managedFields": [{"manager": "x"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}",
                                         "team": "a"}},
            "spec": {"replicas": 2, "checkpoint": {"claimName": "c"}, "template": {
                "metadata": {"labels": {"app": "t"}, "annotations": {"a": "b"}},
                "spec": {"containers": [{"name": "trainer", "image": "i",
                         "resources": {"limits": {"nvidia.com/gpu": "1", "memory": "1Gi"}},
                         "env": [{"name": "E", "value": "v"}]}]}}}
        }))
        .unwrap()
    }

    #[test]
    fn the_full_job_is_the_job_less_what_is_never_read() {
        let original = job();
        let mut cached = original.clone();
        strip_job(&mut cached);
        assert!(cached.spec.template.spec.is_none() && cached.metadata.managed_fields.is_none());
        let full = full_job(&cached).unwrap();
        assert_eq!(full.spec, original.spec);
        assert_eq!(full.annotations().len(), 1);
        assert_eq!(full.annotations()["team"], "a");
        assert!(full.metadata.managed_fields.is_none());
    }

    #[test]
    fn a_users_annotation_of_the_same_name_is_not_taken_for_the_template() {
        let mut j = job();
        j.annotations_mut()
            .insert(TEMPLATE_JSON.into(), "not a template".into());
        let original_spec = j.spec.clone();
        strip_job(&mut j);
        assert_eq!(full_job(&j).unwrap().spec, original_spec);
    }

    #[test]
    fn a_job_never_stripped_is_returned_whole() {
        let j = job();
        assert_eq!(full_job(&j).unwrap().spec, j.spec);
        assert_eq!(full_job(&j).unwrap().annotations().len(), 2);
    }

    #[test]
    fn an_unparsable_cached_template_is_an_error_not_a_panic() {
        let mut j = job();
        strip_job(&mut j);
        j.annotations_mut().insert(TEMPLATE_JSON.into(), "{".into());
        assert!(full_job(&j).is_err());
    }
}
