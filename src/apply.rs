//! Performs a `Decision`: creates the attempt's objects, writes status,
//! releases finished pods, publishes the transitions and stops pods. It
//! computes nothing the decision did not already hold, and drops no error.

use crate::api::{TrainingJob, TrainingJobStatus};
use crate::controller::{Context, FIELD_MANAGER};
use crate::error::{self, Error, Result};
use crate::events::Note;
use crate::finalizers;
use crate::lifecycle::{Attempt, Decision};
use crate::metrics::JobLabels;
use crate::preflight::{as_refusal, refusal};
use crate::text::tail;
use crate::validate::SpecProblem;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What became of the plan.
pub enum Applied {
    Done(Action),
    /// The API server refused an object built from the spec; what this
    /// attempt had created was removed again.
    Refused(SpecProblem),
}

/// The job as the reconcile saw it, and its pods.
pub struct Target<'a> {
    pub job: &'a TrainingJob,
    pub ns: &'a str,
    pub pods: &'a [Arc<Pod>],
    pub started: Instant,
}

pub async fn apply(ctx: &Context, t: &Target<'_>, d: Decision) -> Result<Applied> {
    // Pods first, then status: a controller stopped in between finds pods
    // of an attempt newer than status and finishes it (lifecycle's
    // catch-up) rather than taking the missing pods for a preemption.
    if let Some(attempt) = &d.create {
        match create_attempt(ctx, t, attempt).await {
            Ok(None) => resumed(ctx, t, attempt.number),
            Ok(Some(problem)) => return Ok(Applied::Refused(problem)),
            // The namespace is going away with the job in it: start nothing,
            // and let finished pods go so the deletion is not held up by the
            // finalizer that only we remove.
            Err(Error::NamespaceTerminating) => {
                info!(
                    ns = t.ns,
                    "namespace is being deleted; not starting attempt {}", attempt.number
                );
                release(ctx, t, &finished(t.pods)).await?;
                return Ok(Applied::Done(Action::requeue(Duration::from_secs(10))));
            }
            Err(e) => return Err(e),
        }
    }
    let old = t.job.status.as_ref();
    if old != Some(&d.status) {
        write_status(ctx, t, &d.status).await?;
        record_metrics(ctx, t, old, &d.status);
    }
    // Only now that status holds their reports may finished pods go.
    release(ctx, t, &d.release).await?;
    publish(ctx, t.job, &d).await;
    stop(ctx, t.ns, &d.delete).await?;
    Ok(Applied::Done(match d.requeue_after {
        Some(after) => Action::requeue(after),
        // Pod and Service events wake the job; the resync is a safety net.
        None => Action::requeue(Duration::from_secs(300)),
    }))
}

fn resumed(ctx: &Context, t: &Target, attempt: i32) {
    let counted = t.job.status.as_ref().map(|s| s.attempt) == Some(attempt);
    if attempt > 1 && !counted {
        ctx.metrics
            .resume_seconds
            .observe(t.started.elapsed().as_secs_f64());
    }
}

