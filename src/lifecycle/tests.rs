use super::*;
use crate::api::SaveStatus;
use crate::api::TrainingJob;
use crate::conditions::ConditionType::{self, *};
use launcher::report::{LastCheckpoint, Report, Saves, State};
use serde_json::json;

fn job(status: Option<TrainingJobStatus>) -> TrainingJob {
    let mut j: TrainingJob = serde_json::from_value(json!({
        "apiVersion": "trainingjob.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "j", "namespace": "ns", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"replicas": 2, "backoffLimit": 1,
                 "checkpoint": {"claimName": "c"},
                 "preemption": {"noticeSeconds": 30, "maxPreemptions": 2},
                 "template": {"spec": {"containers": [{"name": "trainer", "image": "i", "command": ["t"]}]}}}
    }))
    .unwrap();
    j.status = status;
    j
}

fn now() -> Timestamp {
    "2026-01-01T01:00:00Z".parse().unwrap()
}

fn pv(attempt: i32, rank: i32) -> PodView {
    PodView {
        name: crate::pods::pod_name("j", attempt, rank),
        rank,
        attempt,
        live: true,
        deleting: false,
        running: true,
        outcome: None,
        report: None,
        report_error: None,
        releasable: false,
        finished_at: None,
        ..Default::default()
    }
}

fn ended(mut p: PodView, outcome: Outcome) -> PodView {
    p.live = false;
    p.running = false;
    p.outcome = Some(outcome);
    p.finished_at = Some(now() - SignedDuration::from_secs(60));
    p
}

fn run(j: &TrainingJob, pods: &[PodView]) -> Decision {
    decide(&Inputs {
        defaults: &Defaults::default(),
        job: j,
        pods,
        problems: &[],
        now: now(),
        operator_image: "op:1",
    })
}

fn status(phase: Phase, attempt: i32) -> TrainingJobStatus {
    TrainingJobStatus {
        phase: Some(phase),
        attempt,
        ..Default::default()
    }
}

fn cond(
    s: &TrainingJobStatus,
    t: ConditionType,
) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    crate::conditions::find(&s.conditions, t).unwrap_or_else(|| panic!("no {t:?} condition"))
}

/// A preemption of `attempt`, as status records it.
fn preempted_at(attempt: i32) -> Interruption {
    Interruption {
        attempt,
        kind: InterruptionKind::Preemption,
        rank: 0,
        reason: "x".into(),
        message: String::new(),
        steps_lost: None,
        timeline: None,
        time: None,
    }
}

fn reasons(d: &Decision) -> Vec<&'static str> {
    d.transitions.iter().map(|t| t.reason()).collect()
}

#[test]
fn a_new_job_starts_attempt_one_with_the_whole_notice_as_grace() {
    let d = run(&job(None), &[]);
    assert_eq!(d.create_attempt(), Some(1));
    assert_eq!(d.status.attempt, 1);
    assert_eq!(d.status.phase, Some(Phase::Pending));
    assert_eq!(d.status.grace_period_seconds, Some(30));
    assert_eq!(reasons(&d), ["Started"]);
}

#[test]
fn all_ranks_running_is_running_and_ready() {
    let d = run(&job(Some(status(Phase::Pending, 1))), &[pv(1, 0), pv(1, 1)]);
    assert_eq!(d.status.phase, Some(Phase::Running));
    assert_eq!(cond(&d.status, Ready).status, "True");
    assert_eq!(d.create_attempt(), None);
    assert!(d.delete.is_empty());
}

#[test]
fn one_rank_still_pending_is_not_ready() {
    let mut p1 = pv(1, 1);
    p1.running = false;
    let d = run(&job(Some(status(Phase::Pending, 1))), &[pv(1, 0), p1]);
    assert_eq!(d.status.phase, Some(Phase::Pending));
    assert_eq!(
        cond(&d.status, Ready).message,
        "attempt 1: waiting for all 2 ranks to run"
    );
}

#[test]
fn ranks_coming_up_one_by_one_leave_the_status_alone() {
    let pending = |rank| {
        let mut p = pv(1, rank);
        p.running = false;
        p
    };
    let mut job = job(Some(status(Phase::Pending, 1)));
    job.spec.replicas = 3;
    let first = run(&job, &[pv(1, 0), pending(1), pending(2)]);
    job.status = Some(first.status.clone());
    let second = run(&job, &[pv(1, 0), pv(1, 1), pending(2)]);
    assert_eq!(second.status, first.status);
    assert!(second.transitions.is_empty());
}

