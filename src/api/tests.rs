use super::*;
use kube::CustomResourceExt;
use serde_json::json;

fn minimal() -> serde_json::Value {
    json!({
        "apiVersion": "trainingjob.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "t"},
        "spec": {
            "checkpoint": {"claimName": "ckpt"},
            "template": {"spec": {"containers": [
                {"name": "trainer", "image": "img", "command": ["python3", "train.py"]}
            ]}}
        }
    })
}

#[test]
fn omitted_fields_take_the_documented_defaults() {
    let tj: TrainingJob = serde_json::from_value(minimal()).unwrap();
    assert_eq!(tj.spec.replicas, 1);
    assert_eq!(tj.spec.backoff_limit, 3);
    assert_eq!(tj.spec.checkpoint.mount_path, "/checkpoints");
    assert_eq!(tj.spec.checkpoint.size_hint, None);
    assert_eq!(tj.spec.shared_memory, None);
    assert_eq!(tj.spec.preemption, PreemptionSpec::default());
    assert_eq!(
        tj.spec.preemption.notice_seconds, None,
        "the operator's default applies"
    );
    assert_eq!(tj.spec.preemption.max_preemptions, 100);
    assert!(tj.status.is_none());
}

#[test]
fn spec_and_status_survive_a_serde_round_trip() {
    let mut tj: TrainingJob = serde_json::from_value(minimal()).unwrap();
    tj.spec.shared_memory = Some(SharedMemorySpec {
        size_limit: None,
        data_loader: Some(DataLoaderSpec {
            workers: 8,
            prefetch_factor: 2,
            batch_bytes: "256Mi".into(),
        }),
    });
    tj.status = Some(TrainingJobStatus {
        phase: Some(Phase::Resuming),
        attempt: 3,
        preemptions: 2,
        last_checkpoint: Some(CheckpointStatus {
            step: 1200,
            path: "/checkpoints/step-1200".into(),
            bytes: Some(14 << 30),
            save_seconds: Some(21.1),
            time: None,
        }),
        grace_period_seconds: Some(27),
        ..Default::default()
    });
    let text = serde_json::to_string(&tj).unwrap();
    let back: TrainingJob = serde_json::from_str(&text).unwrap();
    assert_eq!(back.spec, tj.spec);
    assert_eq!(back.status, tj.status);
    // The wire names are camelCase, as every Kubernetes API.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["spec"]["sharedMemory"]["dataLoader"]["batchBytes"],
        "256Mi"
    );
    assert_eq!(v["status"]["lastCheckpoint"]["saveSeconds"], 21.1);
    assert_eq!(v["status"]["phase"], "Resuming");
}

#[test]
fn absent_optional_fields_are_not_serialized() {
    // Server-side apply owns every field we send: a `null` would claim it.
    let tj: TrainingJob = serde_json::from_value(minimal()).unwrap();
    let v = serde_json::to_value(&tj.spec).unwrap();
    assert!(v.get("sharedMemory").is_none());
    assert!(v["checkpoint"].get("sizeHint").is_none());
    let status = serde_json::to_value(TrainingJobStatus::default()).unwrap();
    assert_eq!(
        status,
        json!({"attempt": 0, "preemptions": 0, "failures": 0, "stepsLost": 0, "attemptsWithoutProgress": 0})
    );
}

#[test]
fn the_crd_names_the_resource_as_users_type_it() {
    let crd = TrainingJob::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("trainingjobs.trainingjob.dev")
    );
    let names = &crd.spec.names;
    assert_eq!(names.kind, "TrainingJob");
    assert_eq!(names.short_names.as_deref(), Some(&["tj".to_string()][..]));
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
}

#[test]
fn conditions_are_a_list_map_keyed_by_type() {
    let crd = serde_json::to_value(TrainingJob::crd()).unwrap();
    let conditions = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        ["status"]["properties"]["conditions"];
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
}

fn openapi() -> serde_json::Value {
    let crd = serde_json::to_value(TrainingJob::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn messages(rules: &serde_json::Value) -> Vec<String> {
    rules
        .as_array()
        .unwrap_or_else(|| panic!("no rules: {rules}"))
        .iter()
        .map(|r| {
            let m = r.get("message").or_else(|| r.get("messageExpression"));
            m.and_then(|m| m.as_str()).unwrap_or_default().to_string()
        })
        .collect()
}

#[test]
fn the_crd_carries_the_admission_rules_where_cel_can_reach_their_fields() {
    let root = openapi();
    let on_root = messages(&root["x-kubernetes-validations"]);
    assert!(on_root.iter().any(|m| m.contains("at most 63 characters")));
    assert!(on_root.iter().any(|m| m.contains("DNS-1035")));
    let spec = &root["properties"]["spec"];
    let on_spec = messages(&spec["x-kubernetes-validations"]);
    assert!(on_spec
        .iter()
        .any(|m| m.contains("sizeLimit must be below")));
    let pod = &spec["properties"]["template"]["properties"]["spec"]["properties"];
    let on_containers = messages(&pod["containers"]["x-kubernetes-validations"]);
    for needle in [
        "shell form",
        "$(VAR)",
        "/dev/termination-log",
        "TJ_*",
        "tj-",
    ] {
        assert!(
            on_containers.iter().any(|m| m.contains(needle)),
            "no container rule mentions {needle}"
        );
    }
    for list in ["initContainers", "volumes"] {
        assert!(messages(&pod[list]["x-kubernetes-validations"])[0].contains("tj-"));
    }
}

#[test]
fn cel_regexes_keep_their_backslashes() {
    assert_eq!(cel::quote(r"\.x'"), r"'\\.x\''");
    let rule = serde_json::to_string(&openapi()).unwrap();
    assert!(
        rule.contains(r"(/|\\\\./)*"),
        "the reserved-path regex lost its escapes"
    );
}
