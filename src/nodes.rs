//! What the operator knows of the nodes its pods run on: whether each one
//! answers, whether a cloud has said it is about to take it away, and
//! whether its whole zone has stopped answering at once. Kept from one
//! watch of the nodes, stripped to their taints, zone and Ready condition,
//! so a reconcile reads it from memory.

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

/// The labels a node's zone is read from, as the node lifecycle controller
/// reads them.
const ZONE_LABELS: [&str; 2] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

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
    /// Its region and zone labels ("" for a node without them).
    pub zone: String,
    /// Its zone is disrupted (see [`disrupted`]). Filled in by
    /// [`NodeIndex::get`], never stored.
    pub zone_disrupted: bool,
    /// When its zone last came out of a disruption. Filled in by
    /// [`NodeIndex::get`], never stored.
    pub zone_calm_since: Option<Timestamp>,
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
            zone: zone_of(node),
            ..Default::default()
        }
    }

    /// Where the count toward `nodeUnreachableSeconds` starts: when Ready
    /// last changed, or when the zone last came out of a disruption if
    /// that is later. The node lifecycle controller restarts its clocks
    /// then too, so that nodes still reconnecting after an outage of the
    /// control plane are not all evicted the moment the first one is back.
    pub fn unready_since(&self, now: Timestamp) -> Timestamp {
        let since = self.since.unwrap_or(now);
        self.zone_calm_since.map_or(since, |calm| calm.max(since))
    }
}

fn zone_of(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).map_or("", String::as_str);
    match (get(ZONE_LABELS[0]), get(ZONE_LABELS[1])) {
        ("", "") => String::new(),
        (region, zone) => format!("{region}/{zone}"),
    }
}

/// The node lifecycle controller's judgement of a zone (its
/// ComputeZoneState): fully disrupted when no node in it is Ready, and
/// partially when more than two are not and they make up at least 55% (its
/// default `--unhealthy-zone-threshold`). It then suspects its own view of
/// the nodes rather than the nodes, and evicts nothing, or slowly; the
/// operator takes no rank for lost either.
pub fn disrupted(ready: usize, not_ready: usize) -> bool {
    let total = ready + not_ready;
    (ready == 0 && not_ready > 0) || (not_ready > 2 && not_ready * 100 >= total * 55)
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
    if let Some(labels) = node.metadata.labels.as_mut() {
        labels.retain(|k, _| ZONE_LABELS.contains(&k.as_str()));
    }
    node.metadata.labels.take_if(|l| l.is_empty());
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

/// The nodes by name, rebuilt whole on every re-list, and how each zone
/// stands.
#[derive(Default)]
pub struct NodeIndex {
    known: RwLock<Known>,
    relist: Mutex<Option<HashMap<String, NodeFacts>>>,
}

#[derive(Default)]
struct Known {
    nodes: HashMap<String, NodeFacts>,
    zones: HashMap<String, Zone>,
}

/// One zone's nodes, counted as the node lifecycle controller counts them.
#[derive(Clone, Debug, Default)]
struct Zone {
    ready: usize,
    not_ready: usize,
    disrupted: bool,
    calm_since: Option<Timestamp>,
}

impl NodeIndex {
    /// Folds one watch event in; returns the nodes whose facts changed, so
    /// that only their jobs are woken.
    pub fn apply(&self, event: &Event<Node>) -> Vec<String> {
        self.apply_at(event, Timestamp::now())
    }

    /// [`Self::apply`] at a given time: when a zone comes out of a
    /// disruption is when its nodes' clocks restart.
    pub fn apply_at(&self, event: &Event<Node>, now: Timestamp) -> Vec<String> {
        match event {
            Event::Apply(node) => self.set(node.name_any(), Some(NodeFacts::of(node)), now),
            Event::Delete(node) => self.set(node.name_any(), None, now),
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
                self.replace(new, now)
            }
        }
    }

    fn set(&self, name: String, facts: Option<NodeFacts>, now: Timestamp) -> Vec<String> {
        let mut known = self.known.write().unwrap();
        let old = match &facts {
            Some(f) => known.nodes.insert(name.clone(), f.clone()),
            None => known.nodes.remove(&name),
        };
        if old == facts {
            return Vec::new();
        }
        let zones: Vec<String> = old.iter().chain(&facts).map(|f| f.zone.clone()).collect();
        for (f, delta) in [(old.as_ref(), -1), (facts.as_ref(), 1)] {
            if let Some(f) = f {
                known.count(f, delta);
            }
        }
        let changed = vec![name];
        known.settle_all(zones, now, changed)
    }

    fn replace(&self, new: HashMap<String, NodeFacts>, now: Timestamp) -> Vec<String> {
        let mut known = self.known.write().unwrap();
        let changed = changed_between(&known.nodes, &new);
        known.nodes = new;
        for zone in known.zones.values_mut() {
            (zone.ready, zone.not_ready) = (0, 0);
        }
        let facts: Vec<NodeFacts> = known.nodes.values().cloned().collect();
        for f in &facts {
            known.count(f, 1);
        }
        let zones: Vec<String> = known.zones.keys().cloned().collect();
        known.settle_all(zones, now, changed)
    }

    /// What is known of a node and its zone. None: not seen (not listed
    /// yet, deleted, or the operator may not watch nodes).
    pub fn get(&self, name: &str) -> Option<NodeFacts> {
        let known = self.known.read().unwrap();
        let mut facts = known.nodes.get(name).cloned()?;
        if let Some(zone) = known.zones.get(&facts.zone) {
            facts.zone_disrupted = zone.disrupted;
            facts.zone_calm_since = zone.calm_since;
        }
        Some(facts)
    }
}