#[test]
fn a_disrupted_rank_stops_the_whole_gang_and_counts_a_preemption_not_a_failure() {
    let mut p0 = pv(1, 0);
    p0.deleting = true;
    p0.outcome = Some(Outcome::Disrupted {
        reason: "EvictionByEvictionAPI".into(),
        message: "drain".into(),
    });
    let d = run(&job(Some(status(Phase::Running, 1))), &[p0, pv(1, 1)]);
    assert_eq!(d.status.phase, Some(Phase::Stopping));
    assert_eq!((d.status.preemptions, d.status.failures), (1, 0));
    // Rank 0 is already being deleted; rank 1 is stopped at once.
    assert_eq!(d.delete, vec!["j-a1-r1".to_string()]);
    let i = &d.status.interruptions[0];
    assert_eq!(
        (i.attempt, i.rank, i.kind),
        (1, 0, InterruptionKind::Preemption)
    );
    assert_eq!(i.reason, "EvictionByEvictionAPI");
    assert_eq!(d.create_attempt(), None);
}

#[test]
fn a_vanished_pod_is_a_preemption() {
    let d = run(&job(Some(status(Phase::Running, 1))), &[pv(1, 1)]);
    assert_eq!(d.status.preemptions, 1);
    assert_eq!(d.status.interruptions[0].reason, "PodDeleted");
}

#[test]
fn no_new_attempt_while_any_old_pod_can_still_run() {
    let mut s = status(Phase::Stopping, 1);
    s.preemptions = 1;
    s.interruptions.push(Interruption {
        attempt: 1,
        kind: InterruptionKind::Preemption,
        rank: 0,
        reason: "PodDeleted".into(),
        message: String::new(),
        steps_lost: None,
        timeline: None,
        time: None,
    });
    let mut p1 = pv(1, 1);
    p1.deleting = true;
    let d = run(&job(Some(s.clone())), &[p1]);
    assert_eq!(d.create_attempt(), None);
    assert!(d.delete.is_empty(), "already being deleted");
    assert_eq!(d.status.phase, Some(Phase::Stopping));

    // Once every old pod is gone (or terminal), the next attempt starts.
    let gone = ended(
        pv(1, 1),
        Outcome::Disrupted {
            reason: "PodDeleted".into(),
            message: String::new(),
        },
    );
    let d = run(&job(Some(s)), &[gone]);
    assert_eq!(d.create_attempt(), Some(2));
    assert_eq!(d.status.phase, Some(Phase::Resuming));
    assert_eq!(reasons(&d).last(), Some(&"Resuming"));
}

#[test]
fn the_next_attempts_grace_is_sized_from_the_measured_save() {
    let mut s = status(Phase::Stopping, 1);
    s.preemptions = 1;
    s.interruptions.push(preempted_at(1));
    let mut done = ended(
        pv(1, 0),
        Outcome::Disrupted {
            reason: "x".into(),
            message: String::new(),
        },
    );
    done.report = Some(Report {
        state: State::Signalled,
        last_checkpoint: Some(LastCheckpoint {
            step: 40,
            path: "/c/step-40".into(),
            bytes: 1000,
            at_unix_ms: 0,
        }),
        saves: Some(Saves {
            count: 3,
            last_seconds: Some(4.0),
            last_bytes: 1000,
            p95_seconds: Some(6.0),
            bytes_per_second: Some(250.0),
        }),
        last_step: Some(43),
        ..Default::default()
    });
    let d = run(&job(Some(s)), &[done]);
    assert_eq!(d.status.grace_period_seconds, Some(12)); // 6 x 1.5 + 3
    assert_eq!(d.status.last_checkpoint.as_ref().unwrap().step, 40);
    assert_eq!(d.status.save.as_ref().unwrap().p95_seconds, Some(6.0));
    assert!(d
        .transitions
        .last()
        .unwrap()
        .message()
        .contains("resuming from step 40"));
    // Three steps ran after the last save: the next attempt redoes them.
    assert_eq!(d.status.interruptions[0].steps_lost, Some(3));
}

