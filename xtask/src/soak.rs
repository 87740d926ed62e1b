//! `cargo xtask soak --seed S --minutes M`: about ten TrainingJobs of one
//! and two ranks, with different save times, train on the real node while
//! a seeded schedule mixes every fault the operator must survive (see
//! faults.rs). A job that ends is replaced until the time is up; then every
//! job must run to the end, and the soak checks that nothing was lost.
//!
//! Preemptions are counted exactly: one is injected only into a job that is
//! settled (its pods all running, every earlier preemption counted), so
//! each injection is one interruption the operator must record.

use crate::faults::{Applied, Fault};
use crate::operators::Operators;
use crate::util::{output, step, Paths, SplitMix};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NS: &str = "soak";
pub const NODE: &str = "tjo-node";
pub const LABEL: &str = "soak";
const NOTICE_SECONDS: u32 = 60;
const STEP_SECONDS: f64 = 0.1;
/// A job this close to its end is not preempted: it could finish before
/// the preemption lands, and the count would then be off by one.
const END_MARGIN_STEPS: i64 = 300;

pub type Kube = Arc<dyn Fn() -> Command + Send + Sync>;

/// One slot's kind of job. A slot always holds one job; a new one takes
/// its place when it ends.
pub struct Shape {
    pub ranks: u32,
    /// One GPU per rank: the scheduler's preemption takes only these.
    pub gpu: bool,
    pub save_seconds: f64,
    pub ckpt_every: u64,
}

const fn shape(ranks: u32, gpu: bool, save_seconds: f64, ckpt_every: u64) -> Shape {
    Shape {
        ranks,
        gpu,
        save_seconds,
        ckpt_every,
    }
}

/// Ten slots: 8 GPU ranks (the node's 8 GPUs) and 6 CPU ranks, saves from
/// half a second to ten.
pub const SHAPES: [Shape; 10] = [
    shape(1, true, 0.5, 40),
    shape(1, true, 2.0, 60),
    shape(1, true, 5.0, 100),
    shape(1, true, 10.0, 150),
    shape(2, true, 1.0, 50),
    shape(2, true, 4.0, 80),
    shape(1, false, 1.0, 50),
    shape(1, false, 8.0, 120),
    shape(2, false, 2.0, 60),
    shape(2, false, 6.0, 100),
];

/// What the soak knows of one TrainingJob.
pub struct Job {
    pub name: String,
    pub slot: usize,
    pub steps: u64,
    /// Preemptions injected, by the reason the operator should record.
    pub injected: BTreeMap<&'static str, i32>,
    pub status: Value,
    /// Every interruption seen in status, by attempt.
    pub interruptions: BTreeMap<i64, Value>,
    /// The fault injected into each attempt.
    pub causes: BTreeMap<i64, Fault>,
    pub final_line: Option<String>,
    /// Injected into the attempt that then finished: see
    /// `landed_after_the_end`.
    pub late: BTreeMap<&'static str, i32>,
    pub ended: bool,
    /// Queued through Kueue (soak_kueue.rs).
    pub queued: bool,
}

