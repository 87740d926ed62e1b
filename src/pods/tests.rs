use super::*;
use crate::api::TrainingJob;
use crate::labels::MANAGED_BY;
use serde_json::json;

fn job(extra: serde_json::Value) -> TrainingJob {
    let mut v = json!({
        "apiVersion": "trainingjob.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "llm", "namespace": "ml", "uid": "u-1"},
        "spec": {
            "replicas": 1,
            "checkpoint": {"claimName": "ckpt", "mountPath": "/checkpoints"},
            "template": {"spec": {"containers": [
                {"name": "trainer", "image": "img", "command": ["python3", "train.py"], "args": ["--lr", "0.1"]}
            ]}}
        }
    });
    merge(&mut v["spec"], extra);
    serde_json::from_value(v).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn plan() -> AttemptPlan {
    AttemptPlan {
        attempt: 2,
        grace_seconds: 27,
        checkpoint_interval_seconds: Some(600),
        shm_bytes: Some(16 << 30),
        operator_image: "localhost/trainingjob-operator:dev".into(),
        spot: None,
    }
}

fn trainer(pod: &Pod) -> &Container {
    let containers = &pod.spec.as_ref().unwrap().containers;
    containers.iter().find(|c| c.name == "trainer").unwrap()
}

fn env(pod: &Pod, name: &str) -> Option<String> {
    trainer(pod)
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .clone()
}

#[test]
fn one_pod_per_rank_named_by_attempt_and_rank() {
    let pods = build_pods(&job(json!({"replicas": 3})), &plan()).unwrap();
    let names: Vec<_> = pods
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["llm-a2-r0", "llm-a2-r1", "llm-a2-r2"]);
    for (rank, pod) in pods.iter().enumerate() {
        assert_eq!(env(pod, "RANK").unwrap(), rank.to_string());
        assert_eq!(env(pod, "WORLD_SIZE").unwrap(), "3");
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ml"));
        assert_eq!(
            pod.spec.as_ref().unwrap().restart_policy.as_deref(),
            Some("Never")
        );
    }
}

#[test]
fn the_trainer_runs_under_the_launcher_in_exec_form() {
    let pod = build_pod(&job(json!({})), &plan(), 0).unwrap();
    let c = trainer(&pod);
    let command = c.command.as_deref().unwrap();
    assert_eq!(&command[..2], ["/tj/launcher", "run"]);
    let dash = command.iter().position(|a| a == "--").unwrap();
    assert_eq!(&command[dash + 1..], ["python3", "train.py"]);
    // The launcher's settings are flags: the template's env cannot undo them.
    let flags = command[2..dash].join(" ");
    assert!(flags.contains("--report /dev/termination-log"), "{flags}");
    assert!(
        flags.contains("--rank 0") && flags.contains("--attempt 2"),
        "{flags}"
    );
    // Two containers (the trainer and the launcher's installer) share 12 KiB.
    assert!(flags.contains("--report-max-bytes 4096"), "{flags}");
    // Kubernetes appends args to command, so the user's args follow the command.
    assert_eq!(c.args.as_deref().unwrap(), ["--lr", "0.1"]);
    assert_eq!(c.termination_message_policy.as_deref(), Some("File"));
    let spec = pod.spec.as_ref().unwrap();
    let init = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(
        init.image.as_deref(),
        Some("localhost/trainingjob-operator:dev")
    );
    assert_eq!(
        init.command.as_deref().unwrap(),
        ["/launcher", "install", "/tj/launcher"]
    );
    let mounts = c.volume_mounts.as_ref().unwrap();
    let launcher = mounts.iter().find(|m| m.mount_path == "/tj").unwrap();
    assert_eq!(launcher.read_only, Some(true));
    assert_eq!(init.volume_mounts.as_ref().unwrap()[0].name, launcher.name);
}

#[test]
fn grace_comes_from_the_plan() {
    let pod = build_pod(&job(json!({})), &plan(), 0).unwrap();
    assert_eq!(pod.spec.unwrap().termination_grace_period_seconds, Some(27));
}

