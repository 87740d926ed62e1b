//! The job's lifecycle as an explicit state machine:
//!
//! ```text
//! Pending --all ranks running--> Running --all ranks completed--> Succeeded
//!    |                              |
//!    +--a rank disrupted/failed-----+--> Stopping --every old pod gone--> Resuming --running--> Running
//!                                           |                                (next attempt)
//!                                           +--backoffLimit/maxPreemptions exhausted--> Failed
//! ```
//!
//! `decide` is pure: from the job, its status and the pods it sees, it says
//! what status to write and what to do. Status is written before acting, and
//! every action is idempotent, so a controller killed at any point picks up
//! where it was without duplicating a pod or a count.

use crate::api::{
    CheckpointStatus, Interruption, InterruptionKind, Phase, SaveStatus, TrainingJob,
    TrainingJobStatus, MAX_INTERRUPTIONS,
};
use crate::conditions::{self, FAILED, GRACE_EXCEEDS_NOTICE, READY, SPEC_PROBLEM, SUCCEEDED};
use crate::defaults::Defaults;
use crate::grace::{self, SaveEvidence};
use crate::observe::{Outcome, PodView};
use crate::quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// First retry delay after an application failure; doubles per failure.
pub const BACKOFF_BASE_SECONDS: i64 = 10;
pub const BACKOFF_MAX_SECONDS: i64 = 300;

/// What a reconcile should do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub status: TrainingJobStatus,
    /// Create (or finish creating) the pods of this attempt.
    pub create_attempt: Option<i32>,
    /// Delete these live pods gracefully.
    pub delete: Vec<String>,
    /// Events for the transitions made: (warning?, reason, note).
    pub events: Vec<(bool, String, String)>,
    pub requeue_after: Option<Duration>,
}

pub struct Inputs<'a> {
    pub job: &'a TrainingJob,
    pub pods: &'a [PodView],
    /// What the schema could not catch and makes the spec unrunnable.
    pub problems: &'a [String],
    pub now: Timestamp,
    /// The operator-wide defaults the spec may leave to it.
    pub defaults: &'a Defaults,
}

/// How each rank of the current attempt stands.
#[derive(Debug)]
struct Gang<'a> {
    ranks: BTreeMap<i32, Option<&'a PodView>>,
}

impl<'a> Gang<'a> {
    fn new(replicas: i32, attempt: i32, pods: &'a [PodView]) -> Self {
        let mut ranks: BTreeMap<i32, Option<&PodView>> =
            (0..replicas.max(1)).map(|r| (r, None)).collect();
        for p in pods.iter().filter(|p| p.attempt == attempt) {
            ranks.insert(p.rank, Some(p));
        }
        Self { ranks }
    }

    /// The first disrupted rank; a missing pod was deleted by someone else.
    fn disrupted(&self, job: &str, attempt: i32) -> Option<(i32, String, String)> {
        self.ranks.iter().find_map(|(rank, pod)| match pod {
            None => Some((
                *rank,
                "PodDeleted".into(),
                format!(
                    "pod {} disappeared",
                    crate::pods::pod_name(job, attempt, *rank)
                ),
            )),
            Some(p) => match &p.outcome {
                Some(Outcome::Disrupted { reason, message }) => {
                    Some((*rank, reason.clone(), message.clone()))
                }
                _ => None,
            },
        })
    }

    fn failed(&self) -> Option<(i32, &'a PodView, i32, String)> {
        self.ranks.iter().find_map(|(rank, pod)| {
            let p = (*pod)?;
            match &p.outcome {
                Some(Outcome::Failed {
                    exit_code,
                    reason,
                    message,
                }) => Some((
                    *rank,
                    p,
                    *exit_code,
                    if message.is_empty() {
                        reason.clone()
                    } else {
                        format!("{reason}: {message}")
                    },
                )),
                _ => None,
            }
        })
    }