impl Job {
    pub fn shape(&self) -> &'static Shape {
        &SHAPES[self.slot]
    }
    pub fn phase(&self) -> &str {
        self.status["phase"].as_str().unwrap_or("")
    }
    pub fn counted(&self) -> i64 {
        self.status["preemptions"].as_i64().unwrap_or(0)
    }
    pub fn injected_total(&self) -> i64 {
        self.injected.values().map(|&n| i64::from(n)).sum()
    }
    /// Records a preemption injected into the current attempt.
    fn dealt(&mut self, fault: Fault, reason: &'static str) {
        // With no failures, the n-th preemption ends attempt n.
        self.causes.insert(self.injected_total() + 1, fault);
        *self.injected.entry(reason).or_default() += 1;
    }

    /// A whole-node fault hits every job the barrier found settled and not
    /// near its end, but a drain evicts one pod after another, and under
    /// load a job can finish before its pod's turn comes. Every rank's
    /// trainer then exited 0 unsignalled, the attempt the fault was meant
    /// to end is the one that Succeeded, and the operator rightly counts no
    /// preemption. Such injections move to `late`. Whether the work was
    /// done is the final line's check: a trainer stopped early has no
    /// final line and no checkpoint at its last step.
    fn landed_after_the_end(&mut self) {
        let counted = self.counted();
        let finished_clean = self.phase() == "Succeeded"
            && self.status["failures"].as_i64() == Some(0)
            && self.status["attempt"].as_i64() == Some(counted + 1);
        if !finished_clean {
            return;
        }
        let late: Vec<i64> = self.causes.range(counted + 1..).map(|(a, _)| *a).collect();
        for attempt in late {
            let Some(reason) = self.causes.remove(&attempt).and_then(|f| f.reason()) else {
                continue;
            };
            if let Some(n) = self.injected.get_mut(reason) {
                *n -= 1;
                if *n == 0 {
                    self.injected.remove(reason);
                }
            }
            *self.late.entry(reason).or_default() += 1;
        }
    }

    fn near_end(&self) -> bool {
        let step = self.status["lastCheckpoint"]["step"].as_i64().unwrap_or(0);
        step + END_MARGIN_STEPS >= self.steps as i64
    }
}

pub struct Soak<'a> {
    pub paths: &'a Paths,
    pub k: Kube,
    pub rng: SplitMix,
    pub jobs: Vec<Job>,
    /// The job each slot holds, by index into `jobs`.
    slots: Vec<usize>,
    /// The soak's pods as last listed.
    pub pods: Vec<Value>,
    /// Whether an ended job is replaced.
    pub creating: bool,
    serial: u32,
    step_choices: &'static [u64],
    pub operators: Operators,
    watcher: Option<crate::lifetimes::Watcher>,
    pub started: Instant,
    pub applied: Vec<Applied>,
    /// Kueue is up: one slot's jobs queue through it.
    kueue: bool,
    /// Live jobs at each poll while faults are injected: polls, sum, least.
    pub live: (usize, usize, usize),
    /// Slots with no live job when the faults stopped.
    pub empty_slots: Vec<usize>,
}

pub fn run(paths: &Paths, seed: u64, minutes: f64) -> Result<()> {
    crate::cluster_up(paths, false)?;
    // The real node alone. With two kwok nodes beside it, an API server
    // restart left them Ready again within 5 s and the real node Unknown
    // for a minute: a zone split that a zone of real kubelets, all backing
    // off alike, does not show, and for which the operator (and the node
    // lifecycle controller's taint) takes the real node's ranks for lost.
    crate::node::remove_fake_nodes(paths)?;
    crate::images::build_and_import(paths)?;
    crate::test::install_crd(paths)?;
    prepare_namespace(paths)?;
    let quick = minutes < 10.0;
    let step_choices: &'static [u64] = if quick {
        &[600, 900]
    } else {
        &[1200, 1600, 2000, 2400]
    };
    let references = references(paths, step_choices)?;
    let maker = crate::controlplane::kubectl_maker(paths)?;
    let kueue = crate::soak_kueue::up(paths);
    if kueue {
        crate::soak_kueue::prepare(&maker)?;
    }
    let mut soak = Soak {
        paths,
        k: Arc::new(maker),
        rng: SplitMix(seed),
        jobs: Vec::new(),
        slots: Vec::new(),
        pods: Vec::new(),
        creating: true,
        serial: 0,
        step_choices,
        operators: Operators::start(paths, NS)?,
        watcher: Some(crate::lifetimes::Watcher::start(paths)?),
        started: Instant::now(),
        applied: Vec::new(),
        kueue,
        live: (0, 0, usize::MAX),
        empty_slots: Vec::new(),
    };
    step(format!(
        "soak: seed {seed}, {minutes} minutes, {} jobs at a time{}",
        SHAPES.len(),
        if kueue {
            format!(", slot {} through Kueue", crate::soak_kueue::SLOT)
        } else {
            ", Kueue is not up: its route is skipped".into()
        }
    ));
    let outcome = soak.drive(seed, Duration::from_secs_f64(minutes * 60.0));
    soak.operators.scrape(paths);
    soak.operators.stop(paths);
    let lifetimes = soak
        .watcher
        .take()
        .context("the lifetime watcher")?
        .finish();
    let report = crate::soak_report::Report::new(&soak, &references, lifetimes);
    report.print(seed, minutes, &soak);
    let problems = match outcome {
        Ok(()) => report.problems(),
        Err(e) => vec![format!("the soak stopped early: {e:#}")],
    };
    if problems.is_empty() {
        let _ = output((soak.k)().args(["delete", "namespace", NS, "--wait=false"]));
        crate::soak_kueue::clean_up(&&*soak.k);
        return Ok(());
    }
    crate::soak_report::print_schedule(seed, &soak.applied);
    bail!(
        "soak seed {seed} failed (replay: cargo xtask soak --seed {seed} --minutes {minutes}):\n{}",
        problems.join("\n")
    )
}

