//! A watcher over every pod the operator creates during the end-to-end
//! tests, checking the invariant preemption handling rests on: no two pods of
//! one rank of one job are ever alive at once (they would write the same
//! checkpoint directory).
//!
//! It reads one `kubectl get pods --watch` stream. The API server delivers a
//! watch in resourceVersion order, so the order of events is the order of
//! the changes: a new pod's ADDED must come after the old pod's last event
//! that made it terminal or deleted it.

use crate::util::Paths;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Child, Stdio};

const SELECTOR: &str = "app.kubernetes.io/managed-by=trainingjob-operator";

pub struct Watcher {
    child: Child,
    file: std::path::PathBuf,
    /// The trainers' processes, which can outlive their pod objects.
    trainers: crate::trainers::Sampler,
}

impl Watcher {
    pub fn start(paths: &Paths) -> Result<Self> {
        let file = paths.logs().join("pod-lifetimes.json");
        std::fs::create_dir_all(paths.logs())?;
        std::fs::File::create(&file)?;
        Ok(Self {
            child: watch(paths, &file)?,
            file,
            trainers: crate::trainers::Sampler::start(),
        })
    }

    /// Watches again if the watch ended (the API server restarted). Events
    /// missed meanwhile are lost, so the record says where: the check
    /// forgets what it knew and relies on the new watch's listing.
    pub fn keep_watching(&mut self, paths: &Paths) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let marked = std::fs::File::options()
            .append(true)
            .open(&self.file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, RESYNC.as_bytes()));
        match marked
            .map_err(anyhow::Error::from)
            .and_then(|()| watch(paths, &self.file))
        {
            Ok(child) => self.child = child,
            Err(e) => eprintln!("the pod lifetime watch could not start again: {e:#}"),
        }
    }

    /// Stops watching and checks the whole record.
    pub fn finish(mut self) -> Result<Summary> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        std::fs::File::open(&self.file)?.read_to_string(&mut text)?;
        let events: Vec<Value> = serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .filter_map(|v| v.ok())
            .collect();
        let mut summary = check(&events);
        let trainers = self.trainers.finish();
        if !trainers.overlaps.is_empty() {
            bail!(
                "trainer processes of one rank were alive at once:\n{}",
                trainers.overlaps.join("\n")
            );
        }
        summary.trainer_processes = trainers.processes.len();
        summary.trainer_ranks = trainers.ranks.len();
        summary.samples = trainers.samples;
        if !summary.overlaps.is_empty() {
            bail!(
                "pods of one rank were alive at once:\n{}\n(the watch record is {})",
                summary.overlaps.join("\n"),
                self.file.display()
            );
        }
        Ok(summary)
    }
}

/// Written between two watches: what follows is a fresh listing.
const RESYNC: &str = "{\"type\": \"RESYNC\"}\n";

fn watch(paths: &Paths, file: &std::path::Path) -> Result<Child> {
    let out = std::fs::File::options().append(true).open(file)?;
    crate::controlplane::kubectl(paths)?
        .args([
            "get",
            "pods",
            "--all-namespaces",
            "-l",
            SELECTOR,
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .context("starting the pod lifetime watcher")
}

#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub events: usize,
    pub pods: usize,
    pub ranks: usize,
    pub overlaps: Vec<String>,
    /// Trainer processes, the ranks (lock files) they held, and how many
    /// times the machine's processes were sampled.
    pub trainer_processes: usize,
    pub trainer_ranks: usize,
    pub samples: usize,
}

/// Replays watch events (`{"type": ..., "object": Pod}`) in order.
pub fn check(events: &[Value]) -> Summary {
    let mut live: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    let mut pods = BTreeSet::new();
    let mut summary = Summary {
        events: events.len(),
        ..Default::default()
    };
    for ev in events {
        let kind = ev["type"].as_str().unwrap_or_default();
        if kind == "RESYNC" {
            live.values_mut().for_each(BTreeSet::clear);
            continue;
        }
        let pod = &ev["object"];
        let meta = &pod["metadata"];
        let (Some(ns), Some(name)) = (meta["namespace"].as_str(), meta["name"].as_str()) else {
            continue;
        };
        let labels = &meta["labels"];
        let key = (
            ns.to_string(),
            labels["trainingjob.dev/job"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            labels["trainingjob.dev/rank"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        pods.insert((ns.to_string(), name.to_string()));
        let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
        let alive = kind != "DELETED" && !matches!(phase, "Succeeded" | "Failed");
        let set = live.entry(key.clone()).or_default();
        if alive {
            set.insert(name.to_string());
            if set.len() > 1 {
                summary.overlaps.push(format!(
                    "{}/{} rank {}: {} alive together",
                    key.0,
                    key.1,
                    key.2,
                    set.iter().cloned().collect::<Vec<_>>().join(" and ")
                ));
            }
        } else {
            set.remove(name);
        }
    }
    summary.pods = pods.len();
    summary.ranks = live.len();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: &str, name: &str, rank: &str, phase: &str) -> Value {
        json!({"type": kind, "object": {"metadata": {"namespace": "n", "name": name,
            "labels": {"trainingjob.dev/job": "j", "trainingjob.dev/rank": rank}},
            "status": {"phase": phase}}})
    }

    #[test]
    fn a_new_pod_after_the_old_one_is_gone_is_fine() {
        let s = check(&[
            ev("ADDED", "j-a1-r0", "0", "Running"),
            ev("MODIFIED", "j-a1-r0", "0", "Running"),
            ev("DELETED", "j-a1-r0", "0", "Running"),
            ev("ADDED", "j-a2-r0", "0", "Pending"),
            ev("ADDED", "j-a2-r1", "1", "Pending"),
        ]);
        assert!(s.overlaps.is_empty());
        assert_eq!((s.pods, s.ranks), (3, 2));
    }

    #[test]
    fn a_terminal_old_pod_does_not_count_as_alive() {
        let s = check(&[
            ev("ADDED", "a1", "0", "Running"),
            ev("MODIFIED", "a1", "0", "Failed"),
            ev("ADDED", "a2", "0", "Pending"),
        ]);
        assert!(s.overlaps.is_empty());
    }

    #[test]
    fn a_pod_deleted_between_two_watches_is_forgotten_at_the_resync() {
        let s = check(&[
            ev("ADDED", "a1", "0", "Running"),
            json!({"type": "RESYNC"}),
            ev("ADDED", "a2", "0", "Pending"),
        ]);
        assert!(s.overlaps.is_empty(), "{:?}", s.overlaps);
    }

    #[test]
    fn a_new_pod_while_the_old_one_terminates_is_an_overlap() {
        let s = check(&[
            ev("ADDED", "a1", "0", "Running"),
            ev("ADDED", "a2", "0", "Pending"),
            ev("DELETED", "a1", "0", "Running"),
        ]);
        assert_eq!(s.overlaps.len(), 1);
        assert!(s.overlaps[0].contains("a1 and a2"), "{:?}", s.overlaps);
    }
}
