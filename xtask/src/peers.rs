//! `cargo xtask bench peers`: the same trainer under a batch/v1 Job, a
//! JobSet and a TrainingJob, side by side on the test bed, taken away by the
//! same seeded schedule of drains, evictions, deletions and scheduler
//! preemptions, each followed by the cloud's notice (`disrupt`).
//!
//! Each system is set up as a careful user would set it up:
//! - one trainer image, exec form, the same SIGTERM handler, the same
//!   checkpoint interval, and the same resume-by-scan (the launcher's for
//!   TrainingJob, `tjckpt.scan_for_resume` for the peers);
//! - the peers' trainer exits 143 after its stop save: one that exits 0
//!   tells a Job it is done, and the Job is marked Complete at whatever step
//!   the preemption came;
//! - Job: `podFailurePolicy` ignoring `DisruptionTarget`,
//!   `podReplacementPolicy: Failed`;
//! - JobSet: its child Job fails on `DisruptionTarget` (FailJob) and the set
//!   restarts without counting it (`RestartJobSetAndIgnoreMaxRestarts`);
//!   other failures count against `maxRestarts`.
//!
//! Every figure comes from the trainers' own logs (followed with the
//! runtime's timestamps, `podlogs`) and the systems' status; none is asserted.

use crate::controlplane::{apply_json, kubectl_maker};
use crate::disrupt::{self, Kind};
use crate::podlogs::{PodLog, PodLogs};
use crate::util::{output, step, unix_now, wait_for, Paths};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const NS: &str = "peers";

/// One setting of the trainer and the cloud.
pub struct Scenario {
    pub name: &'static str,
    pub save_seconds: f64,
    pub notice_seconds: u32,
    pub steps: u64,
    pub step_seconds: f64,
    pub ckpt_every: u64,
    pub disruptions: usize,
    /// Seconds from one recovery to the next disruption, drawn from this range.
    pub gap_seconds: (u64, u64),
}

/// (a): the save fits the default 30 s grace.
pub const FITS: Scenario = Scenario {
    name: "a",
    save_seconds: 1.0,
    notice_seconds: 30,
    steps: 3000,
    step_seconds: 0.05,
    ckpt_every: 200,
    disruptions: 4,
    gap_seconds: (15, 30),
};

/// (b): the save takes longer than the default grace but fits the notice.
pub const LONG_SAVE: Scenario = Scenario {
    name: "b",
    save_seconds: 35.0,
    notice_seconds: 60,
    steps: 1200,
    step_seconds: 0.05,
    ckpt_every: 400,
    disruptions: 2,
    gap_seconds: (10, 25),
};

/// What `cargo xtask test` runs: scenario (a), shorter, two disruptions.
pub const QUICK: Scenario = Scenario {
    name: "a (quick)",
    steps: 600,
    disruptions: 2,
    gap_seconds: (8, 12),
    ..FITS
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    Job,
    JobSet,
    TrainingJob,
}

pub struct Workload {
    pub name: String,
    pub system: System,
    pub ranks: u32,
    /// terminationGracePeriodSeconds set by hand; None leaves the default
    /// (the operator sizes its own).
    pub grace: Option<u32>,
}

impl Workload {
    fn new(system: System, ranks: u32, grace: Option<u32>) -> Self {
        let kind = match system {
            System::Job => "job",
            System::JobSet => "jobset",
            System::TrainingJob => "tj",
        };
        let suffix = if grace.is_some() { "-notice" } else { "" };
        Self {
            name: format!("{kind}-{ranks}r{suffix}"),
            system,
            ranks,
            grace,
        }
    }

    pub fn grace_text(&self) -> String {
        match (self.system, self.grace) {
            (System::TrainingJob, _) => "sized by the operator".into(),
            (_, Some(g)) => format!("{g} s (the notice, by hand)"),
            (_, None) => "30 s (default)".into(),
        }
    }
}

