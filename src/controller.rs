//! The reconcile loop: observe the job's pods, `lifecycle::decide`, then
//! act. Only this file and `main.rs` talk to the API server.

use crate::api::{TrainingJob, TrainingJobStatus};
use crate::defaults::Defaults;
use crate::error::{Error, Result};
use crate::lifecycle::{self, Decision, Inputs};
use crate::metrics::{ErrorLabels, EventLabels, JobLabels, Metrics};
use crate::observe::{self, PodView};
use crate::pods::{self, AttemptPlan, JOB_LABEL, MANAGED_BY};
use crate::{finalizers, quantity, shm};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, instrument, warn};

/// The one field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "trainingjob-operator";

/// Built once, shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Image the launcher is copied from (the operator's own).
    pub operator_image: String,
    pub defaults: Defaults,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        operator_image: String,
        defaults: Defaults,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            operator_image,
            defaults,
        }
    }
}

/// Runs the controller until the stream ends (on SIGTERM/SIGINT).
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let (jobs, pods, services) = match &namespace {
        Some(ns) => (
            Api::<TrainingJob>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client, ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client),
        ),
    };
    // Only the operator's own children are watched, so a busy cluster's
    // other pods cost nothing.
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGED_BY}"));
    Controller::new(jobs, watcher::Config::default())
        .owns(pods, children.clone())
        .owns(services, children)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!("reconcile stream: {e}");
            }
        })
        .await;
}

#[instrument(skip_all, fields(job = %job.name_any(), ns = job.namespace().unwrap_or_default()))]
async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&job, &ctx, started).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(job: &TrainingJob, ctx: &Context, started: Instant) -> Result<Action> {
    if job.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the pods and
        // the Service; nothing outside the cluster needs cleaning.
        return Ok(Action::await_change());
    }
    let ns = job.namespace().ok_or(Error::NoNamespace)?;
    let name = job.name_any();
    // The cached object may predate our own last status write; deciding on
    // it could count one preemption twice. A quorum read costs one GET.
    let Some(job) = Api::<TrainingJob>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&name)
        .await?
    else {
        return Ok(Action::await_change());
    };
    let job = &job;
    let uid = job.uid().unwrap_or_default();
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), &ns);
    // Listed, not read from a cache: creating an attempt from a stale view
    // could put two pods on one rank.
    let listed = pods_api
        .list(&ListParams::default().labels(&format!("{JOB_LABEL}={name}")))
        .await?;
    // Pods of an earlier job of the same name are the garbage collector's,
    // but while one can still run it shares our checkpoint directory.
    let (owned, earlier): (Vec<Pod>, Vec<Pod>) = listed
        .items
        .into_iter()
        .partition(|p| p.owner_references().iter().any(|o| o.uid == uid));
    let earlier_running = earlier.iter().any(|p| {
        !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    });
    let views: Vec<PodView> = owned.iter().filter_map(|p| observe::view(job, p)).collect();
    let problems = preflight(job, ctx, &ns).await?;
    let decision = lifecycle::decide(&Inputs {
        job,
        pods: &views,
        problems: &problems,
        now: Timestamp::now(),
        defaults: &ctx.defaults,
    });
    if earlier_running && decision.create_attempt.is_some() {
        info!("waiting for the pods of an earlier job named {name} to stop");
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    act(job, ctx, &ns, &owned, &views, decision, started).await
}

