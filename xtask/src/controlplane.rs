//! The local control plane: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, with their own certificates and an admin kubeconfig at
//! `.cluster/kubeconfig` (on loopback), and kube-proxy, so that pods reach
//! the API server through the `kubernetes` Service as in any cluster.

use crate::binaries;
use crate::daemon;
use crate::util::{output, run, step, succeeds, wait_for, write, Paths};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const API_SERVER: &str = "https://127.0.0.1:6443";
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";
const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The one real node's name; tests select it by this name.
pub const NODE_NAME: &str = "tjo-node";
/// The pods' addresses: the node's CNI hands them out, and kube-proxy tells
/// pod traffic from outside traffic by them.
pub const POD_SUBNET: &str = "10.85.0.0/16";
/// The node's InternalIP: the pod bridge's gateway address, which the node
/// puts on the bridge before the kubelet starts. The kubelet refuses a
/// loopback node IP, and an address on a bridge of our own is there on any
/// machine, online or not, whatever its network looks like.
pub const NODE_IP: &str = "10.85.0.1";
/// What pods are told the API server is (the `kubernetes` Service's
/// endpoint): the node's address on the pod bridge. The bridge comes up
/// with the node, after the API server, so the server binds every address
/// rather than this one, and loopback keeps working for the kubeconfig.
const ADVERTISE_ADDRESS: &str = NODE_IP;

/// The control plane's daemons, in start order.
const DAEMONS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
];

pub fn pki(paths: &Paths) -> PathBuf {
    paths.state.join("pki")
}

/// The Kubernetes binaries (building them when missing).
pub fn k8s_bin(paths: &Paths) -> Result<PathBuf> {
    binaries::kubernetes(&paths.cache)
}

/// `kubectl` of the pinned release against the local cluster.
pub fn kubectl(paths: &Paths) -> Result<Command> {
    Ok(kubectl_maker(paths)?())
}

/// Where the API server writes its audit log: who made each request, by
/// user agent and user, for `bench scale`'s requests per job.
pub fn audit_log(paths: &Paths) -> PathBuf {
    paths.logs().join("audit.log")
}

/// One line per request at Metadata level, health checks and leases left
/// out; rotated at 1 GiB with one backup, so that a long soak cannot fill
/// the disk while a bench's window at 10000 jobs (about 250k requests)
/// still fits.
fn audit_args(paths: &Paths) -> Result<Vec<String>> {
    let policy = paths.state.join("audit-policy.yaml");
    write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
         - level: None\n  nonResourceURLs: [\"/healthz*\", \"/readyz*\", \"/livez*\", \"/metrics\"]\n\
         - level: None\n  resources: [{group: coordination.k8s.io, resources: [leases]}]\n\
         - level: Metadata\n",
    )?;
    Ok(vec![
        format!("--audit-policy-file={}", policy.display()),
        format!("--audit-log-path={}", audit_log(paths).display()),
        "--audit-log-maxsize=1024".into(),
        "--audit-log-maxbackup=1".into(),
        "--audit-log-format=json".into(),
    ])
}

/// A `kubectl` maker that threads can own: `Paths` stays with the caller.
pub fn kubectl_maker(paths: &Paths) -> Result<impl Fn() -> Command + Clone + Send + 'static> {
    let bin = k8s_bin(paths)?.join("kubectl");
    let config = paths.kubeconfig();
    Ok(move || {
        let mut cmd = Command::new(&bin);
        cmd.arg("--kubeconfig").arg(&config);
        cmd
    })
}