/// The workloads run together under one schedule. A batch/v1 Job has no
/// gang: it replaces only the lost index while the other rank waits for it,
/// so it runs with one rank only.
pub fn batches(sc: &Scenario) -> Vec<Vec<Workload>> {
    use System::*;
    if sc.save_seconds < 30.0 {
        return vec![vec![
            Workload::new(Job, 1, None),
            Workload::new(JobSet, 1, None),
            Workload::new(TrainingJob, 1, None),
            Workload::new(JobSet, 2, None),
            Workload::new(TrainingJob, 2, None),
        ]];
    }
    let n = Some(sc.notice_seconds);
    // Eight GPUs on the node: the one- and two-rank variants take turns.
    vec![
        vec![
            Workload::new(Job, 1, None),
            Workload::new(Job, 1, n),
            Workload::new(JobSet, 1, None),
            Workload::new(JobSet, 1, n),
            Workload::new(TrainingJob, 1, None),
        ],
        vec![
            Workload::new(JobSet, 2, None),
            Workload::new(JobSet, 2, n),
            Workload::new(TrainingJob, 2, None),
        ],
    ]
}

/// One disruption of the schedule.
#[derive(Clone, Debug)]
pub struct Planned {
    pub gap: Duration,
    pub kind: Kind,
    /// Which rank a per-pod disruption takes (modulo the workload's ranks).
    pub rank: u32,
}

/// The seeded schedule: every kind once in a seeded order, then again.
pub fn schedule(seed: u64, sc: &Scenario) -> Vec<Planned> {
    let mut rng = crate::util::SplitMix(seed);
    let mut kinds = Kind::ALL;
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    let (lo, hi) = sc.gap_seconds;
    (0..sc.disruptions)
        .map(|i| Planned {
            gap: Duration::from_secs(lo + rng.next() % (hi - lo + 1)),
            kind: kinds[i % kinds.len()],
            rank: (rng.next() % 2) as u32,
        })
        .collect()
}

/// A disruption as it happened: when, and which pods of each workload.
#[derive(Clone, Debug)]
pub struct Applied {
    pub kind: Kind,
    /// Unix seconds.
    pub at: f64,
    /// Seconds since the batch's workloads were created.
    pub offset: f64,
    pub hit: HashMap<String, Vec<String>>,
}

/// What one workload did over a batch.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub system: System,
    pub ranks: u32,
    pub grace: String,
    /// Creation to the final step, seconds; None if it never got there.
    pub wall: Option<f64>,
    /// Creation to the first step: what the system costs before any
    /// disruption (Job and JobSet create their pods through a Job).
    pub start: Option<f64>,
    pub steps_redone: u64,
    pub failures: i64,
    pub restarts: usize,
    /// Disruption -> first step of the next pods, seconds, per disruption.
    pub resumes: Vec<f64>,
    pub final_matches: bool,
    /// (seconds since creation, step) of rank 0, for the plot.
    pub curve: Vec<(f64, u64)>,
}

pub fn run(paths: &Paths, quick: bool, seed: u64) -> Result<()> {
    crate::cluster_up(paths, false)?;
    crate::images::build_and_import(paths)?;
    crate::test::install_crd(paths)?;
    let scenarios: Vec<&Scenario> = if quick {
        vec![&QUICK]
    } else {
        vec![&FITS, &LONG_SAVE]
    };
    let out_dir = paths.root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    for sc in scenarios {
        let reference = uninterrupted(paths, sc.steps)?;
        let mut outcomes = Vec::new();
        let mut applied = Vec::new();
        for batch in batches(sc) {
            let (o, a) = run_batch(paths, sc, &batch, seed, &reference)?;
            outcomes.push(o);
            applied.push(a);
        }
        let _ = output(kubectl_maker(paths)?().args(["delete", "namespace", NS, "--wait=false"]));
        let all: Vec<Outcome> = outcomes.iter().flatten().cloned().collect();
        crate::peers_report::print(sc, seed, &all, &applied);
        let png = out_dir.join(format!(
            "peers-{}.png",
            sc.name.split(' ').next().unwrap_or("x")
        ));
        crate::plot::steps_over_time(&png, sc, &outcomes, &applied)?;
        step(format!("plot: {}", png.display()));
        check_complete(&all)?;
    }
    Ok(())
}

