//! `cargo xtask bench scale --jobs N`: a controller's cost at N jobs, on
//! kwok nodes (fake nodes whose pods kwok marks Running without running
//! them). N jobs of 1 to 8 ranks as TrainingJobs, then the same as JobSets
//! and as Indexed Jobs; printed, never asserted:
//! - the controller's peak RSS and CPU seconds while it brings them all up
//!   (for Jobs, kube-controller-manager's, which runs other controllers too);
//! - API requests per job by the controller, from the API server's audit log;
//! - one preemption injected at N jobs: pod deleted -> replacement created,
//!   split at the moment the old pod is gone (the kubelet's share before,
//!   the controller's after), and the requests made meanwhile;
//! - the operator's reconcile p50 and p99, from its own histogram;
//! - a restart of the operator at N jobs: time until it has reconciled
//!   every job again, its peak RSS, and the API server's and etcd's.

use crate::controlplane::kubectl;
use crate::daemon;
use crate::demo::start_operator;
use crate::util::{output, run, step, unix_now, wait_for, Paths};
use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMESPACE: &str = "scale";
const OPERATOR: &str = "trainingjob-operator";
const METRICS: &str = "http://127.0.0.1:18080/metrics";
/// Ranks of job i: i % 7 picks one, so sizes mix as a real fleet's do.
const SIZES: [u32; 7] = [1, 1, 1, 2, 2, 4, 8];
const PODS_PER_FAKE_NODE: u32 = 100;

/// The controller under load: the operator, or a peer given the same jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    Trainingjob,
    Jobset,
    Job,
}

impl System {
    /// The process that does the work, and its client in the audit log.
    fn controller(self) -> (&'static str, &'static str) {
        match self {
            System::Trainingjob => (OPERATOR, "trainingjob-operator"),
            System::Jobset => ("jobset", "jobset"),
            System::Job => (
                "kube-controller-manager",
                "kube-controller-manager (job-controller)",
            ),
        }
    }

    /// Selects the pods of job i.
    fn selector(self, i: u32) -> String {
        match self {
            System::Trainingjob => format!("trainingjob.dev/job=j{i}"),
            System::Jobset => format!("{}=j{i}", crate::jobset::JOBSET_NAME_LABEL),
            System::Job => format!("batch.kubernetes.io/job-name=j{i}"),
        }
    }
}

pub fn scale(paths: &Paths, jobs: u32, systems: &[System]) -> Result<()> {
    let pods: u32 = (0..jobs).map(|i| SIZES[(i % 7) as usize]).sum();
    crate::cluster_up(paths, false)?;
    crate::node::fake_nodes(paths, pods.div_ceil(PODS_PER_FAKE_NODE) + 1)?;
    crate::test::install_crd(paths)?;
    let mut memory = Vec::new();
    for &system in systems {
        fresh_namespace(paths)?;
        if system == System::Trainingjob {
            start_operator(paths, NAMESPACE)?;
        }
        memory.push((format!("{system:?}"), measure(paths, system, jobs, pods)?));
        if system == System::Trainingjob {
            restart(paths, jobs)?;
        }
        cleanup(paths)?;
    }
    let png = paths.root.join(format!("target/bench/scale-{jobs}.png"));
    crate::plot::memory_over_time(&png, jobs, &memory)?;
    println!("scale: plot written to {}", png.display());
    crate::node::remove_fake_nodes(paths)
}

