//! Which requests a publish makes, against a mock API server.

use super::*;
use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;
use tower_test::mock::{self, Handle};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

fn events() -> (Events, ApiHandle) {
    let (service, api) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let events = Events::new(client, "trainingjob-operator", Some("op-0".into()));
    (events, api)
}

fn job() -> TrainingJob {
    serde_json::from_value(json!({
        "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": "uid-1", "resourceVersion": "7"},
        "spec": {"replicas": 1, "checkpoint": {"claimName": "c"},
                 "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}}}
    }))
    .unwrap()
}

const PREEMPTED: Note = Note {
    warning: true,
    reason: "Preempted",
    note: "attempt 1: rank 0 was evicted",
};

/// Answers the next request with `code` (the request's own body when
/// `code` is 2xx) and returns its method, path and body.
async fn answer(api: &mut ApiHandle, code: u16) -> (String, String, Value) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), api.next_request())
        .await
        .expect("a request")
        .expect("the client is alive");
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let body = req.into_body().collect_bytes().await.unwrap();
    let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let reply = if code < 300 {
        sent.clone()
    } else {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "NotFound", "code": code, "message": "gone"})
    };
    let reply = Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
        .unwrap();
    send.send_response(reply);
    (method, path, sent)
}

#[tokio::test]
async fn a_first_event_is_created_by_this_instance_about_the_job() {
    let (events, mut api) = events();
    let j = job();
    let (result, (method, path, sent)) =
        tokio::join!(events.publish(&j, &PREEMPTED), answer(&mut api, 201));
    result.unwrap();
    assert_eq!((method.as_str(), path.as_str()), ("POST", EVENTS));
    assert_eq!(sent["type"], "Warning");
    assert_eq!(sent["reason"], "Preempted");
    assert_eq!(sent["note"], PREEMPTED.note);
    assert_eq!(sent["reportingController"], "trainingjob-operator");
    assert_eq!(sent["reportingInstance"], "op-0");
    assert_eq!(sent["regarding"]["uid"], "uid-1");
    assert_eq!(sent["regarding"]["kind"], "TrainingJob");
    // Pinning the resourceVersion would tie the event to one revision.
    assert!(sent["regarding"].get("resourceVersion").is_none());
}

#[tokio::test]
async fn the_same_note_again_counts_in_the_first_events_series() {
    let (events, mut api) = events();
    let j = job();
    let (first, (_, _, created)) =
        tokio::join!(events.publish(&j, &PREEMPTED), answer(&mut api, 201));
    first.unwrap();
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    for count in [2, 3] {
        let (again, (method, path, sent)) =
            tokio::join!(events.publish(&j, &PREEMPTED), answer(&mut api, 200));
        again.unwrap();
        assert_eq!(
            (method.as_str(), path),
            ("PATCH", format!("{EVENTS}/{name}"))
        );
        assert_eq!(sent["series"]["count"], count);
        assert!(sent["series"]["lastObservedTime"].is_string());
    }
    assert_eq!(events.remembered(), 1);
}

#[tokio::test]
async fn a_new_note_is_a_new_event() {
    let (events, mut api) = events();
    let j = job();
    let later = Note {
        note: "attempt 2: rank 0 was evicted",
        ..PREEMPTED
    };
    for what in [&PREEMPTED, &later] {
        let (result, (method, _, sent)) =
            tokio::join!(events.publish(&j, what), answer(&mut api, 201));
        result.unwrap();
        assert_eq!(method, "POST");
        assert_eq!(sent["note"], what.note);
    }
}

#[tokio::test]
async fn a_repeat_whose_event_is_gone_creates_it_again() {
    let (events, mut api) = events();
    let j = job();
    let (first, _) = tokio::join!(events.publish(&j, &PREEMPTED), answer(&mut api, 201));
    first.unwrap();
    let script = async {
        let (patch, _, _) = answer(&mut api, 404).await;
        let (post, _, sent) = answer(&mut api, 201).await;
        (patch, post, sent)
    };
    let (result, (patch, post, sent)) = tokio::join!(events.publish(&j, &PREEMPTED), script);
    result.unwrap();
    assert_eq!((patch.as_str(), post.as_str()), ("PATCH", "POST"));
    assert!(sent.get("series").is_none());
}

#[tokio::test]
async fn series_past_their_ttl_are_forgotten() {
    let (events, mut api) = events();
    let j = job();
    let (first, _) = tokio::join!(events.publish(&j, &PREEMPTED), answer(&mut api, 201));
    first.unwrap();
    assert_eq!(events.remembered(), 1);
    let later = Instant::now() + SERIES_TTL + PRUNE_EVERY;
    assert_eq!(events.repeat_of(key(&j, &PREEMPTED), later), None);
    assert_eq!(events.remembered(), 0);
}

#[test]
fn a_burst_of_series_gives_its_table_back_once_they_expire() {
    let start = Instant::now();
    let mut series = Series {
        seen: HashMap::new(),
        pruned: start,
    };
    for key in 0..10_000 {
        let seen = Seen {
            name: format!("j{key}.1"),
            count: 1,
            last: start,
        };
        series.seen.insert(key, seen);
    }
    series.prune(start + SERIES_TTL + PRUNE_EVERY);
    assert!(series.seen.is_empty());
    assert!(
        series.seen.capacity() < 10_000,
        "{}",
        series.seen.capacity()
    );
}
