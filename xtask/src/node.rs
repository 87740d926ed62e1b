//! The local node: Debian's containerd, runc and CNI plugins, and the kubelet
//! of the pinned release, registered with the local control plane as
//! `tjo-node`, advertising `nvidia.com/gpu: 8` and `amd.com/gpu: 8`.
//!
//! Everything the node writes lives in folders of its own (`/var/lib/tjo-*`,
//! `/run/tjo-*`, its own containerd socket, bridge and CNI config), so it
//! neither needs nor disturbs a containerd or kubelet the machine may have.
//! Config files are generated into `.cluster/node/` for inspection.

use crate::containerd::{containerd_ready, ctr, CONTAINERD_SOCKET};
use crate::controlplane::{self, NODE_IP, NODE_NAME, POD_SUBNET};
use crate::daemon;
use crate::images;
use crate::util::{apt_install, output, run, step, succeeds, wait_for, write, Paths};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Advertised as extended resources, so GPU pods schedule. Two vendors, so
/// that a job asking for a non-NVIDIA accelerator is proven to run too.
pub const GPUS: u32 = 8;
pub const GPU_RESOURCES: &[&str] = &["nvidia.com/gpu", "amd.com/gpu"];

const KUBELET_ROOT: &str = "/var/lib/tjo-kubelet";
const POD_LOGS: &str = "/var/log/tjo-pods";
const CONTAINERD_ROOT: &str = "/var/lib/tjo-containerd";
const CONTAINERD_STATE: &str = "/run/tjo-containerd";
/// Debian's containernetworking-plugins install here, not in /opt/cni/bin.
const CNI_BIN: &str = "/usr/lib/cni";
const CNI_IPAM: &str = "/run/tjo-cni/ipam";
const BRIDGE: &str = "tjo0";
const NODE_IP_PREFIX: u8 = 16;

/// What the node needs from Debian. iptables: the bridge and portmap
/// plugins program it. buildah: the sandbox image is built locally.
const PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "buildah",
    "iptables",
];

fn node_dir(paths: &Paths) -> PathBuf {
    paths.state.join("node")
}

