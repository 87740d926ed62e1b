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
//! what status to write and hands over everything to do, the next attempt's
//! pods and Service already built. The controller creates pods before it
//! writes the status that counts them, and every action is idempotent, so a
//! controller killed at any point picks up where it was (see `catch_up`)
//! without duplicating a pod or a count.

use crate::api::{Interruption, InterruptionKind, Phase, TrainingJob, TrainingJobStatus};
use crate::conditions::{ConditionType, Conditions};
use crate::defaults::Defaults;
use crate::grace::{self, SaveEvidence};
use crate::nodes::NodeFacts;
use crate::observe::{Outcome, PodView};
use crate::pods::{self, AttemptPlan};
use crate::transition::{FailReason, Transition};
use crate::validate::{self, SpecProblem};
use crate::{quantity, reports};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

/// First retry delay after an application failure; doubles per failure.
pub const BACKOFF_BASE_SECONDS: i64 = 10;
pub const BACKOFF_MAX_SECONDS: i64 = 300;
/// How long a job whose spec cannot run waits before looking again, at
/// first; a spec change wakes it at once.
pub const SPEC_RETRY_MIN_SECONDS: u64 = 10;
/// Interruptions kept in status.
pub const MAX_INTERRUPTIONS: usize = crate::api::MAX_INTERRUPTIONS;

/// The objects of one attempt, built and ready to create.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    pub number: i32,
    /// Rank 0 first.
    pub pods: Vec<Pod>,
    pub service: Option<Service>,
}

/// What a reconcile should do: the whole plan, computed once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub status: TrainingJobStatus,
    /// Create (or finish creating) these objects, before writing status.
    pub create: Option<Attempt>,
    /// Delete these live pods gracefully.
    pub delete: Vec<String>,
    /// Release the report finalizer of these pods, once status is written.
    pub release: Vec<String>,
    pub transitions: Vec<Transition>,
    pub requeue_after: Option<Duration>,
}

impl Decision {
    pub fn create_attempt(&self) -> Option<i32> {
        self.create.as_ref().map(|a| a.number)
    }
}

pub struct Inputs<'a> {
    pub job: &'a TrainingJob,
    pub pods: &'a [PodView],
    /// What makes the spec unrunnable (validation, the claim, refusals).
    pub problems: &'a [SpecProblem],
    pub now: Timestamp,
    /// The operator-wide defaults the spec may leave to it.
    pub defaults: &'a Defaults,
    /// The image the init container copies the launcher from.
    pub operator_image: &'a str,
}

/// How each rank of the current attempt stands.
#[derive(Debug)]
struct Gang<'a> {
    ranks: BTreeMap<i32, Option<&'a PodView>>,
}

