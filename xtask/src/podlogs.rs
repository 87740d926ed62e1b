//! Every trainer pod's log, followed from the moment its container starts,
//! with the container runtime's timestamps, and kept after the pod is gone:
//! a Job or JobSet deletes the pods it replaces, and their logs with them.

use anyhow::{Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// One line a trainer printed: when (Unix seconds) and what.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: f64,
    pub text: String,
}

#[derive(Clone, Debug, Default)]
pub struct PodLog {
    /// The pod's `peers/workload` label.
    pub workload: String,
    pub rank: u32,
    pub lines: Vec<Line>,
}

type Logs = Arc<Mutex<HashMap<String, PodLog>>>;

pub struct PodLogs {
    logs: Logs,
    watch: Child,
}

impl PodLogs {
    /// Follows the pods in `ns` that match `selector`, until dropped.
    pub fn follow<K>(kubectl: K, ns: &str, selector: &str) -> Result<Self>
    where
        K: Fn() -> Command + Clone + Send + 'static,
    {
        let mut watch = kubectl()
            .args([
                "get", "pods", "-n", ns, "-l", selector, "--watch", "-o", "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting kubectl get pods --watch")?;
        let stdout = watch.stdout.take().context("watch stdout")?;
        let logs: Logs = Arc::default();
        let sink = logs.clone();
        let ns = ns.to_string();
        std::thread::spawn(move || {
            for pod in serde_json::Deserializer::from_reader(BufReader::new(stdout))
                .into_iter::<Value>()
                .flatten()
            {
                start_following(&kubectl, &ns, &pod, &sink);
            }
        });
        Ok(Self { logs, watch })
    }

    /// What every pod printed so far, by pod name.
    pub fn snapshot(&self) -> HashMap<String, PodLog> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        let _ = self.watch.kill();
        let _ = self.watch.wait();
    }
}

/// Once per pod, when its trainer container has started.
fn start_following<K>(kubectl: &K, ns: &str, pod: &Value, logs: &Logs)
where
    K: Fn() -> Command + Clone + Send + 'static,
{
    let started = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["name"] == "trainer"
                && (c["state"].get("running").is_some() || c["state"].get("terminated").is_some())
        });
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !started || name.is_empty() {
        return;
    }
    {
        let mut logs = logs.lock().unwrap();
        if logs.contains_key(&name) {
            return;
        }
        logs.insert(
            name.clone(),
            PodLog {
                workload: pod["metadata"]["labels"]["peers/workload"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                rank: rank_of(pod),
                lines: Vec::new(),
            },
        );
    }
    let mut cmd = kubectl();
    cmd.args([
        "logs",
        "-f",
        "--timestamps",
        "-n",
        ns,
        &name,
        "-c",
        "trainer",
    ]);
    let logs = logs.clone();
    std::thread::spawn(move || read_lines(cmd, &name, &logs));
}

fn read_lines(mut cmd: Command, pod: &str, logs: &Logs) {
    let Ok(mut child) = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn() else {
        return;
    };
    let Some(out) = child.stdout.take() else {
        return;
    };
    for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
        if let Some((stamp, text)) = line.split_once(' ') {
            if let Some(at) = crate::util::unix_seconds(stamp) {
                let text = text.to_string();
                if let Some(log) = logs.lock().unwrap().get_mut(pod) {
                    log.lines.push(Line { at, text });
                }
            }
        }
    }
    let _ = child.wait();
}

/// The rank a pod runs: the operator's label, or the Indexed Job's
/// completion index (Job and JobSet), or 0.
pub fn rank_of(pod: &Value) -> u32 {
    let meta = &pod["metadata"];
    [
        &meta["labels"]["trainingjob.dev/rank"],
        &meta["annotations"]["batch.kubernetes.io/job-completion-index"],
    ]
    .into_iter()
    .find_map(|v| v.as_str()?.parse().ok())
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use crate::util::unix_seconds;

    #[test]
    fn kubelet_timestamps_are_unix_seconds() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(unix_seconds("2000-03-01T00:00:01.5Z"), Some(951_868_801.5));
        assert_eq!(
            unix_seconds("2026-12-01T20:21:00.25Z"),
            Some(1_796_156_460.25)
        );
        assert_eq!(unix_seconds("2026-12-01 20:21:00"), None);
    }
}
