//! What a pod says about its rank: still going, completed, disrupted (a
//! preemption: never a failure) or failed. Pure, from the Pod object alone,
//! including the launcher's report in the trainer's termination message.

use crate::api::TrainingJob;
use crate::labels::{ATTEMPT_LABEL, RANK_LABEL};
use crate::nodes::NodeFacts;
use crate::pods::trainer_index;
use crate::text::tail;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use launcher::report::{LockState, Report, State};

/// One pod of a job, reduced to what the lifecycle needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    pub name: String,
    pub rank: i32,
    pub attempt: i32,
    /// Containers may still run: not Succeeded or Failed.
    pub live: bool,
    /// Someone asked the API server to delete it.
    pub deleting: bool,
    /// The trainer container is running.
    pub running: bool,
    pub outcome: Option<Outcome>,
    /// The launcher's report, once the trainer has exited.
    pub report: Option<Report>,
    /// Why a termination message that should be a report did not parse.
    pub report_error: Option<String>,
    /// The pod holds the operator's report finalizer and has nothing more
    /// to report: once status records it, the finalizer may go.
    pub releasable: bool,
    pub finished_at: Option<Timestamp>,
    /// The node it is bound to, and what the operator knows of that node
    /// (filled in from the node cache, not from the pod).
    pub node: Option<String>,
    pub node_facts: Option<NodeFacts>,
    /// When it was bound to a node, and when its trainer started.
    pub scheduled_at: Option<Timestamp>,
    pub started_at: Option<Timestamp>,
    /// It still has scheduling gates: a queue (Kueue) has not admitted it.
    pub gated: bool,
}

/// How a rank's attempt ended, as far as the pod tells.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The trainer exited 0 without having been signalled.
    Completed,
    /// Taken away: evicted, deleted, preempted, or stopped by the kubelet.
    /// The cluster itself shows the cause. Counts against maxPreemptions only.
    Disrupted { reason: String, message: String },
    /// The trainer says it was stopped (a signal, or `peerStop` from another
    /// rank) but nothing in the cluster took the pod away. The report is the
    /// trainer's word, not evidence: this is a preemption only when another
    /// rank of the same attempt was really disrupted, else a failure.
    Stopped { reason: String, message: String },
    /// The trainer exited non-zero on its own. Counts against backoffLimit.
    Failed {
        exit_code: i32,
        reason: String,
        message: String,
    },
}

/// Pod `status.reason`s the kubelet sets when it, not the trainer, ended the pod.
const KUBELET_DISRUPTIONS: &[&str] = &[
    "Evicted",
    "Shutdown",
    "NodeShutdown",
    "Terminated",
    "NodeLost",
    "Preempting",
];

/// Pod conditions by which the cluster says it is taking the pod away:
/// Kubernetes' own, and Kueue's when it evicts a workload (reason e.g.
/// WorkloadEvictedDueToPreempted; it sets no DisruptionTarget).
pub const DISRUPTION_CONDITIONS: &[&str] = &["DisruptionTarget", "TerminationTarget"];

/// The end of a termination message worth quoting in a condition.
const QUOTE_CHARS: usize = 300;

pub fn view(job: &TrainingJob, pod: &Pod) -> Option<PodView> {
    let label = |k: &str| pod.labels().get(k).and_then(|v| v.parse::<i32>().ok());
    let (rank, attempt) = (label(RANK_LABEL)?, label(ATTEMPT_LABEL)?);
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let name = trainer_name(job, pod);
    let state = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == name))
        .and_then(|c| c.state.as_ref());
    let terminated = state.and_then(|s| s.terminated.as_ref());
    let (report, report_error) = parse_report(terminated);
    let cause = Cause::of(pod, &status);
    let outcome = match terminated {
        Some(t) => Some(ended(t, report.as_ref(), &cause, &pod.name_any())),
        None if cause.any() => {
            let (reason, message) = cause.describe(&pod.name_any());
            Some(Outcome::Disrupted { reason, message })
        }
        // Failed with no trainer status: the pod never started its trainer
        // (an init container failed, or admission on the node refused it).
        None if phase == "Failed" => Some(Outcome::Failed {
            exit_code: -1,
            reason: status.reason.clone().unwrap_or_else(|| "PodFailed".into()),
            message: status.message.clone().unwrap_or_default(),
        }),
        None => None,
    };
    Some(PodView {
        name: pod.name_any(),
        rank,
        attempt,
        live: !matches!(phase, "Succeeded" | "Failed"),
        deleting: cause.deleting,
        running: state.is_some_and(|s| s.running.is_some()),
        outcome,
        report,
        report_error,
        releasable: crate::finalizers::releasable(pod),
        finished_at: terminated.and_then(|t| t.finished_at.as_ref()).map(|t| t.0),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        node_facts: None,
        scheduled_at: status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0),
        started_at: state
            .and_then(|s| {
                s.running
                    .as_ref()
                    .and_then(|r| r.started_at.as_ref())
                    .or(s.terminated.as_ref().and_then(|t| t.started_at.as_ref()))
            })
            .map(|t| t.0),
        gated: pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduling_gates.as_ref())
            .is_some_and(|g| !g.is_empty()),
    })
}