    fn all(&self, f: impl Fn(&PodView) -> bool) -> bool {
        self.ranks.values().all(|p| p.is_some_and(&f))
    }
}

pub fn decide(inp: &Inputs) -> Decision {
    let job = inp.job;
    let name = job.metadata.name.clone().unwrap_or_default();
    let generation = job.metadata.generation;
    let now = Time(inp.now);
    let mut d = Decision {
        status: job.status.clone().unwrap_or_default(),
        ..Default::default()
    };
    let s = &mut d.status;
    s.observed_generation = generation;
    record_reports(s, inp.pods);
    let phase = s.phase.unwrap_or_default();

    if matches!(phase, Phase::Succeeded | Phase::Failed) {
        // Terminal: only make sure nothing of the job keeps running.
        d.delete = to_stop(inp.pods, inp.now);
        return d;
    }

    // Pods of a newer attempt than status records: a previous run of the
    // controller was creating them when it stopped. Finish that attempt.
    if let Some(newest) = inp
        .pods
        .iter()
        .map(|p| p.attempt)
        .max()
        .filter(|a| *a > s.attempt)
    {
        let phase = if newest == 1 {
            Phase::Pending
        } else {
            Phase::Resuming
        };
        start_attempt(&mut d, job, inp, newest, phase);
        return d;
    }

    if !inp.problems.is_empty() {
        let message = inp.problems.join("; ");
        conditions::set(
            &mut s.conditions,
            SPEC_PROBLEM,
            true,
            "SpecCannotRun",
            &message,
            &now,
            generation,
        );
        conditions::set(
            &mut s.conditions,
            READY,
            false,
            "SpecCannotRun",
            &message,
            &now,
            generation,
        );
        if s.attempt == 0 || phase == Phase::Stopping {
            // Nothing runs and nothing will until the spec (or a missing
            // object such as the claim) changes: look again now and then.
            if s.phase.is_none() {
                s.phase = Some(Phase::Pending);
                d.events.push((true, "SpecCannotRun".into(), message));
            }
            d.requeue_after = Some(Duration::from_secs(30));
            return d;
        }
    } else {
        conditions::clear(&mut s.conditions, SPEC_PROBLEM);
    }

    if s.attempt == 0 {
        start_attempt(&mut d, job, inp, 1, Phase::Pending);
        return d;
    }

    let gang = Gang::new(job.spec.replicas, d.status.attempt, inp.pods);
    let s = &mut d.status;
    match phase {
        Phase::Pending | Phase::Running | Phase::Resuming => {
            if let Some((rank, reason, message)) = gang.disrupted(&name, s.attempt) {
                s.preemptions += 1;
                push_interruption(
                    s,
                    InterruptionKind::Preemption,
                    rank,
                    &reason,
                    &message,
                    inp.now,
                );
                s.phase = Some(Phase::Stopping);
                let note = format!(
                    "attempt {} rank {rank} preempted ({reason}): {message}; stopping the gang (preemption {})",
                    s.attempt, s.preemptions
                );
                conditions::set(
                    &mut s.conditions,
                    READY,
                    false,
                    "Preempted",
                    &note,
                    &now,
                    generation,
                );
                d.events.push((true, "Preempted".into(), note));
                d.delete = to_stop(inp.pods, inp.now);
            } else if let Some((rank, pod, exit_code, why)) = gang.failed() {
                s.failures += 1;
                let note = format!(
                    "attempt {} rank {rank}: the trainer exited with code {exit_code} without having been signalled \
                     (failure {} of backoffLimit {}): {why}",
                    s.attempt, s.failures, job.spec.backoff_limit
                );
                push_interruption(
                    s,
                    InterruptionKind::Failure,
                    rank,
                    &format!("ExitCode{exit_code}"),
                    &why,
                    pod.finished_at.unwrap_or(inp.now),
                );
                d.delete = to_stop(inp.pods, inp.now);
                if s.failures > job.spec.backoff_limit {
                    fail(&mut d, "BackoffLimitExceeded", &note, &now, generation);
                } else {
                    s.phase = Some(Phase::Stopping);
                    conditions::set(
                        &mut s.conditions,
                        READY,
                        false,
                        "TrainerFailed",
                        &note,
                        &now,
                        generation,
                    );
                    d.events.push((true, "TrainerFailed".into(), note));
                }
            } else if gang.all(|p| p.outcome == Some(Outcome::Completed)) {
                s.phase = Some(Phase::Succeeded);
                let step = s
                    .last_checkpoint
                    .as_ref()
                    .map(|c| format!(" (last checkpoint at step {})", c.step));
                let note = format!(
                    "every rank's trainer exited 0 in attempt {}{}",
                    s.attempt,
                    step.unwrap_or_default()
                );
                conditions::set(
                    &mut s.conditions,
                    SUCCEEDED,
                    true,
                    "Completed",
                    &note,
                    &now,
                    generation,
                );
                conditions::set(
                    &mut s.conditions,
                    READY,
                    false,
                    "Completed",
                    &note,
                    &now,
                    generation,
                );
                d.events.push((false, "Succeeded".into(), note));
            } else if gang.all(|p| p.running || p.outcome == Some(Outcome::Completed)) {
                if phase != Phase::Running {
                    s.phase = Some(Phase::Running);
                    let note = format!(
                        "attempt {}: all {} ranks running",
                        s.attempt,
                        gang.ranks.len()
                    );
                    conditions::set(
                        &mut s.conditions,
                        READY,
                        true,
                        "Running",
                        &note,
                        &now,
                        generation,
                    );
                    d.events.push((false, "Running".into(), note));
                }
            } else {
                let running = gang
                    .ranks
                    .values()
                    .filter(|p| p.is_some_and(|p| p.running))
                    .count();
                let note = format!(
                    "attempt {}: {running} of {} ranks running",
                    s.attempt,
                    gang.ranks.len()
                );
                conditions::set(
                    &mut s.conditions,
                    READY,
                    false,
                    "Starting",
                    &note,
                    &now,
                    generation,
                );
            }
        }
        Phase::Stopping => {
            // No overlap: the next attempt starts only when no pod of any
            // earlier one can still run, so two pods of one rank never write
            // the same checkpoint directory.
            let still = live_pods(inp.pods);
            if !still.is_empty() {
                d.delete = to_stop(inp.pods, inp.now);
                return d;
            }
            let last = s
                .interruptions
                .last()
                .filter(|i| i.attempt == s.attempt)
                .map(|i| i.kind);
            if last == Some(InterruptionKind::Preemption)
                && s.preemptions > job.spec.preemption.max_preemptions
            {
                let note = format!(
                    "{} preemptions exceed maxPreemptions {}",
                    s.preemptions, job.spec.preemption.max_preemptions
                );
                fail(&mut d, "MaxPreemptionsExceeded", &note, &now, generation);
                return d;
            }
            // Backoff runs from when the trainer failed, as status recorded
            // it: the failed pod itself may be gone by now.
            let failed_at = s
                .interruptions
                .last()
                .filter(|i| i.attempt == s.attempt && i.kind == InterruptionKind::Failure)
                .and_then(|i| i.time.as_ref())
                .map(|t| t.0);
            if let Some(since) = failed_at {
                let ready_at = since + SignedDuration::from_secs(backoff_seconds(s.failures));
                if inp.now < ready_at {
                    let left = ready_at.duration_since(inp.now).as_secs_f64().max(0.1);
                    d.requeue_after = Some(Duration::from_secs_f64(left));
                    return d;
                }
            }
            let next = s.attempt + 1;
            start_attempt(&mut d, job, inp, next, Phase::Resuming);
        }
        Phase::Succeeded | Phase::Failed => unreachable!("handled above"),
    }
    d
}

