//! Status conditions, changed only on real transitions so a status write is
//! deterministic and never re-triggers the controller by itself.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const SUCCEEDED: &str = "Succeeded";
pub const FAILED: &str = "Failed";
/// The measured save does not fit in the preemption notice.
pub const GRACE_EXCEEDS_NOTICE: &str = "GraceExceedsNotice";
/// The spec passed the schema but cannot run (claim, /dev/shm, template).
pub const SPEC_PROBLEM: &str = "SpecProblem";

/// Sets a condition; lastTransitionTime moves only when `status` changes.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &Time,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now.clone(),
            observed_generation: generation,
        }),
    }
}

/// Removes a condition that no longer applies.
pub fn clear(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_the_status_does() {
        let mut c = Vec::new();
        set(
            &mut c,
            READY,
            false,
            "Starting",
            "pods pending",
            &at(1),
            Some(1),
        );
        set(
            &mut c,
            READY,
            false,
            "Starting",
            "1 of 2 running",
            &at(2),
            Some(1),
        );
        assert_eq!(c[0].last_transition_time, at(1));
        assert_eq!(c[0].message, "1 of 2 running");
        set(
            &mut c,
            READY,
            true,
            "Running",
            "all ranks running",
            &at(3),
            Some(1),
        );
        assert_eq!(c[0].last_transition_time, at(3));
        assert!(is_true(&c, READY));
        clear(&mut c, READY);
        assert!(c.is_empty());
    }
}