#[test]
fn a_save_longer_than_the_notice_sets_a_condition_with_the_interval() {
    let mut s = status(Phase::Stopping, 1);
    s.save = Some(SaveStatus {
        count: 1,
        p95_seconds: Some(40.0),
        ..Default::default()
    });
    s.interruptions.push(preempted_at(1));
    s.preemptions = 1;
    let d = run(&job(Some(s)), &[]);
    let c = cond(&d.status, GraceExceedsNotice);
    assert_eq!(c.status, "True");
    assert!(c.message.contains("needs 63s"), "{}", c.message);
    assert!(c.message.contains("33s more than the 30s"), "{}", c.message);
    assert!(
        c.message.contains("TJ_CHECKPOINT_INTERVAL_SECONDS"),
        "{}",
        c.message
    );
    assert_eq!(d.status.grace_period_seconds, Some(30));
    assert!(d.status.recommended_checkpoint_interval_seconds.is_some());
}

#[test]
fn a_non_zero_exit_is_a_failure_then_backoff_then_failed_after_the_limit() {
    let fail = |p| {
        ended(
            p,
            Outcome::Failed {
                exit_code: 1,
                reason: "Error".into(),
                message: "boom".into(),
            },
        )
    };
    let d = run(
        &job(Some(status(Phase::Running, 1))),
        &[fail(pv(1, 0)), pv(1, 1)],
    );
    assert_eq!((d.status.failures, d.status.preemptions), (1, 0));
    assert_eq!(d.status.phase, Some(Phase::Stopping));
    assert_eq!(d.delete, vec!["j-a1-r1".to_string()]);

    // Backoff of 10 s measured from when the trainer exited (60 s ago): due.
    let mut s = d.status.clone();
    let d = run(
        &job(Some(s.clone())),
        &[fail(pv(1, 0)), ended(pv(1, 1), Outcome::Completed)],
    );
    assert_eq!(d.create_attempt(), Some(2));

    // A second failure exceeds backoffLimit 1.
    s.attempt = 2;
    s.phase = Some(Phase::Running);
    let d = run(&job(Some(s)), &[fail(pv(2, 0)), pv(2, 1)]);
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(d.status.failures, 2);
    let c = cond(&d.status, Failed);
    assert_eq!(c.reason, "BackoffLimitExceeded");
    assert!(c.message.contains("exited with code 1"), "{}", c.message);
    assert!(c.message.contains("boom"), "{}", c.message);
    assert_eq!(d.delete, vec!["j-a2-r1".to_string()]);
}

#[test]
fn backoff_waits_from_the_trainers_exit_even_when_its_pod_is_gone() {
    let mut s = status(Phase::Stopping, 1);
    s.failures = 1;
    s.interruptions.push(Interruption {
        kind: InterruptionKind::Failure,
        reason: "ExitCode1".into(),
        time: Some(Time(now() - SignedDuration::from_secs(4))),
        ..preempted_at(1)
    });
    let d = run(&job(Some(s)), &[]);
    assert_eq!(d.create_attempt(), None);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(6)));
    assert_eq!(backoff_seconds(1), 10);
    assert_eq!(backoff_seconds(3), 40);
    assert_eq!(backoff_seconds(30), 300);
}

#[test]
fn a_pod_whose_trainer_exited_is_left_to_end_by_itself() {
    // The kubelet reports the trainer terminated a moment before the pod's
    // phase turns Failed; deleting it then would lose it for `kubectl logs`.
    let mut failed = pv(1, 0);
    failed.running = false;
    failed.outcome = Some(Outcome::Failed {
        exit_code: 1,
        reason: "Error".into(),
        message: String::new(),
    });
    failed.finished_at = Some(now() - SignedDuration::from_secs(1));
    let d = run(
        &job(Some(status(Phase::Running, 1))),
        &[failed.clone(), pv(1, 1)],
    );
    assert_eq!(d.delete, vec!["j-a1-r1".to_string()]);
    let i = d.status.interruptions.last().unwrap();
    assert_eq!(i.time.as_ref().unwrap().0, failed.finished_at.unwrap());
    // A sidecar that keeps it alive long after is stopped.
    failed.finished_at = Some(now() - SignedDuration::from_secs(SIDECAR_GRACE_SECONDS));
    let d = run(&job(Some(d.status)), &[failed]);
    assert_eq!(d.delete, vec!["j-a1-r0".to_string()]);
}

