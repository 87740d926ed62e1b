//! What the operator holds per TrainingJob, by holder, with no cluster.
//!
//! N synthetic jobs like `cargo xtask bench scale`'s (1, 1, 1, 2, 2, 4, 8
//! ranks in turn), each with the status the operator's own `decide` writes
//! once its pods run, and pods built by the operator's own pod builder,
//! dressed as the API server and a kubelet return them (uid,
//! resourceVersion, managedFields, defaults, a Running status). Each object
//! is serialized and parsed back as a watch delivers it, stripped as the
//! watchers strip it, and folded into the same holders the controller uses.
//! A counting allocator gives the bytes each holder keeps live.
//!
//! `cargo bench --bench memory` (N = 2000); `TJO_MEM_JOBS=10000` for more.
//! Prints numbers; asserts nothing.

#[path = "memory/alloc.rs"]
mod alloc;
#[path = "memory/objects.rs"]
mod objects;

use alloc::{Counting, Live};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use kube::Resource;
use objects::Synthetic;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use trainingjob_operator::api::TrainingJob;
use trainingjob_operator::cache::{self, LeanPod, PodIndex, Unseen, WirePod};
use trainingjob_operator::events::{Events, Note};
use trainingjob_operator::metrics::{JobLabels, Metrics};

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let n: usize = std::env::var("TJO_MEM_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = objects::synthesize(n);
    let pods = world.iter().map(|s| s.pods.len()).sum::<usize>();
    println!(
        "{n} jobs, {pods} pods ({:.2} per job)",
        pods as f64 / n as f64
    );
    println!(
        "as the API server sends them, per object: {}",
        world_sizes(&world)
    );
    println!();
    println!(
        "{:<44} {:>11} {:>11} {:>10}",
        "holder", "bytes/job", "allocs/job", "RSS/job"
    );
    let report = Report { n };
    let (jobs, store) = report.job_store(&world);
    let index = report.pod_index(&world);
    report.unseen(&world);
    report.metrics(&world);
    rt.block_on(report.controller(&jobs, store.clone()));
    rt.block_on(report.recorder(&world));
    println!();
    relist_page(&world);
    println!();
    drop(index);
    breakdown(&store, &world);
}

fn world_sizes(world: &[Synthetic]) -> String {
    let job: usize = world.iter().map(|s| s.job_json.len()).sum();
    let pods: usize = world.iter().flat_map(|s| &s.pods).map(|p| p.len()).sum();
    let count: usize = world.iter().map(|s| s.pods.len()).sum();
    format!(
        "job {} B of JSON, pod {} B of JSON",
        job / world.len(),
        pods / count
    )
}

struct Report {
    n: usize,
}

impl Report {
    fn line(&self, holder: &str, from: Live) {
        let d = Live::now().since(&from);
        let per = |x: i64| x as f64 / self.n as f64;
        println!(
            "{holder:<44} {:>11.0} {:>11.1} {:>10.0}",
            per(d.bytes),
            per(d.allocs),
            per(d.rss)
        );
    }

    /// The TrainingJob watch: parsed, stripped, into a reflector store.
    fn job_store(
        &self,
        world: &[Synthetic],
    ) -> (Vec<Arc<TrainingJob>>, reflector::Store<TrainingJob>) {
        let from = Live::now();
        let (store, mut writer) = reflector::store::<TrainingJob>();
        writer.apply_watcher_event(&Event::Init);
        for s in world {
            let mut job: TrainingJob = serde_json::from_slice(&s.job_json).unwrap();
            cache::strip_job(&mut job);
            writer.apply_watcher_event(&Event::InitApply(job));
        }
        writer.apply_watcher_event(&Event::InitDone);
        self.line("jobs: reflector store (stripped)", from);
        // Kept alive on purpose: the writer owns the store's map.
        std::mem::forget(writer);
        (store.state(), store)
    }

    /// The pod watch: read as a `WirePod`, stripped, into the PodIndex.
    fn pod_index(&self, world: &[Synthetic]) -> PodIndex {
        let from = Live::now();
        let index = PodIndex::default();
        index.apply(&Event::Init);
        for json in world.iter().flat_map(|s| &s.pods) {
            let mut pod = serde_json::from_slice::<WirePod>(json).unwrap().0;
            cache::strip_pod(&mut pod);
            index.apply(&Event::InitApply(pod));
        }
        index.apply(&Event::InitDone);
        self.line("pods: PodIndex (stripped)", from);
        index
    }

