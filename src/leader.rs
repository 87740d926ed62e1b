//! Leader election on a coordination.k8s.io Lease, so two replicas give a
//! warm standby and never two active controllers.
//!
//! The timings follow client-go's: a leader renews every `RETRY`; one that
//! cannot renew within `RENEW_DEADLINE` stops acting (the process exits and
//! its restart rejoins as a candidate); a candidate takes over a lease
//! whose holder has not renewed for `LEASE_DURATION`. Because
//! RENEW_DEADLINE < LEASE_DURATION, the old leader has stopped before a new
//! one can start. Every write is a compare-and-swap on resourceVersion.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use std::time::{Duration, Instant};
use tracing::{info, warn};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY: Duration = Duration::from_secs(2);

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

/// What one try at the lease found.
#[derive(Debug, PartialEq)]
enum Outcome {
    Held,
    HeldByOther(String),
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Returns once this process holds the lease.
    pub async fn acquire(&self) {
        let mut logged_holder = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Outcome::Held) => {
                    info!(identity = %self.identity, lease = %self.name, "became the leader");
                    return;
                }
                Ok(Outcome::HeldByOther(holder)) => {
                    if logged_holder.as_ref() != Some(&holder) {
                        info!(leader = %holder, "standing by: another replica leads");
                        logged_holder = Some(holder);
                    }
                }
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews the lease until it cannot, then returns: the caller must stop
    /// acting at once.
    pub async fn hold(&self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(RETRY).await;
            match self.try_acquire_or_renew().await {
                Ok(Outcome::Held) => last_renewed = Instant::now(),
                Ok(Outcome::HeldByOther(holder)) => {
                    warn!(leader = %holder, "lost the lease to another replica");
                    return;
                }
                Err(e) => warn!("renewing the lease failed: {e}"),
            }
            if last_renewed.elapsed() >= RENEW_DEADLINE {
                warn!("could not renew the lease for {RENEW_DEADLINE:?}");
                return;
            }
        }
    }

    /// Gives the lease up on a clean shutdown (a rollout, a drain), so the
    /// standby takes over on its next try instead of after LEASE_DURATION.
    pub async fn release(&self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else {
                return Ok(());
            };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        .await;
        match result {
            Ok(()) => info!(lease = %self.name, "released the lease"),
            Err(e) => {
                warn!("could not release the lease (the standby takes over when it expires): {e}")
            }
        }
    }

    async fn try_acquire_or_renew(&self) -> kube::Result<Outcome> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Outcome::Held),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    Ok(Outcome::HeldByOther("someone".into()))
                }
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let mine = holder == self.identity;
        if !mine && !holder.is_empty() && !expired(spec, now.0) {
            return Ok(Outcome::HeldByOther(holder));
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(LEASE_DURATION.as_secs() as i32);
        // replace carries the resourceVersion we read: if anyone wrote in
        // between, this fails with 409 and nobody holds it twice.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Outcome::Held),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Outcome::HeldByOther(holder)),
            Err(e) => Err(e),
        }
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let duration = spec
        .lease_duration_seconds
        .unwrap_or(LEASE_DURATION.as_secs() as i32);
    match &spec.renew_time {
        None => true,
        Some(renewed) => now.duration_since(renewed.0).as_secs() >= i64::from(duration),
    }
}

/// This replica's name in the lease: the pod name when in a pod.
pub fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::SignedDuration;

    #[test]
    fn a_lease_expires_after_its_duration_without_renewal() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let spec = |ago: i64| LeaseSpec {
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(ago))),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(!expired(&spec(14), now));
        assert!(expired(&spec(15), now));
        assert!(expired(&LeaseSpec::default(), now));
    }

    #[test]
    fn a_leader_stops_before_a_standby_may_start() {
        assert!(RENEW_DEADLINE < LEASE_DURATION);
        assert!(RETRY * 3 <= RENEW_DEADLINE);
    }
}
