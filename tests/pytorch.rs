//! The PyTorch example (examples/pytorch: DataLoader workers, two ranks
//! over gloo, DCP and torch.save through the `trainingjob` package) under
//! the operator on the real node.
//!
//! PyTorch reaches the pods as a read-only hostPath: the directory that
//! examples/pytorch/testbed-torch.sh installs once per version outside the
//! repository (5.4 GB: PyPI's torch is the CUDA build), run by the trainer
//! image's own python3. The example and the package are mounted from this
//! checkout, so the pods run the sources under test. A test bed only: a
//! real cluster runs an image with all of it inside.
//!
//! The test bed has no cluster DNS, so MASTER_ADDR (rank 0's name in the
//! job's headless Service) resolves nowhere in a pod. Two-rank jobs
//! therefore run on the host's network with that name pointed at 127.0.0.1
//! (`hostAliases`): rank 0's rendezvous port 29500 is then the host's, so
//! they take turns (`host_port`).

mod common;

use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// MASTER_PORT as src/pods.rs sets it.
const MASTER_PORT: u16 = 29500;

/// A turn on the host's rendezvous port, held while the listener lives:
/// binding the port below it is the lock, so tests of other processes (two
/// people's runs on one machine) take turns too. Given once no earlier
/// job's rank 0 listens on 29500: pods outlive their test while its
/// namespace is deleted.
fn host_port() -> std::net::TcpListener {
    let pods = || {
        let out = kubectl(&["get", "pods", "-A", "-o", "wide"]);
        format!("pods:\n{}", String::from_utf8_lossy(&out.stdout))
    };
    let turn = wait_until_or(
        "a turn on the host's port (another two-rank test runs)",
        Duration::from_secs(900),
        || std::net::TcpListener::bind(("127.0.0.1", MASTER_PORT - 1)).ok(),
        pods,
    );
    wait_until_or(
        &format!("port {MASTER_PORT} to be free on the host"),
        Duration::from_secs(180),
        || (!listening(MASTER_PORT)).then_some(()),
        pods,
    );
    turn
}

/// Whether a socket of this network namespace listens on `port`.
fn listening(port: u16) -> bool {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
            })
    })
}

/// The site-packages holding torch, installed on first use.
fn torch_site() -> &'static str {
    static SITE: OnceLock<String> = OnceLock::new();
    SITE.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(root().join("examples/pytorch/testbed-torch.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "examples/pytorch/testbed-torch.sh failed"
        );
        let site = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!(
            "torch for the pods: {site} ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
        site
    })
}

/// The DataLoader settings of every job here (the example's defaults:
/// 96 images of 3x128x128 float32 per batch, 18 MiB), from which the
/// operator sizes /dev/shm: (2 x 2 + 1) x 18Mi x 1.25 + 256Mi = 368.5Mi.
const SHM: &str =
    "  sharedMemory:\n    dataLoader: {workers: 2, prefetchFactor: 2, batchBytes: 18Mi}\n";

