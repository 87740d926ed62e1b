//! What a pod says about its rank: still going, completed, disrupted (a
//! preemption: never a failure) or failed. Pure, from the Pod object alone,
//! including the launcher's report in the trainer's termination message.

use crate::api::TrainingJob;
use crate::pods::{trainer_index, ATTEMPT_LABEL, RANK_LABEL};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use launcher::report::{Report, State};

/// One pod of a job, reduced to what the lifecycle needs.
#[derive(Clone, Debug, PartialEq)]
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
    pub finished_at: Option<Timestamp>,
}

/// How a rank's attempt ended, as far as the pod tells.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The trainer exited 0 without having been signalled.
    Completed,
    /// Taken away: evicted, deleted, preempted, or the trainer exited after a
    /// signal. Counts against maxPreemptions only.
    Disrupted { reason: String, message: String },
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

/// The end of a termination message worth quoting in a condition.
const QUOTE_CHARS: usize = 300;

pub fn view(job: &TrainingJob, pod: &Pod) -> Option<PodView> {
    let label = |k: &str| pod.labels().get(k).and_then(|v| v.parse::<i32>().ok());
    let (rank, attempt) = (label(RANK_LABEL)?, label(ATTEMPT_LABEL)?);
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let trainer_name = job
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| {
            trainer_index(&s.containers)
                .ok()
                .map(|i| s.containers[i].name.clone())
        })
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.containers.first().map(|c| c.name.clone()))
        })
        .unwrap_or_default();
    let trainer = status
        .container_statuses
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.name == trainer_name));
    let state = trainer.and_then(|c| c.state.as_ref());
    let terminated = state.and_then(|s| s.terminated.as_ref());
    let report = terminated
        .and_then(|t| t.message.as_deref())
        .and_then(|m| serde_json::from_str::<Report>(m.trim()).ok());

    let disruption = status
        .conditions
        .as_ref()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")
        })
        .map(|c| {
            (
                c.reason
                    .clone()
                    .unwrap_or_else(|| "DisruptionTarget".into()),
                c.message.clone().unwrap_or_default(),
            )
        });
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let kubelet_reason = status
        .reason
        .clone()
        .filter(|r| KUBELET_DISRUPTIONS.contains(&r.as_str()));

    let outcome = match terminated {
        Some(t) => Some(match &report {
            Some(r) if r.state == State::Completed => Outcome::Completed,
            Some(r) if r.state == State::Signalled => Outcome::Disrupted {
                reason: disruption
                    .as_ref()
                    .map(|d| d.0.clone())
                    .unwrap_or_else(|| "TerminatedAfterSignal".into()),
                message: format!(
                    "the trainer exited {} {} after {}",
                    exit_text(t.exit_code, r.term_signal.as_deref()),
                    r.signal_to_exit_seconds
                        .map(|s| format!("{s:.1}s"))
                        .unwrap_or_default(),
                    r.signal
                        .as_ref()
                        .map(|s| s.name.as_str())
                        .unwrap_or("a signal"),
                ),
            },
            _ if disruption.is_some() || kubelet_reason.is_some() || deleting => {
                let (reason, message) =
                    disrupted(&disruption, &kubelet_reason, status.message.as_deref());
                Outcome::Disrupted { reason, message }
            }
            _ if t.exit_code == 0 => Outcome::Completed,
            _ => Outcome::Failed {
                exit_code: t.exit_code,
                reason: t.reason.clone().unwrap_or_else(|| "Error".into()),
                message: tail(t.message.as_deref().unwrap_or_default(), QUOTE_CHARS),
            },
        }),
        None if disruption.is_some() || kubelet_reason.is_some() => {
            let (reason, message) =
                disrupted(&disruption, &kubelet_reason, status.message.as_deref());
            Some(Outcome::Disrupted { reason, message })
        }
        None if deleting => Some(Outcome::Disrupted {
            reason: "PodDeleted".into(),
            message: format!("pod {} was deleted", pod.name_any()),
        }),
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
        deleting,
        running: state.is_some_and(|s| s.running.is_some()),
        outcome,
        report,
        finished_at: terminated.and_then(|t| t.finished_at.as_ref()).map(|t| t.0),
    })
}

fn disrupted(
    condition: &Option<(String, String)>,
    kubelet_reason: &Option<String>,
    pod_message: Option<&str>,
) -> (String, String) {
    match (condition, kubelet_reason) {
        (Some((reason, message)), _) => (reason.clone(), message.clone()),
        (None, Some(reason)) => (reason.clone(), pod_message.unwrap_or_default().to_string()),
        (None, None) => ("PodDeleted".into(), "the pod was deleted".into()),
    }
}

fn exit_text(code: i32, signal: Option<&str>) -> String {
    match signal {
        Some(sig) => format!("killed by {sig}"),
        None => format!("with code {code}"),
    }
}

/// The last `n` characters of `s`, on a char boundary.
pub fn tail(s: &str, n: usize) -> String {
    let s = s.trim();
    let start = s
        .char_indices()
        .rev()
        .nth(n.saturating_sub(1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    s[start..].to_string()
}

#[cfg(test)]
mod tests;