    /// What a reconcile wrote and created, until the watches show it
    /// (transient: the next reconcile of the job forgets it).
    fn unseen(&self, world: &[Synthetic]) {
        let unseen = Unseen::default();
        let from = Live::now();
        for s in world {
            for json in &s.created {
                let pod: Pod = serde_json::from_slice(json).unwrap();
                unseen.created_pod(&s.uid, pod);
            }
        }
        self.line("unseen: created pods (until seen)", from);
        let from = Live::now();
        for s in world {
            unseen.wrote_status(&s.uid, s.status.clone());
        }
        self.line("unseen: written statuses (until seen)", from);
    }

    /// The two per-job gauge families.
    fn metrics(&self, world: &[Synthetic]) {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let from = Live::now();
        for s in world {
            let job = JobLabels {
                namespace: objects::NAMESPACE.into(),
                name: s.name.clone(),
            };
            m.grace_seconds.get_or_create(&job).set(30);
            m.save_bytes_per_second.get_or_create(&job).set(1 << 20);
        }
        self.line("metrics: per-job gauges", from);
        drop(registry);
    }

    /// kube-runtime's Controller over the store: every job reconciled once
    /// and requeued in 300 s, as a settled job is.
    async fn controller(&self, jobs: &[Arc<TrainingJob>], store: reflector::Store<TrainingJob>) {
        // Each job as its watch event hands it over, cloned only when the
        // controller pulls it, and dropped once it is turned into a request.
        let trigger = jobs.to_vec();
        let done = Arc::new(AtomicUsize::new(0));
        let from = Live::now();
        let stream = futures::stream::iter(trigger)
            .map(|j| Ok::<_, kube::runtime::watcher::Error>((*j).clone()))
            .chain(futures::stream::pending());
        let task = tokio::spawn(
            Controller::for_stream(stream, store)
                .run(
                    |_, done: Arc<AtomicUsize>| async move {
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, kube::Error>(Action::requeue(Duration::from_secs(300)))
                    },
                    |_, _, _| Action::await_change(),
                    done.clone(),
                )
                .for_each(|_| async {}),
        );
        while done.load(Ordering::SeqCst) < jobs.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.line("controller: queue + scheduler (requeue 300s)", from);
        task.abort();
    }