/// A TrainingJob of the example with `args`; `extra_spec` lines go under
/// `spec:` (SHM, backoffLimit...).
fn pytorch_job(ns: &str, name: &str, replicas: i32, args: &[&str], extra_spec: &str) -> String {
    let mut command = vec!["python3", "/opt/example/train.py"];
    command.extend_from_slice(args);
    let command = serde_json::to_string(&command).unwrap();
    let (site, root) = (torch_site(), root());
    let network = if replicas > 1 {
        // MASTER_ADDR as src/pods.rs sets it.
        format!(
            "      hostNetwork: true\n      hostAliases: [{{ip: 127.0.0.1, hostnames: [{name}-r0.{name}.{ns}.svc]}}]\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"apiVersion: trainingjob.dev/v1alpha1
kind: TrainingJob
metadata:
  name: {name}
spec:
  replicas: {replicas}
  checkpoint:
    claimName: ckpt
{extra_spec}  template:
    spec:
      # The hostPaths are on this machine's node, never on a fake one.
      nodeSelector: {{trainingjob.dev/local-node: "true"}}
{network}      volumes:
      - {{name: torch, hostPath: {{path: {site}, type: Directory}}}}
      - {{name: trainingjob, hostPath: {{path: {root}/python/src, type: Directory}}}}
      - {{name: example, hostPath: {{path: {root}/examples/pytorch, type: Directory}}}}
      containers:
      - name: trainer
        image: {TRAINER_IMAGE}
        imagePullPolicy: Never
        command: {command}
        env:
        - {{name: PYTHONPATH, value: /opt/torch:/opt/trainingjob}}
        - {{name: PYTHONDONTWRITEBYTECODE, value: "1"}}
        # Where gloo's ranks connect: the host's loopback when on its network.
        - {{name: GLOO_SOCKET_IFNAME, value: lo}}
        volumeMounts:
        - {{name: torch, mountPath: /opt/torch, readOnly: true}}
        - {{name: trainingjob, mountPath: /opt/trainingjob, readOnly: true}}
        - {{name: example, mountPath: /opt/example, readOnly: true}}
        resources:
          limits:
            memory: 2Gi
"#,
        root = root.display()
    )
}

/// One job of the example, its operator and its observers.
struct Run {
    ns: TempNamespace,
    watch: PodWatch,
    op: Operator,
    job: &'static str,
}

impl Run {
    fn start(prefix: &str, job: &'static str, replicas: i32, args: &[&str], spec: &str) -> Self {
        let ns = TempNamespace::new(prefix);
        gang_claim(&ns.name, "ckpt", replicas);
        let watch = PodWatch::start(&ns.name);
        let op = Operator::start(&ns.name);
        apply(&ns.name, &pytorch_job(&ns.name, job, replicas, args, spec));
        Self { ns, watch, op, job }
    }

    fn status(&self, path: &str) -> String {
        jsonpath(&self.ns.name, &format!("tj/{}", self.job), path)
    }

    fn pod(&self, attempt: i32, rank: i32) -> String {
        format!("{}-a{attempt}-r{rank}", self.job)
    }

    /// Where the job's checkpoints are on this machine (the claim's
    /// hostPath volume, `subPath` the job's name).
    fn checkpoints(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!(
            "/var/lib/tjo-volumes/{}/ckpt/{}",
            self.ns.name, self.job
        ))
    }

    fn logs(&self, pod: &str) -> String {
        trainer_logs(&self.ns.name, pod)
    }

    fn report(&self, pod: &str) -> Value {
        self.watch.wait_report(pod, Duration::from_secs(120))
    }

    /// Waits for `what` to hold of the job's status, printing it on timeout.
    fn wait_status(&self, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        wait_until_or(
            what,
            timeout,
            || {
                let s: Value = serde_json::from_str(&self.status("{.status}")).ok()?;
                ok(&s).then_some(s)
            },
            || {
                format!(
                    "status: {}\npods: {:?}\noperator:\n{}",
                    self.status("{.status}"),
                    self.watch.pods(),
                    self.op.log_tail()
                )
            },
        )
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Each checkpoint is 38 MB: leave none on the machine.
        let _ = std::fs::remove_dir_all(format!("/var/lib/tjo-volumes/{}", self.ns.name));
    }
}

/// The state of the trainer container of `pod` as last seen.
fn trainer_state(watch: &PodWatch, pod: &str) -> Value {
    let last = watch.last(pod).unwrap_or_default();
    last["status"]["containerStatuses"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "trainer").cloned())
        .map(|c| c["state"].clone())
        .unwrap_or_default()
}

/// The example's last line when nothing interrupts it: two ranks run right
/// here, with the pods' torch and the trainer image's python (Debian's
/// python3 3.11, as the image has).
fn uninterrupted(args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("tj-pytorch-reference-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let mut cmd = Command::new(python);
            cmd.arg(root().join("examples/pytorch/train.py")).args(args);
            for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("TJ_")) {
                cmd.env_remove(k);
            }
            cmd.env(
                "PYTHONPATH",
                format!("{}:{}", torch_site(), root().join("python/src").display()),
            )
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("TJ_CHECKPOINT_DIR", &dir)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("GLOO_SOCKET_IFNAME", "lo")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs")
        })
        .collect();
    let outs: Vec<_> = ranks
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    for out in &outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    final_line(&String::from_utf8_lossy(&outs[0].stdout)).expect("rank 0 prints a final line")
}