/// N jobs of one system: the time until every pod runs, its controller's
/// peak RSS and CPU, API requests per job, and one preemption at N jobs.
fn measure(paths: &Paths, system: System, jobs: u32, pods: u32) -> Result<Vec<Sample>> {
    let (process, client) = system.controller();
    let pid = daemon::pid(paths, process).with_context(|| format!("{process}'s pid"))?;
    let cpu0 = cpu_seconds(pid);
    let peak = Peaks::sample(paths, pid);
    let throttled0 = kcm_throttled(paths);
    let (t0, since) = (Instant::now(), unix_now());
    create_jobs(paths, system, jobs)?;
    step(format!(
        "{jobs} {system:?}s created in {:.1}s",
        t0.elapsed().as_secs_f64()
    ));
    wait_for(
        &format!("all {pods} pods of {jobs} {system:?}s Running"),
        Duration::from_secs(120 + u64::from(pods) / 2),
        || all_running(paths, pods),
    )?;
    let up = t0.elapsed();
    step(format!(
        "all Running; {process} RSS now {} MiB",
        rss_bytes(pid) >> 20
    ));
    let created = crate::audit::requests_by_client(paths, since, unix_now());
    let cpu = cpu_seconds(pid) - cpu0;
    let throttled = kcm_throttled(paths);
    let throttled = (throttled.0 - throttled0.0, throttled.1 - throttled0.1);
    let preemption = inject_preemption(paths, system, pods)?;
    let ((rss, api, etcd), series) = peak.finish();
    let per_job = |c: &std::collections::BTreeMap<String, u64>| {
        c.get(client).copied().unwrap_or(0) as f64 / f64::from(jobs)
    };
    println!(
        "scale {system:?} {jobs} jobs ({pods} pods): all Running in {:.1}s; {process} peak RSS {} MiB, {cpu:.1} CPU s; \
         {:.1} API requests per job ({client}); preemption at {jobs} jobs: pod deleted -> replacement created {:.0} ms \
         (pod gone after {:.0} ms; gone -> replacement {:.0} ms), {} requests by {client}; peak RSS API server {} MiB, etcd {} MiB",
        up.as_secs_f64(),
        rss >> 20,
        per_job(&created),
        preemption.replaced_ms,
        preemption.gone_ms,
        preemption.controller_ms(),
        preemption.requests.get(client).copied().unwrap_or(0),
        api >> 20,
        etcd >> 20
    );
    println!(
        "  requests while creating, per job: {}",
        by_client(&created, f64::from(jobs))
    );
    println!(
        "  requests during the preemption: {}",
        by_client(&preemption.requests, 1.0)
    );
    println!(
        "  kube-controller-manager's clients waited {:.0} s in their own rate limiter over {:.0} requests until all Running \
         (--kube-api-qps, 20 unless set)",
        throttled.0, throttled.1
    );
    if system == System::Trainingjob {
        let (p50, p99) = reconcile_quantiles();
        if p50.is_nan() || p99.is_nan() {
            bail!("the operator's /metrics has no reconcile histogram");
        }
        println!("scale Trainingjob {jobs} jobs: reconcile p50 {p50:.1} ms, p99 {p99:.1} ms (bucket bounds)");
        println!("scale Trainingjob {jobs} jobs: {}", heap()?);
    }
    Ok(series)
}

/// Every client's count over `per`, the largest first: for a JobSet the
/// pods come from kube-controller-manager's job controller, not JobSet's.
fn by_client(counts: &std::collections::BTreeMap<String, u64>, per: f64) -> String {
    let mut v: Vec<(&String, &u64)> = counts.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1));
    v.iter()
        .map(|(c, n)| format!("{c} {:.1}", **n as f64 / per))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `pods` pods exist in the namespace and none is other than
/// Running. Two one-item pages from the API server's cache: listing every
/// pod twice a second at tens of thousands of pods loaded the very API
/// server being measured.
fn all_running(paths: &Paths, pods: u32) -> bool {
    let page = |query: &str| -> Option<serde_json::Value> {
        let url = format!("/api/v1/namespaces/{NAMESPACE}/pods?limit=1{query}");
        let text = output(kubectl(paths).ok()?.args(["get", "--raw", &url])).ok()?;
        serde_json::from_str(&text).ok()
    };
    let count = |p: &serde_json::Value| {
        p["items"].as_array().map_or(0, Vec::len) as u64
            + p["metadata"]["remainingItemCount"].as_u64().unwrap_or(0)
    };
    let Some(all) = page("") else { return false };
    if count(&all) < u64::from(pods) {
        return false;
    }
    let Some(other) = page("&fieldSelector=status.phase%21%3DRunning") else {
        return false;
    };
    let empty = other["items"].as_array().is_some_and(Vec::is_empty);
    empty
        && other["metadata"]["continue"]
            .as_str()
            .unwrap_or("")
            .is_empty()
}

