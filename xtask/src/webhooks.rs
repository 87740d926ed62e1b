//! What the test bed's add-on controllers (Kueue, JobSet) share: each is
//! built from a pinned Go module, installs CRDs and webhook configurations
//! from that module's own source, and serves its webhooks as a host
//! process on loopback with a certificate signed by the cluster's CA
//! (the API server runs on this host too, so it reaches them there).

use crate::controlplane::{self, kubectl};
use crate::util::{output, succeeds, wait_for, Paths};
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The module's source in the Go module cache, for its CRDs and webhook
/// manifests: what the release's own kustomize build starts from.
pub(crate) fn module_source(module: &str, version: &str) -> Result<PathBuf> {
    let info = crate::binaries::go_mod_download(module, version)?;
    let dir = info["Dir"]
        .as_str()
        .context("`go mod download -json` gave no Dir")?;
    Ok(PathBuf::from(dir))
}

/// A serving certificate for a webhook server on loopback, signed by the
/// cluster's CA (so the caBundle is that CA), copied into `dir` as
/// tls.crt/tls.key, the names controller-runtime's certificate watcher
/// reads. `name` names the files in the PKI folder. Returns the caBundle,
/// base64.
pub(crate) fn serving_cert(paths: &Paths, dir: &Path, name: &str) -> Result<String> {
    let ca = controlplane::pki(paths).join("ca.crt");
    // A certificate from before the cluster's PKI was remade would not
    // verify against the caBundle: issue a new one then too.
    let current = succeeds(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&ca)
            .arg(dir.join("tls.crt")),
    );
    if !current || !dir.join("tls.key").is_file() {
        let sans = ["IP:127.0.0.1", "DNS:localhost"];
        let (crt, key) = controlplane::issue_cert(paths, name, name, None, &sans, true)?;
        std::fs::create_dir_all(dir)?;
        std::fs::copy(crt, dir.join("tls.crt"))?;
        std::fs::copy(key, dir.join("tls.key"))?;
    }
    let b64 = output(
        Command::new("openssl")
            .args(["base64", "-A", "-in"])
            .arg(ca),
    )?;
    Ok(b64.trim().to_string())
}

/// Every object in a manifest file or folder, as JSON: kubectl does the
/// YAML parsing, so xtask needs no YAML library.
pub(crate) fn manifests(paths: &Paths, file: &Path) -> Result<Vec<Value>> {
    let text = output(
        kubectl(paths)?
            .args(["create", "--dry-run=client", "-o", "json", "-f"])
            .arg(file),
    )?;
    let mut objects = Vec::new();
    for value in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
        match value? {
            Value::Object(mut o) if o.get("kind") == Some(&json!("List")) => {
                if let Some(Value::Array(items)) = o.remove("items") {
                    objects.extend(items);
                }
            }
            other => objects.push(other),
        }
    }
    Ok(objects)
}

pub(crate) fn server_side_apply(paths: &Paths, objects: Vec<Value>) -> Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    let status = crate::util::run_with_input(
        kubectl(paths)?
            .args(["apply", "--server-side", "--force-conflicts"])
            .args(["--field-manager=tjo-xtask", "-f", "-"])
            .stdout(Stdio::null()),
        list.to_string().as_bytes(),
    )?;
    anyhow::ensure!(status.success(), "kubectl apply failed");
    Ok(())
}

/// Applies CRDs and waits until the API server serves each of them, so
/// that what comes next (webhooks, the manager's informers) finds them.
pub(crate) fn apply_crds(paths: &Paths, crds: Vec<Value>) -> Result<()> {
    let names: Vec<String> = crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str().map(String::from))
        .collect();
    server_side_apply(paths, crds)?;
    for name in names {
        controlplane::wait_condition(
            paths,
            None,
            &format!("crd/{name}"),
            "Established",
            Duration::from_secs(60),
        )?;
    }
    Ok(())
}