#[test]
fn every_rank_completed_is_success() {
    let d = run(
        &job(Some(status(Phase::Running, 1))),
        &[
            ended(pv(1, 0), Outcome::Completed),
            ended(pv(1, 1), Outcome::Completed),
        ],
    );
    assert_eq!(d.status.phase, Some(Phase::Succeeded));
    assert_eq!(cond(&d.status, Succeeded).status, "True");
    // One rank done, the other still running: keep going.
    let d = run(
        &job(Some(status(Phase::Running, 1))),
        &[ended(pv(1, 0), Outcome::Completed), pv(1, 1)],
    );
    assert_eq!(d.status.phase, Some(Phase::Running));
}

#[test]
fn max_preemptions_exhausted_fails_the_job() {
    let mut s = status(Phase::Stopping, 3);
    s.preemptions = 3;
    s.interruptions.push(preempted_at(3));
    let d = run(&job(Some(s)), &[]);
    assert_eq!(d.status.phase, Some(Phase::Failed));
    assert_eq!(cond(&d.status, Failed).reason, "MaxPreemptionsExceeded");
    assert_eq!(d.create_attempt(), None);
}

#[test]
fn pods_of_a_newer_attempt_mean_creation_was_interrupted() {
    let d = run(&job(Some(status(Phase::Stopping, 1))), &[pv(2, 0)]);
    assert_eq!(d.status.attempt, 2);
    assert_eq!(d.create_attempt(), Some(2));
}

#[test]
fn a_spec_that_cannot_run_gets_a_condition_and_no_pods() {
    let j = job(None);
    let problems = vec![crate::validate::SpecProblem::ClaimMissing {
        claim: "c".into(),
        namespace: "ns".into(),
    }];
    let d = decide(&Inputs {
        job: &j,
        pods: &[],
        problems: &problems,
        now: now(),
        defaults: &Defaults::default(),
        operator_image: "op:1",
    });
    assert_eq!(d.create_attempt(), None);
    let c = cond(&d.status, SpecProblem);
    assert_eq!(c.status, "True");
    assert!(
        c.message.starts_with("spec.checkpoint.claimName: "),
        "{}",
        c.message
    );
    assert!(c.message.contains("not found"));
    assert_eq!(reasons(&d), ["SpecCannotRun"]);
    assert_eq!(
        d.requeue_after,
        Some(Duration::from_secs(SPEC_RETRY_MIN_SECONDS))
    );
    // The same problem again: no second event, and the retry grows.
    let later = Inputs {
        job: &job(Some(d.status.clone())),
        pods: &[],
        problems: &problems,
        now: now() + SignedDuration::from_secs(120),
        defaults: &Defaults::default(),
        operator_image: "op:1",
    };
    let again = decide(&later);
    assert!(again.transitions.is_empty(), "{:?}", again.transitions);
    assert_eq!(again.requeue_after, Some(Duration::from_secs(120)));
}

#[test]
fn deciding_twice_on_the_same_world_writes_the_same_status() {
    let j = job(Some(status(Phase::Pending, 1)));
    let first = run(&j, &[pv(1, 0), pv(1, 1)]);
    let again = run(&job(Some(first.status.clone())), &[pv(1, 0), pv(1, 1)]);
    assert_eq!(again.status, first.status);
    assert!(again.transitions.is_empty());
    assert!(again.delete.is_empty() && again.create_attempt().is_none());
}

#[test]
fn terminal_jobs_only_clean_up() {
    let d = run(&job(Some(status(Phase::Failed, 2))), &[pv(2, 1)]);
    assert_eq!(d.delete, vec!["j-a2-r1".to_string()]);
    assert_eq!(d.create_attempt(), None);
}

fn on_node(mut p: PodView, node: &str, facts: crate::nodes::NodeFacts) -> PodView {
    p.node = Some(node.into());
    p.node_facts = Some(facts);
    p
}