/// The trainer container's name: the template's, or the pod's first.
fn trainer_name(job: &TrainingJob, pod: &Pod) -> String {
    let from_template = job.spec.template.spec.as_ref().and_then(|s| {
        trainer_index(&s.containers)
            .ok()
            .map(|i| s.containers[i].name.clone())
    });
    from_template
        .or_else(|| {
            pod.spec
                .as_ref()?
                .containers
                .first()
                .map(|c| c.name.clone())
        })
        .unwrap_or_default()
}

/// The launcher's report, or why the termination message is not one.
fn parse_report(t: Option<&ContainerStateTerminated>) -> (Option<Report>, Option<String>) {
    match t.and_then(|t| t.message.as_deref()).map(str::trim) {
        Some(m) if !m.is_empty() => match serde_json::from_str::<Report>(m) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.to_string())),
        },
        _ => (None, None),
    }
}

/// What the cluster itself says took the pod away.
struct Cause {
    /// DisruptionTarget's reason and message.
    condition: Option<(String, String)>,
    /// A status.reason the kubelet sets when it ended the pod.
    kubelet: Option<String>,
    kubelet_message: Option<String>,
    deleting: bool,
}

impl Cause {
    fn of(pod: &Pod, status: &PodStatus) -> Self {
        let condition = status
            .conditions
            .iter()
            .flatten()
            .find(|c| DISRUPTION_CONDITIONS.contains(&c.type_.as_str()) && c.status == "True")
            .map(|c| {
                let reason = c.reason.clone();
                (
                    reason.unwrap_or_else(|| "DisruptionTarget".into()),
                    c.message.clone().unwrap_or_default(),
                )
            });
        Self {
            condition,
            kubelet: status
                .reason
                .clone()
                .filter(|r| KUBELET_DISRUPTIONS.contains(&r.as_str())),
            kubelet_message: status.message.clone(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        }
    }

    fn any(&self) -> bool {
        self.condition.is_some() || self.kubelet.is_some() || self.deleting
    }

    fn describe(&self, pod: &str) -> (String, String) {
        match (&self.condition, &self.kubelet) {
            (Some((reason, message)), _) => (reason.clone(), message.clone()),
            (None, Some(reason)) => (
                reason.clone(),
                self.kubelet_message.clone().unwrap_or_default(),
            ),
            (None, None) => ("PodDeleted".into(), format!("pod {pod} was deleted")),
        }
    }
}

/// How a rank ended once its trainer exited. The report is the trainer's
/// word; only the cluster's own evidence makes a stop a disruption.
fn ended(
    t: &ContainerStateTerminated,
    report: Option<&Report>,
    cause: &Cause,
    name: &str,
) -> Outcome {
    match report {
        // An earlier attempt's trainer still holds the rank: the cluster
        // let it outlive its pod (a forced deletion), not the trainer's fault.
        Some(r) if r.lock == Some(LockState::TimedOut) => Outcome::Disrupted {
            reason: "EarlierTrainerAlive".into(),
            message: "a trainer of an earlier attempt still held this rank's checkpoint lock \
                      when the wait ran out; it was started on a pod that was force-deleted"
                .into(),
        },
        Some(r) if r.state == State::Completed => Outcome::Completed,
        Some(r) if r.state == State::Signalled => {
            let message = signalled_text(t.exit_code, r);
            if cause.any() {
                let (reason, _) = cause.describe(name);
                Outcome::Disrupted { reason, message }
            } else {
                let reason = if r.peer_stop.is_some() {
                    "PeerStop"
                } else {
                    "SignalWithoutDisruption"
                };
                Outcome::Stopped {
                    reason: reason.into(),
                    message,
                }
            }
        }
        _ if cause.any() => {
            let (reason, message) = cause.describe(name);
            Outcome::Disrupted { reason, message }
        }
        _ if t.exit_code == 0 => Outcome::Completed,
        _ => Outcome::Failed {
            exit_code: t.exit_code,
            reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
            message: tail(t.message.as_deref().unwrap_or_default(), QUOTE_CHARS),
        },
    }
}

/// How a signalled trainer ended, for people.
fn signalled_text(exit_code: i32, r: &Report) -> String {
    let cause = match (&r.signal, &r.peer_stop) {
        (Some(s), _) => s.name.clone(),
        (None, Some(p)) => format!("a stop of rank {}", p.rank),
        (None, None) => "a signal".into(),
    };
    format!(
        "the trainer exited {} {} after {cause}",
        exit_text(exit_code, r.term_signal.as_deref()),
        r.signal_to_exit_seconds
            .map(|s| format!("{s:.1}s"))
            .unwrap_or_default(),
    )
}

fn exit_text(code: i32, signal: Option<&str>) -> String {
    match signal {
        Some(sig) => format!("killed by {sig}"),
        None => format!("with code {code}"),
    }
}

#[cfg(test)]
mod tests;