/// A webhook's clientConfig for a server on loopback at `port`.
pub(crate) fn client_config(port: u16, path: &str, ca_bundle: &str) -> Value {
    json!({"url": format!("https://127.0.0.1:{port}{path}"), "caBundle": ca_bundle})
}

/// Points every webhook of a configuration from manifests.yaml (which names
/// an in-cluster Service) at the server on loopback, keeping its path.
pub(crate) fn point_at_loopback(hooks: &mut [Value], port: u16, ca_bundle: &str) -> Result<()> {
    for hook in hooks {
        let path = hook["clientConfig"]["service"]["path"]
            .as_str()
            .context("a webhook without a path")?
            .to_string();
        hook["clientConfig"] = client_config(port, &path, ca_bundle);
    }
    Ok(())
}

/// Whether the webhook's rules are for API group `group` ("" is core: pods).
pub(crate) fn serves(hook: &Value, group: &str) -> bool {
    hook["rules"].as_array().is_some_and(|rules| {
        rules.iter().any(|r| {
            r["apiGroups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == group))
        })
    })
}

/// A controller-runtime manager's readiness probe on loopback at `port`:
/// its caches synced and its webhook server serving.
pub(crate) fn ready(port: u16) -> bool {
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    conn.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .and_then(|_| conn.read_to_string(&mut reply))
        .is_ok()
        && reply.split_whitespace().nth(1) == Some("200")
}

/// Whether the add-on `name` runs, is ready and its webhooks answer (a
/// dry-run create of `probe` goes through them).
pub(crate) fn serving(paths: &Paths, name: &str, health_port: u16, probe: &Value) -> bool {
    crate::daemon::alive(paths, name) && ready(health_port) && dry_run_create(paths, probe)
}

/// Waits until the add-on `name` is ready and the API server reaches its
/// webhooks; on a timeout the error carries its log's tail.
pub(crate) fn wait_serving(
    paths: &Paths,
    name: &str,
    health_port: u16,
    probe: &Value,
) -> Result<()> {
    wait_for(
        &format!("{name}'s /readyz"),
        Duration::from_secs(120),
        || ready(health_port),
    )
    .and_then(|_| {
        wait_for(
            &format!("the API server to reach {name}'s webhooks"),
            Duration::from_secs(60),
            || dry_run_create(paths, probe),
        )
    })
    .map_err(|e| e.context(crate::daemon::log_tail(paths, name, 30)))
}

/// One line of `cargo xtask cluster status` for the add-on `name`.
pub(crate) fn print_status(paths: &Paths, name: &str, health_port: u16) {
    match crate::daemon::pid(paths, name) {
        Some(pid) if ready(health_port) => println!("{name:<24} ready (pid {pid})"),
        Some(pid) => println!("{name:<24} running, not ready (pid {pid})"),
        None => println!("{name:<24} stopped"),
    }
}

/// Whether a server-side dry run of creating `object` succeeds: it goes
/// through the object's mutating and validating webhooks, so it proves the
/// API server reaches them (URL, certificate and caBundle) without leaving
/// anything behind.
pub(crate) fn dry_run_create(paths: &Paths, object: &Value) -> bool {
    let Ok(mut cmd) = kubectl(paths) else {
        return false;
    };
    cmd.args(["create", "--dry-run=server", "-o", "name", "-f", "-"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::util::run_with_input(&mut cmd, object.to_string().as_bytes()).is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_are_pointed_at_loopback_keeping_their_path() {
        let mut hooks = vec![json!({"clientConfig": {"service": {
            "name": "webhook-service", "namespace": "system", "path": "/mutate--v1-pod",
        }}})];
        point_at_loopback(&mut hooks, 9445, "Q0E=").unwrap();
        assert_eq!(
            hooks[0]["clientConfig"],
            json!({"url": "https://127.0.0.1:9445/mutate--v1-pod", "caBundle": "Q0E="})
        );
    }
}
