//! What `cargo xtask soak` prints at the end, and what makes it fail.

use crate::faults::{Applied, Fault};
use crate::lifetimes::Summary;
use crate::soak::Soak;
use std::collections::{BTreeMap, HashMap};

pub struct Report {
    jobs: usize,
    not_succeeded: Vec<String>,
    final_mismatches: Vec<String>,
    injected: BTreeMap<String, i64>,
    counted: BTreeMap<String, i64>,
    /// Jobs whose own count differs from what they were dealt.
    count_mismatches: Vec<String>,
    /// Faults that reached a job after its trainers had finished.
    late: Vec<String>,
    failures: i64,
    lifetimes: Result<Summary, String>,
    steps_lost: i64,
    steps_lost_graceful: i64,
    /// Interruptions with steps lost although the trainer had its grace.
    lossy: Vec<String>,
    errors: BTreeMap<String, f64>,
    peak_rss_kib: u64,
    operator_exits: u32,
    empty_slots: Vec<usize>,
}

/// The node-loss routes reach the operator under several reasons, by
/// which part of Kubernetes saw the node go first.
fn route(reason: &str) -> String {
    match reason {
        "DeletionByPodGC"
        | "NodeLost"
        | "NodeUnreachable"
        | "DeletionByTaintManager"
        | "NodeStatusUnknown"
        | "NodeShutdown" => "node lost".into(),
        other => other.into(),
    }
}

impl Report {
    pub fn new(
        soak: &Soak,
        references: &HashMap<u64, String>,
        lifetimes: anyhow::Result<Summary>,
    ) -> Self {
        let mut r = Report {
            jobs: soak.jobs.len(),
            empty_slots: soak.empty_slots.clone(),
            not_succeeded: vec![],
            final_mismatches: vec![],
            injected: BTreeMap::new(),
            counted: BTreeMap::new(),
            count_mismatches: vec![],
            late: vec![],
            failures: 0,
            lifetimes: lifetimes.map_err(|e| format!("{e:#}")),
            steps_lost: 0,
            steps_lost_graceful: 0,
            lossy: vec![],
            errors: soak.operators.errors(),
            peak_rss_kib: soak.operators.peak_rss_kib,
            operator_exits: soak.operators.exits,
        };
        for job in &soak.jobs {
            r.add_job(job, references);
        }
        r
    }

    fn add_job(&mut self, job: &crate::soak::Job, references: &HashMap<u64, String>) {
        if job.phase() != "Succeeded" {
            self.not_succeeded
                .push(format!("{}: {}", job.name, job.phase()));
        }
        let want = references.get(&job.steps);
        if !crate::soak_final::matches(job.final_line.as_deref(), want.map(String::as_str)) {
            self.final_mismatches.push(format!(
                "{}: {:?}, uninterrupted: {want:?}",
                job.name, job.final_line
            ));
        }
        if !job.late.is_empty() {
            self.late.push(format!("{} {:?}", job.name, job.late));
        }
        for (reason, n) in &job.injected {
            *self.injected.entry(route(reason)).or_default() += i64::from(*n);
        }
        for (reason, n) in job.status["preemptionsByReason"]
            .as_object()
            .into_iter()
            .flatten()
        {
            *self.counted.entry(route(reason)).or_default() += n.as_i64().unwrap_or(0);
        }
        if job.counted() != job.injected_total() {
            self.count_mismatches.push(format!(
                "{}: injected {:?}, counted {}",
                job.name, job.injected, job.status["preemptionsByReason"]
            ));
        }
        self.failures += job.status["failures"].as_i64().unwrap_or(0);
        self.steps_lost += job.status["stepsLost"].as_i64().unwrap_or(0);
        for (attempt, i) in &job.interruptions {
            let lost = i["stepsLost"].as_i64().unwrap_or(0);
            let cause = job.causes.get(attempt);
            if lost > 0 && cause.is_none_or(|f| f.graceful()) {
                self.steps_lost_graceful += lost;
                self.lossy.push(format!(
                    "{} attempt {attempt} ({}): {lost} steps lost: {}",
                    job.name,
                    cause.map_or("no fault injected", |f| f.name()),
                    i["message"]
                ));
            }
        }
    }