/// A rank that ended, and how.
struct Ended<'a> {
    rank: i32,
    pod: Option<&'a PodView>,
    reason: String,
    message: String,
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

    /// The first rank the cluster took away; a missing pod was deleted by
    /// someone else.
    fn disrupted(&self, job: &str, attempt: i32) -> Option<Ended<'a>> {
        self.ranks.iter().find_map(|(&rank, pod)| match pod {
            None => Some(Ended {
                rank,
                pod: None,
                reason: "PodDeleted".into(),
                message: format!("pod {} disappeared", pods::pod_name(job, attempt, rank)),
            }),
            Some(p) => match &p.outcome {
                Some(Outcome::Disrupted { reason, message }) => Some(Ended {
                    rank,
                    pod: Some(p),
                    reason: reason.clone(),
                    message: message.clone(),
                }),
                _ => None,
            },
        })
    }

    /// The first rank whose trainer failed on its own. With no disruption in
    /// the gang, a trainer that says it was stopped failed too: its report
    /// cannot turn a crash into a preemption.
    fn failed(&self) -> Option<(Ended<'a>, i32)> {
        self.ranks.iter().find_map(|(&rank, pod)| {
            let p = (*pod)?;
            let (code, reason, message) = match &p.outcome {
                Some(Outcome::Failed {
                    exit_code,
                    reason,
                    message,
                }) => (*exit_code, reason.clone(), message.clone()),
                Some(Outcome::Stopped { reason, message }) => (
                    p.report.as_ref().and_then(|r| r.exit_code).unwrap_or(0),
                    reason.clone(),
                    format!("{message}, but no rank was taken away by the cluster"),
                ),
                _ => return None,
            };
            let message = if message.is_empty() {
                reason.clone()
            } else {
                format!("{reason}: {message}")
            };
            Some((
                Ended {
                    rank,
                    pod: Some(p),
                    reason,
                    message,
                },
                code,
            ))
        })
    }

    /// A rank whose node carries a cloud's termination notice. The whole
    /// gang stops now, on one deadline, so every rank saves at the same
    /// step, instead of this rank going at the end of the notice while the
    /// others train on past the checkpoint it could not join.
    fn noticed(&self) -> Option<Ended<'a>> {
        self.ranks.iter().find_map(|(&rank, pod)| {
            let p = (*pod)?;
            let (taint, who) = p.node_facts.as_ref()?.notice.as_ref()?;
            let node = p.node.as_deref().unwrap_or_default();
            (p.live && !p.deleting).then(|| Ended {
                rank,
                pod: Some(p),
                reason: "TerminationNotice".into(),
                message: format!(
                    "node {node} carries the {taint} taint ({who}): it is about to be taken away, \
                     so every rank stops now with the same deadline"
                ),
            })
        })
    }

    /// A rank whose node has not been Ready for `after`. Kubernetes' own
    /// taint-based eviction would take its pod after the same time, but
    /// only on a node in a zone that still answers (see
    /// [`crate::nodes::disrupted`]), and a gang must not wait on a rank
    /// that cannot train while the rest of its zone can.
    fn unreachable(&self, now: Timestamp, after: SignedDuration) -> Option<Ended<'a>> {
        self.unready(now, after, false).map(|(rank, p, facts)| {
            let node = p.node.as_deref().unwrap_or_default();
            Ended {
                rank,
                pod: Some(p),
                reason: "NodeUnreachable".into(),
                message: format!(
                    "node {node} has not been Ready since {} ({}); preemption.nodeUnreachableSeconds is {}s",
                    facts.unready_since(now),
                    facts.reason.as_deref().unwrap_or("no reason given"),
                    after.as_secs()
                ),
            }
        })
    }

    /// A rank that has been on a node that is not Ready for `after`, in a
    /// zone that is, or is not, disrupted.
    fn unready(
        &self,
        now: Timestamp,
        after: SignedDuration,
        zone_disrupted: bool,
    ) -> Option<(i32, &'a PodView, &'a NodeFacts)> {
        self.ranks.iter().find_map(|(&rank, pod)| {
            let p = (*pod)?;
            let facts = p.node_facts.as_ref().filter(|n| !n.ready)?;
            let due = facts.unready_since(now) + after <= now;
            (p.live && !p.deleting && due && facts.zone_disrupted == zone_disrupted)
                .then_some((rank, p, facts))
        })
    }

    /// When the next rank on a node that stopped answering is due to be
    /// taken for lost, or held for its zone.
    fn unreachable_due(&self, now: Timestamp, after: SignedDuration) -> Option<Duration> {
        let due = self.ranks.values().flatten().filter_map(|p| {
            let facts = p.node_facts.as_ref().filter(|n| !n.ready && p.live)?;
            let left = (facts.unready_since(now) + after).duration_since(now);
            (left.is_positive()).then(|| left.as_secs_f64().max(0.1))
        });
        due.reduce(f64::min).map(Duration::from_secs_f64)
    }

    fn all(&self, f: impl Fn(&PodView) -> bool) -> bool {
        self.ranks.values().all(|p| p.is_some_and(&f))
    }
}

/// Everything a phase function needs beside the decision it writes.
struct Ctx<'a, 'b> {
    inp: &'b Inputs<'a>,
    now: Time,
    name: String,
}

impl Ctx<'_, '_> {
    fn job(&self) -> &TrainingJob {
        self.inp.job
    }
}

impl Decision {
    fn conditions<'s>(&'s mut self, cx: &'s Ctx) -> Conditions<'s> {
        Conditions::new(
            &mut self.status.conditions,
            &cx.now,
            cx.job().metadata.generation,
        )
    }

