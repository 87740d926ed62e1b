//! The elector against a mock API server (tower-test, as controller-rs
//! tests its reconciler): each test answers the requests one by one, in
//! the order a real replica would make them. Time is tokio's paused clock:
//! it only moves when every task waits, so the timings asserted are exact
//! and the tests take no real time.

use super::*;
use http::{Method, Request, Response};
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::SignedDuration;
use kube::client::Body;
use std::sync::Arc;
use tokio::task::JoinHandle;

const NS: &str = "trainingjob-system";
const NAME: &str = "trainingjob-operator";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/trainingjob-system/leases";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/trainingjob-system/leases/trainingjob-operator";

type Responder = tower_test::mock::SendResponse<Response<Body>>;

/// One request as the mock API server received it.
struct Call {
    method: Method,
    path: String,
    body: Option<Lease>,
    reply: Responder,
}

struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

fn elector(me: &str) -> (Arc<Elector>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let elector = Elector::new(client, NS, NAME, me.into());
    (Arc::new(elector), ApiServer(handle))
}

impl ApiServer {
    /// The next request; a replica that stops calling fails the test
    /// instead of hanging it.
    async fn next(&mut self) -> Call {
        let wait = tokio::time::timeout(Duration::from_secs(120), self.0.next_request());
        let (request, reply) = wait.await.expect("no request").expect("client dropped");
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());
        Call {
            method,
            path,
            body,
            reply,
        }
    }

    /// Expects a read of the Lease and answers it; `None` is a 404.
    async fn get(&mut self, lease: Option<&Lease>) {
        let call = self.next().await;
        assert_eq!((&call.method, call.path.as_str()), (&Method::GET, LEASE));
        match lease {
            Some(lease) => ok(call.reply, lease),
            None => status(call.reply, 404, "NotFound"),
        }
    }

    /// Expects a write of the Lease (`POST` create or `PUT` replace) and
    /// returns what was sent, for the test to answer.
    async fn write(&mut self, method: Method) -> (Lease, Responder) {
        let call = self.next().await;
        let path = if method == Method::POST {
            LEASES
        } else {
            LEASE
        };
        assert_eq!((&call.method, call.path.as_str()), (&method, path));
        (call.body.expect("a write carries the lease"), call.reply)
    }

    /// Answers every read with `read(n)` until a write of the Lease
    /// arrives; returns it, unanswered, and how long after the first read
    /// it came.
    async fn standby_until_write(
        &mut self,
        read: impl Fn(u32) -> Lease,
    ) -> (Duration, Lease, Responder) {
        let mut start = None;
        for n in 0.. {
            let call = self.next().await;
            let start = *start.get_or_insert_with(Instant::now);
            if call.method == Method::PUT {
                assert_eq!(call.path, LEASE);
                let sent = call.body.expect("a write carries the lease");
                return (start.elapsed(), sent, call.reply);
            }
            assert_eq!((&call.method, call.path.as_str()), (&Method::GET, LEASE));
            ok(call.reply, &read(n));
        }
        unreachable!()
    }
}

fn ok(reply: Responder, lease: &Lease) {
    let body = serde_json::to_vec(lease).unwrap();
    reply.send_response(Response::builder().body(Body::from(body)).unwrap());
}

fn status(reply: Responder, code: u16, reason: &str) {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "code": code, "message": reason,
    });
    let response = Response::builder()
        .status(code)
        .body(Body::from(body.to_string().into_bytes()));
    reply.send_response(response.unwrap());
}

/// What the API server keeps after a write: the object at a new version.
fn stored(mut lease: Lease, version: u32) -> Lease {
    lease.metadata.name = Some(NAME.into());
    lease.metadata.namespace = Some(NS.into());
    lease.metadata.resource_version = Some(version.to_string());
    lease
}

fn held_by(holder: &str, version: u32, renewed: Timestamp) -> Lease {
    let spec = LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
        acquire_time: Some(MicroTime(renewed)),
        renew_time: Some(MicroTime(renewed)),
        lease_transitions: Some(4),
        ..Default::default()
    };
    let metadata = ObjectMeta::default();
    stored(
        Lease {
            metadata,
            spec: Some(spec),
        },
        version,
    )
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref().and_then(record::holder)
}

fn spawn_acquire(elector: &Arc<Elector>) -> JoinHandle<()> {
    let elector = elector.clone();
    tokio::spawn(async move { elector.acquire().await })
}

fn spawn_hold(elector: &Arc<Elector>) -> JoinHandle<()> {
    let elector = elector.clone();
    tokio::spawn(async move { elector.hold().await })
}

