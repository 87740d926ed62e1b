//! The I/O layer against a mock API server that expects each request in
//! order and answers it, as controller-rs tests its reconciler: which calls
//! a reconcile makes, in which order, and what it does with each answer.

use super::*;
use crate::api::{Phase, TrainingJobStatus};
use crate::labels::{ATTEMPT_LABEL, RANK_LABEL};
use crate::pods::AttemptPlan;
use http::{Request, Response};
use kube::client::Body;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

struct Harness {
    ctx: Arc<Context>,
    api: ApiHandle,
    registry: Registry,
}

impl Harness {
    fn split(self) -> (Arc<Context>, ApiHandle) {
        (self.ctx, self.api)
    }
}

fn harness() -> Harness {
    let (service, api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let ctx = Context::new(client, metrics, "op:1".into(), Defaults::default());
    // An empty first list: the pod cache is ready.
    ctx.pods.apply(&watcher::Event::Init);
    ctx.pods.apply(&watcher::Event::InitDone);
    Harness {
        ctx: Arc::new(ctx),
        api,
        registry,
    }
}

fn job(replicas: i32, status: Option<TrainingJobStatus>) -> TrainingJob {
    let mut j: TrainingJob = serde_json::from_value(json!({
        "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": "uid-1", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"replicas": replicas, "checkpoint": {"claimName": "c"},
                 "template": {"spec": {"containers": [{"name": "trainer", "image": "i", "command": ["t"]}]}}}
    }))
    .unwrap();
    j.status = status;
    j
}

fn claim(mode: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": "c", "namespace": "ns"}, "spec": {"accessModes": [mode]}})
}

/// One expected request: its method and path; answered with `code` and
/// `body` (or, with `Value::Null`, the request's own body echoed back).
/// Returns the request's body.
async fn expect(api: &mut ApiHandle, method: &str, path: &str, code: u16, body: Value) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
        .expect("the client is alive");
    let got = format!("{} {}", req.method(), req.uri());
    assert!(
        req.method().as_str() == method && req.uri().path() == path,
        "expected {method} {path}, got {got}"
    );
    let dry = req.uri().query().unwrap_or_default().contains("dryRun");
    let sent = req.into_body().collect_bytes().await.unwrap();
    let sent: Value = serde_json::from_slice(&sent).unwrap_or(Value::Null);
    let answer = if body.is_null() { sent.clone() } else { body };
    let mut answer = answer;
    if dry {
        answer["dryRun"] = true.into();
    }
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    sent
}

/// The status write, answered with the job as it now stands.
async fn expect_status(api: &mut ApiHandle, j: &TrainingJob) -> Value {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .expect("a status write")
        .expect("the client is alive");
    assert_eq!((req.method().as_str(), req.uri().path()), ("PATCH", STATUS));
    let sent: Value =
        serde_json::from_slice(&req.into_body().collect_bytes().await.unwrap()).unwrap();
    let mut now = serde_json::to_value(j).unwrap();
    now["status"] = sent["status"].clone();
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(serde_json::to_vec(&now).unwrap()))
            .unwrap(),
    );
    sent
}

fn refusal(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "reason": reason, "message": message, "code": code})
}

const PODS: &str = "/api/v1/namespaces/ns/pods";
const STATUS: &str = "/apis/trainingjob.dev/v1alpha1/namespaces/ns/trainingjobs/j/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const CLAIM: &str = "/api/v1/namespaces/ns/persistentvolumeclaims/c";

/// Reconciles the job as the controller's cache holds it: stripped, its
/// template folded into JSON.
async fn reconcile_now(ctx: &Context, j: &TrainingJob) -> Result<Action> {
    let mut cached = j.clone();
    crate::cache::strip_job(&mut cached);
    reconcile_job(&cached, ctx, Instant::now()).await
}

/// Runs the reconcile and the scripted API server side by side.
async fn scripted(
    ctx: &Context,
    j: &TrainingJob,
    script: impl std::future::Future<Output = ()>,
) -> Result<Action> {
    let (result, ()) = tokio::join!(reconcile_now(ctx, j), script);
    result
}