fn fresh_namespace(paths: &Paths) -> Result<()> {
    crate::bench::fresh_namespace(paths, NAMESPACE, "ReadWriteMany")?;
    crate::controlplane::kubectl_apply(
        paths,
        Some(NAMESPACE),
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: ckpt}\nspec: {accessModes: [ReadWriteMany], \
         storageClassName: \"\", resources: {requests: {storage: 1Gi}}}\n",
    )
}

/// The pod template every system gets: a trainer placed on kwok's nodes.
fn pod_spec() -> serde_json::Value {
    let (key, value) = crate::node::FAKE_NODE_MARK;
    serde_json::json!({
        "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": key, "value": value, "effect": "NoSchedule"}],
        "containers": [{"name": "trainer", "image": "localhost/tjo-trainer:dev",
            "command": ["python3", "/opt/trainer/train.py"],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]
    })
}

fn job(system: System, i: u32) -> serde_json::Value {
    let ranks = SIZES[(i % 7) as usize];
    let mut restart_never = pod_spec();
    restart_never["restartPolicy"] = "Never".into();
    // Inside a JobSet a failed pod fails its Job at once, for the set to
    // restart; a plain Job replaces the pod itself.
    let indexed = |backoff_limit: u32| {
        serde_json::json!({
            "completions": ranks, "parallelism": ranks, "completionMode": "Indexed",
            "backoffLimit": backoff_limit, "template": {"spec": restart_never},
        })
    };
    let (api, kind, spec) = match system {
        System::Trainingjob => (
            "trainingjob.dev/v1alpha1",
            "TrainingJob",
            serde_json::json!({
                "replicas": ranks, "checkpoint": {"claimName": "ckpt"}, "template": {"spec": pod_spec()},
            }),
        ),
        System::Jobset => (
            "jobset.x-k8s.io/v1alpha2",
            "JobSet",
            serde_json::json!({
                "failurePolicy": {"maxRestarts": 100},
                "replicatedJobs": [{"name": "w", "replicas": 1, "template": {"spec": indexed(0)}}],
            }),
        ),
        System::Job => ("batch/v1", "Job", indexed(6)),
    };
    serde_json::json!({
        "apiVersion": api, "kind": kind,
        "metadata": {"name": format!("j{i}"), "namespace": NAMESPACE},
        "spec": spec,
    })
}

/// `kubectl create` in lists of 250, four at a time: one POST an object.
/// A client-side apply also GETs each object first and stores the whole
/// object again in an annotation, which the API server, etcd and every
/// cache then carry; one list at a time left the API server idle between
/// round trips, and creation fell to 2 jobs a second at 3640 jobs.
fn create_jobs(paths: &Paths, system: System, jobs: u32) -> Result<()> {
    step(format!("creating {jobs} {system:?}s"));
    let kubectl = crate::controlplane::kubectl_maker(paths)?;
    let all: Vec<u32> = (0..jobs).collect();
    let lists: Vec<&[u32]> = all.chunks(250).collect();
    for wave in lists.chunks(4) {
        std::thread::scope(|s| {
            let workers: Vec<_> = wave
                .iter()
                .map(|chunk| s.spawn(|| create_list(&kubectl, system, chunk)))
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("kubectl create thread"))
        })?;
    }
    Ok(())
}

fn create_list(kubectl: &impl Fn() -> Command, system: System, chunk: &[u32]) -> Result<()> {
    let items: Vec<serde_json::Value> = chunk.iter().map(|i| job(system, *i)).collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let created = crate::util::run_with_input(
        kubectl()
            .args(["create", "-n", NAMESPACE, "-f", "-"])
            .stdout(Stdio::null()),
        list.to_string().as_bytes(),
    )?;
    anyhow::ensure!(
        created.success(),
        "kubectl create of {system:?}s j{}..j{} failed",
        chunk[0],
        chunk[chunk.len() - 1]
    );
    Ok(())
}

