//! The objects `bench peers` creates for each workload: its checkpoint
//! claim and a Job, a JobSet or a TrainingJob around one trainer container.

use crate::peers::{Scenario, System, Workload};
use serde_json::{json, Value};

/// Where the peers' trainers keep checkpoints (the operator mounts its own).
const MOUNT: &str = "/ckpt";

pub fn access_mode(w: &Workload) -> &'static str {
    mode_for(w.ranks)
}

/// Ranks on more than one node share the checkpoint volume.
pub fn mode_for(ranks: u32) -> &'static str {
    if ranks > 1 {
        "ReadWriteMany"
    } else {
        "ReadWriteOnce"
    }
}

/// The claim bound in advance to the volume `demo::provision_volume` makes.
pub fn claim(name: &str, mode: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": [mode],
            "storageClassName": "",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    })
}

pub fn objects(sc: &Scenario, w: &Workload) -> Vec<Value> {
    let claim = claim(&w.name, access_mode(w));
    let workload = match w.system {
        System::Job => job(sc, w),
        System::JobSet => jobset(sc, w),
        System::TrainingJob => training_job(sc, w),
    };
    vec![claim, workload]
}

/// The same command for every system; the peers add what a trainer needs
/// without the launcher.
fn container(sc: &Scenario, w: &Workload) -> Value {
    let mut command: Vec<String> = [
        "python3",
        "/opt/trainer/train.py",
        "--total-steps",
        &sc.steps.to_string(),
        "--step-seconds",
        &sc.step_seconds.to_string(),
        "--ckpt-every",
        &sc.ckpt_every.to_string(),
        "--save-seconds",
        &sc.save_seconds.to_string(),
        "--rendezvous-timeout",
        "120",
    ]
    .map(String::from)
    .to_vec();
    let mut env = vec![];
    let mut mounts = vec![];
    if w.system != System::TrainingJob {
        command.extend(["--resume-scan", "--stop-exit-code", "143"].map(String::from));
        let grace = w.grace.unwrap_or(30).to_string();
        env.push(json!({"name": "TJ_CHECKPOINT_DIR", "value": MOUNT}));
        // tjckpt's deadline: what the user set the grace period to.
        env.push(json!({"name": "TJ_GRACE_SECONDS", "value": grace}));
        mounts.push(json!({"name": "ckpt", "mountPath": MOUNT}));
    }
    if w.system == System::JobSet && w.ranks > 1 {
        env.push(json!({"name": "TJ_WORLD_SIZE", "value": w.ranks.to_string()}));
        env.push(field_env(
            "TJ_RANK",
            "metadata.annotations['batch.kubernetes.io/job-completion-index']",
        ));
        // A new value on every restart of the set, as the ranks' rendezvous needs.
        env.push(field_env(
            "TJ_ATTEMPT",
            "metadata.labels['jobset.sigs.k8s.io/restart-attempt']",
        ));
    }
    json!({
        "name": "trainer",
        "image": crate::images::TRAINER_IMAGE,
        "imagePullPolicy": "Never",
        "command": command,
        "env": env,
        "volumeMounts": mounts,
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn labels(w: &Workload) -> Value {
    json!({"bench": "peers", "peers/workload": w.name})
}

/// A peer's pod template: the claim mounted, the grace as the user set it.
fn pod_template(sc: &Scenario, w: &Workload) -> Value {
    let mut spec = json!({
        "restartPolicy": "Never",
        "containers": [container(sc, w)],
        "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": w.name}}],
    });
    if let Some(g) = w.grace {
        spec["terminationGracePeriodSeconds"] = json!(g);
    }
    json!({"metadata": {"labels": labels(w)}, "spec": spec})
}

fn job(sc: &Scenario, w: &Workload) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": w.name},
        "spec": {
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": 6,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": pod_template(sc, w),
        },
    })
}

fn jobset(sc: &Scenario, w: &Workload) -> Value {
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": w.name},
        "spec": {
            "failurePolicy": {
                "maxRestarts": 6,
                "rules": [{
                    "action": "RestartJobSetAndIgnoreMaxRestarts",
                    "onJobFailureReasons": ["PodFailurePolicy"],
                }],
            },
            "replicatedJobs": [{
                "name": "w",
                "replicas": 1,
                "template": {"spec": {
                    "completions": w.ranks,
                    "parallelism": w.ranks,
                    "completionMode": "Indexed",
                    "backoffLimit": 0,
                    "podFailurePolicy": {"rules": [
                        {"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    ]},
                    "template": pod_template(sc, w),
                }},
            }],
        },
    })
}

fn training_job(sc: &Scenario, w: &Workload) -> Value {
    json!({
        "apiVersion": "trainingjob.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": w.name},
        "spec": {
            "replicas": w.ranks,
            "checkpoint": {"claimName": w.name},
            "preemption": {"noticeSeconds": sc.notice_seconds},
            "template": {
                "metadata": {"labels": labels(w)},
                "spec": {"containers": [container(sc, w)]},
            },
        },
    })
}
