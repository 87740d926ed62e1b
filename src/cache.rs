//! The controller's own view of the cluster, so that a reconcile reads
//! memory, not the API server: the training pods indexed by job, kept lean,
//! and what this operator wrote or created that its watches have not shown
//! yet.

use crate::api::TrainingJobStatus;
use crate::labels::JOB_LABEL;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::Event;
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod lean;
mod template;
mod wire;
pub use lean::LeanPod;
pub use template::{full_job, strip_job};
pub use wire::{unwire, WirePod};

/// A job's key in the index: namespace and name. Pods of an earlier job of
/// the same name share it, and are told apart by owner uid.
pub type JobKey = (String, String);

/// Pods by job, in order of name.
type ByJob = HashMap<JobKey, Vec<LeanPod>>;
/// Pods we created, by job uid then by name, with when.
type Created = HashMap<String, HashMap<String, (LeanPod, Instant)>>;

/// The training pods, by the job label, rebuilt whole on every re-list.
pub struct PodIndex {
    by_job: RwLock<ByJob>,
    /// A re-list in progress: swapped in whole at InitDone, so a reconcile
    /// never sees half a list.
    relist: Mutex<Option<ByJob>>,
    ready: watch::Sender<bool>,
}

impl Default for PodIndex {
    fn default() -> Self {
        Self {
            by_job: RwLock::default(),
            relist: Mutex::default(),
            ready: watch::Sender::new(false),
        }
    }
}

fn key(pod: &Pod) -> Option<JobKey> {
    Some((pod.namespace()?, pod.labels().get(JOB_LABEL)?.clone()))
}

fn insert(map: &mut ByJob, pod: &Pod) {
    if let Some(k) = key(pod) {
        let lean = LeanPod::from(pod.clone());
        let pods = map.entry(k).or_default();
        match pods.binary_search_by(|p| p.name().cmp(lean.name())) {
            Ok(at) => pods[at] = lean,
            Err(at) => pods.insert(at, lean),
        }
    }
}