    fn transition(&mut self, cx: &Ctx, t: Transition) {
        t.apply(&mut self.conditions(cx));
        self.transitions.push(t);
    }
}

pub fn decide(inp: &Inputs) -> Decision {
    let cx = Ctx {
        inp,
        now: Time(inp.now),
        name: inp.job.metadata.name.clone().unwrap_or_default(),
    };
    let mut d = Decision {
        status: inp.job.status.clone().unwrap_or_default(),
        ..Default::default()
    };
    d.status.observed_generation = inp.job.metadata.generation;
    reports::record(&mut d.status, inp.pods);
    d.release = releasable(inp.pods);
    report_unreadable(&mut d, inp.pods);
    let phase = d.status.phase.unwrap_or_default();
    if matches!(phase, Phase::Succeeded | Phase::Failed) {
        // Terminal: only make sure nothing of the job keeps running.
        d.delete = to_stop(inp.pods, inp.now);
        return d;
    }
    if spec_blocks(&mut d, &cx, phase) || catch_up(&mut d, &cx) {
        return d;
    }
    if d.status.attempt == 0 {
        start_attempt(&mut d, &cx, 1, Phase::Pending);
        return d;
    }
    match phase {
        Phase::Stopping => stopping(&mut d, &cx),
        _ => active(&mut d, &cx, phase),
    }
    d
}

/// Pods whose report status now holds: their finalizer may go.
fn releasable(pods: &[PodView]) -> Vec<String> {
    pods.iter()
        .filter(|p| p.releasable)
        .map(|p| p.name.clone())
        .collect()
}

/// Said once per pod: when its finalizer is released.
fn report_unreadable(d: &mut Decision, pods: &[PodView]) {
    for p in pods.iter().filter(|p| d.release.contains(&p.name)) {
        if let Some(error) = &p.report_error {
            d.transitions.push(Transition::ReportUnreadable {
                pod: p.name.clone(),
                error: error.clone(),
            });
        }
    }
}

/// A spec that cannot run gets SpecProblem; while no attempt runs, nothing
/// starts and any half-made gang stops. Returns whether to stop here.
fn spec_blocks(d: &mut Decision, cx: &Ctx, phase: Phase) -> bool {
    let problems = cx.inp.problems;
    if problems.is_empty() {
        d.conditions(cx).clear(ConditionType::SpecProblem);
        return false;
    }
    let message = validate::describe(problems);
    let known = crate::conditions::find(&d.status.conditions, ConditionType::SpecProblem)
        .is_some_and(|c| c.status == "True" && c.message == message);
    if known {
        // No second event for the same problem; the conditions stay.
    } else {
        d.transition(cx, Transition::SpecCannotRun { message });
    }
    let idle = d.status.attempt == 0 || phase == Phase::Stopping;
    if !idle {
        return false;
    }
    d.status.phase.get_or_insert(Phase::Pending);
    d.delete = to_stop(cx.inp.pods, cx.inp.now);
    d.requeue_after = Some(spec_retry(&d.status, cx.inp.now));
    true
}

/// Looks again after as long as the problem has lasted (10 s, then about
/// doubling, at most 5 minutes): a fixed short retry would storm the API
/// server with refused creates. A spec change wakes the job at once.
fn spec_retry(s: &TrainingJobStatus, now: Timestamp) -> Duration {
    let since = crate::conditions::find(&s.conditions, ConditionType::SpecProblem)
        .map(|c| {
            now.duration_since(c.last_transition_time.0)
                .as_secs()
                .max(0) as u64
        })
        .unwrap_or(0);
    Duration::from_secs(since.clamp(SPEC_RETRY_MIN_SECONDS, BACKOFF_MAX_SECONDS as u64))
}

/// Pods of a newer attempt than status records: a previous run of the
/// controller was creating them when it stopped. Finish that attempt.
fn catch_up(d: &mut Decision, cx: &Ctx) -> bool {
    let newest = cx.inp.pods.iter().map(|p| p.attempt).max();
    let Some(newest) = newest.filter(|a| *a > d.status.attempt) else {
        return false;
    };
    let phase = if newest == 1 {
        Phase::Pending
    } else {
        Phase::Resuming
    };
    start_attempt(d, cx, newest, phase);
    true
}