#[test]
fn dev_shm_is_a_memory_backed_emptydir_of_the_planned_size() {
    let pod = build_pod(&job(json!({})), &plan(), 0).unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let shm = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tj-shm")
        .unwrap();
    let dir = shm.empty_dir.as_ref().unwrap();
    assert_eq!(dir.medium.as_deref(), Some("Memory"));
    assert_eq!(dir.size_limit, Some(Quantity("16Gi".into())));
    let mount = trainer(&pod)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "tj-shm")
        .unwrap();
    assert_eq!(mount.mount_path, "/dev/shm");

    let without = build_pod(
        &job(json!({})),
        &AttemptPlan {
            shm_bytes: None,
            ..plan()
        },
        0,
    )
    .unwrap();
    assert!(!without
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .iter()
        .any(|v| v.name == "tj-shm"));
}

#[test]
fn the_checkpoint_claim_is_mounted_where_the_spec_says() {
    let pod = build_pod(
        &job(json!({"checkpoint": {"mountPath": "/ckpt"}})),
        &plan(),
        0,
    )
    .unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let vol = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tj-checkpoints")
        .unwrap();
    assert_eq!(
        vol.persistent_volume_claim.as_ref().unwrap().claim_name,
        "ckpt"
    );
    assert!(trainer(&pod)
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.mount_path == "/ckpt"));
    assert_eq!(env(&pod, "TJ_CHECKPOINT_DIR").unwrap(), "/ckpt");
}

#[test]
fn the_trainer_learns_rank_attempt_grace_and_interval() {
    let pod = build_pod(&job(json!({})), &plan(), 0).unwrap();
    assert_eq!(env(&pod, "TJ_ATTEMPT").unwrap(), "2");
    assert_eq!(env(&pod, "TJ_GRACE_SECONDS").unwrap(), "27");
    assert_eq!(env(&pod, "TJ_CHECKPOINT_INTERVAL_SECONDS").unwrap(), "600");
    assert_eq!(env(&pod, "MASTER_ADDR").unwrap(), "localhost");
    assert_eq!(env(&pod, "MASTER_PORT").unwrap(), "29500");
}

#[test]
fn template_env_cannot_override_the_rank() {
    let j = job(json!({"template": {"spec": {"containers": [
        {"name": "trainer", "image": "img", "command": ["python3"], "env": [
            {"name": "RANK", "value": "7"}, {"name": "HF_HOME", "value": "/cache"}
        ]}
    ]}}}));
    let pod = build_pod(&j, &plan(), 0).unwrap();
    let envs = trainer(&pod).env.as_ref().unwrap();
    assert_eq!(envs.iter().filter(|e| e.name == "RANK").count(), 1);
    assert_eq!(env(&pod, "RANK").unwrap(), "0");
    assert_eq!(env(&pod, "HF_HOME").unwrap(), "/cache");
}

#[test]
fn multi_rank_jobs_get_a_headless_service_and_rank_zero_as_master() {
    let j = job(json!({"replicas": 2}));
    let pods = build_pods(&j, &plan()).unwrap();
    for pod in &pods {
        assert_eq!(env(pod, "MASTER_ADDR").unwrap(), "llm-r0.llm.ml.svc");
        assert_eq!(pod.spec.as_ref().unwrap().subdomain.as_deref(), Some("llm"));
    }
    assert_eq!(
        pods[1].spec.as_ref().unwrap().hostname.as_deref(),
        Some("llm-r1")
    );
    let svc = build_service(&j).unwrap();
    let spec = svc.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.publish_not_ready_addresses, Some(true));
    assert_eq!(spec.selector.unwrap()[JOB_LABEL], "llm");
    assert!(build_service(&job(json!({}))).is_none());
}

#[test]
fn gpu_requests_equal_limits() {
    let j = job(json!({"template": {"spec": {"containers": [
        {"name": "trainer", "image": "img", "command": ["python3"],
         "resources": {"limits": {"nvidia.com/gpu": "8", "memory": "200Gi"}}}
    ]}}}));
    let pod = build_pod(&j, &plan(), 0).unwrap();
    let res = trainer(&pod).resources.as_ref().unwrap();
    assert_eq!(
        res.requests.as_ref().unwrap()["nvidia.com/gpu"],
        Quantity("8".into())
    );
    let tolerations = pod.spec.as_ref().unwrap().tolerations.clone().unwrap();
    assert!(tolerations
        .iter()
        .any(|t| t.key.as_deref() == Some("nvidia.com/gpu")));
}