/// Waits until `pod`'s trainer has printed `steps` step lines.
fn wait_steps(run: &Run, pod: &str, steps: usize) {
    wait_until_or(
        &format!("{pod} to train {steps} steps"),
        Duration::from_secs(240),
        || {
            let n = run
                .logs(pod)
                .lines()
                .filter(|l| l.starts_with("step "))
                .count();
            (n >= steps).then_some(())
        },
        || {
            format!(
                "status: {}\nlogs:\n{}",
                run.status("{.status}"),
                run.logs(pod)
            )
        },
    );
}

/// A trainer's log as `kubectl logs -f` streams it, kept after the pod is
/// gone: a pod deleted on purpose leaves the API once its report is read.
struct Follow {
    child: std::process::Child,
    text: std::sync::Arc<Mutex<String>>,
}

impl Follow {
    /// Follows the running trainer of `pod`.
    fn start(ns: &str, pod: &str) -> Self {
        let mut child = Command::new("kubectl")
            .args(["logs", "-f", "-n", ns, pod, "-c", "trainer"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl starts");
        let stdout = child.stdout.take().unwrap();
        let text = std::sync::Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut t = sink.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
        Self { child, text }
    }

    /// Everything, once the container has ended and kubectl with it.
    fn wait(&mut self) -> String {
        let child = &mut self.child;
        wait_until("kubectl logs -f to end", Duration::from_secs(60), || {
            child.try_wait().ok().flatten()
        });
        // The reader thread may still hold the last lines: it ends with the pipe.
        wait_until("the last log lines", Duration::from_secs(10), || {
            (std::sync::Arc::strong_count(&self.text) == 1).then_some(())
        });
        self.text.lock().unwrap().clone()
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "rank R: shm: peak N bytes ...", as each rank prints it when it stops.
fn shm_peak(logs: &str) -> Option<u64> {
    let line = logs.lines().find(|l| l.contains("shm: peak "))?;
    let rest = &line[line.find("shm: peak ")? + "shm: peak ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn three_preemptions_by_delete_eviction_and_forced_delete_lose_no_step_and_end_with_the_uninterrupted_sha256(
) {
    let _port = host_port();
    let started = Instant::now();
    let args = ["--steps", "60", "--ckpt-every", "20"];
    let reference = std::thread::spawn(move || uninterrupted(&args));
    let run = Run::start("pt-routes", "pt", 2, &args, SHM);
    for (attempt, route) in [
        (1, "kubectl delete pod (rank 0)"),
        (2, "Eviction API (rank 1)"),
        (3, "forced deletion (rank 0)"),
    ] {
        wait_steps(&run, &run.pod(attempt, 0), 5);
        let target = run.pod(attempt, if attempt == 2 { 1 } else { 0 });
        match attempt {
            1 => {
                kubectl_ok(&["delete", "pod", "-n", &run.ns.name, &target, "--wait=false"]);
            }
            2 => evict(&run.ns.name, &target),
            _ => {
                kubectl_ok(&[
                    "delete",
                    "pod",
                    "-n",
                    &run.ns.name,
                    &target,
                    "--grace-period=0",
                    "--force",
                    "--wait=false",
                ]);
            }
        }
        // A force-deleted pod leaves no status to read: the other rank's
        // report says where the gang stopped.
        let witness = run.pod(attempt, if attempt == 3 { 1 } else { 0 });
        let report = run.report(&witness);
        assert_eq!(report["state"], "signalled", "{route}: {report}");
        let saved = report["lastCheckpoint"]["step"]
            .as_i64()
            .expect("a stop checkpoint");
        assert_eq!(
            report["lastStep"].as_i64(),
            Some(saved),
            "{route}: the stop step was saved: {report}"
        );
        let next = run.pod(attempt + 1, 0);
        wait_steps(&run, &next, 1);
        assert!(
            run.logs(&next)
                .contains(&format!("resumed from step {saved} ")),
            "{route}: {next} resumes from step {saved}:\n{}",
            run.logs(&next)
        );
        println!("preemption {attempt} by {route}: both ranks saved step {saved}, attempt {} resumed from it", attempt + 1);
    }
    let s = run.wait_status("Succeeded", Duration::from_secs(300), |s| {
        s["phase"] == "Succeeded"
    });
    let last = final_line(&run.logs(&run.pod(4, 0))).expect("a final line");
    let reference = reference.join().expect("the reference run");
    assert_eq!(
        last, reference,
        "the preempted run must end exactly like an uninterrupted one"
    );
    assert_eq!(
        (s["preemptions"].as_i64(), s["failures"].as_i64()),
        (Some(3), Some(0)),
        "{s}"
    );
    let lost: Vec<Option<i64>> = s["interruptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["stepsLost"].as_i64())
        .collect();
    assert_eq!(lost, [Some(0); 3], "steps lost per preemption: {s}");
    let reasons: Vec<&str> = s["interruptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reasons[1], "EvictionByEvictionAPI", "{s}");
    println!(
        "{last}\nreasons {reasons:?}, steps lost {lost:?}, in {:.0}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_dataloader_with_workers_survives_sigterm_saves_and_exits_0() {
    let started = Instant::now();
    let run = Run::start(
        "pt-sigterm",
        "sig",
        1,
        &["--steps", "100000", "--ckpt-every", "100000"],
        SHM,
    );
    let pod = run.pod(1, 0);
    wait_steps(&run, &pod, 5);
    let mut follow = Follow::start(&run.ns.name, &pod);
    kubectl_ok(&["delete", "pod", "-n", &run.ns.name, &pod, "--wait=false"]);
    let report = run.report(&pod);
    let terminated = trainer_state(&run.watch, &pod)["terminated"].clone();
    let logs = follow.wait();
    assert_eq!(
        (
            report["state"].as_str(),
            report["exitCode"].as_i64(),
            report["signalHonoured"].as_bool()
        ),
        (Some("signalled"), Some(0), Some(true)),
        "{report}\n{logs}"
    );
    assert_eq!(terminated["exitCode"], 0, "{terminated}");
    let step = report["lastCheckpoint"]["step"]
        .as_i64()
        .expect("the stop checkpoint");
    assert_eq!(
        report["lastStep"].as_i64(),
        Some(step),
        "the step it stopped at was saved: {report}"
    );
    assert!(
        logs.contains(&format!("saved step {step} (stop)")),
        "{logs}"
    );
    assert!(
        !logs.contains("DataLoader worker") && !logs.contains("Traceback"),
        "the workers neither died first nor broke the step:\n{logs}"
    );
    let metadata = run.checkpoints().join(format!("step-{step}/.metadata"));
    assert!(metadata.is_file(), "{} is there", metadata.display());
    let peak = shm_peak(&logs).expect("the trainer reports its /dev/shm peak");
    println!(
        "SIGTERM: saved step {step} in {}s of the report's {}s to exit, exit code 0; /dev/shm peak {peak} bytes ({:.1} MiB); {:.0}s",
        report["saves"]["lastSeconds"],
        report["signalToExitSeconds"],
        peak as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak > 64 << 20,
        "the example outgrows the 64 MiB default: {peak}"
    );
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn deleting_one_pod_of_two_stops_both_ranks_after_the_same_step() {
    let _port = host_port();
    let started = Instant::now();
    let run = Run::start(
        "pt-gang",
        "gang",
        2,
        // The torch.save variant: rank 0 writes step-N.ckpt for both.
        &[
            "--steps",
            "100000",
            "--ckpt-every",
            "100000",
            "--save",
            "torch",
        ],
        SHM,
    );
    wait_steps(&run, &run.pod(1, 0), 5);
    kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &run.ns.name,
        &run.pod(1, 1),
        "--wait=false",
    ]);
    let r0 = run.report(&run.pod(1, 0));
    let r1 = run.report(&run.pod(1, 1));
    let step = r1["lastCheckpoint"]["step"].as_i64().expect("rank 1 saved");
    for r in [&r0, &r1] {
        assert_eq!(r["state"], "signalled", "{r}");
        assert_eq!(
            r["lastCheckpoint"]["step"].as_i64(),
            Some(step),
            "one step for both: {r0} {r1}"
        );
        assert_eq!(r["lastStep"].as_i64(), Some(step), "{r}");
    }
    // Rank 0 either stopped for rank 1 through the all-reduce, or also got
    // its own SIGTERM from the operator first: either way the same step.
    let how = match &r0["peerStop"] {
        Value::Null => format!("its own {}", r0["signal"]["name"]),
        p => format!("peerStop {p}"),
    };
    println!(
        "rank 1 deleted: both ranks saved step {step}; rank 0 stopped by {how}; {:.0}s",
        started.elapsed().as_secs_f64()
    );
    wait_steps(&run, &run.pod(2, 0), 1);
    for rank in 0..2 {
        let pod = run.pod(2, rank);
        assert!(
            run.logs(&pod).contains(&format!(
                "launcher: resuming from /checkpoints/step-{step}.ckpt "
            )),
            "{pod}: {}",
            run.logs(&pod)
        );
    }
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn a_sigkill_mid_dcp_save_resumes_from_the_previous_complete_checkpoint() {
    let _port = host_port();
    let started = Instant::now();
    // Every save holds 8 s between writing the ranks' data and DCP's
    // .metadata, longer than the 2 s a forced deletion leaves.
    let args = [
        "--steps",
        "100000",
        "--ckpt-every",
        "10",
        "--save-seconds",
        "8",
    ];
    let run = Run::start("pt-torn", "torn", 2, &args, SHM);
    let dir = run.checkpoints();
    let in_flight = dir.join("step-20.tmp");
    wait_until_or(
        "step 10 complete and step 20's save in flight",
        Duration::from_secs(240),
        || {
            let data = std::fs::read_dir(&in_flight).ok()?.count() >= 2;
            (dir.join("step-10/.metadata").is_file() && data).then_some(())
        },
        || {
            format!(
                "{}: {:?}\n{}",
                dir.display(),
                ls(&dir),
                run.logs(&run.pod(1, 0))
            )
        },
    );
    let torn = ls(&in_flight);
    kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &run.ns.name,
        &run.pod(1, 0),
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    let r1 = run.report(&run.pod(1, 1));
    assert_eq!(
        r1["lastCheckpoint"]["step"], 10,
        "the last complete save: {r1}"
    );
    let next = run.pod(2, 0);
    wait_steps(&run, &next, 1);
    let logs = run.logs(&next);
    assert!(logs.contains("resumed from step 10 "), "{logs}");
    assert!(
        logs.contains("temporaries left by dead writers"),
        "the launcher deletes the torn step-20.tmp: {logs}"
    );
    let s = run.wait_status(
        "the interruption's steps lost",
        Duration::from_secs(60),
        |s| s["interruptions"][0]["stepsLost"].is_i64(),
    );
    let i = &s["interruptions"][0];
    assert_eq!(i["kind"], "Preemption", "{s}");
    println!(
        "SIGKILL mid-save: step-20.tmp held {torn:?} without .metadata; attempt 2 resumed from step 10; \
         rank 1 exited {} ({}), {} steps lost, reason {}; {:.0}s",
        r1["exitCode"],
        r1["state"],
        i["stepsLost"],
        i["reason"],
        started.elapsed().as_secs_f64()
    );
}

fn ls(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
#[ignore = "needs the local cluster: cargo xtask test"]
fn the_example_on_the_64mib_shm_default_fails_and_is_reported_as_a_spec_or_resource_problem() {
    // No sharedMemory: the container runtime's 64 MiB /dev/shm, which the
    // DataLoader's prefetched batches (about 90 MiB) outgrow.
    let started = Instant::now();
    let run = Run::start(
        "pt-shm",
        "shm",
        1,
        &["--steps", "40", "--ckpt-every", "100000"],
        "  backoffLimit: 0\n",
    );
    let s = run.wait_status("the job to fail", Duration::from_secs(240), |s| {
        s["phase"] == "Failed"
    });
    let logs = run.logs(&run.pod(1, 0));
    assert!(
        logs.contains("No space left on device"),
        "the DataLoader ran out of /dev/shm:\n{logs}"
    );
    let i = &s["interruptions"][0];
    println!(
        "64 MiB /dev/shm: preemptions {}, failures {}, interruption kind {} reason {} message {}; {:.0}s",
        s["preemptions"],
        s["failures"],
        i["kind"],
        i["reason"],
        i["message"],
        started.elapsed().as_secs_f64()
    );
    // Not a preemption: nothing took the pod away.
    assert_eq!(
        (s["preemptions"].as_i64(), s["failures"].as_i64()),
        (Some(0), Some(1)),
        "{s}"
    );
    assert_eq!(i["kind"], "Failure", "{s}");
    // What a person needs to fix it: /dev/shm, i.e. spec.sharedMemory, not
    // a crash of their code to debug.
    assert_eq!(i["reason"], "SharedMemoryExhausted", "{s}");
    assert!(
        i["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.sharedMemory"),
        "{s}"
    );
}
