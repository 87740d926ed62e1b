//! Preemption and resume on the real node: a job preempted by every route
//! a cluster has loses no step and ends exactly like an uninterrupted run.
//! Each test has its own namespace and operator; drains take a lock, since
//! cordoning the one node holds every test's new pods back.

mod common;

use common::*;
use serde_json::Value;
use std::sync::Mutex;
use std::time::{Duration, Instant};

static NODE: Mutex<()> = Mutex::new(());
const NODE_NAME: &str = "tjo-node";

/// Drains this namespace's pods off the node (labelled by `label_pods`:
/// a job label alone would also match pods of other runs).
fn drain(ns: &str) {
    let out = kubectl(&[
        "drain",
        NODE_NAME,
        "--pod-selector",
        &format!("tjo-test-namespace={ns}"),
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=120s",
    ]);
    // Uncordon whatever happened, or every later pod stays Pending.
    let uncordon = kubectl(&["uncordon", NODE_NAME]);
    assert!(out.status.success(), "drain failed: {}", stderr(&out));
    assert!(uncordon.status.success(), "{}", stderr(&uncordon));
}

fn label_pods(manifest: &str, ns: &str) -> String {
    manifest.replace(
        "  template:\n    spec:",
        &format!(
            "  template:\n    metadata:\n      labels: {{tjo-test-namespace: {ns}}}\n    spec:"
        ),
    )
}

