//! Synthetic jobs and pods as the API server would send them: built by the
//! operator's own code (its `decide` and pod builder), then dressed with
//! what the API server and a kubelet add.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};
use trainingjob_operator::api::{TrainingJob, TrainingJobStatus};
use trainingjob_operator::defaults::Defaults;
use trainingjob_operator::lifecycle::{self, Decision, Inputs};
use trainingjob_operator::observe;
use trainingjob_operator::validate;

pub const NAMESPACE: &str = "tjo-bench-scale";
/// Ranks per job, in turn, as `cargo xtask bench scale` makes them.
const SIZES: [i32; 7] = [1, 1, 1, 2, 2, 4, 8];
const OPERATOR_IMAGE: &str = "localhost/trainingjob-operator:dev";
const TIME: &str = "2026-12-01T10:00:00Z";

pub struct Synthetic {
    pub name: String,
    pub uid: String,
    /// The job as its watch delivers it once its pods run.
    pub job_json: Vec<u8>,
    /// Its pods as their watch delivers them, Running.
    pub pods: Vec<Vec<u8>>,
    /// Its pods as the API server answered their creation.
    pub created: Vec<Vec<u8>>,
    pub status: TrainingJobStatus,
    /// (reason, note) of each event published on the way.
    pub transitions: Vec<(String, String)>,
}

pub fn synthesize(n: usize) -> Vec<Synthetic> {
    (0..n).map(one).collect()
}

fn decide(job: &TrainingJob, pods: &[observe::PodView]) -> Decision {
    lifecycle::decide(&Inputs {
        job,
        pods,
        problems: &validate::validate(job),
        now: Timestamp::now(),
        defaults: &Defaults::default(),
        operator_image: OPERATOR_IMAGE,
    })
}

fn one(i: usize) -> Synthetic {
    let name = format!("j{i}");
    let uid = format!("6f1c2a4e-{i:04x}-4b1e-9c1d-0242ac120002");
    let spec = json!({
        "replicas": SIZES[i % SIZES.len()], "checkpoint": {"claimName": "ckpt"},
        "template": {"spec": {
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}],
            "containers": [{"name": "trainer", "image": "localhost/tjo-trainer:dev",
                "command": ["python3", "/opt/trainer/train.py"],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}},
    });
    let mut job: TrainingJob = serde_json::from_value(json!({
        "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid, "generation": 1,
                     "resourceVersion": format!("{}", 100000 + i), "creationTimestamp": TIME},
        "spec": spec,
    }))
    .unwrap();
    let first = decide(&job, &[]);
    let attempt = first.create.clone().expect("a new job starts attempt 1");
    let created: Vec<Value> = attempt
        .pods
        .iter()
        .enumerate()
        .map(|(r, p)| as_created(p, i, r))
        .collect();
    let running: Vec<Value> = created
        .iter()
        .enumerate()
        .map(|(r, p)| as_running(p.clone(), i, r))
        .collect();
    job.status = Some(first.status.clone());
    let views: Vec<observe::PodView> = running
        .iter()
        .filter_map(|p| observe::view(&job, &serde_json::from_value::<Pod>(p.clone()).unwrap()))
        .collect();
    let second = decide(&job, &views);
    job.status = Some(second.status.clone());
    let transitions = first
        .transitions
        .iter()
        .chain(&second.transitions)
        .map(|t| (t.reason().to_string(), t.message()))
        .collect();
    Synthetic {
        job_json: job_as_watched(&job, &spec),
        pods: running
            .iter()
            .map(|p| serde_json::to_vec(p).unwrap())
            .collect(),
        created: created
            .iter()
            .map(|p| serde_json::to_vec(p).unwrap())
            .collect(),
        status: second.status,
        transitions,
        name,
        uid,
    }
}

/// The job with the managedFields of `kubectl apply --server-side` and of
/// the operator's status writes.
fn job_as_watched(job: &TrainingJob, spec: &Value) -> Vec<u8> {
    let mut v = serde_json::to_value(job).unwrap();
    let status = v["status"].clone();
    v["metadata"]["managedFields"] = json!([
        managed("kubectl", "Apply", None, &json!({"spec": spec})),
        managed(
            "trainingjob-operator",
            "Apply",
            Some("status"),
            &json!({"status": status})
        ),
    ]);
    serde_json::to_vec(&v).unwrap()
}

fn managed(manager: &str, operation: &str, sub: Option<&str>, of: &Value) -> Value {
    let mut m = json!({"manager": manager, "operation": operation, "apiVersion": "v1",
                       "time": TIME, "fieldsType": "FieldsV1", "fieldsV1": fields(of)});
    if let Some(s) = sub {
        m["subresource"] = s.into();
    }
    m
}