fn fail(d: &mut Decision, reason: &str, note: &str, now: &Time, generation: Option<i64>) {
    let s = &mut d.status;
    s.phase = Some(Phase::Failed);
    conditions::set(
        &mut s.conditions,
        FAILED,
        true,
        reason,
        note,
        now,
        generation,
    );
    conditions::set(
        &mut s.conditions,
        READY,
        false,
        reason,
        note,
        now,
        generation,
    );
    d.events.push((true, reason.into(), note.into()));
}

/// Sizes the grace period from what was measured and starts `attempt`.
fn start_attempt(d: &mut Decision, job: &TrainingJob, inp: &Inputs, attempt: i32, phase: Phase) {
    let now = Time(inp.now);
    let generation = job.metadata.generation;
    let s = &mut d.status;
    let evidence = SaveEvidence {
        measured_p95_seconds: s.save.as_ref().and_then(|v| v.p95_seconds),
        last_bytes: s
            .last_checkpoint
            .as_ref()
            .and_then(|c| c.bytes)
            .map(|b| b.max(0) as u64),
        probe_bytes_per_second: s
            .save
            .as_ref()
            .and_then(|v| v.probe_bytes_per_second)
            .map(|b| b as f64),
        size_hint_bytes: job
            .spec
            .checkpoint
            .size_hint
            .as_deref()
            .and_then(|q| quantity::bytes(q).ok()),
    };
    let notice = i64::from(inp.defaults.notice_seconds(job));
    let g = grace::grace(
        &evidence,
        notice,
        i64::from(job.spec.preemption.min_grace_seconds),
    );
    s.grace_period_seconds = Some(g.seconds);
    s.recommended_checkpoint_interval_seconds = g.save_seconds.map(|save| {
        let age = job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| inp.now.duration_since(t.0).as_secs_f64())
            .unwrap_or(0.0);
        let mtbf = if s.preemptions > 0 {
            age / f64::from(s.preemptions)
        } else {
            grace::DEFAULT_MTBF_SECONDS
        };
        grace::checkpoint_interval_seconds(save, mtbf)
    });
    match (g.short_by_seconds, g.needed_seconds) {
        (Some(short), Some(needed)) => {
            let interval = s
                .recommended_checkpoint_interval_seconds
                .map(|i| format!("; checkpoint every {i}s (exported as TJ_CHECKPOINT_INTERVAL_SECONDS) to bound the loss instead"))
                .unwrap_or_default();
            let note = format!(
                "a save needs {needed}s by {}, {short}s more than the {notice}s preemption notice{interval}",
                g.basis
            );
            conditions::set(
                &mut s.conditions,
                GRACE_EXCEEDS_NOTICE,
                true,
                "SaveLongerThanNotice",
                &note,
                &now,
                generation,
            );
        }
        _ => conditions::clear(&mut s.conditions, GRACE_EXCEEDS_NOTICE),
    }
    s.attempt = attempt;
    s.phase = Some(phase);
    let resume = s
        .last_checkpoint
        .as_ref()
        .map(|c| format!(", resuming from step {}", c.step))
        .unwrap_or_default();
    let note = format!(
        "attempt {attempt} with a {}s grace period (from {}){resume}",
        g.seconds, g.basis
    );
    conditions::set(
        &mut s.conditions,
        READY,
        false,
        "Starting",
        &note,
        &now,
        generation,
    );
    d.events.push((
        false,
        if attempt == 1 { "Started" } else { "Resuming" }.into(),
        note,
    ));
    d.create_attempt = Some(attempt);
}

