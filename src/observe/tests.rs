use super::*;
use serde_json::json;

fn job() -> TrainingJob {
    serde_json::from_value(json!({
        "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "j", "namespace": "ns"},
        "spec": {"checkpoint": {"claimName": "c"},
                 "template": {"spec": {"containers": [{"name": "trainer", "image": "i", "command": ["t"]}]}}}
    }))
    .unwrap()
}

pub(crate) fn pod(phase: &str, extra_status: serde_json::Value, deleting: bool) -> Pod {
    let mut status = json!({"phase": phase});
    if let (Some(s), serde_json::Value::Object(e)) = (status.as_object_mut(), extra_status) {
        s.extend(e);
    }
    let mut meta = json!({"name": "j-a1-r0", "labels": {"trainingjob.dev/rank": "0", "trainingjob.dev/attempt": "1"}});
    if deleting {
        meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    serde_json::from_value(json!({"metadata": meta, "status": status})).unwrap()
}

fn terminated(code: i32, message: &str) -> serde_json::Value {
    json!({"containerStatuses": [{"name": "trainer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"terminated": {"exitCode": code, "reason": if code == 0 {"Completed"} else {"Error"},
                                 "message": message, "finishedAt": "2026-01-01T00:00:10Z"}}}]})
}

fn report(state: &str) -> String {
    json!({"version": 1, "state": state, "exitCode": 0,
           "signal": {"name": "SIGTERM", "atUnixMs": 1},
           "signalToExitSeconds": 1.5,
           "lastCheckpoint": {"step": 40, "path": "/checkpoints/step-40", "bytes": 100, "atUnixMs": 1767225600000u64}})
    .to_string()
}

#[test]
fn a_running_trainer_is_live_with_no_outcome() {
    let p = pod(
        "Running",
        json!({"containerStatuses": [{"name": "trainer", "image": "i", "imageID": "", "ready": true,
        "restartCount": 0, "state": {"running": {}}}]}),
        false,
    );
    let v = view(&job(), &p).unwrap();
    assert!(v.live && v.running && !v.deleting);
    assert_eq!((v.rank, v.attempt), (0, 1));
    assert_eq!(v.outcome, None);
}

#[test]
fn exit_zero_without_a_signal_is_completion() {
    let v = view(
        &job(),
        &pod("Succeeded", terminated(0, &report("completed")), false),
    )
    .unwrap();
    assert_eq!(v.outcome, Some(Outcome::Completed));
    assert!(!v.live);
    assert_eq!(v.report.unwrap().last_checkpoint.unwrap().step, 40);
}

#[test]
fn exit_zero_after_a_signal_to_a_deleted_pod_is_a_preemption_not_completion() {
    let v = view(
        &job(),
        &pod("Succeeded", terminated(0, &report("signalled")), true),
    )
    .unwrap();
    match v.outcome {
        Some(Outcome::Disrupted { reason, message }) => {
            assert_eq!(reason, "PodDeleted");
            assert!(message.contains("after SIGTERM"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_signal_the_cluster_did_not_send_is_only_the_trainers_word() {
    // `kill -TERM 1` from inside the trainer: nothing took the pod away.
    let v = view(
        &job(),
        &pod("Succeeded", terminated(0, &report("signalled")), false),
    )
    .unwrap();
    match v.outcome {
        Some(Outcome::Stopped { reason, .. }) => assert_eq!(reason, "SignalWithoutDisruption"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_report_that_does_not_parse_is_said_not_dropped() {
    let status = terminated(3, "{\"version\":1,\"state\":\"fail");
    let v = view(&job(), &pod("Failed", status, false)).unwrap();
    assert!(v.report.is_none());
    assert!(v.report_error.is_some());
}

#[test]
fn a_disruption_target_condition_names_the_reason() {
    let status = json!({"conditions": [{"type": "DisruptionTarget", "status": "True",
        "reason": "EvictionByEvictionAPI", "message": "Eviction API: evicting"}]});
    let v = view(&job(), &pod("Running", status, true)).unwrap();
    assert_eq!(
        v.outcome,
        Some(Outcome::Disrupted {
            reason: "EvictionByEvictionAPI".into(),
            message: "Eviction API: evicting".into()
        })
    );
}

#[test]
fn kueues_termination_target_names_its_eviction() {
    let status = json!({"conditions": [{"type": "TerminationTarget", "status": "True",
        "reason": "WorkloadEvictedDueToPreempted", "message": "Preempted to accommodate a workload"}]});
    let v = view(&job(), &pod("Running", status, true)).unwrap();
    assert!(matches!(
        v.outcome,
        Some(Outcome::Disrupted { ref reason, .. }) if reason == "WorkloadEvictedDueToPreempted"
    ));
}

#[test]
fn a_deleted_pod_is_disrupted_even_before_its_trainer_exits() {
    let v = view(&job(), &pod("Running", json!({}), true)).unwrap();
    assert!(
        matches!(v.outcome, Some(Outcome::Disrupted { ref reason, .. }) if reason == "PodDeleted")
    );
}

#[test]
fn a_kubelet_eviction_is_a_disruption() {
    let v = view(
        &job(),
        &pod(
            "Failed",
            json!({"reason": "Evicted", "message": "low on memory"}),
            false,
        ),
    )
    .unwrap();
    assert!(
        matches!(v.outcome, Some(Outcome::Disrupted { ref reason, .. }) if reason == "Evicted")
    );
}

#[test]
fn non_zero_without_a_signal_is_a_failure_quoting_the_report() {
    let msg = json!({"version": 1, "state": "failed", "exitCode": 3}).to_string();
    let v = view(&job(), &pod("Failed", terminated(3, &msg), false)).unwrap();
    match v.outcome {
        Some(Outcome::Failed {
            exit_code, message, ..
        }) => {
            assert_eq!(exit_code, 3);
            assert!(message.contains("\"state\":\"failed\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_or_garbled_report_does_not_panic() {
    let v = view(&job(), &pod("Failed", terminated(1, "{not json"), false)).unwrap();
    assert!(v.report.is_none());
    assert!(matches!(
        v.outcome,
        Some(Outcome::Failed { exit_code: 1, .. })
    ));
    let unlabelled: Pod = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    assert!(view(&job(), &unlabelled).is_none());
}

#[test]
fn a_lock_held_by_an_earlier_trainer_is_not_the_trainers_failure() {
    let r =
        json!({"version": 1, "state": "failed", "exitCode": 75, "lock": "timedOut"}).to_string();
    let v = view(&job(), &pod("Failed", terminated(75, &r), false)).unwrap();
    assert!(
        matches!(&v.outcome, Some(Outcome::Disrupted { reason, .. }) if reason == "EarlierTrainerAlive"),
        "{:?}",
        v.outcome
    );
}