/// Steps an attempt redid: what its report says it finished after the
/// checkpoint it saved.
fn steps_lost(report: &Value) -> i64 {
    let last = report["lastStep"]
        .as_i64()
        .expect("the trainer reports progress");
    let saved = report["lastCheckpoint"]["step"].as_i64().unwrap_or(0);
    last - saved
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn three_preemptions_by_three_routes_lose_no_step_and_end_like_an_uninterrupted_run() {
    let args = ["--total-steps", "400", "--ckpt-every", "100"];
    let reference = uninterrupted(&args);
    let ns = TempNamespace::new("routes");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let watch = PodWatch::start(&ns.name);
    let op = Operator::start(&ns.name);
    let mut cmd = vec!["python3", "/opt/trainer/train.py", "--step-seconds", "0.05"];
    cmd.extend(args);
    apply(
        &ns.name,
        &label_pods(&job("routes", "ckpt", &cmd, ""), &ns.name),
    );

    let mut lost = Vec::new();
    for (attempt, route) in [
        (1, "kubectl drain"),
        (2, "kubectl delete pod"),
        (3, "Eviction API"),
    ] {
        let pod = wait_training(&ns.name, "routes", attempt, 20);
        match attempt {
            1 => {
                let _node = NODE.lock().unwrap_or_else(|e| e.into_inner());
                drain(&ns.name);
            }
            2 => {
                kubectl_ok(&["delete", "pod", "-n", &ns.name, &pod, "--wait=false"]);
            }
            _ => evict(&ns.name, &pod),
        }
        let report = wait_until(&format!("{pod}'s report"), Duration::from_secs(120), || {
            watch.report(&pod)
        });
        assert_eq!(report["state"], "signalled", "{route}: {report}");
        let next = wait_training(&ns.name, "routes", attempt + 1, 1);
        let resumed = format!("resumed from step {}", report["lastCheckpoint"]["step"]);
        assert!(
            trainer_logs(&ns.name, &next).contains(&resumed),
            "{route}: {next} did not print {resumed:?}"
        );
        println!(
            "preemption {attempt} by {route}: stopped at step {}, saved step {}, {} steps lost",
            report["lastStep"],
            report["lastCheckpoint"]["step"],
            steps_lost(&report)
        );
        lost.push(steps_lost(&report));
        // Counted once each, on the running operator's /metrics.
        let counted = attempt as f64;
        assert_eq!(op.metric("trainingjob_preemptions_total"), Some(counted));
        assert_eq!(op.metric("trainingjob_steps_lost_count"), Some(counted));
        assert_eq!(op.metric("trainingjob_resumes_total"), Some(counted));
        assert_eq!(op.metric("trainingjob_failures_total"), Some(0.0));
    }
    wait_condition(&ns.name, "tj/routes", "Succeeded", Duration::from_secs(240));
    let last = final_line(&trainer_logs(&ns.name, "routes-a4-r0")).expect("a final line");
    assert_eq!(
        last, reference,
        "the preempted run must end exactly like an uninterrupted one"
    );
    assert_eq!(
        jsonpath(&ns.name, "tj/routes", "{.status.preemptions}"),
        "3"
    );
    assert_eq!(jsonpath(&ns.name, "tj/routes", "{.status.failures}"), "0");
    let reasons = jsonpath(&ns.name, "tj/routes", "{.status.interruptions[*].reason}");
    assert!(reasons.contains("EvictionByEvictionAPI"), "{reasons}");
    let recorded = jsonpath(
        &ns.name,
        "tj/routes",
        "{.status.interruptions[*].stepsLost}",
    );
    assert_eq!(
        recorded, "0 0 0",
        "status records the steps lost per preemption"
    );
    assert_eq!(lost, [0, 0, 0], "steps lost per preemption");
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_save_longer_than_the_grace_is_killed_and_the_next_attempt_gets_a_grace_sized_from_it() {
    let ns = TempNamespace::new("slowsave");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let watch = PodWatch::start(&ns.name);
    let _op = Operator::start(&ns.name);
    let cmd = train(
        "100000",
        &["--ckpt-every", "40", "--save-seconds", "6", "--always-save"],
    );
    let spec = "  preemption:\n    noticeSeconds: 60\n    minGraceSeconds: 2\n";
    let manifest = job("slow", "ckpt", &cmd, spec)
        .replace("claimName: ckpt", "claimName: ckpt\n    sizeHint: 1Ki");
    apply(&ns.name, &manifest);
    wait_until("the first periodic save", Duration::from_secs(120), || {
        trainer_logs(&ns.name, "slow-a1-r0")
            .contains("saved step 40")
            .then_some(())
    });
    let grace1: i64 = jsonpath(&ns.name, "tj/slow", "{.status.gracePeriodSeconds}")
        .parse()
        .unwrap();
    kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &ns.name,
        "slow-a1-r0",
        "--wait=false",
    ]);
    let report = wait_until("attempt 1's report", Duration::from_secs(120), || {
        watch.report("slow-a1-r0")
    });
    // The save on SIGTERM needed 6 s of a grace shorter than that: SIGKILL.
    let last = watch.last("slow-a1-r0").unwrap();
    let trainer = last["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "trainer")
        .unwrap()
        .clone();
    assert_eq!(trainer["state"]["terminated"]["exitCode"], 137, "{trainer}");
    assert_eq!(
        report["lastCheckpoint"]["step"], 40,
        "the last complete save: {report}"
    );

    let next = wait_training(&ns.name, "slow", 2, 1);
    assert!(
        trainer_logs(&ns.name, &next).contains("resumed from step 40"),
        "resumes from the previous complete checkpoint"
    );
    let grace2: i64 = jsonpath(&ns.name, "tj/slow", "{.status.gracePeriodSeconds}")
        .parse()
        .unwrap();
    let p95 = jsonpath(&ns.name, "tj/slow", "{.status.save.p95Seconds}");
    println!("grace: attempt 1 {grace1}s (nothing measured), attempt 2 {grace2}s (measured save p95 {p95}s)");
    assert!(
        grace1 < 6,
        "attempt 1 was sized from the tiny hint: {grace1}"
    );
    assert!(
        grace2 >= 6 && grace2 > grace1,
        "attempt 2 must fit the measured 6 s save: {grace2}"
    );
    assert_eq!(jsonpath(&ns.name, "tj/slow", "{.status.preemptions}"), "1");
    assert_eq!(jsonpath(&ns.name, "tj/slow", "{.status.failures}"), "0");
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn disrupting_one_of_two_ranks_stops_the_other_within_a_second_and_both_resume_from_one_step() {
    let ns = TempNamespace::new("gang");
    claim(&ns.name, "shared", "ReadWriteMany");
    let watch = PodWatch::start(&ns.name);
    let _op = Operator::start(&ns.name);
    let cmd = train("100000", &["--ckpt-every", "100"]);
    apply(&ns.name, &job("gang", "shared", &cmd, "  replicas: 2\n"));
    wait_training(&ns.name, "gang", 1, 20);
    kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &ns.name,
        "gang-a1-r0",
        "--wait=false",
    ]);
    let r0 = wait_until("rank 0's report", Duration::from_secs(120), || {
        watch.report("gang-a1-r0")
    });
    let r1 = wait_until("rank 1's report", Duration::from_secs(120), || {
        watch.report("gang-a1-r1")
    });
    // The operator's part: from rank 0's deletion showing in the watch to
    // its own delete of rank 1 showing there. The kubelet signals a pod as
    // soon as it sees the deletion.
    let deleted_at = |pod: &str| {
        watch
            .events()
            .into_iter()
            .find(|(_, _, p)| {
                p["metadata"]["name"] == pod && !p["metadata"]["deletionTimestamp"].is_null()
            })
            .map(|(t, _, _)| t)
            .unwrap_or_else(|| panic!("{pod} was never deleted"))
    };
    let stop_skew = deleted_at("gang-a1-r1").saturating_duration_since(deleted_at("gang-a1-r0"));
    println!(
        "rank 1 was stopped {} ms after rank 0 was disrupted",
        stop_skew.as_millis()
    );
    assert!(
        stop_skew < Duration::from_secs(1),
        "rank 1 stopped {stop_skew:?} after rank 0"
    );
    // Where rank 1's launcher got the SIGTERM before its trainer, stopped
    // in lockstep by rank 0, had already saved and exited, time it too.
    let t0 = r0["signal"]["atUnixMs"]
        .as_i64()
        .expect("rank 0 got SIGTERM");
    match r1["signal"]["atUnixMs"].as_i64() {
        Some(t1) => {
            let skew = (t1 - t0).abs();
            println!("SIGTERM reached rank 1's launcher {skew} ms after rank 0's");
            assert!(skew < 1000, "rank 1 was signalled {skew} ms after rank 0");
        }
        None => {
            assert_eq!(r1["peerStop"]["rank"], 0, "rank 1 stopped for rank 0: {r1}");
            println!("rank 1's trainer had stopped with rank 0 and exited before its SIGTERM came");
        }
    }
    let s0 = &r0["lastCheckpoint"]["step"];
    assert_eq!(
        s0, &r1["lastCheckpoint"]["step"],
        "both ranks saved one step: {r0} {r1}"
    );
    wait_training(&ns.name, "gang", 2, 1);
    for rank in 0..2 {
        let logs = trainer_logs(&ns.name, &format!("gang-a2-r{rank}"));
        assert!(
            logs.contains(&format!("resumed from step {s0}")),
            "rank {rank}: {logs}"
        );
    }
}

