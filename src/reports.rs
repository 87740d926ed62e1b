//! What the launchers reported, folded into status. A report is the
//! trainer's side's word: it can tell the operator about checkpoints and
//! saves, but no single rank can shrink the grace period of the gang.
//! Idempotent, so a reconcile that sees the same pods twice records the
//! same thing.

use crate::api::{CheckpointStatus, SaveStatus, TrainingJobStatus};
use crate::observe::PodView;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use launcher::report::Report;

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

pub fn record(s: &mut TrainingJobStatus, pods: &[PodView]) {
    let mut reports: Vec<(&PodView, &Report)> = pods
        .iter()
        .filter_map(|p| Some((p, p.report.as_ref()?)))
        .collect();
    reports.sort_by_key(|(p, _)| (p.attempt, p.rank));
    for (p, r) in &reports {
        record_checkpoint(s, r);
        record_steps_lost(s, p.attempt, r);
        record_handed_over(s, p.attempt, r);
        let first = r.first_step_at_unix_ms.map(clamp);
        if let Some(at) = first.and_then(|ms| Timestamp::from_millisecond(ms).ok()) {
            crate::timeline::first_step(s, p.attempt, at);
        }
    }
    record_saves(s, &reports);
}

fn record_checkpoint(s: &mut TrainingJobStatus, r: &Report) {
    let Some(c) = &r.last_checkpoint else {
        return;
    };
    if s.last_checkpoint
        .as_ref()
        .is_some_and(|old| clamp(c.step) <= old.step)
    {
        return;
    }
    s.last_checkpoint = Some(CheckpointStatus {
        step: clamp(c.step),
        path: c.path.clone(),
        bytes: Some(clamp(c.bytes)),
        save_seconds: r.saves.as_ref().and_then(|v| v.last_seconds),
        time: Timestamp::from_millisecond(clamp(c.at_unix_ms))
            .ok()
            .map(Time),
    });
}

/// Save figures across ranks. The slowest save any rank measured sizes the
/// grace period, and it never shrinks for the life of the job: pods are
/// released one by one once recorded, so a later reconcile may see only the
/// fast rank, and a grace period is an upper bound anyway (a trainer that
/// has saved exits at once).
fn record_saves(s: &mut TrainingJobStatus, reports: &[(&PodView, &Report)]) {
    let save = s.save.get_or_insert_with(SaveStatus::default);
    for (_, r) in reports {
        if let Some(v) = r.saves.as_ref().filter(|v| v.count > 0) {
            save.count = save.count.max(i64::from(v.count));
            let p95 = v.p95_seconds.or(v.last_seconds).filter(|x| x.is_finite());
            save.p95_seconds = match (save.p95_seconds, p95) {
                (Some(old), Some(new)) => Some(old.max(new)),
                (old, new) => new.or(old),
            };
            if let Some(bps) = v.bytes_per_second.filter(|b| b.is_finite()) {
                let bps = bps.max(0.0) as i64;
                save.bytes_per_second = Some(save.bytes_per_second.map_or(bps, |o| o.min(bps)));
            }
        }
        if let Some(probe) = &r.probe {
            save.probe_bytes_per_second = Some(probe.bytes_per_second as i64);
        }
    }
    if *save == SaveStatus::default() {
        s.save = None;
    }
}

/// The slowest rank decides what the gang redoes.
fn record_steps_lost(s: &mut TrainingJobStatus, attempt: i32, r: &Report) {
    let Some(last) = r.last_step else {
        return;
    };
    let saved = [
        r.last_checkpoint.as_ref().map(|c| c.step),
        r.resumed_from.as_ref().map(|c| c.step),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or(0);
    let lost = clamp(last.saturating_sub(saved));
    if let Some(i) = s
        .interruptions
        .iter_mut()
        .rev()
        .find(|i| i.attempt == attempt)
    {
        let old = i.steps_lost;
        let new = old.map_or(lost, |old| old.max(lost));
        i.steps_lost = Some(new);
        crate::ledger::count_steps_lost(s, old, new);
    }
}

/// Steps lost by an earlier attempt that never reported (its node was
/// lost): the step it reached, as its launcher left it on the volume, less
/// the checkpoint this attempt resumed from. Only where nothing better is
/// known, and only for an earlier attempt of this job.
fn record_handed_over(s: &mut TrainingJobStatus, attempt: i32, r: &Report) {
    let Some(prev) = &r.previous else {
        return;
    };
    let prev_attempt = i32::try_from(prev.attempt).unwrap_or(i32::MAX);
    if prev_attempt >= attempt {
        return;
    }
    let resumed = r.resumed_from.as_ref().map_or(0, |c| c.step);
    let lost = clamp(prev.step.saturating_sub(resumed));
    let Some(i) = s
        .interruptions
        .iter_mut()
        .rev()
        .find(|i| i.attempt == prev_attempt && i.steps_lost.is_none())
    else {
        return;
    };
    i.steps_lost = Some(lost);
    crate::ledger::count_steps_lost(s, None, lost);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Interruption, InterruptionKind};
    use launcher::handover::Handover;
    use launcher::report::CheckpointRef;

    fn lost_attempt(attempt: i32) -> Interruption {
        Interruption {
            attempt,
            kind: InterruptionKind::Preemption,
            rank: 0,
            reason: "DeletionByPodGC".into(),
            message: String::new(),
            steps_lost: None,
            time: None,
            timeline: None,
        }
    }

    #[test]
    fn an_attempt_that_never_reported_has_its_loss_from_the_next_ones_handover() {
        let mut s = TrainingJobStatus::default();
        s.interruptions.push(lost_attempt(1));
        let mut r = Report::new(Some(2));
        r.resumed_from = Some(CheckpointRef {
            step: 50,
            path: "/c/step-50".into(),
        });
        r.previous = Some(Handover {
            attempt: 1,
            step: 83,
        });
        let pod = PodView {
            attempt: 2,
            report: Some(r.clone()),
            ..Default::default()
        };
        record(&mut s, std::slice::from_ref(&pod));
        record(&mut s, std::slice::from_ref(&pod));
        assert_eq!(s.interruptions[0].steps_lost, Some(33));
        assert_eq!(s.steps_lost, 33, "counted once");
        // A record claiming to come from this attempt or a later one is ignored.
        let mut s = TrainingJobStatus::default();
        s.interruptions.push(lost_attempt(2));
        r.previous = Some(Handover {
            attempt: 2,
            step: 900,
        });
        let pod = PodView {
            attempt: 2,
            report: Some(r),
            ..Default::default()
        };
        record(&mut s, &[pod]);
        assert_eq!((s.interruptions[0].steps_lost, s.steps_lost), (None, 0));
    }
}