/// Pending, Running or Resuming: watch the gang.
fn active(d: &mut Decision, cx: &Ctx, phase: Phase) {
    let attempt = d.status.attempt;
    let gang = Gang::new(cx.job().spec.replicas, attempt, cx.inp.pods);
    crate::timeline::observe(&mut d.status, gang.ranks.len(), cx.inp.pods);
    let lost_after =
        SignedDuration::from_secs(cx.job().spec.preemption.node_unreachable_seconds.into());
    let disrupted = gang
        .disrupted(&cx.name, attempt)
        .or_else(|| gang.noticed())
        .or_else(|| gang.unreachable(cx.inp.now, lost_after));
    d.requeue_after = gang.unreachable_due(cx.inp.now, lost_after);
    hold_for_zone(d, cx, &gang, lost_after);
    if let Some(ended) = disrupted {
        preempted(d, cx, ended);
    } else if let Some((ended, code)) = gang.failed() {
        trainer_failed(d, cx, ended, code);
    } else if gang.all(|p| p.outcome == Some(Outcome::Completed)) {
        succeeded(d, cx);
    } else if gang.all(|p| p.running || p.outcome == Some(Outcome::Completed)) {
        if phase != Phase::Running {
            d.status.phase = Some(Phase::Running);
            let ranks = gang.ranks.len();
            d.transition(cx, Transition::Running { attempt, ranks });
        }
    } else {
        starting(d, cx, &gang);
    }
}

/// A rank on a node that stopped answering in a zone where all or most
/// nodes did: nothing is taken for lost, and the `WaitingForNode`
/// condition says why and how to release the rank.
fn hold_for_zone(d: &mut Decision, cx: &Ctx, gang: &Gang, after: SignedDuration) {
    let Some((rank, p, facts)) = gang.unready(cx.inp.now, after, true) else {
        d.conditions(cx).clear(ConditionType::WaitingForNode);
        return;
    };
    let node = p.node.as_deref().unwrap_or_default();
    let since = facts
        .since
        .map(|t| format!(" since {t}"))
        .unwrap_or_default();
    let note = format!(
        "rank {rank}'s pod {} is on node {node}, which has not been Ready{since} ({}), and \
         neither have most nodes of its zone: that looks like the control plane losing touch \
         with its nodes rather than the machines going, so, as Kubernetes' node lifecycle \
         controller evicts nothing then, no rank is taken for lost. If the machine is known \
         to be off, release it with `kubectl taint nodes {node} \
         node.kubernetes.io/out-of-service=nodeshutdown:NoExecute` or `kubectl delete node {node}`",
        p.name,
        facts.reason.as_deref().unwrap_or("no reason given"),
    );
    wait_for_node(d, cx, note);
}

/// Sets `WaitingForNode` to `note`, with its event, unless it says so
/// already.
fn wait_for_node(d: &mut Decision, cx: &Ctx, note: String) {
    let known = crate::conditions::find(&d.status.conditions, ConditionType::WaitingForNode)
        .is_some_and(|c| c.status == "True" && c.message == note);
    if !known {
        d.transition(cx, Transition::WaitingForNode { note });
    }
}

/// Not every rank runs yet. Pods a queue holds back (Kueue's scheduling
/// gate) are queued, not a stalled attempt.
///
/// The note names no count of running ranks: with a count, each rank that
/// came up rewrote the status, up to ten writes for an 8-rank gang, and at
/// 10000 jobs these were the API server's largest request kind.
fn starting(d: &mut Decision, cx: &Ctx, gang: &Gang) {
    let attempt = d.status.attempt;
    let ranks = gang.ranks.len();
    let gated = gang.ranks.values().flatten().filter(|p| p.gated).count();
    let (reason, note) = if gated > 0 {
        let note = format!(
            "attempt {attempt}: {gated} of {ranks} pods wait for admission by their queue \
             (scheduling gates)"
        );
        ("Queued", note)
    } else {
        let note = format!("attempt {attempt}: waiting for all {ranks} ranks to run");
        ("Starting", note)
    };
    d.conditions(cx)
        .set(ConditionType::Ready, false, reason, &note);
}

