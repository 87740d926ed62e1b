//! The Helm chart, with the real `helm` against the real cluster: lint, the
//! API server's verdict on what it renders, and the operator installed,
//! upgraded, failed over and uninstalled in-cluster.
//!
//! Every in-cluster operator here watches a namespace of its own
//! (`watchNamespace`), so it never acts on the jobs of the operators that
//! the other test files run outside the cluster, nor they on its jobs.
//! `helm` is `$HELM`, else the one on PATH; `cargo xtask test` sets HELM.

mod common;

use common::{
    ctr, jsonpath, kubectl, kubectl_ok, kubectl_with_input, provision_volume, root, stderr,
    wait_condition, wait_until, wait_until_or, TempNamespace,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CHART: &str = "charts/trainingjob-operator";
const CHART_CRD: &str = "charts/trainingjob-operator/files/trainingjob.yaml";
const OPERATOR_IMAGE: &str = "localhost/trainingjob-operator:dev";
const CRD: &str = "trainingjobs.trainingjob.dev";
/// The `reportingController` of the operator's events.
const CONTROLLER: &str = "trainingjob-operator";
const JOB_TIMEOUT: Duration = Duration::from_secs(300);

fn helm(args: &[&str]) -> Output {
    let bin = std::env::var_os("HELM").unwrap_or_else(|| "helm".into());
    Command::new(&bin)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {bin:?} ({e}): run these tests with `cargo xtask test`, \
                 or set HELM to the path `cargo xtask helm` prints"
            )
        })
}

fn helm_ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {} failed: {}",
        args.join(" "),
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chart's name for a release's objects (its `tjo.fullname`).
fn fullname(release: &str) -> String {
    format!("{release}-trainingjob-operator")
}

