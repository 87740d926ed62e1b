//! The job's ledger: what its interruptions cost over its whole life, and
//! whether its attempts still move the checkpoint forward. Never reset, so
//! a job that loops is seen looping.

use crate::api::TrainingJobStatus;

/// Attempts in a row that end without a newer checkpoint before NoProgress
/// is set and the next attempt waits a backoff. Three: one attempt lost
/// before its first save is ordinary on a busy spot pool, three are not.
pub const NO_PROGRESS_ATTEMPTS: i32 = 3;

/// Distinct reasons kept; any further one is counted as "Other", so a
/// DisruptionTarget reason that varies cannot grow status without bound.
const MAX_REASONS: usize = 16;

pub fn count_preemption(s: &mut TrainingJobStatus, reason: &str) {
    let by = &mut s.preemptions_by_reason;
    let key = if by.len() >= MAX_REASONS && !by.contains_key(reason) {
        "Other"
    } else {
        reason
    };
    *by.entry(key.to_string()).or_default() += 1;
}

/// Adds what an interruption's stepsLost grew by to the job's total.
pub fn count_steps_lost(s: &mut TrainingJobStatus, old: Option<i64>, new: i64) {
    let grew = new.saturating_sub(old.unwrap_or(0)).max(0);
    s.steps_lost = s.steps_lost.saturating_add(grew);
}

/// Whether the current attempt has a newer checkpoint than it resumed from.
pub fn progressed(s: &TrainingJobStatus) -> bool {
    s.last_checkpoint.as_ref().map(|c| c.step) > s.resumed_from_step
}

/// Attempts in a row without progress, the current one included.
pub fn stalled(s: &TrainingJobStatus) -> i32 {
    if progressed(s) {
        0
    } else {
        s.attempts_without_progress.saturating_add(1)
    }
}

/// Folds the attempt that ended in, as the next one starts from the
/// newest checkpoint.
pub fn next_attempt(s: &mut TrainingJobStatus) {
    s.attempts_without_progress = stalled(s);
    s.resumed_from_step = s.last_checkpoint.as_ref().map(|c| c.step);
}

/// How long the next attempt waits because attempts keep making no
/// progress: none below NO_PROGRESS_ATTEMPTS, then 10 s doubling to 5 min.
pub fn no_progress_backoff_seconds(s: &TrainingJobStatus) -> Option<i64> {
    let n = stalled(s);
    (n >= NO_PROGRESS_ATTEMPTS)
        .then(|| crate::lifecycle::backoff_seconds(n - NO_PROGRESS_ATTEMPTS + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CheckpointStatus;

    fn at(step: i64) -> Option<CheckpointStatus> {
        Some(CheckpointStatus {
            step,
            path: String::new(),
            bytes: None,
            save_seconds: None,
            time: None,
        })
    }

    #[test]
    fn attempts_without_a_newer_checkpoint_back_off_from_the_third() {
        let mut s = TrainingJobStatus::default();
        assert_eq!(no_progress_backoff_seconds(&s), None);
        next_attempt(&mut s);
        next_attempt(&mut s);
        assert_eq!(s.attempts_without_progress, 2);
        assert_eq!(no_progress_backoff_seconds(&s), Some(10));
        next_attempt(&mut s);
        assert_eq!(no_progress_backoff_seconds(&s), Some(20));
        s.last_checkpoint = at(5);
        assert_eq!(no_progress_backoff_seconds(&s), None);
        next_attempt(&mut s);
        assert_eq!(
            (s.attempts_without_progress, s.resumed_from_step),
            (0, Some(5))
        );
        assert!(!progressed(&s));
    }

    #[test]
    fn reasons_are_bounded_and_steps_only_grow() {
        let mut s = TrainingJobStatus::default();
        for i in 0..40 {
            count_preemption(&mut s, &format!("R{i}"));
        }
        count_preemption(&mut s, "R0");
        assert_eq!(s.preemptions_by_reason.len(), MAX_REASONS + 1);
        assert_eq!(s.preemptions_by_reason["Other"], 40 - MAX_REASONS as i32);
        assert_eq!(s.preemptions_by_reason["R0"], 2);
        count_steps_lost(&mut s, None, 7);
        count_steps_lost(&mut s, Some(7), 9);
        count_steps_lost(&mut s, Some(9), 9);
        assert_eq!(s.steps_lost, 9);
    }
}