/// Folds what the launchers reported into status: idempotent, so a
/// reconcile that sees the same pods twice records the same thing.
fn record_reports(s: &mut TrainingJobStatus, pods: &[PodView]) {
    let mut by_attempt: Vec<&PodView> = pods.iter().filter(|p| p.report.is_some()).collect();
    by_attempt.sort_by_key(|p| (p.attempt, p.rank));
    for p in by_attempt {
        let r = p.report.as_ref().expect("filtered");
        if let Some(c) = &r.last_checkpoint {
            let newer = s
                .last_checkpoint
                .as_ref()
                .is_none_or(|old| (c.step as i64) > old.step);
            if newer {
                s.last_checkpoint = Some(CheckpointStatus {
                    step: c.step.min(i64::MAX as u64) as i64,
                    path: c.path.clone(),
                    bytes: Some(c.bytes.min(i64::MAX as u64) as i64),
                    save_seconds: r.saves.as_ref().and_then(|v| v.last_seconds),
                    time: Timestamp::from_millisecond(c.at_unix_ms.min(i64::MAX as u64) as i64)
                        .ok()
                        .map(Time),
                });
            }
        }
        let save = s.save.get_or_insert_with(SaveStatus::default);
        if let Some(v) = r.saves.as_ref().filter(|v| v.count > 0) {
            save.count = i64::from(v.count);
            save.p95_seconds = v.p95_seconds.or(v.last_seconds).or(save.p95_seconds);
            save.bytes_per_second = v
                .bytes_per_second
                .map(|b| b as i64)
                .or(save.bytes_per_second);
        }
        if let Some(probe) = &r.probe {
            save.probe_bytes_per_second = Some(probe.bytes_per_second as i64);
        }
        if *save == SaveStatus::default() {
            s.save = None;
        }
        if let Some(last) = r.last_step {
            let saved = [
                r.last_checkpoint.as_ref().map(|c| c.step),
                r.resumed_from.as_ref().map(|c| c.step),
            ]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0);
            let lost = last.saturating_sub(saved).min(i64::MAX as u64) as i64;
            // The slowest rank decides what the gang redoes.
            if let Some(i) = s
                .interruptions
                .iter_mut()
                .rev()
                .find(|i| i.attempt == p.attempt)
            {
                i.steps_lost = Some(i.steps_lost.map_or(lost, |old| old.max(lost)));
            }
        }
    }
}