fn pod_names(paths: &Paths, selector: &str) -> Vec<String> {
    output(
        kubectl(paths)
            .unwrap()
            .args(["get", "pods", "-n", NAMESPACE, "-l", selector, "-o", "name"]),
    )
    .map(|s| s.lines().map(str::to_string).collect())
    .unwrap_or_default()
}

/// Job 0's first pod deleted: when it was gone (the kubelet's share, here
/// kwok's, which lags by minutes at 10000 jobs) and when a replacement
/// appeared, in ms after the delete, and the API requests meanwhile.
struct Preemption {
    gone_ms: f64,
    replaced_ms: f64,
    requests: std::collections::BTreeMap<String, u64>,
}

impl Preemption {
    /// The controller's share: from the old pod gone to its replacement,
    /// or 0 where a peer replaces a pod that is still terminating.
    fn controller_ms(&self) -> f64 {
        (self.replaced_ms - self.gone_ms).max(0.0)
    }
}

/// One list a poll tells both moments apart; the wait scales with the
/// pods because the fake kubelet confirms a deletion only in its turn.
fn inject_preemption(paths: &Paths, system: System, pods: u32) -> Result<Preemption> {
    let selector = system.selector(0);
    let before = pod_names(paths, &selector);
    let victim = before.first().context("job 0 has no pod")?.clone();
    let (t, since) = (Instant::now(), unix_now());
    run(kubectl(paths)?
        .args(["delete", "-n", NAMESPACE, &victim, "--wait=false"])
        .stdout(Stdio::null()))?;
    let (mut gone, mut replaced) = (None, None);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    wait_for(
        &format!("{victim} gone and j0's replacement pod"),
        Duration::from_secs(120 + u64::from(pods) / 10),
        || {
            let now = pod_names(paths, &selector);
            if gone.is_none() && !now.contains(&victim) {
                gone = Some(ms(t));
            }
            if replaced.is_none() && now.iter().any(|p| !before.contains(p)) {
                replaced = Some(ms(t));
            }
            gone.is_some() && replaced.is_some()
        },
    )?;
    Ok(Preemption {
        gone_ms: gone.unwrap_or_default(),
        replaced_ms: replaced.unwrap_or_default(),
        requests: crate::audit::requests_by_client(paths, since, unix_now()),
    })
}

/// Kills the operator at N jobs and starts it again: how long until it has
/// reconciled every job, and what that costs it and the API server.
fn restart(paths: &Paths, jobs: u32) -> Result<()> {
    daemon::stop(paths, OPERATOR, Duration::from_secs(10))?;
    let t0 = Instant::now();
    start_operator(paths, NAMESPACE)?;
    let pid = daemon::pid(paths, OPERATOR).context("the operator's pid")?;
    let peak = Peaks::sample(paths, pid);
    wait_for(
        &format!("the restarted operator to reconcile all {jobs} jobs"),
        Duration::from_secs(60 + u64::from(jobs) / 2),
        || metric_sum("trainingjob_reconciles_total") >= f64::from(jobs),
    )?;
    let converged = t0.elapsed();
    let ((rss, api, etcd), _) = peak.finish();
    println!(
        "restart at {jobs} jobs: every job reconciled {:.1}s after the start; operator peak RSS {} MiB, {:.1} CPU s; \
         peak RSS API server {} MiB, etcd {} MiB",
        converged.as_secs_f64(),
        rss >> 20,
        cpu_seconds(pid),
        api >> 20,
        etcd >> 20
    );
    println!("restart at {jobs} jobs: {}", heap()?);
    // What the re-list left behind is freed by then; the trim after it
    // says how much of the peak was the allocator's to give back.
    let trims = metric_sum("trainingjob_heap_trims_total");
    wait_for(
        "the restarted operator's next heap trim",
        Duration::from_secs(90),
        || metric_sum("trainingjob_heap_trims_total") > trims,
    )?;
    println!(
        "restart at {jobs} jobs, after the next trim: operator RSS {} MiB; {}",
        rss_bytes(pid) >> 20,
        heap()?
    );
    Ok(())
}