    pub fn print(&self, seed: u64, minutes: f64, soak: &Soak) {
        let applied: Vec<&Applied> = soak.applied.iter().filter(|a| !a.skipped).collect();
        println!(
            "\n== soak: seed {seed}, {minutes} minutes, {:.0} s in all ==",
            soak.elapsed()
        );
        println!(
            "faults applied: {} ({} skipped: no settled job in time)",
            applied.len(),
            soak.applied.len() - applied.len()
        );
        for f in Fault::ALL {
            let n = applied.iter().filter(|a| a.fault == f).count();
            println!("  {:<45} {n}", f.name());
        }
        println!(
            "jobs: {}, Succeeded: {}",
            self.jobs,
            self.jobs - self.not_succeeded.len()
        );
        let (polls, sum, least) = soak.live;
        if polls > 0 {
            println!(
                "jobs at a time while faults were injected: {:.1} on average, {least} at least, of {} slots",
                sum as f64 / polls as f64,
                crate::soak::SHAPES.len()
            );
        }
        println!(
            "final line equal to the uninterrupted run's: {} of {}",
            self.jobs - self.final_mismatches.len(),
            self.jobs
        );
        println!("preemptions by route: injected / counted by the operator");
        let routes: std::collections::BTreeSet<&String> =
            self.injected.keys().chain(self.counted.keys()).collect();
        for r in routes {
            println!(
                "  {r:<25} {} / {}",
                self.injected.get(r).unwrap_or(&0),
                self.counted.get(r).unwrap_or(&0)
            );
        }
        if !self.late.is_empty() {
            println!(
                "faults that reached a job after its trainers had finished (no preemption to count): {}",
                self.late.join(", ")
            );
        }
        println!("failures: {}", self.failures);
        match &self.lifetimes {
            Ok(s) => println!(
                "no two trainers of a rank alive at once: {} pods of {} ranks, {} trainer processes over {} samples",
                s.pods, s.ranks, s.trainer_processes, s.samples
            ),
            Err(e) => println!("two trainers of a rank were alive at once: {e}"),
        }
        println!(
            "steps lost: {} in all, {} where the trainer had its grace period",
            self.steps_lost, self.steps_lost_graceful
        );
        println!("reconcile errors by kind: {:?}", self.errors);
        println!(
            "operator exits (a leader that could not renew its Lease), each started again: {}",
            self.operator_exits
        );
        println!(
            "operator peak RSS: {:.1} MiB",
            self.peak_rss_kib as f64 / 1024.0
        );
    }

    /// Everything that makes the soak fail, for people.
    pub fn problems(&self) -> Vec<String> {
        let mut p = vec![];
        let mut list = |what: &str, items: &[String]| {
            if !items.is_empty() {
                p.push(format!("{what}:\n  {}", items.join("\n  ")));
            }
        };
        list("jobs that did not succeed", &self.not_succeeded);
        list("final lines that differ", &self.final_mismatches);
        list(
            "preemptions counted differ from those injected",
            &self.count_mismatches,
        );
        list("steps lost although the save had its grace", &self.lossy);
        if self.injected != self.counted {
            p.push(format!(
                "preemptions by route: injected {:?}, counted {:?}",
                self.injected, self.counted
            ));
        }
        if self.failures != 0 {
            p.push(format!(
                "{} preemptions were counted as failures",
                self.failures
            ));
        }
        if let Err(e) = &self.lifetimes {
            p.push(e.clone());
        }
        if !self.empty_slots.is_empty() {
            p.push(format!(
                "slots with no job when the faults stopped: {:?}",
                self.empty_slots
            ));
        }
        p
    }
}

/// The schedule as applied, so that a failing seed can be read and replayed.
pub fn print_schedule(seed: u64, applied: &[Applied]) {
    println!("\nschedule of seed {seed} as applied:");
    for (i, a) in applied.iter().enumerate() {
        println!(
            "  {:>3} {:>7.1}s {:<45} {}",
            i + 1,
            a.at,
            a.fault.name(),
            if a.skipped {
                "skipped".to_string()
            } else {
                a.hit.join(" ")
            }
        );
    }
}
