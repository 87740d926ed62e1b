//! The local control plane: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler on loopback, with their own certificates and an admin
//! kubeconfig at `.cluster/kubeconfig`.

use crate::binaries;
use crate::daemon;
use crate::util::{output, run, step, succeeds, wait_for, write, Paths};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const API_SERVER: &str = "https://127.0.0.1:6443";
const ETCD_CLIENT: &str = "http://127.0.0.1:2379";
const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The control plane's daemons, in start order.
const DAEMONS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
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
    let mut cmd = Command::new(k8s_bin(paths)?.join("kubectl"));
    cmd.arg("--kubeconfig").arg(paths.kubeconfig());
    Ok(cmd)
}

pub fn up(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    let k8s = k8s_bin(paths)?;
    let etcd = binaries::etcd(&paths.cache)?;
    if DAEMONS.iter().all(|d| daemon::alive(paths, d)) && api_ready(paths) {
        step("control plane already up");
        return Ok(());
    }
    ensure_pki(paths)?;

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
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
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
        "--profiling=false",
        "--v=1",
    ]);
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
        // Pods bound to a node that stops reporting are evicted by the
        // taint manager after this long; tests of node loss rely on it.
        "--node-monitor-grace-period=20s",
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
    issue_cert(
        paths,
        "apiserver",
        "kube-apiserver",
        None,
        &[
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            "IP:127.0.0.1",
            "IP:10.96.0.1",
        ],
        true,
    )?;
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
