//! The lifecycle's transitions, typed. Each owns its event (reason, type,
//! message), what it does to the conditions, and the metric it moves, so
//! that no caller matches on reason strings.

use crate::conditions::{ConditionType, Conditions};
use crate::metrics::Metrics;

/// Why a job ended Failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    BackoffLimitExceeded,
    MaxPreemptionsExceeded,
}

impl FailReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::BackoffLimitExceeded => "BackoffLimitExceeded",
            Self::MaxPreemptionsExceeded => "MaxPreemptionsExceeded",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// Attempt 1 is being created.
    Started {
        note: String,
    },
    /// A later attempt is being created after a preemption or a failure.
    Resuming {
        note: String,
    },
    /// Every rank's trainer runs.
    Running {
        attempt: i32,
        ranks: usize,
    },
    /// A rank was taken away; the gang is being stopped.
    Preempted {
        attempt: i32,
        rank: i32,
        cause: String,
        message: String,
        preemptions: i32,
    },
    /// A trainer exited non-zero on its own; retried after a backoff.
    TrainerFailed {
        note: String,
    },
    /// Every rank's trainer exited 0.
    Succeeded {
        note: String,
    },
    Failed {
        reason: FailReason,
        note: String,
    },
    /// The spec cannot run until it (or an object it names) changes.
    SpecCannotRun {
        message: String,
    },
    /// An old pod is on a node that stopped answering; the next attempt
    /// waits until it is known to be gone.
    WaitingForNode {
        note: String,
    },
    /// Attempts keep ending without a newer checkpoint.
    NoProgress {
        note: String,
    },
    /// A launcher's report did not parse: evidence lost, said out loud.
    ReportUnreadable {
        pod: String,
        error: String,
    },
}

impl Transition {
    /// The event's reason, also the `transitions` metric's label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Started { .. } => "Started",
            Self::Resuming { .. } => "Resuming",
            Self::Running { .. } => "Running",
            Self::Preempted { .. } => "Preempted",
            Self::TrainerFailed { .. } => "TrainerFailed",
            Self::Succeeded { .. } => "Succeeded",
            Self::Failed { reason, .. } => reason.as_str(),
            Self::SpecCannotRun { .. } => "SpecCannotRun",
            Self::ReportUnreadable { .. } => "ReportUnreadable",
            Self::WaitingForNode { .. } => "WaitingForNode",
            Self::NoProgress { .. } => "NoProgress",
        }
    }

    pub fn is_warning(&self) -> bool {
        !matches!(
            self,
            Self::Started { .. }
                | Self::Resuming { .. }
                | Self::Running { .. }
                | Self::Succeeded { .. }
        )
    }

    pub fn message(&self) -> String {
        match self {
            Self::Started { note }
            | Self::Resuming { note }
            | Self::TrainerFailed { note }
            | Self::WaitingForNode { note }
            | Self::NoProgress { note }
            | Self::Succeeded { note }
            | Self::Failed { note, .. } => note.clone(),
            Self::Running { attempt, ranks } => {
                format!("attempt {attempt}: all {ranks} ranks running")
            }
            Self::Preempted {
                attempt,
                rank,
                cause,
                message,
                preemptions,
            } => format!(
                "attempt {attempt} rank {rank} preempted ({cause}): {message}; stopping the gang (preemption {preemptions})"
            ),
            Self::SpecCannotRun { message } => message.clone(),
            Self::ReportUnreadable { pod, error } => format!(
                "the launcher's report in pod {pod}'s termination message does not parse ({error}); \
                 its checkpoint and save figures are not used"
            ),
        }
    }

    /// What the transition does to the job's conditions.
    pub fn apply(&self, c: &mut Conditions) {
        use ConditionType::*;
        let note = self.message();
        match self {
            Self::Started { .. } | Self::Resuming { .. } => c.set(Ready, false, "Starting", &note),
            Self::Running { .. } => c.set(Ready, true, "Running", &note),
            Self::Preempted { .. } | Self::TrainerFailed { .. } => {
                c.set(Ready, false, self.reason(), &note)
            }
            Self::Succeeded { .. } => {
                c.set(Succeeded, true, "Completed", &note);
                c.set(Ready, false, "Completed", &note);
            }
            Self::Failed { .. } => {
                c.set(Failed, true, self.reason(), &note);
                c.set(Ready, false, self.reason(), &note);
            }
            Self::SpecCannotRun { .. } => {
                c.set(SpecProblem, true, "SpecCannotRun", &note);
                c.set(Ready, false, "SpecCannotRun", &note);
            }
            Self::WaitingForNode { .. } => c.set(WaitingForNode, true, "NodeUnreachable", &note),
            Self::NoProgress { .. } => c.set(NoProgress, true, "CheckpointNotAdvancing", &note),
            Self::ReportUnreadable { .. } => {}
        }
    }

    /// Moves the metric the transition stands for. Called once, when the
    /// status that records it has been written.
    pub fn count(&self, m: &Metrics) {
        m.transition(self.reason());
        match self {
            Self::Preempted { .. } => m.preemptions.inc(),
            Self::TrainerFailed { .. }
            | Self::Failed {
                reason: FailReason::BackoffLimitExceeded,
                ..
            } => m.failures.inc(),
            Self::Resuming { .. } => m.resumes.inc(),
            _ => 0,
        };
    }
}
