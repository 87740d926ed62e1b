//! The pure half of leader election: what a replica has seen of the Lease
//! and since when on its own clock, what it should do about it, and the
//! records it writes. No I/O and no wall clock in any decision, so every
//! rule is a plain unit test.

use super::LEASE_DURATION;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;
use tokio::time::Instant;

/// The parts of a Lease whose change proves its holder is alive. Any write
/// bumps resourceVersion; holder and renewTime are compared too so that a
/// record is never taken as unchanged when only the version is missing.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    resource_version: Option<String>,
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    duration: Duration,
}

impl Record {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Self {
            resource_version: lease.metadata.resource_version.clone(),
            holder: spec.and_then(holder).map(str::to_owned),
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            duration: spec.map_or(LEASE_DURATION, declared_duration),
        }
    }
}

/// A record as this replica saw it, and the moment (on this replica's
/// monotonic clock) it first saw it in that form. client-go's
/// observedRecord/observedTime: the holder's renewTime is never compared
/// with the local wall clock, so skew between nodes cannot cut a live
/// holder's term short or stretch a dead one's.
#[derive(Debug, Clone)]
pub(super) struct Observation {
    record: Record,
    since: Instant,
}

impl Observation {
    /// Folds a fresh read into what was seen before: the clock restarts
    /// only when the record changed.
    pub(super) fn update(previous: Option<Self>, lease: &Lease, now: Instant) -> Self {
        let record = Record::of(lease);
        match previous {
            Some(seen) if seen.record == record => seen,
            _ => Self { record, since: now },
        }
    }

    /// The holder has not touched the record for as long as it promised
    /// to stay away after its last renewal.
    pub(super) fn expired(&self, now: Instant) -> bool {
        now >= self.since + self.record.duration
    }
}

/// What one read of the Lease calls for.
#[derive(Debug)]
pub(super) enum Step {
    /// There is no Lease: create one naming this replica.
    Create(Lease),
    /// Another replica holds a claim this replica has not seen lapse.
    Standby(String),
    /// Write this record (a renewal, or a takeover of a free or lapsed
    /// lease); it carries the resourceVersion read, so the write is a
    /// compare-and-swap.
    Claim(Lease),
}

/// Decides from one read, updating what has been observed. `wall` only
/// stamps the record written (renewTime is informational for others); no
/// decision depends on it.
pub(super) fn decide(
    observed: &mut Option<Observation>,
    current: Option<Lease>,
    me: &str,
    now: Instant,
    wall: Timestamp,
) -> Step {
    let Some(lease) = current else {
        *observed = None;
        return Step::Create(fresh(me, wall));
    };
    let seen = Observation::update(observed.take(), &lease, now);
    let other = seen.record.holder.clone().filter(|h| h != me);
    let lapsed = seen.expired(now);
    *observed = Some(seen);
    match other {
        Some(holder) if !lapsed => Step::Standby(holder),
        _ => Step::Claim(claim(lease, me, wall)),
    }
}