#[test]
fn a_notice_taint_on_one_ranks_node_stops_every_rank_at_once() {
    let notice = crate::nodes::NodeFacts {
        ready: true,
        notice: Some(("cloud.google.com/impending-node-termination".into(), "GKE")),
        ..Default::default()
    };
    let p1 = on_node(pv(1, 1), "spot-1", notice);
    let d = run(&job(Some(status(Phase::Running, 1))), &[pv(1, 0), p1]);
    assert_eq!(d.status.phase, Some(Phase::Stopping));
    assert_eq!((d.status.preemptions, d.status.failures), (1, 0));
    assert_eq!(d.delete, ["j-a1-r0", "j-a1-r1"]);
    let i = &d.status.interruptions[0];
    assert_eq!((i.rank, i.reason.as_str()), (1, "TerminationNotice"));
    assert!(i.message.contains("spot-1"), "{}", i.message);
    assert_eq!(d.status.preemptions_by_reason["TerminationNotice"], 1);
    let t = i.timeline.as_ref().unwrap();
    assert_eq!(t.signalled.as_ref().map(|t| t.0), Some(now()));
}

#[test]
fn an_old_pod_on_an_unreachable_node_holds_the_next_attempt_and_says_how_to_release_it() {
    let mut s = status(Phase::Stopping, 1);
    s.preemptions = 1;
    s.interruptions.push(preempted_at(1));
    let lost = crate::nodes::NodeFacts {
        ready: false,
        reason: Some("NodeStatusUnknown".into()),
        ..Default::default()
    };
    let mut p0 = on_node(pv(1, 0), "gpu-7", lost);
    p0.deleting = true;
    let d = run(&job(Some(s.clone())), std::slice::from_ref(&p0));
    assert_eq!(d.create_attempt(), None);
    let c = cond(&d.status, WaitingForNode);
    assert_eq!(c.status, "True");
    for needed in [
        "j-a1-r0",
        "gpu-7",
        "node.kubernetes.io/out-of-service",
        "delete node",
    ] {
        assert!(c.message.contains(needed), "{needed}: {}", c.message);
    }
    assert_eq!(reasons(&d), ["WaitingForNode"]);
    // The same wait says nothing new; the pod gone, the next attempt starts.
    let again = run(&job(Some(d.status.clone())), &[p0]);
    assert!(!reasons(&again).contains(&"WaitingForNode"));
    let d = run(&job(Some(d.status)), &[]);
    assert_eq!(d.create_attempt(), Some(2));
    assert!(crate::conditions::find(&d.status.conditions, WaitingForNode).is_none());
}

#[test]
fn gated_pods_are_queued_not_stalled() {
    let mut p1 = pv(1, 1);
    p1.running = false;
    p1.gated = true;
    let d = run(&job(Some(status(Phase::Pending, 1))), &[pv(1, 0), p1]);
    let c = cond(&d.status, Ready);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Queued"));
}

#[test]
fn attempts_that_never_advance_the_checkpoint_back_off_with_no_progress() {
    let mut s = status(Phase::Stopping, 4);
    s.preemptions = 2;
    s.attempts_without_progress = 2;
    s.resumed_from_step = Some(40);
    s.last_checkpoint = Some(crate::api::CheckpointStatus {
        step: 40,
        path: "/c/step-40".into(),
        bytes: None,
        save_seconds: None,
        time: None,
    });
    let mut i = preempted_at(4);
    i.time = Some(Time(now()));
    s.interruptions.push(i);
    let d = run(&job(Some(s.clone())), &[]);
    assert_eq!(d.create_attempt(), None, "backs off instead of attempt 5");
    assert_eq!(d.requeue_after, Some(Duration::from_secs(10)));
    assert_eq!(cond(&d.status, NoProgress).status, "True");
    assert_eq!(reasons(&d), ["NoProgress"]);
    // After the backoff, the next attempt starts and counts the stall.
    s.interruptions[0].time = Some(Time(now() - SignedDuration::from_secs(11)));
    let d = run(&job(Some(s)), &[]);
    assert_eq!(d.create_attempt(), Some(5));
    assert_eq!(d.status.attempts_without_progress, 3);
    let t = d.status.interruptions[0].timeline.as_ref().unwrap();
    assert!(t.old_pods_gone.is_some() && t.created.is_some());
}