impl PodIndex {
    /// Folds one watch event in.
    pub fn apply(&self, event: &Event<Pod>) {
        match event {
            Event::Apply(pod) => insert(&mut self.by_job.write().unwrap(), pod),
            Event::Delete(pod) => {
                let Some(k) = key(pod) else { return };
                let mut map = self.by_job.write().unwrap();
                if let Some(pods) = map.get_mut(&k) {
                    let name = pod.name_any();
                    pods.retain(|p| p.name() != name);
                    if pods.is_empty() {
                        map.remove(&k);
                    }
                }
            }
            Event::Init => *self.relist.lock().unwrap() = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let Some(map) = self.relist.lock().unwrap().as_mut() {
                    insert(map, pod);
                }
            }
            Event::InitDone => {
                if let Some(map) = self.relist.lock().unwrap().take() {
                    *self.by_job.write().unwrap() = map;
                }
                self.ready.send_replace(true);
            }
        }
    }

    /// Waits until the first list is in: before it, no pods would look like
    /// every pod gone.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// The pods labelled with the job's name, whoever owns them, stripped,
    /// in order of name.
    pub fn pods(&self, namespace: &str, job: &str) -> Vec<Arc<Pod>> {
        let key = (namespace.to_string(), job.to_string());
        self.by_job
            .read()
            .unwrap()
            .get(&key)
            .map(|pods| pods.iter().map(|p| Arc::new(p.to_pod())).collect())
            .unwrap_or_default()
    }

    /// The jobs with a pod bound to one of `nodes`.
    pub fn jobs_on(&self, nodes: &[String]) -> Vec<JobKey> {
        if nodes.is_empty() {
            return Vec::new();
        }
        let on = |p: &LeanPod| p.node_name().is_some_and(|n| nodes.iter().any(|m| m == n));
        self.by_job
            .read()
            .unwrap()
            .iter()
            .filter(|(_, pods)| pods.iter().any(on))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Pods held, for the benchmarks' memory figures.
    pub fn len(&self) -> usize {
        self.by_job.read().unwrap().values().map(|p| p.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops what the operator never reads before a pod enters the cache (see
/// `LeanPod`): managedFields, annotations, labels but the job's, rank's
/// and attempt's, the pod spec but for its node, its scheduling gates and
/// its first container's name, and status but for the phase, reason,
/// message, the PodScheduled and disruption conditions and each
/// container's name and running or terminated state.
pub fn strip_pod(pod: &mut Pod) {
    *pod = LeanPod::from(std::mem::take(pod)).to_pod();
}

/// How long a write or a create may go unseen by the watches before the
/// cache is trusted again: a watch that missed it (a re-list that came
/// after the object was already gone) must not hold a job forever.
pub const UNSEEN_TTL: Duration = Duration::from_secs(60);

/// What this operator wrote and created that its watches may not show yet.
/// A reconcile woken by one pod event can run before the watch delivers
/// our own status write or pod creates; deciding on that stale view would
/// count a preemption twice, or take a pod just created for one that
/// vanished.
#[derive(Default)]
pub struct Unseen {
    /// Job uid -> the status we last wrote, until the job cache shows it.
    statuses: Mutex<HashMap<String, (TrainingJobStatus, Instant)>>,
    /// Job uid -> pods we created (as the API server returned them), until
    /// the pod cache shows them.
    created: Mutex<Created>,
}

impl Unseen {
    pub fn wrote_status(&self, uid: &str, status: TrainingJobStatus) {
        self.statuses
            .lock()
            .unwrap()
            .insert(uid.into(), (status, Instant::now()));
    }

    /// The status to decide on: ours while the cache lags behind it.
    pub fn status(
        &self,
        uid: &str,
        cached: Option<&TrainingJobStatus>,
    ) -> Option<TrainingJobStatus> {
        let mut map = self.statuses.lock().unwrap();
        match map.get(uid) {
            Some((ours, at)) if cached != Some(ours) && at.elapsed() < UNSEEN_TTL => {
                Some(ours.clone())
            }
            Some(_) => {
                map.remove(uid);
                cached.cloned()
            }
            None => cached.cloned(),
        }
    }

    pub fn created_pod(&self, uid: &str, pod: Pod) {
        let name = pod.name_any();
        self.created
            .lock()
            .unwrap()
            .entry(uid.into())
            .or_default()
            .insert(name, (LeanPod::from(pod), Instant::now()));
    }

    /// Pods we created that `seen` does not hold yet; the rest are forgotten.
    pub fn pods_not_seen(&self, uid: &str, seen: &[Arc<Pod>]) -> Vec<Arc<Pod>> {
        let mut map = self.created.lock().unwrap();
        let Some(pods) = map.get_mut(uid) else {
            return Vec::new();
        };
        pods.retain(|name, (_, at)| {
            at.elapsed() < UNSEEN_TTL && !seen.iter().any(|p| p.name_any() == *name)
        });
        let names = pods.values().map(|(p, _)| Arc::new(p.to_pod())).collect();
        if pods.is_empty() {
            map.remove(uid);
        }
        names
    }

    /// A deleted job leaves nothing behind.
    pub fn forget(&self, uid: &str) {
        self.statuses.lock().unwrap().remove(uid);
        self.created.lock().unwrap().remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, job: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {JOB_LABEL: job},
                         "managedFields": [{"manager": "x"}], "annotations": {"a": "b"}},
            "spec": {"nodeName": "n", "containers": [{"name": "trainer", "image": "i",
                     "env": [{"name": "BIG", "value": "x"}]}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_the_index_whole_and_only_when_done() {
        let idx = PodIndex::default();
        idx.apply(&Event::Init);
        idx.apply(&Event::InitApply(pod("a", "j")));
        idx.apply(&Event::InitDone);
        idx.apply(&Event::Apply(pod("b", "j")));
        assert_eq!(idx.pods("ns", "j").len(), 2);
        idx.apply(&Event::Init);
        idx.apply(&Event::InitApply(pod("b", "j")));
        // Mid re-list, the old view stands.
        assert_eq!(idx.pods("ns", "j").len(), 2);
        idx.apply(&Event::InitDone);
        let names: Vec<String> = idx.pods("ns", "j").iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["b"]);
        idx.apply(&Event::Delete(pod("b", "j")));
        assert!(idx.is_empty());
    }

    #[test]
    fn stripping_keeps_what_observation_reads() {
        let mut p = pod("a", "j");
        strip_pod(&mut p);
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n"));
        assert_eq!(spec.containers[0].name, "trainer");
        assert!(spec.containers[0].env.is_none() && p.metadata.managed_fields.is_none());
        assert_eq!(p.labels()[JOB_LABEL], "j");
    }

    #[test]
    fn our_status_stands_until_the_cache_shows_it() {
        let u = Unseen::default();
        let ours = TrainingJobStatus {
            attempt: 2,
            ..Default::default()
        };
        let stale = TrainingJobStatus {
            attempt: 1,
            ..Default::default()
        };
        u.wrote_status("uid", ours.clone());
        assert_eq!(u.status("uid", Some(&stale)), Some(ours.clone()));
        assert_eq!(u.status("uid", Some(&ours)), Some(ours.clone()));
        // Seen: the cache is the truth again from now on.
        assert_eq!(u.status("uid", Some(&stale)), Some(stale));
    }

    #[test]
    fn a_created_pod_counts_until_the_cache_holds_it() {
        let u = Unseen::default();
        u.created_pod("uid", pod("j-a1-r0", "j"));
        assert_eq!(u.pods_not_seen("uid", &[])[0].name_any(), "j-a1-r0");
        let seen = [Arc::new(pod("j-a1-r0", "j"))];
        assert!(u.pods_not_seen("uid", &seen).is_empty());
        assert!(u.pods_not_seen("uid", &[]).is_empty());
    }
}