fn preempted(d: &mut Decision, cx: &Ctx, ended: Ended) {
    let s = &mut d.status;
    s.preemptions += 1;
    crate::ledger::count_preemption(s, &ended.reason);
    push_interruption(s, InterruptionKind::Preemption, &ended, cx.inp.now);
    crate::timeline::signalled(s, s.attempt, cx.inp.now);
    s.phase = Some(Phase::Stopping);
    let t = Transition::Preempted {
        attempt: s.attempt,
        rank: ended.rank,
        cause: ended.reason,
        message: ended.message,
        preemptions: s.preemptions,
    };
    d.transition(cx, t);
    d.delete = to_stop(cx.inp.pods, cx.inp.now);
}

/// A failure that /dev/shm being full explains: the spec's size, not the
/// trainer's code, is what to change. The reason and message say so.
fn shm_exhausted(ended: Ended, exit_code: i32) -> Ended {
    let shm = ended.pod.and_then(|p| p.report.as_ref()?.shm);
    let Some(shm) = shm.filter(|s| s.exhausted()) else {
        return Ended {
            reason: format!("ExitCode{exit_code}"),
            ..ended
        };
    };
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    // Last: interruptions keep a message's tail.
    let message = format!(
        "{}; /dev/shm was nearly full ({:.1} of {:.1} MiB in use at its peak, sampled every 200 ms) \
         when the trainer failed, so a DataLoader batch that did not fit is the likely cause: raise \
         spec.sharedMemory (its size, or the dataLoader figures it is sized from)",
        ended.message,
        mib(shm.peak_used_bytes),
        mib(shm.size_bytes)
    );
    Ended {
        reason: "SharedMemoryExhausted".into(),
        message,
        ..ended
    }
}

fn trainer_failed(d: &mut Decision, cx: &Ctx, ended: Ended, exit_code: i32) {
    let ended = shm_exhausted(ended, exit_code);
    let s = &mut d.status;
    s.failures += 1;
    let note = format!(
        "attempt {} rank {}: the trainer exited with code {exit_code} without having been taken away \
         (failure {} of backoffLimit {}): {}",
        s.attempt,
        ended.rank,
        s.failures,
        cx.job().spec.backoff_limit,
        ended.message
    );
    let at = ended.pod.and_then(|p| p.finished_at).unwrap_or(cx.inp.now);
    push_interruption(s, InterruptionKind::Failure, &ended, at);
    crate::timeline::signalled(s, s.attempt, cx.inp.now);
    d.delete = to_stop(cx.inp.pods, cx.inp.now);
    if s.failures > cx.job().spec.backoff_limit {
        fail(d, cx, FailReason::BackoffLimitExceeded, note);
    } else {
        s.phase = Some(Phase::Stopping);
        d.transition(cx, Transition::TrainerFailed { note });
    }
}

fn succeeded(d: &mut Decision, cx: &Ctx) {
    let s = &mut d.status;
    s.phase = Some(Phase::Succeeded);
    let step = s
        .last_checkpoint
        .as_ref()
        .map(|c| format!(" (last checkpoint at step {})", c.step))
        .unwrap_or_default();
    let note = format!(
        "every rank's trainer exited 0 in attempt {}{step}",
        s.attempt
    );
    d.transition(cx, Transition::Succeeded { note });
}

