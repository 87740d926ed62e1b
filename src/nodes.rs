//! What the operator knows of the nodes its pods run on: whether each one
//! answers, and whether a cloud has said it is about to take it away. Kept
//! from one watch of the nodes, stripped to their taints and Ready
//! condition, so a reconcile reads it from memory.

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeSpec, NodeStatus};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher::Event;
use kube::ResourceExt;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

/// Taints a cloud or an autoscaler puts on a node shortly before it goes.
/// Seeing one on any rank's node stops the whole gang at once, so every
/// rank gets the same deadline and saves at the same step, instead of one
/// rank being taken now and the others at the end of the notice.
pub const NOTICE_TAINTS: &[(&str, &str)] = &[
    // GKE, on a spot or preemptible VM's termination notice.
    ("cloud.google.com/impending-node-termination", "GKE"),
    // Karpenter v1 while it disrupts the node (spot interruption,
    // consolidation, expiry); v0.3x used the older key.
    ("karpenter.sh/disrupted", "Karpenter"),
    ("karpenter.sh/disruption", "Karpenter"),
    // aws-node-termination-handler on a spot interruption notice, and on
    // an ASG termination lifecycle hook.
    (
        "aws-node-termination-handler/spot-itn",
        "aws-node-termination-handler",
    ),
    (
        "aws-node-termination-handler/asg-lifecycle-termination",
        "aws-node-termination-handler",
    ),
    // The cluster autoscaler, just before it deletes the node.
    ("ToBeDeletedByClusterAutoscaler", "cluster-autoscaler"),
];

/// Kubernetes' taint for a node an administrator says is shut down: PodGC
/// then force-deletes its pods, and the volumes detach.
pub const OUT_OF_SERVICE_TAINT: &str = "node.kubernetes.io/out-of-service";

/// One node, as far as the operator cares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFacts {
    /// Ready is True. A node whose kubelet stopped answering shows Unknown.
    pub ready: bool,
    /// When Ready last changed, and why, as the node lifecycle controller
    /// wrote it.
    pub since: Option<Timestamp>,
    pub reason: Option<String>,
    /// The notice taint on it, if any: (key, who sets it).
    pub notice: Option<(String, &'static str)>,
    pub out_of_service: bool,
}

impl NodeFacts {
    pub fn of(node: &Node) -> Self {
        let taints = node.spec.as_ref().and_then(|s| s.taints.as_ref());
        let taint_keys = || taints.into_iter().flatten().map(|t| t.key.as_str());
        let notice = taint_keys().find_map(|k| {
            NOTICE_TAINTS
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(key, who)| (key.to_string(), *who))
        });
        let ready = ready_condition(node);
        Self {
            ready: ready.is_some_and(|c| c.status == "True"),
            since: ready
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            reason: ready.and_then(|c| c.reason.clone()),
            notice,
            out_of_service: taint_keys().any(|k| k == OUT_OF_SERVICE_TAINT),
        }
    }
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Drops everything but the taints and the Ready condition before a node
/// enters the cache: images, addresses and capacity are most of a node.
pub fn strip_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
    node.metadata.labels = None;
    let taints = node.spec.take().and_then(|s| s.taints);
    node.spec = Some(NodeSpec {
        taints,
        ..Default::default()
    });
    let ready = ready_condition(node).cloned();
    node.status = Some(NodeStatus {
        conditions: ready.map(|c| vec![c]),
        ..Default::default()
    });
}

/// The nodes by name, rebuilt whole on every re-list.
#[derive(Default)]
pub struct NodeIndex {
    nodes: RwLock<HashMap<String, NodeFacts>>,
    relist: Mutex<Option<HashMap<String, NodeFacts>>>,
}