impl Soak<'_> {
    fn drive(&mut self, seed: u64, length: Duration) -> Result<()> {
        for slot in 0..SHAPES.len() {
            self.start_job(slot)?;
            self.slots.push(self.jobs.len() - 1);
        }
        let mut schedule = crate::faults::Schedule::new(seed);
        while self.started.elapsed() < length {
            let planned = schedule.next();
            self.idle(planned.gap)?;
            if self.started.elapsed() >= length {
                break;
            }
            let at = self.started.elapsed().as_secs_f64();
            step(format!(
                "fault {} at {at:.0}s: {}",
                self.applied.len() + 1,
                planned.fault.name()
            ));
            let hit = crate::faults::apply(self, planned.fault, planned.pick)
                .with_context(|| format!("applying {}", planned.fault.name()))?;
            self.record(planned.fault, at, hit);
        }
        self.poll();
        self.empty_slots = (0..self.slots.len())
            .filter(|&slot| self.jobs[self.slots[slot]].ended)
            .collect();
        self.creating = false;
        step("the soak's time is up: every job runs to its end");
        crate::util::wait_for("every job to end", Duration::from_secs(1800), || {
            self.poll();
            self.jobs.iter().all(|j| j.ended)
        })
        .with_context(|| self.state())
    }

    fn record(&mut self, fault: Fault, at: f64, hit: Option<Vec<String>>) {
        let reason = fault.reason();
        if let (Some(hit), Some(reason)) = (&hit, reason) {
            for name in hit {
                if let Some(job) = self.jobs.iter_mut().find(|j| &j.name == name) {
                    job.dealt(fault, reason);
                }
            }
        }
        self.applied.push(Applied {
            fault,
            at,
            hit: hit.clone().unwrap_or_default(),
            skipped: hit.is_none(),
        });
    }

    /// Polls for `gap`, replacing jobs that end.
    fn idle(&mut self, gap: Duration) -> Result<()> {
        let until = Instant::now() + gap;
        loop {
            self.poll();
            if Instant::now() >= until {
                return Ok(());
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_secs(2)));
        }
    }

    /// Reads every job's status and the pods; reads the final line of a job
    /// that ended, and starts the next job in its slot.
    pub fn poll(&mut self) {
        self.operators.supervise(self.paths);
        self.operators.scrape(self.paths);
        if let Some(w) = &mut self.watcher {
            w.keep_watching(self.paths);
        }
        let (Some(tjs), Some(pods)) = (self.list("trainingjobs"), self.list("pods")) else {
            return;
        };
        self.pods = pods;
        for tj in tjs {
            let name = tj["metadata"]["name"].as_str().unwrap_or_default();
            if let Some(job) = self.jobs.iter_mut().find(|j| j.name == name) {
                job.status = tj["status"].clone();
                for i in job.status["interruptions"].as_array().into_iter().flatten() {
                    let attempt = i["attempt"].as_i64().unwrap_or(0);
                    job.interruptions.insert(attempt, i.clone());
                }
            }
        }
        for slot in 0..self.slots.len() {
            let j = self.slots[slot];
            let phase = self.jobs[j].phase().to_string();
            if !self.jobs[j].ended && matches!(phase.as_str(), "Succeeded" | "Failed") {
                self.jobs[j].final_line = self.final_line(&self.jobs[j]);
                self.jobs[j].landed_after_the_end();
                self.jobs[j].ended = true;
                step(format!("{} {phase}", self.jobs[j].name));
            }
            // A job that ended while a barrier held creation back is
            // replaced once it lets go: a slot must never stay empty.
            if self.jobs[j].ended && self.creating {
                match self.start_job(slot) {
                    Ok(()) => self.slots[slot] = self.jobs.len() - 1,
                    Err(e) => eprintln!("could not start the next job of slot {slot}: {e:#}"),
                }
            }
        }
        if self.creating {
            let live = self.slots.iter().filter(|&&j| !self.jobs[j].ended).count();
            let (polls, sum, least) = self.live;
            self.live = (polls + 1, sum + live, least.min(live));
        }
    }

    fn list(&self, what: &str) -> Option<Vec<Value>> {
        let text = output((self.k)().args(["get", what, "-n", NS, "-o", "json"])).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["items"].as_array().cloned()
    }

    /// Rank 0's last line starting `final `, from the newest attempt; or,
    /// where that pod and its log are gone, from the final checkpoint
    /// (soak_final.rs).
    fn final_line(&self, job: &Job) -> Option<String> {
        self.final_log_line(&job.name).or_else(|| {
            crate::soak_final::from_checkpoint(&crate::demo::volume_dir(NS, &job.name), job.steps)
        })
    }

    fn final_log_line(&self, job: &str) -> Option<String> {
        let pod = self
            .pods_of(job)
            .filter(|p| crate::podlogs::rank_of(p) == 0)
            .max_by_key(|p| attempt_of(p))?;
        let name = pod["metadata"]["name"].as_str()?;
        let logs = output((self.k)().args(["logs", "-n", NS, name, "-c", "trainer"])).ok()?;
        logs.lines()
            .rfind(|l| l.starts_with("final "))
            .map(str::to_string)
    }

    pub fn pods_of<'p>(&'p self, job: &'p str) -> impl Iterator<Item = &'p Value> + 'p {
        self.pods
            .iter()
            .filter(move |p| p["metadata"]["labels"]["trainingjob.dev/job"] == job)
    }

    /// The job's pods are all running and every preemption injected so far
    /// is counted: a new one would be exactly one more.
    pub fn settled(&self, job: &Job) -> bool {
        if job.ended || job.phase() != "Running" || job.counted() != job.injected_total() {
            return false;
        }
        let attempt = job.status["attempt"].as_i64().unwrap_or(0);
        let mut current = 0;
        for p in self.pods_of(&job.name) {
            let alive = p["metadata"]["deletionTimestamp"].is_null()
                && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
            if attempt_of(p) == attempt {
                if !alive || p["status"]["phase"] != "Running" {
                    return false;
                }
                current += 1;
            } else if alive {
                return false;
            }
        }
        current == job.shape().ranks as usize
    }

    /// A settled job to preempt, not near its end, chosen by `pick` among
    /// those `want` accepts; waits up to two minutes for one.
    pub fn pick_job(&mut self, pick: u64, want: impl Fn(&Job) -> bool) -> Option<usize> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready: Vec<usize> = self
                .slots
                .iter()
                .copied()
                .filter(|&j| want(&self.jobs[j]) && self.settled(&self.jobs[j]))
                .filter(|&j| !self.jobs[j].near_end())
                .collect();
            if !ready.is_empty() {
                return Some(ready[(pick % ready.len() as u64) as usize]);
            }
            if Instant::now() >= deadline {
                eprintln!("no settled job to preempt:\n{}", self.state());
                return None;
            }
            std::thread::sleep(Duration::from_secs(1));
            self.poll();
        }
    }

    /// For a fault that takes every job `want` accepts at once: stops
    /// replacing jobs and waits until each live one is settled and not
    /// near its end. The jobs it returns are those the fault will hit.
    pub fn barrier(&mut self, want: impl Fn(&Job) -> bool) -> Option<Vec<String>> {
        self.creating = false;
        let deadline = Instant::now() + Duration::from_secs(180);
        let hit = loop {
            self.poll();
            let live: Vec<&Job> = self.slots.iter().map(|&j| &self.jobs[j]).collect();
            let unsettled = live
                .iter()
                .filter(|j| !j.ended && (!self.settled(j) || j.near_end()))
                .count();
            if unsettled == 0 {
                let hit: Vec<String> = live
                    .iter()
                    .filter(|j| !j.ended && want(j))
                    .map(|j| j.name.clone())
                    .collect();
                break Some(hit);
            }
            if Instant::now() >= deadline {
                eprintln!("jobs not settled for a whole-node fault:\n{}", self.state());
                break None;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        self.creating = true;
        hit
    }

    /// The running pod of `rank` in the job's current attempt.
    pub fn pod_of_rank(&self, job: usize, rank: u32) -> Option<String> {
        let job = &self.jobs[job];
        let attempt = job.status["attempt"].as_i64().unwrap_or(0);
        self.pods_of(&job.name)
            .find(|p| attempt_of(p) == attempt && crate::podlogs::rank_of(p) == rank)
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
    }

    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn state(&self) -> String {
        let tj = output((self.k)().args(["get", "tj,pods", "-n", NS, "-o", "wide"]))
            .unwrap_or_else(|e| format!("(could not list: {e:#})"));
        format!("{tj}\n{}", Operators::log_tail(self.paths))
    }

    fn start_job(&mut self, slot: usize) -> Result<()> {
        self.serial += 1;
        let name = format!("s{slot}-{}", self.serial);
        let steps = self.step_choices[self.rng.below(self.step_choices.len() as u64) as usize];
        let shape = &SHAPES[slot];
        let mode = crate::peers_manifests::mode_for(shape.ranks);
        crate::demo::provision_volume(self.paths, NS, &name, mode)?;
        let queued = self.kueue && slot == crate::soak_kueue::SLOT;
        for object in manifests(&name, shape, steps, mode, queued) {
            crate::controlplane::apply_json(&&*self.k, Some(NS), &object)?;
        }
        self.jobs.push(Job {
            name,
            slot,
            steps,
            injected: BTreeMap::new(),
            status: Value::Null,
            interruptions: BTreeMap::new(),
            causes: BTreeMap::new(),
            final_line: None,
            late: BTreeMap::new(),
            ended: false,
            queued,
        });
        Ok(())
    }
}

pub fn attempt_of(pod: &Value) -> i64 {
    pod["metadata"]["labels"]["trainingjob.dev/attempt"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0)
}

fn manifests(name: &str, shape: &Shape, steps: u64, mode: &str, queued: bool) -> [Value; 2] {
    let claim = crate::peers_manifests::claim(name, mode);
    let command: Vec<String> = [
        "python3",
        "/opt/trainer/train.py",
        "--total-steps",
        &steps.to_string(),
        "--step-seconds",
        &STEP_SECONDS.to_string(),
        "--ckpt-every",
        &shape.ckpt_every.to_string(),
        "--save-seconds",
        &shape.save_seconds.to_string(),
        "--rendezvous-timeout",
        "120",
    ]
    .map(String::from)
    .to_vec();
    let mut limits = json!({"memory": "256Mi"});
    if shape.gpu {
        limits["nvidia.com/gpu"] = json!(1);
    }
    let labels = if queued {
        crate::soak_kueue::labels()
    } else {
        json!({})
    };
    let job = json!({
        "apiVersion": "trainingjob.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": shape.ranks,
            "checkpoint": {"claimName": name},
            "preemption": {"noticeSeconds": NOTICE_SECONDS, "maxPreemptions": 1000},
            "template": {
                "metadata": {"labels": {LABEL: "1"}},
                "spec": {"containers": [{
                    "name": "trainer",
                    "image": crate::images::TRAINER_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "resources": {"limits": limits},
                }]},
            },
        },
    });
    [claim, job]
}