/// Creates what is missing of the attempt. A refusal removes the pods this
/// call made, so no partial gang is left running.
async fn create_attempt(ctx: &Context, t: &Target<'_>, a: &Attempt) -> Result<Option<SpecProblem>> {
    if let Some(svc) = &a.service {
        if let Some(problem) = ensure_service(ctx, t, svc).await? {
            return Ok(Some(problem));
        }
    }
    let api = Api::<Pod>::namespaced(ctx.client.clone(), t.ns);
    let uid = t.job.uid().unwrap_or_default();
    let mut made = Vec::new();
    for pod in &a.pods {
        let name = pod.name_any();
        // Pod specs are immutable: an existing pod is left as it is.
        if t.pods.iter().any(|p| p.name_any() == name) {
            continue;
        }
        let created = match api.create(&PostParams::default(), pod).await {
            Ok(p) => p,
            Err(kube::Error::Api(e)) if error::namespace_terminating(&e) => {
                return Err(Error::NamespaceTerminating)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => {
                let problem = as_refusal(e, "Pod", &name)?;
                stop(ctx, t.ns, &made).await?;
                return Ok(Some(problem));
            }
        };
        ctx.metrics.pods_created.inc();
        info!(pod = %name, attempt = a.number, "created pod");
        ctx.unseen.created_pod(&uid, created);
        made.push(name);
    }
    Ok(None)
}

/// Creates the Service only if it is absent, and takes one that exists only
/// if this job owns it: another object of the same name is never adopted,
/// and so never deleted with the job.
async fn ensure_service(
    ctx: &Context,
    t: &Target<'_>,
    svc: &Service,
) -> Result<Option<SpecProblem>> {
    let api = Api::<Service>::namespaced(ctx.client.clone(), t.ns);
    let name = svc.name_any();
    match api.create(&PostParams::default(), svc).await {
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(kube::Error::Api(e)) if error::namespace_terminating(&e) => {
            return Err(Error::NamespaceTerminating)
        }
        other => return refusal(other, "Service", &name),
    }
    let uid = t.job.uid().unwrap_or_default();
    let existing = api.get_opt(&name).await?;
    let ours = existing
        .as_ref()
        .is_some_and(|s| s.owner_references().iter().any(|o| o.uid == uid));
    Ok((!ours).then(|| SpecProblem::Refused {
        kind: "Service",
        name: name.clone(),
        code: 409,
        message: format!(
            "a Service named {name:?} already exists and does not belong to this TrainingJob; \
             rename the job or remove that Service"
        ),
    }))
}

async fn write_status(ctx: &Context, t: &Target<'_>, status: &TrainingJobStatus) -> Result<()> {
    let api = Api::<TrainingJob>::namespaced(ctx.client.clone(), t.ns);
    let patch = serde_json::json!({
        "apiVersion": TrainingJob::api_version(&()),
        "kind": TrainingJob::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            &t.job.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
    let uid = t.job.uid().unwrap_or_default();
    ctx.unseen
        .wrote_status(&uid, written.status.unwrap_or_default());
    Ok(())
}

/// The per-job figures a status write made true.
fn record_metrics(
    ctx: &Context,
    t: &Target,
    old: Option<&TrainingJobStatus>,
    new: &TrainingJobStatus,
) {
    let m = &ctx.metrics;
    let before = |attempt: i32| {
        old.and_then(|s| s.interruptions.iter().find(|i| i.attempt == attempt))
            .and_then(|i| i.steps_lost)
    };
    for i in &new.interruptions {
        if let (Some(lost), None) = (i.steps_lost, before(i.attempt)) {
            m.steps_lost.observe(lost as f64);
        }
    }
    let job = JobLabels {
        namespace: t.ns.into(),
        name: t.job.name_any(),
    };
    if let Some(grace) = new.grace_period_seconds {
        m.grace_seconds.get_or_create(&job).set(grace);
    }
    if let Some(bps) = new.save.as_ref().and_then(|s| s.bytes_per_second) {
        m.save_bytes_per_second.get_or_create(&job).set(bps);
    }
}

/// One event per transition, and the metric it moves.
async fn publish(ctx: &Context, job: &TrainingJob, d: &Decision) {
    for t in &d.transitions {
        let (reason, note) = (t.reason(), t.message());
        info!(reason, "{note}");
        t.count(&ctx.metrics);
        let what = Note {
            warning: t.is_warning(),
            reason,
            note: &tail(&note, 1000),
        };
        if let Err(e) = ctx.events.publish(job, &what).await {
            warn!("could not publish event {reason}: {e}");
        }
    }
}

fn finished(pods: &[Arc<Pod>]) -> Vec<String> {
    pods.iter()
        .filter(|p| finalizers::releasable(p))
        .map(|p| p.name_any())
        .collect()
}

async fn release(ctx: &Context, t: &Target<'_>, names: &[String]) -> Result<()> {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), t.ns);
    for pod in t.pods.iter().filter(|p| names.contains(&p.name_any())) {
        finalizers::release(&api, pod).await?;
    }
    Ok(())
}

/// Graceful deletes; a pod already gone is what was wanted.
async fn stop(ctx: &Context, ns: &str, names: &[String]) -> Result<()> {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    for pod in names {
        match api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => info!(pod = %pod, "stopping pod gracefully"),
            Err(e) if error::is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
