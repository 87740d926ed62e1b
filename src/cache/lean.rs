//! A training pod as the pod cache keeps it: only the fields the operator
//! reads, in boxed strings and slices. A full `Pod` is over 2 KiB before a
//! single field is set (its spec alone, and each container, are that large
//! inline), and the cache holds thousands; this holds a few hundred bytes,
//! and gives back the stripped `Pod` whenever a reconcile asks.

use crate::labels::{ATTEMPT_LABEL, JOB_LABEL, RANK_LABEL};
use crate::observe::DISRUPTION_CONDITIONS;
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodCondition,
    PodSchedulingGate, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

/// The labels read from a cached pod: its job, rank and attempt.
const KEPT_LABELS: [&str; 3] = [JOB_LABEL, RANK_LABEL, ATTEMPT_LABEL];

type Text = Box<str>;

/// What the operator reads of a pod (observe, finalizers, the index, the
/// controller's owner mapping), and nothing else.
#[derive(Clone, Debug, PartialEq)]
pub struct LeanPod {
    name: Option<Text>,
    namespace: Option<Text>,
    uid: Option<Text>,
    resource_version: Option<Text>,
    deletion_timestamp: Option<Time>,
    labels: Box<[(Text, Text)]>,
    owners: Box<[OwnerReference]>,
    finalizers: Box<[Text]>,
    spec: Option<LeanSpec>,
    status: Option<Box<LeanStatus>>,
}

#[derive(Clone, Debug, PartialEq)]
struct LeanSpec {
    node_name: Option<Text>,
    scheduling_gates: Option<Box<[Text]>>,
    /// The first container's name: the trainer's, when the job's template
    /// cannot tell which one it is.
    first_container: Option<Text>,
}

#[derive(Clone, Debug, PartialEq)]
struct LeanStatus {
    phase: Option<Text>,
    reason: Option<Text>,
    message: Option<Text>,
    /// PodScheduled and the disruption conditions, without probe times.
    conditions: Box<[PodCondition]>,
    /// Each container's name and state (running or terminated).
    containers: Box<[(Text, Option<ContainerState>)]>,
}

fn text(s: String) -> Text {
    s.into_boxed_str()
}

fn texts(v: Option<Vec<String>>) -> Box<[Text]> {
    v.into_iter().flatten().map(text).collect()
}

fn string(t: &Option<Text>) -> Option<String> {
    t.as_deref().map(String::from)
}

/// None for an empty list, as the API server leaves it out.
fn list<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

impl LeanPod {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    pub fn node_name(&self) -> Option<&str> {
        self.spec.as_ref()?.node_name.as_deref()
    }