impl NodeIndex {
    /// Folds one watch event in; returns the nodes whose facts changed, so
    /// that only their jobs are woken.
    pub fn apply(&self, event: &Event<Node>) -> Vec<String> {
        match event {
            Event::Apply(node) => self.set(node.name_any(), Some(NodeFacts::of(node))),
            Event::Delete(node) => self.set(node.name_any(), None),
            Event::Init => {
                *self.relist.lock().unwrap() = Some(HashMap::new());
                Vec::new()
            }
            Event::InitApply(node) => {
                if let Some(map) = self.relist.lock().unwrap().as_mut() {
                    map.insert(node.name_any(), NodeFacts::of(node));
                }
                Vec::new()
            }
            Event::InitDone => {
                let Some(new) = self.relist.lock().unwrap().take() else {
                    return Vec::new();
                };
                let mut map = self.nodes.write().unwrap();
                let changed = changed_between(&map, &new);
                *map = new;
                changed
            }
        }
    }

    fn set(&self, name: String, facts: Option<NodeFacts>) -> Vec<String> {
        let mut map = self.nodes.write().unwrap();
        let changed = match facts {
            Some(f) => map.insert(name.clone(), f.clone()).as_ref() != Some(&f),
            None => map.remove(&name).is_some(),
        };
        if changed {
            vec![name]
        } else {
            Vec::new()
        }
    }

    /// What is known of a node. None: not seen (not listed yet, deleted,
    /// or the operator may not watch nodes).
    pub fn get(&self, name: &str) -> Option<NodeFacts> {
        self.nodes.read().unwrap().get(name).cloned()
    }
}

fn changed_between(
    old: &HashMap<String, NodeFacts>,
    new: &HashMap<String, NodeFacts>,
) -> Vec<String> {
    let gone = old.keys().filter(|k| !new.contains_key(*k));
    let differ = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(v))
        .map(|(k, _)| k);
    gone.chain(differ).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ready: &str, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"a": "b"}},
            "spec": {"taints": taints, "podCIDR": "10.0.0.0/24"},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False"},
                {"type": "Ready", "status": ready, "reason": "NodeStatusUnknown",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "capacity": {"cpu": "8"}}
        }))
        .unwrap()
    }

    #[test]
    fn notice_taints_and_readiness_are_read() {
        let n = node(
            "n",
            "Unknown",
            json!([{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"},
                   {"key": OUT_OF_SERVICE_TAINT, "value": "nodeshutdown", "effect": "NoExecute"}]),
        );
        let f = NodeFacts::of(&n);
        assert!(!f.ready && f.out_of_service);
        assert_eq!(
            f.notice,
            Some(("karpenter.sh/disrupted".into(), "Karpenter"))
        );
        assert_eq!(f.reason.as_deref(), Some("NodeStatusUnknown"));
        let plain = NodeFacts::of(&node(
            "n",
            "True",
            json!([{"key": "x", "effect": "NoSchedule"}]),
        ));
        assert!(plain.ready && plain.notice.is_none() && !plain.out_of_service);
    }

    #[test]
    fn stripping_keeps_what_the_facts_read() {
        let mut n = node(
            "n",
            "True",
            json!([{"key": NOTICE_TAINTS[0].0, "effect": "NoSchedule"}]),
        );
        let before = NodeFacts::of(&n);
        strip_node(&mut n);
        assert_eq!(NodeFacts::of(&n), before);
        assert!(n.status.as_ref().unwrap().capacity.is_none());
        assert_eq!(
            n.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        assert!(n.metadata.labels.is_none());
    }

    #[test]
    fn only_changes_wake_anyone() {
        let idx = NodeIndex::default();
        let a = node("a", "True", json!([]));
        assert_eq!(idx.apply(&Event::Apply(a.clone())), ["a"]);
        assert!(idx.apply(&Event::Apply(a.clone())).is_empty());
        let tainted = node(
            "a",
            "True",
            json!([{"key": NOTICE_TAINTS[0].0, "effect": "NoSchedule"}]),
        );
        assert_eq!(idx.apply(&Event::Apply(tainted)), ["a"]);
        idx.apply(&Event::Init);
        idx.apply(&Event::InitApply(node("b", "True", json!([]))));
        let mut changed = idx.apply(&Event::InitDone);
        changed.sort();
        assert_eq!(changed, ["a", "b"]);
        assert!(idx.get("a").is_none() && idx.get("b").is_some_and(|f| f.ready));
        assert_eq!(
            idx.apply(&Event::Delete(node("b", "True", json!([])))),
            ["b"]
        );
    }
}