/// The operator's heap as its allocator sees it (see src/heap.rs): what
/// separates the RSS from what its caches hold.
fn heap() -> Result<String> {
    let text = scrape();
    let bytes = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .with_context(|| format!("the operator's /metrics has no {name}"))
    };
    Ok(format!(
        "heap in use {:.0} MiB, held free {:.0} MiB, handed back by trims so far {:.0} MiB",
        bytes("trainingjob_heap_in_use_bytes")? / 1048576.0,
        bytes("trainingjob_heap_free_bytes")? / 1048576.0,
        bytes("trainingjob_heap_trimmed_bytes_total")? / 1048576.0
    ))
}

fn cleanup(paths: &Paths) -> Result<()> {
    daemon::stop(paths, OPERATOR, Duration::from_secs(10))?;
    let _ = output(kubectl(paths)?.args(["delete", "namespace", NAMESPACE, "--wait=false"]));
    Ok(())
}

/// Resident memory of the controller, the API server and etcd, sampled
/// every 200 ms until `finish`: the peaks for the tables, the series for
/// the plot.
struct Peaks {
    stop: Arc<AtomicBool>,
    series: Arc<Mutex<Vec<Sample>>>,
}

/// Seconds since sampling began, and the three processes' RSS in bytes.
pub type Sample = (f64, [u64; 3]);

impl Peaks {
    fn sample(paths: &Paths, operator: i32) -> Self {
        let pids = [
            Some(operator),
            daemon::pid(paths, "kube-apiserver"),
            daemon::pid(paths, "etcd"),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let series = Arc::new(Mutex::new(Vec::new()));
        let (halt, into, t0) = (stop.clone(), series.clone(), Instant::now());
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let rss = pids.map(|p| p.map_or(0, rss_bytes));
                into.lock().unwrap().push((t0.elapsed().as_secs_f64(), rss));
                // The sampling period, not a synchronisation.
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self { stop, series }
    }

    /// The peaks (controller, API server, etcd) and the whole series.
    fn finish(self) -> ((u64, u64, u64), Vec<Sample>) {
        self.stop.store(true, Ordering::Relaxed);
        let series = std::mem::take(&mut *self.series.lock().unwrap());
        let peak = |i: usize| series.iter().map(|s| s.1[i]).max().unwrap_or(0);
        ((peak(0), peak(1), peak(2)), series)
    }
}

fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// User and system CPU seconds of a process so far.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised name; utime and stime are 14 and 15.
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let field = |i: usize| -> f64 {
        after
            .split_whitespace()
            .nth(i)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0.0)
    };
    // Counted from the state, field 3.
    let ticks = field(14 - 3) + field(15 - 3);
    ticks / 100.0
}

/// Seconds kube-controller-manager's clients have waited on their own
/// client-side rate limiter, and the requests that went through it: the
/// job controller, which runs every Job's and JobSet's pods, shares it.
fn kcm_throttled(paths: &Paths) -> (f64, f64) {
    let pki = paths.state.join("pki");
    let text = output(
        Command::new("curl")
            .args(["-sk", "--cert"])
            .arg(pki.join("admin.crt"))
            .arg("--key")
            .arg(pki.join("admin.key"))
            .arg("https://127.0.0.1:10257/metrics"),
    )
    .unwrap_or_default();
    let total = |series: &str| {
        let prefix = format!("rest_client_rate_limiter_duration_seconds_{series}{{");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>()
    };
    (total("sum"), total("count"))
}

fn scrape() -> String {
    output(std::process::Command::new("curl").args(["-sf", METRICS])).unwrap_or_default()
}

/// The sum of every sample whose name and labels start with `prefix`.
fn metric_sum(prefix: &str) -> f64 {
    let prefix = prefix.trim_end_matches('}');
    scrape()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// p50 and p99 in milliseconds, from the reconcile histogram's buckets (the
/// upper bound of the bucket the quantile falls in).
fn reconcile_quantiles() -> (f64, f64) {
    let text = scrape();
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("trainingjob_reconcile_duration_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let q = |p: f64| {
        buckets
            .iter()
            .find(|(_, c)| *c >= p * total)
            .map_or(f64::NAN, |(le, _)| le * 1000.0)
    };
    (q(0.5), q(0.99))
}
