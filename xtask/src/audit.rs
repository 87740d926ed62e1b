//! Who asked the API server for what: the audit log the test bed's API
//! server writes (`controlplane::audit_log`), counted by client.

use crate::util::Paths;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};

/// Requests received in [from, to] (Unix seconds), by client: the user
/// agent's product, and for kube-controller-manager the controller (its
/// service account), since it runs every built-in controller in one process.
pub fn requests_by_client(paths: &Paths, from: f64, to: f64) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for line in log_files(paths)
        .into_iter()
        .filter_map(|f| std::fs::File::open(f).ok())
        .flat_map(|f| BufReader::new(f).lines().map_while(|l| l.ok()))
    {
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(at) = event["requestReceivedTimestamp"]
            .as_str()
            .and_then(crate::util::unix_seconds)
        else {
            continue;
        };
        if (from..=to).contains(&at) {
            *counts.entry(client(&event)).or_insert(0) += 1;
        }
    }
    counts
}

/// The log and its rotated backup (`audit-<time>.log`), which holds the
/// start of a window the rotation cut.
fn log_files(paths: &Paths) -> Vec<std::path::PathBuf> {
    let log = crate::controlplane::audit_log(paths);
    let dir = log.parent().map(|d| d.to_path_buf()).unwrap_or_default();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit") && n.ends_with(".log"))
        })
        .collect();
    files.sort();
    files
}

fn client(event: &Value) -> String {
    let agent = event["userAgent"].as_str().unwrap_or("unknown");
    let product = agent.split('/').next().unwrap_or(agent);
    let user = event["user"]["username"].as_str().unwrap_or_default();
    match user.strip_prefix("system:serviceaccount:kube-system:") {
        Some(controller) if product == "kube-controller-manager" => {
            format!("{product} ({controller})")
        }
        _ => product.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn controllers_of_the_controller_manager_are_told_apart() {
        let kcm = json!({"userAgent": "kube-controller-manager/v1.34.4 (linux/amd64) kubernetes/abc/system:serviceaccount:kube-system:job-controller",
            "user": {"username": "system:serviceaccount:kube-system:job-controller"}});
        assert_eq!(client(&kcm), "kube-controller-manager (job-controller)");
        let op = json!({"userAgent": "trainingjob-operator/0.1.0", "user": {"username": "admin"}});
        assert_eq!(client(&op), "trainingjob-operator");
        assert_eq!(client(&json!({})), "unknown");
    }
}