impl Known {
    fn count(&mut self, facts: &NodeFacts, delta: isize) {
        let zone = self.zones.entry(facts.zone.clone()).or_default();
        let n = if facts.ready {
            &mut zone.ready
        } else {
            &mut zone.not_ready
        };
        *n = n.saturating_add_signed(delta);
    }

    /// Judges `zones` again and adds their woken nodes to `changed`.
    fn settle_all(
        &mut self,
        zones: Vec<String>,
        now: Timestamp,
        mut changed: Vec<String>,
    ) -> Vec<String> {
        for zone in zones {
            changed.extend(self.settle(&zone, now));
        }
        changed.sort();
        changed.dedup();
        changed
    }

    /// Judges a zone again after its counts moved. When that changes
    /// whether it is disrupted, every node in it is returned as changed:
    /// their jobs must look again.
    fn settle(&mut self, key: &str, now: Timestamp) -> Vec<String> {
        let Some(zone) = self.zones.get_mut(key) else {
            return Vec::new();
        };
        if zone.ready + zone.not_ready == 0 {
            self.zones.remove(key);
            return Vec::new();
        }
        let disrupted = disrupted(zone.ready, zone.not_ready);
        if disrupted == zone.disrupted {
            return Vec::new();
        }
        zone.disrupted = disrupted;
        if !disrupted {
            zone.calm_since = Some(now);
        }
        self.nodes
            .iter()
            .filter(|(_, f)| f.zone == key)
            .map(|(name, _)| name.clone())
            .collect()
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

    fn in_zone(name: &str, ready: &str, zone: &str) -> Node {
        let mut n = node(name, ready, json!([]));
        n.metadata.labels = Some(
            [(ZONE_LABELS[1].to_string(), zone.to_string())]
                .into_iter()
                .collect(),
        );
        n
    }

    #[test]
    fn a_zone_is_disrupted_as_the_node_lifecycle_controller_judges_it() {
        assert!(disrupted(0, 1), "no node Ready");
        assert!(!disrupted(1, 1) && !disrupted(1, 2), "two or fewer down");
        assert!(disrupted(2, 3), "three down, 60%");
        assert!(!disrupted(3, 3), "50%");
        assert!(!disrupted(0, 0) && !disrupted(4, 0));
    }

    #[test]
    fn a_zone_going_dark_or_coming_back_wakes_every_node_in_it() {
        let idx = NodeIndex::default();
        // After the Ready transition the nodes carry (2026-01-01).
        let t = |s: i64| Timestamp::from_second(1_767_225_600 + s).unwrap();
        for n in [
            in_zone("a", "True", "z"),
            in_zone("b", "True", "z"),
            in_zone("c", "True", "y"),
        ] {
            idx.apply_at(&Event::Apply(n), t(0));
        }
        assert_eq!(
            idx.apply_at(&Event::Apply(in_zone("a", "Unknown", "z")), t(1)),
            ["a"]
        );
        assert!(!idx.get("a").unwrap().zone_disrupted);
        assert_eq!(
            idx.apply_at(&Event::Apply(in_zone("b", "Unknown", "z")), t(2)),
            ["a", "b"]
        );
        let a = idx.get("a").unwrap();
        assert!(a.zone_disrupted && a.zone.ends_with("/z"), "{a:?}");
        assert!(!idx.get("c").unwrap().zone_disrupted, "another zone");
        assert_eq!(
            idx.apply_at(&Event::Apply(in_zone("b", "True", "z")), t(3)),
            ["a", "b"]
        );
        let a = idx.get("a").unwrap();
        assert!(!a.zone_disrupted);
        assert_eq!(a.zone_calm_since, Some(t(3)));
        assert_eq!(
            a.unready_since(t(5)),
            t(3),
            "the clock restarts with the zone"
        );
        idx.apply_at(&Event::Init, t(4));
        idx.apply_at(&Event::InitApply(in_zone("a", "Unknown", "z")), t(4));
        assert_eq!(idx.apply_at(&Event::InitDone, t(4)), ["a", "b", "c"]);
        assert!(
            idx.get("a").unwrap().zone_disrupted,
            "a re-list judges the zone again"
        );
    }

    #[test]
    fn stripping_keeps_the_zone() {
        let mut n = in_zone("a", "True", "z");
        strip_node(&mut n);
        assert_eq!(NodeFacts::of(&n).zone, "/z");
    }
}