/// A helm release, uninstalled on drop so that a failed test leaves no
/// operator and no cluster-wide RBAC behind. Declare it after the
/// namespaces it uses: it must go first.
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    /// `helm install --wait` of this checkout's chart with this checkout's
    /// image (the chart's default is the published one); returns once the
    /// Deployment is available, and how long that took.
    fn install(name: &str, namespace: &str, args: &[&str]) -> (Self, Duration) {
        let (repository, tag) = OPERATOR_IMAGE.rsplit_once(':').unwrap();
        let (repository, tag) = (
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
        );
        let mut all = vec!["--set", repository.as_str(), "--set", tag.as_str()];
        all.extend_from_slice(args);
        Self::install_from(CHART, name, namespace, &all)
    }

    /// `helm install --wait` of `chart` (a folder or a packaged .tgz).
    fn install_from(chart: &str, name: &str, namespace: &str, args: &[&str]) -> (Self, Duration) {
        let started = Instant::now();
        let mut all = vec!["install", name, chart, "-n", namespace];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--wait", "--timeout", "180s"]);
        let out = helm(&all);
        let release = Self {
            name: name.into(),
            namespace: namespace.into(),
        };
        assert!(
            out.status.success(),
            "helm {} failed: {}\npods:\n{}",
            all.join(" "),
            stderr(&out),
            kubectl_ok(&["get", "pods", "-n", namespace, "-o", "wide"])
        );
        (release, started.elapsed())
    }

    fn lease_holder(&self) -> String {
        jsonpath(
            &self.namespace,
            &format!("lease/{}", fullname(&self.name)),
            "{.spec.holderIdentity}",
        )
    }

    /// The operator's pods that are not being deleted.
    fn pods(&self) -> Vec<OperatorPod> {
        let out = kubectl_ok(&[
            "get",
            "pods",
            "-n",
            &self.namespace,
            "-l",
            &format!("app.kubernetes.io/instance={}", self.name),
            "-o",
            "json",
        ]);
        let list: Value = serde_json::from_str(&out).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| OperatorPod {
                name: p["metadata"]["name"].as_str().unwrap().into(),
                image: p["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                ready: p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            })
            .collect()
    }

    /// Waits until `count` operator pods are Ready and one of them holds
    /// the Lease; returns (leader, the others).
    fn wait_for_leader(&self, count: usize) -> (String, Vec<String>) {
        wait_until(
            &format!("{count} Ready operator pods, one holding the Lease"),
            Duration::from_secs(120),
            || {
                let pods = self.pods();
                let holder = self.lease_holder();
                let ready = pods.len() == count && pods.iter().all(|p| p.ready);
                (ready && pods.iter().any(|p| p.name == holder)).then(|| {
                    let others = pods.into_iter().map(|p| p.name).filter(|n| *n != holder);
                    (holder.clone(), others.collect())
                })
            },
        )
    }

    /// Pods, Lease holder and the pods' logs, for a failure message.
    fn state(&self) -> String {
        let pods = kubectl(&["get", "pods", "-n", &self.namespace, "-o", "wide"]);
        let mut state = format!(
            "Lease holder: {:?}\npods:\n{}",
            self.lease_holder(),
            String::from_utf8_lossy(&pods.stdout)
        );
        for pod in self.pods() {
            let logs = self.logs(&pod.name);
            let tail: Vec<&str> = logs.lines().rev().take(15).collect();
            state += &format!("\n{} logs (last first):\n{}", pod.name, tail.join("\n"));
        }
        state
    }

    fn logs(&self, pod: &str) -> String {
        let out = kubectl(&["logs", "-n", &self.namespace, pod]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(&[
            "uninstall",
            &self.name,
            "-n",
            &self.namespace,
            "--ignore-not-found",
            "--wait",
            "--timeout",
            "60s",
        ]);
    }
}

struct OperatorPod {
    name: String,
    image: String,
    ready: bool,
}

/// A namespace where only pods meeting the `restricted` Pod Security
/// Standard are admitted: where a platform team would put the operator.
fn restricted_namespace(prefix: &str) -> TempNamespace {
    let ns = TempNamespace::new(prefix);
    kubectl_ok(&[
        "label",
        "namespace",
        &ns.name,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ]);
    ns
}

/// A one-rank job of the example trainer on a claim of its own; `steps` x
/// `step_seconds` is how long it trains.
fn start_job(ns: &str, name: &str, steps: u32, step_seconds: f64) {
    let claim = format!("{name}-checkpoints");
    provision_volume(ns, &claim, "ReadWriteOnce");
    let manifest = format!(
        r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {claim}}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: trainingjob.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  replicas: 1
  checkpoint: {{claimName: {claim}, mountPath: /checkpoints, sizeHint: 1Mi}}
  sharedMemory: {{sizeLimit: 64Mi}}
  template:
    spec:
      containers:
      - name: trainer
        image: localhost/tjo-trainer:dev
        imagePullPolicy: Never
        command: ["python3", "/opt/trainer/train.py", "--total-steps", "{steps}",
                  "--ckpt-every", "20", "--step-seconds", "{step_seconds}"]
        resources: {{limits: {{memory: 256Mi}}}}
"#
    );
    let out = kubectl_with_input(&["apply", "-n", ns, "-f", "-"], Some(&manifest));
    assert!(
        out.status.success(),
        "creating job {name}: {}",
        stderr(&out)
    );
}

fn wait_for_phase(ns: &str, job: &str, phase: &str) {
    wait_until(&format!("job {job} to be {phase}"), JOB_TIMEOUT, || {
        (jsonpath(ns, &format!("tj/{job}"), "{.status.phase}") == phase).then_some(())
    });
}

/// What the job's status says about its attempts: (attempt, preemptions, failures).
fn attempts(ns: &str, job: &str) -> (String, String, String) {
    let get = |field: &str| jsonpath(ns, &format!("tj/{job}"), &format!("{{.status.{field}}}"));
    (get("attempt"), get("preemptions"), get("failures"))
}

/// An event the operator published: who wrote it, and when.
#[derive(Debug)]
struct OperatorEvent {
    instance: String,
    reason: String,
    object: String,
    first: Timestamp,
    last: Timestamp,
}

fn operator_events(ns: &str) -> Vec<OperatorEvent> {
    let out = kubectl_ok(&["get", "events.v1.events.k8s.io", "-n", ns, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    let time = |v: &Value| v.as_str().and_then(|s| s.parse::<Timestamp>().ok());
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reportingController"] == CONTROLLER)
        .map(|e| {
            let first = time(&e["eventTime"]).expect("the operator's events carry eventTime");
            OperatorEvent {
                instance: e["reportingInstance"].as_str().unwrap_or_default().into(),
                reason: e["reason"].as_str().unwrap_or_default().into(),
                object: e["regarding"]["name"].as_str().unwrap_or_default().into(),
                first,
                // A repeated event becomes a series: its last repeat counts too.
                last: time(&e["series"]["lastObservedTime"]).unwrap_or(first),
            }
        })
        .collect()
}

/// Who recorded the job's `reason` event, once it is there.
fn reporter_of(ns: &str, job: &str, reason: &str) -> Option<String> {
    operator_events(ns)
        .into_iter()
        .find(|e| e.object == job && e.reason == reason)
        .map(|e| e.instance)
}

fn seconds(d: SignedDuration) -> f64 {
    d.as_secs_f64()
}

#[test]
fn the_charts_crd_is_the_generated_crd() {
    let generated = std::fs::read_to_string(root().join("crds/trainingjob.yaml")).unwrap();
    let chart = std::fs::read_to_string(root().join(CHART_CRD)).unwrap_or_default();
    assert!(
        chart == generated,
        "{CHART_CRD} differs from crds/trainingjob.yaml: run `cargo xtask helm --sync-crd`"
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn the_chart_lints_clean_and_its_schema_rejects_bad_values() {
    for values in [
        vec![],
        vec!["--set", "watchNamespace=team-a"],
        vec![
            "--set",
            "replicaCount=2,metrics.serviceMonitor.enabled=true,crds.install=false",
            "--set",
            "uninstallHook.enabled=false",
            "--set",
            "trainingJobDefaults.noticeSeconds=120,trainingJobDefaults.spotProvider=EKS",
            "--set",
            "maxConcurrentReconciles=8",
        ],
    ] {
        let mut args = vec!["lint", "--strict", CHART];
        args.extend_from_slice(&values);
        let out = helm_ok(&args);
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint {values:?}:\n{out}"
        );
    }
    // A typo or a wrong value fails the install, naming the value, instead
    // of being ignored.
    for (set, says) in [
        ("replicas=2", "replicas"),
        ("log.format=xml", "format"),
        ("watchNamespace=Not_A_Namespace", "watchNamespace"),
        ("trainingJobDefaults.spotProvider=GCP", "spotProvider"),
        ("uninstallHook.timeoutSeconds=0", "timeoutSeconds"),
        ("maxConcurrentReconciles=0", "maxConcurrentReconciles"),
    ] {
        let out = helm(&["template", "t", CHART, "--set", set]);
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(stderr(&out).contains(says), "--set {set}: {}", stderr(&out));
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn the_api_server_accepts_what_the_chart_renders() {
    let op = TempNamespace::new("chart-dry");
    let jobs = TempNamespace::new("chart-dry-jobs");
    let watch = format!("watchNamespace={}", jobs.name);
    for values in [
        vec![],
        vec!["--set", watch.as_str()],
        vec!["--set", "replicaCount=2,image.digest=sha256:0000000000000000000000000000000000000000000000000000000000000000"],
    ] {
        let mut args = vec!["template", "tjo-dry", CHART, "-n", &op.name];
        args.extend_from_slice(&values);
        let manifests = helm_ok(&args);
        // Server-side: the CRD is too large for client-side apply's
        // last-applied annotation. Forced, because ownership of fields is
        // not what this checks, and nothing is written.
        let out = kubectl_with_input(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=tjo-chart-dry-run",
                "--dry-run=server",
                "-f",
                "-",
            ],
            Some(&manifests),
        );
        assert!(
            out.status.success(),
            "the API server rejected `helm {}`: {}",
            args.join(" "),
            stderr(&out)
        );
        let applied = String::from_utf8_lossy(&out.stdout);
        for object in [
            format!("customresourcedefinition.apiextensions.k8s.io/{CRD}"),
            "deployment.apps/tjo-dry-trainingjob-operator".into(),
            "service/tjo-dry-trainingjob-operator-metrics".into(),
            "serviceaccount/tjo-dry-trainingjob-operator".into(),
            "job.batch/tjo-dry-trainingjob-operator-uninstall".into(),
        ] {
            assert!(
                applied.contains(&format!("{object} serverside-applied (server dry run)")),
                "{object} missing from:\n{applied}"
            );
        }
    }
}

/// The CRD as the chart renders it is the generated one, plus Helm's labels
/// and the keep policy: nothing lost in the template's YAML round trip.
#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn the_rendered_crd_is_the_generated_crd_with_a_keep_policy() {
    let rendered = helm_ok(&["template", "t", CHART, "--show-only", "templates/crd.yaml"]);
    let mut rendered: Value = serde_yaml::from_str(&rendered).unwrap();
    let generated = std::fs::read_to_string(root().join("crds/trainingjob.yaml")).unwrap();
    let mut generated: Value = serde_yaml::from_str(&generated).unwrap();
    assert_eq!(
        rendered["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    for crd in [&mut rendered, &mut generated] {
        let meta = crd["metadata"].as_object_mut().unwrap();
        meta.remove("labels");
        meta.remove("annotations");
        normalize_numbers(crd);
    }
    assert!(
        rendered == generated,
        "the chart renders a different CRD from crds/trainingjob.yaml"
    );
}

/// YAML's `3600.0` and `3600` are one number to the API server.
fn normalize_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => *v = serde_json::json!(n.as_f64().unwrap()),
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn install_runs_jobs_upgrade_keeps_them_and_uninstall_leaves_the_crd_and_jobs() {
    let op = restricted_namespace("chart-op");
    let jobs = TempNamespace::new("chart-jobs");
    // This release owns the CRD. It already exists (`cargo xtask test`
    // applies it, as a cluster upgraded to the chart would have it), so
    // the release adopts it.
    let (release, took) = Release::install(
        "tjo-life",
        &op.name,
        &[
            "--set",
            &format!("watchNamespace={}", jobs.name),
            "--set",
            "crds.install=true",
            "--take-ownership",
        ],
    );
    let pods = release.pods();
    assert_eq!(pods.len(), 1, "one operator pod");
    let operator = &pods[0];
    assert!(operator.ready && operator.image == OPERATOR_IMAGE);
    println!(
        "helm install to a Ready operator pod in {:.1}s (admitted under pod-security restricted)",
        took.as_secs_f64()
    );
    let (leader, _) = release.wait_for_leader(1);
    assert_eq!(leader, operator.name);
    assert_eq!(
        kubectl_ok(&[
            "get",
            "crd",
            CRD,
            "-o",
            r#"jsonpath={.metadata.annotations.meta\.helm\.sh/release-name} {.metadata.annotations.helm\.sh/resource-policy}"#
        ]),
        "tjo-life keep"
    );

    // Helm keeps each revision, CRD included, in one Secret of at most 1 MiB.
    let stored = kubectl_ok(&[
        "get",
        "secret",
        "-n",
        &op.name,
        "sh.helm.release.v1.tjo-life.v1",
        "-o",
        "jsonpath={.data.release}",
    ]);
    let bytes = stored.len() * 3 / 4;
    println!(
        "the release Secret holds {} KiB of Helm's 1024",
        bytes / 1024
    );
    assert!(
        bytes < 768 * 1024,
        "the release is near Helm's 1 MiB Secret limit"
    );

    let examples = root().join("examples/quickstart.yaml");
    provision_volume(&jobs.name, "quickstart-checkpoints", "ReadWriteOnce");
    kubectl_ok(&["apply", "-n", &jobs.name, "-f", examples.to_str().unwrap()]);
    wait_condition(&jobs.name, "tj/quickstart", "Succeeded", JOB_TIMEOUT);
    assert_eq!(
        reporter_of(&jobs.name, "quickstart", "Started").as_deref(),
        Some(operator.name.as_str()),
        "the in-cluster operator ran the quickstart"
    );

    // A job that trains through the upgrade.
    start_job(&jobs.name, "through-upgrade", 500, 0.05);
    wait_for_phase(&jobs.name, "through-upgrade", "Running");
    helm_ok(&[
        "upgrade",
        "tjo-life",
        CHART,
        "-n",
        &op.name,
        "--reuse-values",
        "--set",
        "log.format=text",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let (new_leader, _) = release.wait_for_leader(1);
    assert_ne!(new_leader, operator.name, "the upgrade rolled the pod");
    let logs = release.logs(&new_leader);
    assert!(
        logs.lines().next().is_some_and(|l| !l.starts_with('{')),
        "the new pod logs text, as upgraded:\n{logs}"
    );
    wait_condition(&jobs.name, "tj/through-upgrade", "Succeeded", JOB_TIMEOUT);
    assert_eq!(
        attempts(&jobs.name, "through-upgrade"),
        ("1".into(), "0".into(), "0".into()),
        "the job ran through the upgrade in its first attempt"
    );
    assert_eq!(
        reporter_of(&jobs.name, "through-upgrade", "Succeeded").as_deref(),
        Some(new_leader.as_str()),
        "the upgraded operator took the job over"
    );

    let out = helm_ok(&["uninstall", "tjo-life", "-n", &op.name, "--wait"]);
    assert!(out.contains(CRD), "helm says it kept the CRD: {out}");
    drop(release);
    let left = kubectl_ok(&[
        "get",
        "deployment,serviceaccount,role,rolebinding,service",
        "-n",
        &op.name,
        "-l",
        "app.kubernetes.io/instance=tjo-life",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "left behind: {left}");
    assert!(
        !kubectl(&[
            "get",
            "clusterrole",
            &format!("{}-{}-crd", fullname("tjo-life"), op.name)
        ])
        .status
        .success(),
        "the release's ClusterRole is gone"
    );
    assert_eq!(
        kubectl_ok(&[
            "get",
            "crd",
            CRD,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#
        ]),
        "True",
        "the CRD stays"
    );
    assert_eq!(
        kubectl_ok(&[
            "get",
            "tj",
            "-n",
            &jobs.name,
            "-o",
            r#"jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}"#
        ])
        .trim(),
        "quickstart=Succeeded through-upgrade=Succeeded",
        "the user's TrainingJobs stay"
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn the_standby_takes_over_when_the_leader_dies_and_never_acts_beside_it() {
    let op = restricted_namespace("chart-ha");
    let jobs = TempNamespace::new("chart-ha-jobs");
    let (release, _) = Release::install(
        "tjo-ha",
        &op.name,
        &[
            "--set",
            &format!("watchNamespace={}", jobs.name),
            "--set",
            "replicaCount=2,crds.install=false",
        ],
    );
    let (leader, others) = release.wait_for_leader(2);
    let standby = &others[0];
    wait_until(
        "the standby to say it stands by",
        Duration::from_secs(30),
        || release.logs(standby).contains("standing by").then_some(()),
    );

    // A job in flight when the leader dies, and one created just after.
    start_job(&jobs.name, "in-flight", 400, 0.05);
    wait_for_phase(&jobs.name, "in-flight", "Running");
    let killed_at = Timestamp::now();
    // No chance to hand over, as in a node failure or an OOM kill. The
    // Deployment's replacement pod is at once a second candidate: whichever
    // standby retries first after the Lease lapses leads.
    kubectl_ok(&[
        "delete",
        "pod",
        &leader,
        "-n",
        &op.name,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    start_job(&jobs.name, "after-kill", 100, 0.02);

    let new_leader = wait_until_or(
        "a standby to take the Lease",
        Duration::from_secs(90),
        || {
            let holder = release.lease_holder();
            (!holder.is_empty() && holder != leader).then_some(holder)
        },
        || release.state(),
    );
    let acquired: Timestamp = jsonpath(
        &op.name,
        &format!("lease/{}", fullname("tjo-ha")),
        "{.spec.acquireTime}",
    )
    .parse()
    .unwrap();
    let first = wait_until_or(
        "the new leader's first reconcile of the new job",
        Duration::from_secs(90),
        || {
            operator_events(&jobs.name)
                .into_iter()
                .find(|e| e.object == "after-kill" && e.reason == "Started")
        },
        || release.state(),
    );
    assert_eq!(
        first.instance, new_leader,
        "the new leader started the new job"
    );
    println!(
        "failover: leader {leader} killed; {} {new_leader} took the Lease after {:.1}s \
         and made its first reconcile after {:.1}s",
        if new_leader == *standby {
            "the standby"
        } else {
            "the replacement"
        },
        seconds(acquired.duration_since(killed_at)),
        seconds(first.first.duration_since(killed_at)),
    );

    wait_condition(&jobs.name, "tj/in-flight", "Succeeded", JOB_TIMEOUT);
    wait_condition(&jobs.name, "tj/after-kill", "Succeeded", JOB_TIMEOUT);
    assert_eq!(
        attempts(&jobs.name, "in-flight"),
        ("1".into(), "0".into(), "0".into()),
        "the job in flight never restarted"
    );

    // Never two at once: every action is by the Lease holder of its time.
    // The old leader's last write precedes the new leader's Lease, and the
    // new leader wrote nothing before it held the Lease.
    let events = operator_events(&jobs.name);
    let strangers: Vec<_> = events
        .iter()
        .filter(|e| e.instance != leader && e.instance != new_leader)
        .collect();
    assert!(
        strangers.is_empty(),
        "events by neither leader: {strangers:?}"
    );
    let old_last = events
        .iter()
        .filter(|e| e.instance == leader)
        .map(|e| e.last)
        .max();
    let new_first = events
        .iter()
        .filter(|e| e.instance == new_leader)
        .map(|e| e.first)
        .min();
    let (old_last, new_first) = (old_last.expect("the old leader acted"), new_first.unwrap());
    assert!(
        old_last < acquired && acquired <= new_first,
        "overlap: old leader's last event {old_last}, Lease taken {acquired}, \
         new leader's first event {new_first}"
    );
    // The other live replica never acted.
    let (_, standbys) = release.wait_for_leader(2);
    let logs = release.logs(&standbys[0]);
    assert!(
        logs.contains("standing by") && !logs.contains("controller running"),
        "{} should only stand by:\n{logs}",
        standbys[0]
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn the_service_account_may_do_what_the_operator_needs_and_nothing_more() {
    let op = TempNamespace::new("chart-rbac");
    let jobs = TempNamespace::new("chart-rbac-jobs");
    let other = TempNamespace::new("chart-rbac-other");
    // No replicas: only the RBAC is under test, and a cluster-wide
    // operator would fight the other tests' operators for their jobs.
    let (namespaced, _) = Release::install(
        "tjo-ns",
        &op.name,
        &[
            "--set",
            &format!("watchNamespace={}", jobs.name),
            "--set",
            "replicaCount=0,crds.install=false",
        ],
    );
    let sa = format!("system:serviceaccount:{}:{}", op.name, fullname("tjo-ns"));
    let lease = format!("leases/{}", fullname("tjo-ns"));
    let can = |args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i", "--as", sa.as_str()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&kubectl(&all).stdout).trim() == "yes"
    };
    let (j, o, x) = (jobs.name.as_str(), op.name.as_str(), other.name.as_str());
    let needed: &[&[&str]] = &[
        &["get", "trainingjobs.trainingjob.dev", "-n", j],
        &["list", "trainingjobs.trainingjob.dev", "-n", j],
        &["watch", "trainingjobs.trainingjob.dev", "-n", j],
        &[
            "patch",
            "trainingjobs.trainingjob.dev",
            "--subresource=status",
            "-n",
            j,
        ],
        // Owner references with blockOwnerDeletion, where
        // OwnerReferencesPermissionEnforcement is on.
        &[
            "update",
            "trainingjobs.trainingjob.dev",
            "--subresource=finalizers",
            "-n",
            j,
        ],
        &["watch", "pods", "-n", j],
        &["watch", "services", "-n", j],
        &["patch", "events.events.k8s.io", "-n", j],
        &["create", "pods", "-n", j],
        &["patch", "pods", "-n", j],
        &["delete", "pods", "-n", j],
        &["list", "pods", "-n", j],
        &["create", "services", "-n", j],
        &["get", "services", "-n", j],
        &["get", "persistentvolumeclaims", "-n", j],
        &["create", "events.events.k8s.io", "-n", j],
        &["create", "leases.coordination.k8s.io", "-n", o],
        &["update", &lease, "-n", o],
        &["get", &format!("customresourcedefinitions/{CRD}")],
        &["list", "nodes"],
        &["watch", "nodes"],
    ];
    let denied: &[&[&str]] = &[
        // Verbs the operator never uses on what it manages.
        &["patch", "trainingjobs.trainingjob.dev", "-n", j],
        &["update", "trainingjobs.trainingjob.dev", "-n", j],
        &["create", "trainingjobs.trainingjob.dev", "-n", j],
        &["delete", "trainingjobs.trainingjob.dev", "-n", j],
        &[
            "update",
            "trainingjobs.trainingjob.dev",
            "--subresource=status",
            "-n",
            j,
        ],
        &["update", "pods", "-n", j],
        &["get", "pods", "-n", j],
        &["patch", "services", "-n", j],
        &["delete", "services", "-n", j],
        &["delete", "events.events.k8s.io", "-n", j],
        &["get", "secrets", "-n", j],
        &["list", "secrets", "-n", o],
        &["get", "configmaps", "-n", j],
        &["list", "pods", "-n", x],
        &["list", "trainingjobs.trainingjob.dev", "-n", x],
        &["create", "pods", "-n", o],
        &["list", "pods", "--all-namespaces"],
        &["update", "leases/someone-elses", "-n", o],
        &["update", "persistentvolumeclaims", "-n", j],
        &["get", "customresourcedefinitions/other.example.com"],
        &["create", "clusterroles"],
        &["delete", "nodes"],
        &["patch", "nodes"],
        &["get", "nodes/proxy"],
        &["*", "*", "--all-namespaces"],
    ];
    for args in needed {
        assert!(can(args), "namespaced: {sa} should be allowed {args:?}");
    }
    for args in denied {
        assert!(!can(args), "namespaced: {sa} should be denied {args:?}");
    }
    drop(namespaced);

    let (cluster_wide, _) = Release::install(
        "tjo-all",
        &op.name,
        &["--set", "replicaCount=0,crds.install=false"],
    );
    let sa = format!("system:serviceaccount:{}:{}", op.name, fullname("tjo-all"));
    let can = |args: &[&str]| -> bool {
        let mut all = vec!["auth", "can-i", "--as", sa.as_str()];
        all.extend_from_slice(args);
        String::from_utf8_lossy(&kubectl(&all).stdout).trim() == "yes"
    };
    for args in [
        &["list", "pods", "--all-namespaces"][..],
        &["watch", "trainingjobs.trainingjob.dev", "-n", x],
        &[
            "update",
            "trainingjobs.trainingjob.dev",
            "--subresource=finalizers",
            "-n",
            x,
        ],
        &["create", "events.events.k8s.io", "-n", x],
    ] {
        assert!(can(args), "cluster-wide: {sa} should be allowed {args:?}");
    }
    for args in [
        &["get", "secrets", "-n", x][..],
        &["patch", "trainingjobs.trainingjob.dev", "-n", x],
        &["list", "secrets", "--all-namespaces"],
        &["create", "clusterroles"],
        &["create", "leases.coordination.k8s.io", "-n", x],
        &["*", "*", "--all-namespaces"],
    ] {
        assert!(!can(args), "cluster-wide: {sa} should be denied {args:?}");
    }
    drop(cluster_wide);
}

/// The training pods of `ns` that still hold the operator's report finalizer.
fn pods_holding_the_finalizer(ns: &str) -> Vec<String> {
    let out = kubectl_ok(&["get", "pods", "-n", ns, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "trainingjob.dev/report"))
        })
        .map(|p| p["metadata"]["name"].as_str().unwrap_or_default().into())
        .collect()
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn uninstall_while_a_job_runs_leaves_nothing_stuck_and_the_namespace_deletable() {
    let op = restricted_namespace("chart-bye");
    let jobs = TempNamespace::new("chart-bye-jobs");
    let (release, _) = Release::install(
        "tjo-bye",
        &op.name,
        &[
            "--set",
            &format!("watchNamespace={}", jobs.name),
            "--set",
            "crds.install=false",
        ],
    );
    release.wait_for_leader(1);
    start_job(&jobs.name, "mid-run", 100_000, 0.05);
    wait_for_phase(&jobs.name, "mid-run", "Running");
    assert_eq!(
        pods_holding_the_finalizer(&jobs.name),
        vec!["mid-run-a1-r0".to_string()],
        "the running pod holds the operator's finalizer"
    );

    let started = Instant::now();
    let out = helm(&[
        "uninstall",
        "tjo-bye",
        "-n",
        &op.name,
        "--wait",
        "--timeout",
        "180s",
    ]);
    let uninstalled = started.elapsed();
    assert!(
        out.status.success(),
        "helm uninstall: {}\nhook:\n{}",
        stderr(&out),
        String::from_utf8_lossy(
            &kubectl(&[
                "logs",
                "-n",
                &op.name,
                "job/tjo-bye-trainingjob-operator-uninstall"
            ])
            .stdout
        )
    );
    drop(release);
    assert!(
        pods_holding_the_finalizer(&jobs.name).is_empty(),
        "the hook released every pod"
    );
    let left = kubectl_ok(&[
        "get",
        "deployment,job,serviceaccount,role,rolebinding",
        "-n",
        &op.name,
        "-l",
        "app.kubernetes.io/instance=tjo-bye",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "left behind: {left}");
    let left = kubectl_ok(&["get", "role,rolebinding", "-n", &jobs.name, "-o", "name"]);
    assert!(left.trim().is_empty(), "left behind: {left}");

    // What the user does next: delete the job's namespace. With the
    // finalizer still on the pod it would hang forever.
    let started = Instant::now();
    kubectl_ok(&["delete", "namespace", &jobs.name, "--wait=false"]);
    wait_until_or(
        "the job's namespace to be gone",
        Duration::from_secs(120),
        || {
            let out = kubectl(&["get", "namespace", &jobs.name, "-o", "name"]);
            (!out.status.success() && stderr(&out).contains("NotFound")).then_some(())
        },
        || {
            let pods = kubectl(&["get", "pods", "-n", &jobs.name, "-o", "yaml"]);
            let ns = kubectl(&["get", "namespace", &jobs.name, "-o", "yaml"]);
            format!(
                "namespace:\n{}\npods:\n{}",
                String::from_utf8_lossy(&ns.stdout),
                String::from_utf8_lossy(&pods.stdout)
            )
        },
    );
    println!(
        "helm uninstall with a job running took {:.1}s (hook included); \
         the job's namespace was then deleted in {:.1}s",
        uninstalled.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The release path: `cargo xtask release` writes the operator's image as
/// an OCI archive and the packaged chart; the archive imports into
/// containerd, and the chart installs from the .tgz with that image.
#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn the_released_archive_imports_and_the_packaged_chart_installs() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    let (version, app) = (
        chart["version"].as_str().unwrap(),
        chart["appVersion"].as_str().unwrap(),
    );
    let out_dir = root().join(format!("target/test-release-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let repository = "localhost/tjo-release-test";
    let image = format!("{repository}:{app}");
    let xtask = std::env::var_os("TJO_XTASK")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target/debug/xtask"));
    let started = Instant::now();
    let status = Command::new(&xtask)
        .args(["release", "--out"])
        .arg(&out_dir)
        .args(["--image", &image])
        .current_dir(root())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {xtask:?} ({e}): build it with `cargo xtask`"));
    assert!(status.success(), "xtask release failed");
    let built = started.elapsed();
    let archive = out_dir.join(format!("trainingjob-operator-{app}.oci.tar"));
    let packaged = out_dir.join(format!("trainingjob-operator-{version}.tgz"));
    assert!(
        archive.is_file() && packaged.is_file(),
        "release wrote {out_dir:?}"
    );

    // The packaged chart defaults to the published image of its appVersion.
    let values = helm_ok(&["show", "values", packaged.to_str().unwrap()]);
    let values: Value = serde_yaml::from_str(&values).unwrap();
    assert!(values["image"]["repository"]
        .as_str()
        .is_some_and(|r| !r.starts_with("localhost/")));
    assert_eq!(values["image"]["tag"], "");

    let _ = ctr(&["images", "rm", &image]);
    let imported = ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(
        imported.status.success(),
        "ctr import: {}",
        stderr(&imported)
    );
    let listed = ctr(&["images", "ls", "-q", &format!("name=={image}")]);
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), image);

    let op = restricted_namespace("chart-pkg");
    let jobs = TempNamespace::new("chart-pkg-jobs");
    let (release, took) = Release::install_from(
        packaged.to_str().unwrap(),
        "tjo-pkg",
        &op.name,
        &[
            "--set",
            &format!("image.repository={repository}"),
            "--set",
            "image.pullPolicy=Never",
            "--set",
            &format!("watchNamespace={}", jobs.name),
            "--set",
            "crds.install=false",
        ],
    );
    let pods = release.pods();
    assert!(
        pods.len() == 1 && pods[0].ready && pods[0].image == image,
        "one Ready operator pod of {image}: {:?}",
        pods.iter().map(|p| &p.image).collect::<Vec<_>>()
    );
    println!(
        "xtask release (archive + helm package) in {:.1}s; the packaged chart installed \
         the imported image to a Ready pod in {:.1}s",
        built.as_secs_f64(),
        took.as_secs_f64()
    );
    drop(release);
    let _ = ctr(&["images", "rm", &image]);
    let _ = std::fs::remove_dir_all(&out_dir);
}
