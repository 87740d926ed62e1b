//! Status conditions, changed only on real transitions so a status write is
//! deterministic and never re-triggers the controller by itself.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The conditions a TrainingJob carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    Ready,
    Succeeded,
    Failed,
    /// The measured save does not fit in the preemption notice.
    GraceExceedsNotice,
    /// The spec passed the schema but cannot run (claim, /dev/shm, template,
    /// or a create the API server refused).
    SpecProblem,
    /// An old pod stays on a node that stopped answering: its trainer may
    /// still be writing, so the next attempt waits for it.
    WaitingForNode,
    /// Several attempts in a row ended without a newer checkpoint; the
    /// next one waits a backoff instead of looping to maxPreemptions.
    NoProgress,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::GraceExceedsNotice => "GraceExceedsNotice",
            Self::SpecProblem => "SpecProblem",
            Self::WaitingForNode => "WaitingForNode",
            Self::NoProgress => "NoProgress",
        }
    }
}

/// The one writer of a job's conditions during a reconcile: it owns the
/// clock and the generation, so transition times are set in one place.
pub struct Conditions<'a> {
    list: &'a mut Vec<Condition>,
    now: &'a Time,
    generation: Option<i64>,
}

impl<'a> Conditions<'a> {
    pub fn new(list: &'a mut Vec<Condition>, now: &'a Time, generation: Option<i64>) -> Self {
        Self {
            list,
            now,
            generation,
        }
    }

    /// Sets a condition; lastTransitionTime moves only when `status` changes.
    pub fn set(&mut self, type_: ConditionType, status: bool, reason: &str, message: &str) {
        let status = if status { "True" } else { "False" }.to_string();
        match self.list.iter_mut().find(|c| c.type_ == type_.as_str()) {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = self.now.clone();
                }
                c.status = status;
                c.reason = reason.into();
                c.message = message.into();
                c.observed_generation = self.generation;
            }
            None => self.list.push(Condition {
                type_: type_.as_str().into(),
                status,
                reason: reason.into(),
                message: message.into(),
                last_transition_time: self.now.clone(),
                observed_generation: self.generation,
            }),
        }
    }

    /// Removes a condition that no longer applies.
    pub fn clear(&mut self, type_: ConditionType) {
        self.list.retain(|c| c.type_ != type_.as_str());
    }
}

/// The condition of `type_`, if the list has one.
pub fn find(list: &[Condition], type_: ConditionType) -> Option<&Condition> {
    list.iter().find(|c| c.type_ == type_.as_str())
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
        let (t1, t2, t3) = (at(1), at(2), at(3));
        Conditions::new(&mut c, &t1, Some(1)).set(
            ConditionType::Ready,
            false,
            "Starting",
            "pods pending",
        );
        Conditions::new(&mut c, &t2, Some(1)).set(
            ConditionType::Ready,
            false,
            "Starting",
            "1 of 2 running",
        );
        assert_eq!(c[0].last_transition_time, t1);
        assert_eq!(c[0].message, "1 of 2 running");
        Conditions::new(&mut c, &t3, Some(2)).set(
            ConditionType::Ready,
            true,
            "Running",
            "all ranks running",
        );
        assert_eq!(c[0].last_transition_time, t3);
        assert_eq!(c[0].observed_generation, Some(2));
        assert_eq!(find(&c, ConditionType::Ready).unwrap().status, "True");
        Conditions::new(&mut c, &t3, Some(2)).clear(ConditionType::Ready);
        assert!(c.is_empty());
    }
}
