//! A training pod as the pod watch reads it off the wire: only the fields
//! the lean cache keeps are parsed, and the rest of the JSON is skipped
//! without being built. A pod on a busy node carries tens of KB of
//! `managedFields`; parsed into a full `Pod` first, every watch event and
//! every page of a re-list built and freed that whole tree (92.5 KB a pod
//! while a page is parsed, against 8.5 KB this way, in the memory bench).
//! That is transient: at 10000 jobs the operator's steady RSS did not fall
//! with it (docs/benchmarks.md), so what holds that is elsewhere.

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStatus, Pod, PodCondition, PodSchedulingGate, PodSpec,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::watcher::Event;
use kube::Resource;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A stripped pod, read straight from the API server's JSON.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "Wire")]
pub struct WirePod(pub Pod);

#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    metadata: Meta,
    spec: Option<Spec>,
    status: Option<Status>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    deletion_timestamp: Option<Time>,
    labels: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
    finalizers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    node_name: Option<String>,
    scheduling_gates: Option<Vec<PodSchedulingGate>>,
    #[serde(default)]
    containers: Vec<NamedContainer>,
}

#[derive(Deserialize)]
struct NamedContainer {
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    phase: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    conditions: Option<Vec<PodCondition>>,
    container_statuses: Option<Vec<StateOf>>,
}

/// A container's status: its name and state, nothing of its image.
#[derive(Deserialize)]
struct StateOf {
    name: String,
    state: Option<ContainerState>,
}

impl From<Wire> for WirePod {
    fn from(w: Wire) -> Self {
        let m = w.metadata;
        let metadata = ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            deletion_timestamp: m.deletion_timestamp,
            labels: m.labels,
            owner_references: m.owner_references,
            finalizers: m.finalizers,
            ..Default::default()
        };
        WirePod(Pod {
            metadata,
            spec: w.spec.map(Spec::into_spec),
            status: w.status.map(Status::into_status),
        })
    }
}

impl Spec {
    fn into_spec(self) -> PodSpec {
        let container = |c: NamedContainer| Container {
            name: c.name,
            ..Default::default()
        };
        PodSpec {
            node_name: self.node_name,
            scheduling_gates: self.scheduling_gates,
            // Only the first is read; the list is usually one long.
            containers: self.containers.into_iter().take(1).map(container).collect(),
            ..Default::default()
        }
    }
}

impl Status {
    fn into_status(self) -> PodStatus {
        let container = |c: StateOf| ContainerStatus {
            name: c.name,
            state: c.state,
            ..Default::default()
        };
        PodStatus {
            phase: self.phase,
            reason: self.reason,
            message: self.message,
            conditions: self.conditions,
            container_statuses: self
                .container_statuses
                .map(|s| s.into_iter().map(container).collect()),
            ..Default::default()
        }
    }
}

/// The watch's event with its pod unwrapped, for the caches, which hold
/// `Pod`s.
pub fn unwire(event: Event<WirePod>) -> Event<Pod> {
    match event {
        Event::Apply(p) => Event::Apply(p.0),
        Event::Delete(p) => Event::Delete(p.0),
        Event::Init => Event::Init,
        Event::InitApply(p) => Event::InitApply(p.0),
        Event::InitDone => Event::InitDone,
    }
}

/// The pods' API: a watch of `WirePod` reads /api/v1/pods.
impl Resource for WirePod {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::LeanPod;
    use serde_json::json;

    /// A pod as a kubelet leaves it: managed fields, a full spec, a full
    /// status.
    fn full_pod() -> serde_json::Value {
        let managed = json!({"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {".": {}}}}});
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "j-a1-r0", "namespace": "ns", "uid": "u1", "resourceVersion": "42",
                "generateName": "j-", "creationTimestamp": "2026-12-02T10:00:00Z",
                "deletionTimestamp": "2026-12-02T11:00:00Z", "deletionGracePeriodSeconds": 30,
                "labels": {"trainingjob.dev/job": "j", "trainingjob.dev/rank": "0",
                    "trainingjob.dev/attempt": "1", "other": "x"},
                "annotations": {"a": "b"},
                "ownerReferences": [{"apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
                    "name": "j", "uid": "ju", "controller": true}],
                "finalizers": ["trainingjob.dev/final-report"],
                "managedFields": [managed.clone(), managed],
            },
            "spec": {
                "nodeName": "n1", "schedulingGates": [{"name": "g"}],
                "containers": [{"name": "trainer", "image": "i", "env": [{"name": "A", "value": "1"}]},
                    {"name": "side", "image": "s"}],
                "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
            },
            "status": {
                "phase": "Running", "reason": "R", "message": "M", "hostIP": "10.0.0.1",
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                        "lastTransitionTime": "2026-12-02T11:00:00Z"},
                    {"type": "Ready", "status": "True", "lastProbeTime": null},
                ],
                "containerStatuses": [{"name": "trainer", "image": "i", "imageID": "x", "ready": true,
                    "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                    "containerID": "containerd://abc"}}}],
            },
        })
    }

    #[test]
    fn a_pod_read_off_the_wire_is_cached_as_the_full_pod_would_be() {
        let full: Pod = serde_json::from_value(full_pod()).unwrap();
        let wire: WirePod = serde_json::from_value(full_pod()).unwrap();
        assert_eq!(LeanPod::from(wire.0), LeanPod::from(full));
    }

    #[test]
    fn a_pod_with_nothing_but_a_name_still_reads() {
        let wire: WirePod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(wire.0.metadata.name.as_deref(), Some("p"));
        assert!(wire.0.spec.is_none() && wire.0.status.is_none());
    }

    #[test]
    fn managed_fields_are_not_kept() {
        let wire: WirePod = serde_json::from_value(full_pod()).unwrap();
        assert!(wire.0.metadata.managed_fields.is_none());
        assert!(wire.0.metadata.annotations.is_none());
    }
}