pub fn up(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    if daemon::alive(paths, "containerd")
        && daemon::alive(paths, "kubelet")
        && node_ready(paths)
        && gpus_advertised(paths)
    {
        step(format!("node {NODE_NAME} already up"));
        return Ok(());
    }
    apt_install(PACKAGES)?;
    ensure_bridge()?;
    start_containerd(paths)?;
    images::ensure_pause(paths)?;
    // A node object left from an earlier kubelet can still read Ready: once
    // we start a kubelet, only a heartbeat from after its start counts. (A
    // kubelet already running may not post one for minutes.)
    let since = utc_now()?;
    let fresh = start_kubelet(paths)?;
    wait_for(
        &format!("node {NODE_NAME} to be Ready"),
        Duration::from_secs(180),
        || node_ready(paths) && (!fresh || node_heartbeat(paths).is_some_and(|t| t >= since)),
    )
    .map_err(|e| e.context(daemon::log_tail(paths, "kubelet", 30)))?;
    advertise_gpus(paths)?;
    step(format!(
        "node {NODE_NAME} up in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The pods' bridge with the node IP on it. The CNI bridge plugin finds it
/// and keeps the same gateway address, so pods reach the node at NODE_IP.
fn ensure_bridge() -> Result<()> {
    if !Path::new("/sys/class/net").join(BRIDGE).exists() {
        run(Command::new("ip").args(["link", "add", BRIDGE, "type", "bridge"]))?;
    }
    let addrs = output(Command::new("ip").args(["-4", "-o", "addr", "show", "dev", BRIDGE]))?;
    let cidr = format!("{NODE_IP}/{NODE_IP_PREFIX}");
    if !addrs.contains(&format!(" {cidr} ")) {
        run(Command::new("ip").args(["addr", "add", &cidr, "dev", BRIDGE]))?;
    }
    run(Command::new("ip").args(["link", "set", BRIDGE, "up"]))
}

fn start_containerd(paths: &Paths) -> Result<()> {
    let dir = node_dir(paths);
    let cni_conf = dir.join("cni");
    write(&cni_conf.join("10-tjo.conflist"), cni_config())?;
    let config = dir.join("containerd.toml");
    write(&config, containerd_config(&cni_conf))?;
    if daemon::alive(paths, "containerd") && containerd_ready() {
        return Ok(());
    }
    std::fs::create_dir_all(CONTAINERD_STATE)?;
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(&config);
    daemon::spawn(paths, "containerd", cmd)?;
    wait_for(
        "containerd to answer",
        Duration::from_secs(60),
        containerd_ready,
    )
    .map_err(|e| e.context(daemon::log_tail(paths, "containerd", 20)))
}

/// containerd 1.6's config (version 2). cgroupfs because the kubelet runs
/// with the cgroupfs driver on this cgroup v1 host with no systemd; the
/// sandbox image is our own, so the CRI plugin never pulls one. Sandboxed
/// CI machines may forbid lowering oom_score_adj (runc then fails every
/// sandbox with "can't get final child's PID from pipe"), so scores below
/// containerd's own are clamped instead of applied.
fn containerd_config(cni_conf: &Path) -> String {
    format!(
        r#"version = 2
root = "{CONTAINERD_ROOT}"
state = "{CONTAINERD_STATE}"

[grpc]
  address = "{CONTAINERD_SOCKET}"

[ttrpc]
  address = "{CONTAINERD_STATE}/containerd.sock.ttrpc"

[debug]
  address = "{CONTAINERD_STATE}/debug.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
        pause = images::PAUSE_IMAGE,
        conf = cni_conf.display(),
    )
}

/// One bridge for all pods, host-local addresses. containerd's CRI plugin
/// adds the `loopback` plugin to every sandbox itself. No masquerading:
/// pods need no route off this machine, and per-pod NAT rules would be one
/// more thing a crashed node leaves behind.
fn cni_config() -> String {
    format!(
        r#"{{
  "cniVersion": "1.0.0",
  "name": "tjo",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{BRIDGE}",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{CNI_IPAM}",
        "ranges": [[{{"subnet": "{POD_SUBNET}"}}]],
        "routes": [{{"dst": "0.0.0.0/0"}}]
      }}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#
    )
}

/// Starts the kubelet unless it runs; says whether it started it.
fn start_kubelet(paths: &Paths) -> Result<bool> {
    if daemon::alive(paths, "kubelet") {
        return Ok(false);
    }
    let k8s = controlplane::k8s_bin(paths)?;
    let dir = node_dir(paths);
    let pki = controlplane::pki(paths);
    if !pki.join("kubelet.crt").is_file() {
        controlplane::issue_cert(
            paths,
            "kubelet",
            &format!("system:node:{NODE_NAME}"),
            Some("system:nodes"),
            &[],
            false,
        )?;
    }
    if !pki.join("kubelet-serving.crt").is_file() {
        controlplane::issue_cert(
            paths,
            "kubelet-serving",
            NODE_NAME,
            None,
            &[
                &format!("DNS:{NODE_NAME}"),
                &format!("IP:{NODE_IP}"),
                "DNS:localhost",
                "IP:127.0.0.1",
            ],
            true,
        )?;
    }
    let kubeconfig = dir.join("kubelet.kubeconfig");
    controlplane::write_kubeconfig(paths, &kubeconfig, "kubelet")?;
    let config = dir.join("kubelet.yaml");
    write(&config, kubelet_config(&pki))?;
    for d in [KUBELET_ROOT, POD_LOGS] {
        std::fs::create_dir_all(d)?;
    }
    let mut cmd = Command::new(k8s.join("kubelet"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            &format!("--hostname-override={NODE_NAME}"),
            &format!("--node-ip={NODE_IP}"),
            &format!("--root-dir={KUBELET_ROOT}"),
            "--node-labels=trainingjob.dev/local-node=true",
            "--v=1",
        ]);
    daemon::spawn(paths, "kubelet", cmd)?;
    Ok(true)
}

/// The kubelet's configuration for a single test machine: it must run on
/// cgroup v1 with cgroupfs, never evict or garbage-collect images because the
/// disk or memory of a shared CI machine looks full, and trust only our CA.
fn kubelet_config(pki: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://{CONTAINERD_SOCKET}
imageServiceEndpoint: unix://{CONTAINERD_SOCKET}
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: {pki}/kubelet-serving.crt
tlsPrivateKeyFile: {pki}/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {pki}/ca.crt
authorization:
  mode: AlwaysAllow
podLogsDir: {POD_LOGS}
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
  imagefs.inodesFree: "1%"
evictionPressureTransitionPeriod: 30s
maxPods: 110
resolvConf: /etc/resolv.conf
containerLogMaxSize: 10Mi
"#,
        pki = pki.display()
    )
}