pub fn up(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    let k8s = k8s_bin(paths)?;
    let etcd = binaries::etcd(&paths.cache)?;
    ensure_pki(paths)?;
    // An API server from an older xtask may write no audit log.
    let current = ensure_serving_cert(paths)?
        && apiserver_reachable_from_pods(paths)
        && audit_log(paths).exists();
    if current && DAEMONS.iter().all(|d| daemon::alive(paths, d)) && api_ready(paths) {
        step("control plane already up");
        return Ok(());
    }
    if !current && daemon::alive(paths, "kube-apiserver") {
        // Started by an older xtask: on loopback only, with a certificate
        // that does not name the pods' address for it, or without the
        // audit log. etcd keeps every
        // object, so a restart costs clients one reconnect.
        step("restarting kube-apiserver with the current settings");
        daemon::stop(paths, "kube-apiserver", Duration::from_secs(20))?;
    }

    let mut cmd = Command::new(etcd.join("etcd"));
    cmd.args([
        "--name=tjo",
        "--listen-client-urls",
        ETCD_CLIENT,
        "--advertise-client-urls",
        ETCD_CLIENT,
        "--listen-peer-urls=http://127.0.0.1:2380",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380",
        "--initial-cluster=tjo=http://127.0.0.1:2380",
        // A throwaway test cluster: durability of etcd's own writes buys
        // nothing here and fsync latency slows every API call.
        "--unsafe-no-fsync",
        "--quota-backend-bytes=4294967296",
        "--log-level=warn",
    ])
    .arg("--data-dir")
    .arg(paths.state.join("etcd"));
    daemon::spawn(paths, "etcd", cmd)?;
    wait_for("etcd to answer", Duration::from_secs(60), || {
        succeeds(Command::new(etcd.join("etcdctl")).args([
            "--endpoints",
            ETCD_CLIENT,
            "endpoint",
            "health",
        ]))
    })
    .map_err(|e| e.context(daemon::log_tail(paths, "etcd", 20)))?;

    let p = pki(paths);
    let f = |name: &str| p.join(name).display().to_string();
    let mut cmd = Command::new(k8s.join("kube-apiserver"));
    cmd.args([
        "--bind-address=0.0.0.0",
        &format!("--advertise-address={ADVERTISE_ADDRESS}"),
        "--secure-port=6443",
        &format!("--etcd-servers={ETCD_CLIENT}"),
        &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        &format!("--client-ca-file={}", f("ca.crt")),
        &format!("--tls-cert-file={}", f("apiserver.crt")),
        &format!("--tls-private-key-file={}", f("apiserver.key")),
        &format!(
            "--kubelet-client-certificate={}",
            f("apiserver-kubelet-client.crt")
        ),
        &format!("--kubelet-client-key={}", f("apiserver-kubelet-client.key")),
        &format!("--service-account-key-file={}", f("sa.pub")),
        &format!("--service-account-signing-key-file={}", f("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=Node,RBAC",
        // The node's name resolves nowhere (no DNS here); its InternalIP does.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--allow-privileged=true",
        "--enable-priority-and-fairness=false",
        // /debug/pprof, for cluster-admin only: where the API server's time
        // goes under `bench scale` is a measurement, not a guess.
        "--profiling=true",
        "--v=1",
    ])
    .args(audit_args(paths)?);
    daemon::spawn(paths, "kube-apiserver", cmd)?;
    write_kubeconfig(paths, &paths.kubeconfig(), "admin")?;
    wait_for("kube-apiserver /readyz", Duration::from_secs(120), || {
        api_ready(paths)
    })
    .map_err(|e| e.context(daemon::log_tail(paths, "kube-apiserver", 20)))?;

    let kubeconfig = paths.kubeconfig().display().to_string();
    let mut cmd = Command::new(k8s.join("kube-controller-manager"));
    cmd.args([
        &format!("--kubeconfig={kubeconfig}"),
        &format!("--authentication-kubeconfig={kubeconfig}"),
        &format!("--authorization-kubeconfig={kubeconfig}"),
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        &format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        &format!("--root-ca-file={}", f("ca.crt")),
        &format!("--service-account-private-key-file={}", f("sa.key")),
        &format!("--cluster-signing-cert-file={}", f("ca.crt")),
        &format!("--cluster-signing-key-file={}", f("ca.key")),
        "--use-service-account-credentials=true",
        // --node-monitor-grace-period stays at Kubernetes' default (50 s).
        // 20 s made every restart of the API server in the soak mark the
        // node NodeStatusUnknown: a real cluster rides such an outage out.
        "--v=1",
    ]);
    daemon::spawn(paths, "kube-controller-manager", cmd)?;

    let mut cmd = Command::new(k8s.join("kube-scheduler"));
    cmd.args([
        &format!("--kubeconfig={kubeconfig}"),
        &format!("--authentication-kubeconfig={kubeconfig}"),
        &format!("--authorization-kubeconfig={kubeconfig}"),
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--v=1",
    ]);
    daemon::spawn(paths, "kube-scheduler", cmd)?;
    start_kube_proxy(paths, &k8s)?;

    // The default ServiceAccount is what every namespaced test relies on:
    // wait for the controller-manager to make it, so callers never race it.
    wait_for(
        "the controller-manager to create the default ServiceAccount",
        Duration::from_secs(120),
        || {
            kubectl(paths)
                .map(|mut k| {
                    succeeds(k.args(["get", "serviceaccount", "default", "-n", "default"]))
                })
                .unwrap_or(false)
        },
    )
    .map_err(|e| e.context(daemon::log_tail(paths, "kube-controller-manager", 20)))?;
    step(format!(
        "control plane up in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// etcd compacted at its head and restarted while the API server is down:
/// the API server comes back with an empty watch cache, so every client
/// resuming a watch from an older revision is told 410 Gone and must list
/// again. The API server is killed, not stopped: its graceful stop waits
/// for open watches for up to a minute, longer than a leader's renew
/// deadline, and a leader that gives up lists afresh rather than resume.
pub fn restart_etcd_compacted(paths: &Paths) -> Result<()> {
    let etcdctl = binaries::etcd(&paths.cache)?.join("etcdctl");
    daemon::stop(paths, "kube-apiserver", Duration::ZERO)?;
    let status = output(Command::new(&etcdctl).args([
        "--endpoints",
        ETCD_CLIENT,
        "endpoint",
        "status",
        "-w",
        "json",
    ]))?;
    let revision = serde_json::from_str::<serde_json::Value>(&status)?[0]["Status"]["header"]
        ["revision"]
        .as_i64()
        .context("etcd's status has no revision")?;
    run(Command::new(&etcdctl)
        .args(["--endpoints", ETCD_CLIENT, "compact", &revision.to_string()])
        .stdout(std::process::Stdio::null()))?;
    step(format!("etcd compacted at revision {revision}"));
    daemon::stop(paths, "etcd", Duration::from_secs(20))?;
    up(paths)
}

/// `kubectl apply -f -` of `manifest`, in `namespace` when given.
pub fn kubectl_apply(paths: &Paths, namespace: Option<&str>, manifest: &str) -> Result<()> {
    apply_with(kubectl(paths)?, namespace, manifest.as_bytes())
}

/// `kubectl apply` of one object, with a kubectl from [`kubectl_maker`].
pub fn apply_json<K: Fn() -> Command>(
    kubectl: &K,
    namespace: Option<&str>,
    object: &serde_json::Value,
) -> Result<()> {
    apply_with(kubectl(), namespace, object.to_string().as_bytes())
}

fn apply_with(mut cmd: Command, namespace: Option<&str>, manifest: &[u8]) -> Result<()> {
    if let Some(ns) = namespace {
        cmd.args(["-n", ns]);
    }
    let status = crate::util::run_with_input(cmd.args(["apply", "-f", "-"]), manifest)?;
    anyhow::ensure!(status.success(), "kubectl apply failed");
    Ok(())
}

/// A jsonpath of an object in `namespace`, or "" when it is not there (yet).
pub fn jsonpath(paths: &Paths, namespace: &str, object: &str, path: &str) -> String {
    get_jsonpath(paths, Some(namespace), object, path)
}

/// `jsonpath` for an object in a namespace, or a cluster-scoped one.
fn get_jsonpath(paths: &Paths, namespace: Option<&str>, object: &str, path: &str) -> String {
    kubectl(paths)
        .and_then(|mut k| {
            if let Some(ns) = namespace {
                k.args(["-n", ns]);
            }
            output(k.args(["get", object, "-o", &format!("jsonpath={path}")]))
        })
        .unwrap_or_default()
}

/// Waits until `object` has condition `condition` True. Not `kubectl wait
/// --for=condition`: that fails at once, instead of waiting, when its first
/// read finds no conditions yet (a CRD just applied, a job just created).
/// On timeout the error carries the object's conditions as they were then.
pub fn wait_condition(
    paths: &Paths,
    namespace: Option<&str>,
    object: &str,
    condition: &str,
    timeout: Duration,
) -> Result<()> {
    let status = format!(r#"{{.status.conditions[?(@.type=="{condition}")].status}}"#);
    wait_for(&format!("{object} to be {condition}"), timeout, || {
        get_jsonpath(paths, namespace, object, &status) == "True"
    })
    .map_err(|e| {
        let now = get_jsonpath(paths, namespace, object, "{.status}");
        anyhow::anyhow!(
            "{e}; its status then: {}",
            if now.is_empty() { "(none yet)" } else { &now }
        )
    })
}

pub fn api_ready(paths: &Paths) -> bool {
    paths.kubeconfig().is_file()
        && kubectl(paths)
            .map(|mut k| succeeds(k.args(["get", "--raw=/readyz", "--request-timeout=5s"])))
            .unwrap_or(false)
}

pub fn down(paths: &Paths) -> Result<()> {
    for name in DAEMONS.iter().rev() {
        daemon::stop(paths, name, Duration::from_secs(20))?;
    }
    // kube-proxy leaves its iptables chains behind when it stops.
    if let Ok(k8s) = k8s_bin(paths) {
        let _ = output(Command::new(k8s.join("kube-proxy")).arg("--cleanup"));
    }
    // Every run starts from empty storage: stale objects from an earlier
    // run would otherwise leak into the next one's tests.
    let _ = std::fs::remove_dir_all(paths.state.join("etcd"));
    step("control plane down");
    Ok(())
}

pub fn status(paths: &Paths) -> Result<bool> {
    let mut all = true;
    for name in DAEMONS {
        match daemon::pid(paths, name) {
            Some(pid) => println!("{name:<24} running (pid {pid})"),
            None => {
                all = false;
                println!("{name:<24} stopped")
            }
        }
    }
    let ready = api_ready(paths);
    println!(
        "{:<24} {}",
        "api server",
        if ready { "ready" } else { "not ready" }
    );
    Ok(all && ready)
}

pub fn print_usage(paths: &Paths) {
    eprintln!(
        "\nThe cluster is up. Use it with:\n  export KUBECONFIG={}\n  export PATH={}:$PATH\n",
        paths.kubeconfig().display(),
        binaries::kubernetes(&paths.cache)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
}

/// A CA, serving and client certificates, and the service-account key pair,
/// made once per state folder with the openssl CLI.
fn ensure_pki(paths: &Paths) -> Result<()> {
    let p = pki(paths);
    if p.join("sa.pub").is_file() {
        return Ok(());
    }
    step("creating certificates in .cluster/pki");
    std::fs::create_dir_all(&p)?;
    let ssl = |args: &[&str]| {
        run(Command::new("openssl")
            .current_dir(&p)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()))
    };
    ssl(&["genrsa", "-out", "ca.key", "2048"])?;
    ssl(&[
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-key",
        "ca.key",
        "-subj",
        "/CN=tjo-local-ca",
        "-days",
        "3650",
        "-out",
        "ca.crt",
    ])?;
    issue_serving_cert(paths)?;
    issue_cert(
        paths,
        "admin",
        "kubernetes-admin",
        Some("system:masters"),
        &[],
        false,
    )?;
    issue_cert(
        paths,
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        Some("system:masters"),
        &[],
        false,
    )?;
    ssl(&["genrsa", "-out", "sa.key", "2048"])?;
    ssl(&["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

/// Every name clients use for the API server: loopback (the kubeconfig),
/// the `kubernetes` Service's ClusterIP and DNS names (pods, through
/// kube-proxy), and the address that Service's endpoint names.
const APISERVER_SANS: &[&str] = &[
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
    "IP:10.96.0.1",
    // ADVERTISE_ADDRESS; a test checks they agree.
    "IP:10.85.0.1",
];

fn issue_serving_cert(paths: &Paths) -> Result<()> {
    issue_cert(
        paths,
        "apiserver",
        "kube-apiserver",
        None,
        APISERVER_SANS,
        true,
    )
    .map(|_| ())
}

/// Reissues the API server's certificate when it lacks a name in
/// APISERVER_SANS (made by an older xtask); says whether it was current.
fn ensure_serving_cert(paths: &Paths) -> Result<bool> {
    let text = output(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(pki(paths).join("apiserver.crt")),
    )
    .unwrap_or_default();
    // openssl prints `IP Address:10.96.0.1` for `IP:10.96.0.1`.
    let printed = |san: &str| san.replacen("IP:", "IP Address:", 1);
    if APISERVER_SANS
        .iter()
        .all(|san| text.contains(&printed(san)))
    {
        return Ok(true);
    }
    step("reissuing the API server's certificate with the names pods use for it");
    issue_serving_cert(paths)?;
    Ok(false)
}

/// Whether a running API server listens beyond loopback and advertises the
/// address pods reach it at (one from an older xtask did neither).
fn apiserver_reachable_from_pods(paths: &Paths) -> bool {
    let Some(pid) = daemon::pid(paths, "kube-apiserver") else {
        return true;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let has = |flag: &str| args.contains(&flag.as_bytes());
    has("--bind-address=0.0.0.0") && has(&format!("--advertise-address={ADVERTISE_ADDRESS}"))
}

/// kube-proxy of the same release in iptables mode, so that Service
/// ClusterIPs work on this machine: above all `kubernetes.default`
/// (10.96.0.1:443), where in-cluster clients find the API server.
fn start_kube_proxy(paths: &Paths, k8s: &Path) -> Result<()> {
    if daemon::alive(paths, "kube-proxy") {
        return Ok(());
    }
    crate::util::apt_install(&["iptables", "conntrack"])?;
    let p = pki(paths);
    // The user the built-in `system:node-proxier` binding grants what
    // kube-proxy needs, and no more.
    if !p.join("kube-proxy.crt").is_file() {
        issue_cert(paths, "kube-proxy", "system:kube-proxy", None, &[], false)?;
    }
    let kubeconfig = paths.state.join("kube-proxy.kubeconfig");
    write_kubeconfig(paths, &kubeconfig, "kube-proxy")?;
    let config = paths.state.join("kube-proxy.yaml");
    // conntrack and localhost settings are left as the machine has them:
    // this cluster shares the host and must not retune its kernel.
    write(
        &config,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
             clientConnection:\n  kubeconfig: {kubeconfig}\n\
             mode: iptables\nclusterCIDR: {POD_SUBNET}\nhostnameOverride: {NODE_NAME}\n\
             bindAddress: {ADVERTISE_ADDRESS}\n\
             healthzBindAddress: 127.0.0.1:10256\nmetricsBindAddress: 127.0.0.1:10249\n\
             conntrack:\n  maxPerCore: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n\
             iptables:\n  localhostNodePorts: false\nnodePortAddresses: [primary]\n",
            kubeconfig = kubeconfig.display(),
        ),
    )?;
    let mut cmd = Command::new(k8s.join("kube-proxy"));
    cmd.arg("--config").arg(&config).arg("--v=1");
    daemon::spawn(paths, "kube-proxy", cmd)?;
    // kube-proxy first waits (up to 30 s) for its Node object, which the
    // kubelet registers after the control plane is up: on a fresh cluster
    // it programs the rules once the node is there, in-cluster clients
    // retry until then, and `cluster up` need not wait for it.
    let node_registered = kubectl(paths)
        .map(|mut k| succeeds(k.args(["get", "node", NODE_NAME])))
        .unwrap_or(false);
    if !node_registered {
        return Ok(());
    }
    wait_for(
        "kube-proxy to program the kubernetes Service",
        Duration::from_secs(60),
        kubernetes_service_programmed,
    )
    .map_err(|e| e.context(daemon::log_tail(paths, "kube-proxy", 20)))
}

/// kube-proxy's rules for `default/kubernetes` are in place.
fn kubernetes_service_programmed() -> bool {
    output(Command::new("iptables").args(["-t", "nat", "-S", "KUBE-SERVICES"]))
        .map(|rules| rules.contains("default/kubernetes:https cluster IP"))
        .unwrap_or(false)
}

/// Issues `<name>.crt`/`<name>.key` in the PKI folder, signed by the local CA.
pub fn issue_cert(
    paths: &Paths,
    name: &str,
    cn: &str,
    org: Option<&str>,
    sans: &[&str],
    server: bool,
) -> Result<(PathBuf, PathBuf)> {
    let p = pki(paths);
    let subject = match org {
        Some(o) => format!("/O={o}/CN={cn}"),
        None => format!("/CN={cn}"),
    };
    let ext = p.join(format!("{name}.ext"));
    let mut e = String::from(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
    );
    e.push_str(if server {
        "extendedKeyUsage=serverAuth,clientAuth\n"
    } else {
        "extendedKeyUsage=clientAuth\n"
    });
    if !sans.is_empty() {
        e.push_str(&format!("subjectAltName={}\n", sans.join(",")));
    }
    write(&ext, e)?;
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let crt = format!("{name}.crt");
    let quiet = |c: &mut Command| -> Result<()> { output(c.current_dir(&p)).map(|_| ()) };
    quiet(Command::new("openssl").args(["genrsa", "-out", &key, "2048"]))?;
    quiet(
        Command::new("openssl")
            .args(["req", "-new", "-key", &key, "-subj", &subject, "-out", &csr]),
    )?;
    quiet(
        Command::new("openssl")
            .args([
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3650",
                "-out",
                &crt,
                "-extfile",
            ])
            .arg(&ext),
    )?;
    Ok((p.join(crt), p.join(key)))
}

/// A kubeconfig that authenticates with `<cert>.crt`/`<cert>.key` of the PKI.
pub fn write_kubeconfig(paths: &Paths, file: &Path, cert: &str) -> Result<()> {
    let p = pki(paths);
    let body = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {API_SERVER}\n    certificate-authority: {ca}\n\
         users:\n- name: {cert}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n\
         contexts:\n- name: local\n  context:\n    cluster: local\n    user: {cert}\ncurrent-context: local\n",
        ca = p.join("ca.crt").display(),
        crt = p.join(format!("{cert}.crt")).display(),
        key = p.join(format!("{cert}.key")).display(),
    );
    write(file, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serving_certificate_names_the_advertised_address() {
        assert!(APISERVER_SANS.contains(&format!("IP:{ADVERTISE_ADDRESS}").as_str()));
    }
}
