//! Shared helpers for the tests that run against the real local cluster.
//!
//! These tests are `#[ignore]`d so a plain `cargo test` needs no cluster;
//! `cargo xtask test` brings the cluster up, sets KUBECONFIG and a PATH with
//! the pinned kubectl, and runs them with `--include-ignored`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require_cluster() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "these tests need the local cluster: run them with `cargo xtask test`, \
         or `cargo xtask cluster up` and export the KUBECONFIG it prints"
    );
}

/// Runs kubectl with `args`, feeding `stdin` if given.
pub fn kubectl_with_input(args: &[&str], stdin: Option<&str>) -> Output {
    require_cluster();
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl is on PATH");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn kubectl(args: &[&str]) -> Output {
    kubectl_with_input(args, None)
}

/// Runs kubectl and returns stdout, panicking with stderr on failure.
pub fn kubectl_ok(args: &[&str]) -> String {
    let out = kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ctr` against the node's containerd, in the namespace the kubelet uses.
pub fn ctr(args: &[&str]) -> Output {
    let socket = std::env::var("TJO_CONTAINERD_SOCKET")
        .unwrap_or_else(|_| "/run/tjo-containerd/containerd.sock".into());
    Command::new("ctr")
        .args(["--address", &socket, "--namespace", "k8s.io"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ctr")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Polls `check` until it returns Some or the deadline passes.
pub fn wait_until<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_until_or(what, timeout, check, String::new)
}

/// `wait_until`, with `state()` in the failure message: what the test saw
/// last, so a timeout says why.
pub fn wait_until_or<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
    state: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                state()
            );
        }
        std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// A namespace of its own for one test, deleted (without waiting) on drop.
pub struct TempNamespace {
    pub name: String,
}

impl TempNamespace {
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        kubectl_ok(&["create", "namespace", &name]);
        // Namespaced objects need the default ServiceAccount before pods can be admitted.
        wait_until(
            "the namespace's default ServiceAccount",
            Duration::from_secs(60),
            || {
                kubectl(&["get", "serviceaccount", "default", "-n", &name])
                    .status
                    .success()
                    .then_some(())
            },
        );
        Self { name }
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        // The test's operator is gone by now, so nobody would release the
        // report finalizer of its pods and the namespace would never go:
        // clean up as an administrator would.
        let pods = Command::new("kubectl")
            .args(["get", "pods", "-n", &self.name, "-o", "name"])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pod in pods.lines() {
            let _ = Command::new("kubectl")
                .args([
                    "patch",
                    "-n",
                    &self.name,
                    pod,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for args in [
            vec!["delete", "namespace", &self.name, "--wait=false"],
            // Volumes are cluster-scoped: provision_volume labels them.
            vec![
                "delete",
                "pv",
                "-l",
                &format!("tjo-test-namespace={}", self.name),
                "--wait=false",
            ],
        ] {
            let _ = Command::new("kubectl")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A PersistentVolume bound in advance to claim `ns/claim`: the local
/// cluster has no provisioner, so tests (and the demo) bring their own
/// hostPath volume, as an administrator would.
pub fn provision_volume(ns: &str, claim: &str, access_mode: &str) {
    let pv = format!("{ns}-{claim}");
    let manifest = format!(
        r#"apiVersion: v1
kind: PersistentVolume
metadata:
  name: {pv}
  labels: {{tjo-test-namespace: {ns}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [{access_mode}]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {{namespace: {ns}, name: {claim}}}
  hostPath: {{path: /var/lib/tjo-volumes/{ns}/{claim}, type: DirectoryOrCreate}}
"#
    );
    let out = kubectl_with_input(&["apply", "-f", "-"], Some(&manifest));
    assert!(out.status.success(), "creating PV {pv}: {}", stderr(&out));
}

/// The operator, run from this build against the local cluster, watching one
/// namespace so that tests running side by side never share a controller.
pub struct Operator {
    child: std::process::Child,
    pub log: PathBuf,
    /// Where it serves /healthz, /readyz and /metrics.
    pub addr: std::net::SocketAddr,
}

impl Operator {
    pub fn start(namespace: &str) -> Self {
        require_cluster();
        let dir = root().join("target/test-logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("operator-{namespace}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // A port the kernel had free; the operator binds it right away.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_trainingjob-operator"))
            .args(["run", "--namespace", namespace, "--listen"])
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("the operator binary starts");
        Self { child, log, addr }
    }

    /// One sample from /metrics, e.g. `trainingjob_preemptions_total`;
    /// None until the operator serves it.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(self.addr).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        conn.read_to_string(&mut body).ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// SIGTERM, as the kubelet stops it; how long it took to exit, and how.
    pub fn terminate(&mut self, deadline: Duration) -> (Duration, std::process::ExitStatus) {
        let sent = Instant::now();
        let pid = self.child.id().to_string();
        let out = Command::new("kill").args(["-TERM", &pid]).output().unwrap();
        assert!(out.status.success(), "kill -TERM {pid}");
        let child = &mut self.child;
        let log = self.log.clone();
        wait_until_or(
            "the operator to exit after SIGTERM",
            deadline,
            || child.try_wait().ok().flatten().map(|s| (sent.elapsed(), s)),
            || std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    /// SIGKILL, as a node failure or an OOM kill would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A jsonpath of an object, or "" when it is not there (yet).
pub fn jsonpath(ns: &str, object: &str, path: &str) -> String {
    let out = kubectl(&["get", "-n", ns, object, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits for a condition to be True, reading its state: an object with no
/// conditions yet (or not there yet) is a state to wait through, not an
/// error, as `kubectl wait` would make it on a first read.
pub fn wait_condition(ns: &str, object: &str, condition: &str, timeout: Duration) {
    let path = format!(r#"{{.status.conditions[?(@.type=="{condition}")].status}}"#);
    wait_until_or(
        &format!("{object} to reach {condition}"),
        timeout,
        || (jsonpath(ns, object, &path) == "True").then_some(()),
        || {
            let pods = kubectl(&["get", "pods", "-n", ns, "-o", "wide"]);
            format!(
                "status: {}\npods:\n{}",
                jsonpath(ns, object, "{.status}"),
                String::from_utf8_lossy(&pods.stdout)
            )
        },
    )
}

/// Every change to the pods of a namespace, as `kubectl get --watch` sees
/// it, kept in memory: the final status of a pod (with its launcher report)
/// outlives the pod object this way.
pub struct PodWatch {
    child: std::process::Child,
    events: std::sync::Arc<std::sync::Mutex<Vec<(Instant, serde_json::Value)>>>,
}

impl PodWatch {
    pub fn start(ns: &str) -> Self {
        require_cluster();
        let mut child = Command::new("kubectl")
            .args([
                "get",
                "pods",
                "-n",
                ns,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl starts");
        let stdout = child.stdout.take().unwrap();
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout))
                .into_iter::<serde_json::Value>();
            for ev in stream.flatten() {
                sink.lock().unwrap().push((Instant::now(), ev));
            }
        });
        Self { child, events }
    }

    /// (time seen, event type, pod) in the order the API server sent them.
    pub fn events(&self) -> Vec<(Instant, String, serde_json::Value)> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(t, ev)| {
                (
                    *t,
                    ev["type"].as_str().unwrap_or_default().to_string(),
                    ev["object"].clone(),
                )
            })
            .collect()
    }

    /// The last state seen of a pod.
    pub fn last(&self, pod: &str) -> Option<serde_json::Value> {
        self.events()
            .into_iter()
            .rev()
            .find(|(_, _, p)| p["metadata"]["name"] == pod)
            .map(|(_, _, p)| p)
    }

    /// The launcher's report from the trainer's termination message, once
    /// the trainer has exited.
    pub fn report(&self, pod: &str) -> Option<serde_json::Value> {
        self.events()
            .into_iter()
            .rev()
            .filter(|(_, _, p)| p["metadata"]["name"] == pod)
            .find_map(|(_, _, p)| {
                let statuses = p["status"]["containerStatuses"].as_array()?.clone();
                let trainer = statuses.iter().find(|c| c["name"] == "trainer")?;
                let message = trainer["state"]["terminated"]["message"].as_str()?;
                serde_json::from_str(message.trim()).ok()
            })
    }

    /// Waits for the report, failing with the pod's last seen status.
    pub fn wait_report(&self, pod: &str, timeout: Duration) -> serde_json::Value {
        wait_until_or(
            &format!("the report of {pod}"),
            timeout,
            || self.report(pod),
            || {
                format!(
                    "its last status: {:?}",
                    self.last(pod).map(|p| p["status"].to_string())
                )
            },
        )
    }

    /// Names of every pod seen, in order of first appearance.
    pub fn pods(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (_, _, p) in self.events() {
            let name = p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// TrainingJobs for the end-to-end tests.

pub const TRAINER_IMAGE: &str = "localhost/tjo-trainer:dev";

/// A one-rank job whose trainer container runs `command`.
pub fn job(name: &str, claim: &str, command: &[&str], extra_spec: &str) -> String {
    let command = serde_json::to_string(command).unwrap();
    format!(
        r#"apiVersion: trainingjob.dev/v1alpha1
kind: TrainingJob
metadata:
  name: {name}
spec:
  backoffLimit: 2
  checkpoint:
    claimName: {claim}
  template:
    spec:
      containers:
      - name: trainer
        image: {TRAINER_IMAGE}
        imagePullPolicy: Never
        command: {command}
        resources:
          limits:
            memory: 256Mi
{extra_spec}"#
    )
}

/// The example trainer, a step every 50 ms for `steps` steps, then `extra`.
pub fn train(steps: &'static str, extra: &[&'static str]) -> Vec<&'static str> {
    let mut cmd = vec![
        "python3",
        "/opt/trainer/train.py",
        "--total-steps",
        steps,
        "--step-seconds",
        "0.05",
    ];
    cmd.extend_from_slice(extra);
    cmd
}

pub fn claim(ns: &str, name: &str, mode: &str) {
    provision_volume(ns, name, mode);
    let pvc = format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: {name}\nspec:\n  accessModes: [{mode}]\n  \
         storageClassName: \"\"\n  resources:\n    requests:\n      storage: 1Gi\n"
    );
    let out = kubectl_with_input(&["apply", "-n", ns, "-f", "-"], Some(&pvc));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A claim every rank of a `replicas`-rank job can mount: ReadWriteMany
/// for a gang, ReadWriteOnce for one rank.
pub fn gang_claim(ns: &str, name: &str, replicas: i32) {
    let mode = if replicas > 1 {
        "ReadWriteMany"
    } else {
        "ReadWriteOnce"
    };
    claim(ns, name, mode);
}

pub fn apply(ns: &str, manifest: &str) {
    let out = kubectl_with_input(&["apply", "-n", ns, "-f", "-"], Some(manifest));
    assert!(out.status.success(), "apply failed: {}", stderr(&out));
}

pub fn pod_names(ns: &str, job: &str) -> Vec<String> {
    let out = kubectl_ok(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("trainingjob.dev/job={job}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut names: Vec<String> = out.split_whitespace().map(String::from).collect();
    names.sort();
    names
}

/// Waits until every rank of `job` runs (phase Running).
pub fn wait_running(ns: &str, job: &str) {
    let object = format!("tj/{job}");
    wait_until_or(
        &format!("{job} to run"),
        Duration::from_secs(120),
        || (jsonpath(ns, &object, "{.status.phase}") == "Running").then_some(()),
        || format!("its status: {}", jsonpath(ns, &object, "{.status}")),
    )
}

// The example trainer's output.

/// The trainer's last line when nothing interrupts it, run right here.
pub fn uninterrupted(args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!(
        "tj-reference-{}-{}",
        std::process::id(),
        args.join("_").len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new("python3")
        .arg(root().join("examples/trainer/train.py"))
        .args(args)
        .arg("--checkpoint-dir")
        .arg(&dir)
        .env_remove("TJ_CHECKPOINT_DIR")
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    final_line(&String::from_utf8_lossy(&out.stdout)).expect("the trainer prints a final line")
}

pub fn final_line(logs: &str) -> Option<String> {
    logs.lines()
        .rev()
        .find(|l| l.starts_with("final "))
        .map(String::from)
}

pub fn trainer_logs(ns: &str, pod: &str) -> String {
    String::from_utf8_lossy(&kubectl(&["logs", "-n", ns, pod, "-c", "trainer"]).stdout).into_owned()
}

/// Waits until `attempt` runs and its rank-0 trainer has done `steps` steps
/// in it, so a preemption lands mid-training.
pub fn wait_training(ns: &str, job: &str, attempt: i32, steps: usize) -> String {
    let pod = format!("{job}-a{attempt}-r0");
    wait_until(
        &format!("{pod} to train {steps} steps"),
        Duration::from_secs(180),
        || {
            let running = jsonpath(ns, &format!("tj/{job}"), "{.status.attempt}")
                == attempt.to_string()
                && jsonpath(ns, &format!("tj/{job}"), "{.status.phase}") == "Running";
            let trained = trainer_logs(ns, &pod)
                .lines()
                .filter(|l| l.starts_with("step "))
                .count()
                >= steps;
            (running && trained).then_some(())
        },
    );
    pod
}

/// Evicts a pod through the Eviction API, as a drain does.
pub fn evict(ns: &str, pod: &str) {
    let body = format!(
        r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"{ns}"}}}}"#
    );
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction");
    let out = kubectl_with_input(&["create", "--raw", &path, "-f", "-"], Some(&body));
    assert!(out.status.success(), "eviction refused: {}", stderr(&out));
}