#[tokio::test]
async fn a_new_job_creates_its_pod_before_writing_status() {
    let (ctx, mut api) = harness().split();
    let j = job(1, None);
    let result = scripted(&ctx, &j, async {
        expect(&mut api, "GET", CLAIM, 200, claim("ReadWriteOnce")).await;
        let dry = expect(&mut api, "POST", PODS, 201, Value::Null).await;
        assert_eq!(dry["metadata"]["name"], "j-a1-r0");
        let pod = expect(&mut api, "POST", PODS, 201, Value::Null).await;
        assert_eq!(pod["spec"]["containers"][0]["command"][0], "/tj/launcher");
        assert_eq!(pod["spec"]["containers"][0]["image"], "i");
        let status = expect_status(&mut api, &j).await;
        assert_eq!(status["status"]["attempt"], 1);
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["reason"], "Started");
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.metrics.pods_created.get(), 1);
}

#[tokio::test]
async fn a_refused_pod_create_is_a_spec_problem_and_leaves_no_partial_gang() {
    let (ctx, mut api) = harness().split();
    let j = job(2, None);
    let message = "pods \"j-a1-r1\" is forbidden: exceeded quota: gpus";
    let result = scripted(&ctx, &j, async {
        expect(&mut api, "GET", CLAIM, 200, claim("ReadWriteMany")).await;
        expect(&mut api, "POST", PODS, 201, Value::Null).await; // dry run, rank 0
        let svc = "/api/v1/namespaces/ns/services";
        expect(&mut api, "POST", svc, 201, Value::Null).await; // dry run
        expect(&mut api, "POST", svc, 201, Value::Null).await;
        expect(&mut api, "POST", PODS, 201, Value::Null).await; // rank 0
        let forbidden = refusal(403, "Forbidden", message);
        expect(&mut api, "POST", PODS, 403, forbidden).await; // rank 1
                                                              // Rank 0 alone must not train.
        let del = json!({"kind": "Status", "status": "Success"});
        expect(&mut api, "DELETE", &format!("{PODS}/j-a1-r0"), 200, del).await;
        let status = expect_status(&mut api, &j).await;
        let conds = status["status"]["conditions"].as_array().unwrap().clone();
        let problem = conds.iter().find(|c| c["type"] == "SpecProblem").unwrap();
        assert!(problem["message"]
            .as_str()
            .unwrap()
            .contains("exceeded quota"));
        assert_eq!(status["status"]["attempt"], 0, "no attempt counted");
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(
            (&event["reason"], &event["type"]),
            (&"SpecCannotRun".into(), &"Warning".into())
        );
    })
    .await;
    let action = result.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn a_422_from_the_dry_run_creates_nothing() {
    let (ctx, mut api) = harness().split();
    let j = job(1, None);
    let result = scripted(&ctx, &j, async {
        expect(&mut api, "GET", CLAIM, 200, claim("ReadWriteOnce")).await;
        let invalid = refusal(
            422,
            "Invalid",
            "Pod \"j-a1-r0\" is invalid: spec.containers[0].image: Required value",
        );
        expect(&mut api, "POST", PODS, 422, invalid).await;
        let status = expect_status(&mut api, &j).await;
        assert!(status.to_string().contains("Required value"));
        expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.metrics.pods_created.get(), 0);
}

/// A pod of the job as the cache holds it.
fn cached_pod(j: &TrainingJob, attempt: i32, rank: i32, status: Value) -> Pod {
    let plan = AttemptPlan {
        attempt,
        grace_seconds: 30,
        checkpoint_interval_seconds: None,
        shm_bytes: None,
        operator_image: "op:1".into(),
        spot: None,
    };
    let mut pod = crate::pods::build_pod(j, &plan, rank).unwrap();
    pod.metadata.resource_version = Some("7".into());
    pod.status = Some(serde_json::from_value(status).unwrap());
    assert_eq!(pod.labels()[RANK_LABEL], rank.to_string());
    assert_eq!(pod.labels()[ATTEMPT_LABEL], attempt.to_string());
    pod
}

fn running() -> Value {
    json!({"phase": "Running", "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "",
        "ready": true, "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}]})
}

fn status(phase: Phase, attempt: i32) -> TrainingJobStatus {
    TrainingJobStatus {
        phase: Some(phase),
        attempt,
        grace_period_seconds: Some(30),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_steady_reconcile_makes_no_api_call_at_all() {
    let (ctx, mut api) = harness().split();
    let j = job(2, Some(status(Phase::Pending, 1)));
    for rank in 0..2 {
        ctx.pods
            .apply(&watcher::Event::Apply(cached_pod(&j, 1, rank, running())));
    }
    // The first reconcile sees the gang running: one status write, one event.
    let mut written = Value::Null;
    scripted(&ctx, &j, async {
        written = expect_status(&mut api, &j).await;
        expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
    })
    .await
    .unwrap();
    let mut steady = j.clone();
    steady.status = serde_json::from_value(written["status"].clone()).unwrap();
    assert_eq!(steady.status.as_ref().unwrap().phase, Some(Phase::Running));
    // Then nothing changes: the reconcile reads memory only.
    let action = reconcile_now(&ctx, &steady).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let nothing = tokio::time::timeout(Duration::from_millis(50), api.next_request()).await;
    assert!(nothing.is_err(), "a steady reconcile called the API server");
}

#[tokio::test]
async fn a_pod_already_gone_at_delete_is_what_was_wanted() {
    let (ctx, mut api) = harness().split();
    let j = job(2, Some(status(Phase::Running, 1)));
    let disrupted = json!({"phase": "Running", "conditions": [{"type": "DisruptionTarget", "status": "True",
        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}],
        "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "", "ready": true,
        "restartCount": 0, "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}]});
    ctx.pods
        .apply(&watcher::Event::Apply(cached_pod(&j, 1, 0, disrupted)));
    ctx.pods
        .apply(&watcher::Event::Apply(cached_pod(&j, 1, 1, running())));
    let result = scripted(&ctx, &j, async {
        let s = expect_status(&mut api, &j).await;
        assert_eq!(s["status"]["preemptions"], 1);
        assert_eq!(s["status"]["failures"], 0);
        let e = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(e["reason"], "Preempted");
        let gone = refusal(404, "NotFound", "pods \"j-a1-r1\" not found");
        for rank in 0..2 {
            expect(
                &mut api,
                "DELETE",
                &format!("{PODS}/j-a1-r{rank}"),
                404,
                gone.clone(),
            )
            .await;
        }
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.metrics.preemptions.get(), 1);
}

#[tokio::test]
async fn a_namespace_being_deleted_starts_nothing_and_lets_finished_pods_go() {
    let (ctx, mut api) = harness().split();
    let mut s = status(Phase::Stopping, 1);
    s.preemptions = 1;
    let j = job(1, Some(s));
    let done = json!({"phase": "Succeeded", "containerStatuses": [{"name": "trainer", "image": "i",
        "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": "",
                                 "finishedAt": "2026-01-01T00:00:10Z"}}}]});
    ctx.pods
        .apply(&watcher::Event::Apply(cached_pod(&j, 1, 0, done)));
    let result = scripted(
        &ctx,
        &j,
        async {
            expect(&mut api, "GET", CLAIM, 200, claim("ReadWriteOnce")).await;
            let terminating = refusal(
                403,
                "Forbidden",
                "pods \"j-a2-r0\" is forbidden: unable to create new content in namespace ns because it is being terminated",
            );
            expect(&mut api, "POST", PODS, 403, terminating).await;
            let patch = expect(&mut api, "PATCH", &format!("{PODS}/j-a1-r0"), 200, Value::Null).await;
            assert_eq!(patch["metadata"]["finalizers"], json!([]));
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn a_failed_reconcile_is_counted_by_kind_and_backs_off() {
    let h = harness();
    let j = Arc::new(job(1, None));
    let err = Error::Kube(kube::Error::Api(Box::new(kube::core::Status::failure(
        "etcd timeout",
        "Timeout",
    ))));
    let first = error_policy(j.clone(), &err, h.ctx.clone());
    let second = error_policy(j.clone(), &err, h.ctx.clone());
    assert_ne!(first, second, "a fixed delay");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &h.registry).unwrap();
    assert!(
        text.contains("trainingjob_reconcile_failures_total{kind=\"api\"} 2"),
        "{text}"
    );
}

/// An operator stopped after creating rank 0's pod and the Service of a
/// job's first attempt, before it wrote status: the next reconcile's dry
/// run meets objects that exist. It must finish the attempt; in the soak it
/// failed on the dry run's 409 in every reconcile for 20 minutes.
#[tokio::test]
async fn a_first_attempt_left_half_made_by_a_stopped_operator_is_finished() {
    let (ctx, mut api) = harness().split();
    let j = job(2, None);
    ctx.pods.apply(&watcher::Event::Apply(cached_pod(
        &j,
        1,
        0,
        json!({"phase": "Pending"}),
    )));
    let svc = "/api/v1/namespaces/ns/services";
    let exists = |name: &str| refusal(409, "AlreadyExists", &format!("{name:?} already exists"));
    let result = scripted(&ctx, &j, async {
        expect(&mut api, "GET", CLAIM, 200, claim("ReadWriteMany")).await;
        expect(&mut api, "POST", PODS, 409, exists("j-a1-r0")).await; // dry run
        expect(&mut api, "POST", svc, 409, exists("j")).await; // dry run
        expect(&mut api, "POST", svc, 409, exists("j")).await;
        let ours = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "j", "namespace": "ns", "ownerReferences": [{"apiVersion": "trainingjob.dev/v1alpha1",
            "kind": "TrainingJob", "name": "j", "uid": "uid-1", "controller": true}]}});
        expect(&mut api, "GET", &format!("{svc}/j"), 200, ours).await;
        let pod = expect(&mut api, "POST", PODS, 201, Value::Null).await;
        assert_eq!(pod["metadata"]["name"], "j-a1-r1", "rank 0 exists already");
        let status = expect_status(&mut api, &j).await;
        assert_eq!(status["status"]["attempt"], 1);
        let event = expect(&mut api, "POST", EVENTS, 201, Value::Null).await;
        assert_eq!(event["reason"], "Started");
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(ctx.metrics.pods_created.get(), 1);
}

const JOBS: &str = "/apis/trainingjob.dev/v1alpha1/namespaces/ns/trainingjobs";

type Pending = mock::SendResponse<Response<Body>>;

/// Answers the list of jobs with `jobs` and holds every other request
/// unanswered, so the pod cache never fills and each reconcile that
/// starts stays in flight, waiting for it.
async fn serve_jobs_only(api: &mut ApiHandle, jobs: &Value, held: &mut Vec<Pending>) {
    let Ok(Some((req, send))) =
        tokio::time::timeout(Duration::from_millis(20), api.next_request()).await
    else {
        return;
    };
    let watch = req.uri().query().unwrap_or_default().contains("watch");
    if req.uri().path() == JOBS && !watch {
        let list = json!({"apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJobList",
                          "metadata": {"resourceVersion": "1"}, "items": jobs});
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&list).unwrap(),
        )));
    } else {
        held.push(send);
    }
}

#[tokio::test]
async fn no_more_reconciles_run_at_once_than_the_cap() {
    let (service, mut api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let ctx = Context::new(client, metrics.clone(), "op:1".into(), Defaults::default());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let controller = tokio::spawn(run(Arc::new(ctx), Some("ns".into()), 2, shutdown));
    let jobs: Vec<Value> = (0..5)
        .map(|i| {
            let mut j = serde_json::to_value(job(1, None)).unwrap();
            j["metadata"]["name"] = format!("j{i}").into();
            j["metadata"]["uid"] = format!("uid-{i}").into();
            j
        })
        .collect();
    let jobs = Value::Array(jobs);
    let mut held: Vec<Pending> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.reconciles_in_flight.get() < 2 {
        assert!(
            Instant::now() < deadline,
            "in flight: {}",
            metrics.reconciles_in_flight.get()
        );
        serve_jobs_only(&mut api, &jobs, &mut held).await;
    }
    // Without the cap all five start at once; give them the chance.
    let window = Instant::now() + Duration::from_millis(300);
    while Instant::now() < window {
        serve_jobs_only(&mut api, &jobs, &mut held).await;
    }
    assert_eq!(metrics.reconciles_in_flight.get(), 2);
    drop(stop);
    controller.abort();
}