/// The final line of an uninterrupted run, on this machine.
pub fn uninterrupted(paths: &Paths, steps: u64) -> Result<String> {
    let dir = std::env::temp_dir().join(format!("tjo-peers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = output(
        Command::new("python3")
            .arg(paths.root.join("examples/trainer/train.py"))
            .args(["--total-steps", &steps.to_string(), "--checkpoint-dir"])
            .arg(&dir),
    );
    let _ = std::fs::remove_dir_all(&dir);
    out?.lines()
        .rfind(|l| l.starts_with("final "))
        .map(str::to_string)
        .context("the uninterrupted run printed no final line")
}

fn run_batch(
    paths: &Paths,
    sc: &Scenario,
    batch: &[Workload],
    seed: u64,
    reference: &str,
) -> Result<(Vec<Outcome>, Vec<Applied>)> {
    let k = kubectl_maker(paths)?;
    prepare_namespace(paths, batch)?;
    crate::demo::start_operator(paths, NS)?;
    let logs = PodLogs::follow(k.clone(), NS, "bench=peers")?;
    let created = unix_now();
    for w in batch {
        for object in crate::peers_manifests::objects(sc, w) {
            apply_json(&k, Some(NS), &object)?;
        }
    }
    step(format!(
        "scenario {}: {} side by side, {} disruptions (seed {seed})",
        sc.name,
        batch
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        sc.disruptions
    ));
    wait_for(
        "every workload's first step",
        Duration::from_secs(300),
        || {
            let s = logs.snapshot();
            batch.iter().all(|w| first_step(&s, &w.name).is_some())
        },
    )
    .with_context(|| pods_state(&k))?;
    let mut applied = Vec::new();
    for planned in schedule(seed, sc) {
        match disrupt_once(&k, sc, batch, &logs, &planned)? {
            Some(a) => applied.push(Applied {
                offset: a.at - created,
                ..a
            }),
            None => break,
        }
    }
    wait_for(
        "every workload's final step",
        Duration::from_secs(1800),
        || all_finished(batch, &logs),
    )
    .with_context(|| pods_state(&k))?;
    let snapshot = logs.snapshot();
    let outcomes = batch
        .iter()
        .map(|w| outcome(&k, sc, w, &snapshot, &applied, created, reference))
        .collect();
    Ok((outcomes, applied))
}

/// Waits the planned gap (cut short if every workload finishes), applies the
/// disruption, and waits until each workload it hit trains again.
fn disrupt_once<K>(
    k: &K,
    sc: &Scenario,
    batch: &[Workload],
    logs: &PodLogs,
    planned: &Planned,
) -> Result<Option<Applied>>
where
    K: Fn() -> Command + Clone + Send + 'static,
{
    let due = Instant::now() + planned.gap;
    let all_done = || all_finished(batch, logs);
    wait_for(
        "the next disruption's time",
        planned.gap + Duration::from_secs(1),
        || Instant::now() >= due || all_done(),
    )?;
    if all_done() {
        return Ok(None);
    }
    let hit = targets(k, batch, planned)?;
    let pods: Vec<String> = hit.values().flatten().cloned().collect();
    if pods.is_empty() {
        return Ok(None);
    }
    let at = unix_now();
    step(format!("{} of {}", planned.kind.name(), pods.join(", ")));
    let notice = Duration::from_secs(u64::from(sc.notice_seconds));
    let aftermath = disrupt::apply(k, NS, planned.kind, &pods, notice)?;
    let timeout = notice + Duration::from_secs(240);
    wait_for("every workload hit to train again", timeout, || {
        let s = logs.snapshot();
        hit.keys()
            .all(|w| finished(&s, w).is_some() || resumed_after(&s, w, at).is_some())
    })
    .with_context(|| pods_state(k))?;
    let _ = aftermath.join();
    Ok(Some(Applied {
        kind: planned.kind,
        at,
        offset: 0.0,
        hit,
    }))
}

/// The running pods a disruption takes, by workload: all of them for a
/// drain or a preemption, else the pod of one rank per workload.
fn targets<K: Fn() -> Command>(
    k: &K,
    batch: &[Workload],
    planned: &Planned,
) -> Result<HashMap<String, Vec<String>>> {
    let out = output(k().args(["get", "pods", "-n", NS, "-l", "bench=peers", "-o", "json"]))?;
    let list: Value = serde_json::from_str(&out)?;
    let mut hit: HashMap<String, Vec<String>> = HashMap::new();
    for pod in list["items"].as_array().into_iter().flatten() {
        let running =
            pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null();
        let workload = pod["metadata"]["labels"]["peers/workload"]
            .as_str()
            .unwrap_or_default();
        let Some(w) = batch.iter().find(|w| w.name == workload) else {
            continue;
        };
        let rank = crate::podlogs::rank_of(pod);
        if running && (planned.kind.whole_node() || rank == planned.rank % w.ranks) {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            hit.entry(w.name.clone()).or_default().push(name);
        }
    }
    Ok(hit)
}

fn prepare_namespace(paths: &Paths, batch: &[Workload]) -> Result<()> {
    let claims: Vec<(&str, &str)> = batch
        .iter()
        .map(|w| (w.name.as_str(), crate::peers_manifests::access_mode(w)))
        .collect();
    crate::bench::fresh_namespace_with(paths, NS, &claims)?;
    apply_json(
        &kubectl_maker(paths)?,
        None,
        &json!({
            "apiVersion": "scheduling.k8s.io/v1",
            "kind": "PriorityClass",
            "metadata": {"name": disrupt::PRIORITY_CLASS},
            "value": 1_000_000,
            "description": "bench peers: a pod that preempts the trainers",
        }),
    )
}

fn pods_state<K: Fn() -> Command>(k: &K) -> String {
    output(k().args([
        "get",
        "pods,jobs,jobsets,trainingjobs",
        "-n",
        NS,
        "-o",
        "wide",
    ]))
    .unwrap_or_else(|e| format!("(could not list the pods: {e:#})"))
}

fn rank0<'a>(
    logs: &'a HashMap<String, PodLog>,
    workload: &'a str,
) -> impl Iterator<Item = &'a PodLog> {
    logs.values()
        .filter(move |p| p.workload == workload && p.rank == 0)
}