    /// What publishing each job's transitions on the way to Running
    /// leaves behind: kube's `Recorder` (the operator's before) keeps
    /// every event for 6 minutes; `Events` keeps a hash, a name and a count.
    async fn recorder(&self, world: &[Synthetic]) {
        let (service, mut api) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let answer = tokio::spawn(async move {
            while let Some((req, send)) = api.next_request().await {
                let body = req.into_body().collect_bytes().await.unwrap();
                send.send_response(http::Response::new(kube::client::Body::from(body.to_vec())));
            }
        });
        let client = kube::Client::new(service, "default");
        let instance = "trainingjob-operator-7d9f8b6c5d-x2x9z";
        let reporter = Reporter {
            controller: "trainingjob-operator".into(),
            instance: Some(instance.into()),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let from = Live::now();
        for s in world {
            let job: TrainingJob = serde_json::from_slice(&s.job_json).unwrap();
            let reference = job.object_ref(&());
            for (reason, note) in &s.transitions {
                let event = KubeEvent {
                    type_: EventType::Normal,
                    reason: reason.clone(),
                    note: Some(note.clone()),
                    action: "Reconcile".into(),
                    secondary: None,
                };
                recorder.publish(&event, &reference).await.unwrap();
            }
        }
        self.line("events: kube's Recorder cache (before)", from);
        drop(recorder);
        let events = Events::new(client, "trainingjob-operator", Some(instance.into()));
        let from = Live::now();
        for s in world {
            let job: TrainingJob = serde_json::from_slice(&s.job_json).unwrap();
            for (reason, note) in &s.transitions {
                let what = Note {
                    warning: false,
                    reason,
                    note,
                };
                events.publish(&job, &what).await.unwrap();
            }
        }
        self.line("events: Events' series (6 min TTL)", from);
        answer.abort();
    }
}

/// What a re-list page of pods costs while it is parsed: kube reads a
/// whole page before it hands out its pods, so the high-water mark is the
/// page parsed, before any is stripped.
fn relist_page(world: &[Synthetic]) {
    let page: Vec<&[u8]> = world
        .iter()
        .flat_map(|s| &s.pods)
        .take(100)
        .map(|p| p.as_slice())
        .collect();
    let json = [b"[".as_slice(), &page.join(b",".as_slice()), b"]"].concat();
    let per_pod = |parse: &dyn Fn()| {
        let from = Live::now();
        alloc::reset_peak();
        parse();
        (alloc::peak() - from.bytes) as f64 / page.len() as f64
    };
    let full = per_pod(&|| drop(serde_json::from_slice::<Vec<Pod>>(&json).unwrap()));
    let wire = per_pod(&|| drop(serde_json::from_slice::<Vec<WirePod>>(&json).unwrap()));
    println!(
        "a re-list page of {} pods ({} B of JSON a pod), peak bytes a pod while parsed: \
         as Pod {full:.0}, as WirePod {wire:.0}",
        page.len(),
        json.len() / page.len()
    );
}

/// Where a pod's and a cached job's bytes are: a clone of each part.
fn breakdown(store: &reflector::Store<TrainingJob>, world: &[Synthetic]) {
    use std::mem::size_of;
    let pods: Vec<Pod> = world
        .iter()
        .flat_map(|s| &s.pods)
        .map(|json| serde_json::from_slice(json).unwrap())
        .collect();
    let per_pod =
        |f: &dyn Fn(&Pod) -> usize| pods.iter().map(f).sum::<usize>() as f64 / pods.len() as f64;
    println!("a pod parsed whole, bytes by part:");
    println!("  Pod inline                       {:>8}", size_of::<Pod>());
    println!(
        "  metadata heap                    {:>8.0}",
        per_pod(&|p| alloc::heap_of(&p.metadata))
    );
    println!(
        "  spec heap                        {:>8.0}",
        per_pod(&|p| alloc::heap_of(&p.spec))
    );
    println!(
        "  status heap                      {:>8.0}",
        per_pod(&|p| alloc::heap_of(&p.status))
    );
    let stripped = |p: &Pod| {
        let mut p = p.clone();
        cache::strip_pod(&mut p);
        p
    };
    println!(
        "  stripped, as a reconcile reads it {:>7.0}",
        per_pod(&|p| {
            let s = stripped(p);
            size_of::<Pod>()
                + alloc::heap_of(&s.metadata)
                + alloc::heap_of(&s.spec)
                + alloc::heap_of(&s.status)
        })
    );
    println!(
        "  LeanPod, as the cache keeps it   {:>8.0}",
        per_pod(&|p| size_of::<LeanPod>() + alloc::heap_of(&LeanPod::from(p.clone())))
    );
    let jobs = store.state();
    let per_job = |f: &dyn Fn(&TrainingJob) -> usize| {
        jobs.iter().map(|j| f(j)).sum::<usize>() as f64 / jobs.len() as f64
    };
    println!("a cached job, bytes by part:");
    println!(
        "  TrainingJob inline               {:>8}",
        size_of::<TrainingJob>()
    );
    println!(
        "  metadata heap                    {:>8.0}",
        per_job(&|j| alloc::heap_of(&j.metadata))
    );
    println!(
        "  spec heap                        {:>8.0}",
        per_job(&|j| alloc::heap_of(&j.spec))
    );
    println!(
        "  spec.template heap               {:>8.0}",
        per_job(&|j| alloc::heap_of(&j.spec.template))
    );
    println!(
        "  status heap                      {:>8.0}",
        per_job(&|j| alloc::heap_of(&j.status))
    );
    println!(
        "inline sizes: Container {}, PodSpec {}, PodStatus {}, ObjectMeta {}, ContainerStatus {}",
        size_of::<k8s_openapi::api::core::v1::Container>(),
        size_of::<k8s_openapi::api::core::v1::PodSpec>(),
        size_of::<k8s_openapi::api::core::v1::PodStatus>(),
        size_of::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>(),
        size_of::<k8s_openapi::api::core::v1::ContainerStatus>(),
    );
}