async fn act(
    job: &TrainingJob,
    ctx: &Context,
    ns: &str,
    listed: &[Pod],
    views: &[PodView],
    d: Decision,
    started: Instant,
) -> Result<Action> {
    let name = job.name_any();
    // Pods first, then status: a controller killed in between finds pods of
    // an attempt newer than status and finishes it (lifecycle's catch-up)
    // rather than taking the missing pods for a preemption.
    if let Some(attempt) = d.create_attempt {
        match create_attempt(job, ctx, ns, views, attempt, &d.status).await {
            Ok(()) => {}
            // The namespace is going away with the job in it: start nothing,
            // and let finished pods go so the deletion is not held up by the
            // finalizer that only we remove.
            Err(Error::NamespaceTerminating) => {
                info!("namespace {ns} is being deleted; not starting attempt {attempt}");
                release_finished(ctx, ns, listed).await?;
                return Ok(Action::requeue(Duration::from_secs(10)));
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(attempt) = d.create_attempt.filter(|a| *a > 1) {
        if d.status.phase == Some(crate::api::Phase::Resuming)
            && job.status.as_ref().map(|s| s.attempt) != Some(attempt)
        {
            ctx.metrics
                .resume_seconds
                .observe(started.elapsed().as_secs_f64());
        }
    }
    if job.status.as_ref() != Some(&d.status) {
        write_status(ctx, ns, &name, &d.status).await?;
        record_metrics(ctx, ns, &name, job.status.as_ref(), &d);
    }
    // Only now that status holds their reports may finished pods go.
    release_finished(ctx, ns, listed).await?;
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let reference = job.object_ref(&());
    for (warning, reason, note) in &d.events {
        info!(reason = %reason, "{note}");
        ctx.metrics
            .transitions
            .get_or_create(&EventLabels {
                reason: reason.clone(),
            })
            .inc();
        let event = Event {
            type_: if *warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.clone(),
            note: Some(crate::observe::tail(note, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!("could not publish event {reason}: {e}");
        }
    }
    for pod in &d.delete {
        match pods_api.delete(pod, &DeleteParams::default()).await {
            Ok(_) => info!(pod = %pod, "stopping pod gracefully"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match d.requeue_after {
        Some(after) => Action::requeue(after),
        // Pod and Service events wake the job; the resync is a safety net.
        None => Action::requeue(Duration::from_secs(300)),
    })
}

async fn release_finished(ctx: &Context, ns: &str, listed: &[Pod]) -> Result<()> {
    let pods_api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    for pod in listed.iter().filter(|p| finalizers::releasable(p)) {
        finalizers::release(&pods_api, pod).await?;
    }
    Ok(())
}

async fn create_attempt(
    job: &TrainingJob,
    ctx: &Context,
    ns: &str,
    views: &[PodView],
    attempt: i32,
    status: &TrainingJobStatus,
) -> Result<()> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if let Some(svc) = pods::build_service(job) {
        let api = Api::<Service>::namespaced(ctx.client.clone(), ns);
        let name = svc.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &params,
            &Patch::Apply(with_type_meta(&svc, "v1", "Service")?),
        )
        .await?;
    }
    let shm_bytes = job
        .spec
        .shared_memory
        .as_ref()
        .and_then(|s| shm::size_bytes(s).ok().flatten());
    let plan = AttemptPlan {
        attempt,
        grace_seconds: status
            .grace_period_seconds
            .unwrap_or(i64::from(ctx.defaults.notice_seconds(job))),
        checkpoint_interval_seconds: status.recommended_checkpoint_interval_seconds,
        shm_bytes,
        operator_image: ctx.operator_image.clone(),
        spot: ctx.defaults.spot(job),
    };
    let Ok(pods) = pods::build_pods(job, &plan) else {
        // preflight reported it; nothing to create.
        return Ok(());
    };
    let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Pod specs are immutable: an existing pod is left as it is.
        if views.iter().any(|v| v.name == name) {
            continue;
        }
        match api
            .patch(
                &name,
                &params,
                &Patch::Apply(with_type_meta(&pod, "v1", "Pod")?),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("being terminated") => {
                return Err(Error::NamespaceTerminating)
            }
            Err(e) => return Err(e.into()),
        }
        ctx.metrics.pods_created.inc();
        info!(pod = %name, attempt, "created pod");
    }
    Ok(())
}

/// Counts what a status write made true: called once per written change.
fn record_metrics(
    ctx: &Context,
    ns: &str,
    name: &str,
    old: Option<&TrainingJobStatus>,
    d: &Decision,
) {
    let m = &ctx.metrics;
    for (_, reason, _) in &d.events {
        match reason.as_str() {
            "Preempted" => m.preemptions.inc(),
            "TrainerFailed" | "BackoffLimitExceeded" => m.failures.inc(),
            "Resuming" => m.resumes.inc(),
            _ => 0,
        };
    }
    let before = |attempt: i32| {
        old.and_then(|s| s.interruptions.iter().find(|i| i.attempt == attempt))
            .and_then(|i| i.steps_lost)
    };
    for i in &d.status.interruptions {
        if let (Some(lost), None) = (i.steps_lost, before(i.attempt)) {
            m.steps_lost.observe(lost as f64);
        }
    }
    let job = JobLabels {
        namespace: ns.into(),
        name: name.into(),
    };
    if let Some(grace) = d.status.grace_period_seconds {
        m.grace_seconds.get_or_create(&job).set(grace);
    }
    if let Some(bps) = d.status.save.as_ref().and_then(|s| s.bytes_per_second) {
        m.save_bytes_per_second.get_or_create(&job).set(bps);
    }
}

fn with_type_meta<T: serde::Serialize>(
    obj: &T,
    api_version: &str,
    kind: &str,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(obj).map_err(|source| Error::Serialize {
        what: kind_static(kind),
        source,
    })?;
    v["apiVersion"] = api_version.into();
    v["kind"] = kind.into();
    Ok(v)
}

fn kind_static(kind: &str) -> &'static str {
    match kind {
        "Pod" => "Pod",
        "Service" => "Service",
        _ => "object",
    }
}

async fn write_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    status: &TrainingJobStatus,
) -> Result<()> {
    let api = Api::<TrainingJob>::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": TrainingJob::api_version(&()),
        "kind": TrainingJob::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// What the schema cannot check and would keep the job from running: each a
/// message that says what to change.
async fn preflight(job: &TrainingJob, ctx: &Context, ns: &str) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let claim = &job.spec.checkpoint.claim_name;
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns);
    match pvcs.get_opt(claim).await? {
        None => problems.push(format!(
            "checkpoint.claimName: PersistentVolumeClaim {claim:?} not found in namespace {ns:?}; create it or fix the name"
        )),
        Some(pvc) if job.spec.replicas > 1 => {
            let modes = pvc.spec.and_then(|s| s.access_modes).unwrap_or_default();
            if !modes.iter().any(|m| m == "ReadWriteMany") {
                problems.push(format!(
                    "replicas is {} but PersistentVolumeClaim {claim:?} is {}: every rank writes checkpoints to it, \
                     so it must be ReadWriteMany (or use replicas: 1)",
                    job.spec.replicas,
                    if modes.is_empty() { "not ReadWriteMany".to_string() } else { modes.join(", ") }
                ));
            }
        }
        Some(_) => {}
    }
    if let Some(spec) = &job.spec.shared_memory {
        match shm::size_bytes(spec) {
            Err(e) => problems.push(format!("sharedMemory: {e}")),
            Ok(Some(bytes)) => {
                let limit = job
                    .spec
                    .template
                    .spec
                    .as_ref()
                    .and_then(|s| {
                        pods::trainer_index(&s.containers)
                            .ok()
                            .map(|i| &s.containers[i])
                    })
                    .and_then(|c| {
                        c.resources
                            .as_ref()?
                            .limits
                            .as_ref()?
                            .get("memory")
                            .cloned()
                    })
                    .and_then(|q| quantity::bytes(&q.0).ok());
                if let Err(e) = shm::check_against_memory_limit(bytes, limit) {
                    problems.push(format!("sharedMemory: {e}"));
                }
            }
            Ok(None) => {}
        }
    }
    let plan = AttemptPlan {
        attempt: 1,
        grace_seconds: 1,
        checkpoint_interval_seconds: None,
        shm_bytes: None,
        operator_image: String::new(),
        spot: None,
    };
    if let Err(e) = pods::build_pod(job, &plan, 0) {
        problems.push(format!("template: {e}"));
    }
    Ok(problems)
}

fn error_policy(job: Arc<TrainingJob>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failures
        .get_or_create(&ErrorLabels {
            kind: error.kind().into(),
        })
        .inc();
    warn!(job = %job.name_any(), "reconcile failed: {error}");
    match error {
        Error::NoNamespace | Error::Serialize { .. } => Action::await_change(),
        Error::NamespaceTerminating => Action::requeue(Duration::from_secs(10)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}