#[test]
fn spot_adds_the_providers_selector_and_toleration() {
    let j = job(json!({}));
    let with = |provider| AttemptPlan {
        spot: Some(provider),
        ..plan()
    };
    let spec = build_pod(&j, &with(SpotProvider::Gke), 0)
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        spec.node_selector.unwrap()["cloud.google.com/gke-spot"],
        "true"
    );
    let t = &spec.tolerations.unwrap()[0];
    assert_eq!(t.key.as_deref(), Some("cloud.google.com/gke-spot"));
    assert_eq!(t.effect.as_deref(), Some("NoSchedule"));

    let spec = build_pod(&j, &with(SpotProvider::Eks), 0)
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(
        spec.node_selector.unwrap()["eks.amazonaws.com/capacityType"],
        "SPOT"
    );
    assert!(placement_tolerations(&spec.tolerations).is_empty());
    let none = build_pod(&j, &plan(), 0).unwrap().spec.unwrap();
    assert!(none.node_selector.is_none());
}

#[test]
fn template_node_selector_and_tolerations_are_kept() {
    let j = job(json!({"template": {"spec": {
        "nodeSelector": {"pool": "a100"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}]
    }}}));
    let aks = AttemptPlan {
        spot: Some(SpotProvider::Aks),
        ..plan()
    };
    let spec = build_pod(&j, &aks, 0).unwrap().spec.unwrap();
    let sel = spec.node_selector.unwrap();
    assert_eq!(sel["pool"], "a100");
    assert_eq!(sel["kubernetes.azure.com/scalesetpriority"], "spot");
    assert_eq!(placement_tolerations(&spec.tolerations).len(), 2);
}

#[test]
fn no_service_account_token_unless_asked() {
    let pod = build_pod(&job(json!({})), &plan(), 0).unwrap();
    assert_eq!(
        pod.spec.unwrap().automount_service_account_token,
        Some(false)
    );
    let asked = job(json!({"template": {"spec": {"automountServiceAccountToken": true}}}));
    let pod = build_pod(&asked, &plan(), 0).unwrap();
    assert_eq!(
        pod.spec.unwrap().automount_service_account_token,
        Some(true)
    );
}

#[test]
fn labels_and_owner_reference_on_everything() {
    let j = job(json!({"replicas": 2, "template": {"metadata": {"labels": {"team": "llm"}}}}));
    let pod = build_pod(&j, &plan(), 1).unwrap();
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[JOB_LABEL], "llm");
    assert_eq!(labels[RANK_LABEL], "1");
    assert_eq!(labels[ATTEMPT_LABEL], "2");
    assert_eq!(labels["team"], "llm");
    assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGED_BY);
    assert_eq!(
        pod.metadata.finalizers.as_deref().unwrap(),
        [REPORT_FINALIZER]
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "TrainingJob");
    assert_eq!(owner.uid, "u-1");
    assert_eq!(owner.controller, Some(true));
    let svc = build_service(&j).unwrap();
    assert_eq!(svc.metadata.owner_references.unwrap()[0].uid, "u-1");
    assert_eq!(svc.metadata.labels.unwrap()[JOB_LABEL], "llm");
}

#[test]
fn the_trainer_is_the_container_named_trainer() {
    let j = job(json!({"template": {"spec": {"containers": [
        {"name": "sidecar", "image": "s"},
        {"name": "trainer", "image": "img", "command": ["python3"]}
    ]}}}));
    let pod = build_pod(&j, &plan(), 0).unwrap();
    let containers = &pod.spec.as_ref().unwrap().containers;
    assert_eq!(containers[0].command, None);
    assert_eq!(containers[1].command.as_ref().unwrap()[0], "/tj/launcher");
}

