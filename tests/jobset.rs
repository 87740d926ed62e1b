//! The example trainer under JobSet (the test bed's, started by `cargo
//! xtask cluster up`), the baseline the benchmark compares TrainingJobs
//! with: a JobSet completes when all its Jobs do, and with a failurePolicy
//! a failed Job makes it recreate every Job of the set, counted in
//! status.restarts against maxRestarts.

mod common;

use common::*;
use std::time::Duration;

const JOBSET_LABEL: &str = "jobset.sigs.k8s.io/jobset-name";
const RESTART_LABEL: &str = "jobset.sigs.k8s.io/restart-attempt";

/// One replicated job of two Jobs, one trainer pod each. backoffLimit 0:
/// a pod that fails (or is deleted) fails its Job at once, which is what
/// a JobSet's failurePolicy acts on; with the default (6) the Job would
/// just replace that one pod and the JobSet would never hear of it.
fn jobset(name: &str, steps: &'static str, extra_spec: &str, extra_container: &str) -> String {
    let command = serde_json::to_string(&train(steps, &[])).unwrap();
    format!(
        r#"apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: {name}
spec:
{extra_spec}  replicatedJobs:
  - name: workers
    replicas: 2
    template:
      spec:
        parallelism: 1
        completions: 1
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            containers:
            - name: trainer
              image: {TRAINER_IMAGE}
              imagePullPolicy: Never
              command: {command}
{extra_container}              resources:
                limits:
                  memory: 256Mi
"#
    )
}

fn pods(ns: &str, selector: &str) -> Vec<String> {
    kubectl_ok(&["get", "pods", "-n", ns, "-l", selector, "-o", "name"])
        .lines()
        .map(String::from)
        .collect()
}

/// A pod of the set's first Job, `steps` steps into training.
fn training_pod(ns: &str, name: &str, steps: usize) -> String {
    let selector =
        format!("{JOBSET_LABEL}={name},{RESTART_LABEL}=0,jobset.sigs.k8s.io/job-index=0");
    wait_until_or(
        &format!("a pod of {name} to train {steps} steps"),
        Duration::from_secs(120),
        || {
            let pod = pods(ns, &selector).into_iter().next()?;
            let logs = kubectl(&["logs", "-n", ns, &pod]).stdout;
            let trained = String::from_utf8_lossy(&logs)
                .lines()
                .filter(|l| l.starts_with("step "))
                .count();
            (trained >= steps).then_some(pod)
        },
        || kubectl_ok(&["get", "pods", "-n", ns, "-o", "wide"]),
    )
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_jobset_completes_and_restarts_whole_when_a_pod_is_deleted() {
    let ns = TempNamespace::new("jobset");
    let ns = ns.name.as_str();

    apply(ns, &jobset("plain", "40", "", ""));
    wait_condition(
        ns,
        "jobsets.jobset.x-k8s.io/plain",
        "Completed",
        Duration::from_secs(180),
    );

    // The trainer stops cleanly on SIGTERM (exit 0), and the Job controller
    // looks at pods a second after they change: a pod already Succeeded by
    // then counts as the Job's success, not as a deleted pod's failure. The
    // preStop pause holds SIGTERM back so the deletion is seen first.
    let policy = "  failurePolicy:\n    maxRestarts: 2\n";
    let pause =
        "              lifecycle:\n                preStop:\n                  sleep: {seconds: 5}\n";
    apply(ns, &jobset("restarted", "400", policy, pause));
    let victim = training_pod(ns, "restarted", 5);
    kubectl_ok(&["delete", "-n", ns, &victim, "--wait=false"]);

    let object = "jobsets.jobset.x-k8s.io/restarted";
    wait_condition(ns, object, "Completed", Duration::from_secs(240));
    assert_eq!(jsonpath(ns, object, "{.status.restarts}"), "1");
    assert_eq!(
        jsonpath(ns, object, "{.status.restartsCountTowardsMax}"),
        "1"
    );
    // Both Jobs ran again, not only the one whose pod was deleted.
    let rerun = pods(ns, &format!("{JOBSET_LABEL}=restarted,{RESTART_LABEL}=1"));
    assert_eq!(rerun.len(), 2, "pods of the restarted set: {rerun:?}");
}