/// `me` leading on a Lease it just created; returns the stored Lease.
async fn leader(me: &str) -> (Arc<Elector>, ApiServer, Lease) {
    let (elector, mut server) = elector(me);
    let acquire = spawn_acquire(&elector);
    server.get(None).await;
    let (sent, reply) = server.write(Method::POST).await;
    let lease = stored(sent, 1);
    ok(reply, &lease);
    acquire.await.unwrap();
    (elector, server, lease)
}

async fn finishes(task: JoinHandle<()>) {
    let done = tokio::time::timeout(Duration::from_secs(120), task).await;
    done.expect("still running").expect("panicked");
}

#[tokio::test(start_paused = true)]
async fn acquire_creates_an_absent_lease() {
    let (_, _, lease) = leader("a").await;
    assert_eq!(lease.metadata.name.as_deref(), Some(NAME));
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(spec.lease_transitions, Some(0));
}

#[tokio::test(start_paused = true)]
async fn acquire_takes_over_only_after_seeing_the_lease_unchanged_for_its_duration() {
    let (elector, mut server) = elector("b");
    let acquire = spawn_acquire(&elector);
    let dead = held_by("a", 7, Timestamp::now());
    let (waited, sent, reply) = server.standby_until_write(|_| dead.clone()).await;
    ok(reply, &stored(sent.clone(), 8));
    assert!(waited >= LEASE_DURATION, "took over after {waited:?}");
    assert!(
        waited < LEASE_DURATION + RETRY,
        "took over after {waited:?}"
    );
    // A compare-and-swap on the version read, recording the new leader.
    assert_eq!(sent.metadata.resource_version.as_deref(), Some("7"));
    assert_eq!(holder_of(&sent), Some("b"));
    assert_eq!(sent.spec.unwrap().lease_transitions, Some(5));
    finishes(acquire).await;
}

#[tokio::test(start_paused = true)]
async fn no_takeover_while_the_holder_keeps_renewing() {
    let (elector, mut server) = elector("b");
    let acquire = spawn_acquire(&elector);
    let start = Timestamp::now();
    for n in 0..50u32 {
        let renewed = start + SignedDuration::from_secs(2 * i64::from(n));
        server.get(Some(&held_by("a", 10 + n, renewed))).await;
    }
    // Fifty reads, 98 s of standby, and every request was a read.
    assert!(!acquire.is_finished());
    acquire.abort();
}

#[tokio::test(start_paused = true)]
async fn a_skewed_holder_clock_neither_hastens_nor_delays_a_takeover() {
    // renewTime an hour behind or ahead of this replica's wall clock: the
    // Lease was only just seen, so the takeover still waits its duration.
    for skew in [-3600, 3600] {
        let (elector, mut server) = elector("b");
        let acquire = spawn_acquire(&elector);
        let renewed = Timestamp::now() + SignedDuration::from_secs(skew);
        let lease = held_by("a", 3, renewed);
        let (waited, sent, reply) = server.standby_until_write(|_| lease.clone()).await;
        ok(reply, &stored(sent, 4));
        assert!(
            waited >= LEASE_DURATION,
            "skew {skew}: took over after {waited:?}"
        );
        assert!(
            waited < LEASE_DURATION + RETRY,
            "skew {skew}: waited {waited:?}"
        );
        finishes(acquire).await;
    }
}

#[tokio::test(start_paused = true)]
async fn hold_renews_and_ends_when_another_replica_holds_the_lease() {
    let (elector, mut server, lease) = leader("a").await;
    let hold = spawn_hold(&elector);
    server.get(Some(&lease)).await;
    let (renewal, reply) = server.write(Method::PUT).await;
    assert_eq!(renewal.metadata.resource_version.as_deref(), Some("1"));
    assert_eq!(holder_of(&renewal), Some("a"));
    assert_ne!(
        renewal.spec.as_ref().unwrap().renew_time,
        lease.spec.unwrap().renew_time
    );
    ok(reply, &stored(renewal, 2));
    server.get(Some(&held_by("b", 3, Timestamp::now()))).await;
    finishes(hold).await;
}

/// Renewals that fail in `answer`'s way end `hold` at the renew deadline,
/// counted from when the last good write was sent: before any standby may
/// take over.
async fn hold_ends_at_the_renew_deadline(answer: fn(Call, &mut Vec<Responder>)) {
    let (elector, mut server, _) = leader("a").await;
    let since = Instant::now();
    let mut hold = spawn_hold(&elector);
    let mut unanswered = Vec::new();
    loop {
        tokio::select! {
            done = &mut hold => break done.unwrap(),
            call = server.next() => answer(call, &mut unanswered),
        }
    }
    assert_eq!(since.elapsed(), RENEW_DEADLINE);
    assert!(RENEW_DEADLINE < LEASE_DURATION);
}

#[tokio::test(start_paused = true)]
async fn hold_ends_at_the_renew_deadline_when_renewals_fail() {
    hold_ends_at_the_renew_deadline(|call, _| status(call.reply, 500, "InternalError")).await;
}