/// A FieldsV1 set naming every field of `v`, as the API server tracks them.
fn fields(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let mut f = serde_json::Map::new();
            f.insert(".".into(), json!({}));
            for (k, v) in o {
                f.insert(format!("f:{k}"), fields(v));
            }
            Value::Object(f)
        }
        Value::Array(a) => {
            let mut f = serde_json::Map::new();
            for (n, v) in a.iter().enumerate() {
                let key = match v.get("name") {
                    Some(name) => format!("k:{{\"name\":{name}}}"),
                    None => format!("i:{n}"),
                };
                f.insert(key, fields(v));
            }
            Value::Object(f)
        }
        _ => json!({}),
    }
}

/// The pod as the API server answers its creation: defaults filled in,
/// identity given, Pending.
fn as_created(pod: &Pod, job: usize, rank: usize) -> Value {
    let mut v = serde_json::to_value(pod).unwrap();
    let spec_fields = json!({"metadata": v["metadata"].clone(), "spec": v["spec"].clone()});
    let meta = &mut v["metadata"];
    meta["uid"] = format!("a0b1c2d3-{job:04x}-{rank:04x}-8e9f-0242ac120003").into();
    meta["resourceVersion"] = format!("{}", 200000 + job * 8 + rank).into();
    meta["creationTimestamp"] = TIME.into();
    meta["managedFields"] = json!([managed(
        "trainingjob-operator",
        "Update",
        None,
        &spec_fields
    )]);
    let spec = &mut v["spec"];
    for (k, d) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
        ("priority", json!(0)),
        ("serviceAccount", json!("default")),
        ("serviceAccountName", json!("default")),
    ] {
        spec[k] = d;
    }
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            c["imagePullPolicy"] = "IfNotPresent".into();
            if c.get("terminationMessagePath").is_none() {
                c["terminationMessagePath"] = "/dev/termination-log".into();
            }
        }
    }
    v["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
    v
}

/// The pod once scheduled and running, with the status a kubelet writes.
fn as_running(mut v: Value, job: usize, rank: usize) -> Value {
    let node = format!("tjo-fake-{}", (job * 8 + rank) % 100);
    v["spec"]["nodeName"] = node.into();
    v["metadata"]["resourceVersion"] = format!("{}", 900000 + job * 8 + rank).into();
    let ip = format!("10.244.{}.{}", job % 250, rank + 2);
    let condition = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": TIME});
    let mounts = |c: &Value| -> Value {
        let ms = c["volumeMounts"].as_array().cloned().unwrap_or_default();
        Value::Array(
            ms.iter()
                .map(|m| json!({"name": m["name"], "mountPath": m["mountPath"]}))
                .collect(),
        )
    };
    let container_id = |n: &str| format!("containerd://{:064x}", (job * 8 + rank) * 31 + n.len());
    let trainer = &v["spec"]["containers"][0];
    let init = &v["spec"]["initContainers"][0];
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .map(condition);
    let status = json!({
        "phase": "Running",
        "conditions": conditions,
        "hostIP": "172.18.0.3", "hostIPs": [{"ip": "172.18.0.3"}],
        "podIP": ip, "podIPs": [{"ip": ip}], "startTime": TIME, "qosClass": "Burstable",
        "initContainerStatuses": [{"name": init["name"], "image": init["image"],
            "imageID": format!("{}@sha256:{:064x}", init["image"].as_str().unwrap(), 7),
            "containerID": container_id("init"), "ready": true, "restartCount": 0, "started": false,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": TIME,
                      "finishedAt": TIME, "containerID": container_id("init")}},
            "lastState": {}, "volumeMounts": mounts(init)}],
        "containerStatuses": [{"name": trainer["name"], "image": trainer["image"],
            "imageID": format!("{}@sha256:{:064x}", trainer["image"].as_str().unwrap(), 9),
            "containerID": container_id("trainer"), "ready": true, "restartCount": 0, "started": true,
            "state": {"running": {"startedAt": TIME}}, "lastState": {},
            "resources": trainer["resources"], "volumeMounts": mounts(trainer),
            "user": {"linux": {"uid": 0, "gid": 0, "supplementalGroups": [0]}}}],
    });
    let kubelet = managed(
        "kubelet",
        "Update",
        Some("status"),
        &json!({"status": status}),
    );
    v["metadata"]["managedFields"]
        .as_array_mut()
        .unwrap()
        .push(kubelet);
    v["status"] = status;
    v
}
