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