fn kubectl(paths: &Paths) -> Result<Command> {
    let mut cmd = controlplane::kubectl(paths)?;
    cmd.stdin(Stdio::null());
    Ok(cmd)
}

fn node_jsonpath(paths: &Paths, path: &str) -> Option<String> {
    let mut k = kubectl(paths).ok()?;
    output(k.args([
        "get",
        "node",
        NODE_NAME,
        "--request-timeout=5s",
        "-o",
        &format!("jsonpath={path}"),
    ]))
    .ok()
    .map(|s| s.trim().to_string())
}

fn node_ready(paths: &Paths) -> bool {
    node_jsonpath(paths, r#"{.status.conditions[?(@.type=="Ready")].status}"#).as_deref()
        == Some("True")
}

/// The Ready condition's last heartbeat, RFC 3339 in UTC.
fn node_heartbeat(paths: &Paths) -> Option<String> {
    node_jsonpath(
        paths,
        r#"{.status.conditions[?(@.type=="Ready")].lastHeartbeatTime}"#,
    )
    .filter(|t| !t.is_empty())
}

/// Now, formatted as the API server formats times, so the two compare as
/// strings.
fn utc_now() -> Result<String> {
    Ok(
        output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?
            .trim()
            .to_string(),
    )
}

fn gpus_advertised(paths: &Paths) -> bool {
    let want = GPUS.to_string();
    GPU_RESOURCES.iter().all(|r| {
        let path = |field: &str| format!("{{.status.{field}.{}}}", r.replace('.', "\\."));
        node_jsonpath(paths, &path("capacity")).as_deref() == Some(want.as_str())
            && node_jsonpath(paths, &path("allocatable")).as_deref() == Some(want.as_str())
    })
}

/// Advertises the GPUs as Kubernetes documents for extended resources: a
/// JSON patch of the node's capacity through the status subresource. The
/// kubelet keeps capacity entries it does not manage and derives
/// allocatable from them on its next status sync; waiting for allocatable
/// proves both that the kubelet has synced since the patch and that the
/// patch survived it. A re-registered node loses the entry, so `up` checks
/// and re-patches every time.
fn advertise_gpus(paths: &Paths) -> Result<()> {
    if gpus_advertised(paths) {
        return Ok(());
    }
    step(format!(
        "advertising {GPUS} each of {} on {NODE_NAME}",
        GPU_RESOURCES.join(", ")
    ));
    let ops: Vec<serde_json::Value> = GPU_RESOURCES
        .iter()
        .map(|r| {
            let path = format!("/status/capacity/{}", r.replace('/', "~1"));
            serde_json::json!({"op": "add", "path": path, "value": GPUS.to_string()})
        })
        .collect();
    let patch = serde_json::Value::Array(ops).to_string();
    run(kubectl(paths)?
        .args([
            "patch",
            "node",
            NODE_NAME,
            "--subresource=status",
            "--type=json",
            "-p",
            &patch,
        ])
        .stdout(Stdio::null()))?;
    wait_for(
        "the kubelet to report the GPUs as allocatable",
        Duration::from_secs(60),
        || gpus_advertised(paths),
    )
}

/// Emulates losing the node's VM for the node-loss tests: the kubelet stops
/// answering, and with `kill` every container dies too, as with the machine.
/// Without `kill` the containers run on: a node that is unreachable but
/// maybe alive. `cargo xtask cluster up` brings the node back.
pub fn stop(paths: &Paths, kill: bool) -> Result<()> {
    daemon::stop(paths, "kubelet", Duration::from_secs(20))?;
    if kill && containerd_ready() {
        let ids: Vec<String> = output(ctr().args(["tasks", "ls", "-q"]))?
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        for id in &ids {
            let _ = output(ctr().args(["tasks", "kill", "--all", "--signal", "SIGKILL", id]));
        }
        step(format!("killed {} containers on {NODE_NAME}", ids.len()));
    }
    step(format!("kubelet of {NODE_NAME} stopped"));
    Ok(())
}

pub fn down(paths: &Paths) -> Result<()> {
    daemon::stop(paths, "kwok", Duration::from_secs(10))?;
    daemon::stop(paths, "kubelet", Duration::from_secs(20))?;
    let mut netns = Vec::new();
    if containerd_ready() {
        netns = remove_all_containers()?;
    }
    daemon::stop(paths, "containerd", Duration::from_secs(20))?;
    kill_leftovers();
    // The specs say /var/run/netns/..., mountinfo says where that resolves.
    let netns: Vec<PathBuf> = netns
        .iter()
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .collect();
    unmount_all(&netns)?;
    for ns in &netns {
        let _ = std::fs::remove_file(ns);
    }
    // Nothing is mounted below these any more (unmount_all checked), so
    // removing them cannot reach into anything else. The cluster they
    // served is gone with etcd's data; containerd's root, with the images,
    // stays so the next `up` is warm.
    for dir in [KUBELET_ROOT, POD_LOGS, CONTAINERD_STATE] {
        let _ = std::fs::remove_dir_all(dir);
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        let _ = run(Command::new("ip").args(["link", "delete", BRIDGE]));
    }
    // Address leases of pods that no longer exist; the next `up` starts from
    // an empty cluster anyway.
    let _ = std::fs::remove_dir_all(CNI_IPAM);
    remove_pod_cgroups();
    step(format!("node {NODE_NAME} down"));
    Ok(())
}

/// Kills every task containerd runs for the kubelet and deletes its
/// containers, so the next start begins with none. Returns the network
/// namespaces of the pod sandboxes, which containerd made and the CNI
/// teardown the kubelet would have run will not run now.
fn remove_all_containers() -> Result<Vec<PathBuf>> {
    let ids: Vec<String> = output(ctr().args(["containers", "ls", "-q"]))?
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    if ids.is_empty() {
        return Ok(vec![]);
    }
    step(format!("removing {} containers", ids.len()));
    let mut netns = Vec::new();
    for id in &ids {
        if let Ok(info) = output(ctr().args(["containers", "info", id])) {
            netns.extend(network_namespace(&info));
        }
        let _ = output(ctr().args(["tasks", "kill", "--all", "--signal", "SIGKILL", id]));
    }
    for id in &ids {
        let _ = wait_for(
            &format!("task {id} to stop"),
            Duration::from_secs(10),
            || {
                output(ctr().args(["tasks", "ls"]))
                    .map(|l| {
                        !l.lines()
                            .any(|l| l.starts_with(id.as_str()) && l.contains("RUNNING"))
                    })
                    .unwrap_or(true)
            },
        );
        let _ = output(ctr().args(["tasks", "delete", "--force", id]));
        let _ = output(ctr().args(["containers", "delete", id]));
    }
    netns.sort();
    netns.dedup();
    Ok(netns)
}

/// The network namespace path in a container's OCI spec (`ctr c info`).
fn network_namespace(info: &str) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    v["Spec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// Shims of our containerd (found by its socket in their command line) and
/// processes still in the kubelet's pod cgroups: what a crashed kubelet or
/// containerd can leave running. Each is killed by pid.
fn kill_leftovers() {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    let me = std::process::id().to_string();
    for entry in procs.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        let ours = (cmdline.contains("containerd-shim") && cmdline.contains(CONTAINERD_SOCKET))
            || cgroup.lines().any(|l| l.contains(":/kubepods"));
        if ours {
            step(format!(
                "killing leftover process {pid}: {}",
                cmdline.trim()
            ));
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// Mount points under the node's folders, deepest first, so each unmount
/// finds nothing mounted below it.
fn node_mounts(extra: &[PathBuf]) -> Vec<String> {
    let roots = [KUBELET_ROOT, CONTAINERD_ROOT, CONTAINERD_STATE];
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|m| {
            roots
                .iter()
                .any(|r| m == r || m.starts_with(&format!("{r}/")))
                || extra.iter().any(|e| Path::new(m) == e)
        })
        .collect();
    // Later mounts can stack on earlier ones at the same point: unmount in
    // reverse order of mounting, deeper paths before their parents.
    mounts.reverse();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.matches('/').count()));
    mounts.dedup();
    mounts
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            if let Ok(n) = u8::from_str_radix(&code, 8) {
                out.push(n as char);
                continue;
            }
            out.push(c);
            out.push_str(&code);
        } else {
            out.push(c);
        }
    }
    out
}