/// The final line of an uninterrupted run for each number of steps.
fn references(paths: &Paths, steps: &[u64]) -> Result<HashMap<u64, String>> {
    steps
        .iter()
        .map(|&n| Ok((n, crate::peers::uninterrupted(paths, n)?)))
        .collect()
}

fn prepare_namespace(paths: &Paths) -> Result<()> {
    release_leftovers(paths)?;
    crate::bench::fresh_namespace_with(paths, NS, &[])?;
    crate::controlplane::apply_json(
        &crate::controlplane::kubectl_maker(paths)?,
        None,
        &json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": crate::disrupt::PRIORITY_CLASS},
            "value": 1_000_000,
            "description": "a pod that preempts the trainers",
        }),
    )
}

/// A soak that failed leaves its pods holding the operator's report
/// finalizer, with no operator left to release it: the namespace could not
/// go. Released here, as `helm uninstall`'s hook does.
fn release_leftovers(paths: &Paths) -> Result<()> {
    let k = crate::controlplane::kubectl_maker(paths)?;
    let names = output(k().args(["get", "pods", "-n", NS, "-o", "name", "--ignore-not-found"]))
        .unwrap_or_default();
    for pod in names.lines().filter(|l| !l.is_empty()) {
        let _ = output(k().args([
            "patch",
            "-n",
            NS,
            pod,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(status: Value) -> Job {
        let mut j = Job {
            name: "s6-7".into(),
            slot: 6,
            steps: 2000,
            injected: BTreeMap::new(),
            status,
            interruptions: BTreeMap::new(),
            causes: BTreeMap::new(),
            final_line: None,
            late: BTreeMap::new(),
            ended: false,
            queued: false,
        };
        for fault in [Fault::ForceDelete, Fault::Evict, Fault::Drain] {
            j.dealt(fault, fault.reason().unwrap());
        }
        j
    }

    #[test]
    fn a_drain_that_reached_a_finished_attempt_is_late_not_missed() {
        // The drain's eviction came after attempt 3's trainer finished.
        let mut j =
            job(json!({"phase": "Succeeded", "failures": 0, "attempt": 3, "preemptions": 2}));
        j.landed_after_the_end();
        assert_eq!(j.injected_total(), 2);
        assert_eq!(j.injected["EvictionByEvictionAPI"], 1);
        assert_eq!(j.late["EvictionByEvictionAPI"], 1);
    }

    #[test]
    fn a_preemption_the_operator_missed_still_counts_as_missed() {
        // Attempt 4 means the operator restarted the job once more than it
        // counted: that is a miss, not a late fault.
        for status in [
            json!({"phase": "Succeeded", "failures": 0, "attempt": 4, "preemptions": 2}),
            json!({"phase": "Failed", "failures": 0, "attempt": 3, "preemptions": 2}),
            json!({"phase": "Succeeded", "failures": 1, "attempt": 3, "preemptions": 2}),
        ] {
            let mut j = job(status);
            j.landed_after_the_end();
            assert_eq!(j.injected_total(), 3);
            assert!(j.late.is_empty());
        }
    }
}