pub fn step_of(text: &str) -> Option<u64> {
    text.strip_prefix("step ")?.split(' ').next()?.parse().ok()
}

fn first_step(logs: &HashMap<String, PodLog>, workload: &str) -> Option<f64> {
    rank0(logs, workload)
        .flat_map(|p| &p.lines)
        .filter(|l| step_of(&l.text).is_some())
        .map(|l| l.at)
        .min_by(f64::total_cmp)
}

/// Whether every workload's rank 0 printed its final line; one copy of
/// the logs per call, not one per workload.
fn all_finished(batch: &[Workload], logs: &PodLogs) -> bool {
    let s = logs.snapshot();
    batch.iter().all(|w| finished(&s, &w.name).is_some())
}

/// When rank 0 printed its final line.
fn finished(logs: &HashMap<String, PodLog>, workload: &str) -> Option<f64> {
    rank0(logs, workload)
        .flat_map(|p| &p.lines)
        .find(|l| l.text.starts_with("final "))
        .map(|l| l.at)
}

/// The first step trained by a pod that started after `at`.
fn resumed_after(logs: &HashMap<String, PodLog>, workload: &str, at: f64) -> Option<f64> {
    rank0(logs, workload)
        .filter(|p| p.lines.first().is_some_and(|l| l.at > at))
        .flat_map(|p| &p.lines)
        .filter(|l| step_of(&l.text).is_some())
        .map(|l| l.at)
        .min_by(f64::total_cmp)
}