/// Where in preemption handling the operator is killed.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    RightAfterTheDisruption,
    WhileStopping,
    WhenTheNextAttemptAppears,
    WhileResuming,
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn the_operator_killed_at_any_moment_of_preemption_handling_duplicates_nothing_and_counts_right() {
    let ns = TempNamespace::new("chaos");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let watch = PodWatch::start(&ns.name);
    let mut op = Operator::start(&ns.name);
    let cmd = train("1000000", &["--ckpt-every", "50"]);
    apply(&ns.name, &job("chaos", "ckpt", &cmd, ""));
    let points = [
        KillPoint::RightAfterTheDisruption,
        KillPoint::WhileStopping,
        KillPoint::WhenTheNextAttemptAppears,
        KillPoint::WhileResuming,
    ];
    // A fixed seed: "random" moments that a failure can be replayed from.
    let mut seed: u64 = 0x5eed_1234;
    let started = Instant::now();
    for round in 1..=20 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let point = points[(seed % points.len() as u64) as usize];
        let pod = wait_training(&ns.name, "chaos", round, 1);
        kubectl_ok(&["delete", "pod", "-n", &ns.name, &pod, "--wait=false"]);
        let phase = |p: &str| jsonpath(&ns.name, "tj/chaos", "{.status.phase}") == p;
        let next = format!("chaos-a{}-r0", round + 1);
        match point {
            KillPoint::RightAfterTheDisruption => {}
            KillPoint::WhileStopping => wait_until("Stopping", Duration::from_secs(60), || {
                phase("Stopping").then_some(())
            }),
            KillPoint::WhenTheNextAttemptAppears => {
                wait_until("the next pod", Duration::from_secs(60), || {
                    watch.pods().contains(&next).then_some(())
                })
            }
            KillPoint::WhileResuming => wait_until("Resuming", Duration::from_secs(60), || {
                phase("Resuming").then_some(())
            }),
        }
        op.kill();
        op = Operator::start(&ns.name);
        println!("round {round}: operator killed {point:?}");
    }
    wait_training(&ns.name, "chaos", 21, 1);
    println!("20 kills in {:.0}s", started.elapsed().as_secs_f64());
    assert_eq!(
        jsonpath(&ns.name, "tj/chaos", "{.status.preemptions}"),
        "20"
    );
    assert_eq!(jsonpath(&ns.name, "tj/chaos", "{.status.failures}"), "0");
    assert_eq!(jsonpath(&ns.name, "tj/chaos", "{.status.attempt}"), "21");
    let expected: Vec<String> = (1..=21).map(|a| format!("chaos-a{a}-r0")).collect();
    assert_eq!(
        watch.pods(),
        expected,
        "exactly one pod per attempt, none duplicated"
    );
    drop(op);
}