/// Stopping: no overlap. The next attempt starts only when no pod of any
/// earlier one can still run, so two pods of one rank never write the same
/// checkpoint directory.
fn stopping(d: &mut Decision, cx: &Ctx) {
    if cx.inp.pods.iter().any(|p| p.live) {
        d.delete = to_stop(cx.inp.pods, cx.inp.now);
        wait_for_nodes(d, cx);
        return;
    }
    d.conditions(cx).clear(ConditionType::WaitingForNode);
    let attempt = d.status.attempt;
    crate::timeline::old_pods_gone(&mut d.status, attempt, cx.inp.now);
    let s = &d.status;
    let last = s.interruptions.last().filter(|i| i.attempt == s.attempt);
    let max = cx.job().spec.preemption.max_preemptions;
    if last.is_some_and(|i| i.kind == InterruptionKind::Preemption) && s.preemptions > max {
        let note = format!("{} preemptions exceed maxPreemptions {max}", s.preemptions);
        fail(d, cx, FailReason::MaxPreemptionsExceeded, note);
        return;
    }
    // Backoff runs from when the trainer failed, as status recorded it: the
    // failed pod itself may be gone by now.
    let since = last.and_then(|i| i.time.as_ref()).map(|t| t.0);
    let failure = last.is_some_and(|i| i.kind == InterruptionKind::Failure);
    let failure_wait = failure.then(|| backoff_seconds(s.failures));
    let wait = failure_wait.max(no_progress(d, cx));
    if let (Some(since), Some(wait)) = (since, wait) {
        let ready_at = since + SignedDuration::from_secs(wait);
        if cx.inp.now < ready_at {
            let left = ready_at.duration_since(cx.inp.now).as_secs_f64().max(0.1);
            d.requeue_after = Some(Duration::from_secs_f64(left));
            return;
        }
    }
    let next = d.status.attempt + 1;
    start_attempt(d, cx, next, Phase::Resuming);
}

/// Sets or clears NoProgress for the attempt that just ended; returns the
/// backoff it calls for.
fn no_progress(d: &mut Decision, cx: &Ctx) -> Option<i64> {
    let Some(wait) = crate::ledger::no_progress_backoff_seconds(&d.status) else {
        d.conditions(cx).clear(ConditionType::NoProgress);
        return None;
    };
    let s = &d.status;
    let from = s
        .resumed_from_step
        .map_or("scratch".to_string(), |step| format!("step {step}"));
    let note = format!(
        "{} attempts in a row ended without a checkpoint newer than {from}; attempt {} waits {wait}s. \
         Check that the trainer saves before the grace period ({}s) runs out, and how often it is preempted",
        crate::ledger::stalled(s),
        s.attempt + 1,
        s.grace_period_seconds.unwrap_or_default(),
    );
    let known = crate::conditions::find(&s.conditions, ConditionType::NoProgress)
        .is_some_and(|c| c.status == "True" && c.message == note);
    if !known {
        d.transition(cx, Transition::NoProgress { note });
    }
    Some(wait)
}

/// Old pods left on nodes that stopped answering. Their trainers may still
/// be writing the checkpoint, so the next attempt waits; say for which pod,
/// on which node, and how an administrator who knows the machine is off
/// releases it.
fn wait_for_nodes(d: &mut Decision, cx: &Ctx) {
    let stuck: Vec<&PodView> = cx
        .inp
        .pods
        .iter()
        .filter(|p| p.live && p.node_facts.as_ref().is_some_and(|n| !n.ready))
        .collect();
    let Some(first) = stuck.first() else {
        d.conditions(cx).clear(ConditionType::WaitingForNode);
        return;
    };
    let node = first.node.as_deref().unwrap_or_default();
    let facts = first.node_facts.clone().unwrap_or_default();
    let since = facts
        .since
        .map(|t| format!(" since {t}"))
        .unwrap_or_default();
    let why = facts.reason.map(|r| format!(" ({r})")).unwrap_or_default();
    let more = match stuck.len() {
        1 => String::new(),
        n => format!(" and {} more pods", n - 1),
    };
    let note = format!(
        "attempt {} waits for pod {}{more} on node {node}, which has not answered{since}{why}: \
         its trainer may still be writing the checkpoint. Once the machine is known to be off, \
         release it with `kubectl taint nodes {node} node.kubernetes.io/out-of-service=nodeshutdown:NoExecute` \
         or `kubectl delete node {node}`",
        d.status.attempt + 1,
        first.name,
    );
    wait_for_node(d, cx, note);
}

fn fail(d: &mut Decision, cx: &Ctx, reason: FailReason, note: String) {
    d.status.phase = Some(Phase::Failed);
    d.transition(cx, Transition::Failed { reason, note });
}

