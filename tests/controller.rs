//! The controller on the real node: TrainingJobs run through the launcher,
//! complete, fail for the right reasons, and survive an operator restart.
//! Each test has its own namespace and its own operator process.

mod common;

use common::*;
use std::time::Duration;

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn quickstart_runs_to_succeeded_with_the_last_checkpoint_in_status() {
    let ns = TempNamespace::new("quickstart");
    provision_volume(&ns.name, "quickstart-checkpoints", "ReadWriteOnce");
    let _op = Operator::start(&ns.name);
    let file = root().join("examples/quickstart.yaml");
    kubectl_ok(&["apply", "-n", &ns.name, "-f", file.to_str().unwrap()]);
    wait_condition(
        &ns.name,
        "tj/quickstart",
        "Succeeded",
        Duration::from_secs(240),
    );
    let step = jsonpath(&ns.name, "tj/quickstart", "{.status.lastCheckpoint.step}");
    assert_eq!(step, "600", "the last checkpoint is the final step");
    let path = jsonpath(&ns.name, "tj/quickstart", "{.status.lastCheckpoint.path}");
    assert!(path.starts_with("/checkpoints/"), "{path}");
    assert_eq!(
        jsonpath(&ns.name, "tj/quickstart", "{.status.phase}"),
        "Succeeded"
    );
    assert_eq!(
        jsonpath(&ns.name, "tj/quickstart", "{.status.failures}"),
        "0"
    );
    // The trainer ran under the launcher as the pod's exec-form command.
    let logs = kubectl_ok(&["logs", "-n", &ns.name, "quickstart-a1-r0", "-c", "trainer"]);
    assert!(logs.contains("step 600"), "{logs}");
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_failing_trainer_ends_failed_after_exactly_backoff_limit_retries() {
    let ns = TempNamespace::new("failing");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let _op = Operator::start(&ns.name);
    let cmd = [
        "python3",
        "-c",
        "import sys; print('bad config'); sys.exit(3)",
    ];
    apply(&ns.name, &job("broken", "ckpt", &cmd, ""));
    wait_condition(&ns.name, "tj/broken", "Failed", Duration::from_secs(240));
    // backoffLimit 2: the first run and two retries.
    assert_eq!(jsonpath(&ns.name, "tj/broken", "{.status.failures}"), "3");
    assert_eq!(jsonpath(&ns.name, "tj/broken", "{.status.attempt}"), "3");
    assert_eq!(
        jsonpath(&ns.name, "tj/broken", "{.status.preemptions}"),
        "0"
    );
    let reason = jsonpath(
        &ns.name,
        "tj/broken",
        r#"{.status.conditions[?(@.type=="Failed")].reason}"#,
    );
    assert_eq!(reason, "BackoffLimitExceeded");
    let message = jsonpath(
        &ns.name,
        "tj/broken",
        r#"{.status.conditions[?(@.type=="Failed")].message}"#,
    );
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(
        message.contains("\"state\":\"failed\""),
        "quotes the report: {message}"
    );
    assert_eq!(
        pod_names(&ns.name, "broken"),
        ["broken-a1-r0", "broken-a2-r0", "broken-a3-r0"]
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn two_ranks_get_rank_world_size_and_master_address() {
    let ns = TempNamespace::new("ranks");
    claim(&ns.name, "shared", "ReadWriteMany");
    let _op = Operator::start(&ns.name);
    let cmd = [
        "python3",
        "-c",
        "import os; print('env', os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'], os.environ['MASTER_PORT'])",
    ];
    apply(&ns.name, &job("pair", "shared", &cmd, "  replicas: 2\n"));
    wait_condition(&ns.name, "tj/pair", "Succeeded", Duration::from_secs(180));
    for rank in 0..2 {
        let logs = kubectl_ok(&[
            "logs",
            "-n",
            &ns.name,
            &format!("pair-a1-r{rank}"),
            "-c",
            "trainer",
        ]);
        let expect = format!("env {rank} 2 pair-r0.pair.{}.svc 29500", ns.name);
        assert!(logs.contains(&expect), "rank {rank}: {logs}");
    }
    let svc = kubectl_ok(&[
        "get",
        "svc",
        "pair",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    assert_eq!(svc, "None", "a headless Service names the ranks");
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn dev_shm_in_the_trainer_has_the_size_the_spec_asked_for() {
    let ns = TempNamespace::new("shm");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let _op = Operator::start(&ns.name);
    let cmd = [
        "python3",
        "-c",
        "import os; s = os.statvfs('/dev/shm'); print('shm-bytes', s.f_frsize * s.f_blocks)",
    ];
    apply(
        &ns.name,
        &job(
            "shm",
            "ckpt",
            &cmd,
            "  sharedMemory:\n    sizeLimit: 96Mi\n",
        ),
    );
    wait_condition(&ns.name, "tj/shm", "Succeeded", Duration::from_secs(180));
    let logs = kubectl_ok(&["logs", "-n", &ns.name, "shm-a1-r0", "-c", "trainer"]);
    assert!(
        logs.contains(&format!("shm-bytes {}", 96u64 << 20)),
        "{logs}"
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn deleting_the_job_leaves_no_pod_or_service_behind() {
    let ns = TempNamespace::new("delete");
    claim(&ns.name, "shared", "ReadWriteMany");
    let _op = Operator::start(&ns.name);
    let cmd = train("100000", &[]);
    apply(&ns.name, &job("long", "shared", &cmd, "  replicas: 2\n"));
    wait_running(&ns.name, "long");
    kubectl_ok(&["delete", "tj", "long", "-n", &ns.name]);
    wait_until(
        "the garbage collector to remove pods and Service",
        Duration::from_secs(120),
        || {
            let left = kubectl_ok(&[
                "get",
                "pods,svc",
                "-n",
                &ns.name,
                "-l",
                "trainingjob.dev/job=long",
                "-o",
                "name",
            ]);
            left.trim().is_empty().then_some(())
        },
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn restarting_the_operator_mid_job_creates_no_duplicate_and_loses_no_count() {
    let ns = TempNamespace::new("restart");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let mut op = Operator::start(&ns.name);
    let cmd = train("300", &[]);
    apply(&ns.name, &job("steady", "ckpt", &cmd, ""));
    wait_running(&ns.name, "steady");
    op.kill();
    let _op = Operator::start(&ns.name);
    wait_condition(&ns.name, "tj/steady", "Succeeded", Duration::from_secs(240));
    assert_eq!(pod_names(&ns.name, "steady"), ["steady-a1-r0"]);
    assert_eq!(jsonpath(&ns.name, "tj/steady", "{.status.attempt}"), "1");
    assert_eq!(jsonpath(&ns.name, "tj/steady", "{.status.failures}"), "0");
    assert_eq!(
        jsonpath(&ns.name, "tj/steady", "{.status.preemptions}"),
        "0"
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_spec_that_cannot_run_gets_a_condition_and_other_jobs_still_run() {
    let ns = TempNamespace::new("cannot");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let _op = Operator::start(&ns.name);
    // (A /dev/shm larger than the memory limit is refused at admission
    // now: tests/invalid/shm-exceeds-memory-limit.yaml.)
    let cmd = ["python3", "-c", "print('never runs')"];
    // Two ranks on a ReadWriteOnce claim, and a claim that does not exist.
    apply(&ns.name, &job("rwo", "ckpt", &cmd, "  replicas: 2\n"));
    apply(&ns.name, &job("noclaim", "missing", &cmd, ""));
    let fine = ["python3", "-c", "print('fine')"];
    apply(&ns.name, &job("fine", "ckpt", &fine, ""));

    wait_condition(&ns.name, "tj/fine", "Succeeded", Duration::from_secs(180));
    for (job, expect) in [
        ("rwo", "must be ReadWriteMany"),
        ("noclaim", "PersistentVolumeClaim \"missing\" not found"),
    ] {
        wait_condition(
            &ns.name,
            &format!("tj/{job}"),
            "SpecProblem",
            Duration::from_secs(60),
        );
        let message = jsonpath(
            &ns.name,
            &format!("tj/{job}"),
            r#"{.status.conditions[?(@.type=="SpecProblem")].message}"#,
        );
        assert!(message.contains(expect), "{job}: {message}");
        assert!(
            pod_names(&ns.name, job).is_empty(),
            "{job} must not start pods"
        );
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn deleting_the_namespace_of_a_running_job_completes() {
    let ns = TempNamespace::new("nsdelete");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let _op = Operator::start(&ns.name);
    let cmd = train("100000", &[]);
    apply(&ns.name, &job("doomed", "ckpt", &cmd, ""));
    wait_running(&ns.name, "doomed");
    // The namespace controller deletes the pods (a disruption the operator
    // sees) while the job goes too: the operator must neither try to start
    // the next attempt forever nor keep its finalizer on the finished pods.
    kubectl_ok(&["delete", "namespace", &ns.name, "--wait=false"]);
    wait_until("the namespace to be gone", Duration::from_secs(180), || {
        (!kubectl(&["get", "namespace", &ns.name]).status.success()).then_some(())
    });
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn sigterm_stops_the_operator_promptly_while_it_works() {
    let ns = TempNamespace::new("sigterm");
    claim(&ns.name, "ckpt", "ReadWriteMany");
    let mut op = Operator::start(&ns.name);
    let cmd = train("100000", &[]);
    for n in 0..5 {
        apply(
            &ns.name,
            &job(&format!("busy{n}"), "ckpt", &cmd, "  replicas: 2\n"),
        );
    }
    wait_running(&ns.name, "busy0");
    let (took, status) = op.terminate(Duration::from_secs(10));
    println!("the operator exited {took:?} after SIGTERM ({status})");
    assert!(status.success(), "{status}: {}", op.log_tail());
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_job_asking_for_amd_gpus_runs_on_the_node_that_advertises_them() {
    let ns = TempNamespace::new("amd");
    claim(&ns.name, "ckpt", "ReadWriteOnce");
    let _op = Operator::start(&ns.name);
    let manifest = job("amd", "ckpt", &train("40", &[]), "")
        .replace("memory: 256Mi", "memory: 256Mi\n            amd.com/gpu: 2");
    apply(&ns.name, &manifest);
    wait_condition(&ns.name, "tj/amd", "Succeeded", Duration::from_secs(180));
    let pod = "pod/amd-a1-r0";
    let trainer = r#"{.spec.containers[?(@.name=="trainer")].resources}"#;
    let resources: serde_json::Value =
        serde_json::from_str(&jsonpath(&ns.name, pod, trainer)).unwrap();
    assert_eq!(
        resources["requests"]["amd.com/gpu"], "2",
        "requests equal limits: {resources}"
    );
    let tolerations = jsonpath(&ns.name, pod, "{.spec.tolerations[*].key}");
    assert!(
        tolerations.contains("amd.com/gpu"),
        "the AMD device taint is tolerated: {tolerations}"
    );
    assert_eq!(jsonpath(&ns.name, pod, "{.spec.nodeName}"), "tjo-node");
}