fn outcome<K: Fn() -> Command>(
    k: &K,
    sc: &Scenario,
    w: &Workload,
    logs: &HashMap<String, PodLog>,
    applied: &[Applied],
    created: f64,
    reference: &str,
) -> Outcome {
    let trained: u64 = rank0(logs, &w.name)
        .flat_map(|p| &p.lines)
        .filter(|l| step_of(&l.text).is_some())
        .count() as u64;
    let final_line = rank0(logs, &w.name)
        .flat_map(|p| &p.lines)
        .find(|l| l.text.starts_with("final "));
    let mut curve: Vec<(f64, u64)> = rank0(logs, &w.name)
        .flat_map(|p| &p.lines)
        .filter_map(|l| Some((l.at - created, step_of(&l.text)?)))
        .collect();
    curve.sort_by(|a, b| a.0.total_cmp(&b.0));
    Outcome {
        name: w.name.clone(),
        system: w.system,
        ranks: w.ranks,
        grace: match w.system {
            System::TrainingJob => {
                format!("sized by the operator: {} s at the end", sized_grace(k, w))
            }
            _ => w.grace_text(),
        },
        wall: final_line.map(|l| l.at - created),
        start: first_step(logs, &w.name).map(|t| t - created),
        steps_redone: trained.saturating_sub(sc.steps),
        failures: failures(k, w),
        restarts: rank0(logs, &w.name).count().saturating_sub(1),
        resumes: applied
            .iter()
            .filter(|a| a.hit.contains_key(&w.name))
            .filter_map(|a| Some(resumed_after(logs, &w.name, a.at)? - a.at))
            .collect(),
        final_matches: final_line.is_some_and(|l| l.text == reference),
        curve,
    }
}

/// The grace period the operator last set (status.gracePeriodSeconds).
fn sized_grace<K: Fn() -> Command>(k: &K, w: &Workload) -> String {
    let object = format!("trainingjob/{}", w.name);
    output(k().args([
        "get",
        &object,
        "-n",
        NS,
        "-o",
        "jsonpath={.status.gracePeriodSeconds}",
    ]))
    .map(|s| s.trim().to_string())
    .unwrap_or_else(|_| "?".into())
}

/// What the system itself counts as failures: a Job's failed pods (those
/// its podFailurePolicy did not ignore), a JobSet's restarts that count
/// against maxRestarts, a TrainingJob's failures.
fn failures<K: Fn() -> Command>(k: &K, w: &Workload) -> i64 {
    let (object, path) = match w.system {
        System::Job => (format!("job/{}", w.name), "{.status.failed}"),
        System::JobSet => (
            format!("jobset/{}", w.name),
            "{.status.restartsCountTowardsMax}",
        ),
        System::TrainingJob => (format!("trainingjob/{}", w.name), "{.status.failures}"),
    };
    output(k().args(["get", &object, "-n", NS, "-o", &format!("jsonpath={path}")]))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Fails when a workload never finished or a figure is missing: the quick
/// run in `cargo xtask test` checks that the bench still works, not what it
/// measures.
pub fn check_complete(outcomes: &[Outcome]) -> Result<()> {
    for o in outcomes {
        if o.wall.is_none() {
            bail!("{} never printed its final step", o.name);
        }
        if o.curve.is_empty() {
            bail!("{}: no steps were read from its logs", o.name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_its_schedule_and_every_kind_comes_first() {
        let a = schedule(7, &FITS);
        let b = schedule(7, &FITS);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let mut kinds: Vec<&str> = a.iter().map(|p| p.kind.name()).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds.len(), 4, "{a:?}");
        assert!(a.iter().all(|p| (15..=30).contains(&p.gap.as_secs())));
        assert_ne!(format!("{a:?}"), format!("{:?}", schedule(8, &FITS)));
    }

    #[test]
    fn resumed_means_a_pod_that_started_after_the_disruption() {
        let line = |at: f64, text: &str| crate::podlogs::Line {
            at,
            text: text.into(),
        };
        let pod = |lines| PodLog {
            workload: "w".into(),
            rank: 0,
            lines,
        };
        let logs = HashMap::from([
            (
                "old".to_string(),
                pod(vec![
                    line(1.0, "step 1 loss 0.5"),
                    line(12.0, "step 9 loss 0.1"),
                ]),
            ),
            (
                "new".to_string(),
                pod(vec![
                    line(15.0, "resumed from step 5"),
                    line(16.5, "step 6 loss 0.2"),
                ]),
            ),
        ]);
        assert_eq!(resumed_after(&logs, "w", 10.0), Some(16.5));
        assert_eq!(resumed_after(&logs, "w", 20.0), None);
        assert_eq!(first_step(&logs, "w"), Some(1.0));
        assert_eq!(finished(&logs, "w"), None);
    }
}
