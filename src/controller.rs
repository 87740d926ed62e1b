//! The reconcile loop, in one direction: dereference (the controller's own
//! caches, no API reads) -> validate (pure) -> decide (pure) -> preflight
//! (only when an attempt is about to be created) -> apply.

use crate::api::TrainingJob;
use crate::apply::{self, Applied, Target};
use crate::backoff::Backoff;
use crate::cache::{self, PodIndex, Unseen, WirePod};
use crate::defaults::Defaults;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::finalizers::Orphans;
use crate::labels::managed_selector;
use crate::lifecycle::{self, Decision, Inputs};
use crate::metrics::Metrics;
use crate::nodes::{self, NodeIndex};
use crate::observe::{self, PodView};
use crate::preflight;
use crate::validate::{self, SpecProblem};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, instrument, warn};

/// The one field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "trainingjob-operator";

/// Built once, shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    /// Image the launcher is copied from (the operator's own).
    pub operator_image: String,
    pub defaults: Defaults,
    pub pods: PodIndex,
    pub nodes: NodeIndex,
    pub unseen: Unseen,
    pub backoff: Backoff,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        operator_image: String,
        defaults: Defaults,
    ) -> Self {
        Self {
            events: Events::new(
                client.clone(),
                FIELD_MANAGER,
                std::env::var("POD_NAME").ok(),
            ),
            client,
            metrics,
            operator_image,
            defaults,
            pods: PodIndex::default(),
            nodes: NodeIndex::default(),
            unseen: Unseen::default(),
            backoff: Backoff::default(),
        }
    }
}