fn unmount_all(netns: &[PathBuf]) -> Result<()> {
    // A mount can be listed more than once (stacked); repeat until none is left.
    for _ in 0..5 {
        let mounts = node_mounts(netns);
        if mounts.is_empty() {
            return Ok(());
        }
        for m in &mounts {
            if !succeeds(Command::new("umount").arg(m)) {
                // Busy (a process we could not see still has it open):
                // detach it so nothing under our folders stays mounted.
                let _ = output(Command::new("umount").args(["-l", m]));
            }
        }
    }
    let left = node_mounts(netns);
    if !left.is_empty() {
        bail!("could not unmount: {}", left.join(", "));
    }
    Ok(())
}

/// The kubelet's cgroups (`kubepods` under each v1 controller), removed
/// leaf first; they are empty once every container is gone.
fn remove_pod_cgroups() {
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in controllers.flatten() {
        let top = c.path().join("kubepods");
        if top.is_dir() {
            remove_cgroup_tree(&top);
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten() {
            if child.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&child.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

pub fn status(paths: &Paths) -> Result<bool> {
    let mut all = true;
    for name in ["containerd", "kubelet"] {
        match daemon::pid(paths, name) {
            Some(pid) => println!("{name:<24} running (pid {pid})"),
            None => {
                all = false;
                println!("{name:<24} stopped")
            }
        }
    }
    let api = controlplane::api_ready(paths);
    let ready = api && node_ready(paths);
    println!(
        "{:<24} {}",
        format!("node {NODE_NAME}"),
        if ready { "Ready" } else { "not ready" }
    );
    let gpus = ready && gpus_advertised(paths);
    println!(
        "{:<24} {}",
        GPU_RESOURCES.join(", "),
        if gpus {
            format!("{GPUS} advertised")
        } else {
            "not advertised".into()
        }
    );
    if let Some(pid) = daemon::pid(paths, "kwok") {
        println!("{:<24} running (pid {pid})", "kwok (fake nodes)");
    }
    let mounts = node_mounts(&[]).len();
    println!("{:<24} {mounts}", "mounts under node dirs");
    Ok(all && ready && gpus)
}

/// kwok, which plays the kubelet for fake nodes (sigs.k8s.io/kwok).
pub const KWOK: &str = "v0.7.0";
/// Marks a node as kwok's: the annotation kwok selects by, and the taint
/// that keeps pods off fake nodes unless they tolerate it.
pub const FAKE_NODE_MARK: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
const FAKE_NODE_PREFIX: &str = "tjo-fake-";

/// kwok built from the Go module proxy (its go.mod has no replace
/// directives, so `go install` works), cached by version.
fn kwok_binary(paths: &Paths) -> Result<PathBuf> {
    let dir = paths.cache.join(format!("kwok-{KWOK}"));
    let bin = dir.join("bin");
    if bin.join("kwok").is_file() {
        return Ok(bin);
    }
    if !succeeds(Command::new("go").arg("version")) {
        bail!("the Go toolchain is needed to build kwok, and `go version` failed");
    }
    step(format!(
        "building kwok {KWOK} from the Go module proxy (first time only; a few minutes)"
    ));
    let partial = dir.join("bin.partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    run(Command::new("go")
        .args(["install", "-ldflags=-s -w"])
        .arg(format!("sigs.k8s.io/kwok/cmd/kwok@{KWOK}"))
        .env("GOBIN", &partial)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .stdin(Stdio::null()))
    .context("building kwok")?;
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::rename(&partial, &bin)?;
    Ok(bin)
}

/// kwok's own pod stages but the one that completes pods owned by a Job:
/// a training job's pods run until they are taken away, and a bench that
/// loads JobSets and Jobs on kwok needs them Running like the operator's.
/// Read from kwok's module source at run time. A kwok started with other
/// stages is restarted.
fn kwok_config(paths: &Paths) -> Result<PathBuf> {
    let stages =
        crate::webhooks::module_source("sigs.k8s.io/kwok", KWOK)?.join("kustomize/stage/pod/fast");
    let mut config = String::from(KWOK_OPTIONS);
    for name in ["pod-ready.yaml", "pod-delete.yaml"] {
        let path = stages.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        config.push_str("---\n");
        config.push_str(&text);
    }
    let file = paths.state.join("kwok-config.yaml");
    if std::fs::read_to_string(&file).ok().as_deref() != Some(config.as_str()) {
        daemon::stop(paths, "kwok", Duration::from_secs(10))?;
        crate::util::write(&file, &config)?;
    }
    Ok(file)
}

/// kwok plays at most 4 pod stages at once by default, each a status patch.
/// At 10000 jobs the API server answered those in about a second, so kwok
/// fell thousands of pods behind and a bench measured kwok, not the
/// controller under test. Node leases are renewed 4 at a time too: in the
/// third 10000-TrainingJob run the API server was slow enough that leases
/// lapsed, the node lifecycle controller took fake nodes for unreachable
/// and evicted 2019 ranks. Every system gets the same kwok.
const KWOK_OPTIONS: &str = "apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  podPlayStageParallelism: 32
  nodePlayStageParallelism: 16
  nodeLeaseParallelism: 32
";

/// `--fake-nodes N`: N nodes named `tjo-fake-<i>` that kwok keeps Ready,
/// each with 32 CPUs, 256Gi and 8 GPUs, tainted and labelled `type=kwok`
/// so only pods that ask for them land there (kwok marks those Running
/// without running anything). Fake nodes beyond N from an earlier call are
/// deleted.
pub fn fake_nodes(paths: &Paths, count: u32) -> Result<()> {
    let started = Instant::now();
    let bin = kwok_binary(paths)?;
    let (key, value) = FAKE_NODE_MARK;
    let mut cmd = Command::new(bin.join("kwok"));
    cmd.arg(format!("--kubeconfig={}", paths.kubeconfig().display()))
        .args([
            "--manage-all-nodes=false",
            &format!("--manage-nodes-with-annotation-selector={key}={value}"),
            "--manage-nodes-with-label-selector=",
            // Pod IPs kwok hands out; apart from the real node's POD_SUBNET.
            "--cidr=10.86.0.0/16",
            "--node-ip=10.86.0.1",
            "--node-lease-duration-seconds=40",
        ])
        .arg(format!("--config={}", kwok_config(paths)?.display()));
    daemon::spawn(paths, "kwok", cmd)?;

    let nodes: Vec<serde_json::Value> = (0..count)
        .map(|i| fake_node(&format!("{FAKE_NODE_PREFIX}{i}")))
        .collect();
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": nodes});
    let status = crate::util::run_with_input(
        kubectl(paths)?
            .args([
                "apply",
                "--server-side",
                "--field-manager=tjo-xtask",
                "-f",
                "-",
            ])
            .stdout(Stdio::null()),
        list.to_string().as_bytes(),
    )?;
    if !status.success() {
        bail!("could not create the fake nodes");
    }
    let existing = output(kubectl(paths)?.args([
        "get",
        "nodes",
        "-l",
        "type=kwok",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]))?;
    for name in existing.split_whitespace() {
        let index = name
            .strip_prefix(FAKE_NODE_PREFIX)
            .and_then(|i| i.parse::<u32>().ok());
        if index.is_some_and(|i| i >= count) {
            run(kubectl(paths)?
                .args(["delete", "node", name])
                .stdout(Stdio::null()))?;
        }
    }
    wait_for(
        &format!("{count} fake nodes to be Ready"),
        Duration::from_secs(120),
        || {
            let Ok(mut k) = kubectl(paths) else {
                return false;
            };
            output(k.args([
                "get",
                "nodes",
                "-l",
                "type=kwok",
                "-o",
                r#"jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
            ]))
            .map(|s| s.lines().filter(|l| *l == "True").count() == count as usize)
            .unwrap_or(false)
        },
    )
    .map_err(|e| e.context(daemon::log_tail(paths, "kwok", 20)))?;
    step(format!(
        "{count} fake nodes Ready in {:.1}s (tolerate {key}={value}:NoSchedule and select type=kwok)",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Deletes the fake nodes and stops kwok: a fake node left Ready beside
/// the real one changes how its zone is judged when the real one stops
/// answering (the operator holds only while the whole zone is dark).
pub fn remove_fake_nodes(paths: &Paths) -> Result<()> {
    run(kubectl(paths)?
        .args(["delete", "nodes", "-l", "type=kwok", "--ignore-not-found"])
        .stdout(Stdio::null()))
    .context("deleting the fake nodes")?;
    daemon::stop(paths, "kwok", Duration::from_secs(10))
}

fn fake_node(name: &str) -> serde_json::Value {
    let (key, value) = FAKE_NODE_MARK;
    let resources = serde_json::json!({
        "cpu": "32", "memory": "256Gi", "pods": "110", GPU_RESOURCES[0]: GPUS.to_string(),
    });
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {key: value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"taints": [{"key": key, "value": value, "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount_path("/plain"), "/plain");
    }

    #[test]
    fn the_sandbox_network_namespace_is_read_from_the_spec() {
        let info = r#"{"Spec": {"linux": {"namespaces": [{"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"}]}}}"#;
        assert_eq!(
            network_namespace(info),
            Some(PathBuf::from("/var/run/netns/cni-1"))
        );
        assert_eq!(network_namespace(r#"{"Spec": {}}"#), None);
    }

    #[test]
    fn generated_configs_name_our_own_paths() {
        let c = containerd_config(Path::new("/x/cni"));
        assert!(c.contains(images::PAUSE_IMAGE));
        assert!(c.contains("SystemdCgroup = false"));
        let cni: serde_json::Value = serde_json::from_str(&cni_config()).unwrap();
        assert_eq!(cni["plugins"][0]["bridge"], BRIDGE);
    }
}