#[test]
fn what_cannot_run_is_an_error_that_says_what_to_change() {
    let none = job(json!({"template": {"spec": {"containers": [
        {"name": "a", "image": "s"}, {"name": "b", "image": "s"}
    ]}}}));
    assert_eq!(build_pod(&none, &plan(), 0), Err(BuildError::NoTrainer(2)));
    let shell = job(json!({"template": {"spec": {"containers": [
        {"name": "trainer", "image": "s", "command": ["/bin/sh", "-c", "python3 train.py"]}
    ]}}}));
    let err = build_pod(&shell, &plan(), 0).unwrap_err();
    assert!(matches!(err, BuildError::ShellForm(_)), "{err}");
    let no_cmd =
        job(json!({"template": {"spec": {"containers": [{"name": "trainer", "image": "s"}]}}}));
    assert_eq!(build_pod(&no_cmd, &plan(), 0), Err(BuildError::NoCommand));
    let taken =
        job(json!({"template": {"spec": {"volumes": [{"name": "tj-shm", "emptyDir": {}}]}}}));
    assert_eq!(
        build_pod(&taken, &plan(), 0),
        Err(BuildError::VolumeNameTaken("tj-shm".into()))
    );
}

#[test]
fn names_and_paths_the_operator_owns_are_refused_however_spelled() {
    for (field, value) in [
        (
            "volumeMounts",
            json!([{"name": "v", "mountPath": "/dev//shm"}]),
        ),
        (
            "volumeMounts",
            json!([{"name": "v", "mountPath": "/tj/launcher"}]),
        ),
        (
            "volumeMounts",
            json!([{"name": "v", "mountPath": "/dev/./termination-log"}]),
        ),
        (
            "volumeMounts",
            json!([{"name": "v", "mountPath": "/x/../tj/"}]),
        ),
    ] {
        let mut spec = json!({"name": "trainer", "image": "img", "command": ["python3"]});
        spec[field] = value.clone();
        let j = job(
            json!({"template": {"spec": {"containers": [spec], "volumes": [{"name": "v", "emptyDir": {}}]}}}),
        );
        assert!(
            matches!(build_pod(&j, &plan(), 0), Err(BuildError::MountTaken(_))),
            "{value}"
        );
    }
    let j = job(json!({"template": {"spec": {"containers": [
        {"name": "trainer", "image": "img", "command": ["python3"]}],
        "volumes": [{"name": "tj-shm", "emptyDir": {}}]}}}));
    assert!(matches!(
        build_pod(&j, &plan(), 0),
        Err(BuildError::VolumeNameTaken(_))
    ));
    let j = job(json!({"template": {"spec": {"containers": [
        {"name": "trainer", "image": "img", "command": ["python3"]}],
        "initContainers": [{"name": "tj-launcher-install", "image": "x"}]}}}));
    assert!(matches!(
        build_pod(&j, &plan(), 0),
        Err(BuildError::ContainerNameTaken(_))
    ));
}

#[test]
fn the_installer_is_restricted_whatever_the_pod_says() {
    let j = job(
        json!({"template": {"spec": {"securityContext": {"runAsUser": 0},
        "containers": [{"name": "trainer", "image": "img", "command": ["python3"]}]}}}),
    );
    let pod = build_pod(&j, &plan(), 0).unwrap();
    let init = &pod.spec.unwrap().init_containers.unwrap()[0];
    let sc = init.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_user, Some(INSTALLER_UID));
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
}

#[test]
fn each_job_gets_its_own_directory_of_the_claim_unless_it_opts_out() {
    let mount = |j: &TrainingJob| {
        let pod = build_pod(j, &plan(), 0).unwrap();
        let c = trainer(&pod).clone();
        c.volume_mounts
            .unwrap()
            .into_iter()
            .find(|m| m.mount_path == "/checkpoints")
            .unwrap()
    };
    assert_eq!(mount(&job(json!({}))).sub_path.as_deref(), Some("llm"));
    let root = job(
        json!({"checkpoint": {"claimName": "ckpt", "mountPath": "/checkpoints", "subPath": ""}}),
    );
    assert_eq!(mount(&root).sub_path, None);
    let named = job(
        json!({"checkpoint": {"claimName": "ckpt", "mountPath": "/checkpoints", "subPath": "runs/a"}}),
    );
    assert_eq!(mount(&named).sub_path.as_deref(), Some("runs/a"));
}