fn push_interruption(
    s: &mut TrainingJobStatus,
    kind: InterruptionKind,
    rank: i32,
    reason: &str,
    message: &str,
    time: Timestamp,
) {
    s.interruptions.push(Interruption {
        attempt: s.attempt,
        kind,
        rank,
        reason: reason.into(),
        message: crate::observe::tail(message, 300),
        steps_lost: None,
        time: Some(Time(time)),
    });
    let excess = s.interruptions.len().saturating_sub(MAX_INTERRUPTIONS);
    s.interruptions.drain(..excess);
}

fn live_pods(pods: &[PodView]) -> Vec<&PodView> {
    pods.iter().filter(|p| p.live).collect()
}

/// How long a pod whose trainer has exited may keep running (a sidecar)
/// before the operator stops it. Until then it is left alone, so a failed
/// pod stays for `kubectl logs` and its own phase change ends it.
pub const SIDECAR_GRACE_SECONDS: i64 = 30;

/// Live pods to delete: every one whose trainer still runs, and those whose
/// trainer exited but that something else keeps alive.
fn to_stop(pods: &[PodView], now: Timestamp) -> Vec<String> {
    pods.iter()
        .filter(|p| p.live && !p.deleting)
        .filter(|p| match p.finished_at {
            None => true,
            Some(t) => now.duration_since(t).as_secs() >= SIDECAR_GRACE_SECONDS,
        })
        .map(|p| p.name.clone())
        .collect()
}

/// 10 s, 20 s, 40 s ... capped at 5 minutes.
pub fn backoff_seconds(failures: i32) -> i64 {
    let exp = (failures.max(1) - 1).min(20) as u32;
    (BACKOFF_BASE_SECONDS.saturating_mul(1i64 << exp)).min(BACKOFF_MAX_SECONDS)
}

#[cfg(test)]
mod tests;