    /// The stripped pod: everything the operator reads, as the API server
    /// sent it.
    pub fn to_pod(&self) -> Pod {
        let labels = self.labels.iter();
        let metadata = ObjectMeta {
            name: string(&self.name),
            namespace: string(&self.namespace),
            uid: string(&self.uid),
            resource_version: string(&self.resource_version),
            deletion_timestamp: self.deletion_timestamp.clone(),
            labels: (!self.labels.is_empty()).then(|| {
                labels
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            owner_references: list(self.owners.to_vec()),
            finalizers: list(self.finalizers.iter().map(|f| f.to_string()).collect()),
            ..Default::default()
        };
        Pod {
            metadata,
            spec: self.spec.as_ref().map(LeanSpec::to_spec),
            status: self.status.as_deref().map(LeanStatus::to_status),
        }
    }
}

impl From<Pod> for LeanPod {
    fn from(pod: Pod) -> Self {
        let m = pod.metadata;
        let labels = m.labels.unwrap_or_default().into_iter();
        Self {
            name: m.name.map(text),
            namespace: m.namespace.map(text),
            uid: m.uid.map(text),
            resource_version: m.resource_version.map(text),
            deletion_timestamp: m.deletion_timestamp,
            labels: labels
                .filter(|(k, _)| KEPT_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (text(k), text(v)))
                .collect(),
            owners: m.owner_references.unwrap_or_default().into(),
            finalizers: texts(m.finalizers),
            spec: pod.spec.map(LeanSpec::from),
            status: pod.status.map(|s| Box::new(LeanStatus::from(s))),
        }
    }
}

impl From<PodSpec> for LeanSpec {
    fn from(spec: PodSpec) -> Self {
        let gates = spec.scheduling_gates.map(|g| g.into_iter().map(|g| g.name));
        Self {
            node_name: spec.node_name.map(text),
            scheduling_gates: gates.map(|g| g.map(text).collect()),
            first_container: spec.containers.into_iter().next().map(|c| text(c.name)),
        }
    }
}

impl LeanSpec {
    fn to_spec(&self) -> PodSpec {
        let gate = |name: &Text| PodSchedulingGate {
            name: name.to_string(),
        };
        PodSpec {
            node_name: string(&self.node_name),
            scheduling_gates: self
                .scheduling_gates
                .as_ref()
                .map(|g| g.iter().map(gate).collect()),
            containers: self
                .first_container
                .iter()
                .map(|name| Container {
                    name: name.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

impl From<PodStatus> for LeanStatus {
    fn from(s: PodStatus) -> Self {
        let kept = |c: &PodCondition| {
            c.type_ == "PodScheduled" || DISRUPTION_CONDITIONS.contains(&c.type_.as_str())
        };
        let state = |s: ContainerState| ContainerState {
            running: s.running,
            terminated: s.terminated.map(|t| ContainerStateTerminated {
                container_id: None,
                ..t
            }),
            waiting: None,
        };
        Self {
            phase: s.phase.map(text),
            reason: s.reason.map(text),
            message: s.message.map(text),
            conditions: s
                .conditions
                .into_iter()
                .flatten()
                .filter(kept)
                .map(|c| PodCondition {
                    last_probe_time: None,
                    observed_generation: None,
                    ..c
                })
                .collect(),
            containers: s
                .container_statuses
                .into_iter()
                .flatten()
                .map(|c| (text(c.name), c.state.map(state)))
                .collect(),
        }
    }
}

impl LeanStatus {
    fn to_status(&self) -> PodStatus {
        let container = |(name, state): &(Text, Option<ContainerState>)| ContainerStatus {
            name: name.to_string(),
            state: state.clone(),
            ..Default::default()
        };
        PodStatus {
            phase: string(&self.phase),
            reason: string(&self.reason),
            message: string(&self.message),
            conditions: list(self.conditions.to_vec()),
            container_statuses: list(self.containers.iter().map(container).collect()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TrainingJob;
    use crate::finalizers::releasable;
    use crate::observe::view;
    use kube::ResourceExt;
    use serde_json::{json, Value};

    fn job(containers: Value) -> TrainingJob {
        serde_json::from_value(json!({
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
            "spec": {"checkpoint": {"claimName": "c"}, "template": {"spec": {"containers": containers}}}
        }))
        .unwrap()
    }

    /// A pod as a kubelet and the API server leave it, with everything the
    /// cache drops beside everything it keeps.
    fn pod(state: Value, deleting: bool) -> Pod {
        let condition = |t: &str, reason: &str| {
            json!({"type": t, "status": "True", "reason": reason,
            "message": "m", "lastProbeTime": "2026-01-01T00:00:01Z",
            "lastTransitionTime": "2026-01-01T00:00:02Z", "observedGeneration": 1})
        };
        let mut meta = json!({"name": "j-a1-r0", "namespace": "ns", "uid": "p", "resourceVersion": "7",
            "labels": {JOB_LABEL: "j", RANK_LABEL: "0", ATTEMPT_LABEL: "1", "team": "x"},
            "annotations": {"a": "b"}, "finalizers": ["trainingjob.dev/report", "other"],
            "ownerReferences": [{"apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
                                 "name": "j", "uid": "u", "controller": true}],
            "managedFields": [{"manager": "x"}]});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:03Z");
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": "n", "schedulingGates": [{"name": "kueue.x-k8s.io/admission"}],
                     "containers": [{"name": "side", "image": "i"}, {"name": "trainer", "image": "i",
                                     "env": [{"name": "BIG", "value": "x"}]}]},
            "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory",
                "hostIP": "1.2.3.4", "qosClass": "Burstable",
                "conditions": [condition("Ready", "r"), condition("PodScheduled", "s"),
                               condition("DisruptionTarget", "EvictionByEvictionAPI")],
                "initContainerStatuses": [{"name": "tj-launcher", "image": "i", "imageID": "",
                    "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}],
                "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "sha", "ready": false,
                    "restartCount": 0, "containerID": "containerd://1", "state": state,
                    "lastState": {"terminated": {"exitCode": 1}}}]}
        }))
        .unwrap()
    }

    fn states() -> Vec<Value> {
        vec![
            json!({"running": {"startedAt": "2026-01-01T00:00:04Z"}}),
            json!({"terminated": {"exitCode": 143, "reason": "Error", "containerID": "containerd://1",
                "message": "{\"version\": 1, \"state\": \"signalled\", \"exitCode\": 143}",
                "startedAt": "2026-01-01T00:00:04Z", "finishedAt": "2026-01-01T00:00:09Z"}}),
            json!({"waiting": {"reason": "ContainerCreating"}}),
        ]
    }

    #[test]
    fn a_lean_pod_gives_back_all_the_operator_reads() {
        let trainer = json!([{"name": "trainer", "image": "i", "command": ["t"]}]);
        for j in [job(trainer), job(json!([]))] {
            for (state, deleting) in states()
                .into_iter()
                .flat_map(|s| [(s.clone(), false), (s, true)])
            {
                let full = pod(state, deleting);
                let lean = LeanPod::from(full.clone()).to_pod();
                assert_eq!(view(&j, &lean), view(&j, &full));
                assert_eq!(releasable(&lean), releasable(&full));
                assert_eq!(lean.owner_references(), full.owner_references());
                assert_eq!(lean.finalizers(), full.finalizers());
                assert_eq!(lean.resource_version(), full.resource_version());
                assert_eq!(lean.uid(), full.uid());
                assert_eq!(
                    lean.metadata.deletion_timestamp,
                    full.metadata.deletion_timestamp
                );
                assert_eq!(lean.labels()[JOB_LABEL], "j");
                assert!(!lean.labels().contains_key("team"));
                assert!(lean.metadata.managed_fields.is_none() && lean.annotations().is_empty());
                // Stripping twice changes nothing.
                assert_eq!(LeanPod::from(lean.clone()).to_pod(), lean);
            }
        }
    }
}