#[tokio::test(start_paused = true)]
async fn hold_ends_at_the_renew_deadline_when_the_api_server_hangs() {
    hold_ends_at_the_renew_deadline(|call, unanswered| unanswered.push(call.reply)).await;
}

#[tokio::test(start_paused = true)]
async fn the_renew_deadline_counts_from_when_the_renewal_was_sent() {
    // The server may commit a write at any moment before its answer, and a
    // standby's clock starts from then: a slow answer must not extend the
    // leader's term.
    let (elector, mut server, lease) = leader("a").await;
    let mut hold = spawn_hold(&elector);
    server.get(Some(&lease)).await;
    let (renewal, reply) = server.write(Method::PUT).await;
    let sent = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ok(reply, &stored(renewal, 2));
    loop {
        tokio::select! {
            done = &mut hold => break done.unwrap(),
            call = server.next() => status(call.reply, 500, "InternalError"),
        }
    }
    assert_eq!(sent.elapsed(), RENEW_DEADLINE);
}

#[tokio::test(start_paused = true)]
async fn a_conflicting_renewal_is_retried_not_a_loss() {
    let (elector, mut server, lease) = leader("a").await;
    let hold = spawn_hold(&elector);
    server.get(Some(&lease)).await;
    let (_, reply) = server.write(Method::PUT).await;
    status(reply, 409, "Conflict");
    // Someone else wrote (a label, say); the lease is still ours.
    let relabelled = stored(lease, 2);
    server.get(Some(&relabelled)).await;
    let (renewal, reply) = server.write(Method::PUT).await;
    assert_eq!(renewal.metadata.resource_version.as_deref(), Some("2"));
    ok(reply, &stored(renewal, 3));
    assert!(!hold.is_finished());
    hold.abort();
}

#[tokio::test(start_paused = true)]
async fn release_clears_the_holder_so_a_standby_takes_over_at_once() {
    let (a, mut server_a, lease) = leader("a").await;
    let release = tokio::spawn(async move { a.release().await });
    server_a.get(Some(&lease)).await;
    let (sent, reply) = server_a.write(Method::PUT).await;
    assert_eq!(sent.metadata.resource_version.as_deref(), Some("1"));
    assert_eq!(holder_of(&sent), None);
    let released = stored(sent, 2);
    ok(reply, &released);
    finishes(release).await;

    // b first sees a leading, then the released record: it claims it on
    // that very read, not a lease duration later.
    let (b, mut server_b) = elector("b");
    let acquire = spawn_acquire(&b);
    let reads = [lease, released];
    let (waited, sent, reply) = server_b
        .standby_until_write(|n| reads[n as usize].clone())
        .await;
    ok(reply, &stored(sent.clone(), 3));
    assert_eq!(waited, RETRY);
    assert_eq!(holder_of(&sent), Some("b"));
    assert_eq!(sent.metadata.resource_version.as_deref(), Some("2"));
    finishes(acquire).await;
}

#[tokio::test(start_paused = true)]
async fn release_leaves_a_lease_it_does_not_hold() {
    let (elector, mut server) = elector("a");
    let release = tokio::spawn(async move { elector.release().await });
    server.get(Some(&held_by("b", 4, Timestamp::now()))).await;
    finishes(release).await;
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_takeover_is_a_lost_race_and_election_goes_on() {
    let (elector, mut server) = elector("b");
    let acquire = spawn_acquire(&elector);
    let dead = held_by("a", 7, Timestamp::now());
    let (_, _, reply) = server.standby_until_write(|_| dead.clone()).await;
    status(reply, 409, "Conflict");
    // c won; b stands by (reads only) until the lease is gone, then wins.
    let c = held_by("c", 8, Timestamp::now());
    for _ in 0..3 {
        server.get(Some(&c)).await;
    }
    server.get(None).await;
    let (sent, reply) = server.write(Method::POST).await;
    ok(reply, &stored(sent, 9));
    finishes(acquire).await;
}

#[tokio::test(start_paused = true)]
async fn a_conflict_on_create_is_a_lost_race() {
    let (elector, mut server) = elector("b");
    let acquire = spawn_acquire(&elector);
    server.get(None).await;
    let (_, reply) = server.write(Method::POST).await;
    status(reply, 409, "AlreadyExists");
    let c = held_by("c", 1, Timestamp::now());
    for _ in 0..3 {
        server.get(Some(&c)).await;
    }
    assert!(!acquire.is_finished());
    acquire.abort();
}

#[test]
fn a_leader_stops_before_a_standby_may_start() {
    assert!(RENEW_DEADLINE < LEASE_DURATION);
    assert!(RETRY * 3 <= RENEW_DEADLINE);
}