#[test]
fn devices_claimed_through_dynamic_resource_allocation_reach_the_pod_unchanged() {
    let j = job(json!({"template": {"spec": {
        "resourceClaims": [{"name": "gpus", "resourceClaimTemplateName": "eight-h100"}],
        "containers": [{"name": "trainer", "image": "img", "command": ["python3"],
                        "resources": {"claims": [{"name": "gpus"}]}}]}}}));
    let pod = build_pod(&j, &plan(), 0).unwrap();
    let resources = trainer(&pod).resources.as_ref().unwrap();
    assert_eq!(resources.claims.as_ref().unwrap()[0].name, "gpus");
    let spec = pod.spec.unwrap();
    let claims = spec.resource_claims.unwrap();
    assert_eq!(claims[0].name, "gpus");
    assert_eq!(
        claims[0].resource_claim_template_name.as_deref(),
        Some("eight-h100")
    );
    assert!(
        placement_tolerations(&spec.tolerations).is_empty(),
        "a claim is not an extended resource"
    );
}

#[test]
fn an_amd_gpu_gets_the_same_treatment_as_an_nvidia_one() {
    let j = job(
        json!({"template": {"spec": {"containers": [{"name": "trainer", "image": "img",
        "command": ["python3"], "resources": {"limits": {"amd.com/gpu": "8"}}}]}}}),
    );
    let pod = build_pod(&j, &plan(), 0).unwrap();
    let requests = trainer(&pod).resources.as_ref().unwrap().requests.as_ref();
    assert_eq!(requests.unwrap()["amd.com/gpu"].0, "8");
    let t = &pod.spec.unwrap().tolerations.unwrap()[0];
    assert_eq!(t.key.as_deref(), Some("amd.com/gpu"));
}

/// Tolerations other than the lost-node ones every pod gets.
fn placement_tolerations(
    tolerations: &Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
) -> Vec<String> {
    tolerations
        .iter()
        .flatten()
        .filter_map(|t| t.key.clone())
        .filter(|k| !NODE_LOST_TAINTS.contains(&k.as_str()))
        .collect()
}

#[test]
fn a_pod_leaves_a_lost_node_after_node_unreachable_seconds_not_300() {
    let spec = build_pod(&job(json!({})), &plan(), 0)
        .unwrap()
        .spec
        .unwrap();
    let lost: Vec<_> = spec
        .tolerations
        .iter()
        .flatten()
        .filter(|t| t.effect.as_deref() == Some("NoExecute"))
        .map(|t| (t.key.clone().unwrap(), t.toleration_seconds))
        .collect();
    assert_eq!(
        lost,
        [
            ("node.kubernetes.io/not-ready".to_string(), Some(30)),
            ("node.kubernetes.io/unreachable".to_string(), Some(30))
        ]
    );
    let mine = job(
        json!({"preemption": {"nodeUnreachableSeconds": 5}, "template": {"spec": {
        "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                         "effect": "NoExecute", "tolerationSeconds": 600}],
        "containers": [{"name": "trainer", "image": "img", "command": ["python3"]}]}}}),
    );
    let spec = build_pod(&mine, &plan(), 0).unwrap().spec.unwrap();
    let secs: Vec<_> = spec
        .tolerations
        .unwrap()
        .iter()
        .map(|t| t.toleration_seconds)
        .collect();
    assert_eq!(
        secs,
        [Some(600), Some(5)],
        "the template's own toleration wins"
    );
}

#[test]
fn a_job_on_a_kueue_queue_is_one_pod_group_per_attempt() {
    use crate::queue::*;
    let mut j = job(json!({"replicas": 2}));
    let pods = build_pods(&j, &plan()).unwrap();
    assert!(!pods[0].labels().contains_key(POD_GROUP_NAME_LABEL));
    assert!(pods[0].metadata.annotations.is_none());
    j.metadata.labels = Some(
        [(QUEUE_NAME_LABEL, "team-a"), (PRIORITY_CLASS_LABEL, "low")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    for pod in build_pods(&j, &plan()).unwrap() {
        let labels = pod.labels();
        assert_eq!(labels[QUEUE_NAME_LABEL], "team-a");
        assert_eq!(labels[PRIORITY_CLASS_LABEL], "low");
        assert_eq!(labels[POD_GROUP_NAME_LABEL], "llm-a2");
        assert_eq!(pod.annotations()[POD_GROUP_TOTAL_COUNT_ANNOTATION], "2");
        assert_eq!(pod.annotations()[RETRIABLE_IN_GROUP_ANNOTATION], "false");
    }
}