#[test]
fn a_rank_whose_node_stopped_answering_is_taken_for_lost_after_node_unreachable_seconds() {
    let lost_since = |secs: i64| crate::nodes::NodeFacts {
        ready: false,
        since: Some(now() - SignedDuration::from_secs(secs)),
        reason: Some("NodeStatusUnknown".into()),
        ..Default::default()
    };
    let running = job(Some(status(Phase::Running, 1)));
    let d = run(
        &running,
        &[pv(1, 0), on_node(pv(1, 1), "gpu-3", lost_since(10))],
    );
    assert_eq!(d.status.preemptions, 0);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(20)));
    let d = run(
        &running,
        &[pv(1, 0), on_node(pv(1, 1), "gpu-3", lost_since(30))],
    );
    assert_eq!(d.status.preemptions, 1);
    let i = &d.status.interruptions[0];
    assert_eq!((i.rank, i.reason.as_str()), (1, "NodeUnreachable"));
    assert!(i.message.contains("gpu-3"), "{}", i.message);
    assert_eq!(d.delete, ["j-a1-r0", "j-a1-r1"]);
}

#[test]
fn no_rank_is_taken_for_lost_while_its_whole_zone_stops_answering() {
    let dark = |calm: Option<i64>| crate::nodes::NodeFacts {
        ready: false,
        since: Some(now() - SignedDuration::from_secs(60)),
        reason: Some("NodeStatusUnknown".into()),
        zone_disrupted: calm.is_none(),
        zone_calm_since: calm.map(|s| now() - SignedDuration::from_secs(s)),
        ..Default::default()
    };
    let running = job(Some(status(Phase::Running, 1)));
    let held = run(
        &running,
        &[pv(1, 0), on_node(pv(1, 1), "gpu-3", dark(None))],
    );
    assert_eq!(held.status.preemptions, 0);
    assert!(held.delete.is_empty() && held.requeue_after.is_none());
    let waiting = cond(&held.status, WaitingForNode);
    for needed in [
        "j-a1-r1",
        "its zone",
        "`kubectl taint nodes gpu-3 node.kubernetes.io/out-of-service=nodeshutdown:NoExecute`",
    ] {
        assert!(
            waiting.message.contains(needed),
            "{needed}: {}",
            waiting.message
        );
    }
    assert!(!waiting.message.contains("  "), "{}", waiting.message);
    let again = run(
        &job(Some(held.status.clone())),
        &[pv(1, 0), on_node(pv(1, 1), "gpu-3", dark(None))],
    );
    assert!(
        again.transitions.is_empty(),
        "said once: {:?}",
        again.transitions
    );
    // The zone answers again, but this node not yet: its clock restarts.
    let d = run(
        &job(Some(held.status.clone())),
        &[pv(1, 0), on_node(pv(1, 1), "gpu-3", dark(Some(10)))],
    );
    assert_eq!(d.status.preemptions, 0);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(20)));
    assert!(crate::conditions::find(&d.status.conditions, WaitingForNode).is_none());
    let d = run(
        &running,
        &[pv(1, 0), on_node(pv(1, 1), "gpu-3", dark(Some(30)))],
    );
    assert_eq!(d.status.interruptions[0].reason, "NodeUnreachable");
}

#[test]
fn a_failure_with_dev_shm_full_says_to_raise_shared_memory() {
    let mut report = Report::new(Some(1));
    report.state = State::Failed;
    report.shm = Some(launcher::report::ShmUse {
        size_bytes: 64 << 20,
        peak_used_bytes: (64 << 20) - 4096,
    });
    let mut p0 = ended(
        pv(1, 0),
        Outcome::Failed {
            exit_code: 1,
            reason: "Error".into(),
            message: "unable to allocate shared memory".into(),
        },
    );
    p0.report = Some(report);
    let d = run(&job(Some(status(Phase::Running, 1))), &[p0, pv(1, 1)]);
    assert_eq!((d.status.failures, d.status.preemptions), (1, 0));
    let i = &d.status.interruptions[0];
    assert_eq!(i.reason, "SharedMemoryExhausted");
    assert!(i.message.contains("spec.sharedMemory"), "{}", i.message);
    assert!(cond(&d.status, Ready)
        .message
        .contains("/dev/shm was nearly full"));
}