fn api<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` resolves. One watch per kind: the
/// jobs, the operator's own pods (indexed by job, stripped) and the
/// Services' metadata. At most `concurrency` reconciles run at once.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (jobs, writer) = reflector::store();
    let orphans = Arc::new(Orphans::spawn(client.clone(), jobs.clone()));
    let listed = orphans.clone();
    let forget = ctx.clone();
    let job_events = watcher(api::<TrainingJob>(&client, &namespace), list_config())
        .default_backoff()
        .modify(cache::strip_job)
        .inspect_ok(move |e| {
            if let watcher::Event::Delete(job) = e {
                forget.unseen.forget(&job.uid().unwrap_or_default());
                let ns = job.namespace().unwrap_or_default();
                forget.metrics.forget_job(&ns, &job.name_any());
            }
        })
        .reflect(writer)
        .inspect_ok(move |e| listed.jobs_listed(e))
        .applied_objects();
    // Only the operator's own children are watched, so a busy cluster's
    // other pods cost nothing.
    let children = list_config().labels(&managed_selector());
    let index = ctx.clone();
    let pod_events = watcher(api::<WirePod>(&client, &namespace), children.clone())
        .default_backoff()
        .map_ok(cache::unwire)
        .modify(cache::strip_pod)
        .inspect_ok(move |e| {
            index.pods.apply(e);
            orphans.offer(e);
        })
        .touched_objects();
    let services = watcher(
        api::<PartialObjectMeta<Service>>(&client, &namespace),
        children,
    )
    .default_backoff()
    .touched_objects();
    Controller::for_stream(job_events, jobs)
        .with_config(controller::Config::default().concurrency(concurrency))
        .owns_stream(pod_events)
        .owns_stream(services)
        .reconcile_on(node_changes(ctx.clone()))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                // A child's event for a job that is gone: nothing to do.
                Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {}
                Err(e) => warn!("reconcile stream: {e}"),
                Ok(_) => {}
            }
        })
        .await;
}

/// Lists in pages of LIST_PAGE: a (re-)list holds a whole page of full
/// objects in memory before they are stripped, and at thousands of jobs the
/// default page of 500 nearly doubled the operator's peak memory after a
/// restart.
fn list_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE)
}

const LIST_PAGE: u32 = 100;

/// The jobs with a pod on a node whose facts changed (readiness, a notice
/// taint). One cluster-wide watch, stripped; an operator that may not
/// watch nodes still runs, only blind to them, and says so.
fn node_changes(
    ctx: Arc<Context>,
) -> impl futures::Stream<Item = ObjectRef<TrainingJob>> + Send + 'static {
    let index = ctx.clone();
    watcher(Api::<Node>::all(ctx.client.clone()), list_config())
        .default_backoff()
        .modify(nodes::strip_node)
        .filter_map(move |event| {
            let ctx = ctx.clone();
            async move {
                match event {
                    Ok(e) => Some(ctx.nodes.apply(&e)),
                    Err(e) => {
                        warn!("watching nodes (needs list and watch on nodes): {e}");
                        None
                    }
                }
            }
        })
        .flat_map(move |changed| {
            let jobs = index.pods.jobs_on(&changed);
            futures::stream::iter(
                jobs.into_iter()
                    .map(|(ns, name)| ObjectRef::new(&name).within(&ns)),
            )
        })
}

#[instrument(skip_all, fields(job = %job.name_any(), ns = job.namespace().unwrap_or_default()))]
async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let _in_flight = crate::metrics::InFlight::enter(&ctx.metrics.reconciles_in_flight);
    let result = reconcile_job(&job, &ctx, started).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        ctx.backoff.succeeded(&job.uid().unwrap_or_default());
    }
    result
}

/// What a reconcile decides on, all from memory.
struct World {
    job: TrainingJob,
    ns: String,
    /// This job's pods, with those just created that the watch has not
    /// shown yet.
    pods: Vec<Arc<Pod>>,
    views: Vec<PodView>,
    /// A pod of an earlier job of the same name can still run: it shares
    /// the checkpoint directory.
    earlier_running: bool,
}

fn dereference(job: &TrainingJob, ctx: &Context) -> Result<World> {
    let ns = job.namespace().ok_or(Error::NoNamespace)?;
    let uid = job.uid().unwrap_or_default();
    let mut job = cache::full_job(job)?;
    // The cache may not show our own last status write yet.
    job.status = ctx.unseen.status(&uid, job.status.as_ref());
    let (mut pods, earlier): (Vec<Arc<Pod>>, Vec<Arc<Pod>>) = ctx
        .pods
        .pods(&ns, &job.name_any())
        .into_iter()
        .partition(|p| p.owner_references().iter().any(|o| o.uid == uid));
    pods.extend(ctx.unseen.pods_not_seen(&uid, &pods));
    let earlier_running = earlier.iter().any(|p| {
        !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    });
    let views = pods
        .iter()
        .filter_map(|p| observe::view(&job, p))
        .map(|mut v| {
            v.node_facts = v.node.as_deref().and_then(|n| ctx.nodes.get(n));
            v
        })
        .collect();
    Ok(World {
        job,
        ns,
        pods,
        views,
        earlier_running,
    })
}

fn decide(ctx: &Context, w: &World, problems: &[SpecProblem]) -> Decision {
    lifecycle::decide(&Inputs {
        job: &w.job,
        pods: &w.views,
        problems,
        now: Timestamp::now(),
        defaults: &ctx.defaults,
        operator_image: &ctx.operator_image,
    })
}

async fn reconcile_job(job: &TrainingJob, ctx: &Context, started: Instant) -> Result<Action> {
    if job.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove the pods and
        // the Service; nothing outside the cluster needs cleaning.
        return Ok(Action::await_change());
    }
    ctx.pods.wait_ready().await;
    let w = dereference(job, ctx)?;
    let mut problems = validate::validate(&w.job);
    let mut d = decide(ctx, &w, &problems);
    if let Some(attempt) = &d.create {
        if w.earlier_running {
            info!("waiting for the pods of an earlier job of the same name to stop");
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        let found = preflight::check(&ctx.client, &w.job, &w.ns, attempt).await?;
        if !found.is_empty() {
            problems.extend(found);
            d = decide(ctx, &w, &problems);
        }
    }
    let target = Target {
        job: &w.job,
        ns: &w.ns,
        pods: &w.pods,
        started,
    };
    match apply::apply(ctx, &target, d).await? {
        Applied::Done(action) => Ok(action),
        Applied::Refused(problem) => {
            problems.push(problem);
            let d = decide(ctx, &w, &problems);
            debug_assert!(d.create.is_none(), "a refused spec starts nothing");
            match apply::apply(ctx, &target, d).await? {
                Applied::Done(action) => Ok(action),
                Applied::Refused(_) => Ok(Action::requeue(Duration::from_secs(30))),
            }
        }
    }
}

fn error_policy(job: Arc<TrainingJob>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.kind());
    warn!(job = %job.name_any(), "reconcile failed: {error}");
    if error.is_permanent() {
        return Action::await_change();
    }
    Action::requeue(ctx.backoff.failed(&job.uid().unwrap_or_default()))
}

#[cfg(test)]
mod tests;