/// Sizes the grace period from what was measured, builds the attempt's
/// objects and starts it.
fn start_attempt(d: &mut Decision, cx: &Ctx, attempt: i32, phase: Phase) {
    let basis = size_grace(d, cx);
    let plan = plan(cx, &d.status, attempt);
    let built = pods::build_pods(cx.job(), &plan).map(|pods| Attempt {
        number: attempt,
        pods,
        service: pods::build_service(cx.job()),
    });
    let attempt_objects = match built {
        Ok(a) => a,
        // Validation builds rank 0 the same way, so only a rank it did not
        // build can get here: say so rather than count missing pods later.
        Err(e) => {
            let message = validate::describe(&[SpecProblem::Template(e)]);
            d.transition(cx, Transition::SpecCannotRun { message });
            d.requeue_after = Some(spec_retry(&d.status, cx.inp.now));
            return;
        }
    };
    let s = &mut d.status;
    if attempt > 1 && attempt > s.attempt {
        crate::ledger::next_attempt(s);
        crate::timeline::created(s, attempt - 1, cx.inp.now);
    }
    s.attempt = attempt;
    s.phase = Some(phase);
    let resume = s
        .last_checkpoint
        .as_ref()
        .map(|c| format!(", resuming from step {}", c.step))
        .unwrap_or_default();
    let note = format!(
        "attempt {attempt} with a {}s grace period (from {basis}){resume}",
        plan.grace_seconds
    );
    let t = if attempt == 1 {
        Transition::Started { note }
    } else {
        Transition::Resuming { note }
    };
    d.transition(cx, t);
    d.create = Some(attempt_objects);
}

/// Everything about the attempt that is decided outside the pod builder.
fn plan(cx: &Ctx, s: &TrainingJobStatus, attempt: i32) -> AttemptPlan {
    AttemptPlan {
        attempt,
        grace_seconds: s
            .grace_period_seconds
            .unwrap_or(i64::from(cx.inp.defaults.notice_seconds(cx.job()))),
        checkpoint_interval_seconds: s.recommended_checkpoint_interval_seconds,
        shm_bytes: validate::shm_bytes(cx.job()).ok().flatten(),
        operator_image: cx.inp.operator_image.to_string(),
        spot: cx.inp.defaults.spot(cx.job()),
    }
}

/// Writes the grace period and checkpoint interval into status, with the
/// GraceExceedsNotice condition; returns what the grace was sized from.
fn size_grace(d: &mut Decision, cx: &Ctx) -> String {
    let job = cx.job();
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
    let notice = i64::from(cx.inp.defaults.notice_seconds(job));
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
            .map(|t| cx.inp.now.duration_since(t.0).as_secs_f64())
            .unwrap_or(0.0);
        let mtbf = if s.preemptions > 0 {
            age / f64::from(s.preemptions)
        } else {
            grace::DEFAULT_MTBF_SECONDS
        };
        grace::checkpoint_interval_seconds(save, mtbf)
    });
    let interval = s.recommended_checkpoint_interval_seconds;
    match (g.short_by_seconds, g.needed_seconds) {
        (Some(short), Some(needed)) => {
            let interval = interval
                .map(|i| format!("; checkpoint every {i}s (exported as TJ_CHECKPOINT_INTERVAL_SECONDS) to bound the loss instead"))
                .unwrap_or_default();
            let note = format!(
                "a save needs {needed}s by {}, {short}s more than the {notice}s preemption notice{interval}",
                g.basis
            );
            d.conditions(cx).set(
                ConditionType::GraceExceedsNotice,
                true,
                "SaveLongerThanNotice",
                &note,
            );
        }
        _ => d.conditions(cx).clear(ConditionType::GraceExceedsNotice),
    }
    g.basis.to_string()
}

fn push_interruption(
    s: &mut TrainingJobStatus,
    kind: InterruptionKind,
    ended: &Ended,
    time: Timestamp,
) {
    s.interruptions.push(Interruption {
        attempt: s.attempt,
        kind,
        rank: ended.rank,
        reason: ended.reason.clone(),
        message: crate::text::tail(&ended.message, 300),
        steps_lost: None,
        time: Some(Time(time)),
        timeline: None,
    });
    let excess = s.interruptions.len().saturating_sub(MAX_INTERRUPTIONS);
    s.interruptions.drain(..excess);
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
