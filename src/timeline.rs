//! Where the time to resume goes: for each interruption, when every rank
//! was signalled, when the old pods were gone, and when the next attempt's
//! pods were created, scheduled, running and past their first step. Each
//! mark is set once, from what the operator sees, so a reconcile that runs
//! twice writes the same thing.

use crate::api::{ResumeTimeline, TrainingJobStatus};
use crate::observe::PodView;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The timeline of the interruption that ended `attempt`.
fn of(s: &mut TrainingJobStatus, attempt: i32) -> Option<&mut ResumeTimeline> {
    let i = s
        .interruptions
        .iter_mut()
        .rev()
        .find(|i| i.attempt == attempt)?;
    Some(i.timeline.get_or_insert_with(ResumeTimeline::default))
}

fn mark(slot: &mut Option<Time>, at: Timestamp) {
    slot.get_or_insert(Time(at));
}

pub fn signalled(s: &mut TrainingJobStatus, attempt: i32, now: Timestamp) {
    if let Some(t) = of(s, attempt) {
        mark(&mut t.signalled, now);
    }
}

pub fn old_pods_gone(s: &mut TrainingJobStatus, attempt: i32, now: Timestamp) {
    if let Some(t) = of(s, attempt) {
        mark(&mut t.old_pods_gone, now);
    }
}

/// The next attempt (`ended + 1`) is being created now.
pub fn created(s: &mut TrainingJobStatus, ended: i32, now: Timestamp) {
    if let Some(t) = of(s, ended) {
        mark(&mut t.created, now);
    }
}

/// Scheduled and running marks of the current attempt: the latest rank's,
/// once every rank has one.
pub fn observe(s: &mut TrainingJobStatus, ranks: usize, pods: &[PodView]) {
    let attempt = s.attempt;
    let current: Vec<&PodView> = pods.iter().filter(|p| p.attempt == attempt).collect();
    let latest = |f: fn(&PodView) -> Option<Timestamp>| -> Option<Timestamp> {
        let marks: Vec<Timestamp> = current.iter().filter_map(|p| f(p)).collect();
        (ranks > 0 && marks.len() >= ranks).then(|| marks.into_iter().max())?
    };
    let scheduled = latest(|p| p.scheduled_at);
    let running = latest(|p| p.started_at);
    let Some(t) = of(s, attempt - 1) else { return };
    if t.created.is_none() {
        return;
    }
    if let Some(at) = scheduled {
        mark(&mut t.scheduled, at);
    }
    if let Some(at) = running {
        mark(&mut t.running, at);
    }
}

/// The first step after resuming, from a launcher of the next attempt.
pub fn first_step(s: &mut TrainingJobStatus, attempt: i32, at: Timestamp) {
    if let Some(t) = of(s, attempt - 1).filter(|t| t.created.is_some()) {
        // The gang trains again once its slowest rank does.
        if t.first_step.as_ref().is_none_or(|old| at > old.0) {
            t.first_step = Some(Time(at));
        }
    }
}