/// A new Lease naming `me` as holder; the caller gives it its name.
fn fresh(me: &str, wall: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta::default(),
        spec: Some(LeaseSpec {
            holder_identity: Some(me.to_owned()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(wall)),
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

/// `lease` renewed by `me`, or taken over when someone else (or no one)
/// held it: then acquireTime restarts and leaseTransitions counts one more,
/// as client-go records a change of leader.
fn claim(mut lease: Lease, me: &str, wall: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_with(Default::default);
    if holder(spec) != Some(me) {
        spec.holder_identity = Some(me.to_owned());
        spec.acquire_time = Some(MicroTime(wall));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(wall));
    spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
    lease
}

/// `lease` given up: no holder, so a standby claims it on its next read
/// instead of waiting out the duration. The one-second duration is what
/// client-go writes, for readers that only look at the duration.
pub(super) fn released(mut lease: Lease, wall: Timestamp) -> Lease {
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.acquire_time = Some(MicroTime(wall));
    spec.renew_time = Some(MicroTime(wall));
    lease
}

/// The holder, with an empty string read as none (client-go writes "").
pub(super) fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// The term the holder promised; a missing or non-positive one is read as
/// ours rather than as "already expired", so a malformed record cannot be
/// grabbed at once.
fn declared_duration(spec: &LeaseSpec) -> Duration {
    match spec.lease_duration_seconds {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        _ => LEASE_DURATION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    fn lease(holder: Option<&str>, rv: &str, renewed: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                lease_transitions: Some(3),
                ..Default::default()
            }),
        }
    }

    fn standby_of(step: Step) -> Option<String> {
        match step {
            Step::Standby(holder) => Some(holder),
            _ => None,
        }
    }

    #[test]
    fn an_unchanged_record_lapses_after_its_duration_on_the_local_clock() {
        let t0 = Instant::now();
        let record = lease(Some("a"), "1", Timestamp::now());
        let seen = Observation::update(None, &record, t0);
        let seen = Observation::update(Some(seen), &record, t0 + Duration::from_secs(14));
        assert!(!seen.expired(t0 + Duration::from_secs(14)));
        assert!(seen.expired(t0 + Duration::from_secs(15)));
    }

    #[test]
    fn any_change_restarts_the_local_clock() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(20);
        let wall = Timestamp::now();
        let first = lease(Some("a"), "1", wall);
        let changes = [
            lease(Some("a"), "2", wall),
            lease(Some("b"), "1", wall),
            lease(Some("a"), "1", wall + SignedDuration::from_secs(2)),
        ];
        for changed in changes {
            let seen = Observation::update(None, &first, t0);
            let seen = Observation::update(Some(seen), &changed, later);
            assert!(!seen.expired(later), "{changed:?}");
        }
    }

    #[test]
    fn the_holders_wall_clock_never_decides() {
        // An hour behind or ahead of ours: a skewed holder, not a dead one.
        for skew in [-3600, 3600] {
            let renewed = Timestamp::now() + SignedDuration::from_secs(skew);
            let mut observed = None;
            let t0 = Instant::now();
            let read = || Some(lease(Some("a"), "1", renewed));
            let step = decide(&mut observed, read(), "me", t0, Timestamp::now());
            assert_eq!(standby_of(step).as_deref(), Some("a"));
            let t1 = t0 + Duration::from_secs(15);
            assert!(matches!(
                decide(&mut observed, read(), "me", t1, Timestamp::now()),
                Step::Claim(_)
            ));
        }
    }

    #[test]
    fn a_free_lease_is_claimed_at_once_and_counts_a_transition() {
        let wall = Timestamp::now();
        let free = released(lease(Some("a"), "9", wall), wall);
        let Step::Claim(mine) = decide(&mut None, Some(free), "me", Instant::now(), wall) else {
            panic!("a released lease must be claimed at once");
        };
        let spec = mine.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(4));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(mine.metadata.resource_version.as_deref(), Some("9"));
    }

    #[test]
    fn renewing_ones_own_lease_keeps_the_acquire_time_and_transitions() {
        let acquired: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut own = lease(Some("me"), "5", acquired);
        own.spec.as_mut().unwrap().acquire_time = Some(MicroTime(acquired));
        let wall = acquired + SignedDuration::from_secs(30);
        let Step::Claim(renewed) = decide(&mut None, Some(own), "me", Instant::now(), wall) else {
            panic!("the holder renews its own lease");
        };
        let spec = renewed.spec.unwrap();
        assert_eq!(spec.acquire_time, Some(MicroTime(acquired)));
        assert_eq!(spec.renew_time, Some(MicroTime(wall)));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn an_absent_lease_is_created_naming_this_replica() {
        let mut observed = None;
        let Step::Create(new) = decide(&mut observed, None, "me", Instant::now(), Timestamp::now())
        else {
            panic!("an absent lease is created");
        };
        let spec = new.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn a_malformed_duration_is_read_as_ours() {
        let mut record = lease(Some("a"), "1", Timestamp::now());
        record.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
        let t0 = Instant::now();
        let seen = Observation::update(None, &record, t0);
        assert!(!seen.expired(t0 + LEASE_DURATION - Duration::from_millis(1)));
        assert!(seen.expired(t0 + LEASE_DURATION));
    }
}
