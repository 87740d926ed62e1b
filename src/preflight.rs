//! What only the API server can judge, asked just before an attempt is
//! created: whether the checkpoint claim exists and suits the gang, and,
//! before a job's first attempt (or while a problem stands), whether rank
//! 0's pod and the Service would be admitted, by a server-side dry run.
//! Admission (PodSecurity, quotas, LimitRanges, webhooks) refuses there
//! with the same message the real create would get, and nothing is made.

use crate::api::TrainingJob;
use crate::conditions::{self, ConditionType};
use crate::error::Result;
use crate::lifecycle::Attempt;
use crate::validate::{self, SpecProblem};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tracing::info;

/// The problems found; empty when the attempt may be created.
pub async fn check(
    client: &Client,
    job: &TrainingJob,
    ns: &str,
    attempt: &Attempt,
) -> Result<Vec<SpecProblem>> {
    let claim = &job.spec.checkpoint.claim_name;
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get_opt(claim)
        .await?;
    if let Some(problem) = validate::claim(job, ns, pvc.as_ref()) {
        return Ok(vec![problem]);
    }
    let status = job.status.clone().unwrap_or_default();
    let problem_stands = conditions::find(&status.conditions, ConditionType::SpecProblem)
        .is_some_and(|c| c.status == "True");
    if status.attempt > 0 && !problem_stands {
        return Ok(Vec::new());
    }
    let refused = dry_run(client, ns, attempt).await?;
    if let Some(p) = &refused {
        info!(job = %job.name_any(), "dry run refused: {p}");
    }
    Ok(refused.into_iter().collect())
}

async fn dry_run(client: &Client, ns: &str, attempt: &Attempt) -> Result<Option<SpecProblem>> {
    let params = PostParams {
        dry_run: true,
        field_manager: Some(crate::controller::FIELD_MANAGER.into()),
    };
    if let Some(pod) = attempt.pods.first() {
        let api = Api::<Pod>::namespaced(client.clone(), ns);
        let answer = existing_is_admitted(api.create(&params, pod).await);
        if let Some(p) = refusal(answer, "Pod", &pod.name_any())? {
            return Ok(Some(p));
        }
    }
    if let Some(svc) = &attempt.service {
        let api = Api::<Service>::namespaced(client.clone(), ns);
        let answer = existing_is_admitted(api.create(&params, svc).await);
        if let Some(p) = refusal(answer, "Service", &svc.name_any())? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// A dry run answered 409 AlreadyExists: an operator stopped between
/// creating the first attempt's objects and writing status left them, and
/// this attempt is being finished. Admission has passed them already; the
/// create that follows keeps ours and judges anyone else's. Taken for an
/// error, it failed that reconcile, and every one after it, for good.
fn existing_is_admitted<T>(answer: kube::Result<T>) -> kube::Result<Option<T>> {
    match answer {
        Err(kube::Error::Api(s)) if s.code == 409 && s.reason == "AlreadyExists" => Ok(None),
        other => other.map(Some),
    }
}

/// A create's answer as a problem of the spec, when it is one.
pub fn refusal<T>(
    result: kube::Result<T>,
    kind: &'static str,
    name: &str,
) -> Result<Option<SpecProblem>> {
    match result {
        Ok(_) => Ok(None),
        Err(e) => as_refusal(e, kind, name).map(Some),
    }
}

/// The error as a problem of the spec, or back as an error when it is not
/// one: 409 (the object exists) and 429 (slow down) are not the spec's
/// fault, nor is a namespace being deleted.
pub fn as_refusal(e: kube::Error, kind: &'static str, name: &str) -> Result<SpecProblem> {
    match e {
        kube::Error::Api(s) if is_refusal(&s) => Ok(SpecProblem::Refused {
            kind,
            name: name.into(),
            code: s.code,
            message: s.message.clone(),
        }),
        e => Err(e.into()),
    }
}

fn is_refusal(e: &kube::core::Status) -> bool {
    (400..500).contains(&e.code)
        && !matches!(e.code, 404 | 409 | 429)
        && !crate::error::namespace_terminating(e)
}
