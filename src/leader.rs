//! Leader election on a coordination.k8s.io Lease, so two replicas give a
//! warm standby and never two active controllers.
//!
//! It follows client-go's leaderelection. A leader renews every `RETRY`. A
//! leader that has not renewed within `RENEW_DEADLINE` of sending its last
//! successful write stops acting: `hold` resolves, and the process exits
//! and its restart rejoins as a candidate. A candidate takes over only
//! after it has itself seen the Lease unchanged for the holder's
//! leaseDurationSeconds, timed on its own monotonic clock (see
//! `record::Observation`). The holder's renewTime is never compared with
//! the local wall clock, so clock skew between nodes cannot cause a takeover.
//! The standby starts its clock after the leader's write has landed, and
//! the leader starts its clock before sending. RENEW_DEADLINE <
//! LEASE_DURATION then means the old leader has stopped before a new one
//! can start.
//!
//! Every write is a compare-and-swap on the resourceVersion read; a 409
//! means another replica wrote first, which is a lost race, not an error.
//!
//! No maintained crate fits: kube-lease-manager (kube 5) and kubert's
//! lease both judge expiry as renewTime + duration against the wall clock.

mod record;
#[cfg(test)]
mod tests;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use record::{Observation, Step};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub const LEASE_DURATION: Duration = Duration::from_secs(15);
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const RETRY: Duration = Duration::from_secs(2);
/// Release runs during shutdown: if the API server does not answer within
/// this time, the standby waits out the lease instead of the process
/// hanging on exit.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// What this replica last read of the Lease, and since when.
    observed: Option<Observation>,
    /// While this replica holds the lease: when it sent its last write
    /// that succeeded, the start of its renew deadline.
    held_since: Option<Instant>,
}

/// What one try at the lease came to.
#[derive(Debug, PartialEq)]
enum Attempt {
    Held,
    /// Another replica holds a claim not yet seen to lapse.
    Standby(String),
    /// Someone wrote between our read and our write (409).
    LostRace,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity,
            state: Mutex::default(),
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
                Ok(Attempt::Held) => {
                    info!(identity = %self.identity, lease = %self.name, "became the leader");
                    return;
                }
                Ok(Attempt::Standby(holder)) => {
                    if logged_holder.as_ref() != Some(&holder) {
                        info!(leader = %holder, "standing by: another replica leads");
                        logged_holder = Some(holder);
                    }
                }
                Ok(Attempt::LostRace) => debug!("another replica wrote the lease first"),
                Err(e) => warn!("leader election: {e}"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Renews the lease until it cannot, then returns: the caller must stop
    /// acting at once. Returns at once when the lease is not held.
    pub async fn hold(&self) {
        loop {
            let Some(since) = self.state().held_since else {
                return;
            };
            // The deadline covers the wait and the call: an API server that
            // never answers must not keep a leader acting past it.
            let renew = async {
                tokio::time::sleep(RETRY).await;
                self.try_acquire_or_renew().await
            };
            match tokio::time::timeout_at(since + RENEW_DEADLINE, renew).await {
                Err(_) => {
                    warn!("could not renew the lease for {RENEW_DEADLINE:?}: stopping");
                    self.state().held_since = None;
                    return;
                }
                Ok(Ok(Attempt::Held)) => debug!(lease = %self.name, "renewed the lease"),
                Ok(Ok(Attempt::Standby(holder))) => {
                    warn!(leader = %holder, "lost the lease to another replica");
                    return;
                }
                // Only a read shows whether it was a harmless write or a
                // takeover; the next try reads again.
                Ok(Ok(Attempt::LostRace)) => warn!("renewing the lease raced another write"),
                Ok(Err(e)) => warn!("renewing the lease failed: {e}"),
            }
        }
    }

    /// Gives the lease up on a clean shutdown (a rollout, a drain), so the
    /// standby takes over on its next try instead of after LEASE_DURATION.
    pub async fn release(&self) {
        self.state().held_since = None;
        match tokio::time::timeout(RELEASE_TIMEOUT, self.try_release()).await {
            Ok(Ok(true)) => info!(lease = %self.name, "released the lease"),
            Ok(Ok(false)) => debug!("not the holder: nothing to release"),
            Ok(Err(e)) => {
                warn!("could not release the lease (the standby takes over when it expires): {e}")
            }
            Err(_) => {
                warn!("releasing the lease timed out (the standby takes over when it expires)")
            }
        }
    }

    /// Clears the holder if it is still this replica, compare-and-swap on
    /// the version read: a 409 means it was no longer ours to give.
    async fn try_release(&self) -> kube::Result<bool> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            return Ok(false);
        };
        let spec = lease.spec.as_ref();
        if spec.and_then(record::holder) != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let lease = record::released(lease, Timestamp::now());
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One read, one decision, at most one write.
    async fn try_acquire_or_renew(&self) -> kube::Result<Attempt> {
        let current = self.api.get_opt(&self.name).await?;
        let step = {
            let mut state = self.state();
            let (now, wall) = (Instant::now(), Timestamp::now());
            record::decide(&mut state.observed, current, &self.identity, now, wall)
        };
        let write = match step {
            Step::Standby(holder) => {
                self.state().held_since = None;
                return Ok(Attempt::Standby(holder));
            }
            Step::Create(mut lease) => {
                lease.metadata.name = Some(self.name.clone());
                Write::Create(lease)
            }
            Step::Claim(lease) => Write::Replace(lease),
        };
        self.write(write).await
    }

    /// Sends a claim. The renew deadline starts before sending: the server
    /// may commit it at any point until the answer arrives.
    async fn write(&self, write: Write) -> kube::Result<Attempt> {
        let sent = Instant::now();
        let pp = PostParams::default();
        let result = match &write {
            Write::Create(lease) => self.api.create(&pp, lease).await,
            Write::Replace(lease) => self.api.replace(&self.name, &pp, lease).await,
        };
        match result {
            Ok(written) => {
                let mut state = self.state();
                state.observed = Some(Observation::update(None, &written, Instant::now()));
                state.held_since = Some(sent);
                Ok(Attempt::Held)
            }
            // Create: AlreadyExists; replace: Conflict. Both 409, both a
            // race another replica won; the next read says who holds it.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::LostRace),
            Err(e) => Err(e),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Never held across an await, so a poisoned lock only means a panic
        // elsewhere; the state itself is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Write {
    Create(Lease),
    Replace(Lease),
}

/// This replica's name in the lease: the pod name when in a pod.
pub fn identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}
