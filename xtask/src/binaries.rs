//! Builds the cluster's Go binaries from the Go module proxy at pinned
//! versions and caches them outside the repository, keyed by version.
//!
//! Kubernetes is not `go install`-able: k8s.io/kubernetes replaces its
//! staging modules with `./staging/...` paths. A wrapper module requires
//! k8s.io/kubernetes and replaces each staging module with its published
//! `v0.X.Y` instead; the list of staging modules is read from the release's
//! own go.mod, so a version bump needs no edit here.

use crate::util::{output, step, write};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Kubernetes release everything is built from and tested against.
/// k8s-openapi's `v1_34` feature in Cargo.toml must name the same minor.
pub const KUBERNETES: &str = "v1.34.4";
/// etcd 3.6 is what Kubernetes 1.34 is released with (Debian's 3.4 is too old).
pub const ETCD: &str = "v3.6.16";

/// The Kubernetes binaries the cluster runs, and the kubectl of the same release.
pub const K8S_COMMANDS: &[&str] = &[
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
];

/// A set of binaries built from one wrapper module.
struct GoBuild<'a> {
    /// Cache folder name, e.g. `kubernetes-v1.34.4`.
    key: String,
    go_mod: String,
    /// Extra files of the wrapper module (path, contents).
    files: Vec<(&'a str, String)>,
    /// Package paths to build; each becomes `bin/<last element>`.
    packages: Vec<String>,
    ldflags: String,
}

fn require_go() -> Result<()> {
    if !crate::util::succeeds(Command::new("go").arg("version")) {
        bail!(
            "the Go toolchain is needed to build the Kubernetes binaries, and `go version` failed: \
             install Go 1.24 or newer and put `go` on PATH"
        );
    }
    Ok(())
}

/// The folder holding the Kubernetes binaries, building them first if needed.
pub fn kubernetes(cache: &Path) -> Result<PathBuf> {
    let key = format!("kubernetes-{KUBERNETES}");
    let bin = cache.join(&key).join("bin");
    if is_complete(&bin, K8S_COMMANDS) {
        return Ok(bin);
    }
    require_go()?;
    let staging = staging_version(KUBERNETES)?;
    step(format!(
        "building Kubernetes {KUBERNETES} from the Go module proxy (first time only; about 5-10 minutes on 2 cores)"
    ));
    let upstream = download_go_mod("k8s.io/kubernetes", KUBERNETES)?;
    let replaces: String = staging_modules(&upstream)
        .iter()
        .map(|m| format!("\t{m} => {m} {staging}\n"))
        .collect();
    let go_version = go_directive(&upstream).unwrap_or_else(|| "1.24.0".into());
    let go_mod = format!(
        "module tjo.local/kubernetes-build\n\ngo {go_version}\n\ngodebug default=go1.24\n\n\
         require k8s.io/kubernetes {KUBERNETES}\n\nreplace (\n{replaces})\n"
    );
    let (major, minor) = major_minor(KUBERNETES)?;
    let ldflags = [
        (
            "k8s.io/component-base/version.gitVersion",
            KUBERNETES.to_string(),
        ),
        ("k8s.io/component-base/version.gitMajor", major.clone()),
        ("k8s.io/component-base/version.gitMinor", minor.clone()),
        ("k8s.io/component-base/version.gitTreeState", "clean".into()),
        (
            "k8s.io/component-base/version.buildDate",
            "1970-01-01T00:00:00Z".into(),
        ),
        (
            "k8s.io/client-go/pkg/version.gitVersion",
            KUBERNETES.to_string(),
        ),
        ("k8s.io/client-go/pkg/version.gitMajor", major),
        ("k8s.io/client-go/pkg/version.gitMinor", minor),
    ]
    .iter()
    .map(|(k, v)| format!("-X {k}={v}"))
    .collect::<Vec<_>>()
    .join(" ");
    GoBuild {
        key,
        go_mod,
        files: vec![],
        packages: K8S_COMMANDS
            .iter()
            .map(|c| format!("k8s.io/kubernetes/cmd/{c}"))
            .collect(),
        ldflags: format!("-s -w {ldflags}"),
    }
    .build(cache)?;
    Ok(bin)
}

/// The folder holding etcd and etcdctl, building them first if needed.
pub fn etcd(cache: &Path) -> Result<PathBuf> {
    let key = format!("etcd-{ETCD}");
    let bin = cache.join(&key).join("bin");
    if is_complete(&bin, &["etcd", "etcdctl"]) {
        return Ok(bin);
    }
    require_go()?;
    step(format!(
        "building etcd {ETCD} from the Go module proxy (first time only)"
    ));
    // etcd's own modules replace each other with relative paths, so they are
    // not `go install`-able either: two tiny main packages do the same job.
    let go_mod = format!(
        "module tjo.local/etcd-build\n\ngo 1.24.0\n\nrequire (\n\
         \tgo.etcd.io/etcd/server/v3 {ETCD}\n\tgo.etcd.io/etcd/etcdctl/v3 {ETCD}\n)\n"
    );
    GoBuild {
        key,
        go_mod,
        files: vec![
            (
                "etcd/main.go",
                "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\n\
                 func main() { etcdmain.Main(os.Args) }\n"
                    .into(),
            ),
            (
                "etcdctl/main.go",
                "package main\n\nimport \"go.etcd.io/etcd/etcdctl/v3/ctlv3\"\n\n\
                 func main() { ctlv3.MustStart() }\n"
                    .into(),
            ),
        ],
        packages: vec!["./etcd".into(), "./etcdctl".into()],
        ldflags: "-s -w".into(),
    }
    .build(cache)?;
    Ok(bin)
}

impl GoBuild<'_> {
    fn build(self, cache: &Path) -> Result<()> {
        let dir = cache.join(&self.key);
        let src = dir.join("src");
        let bin = dir.join("bin");
        let partial = dir.join("bin.partial");
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)?;
        write(&src.join("go.mod"), &self.go_mod)?;
        for (name, body) in &self.files {
            write(&src.join(name), body)?;
        }
        // -mod=mod lets go resolve and record the transitive requirements
        // of the wrapper itself, so no go.sum needs to be kept in the repo.
        let mut cmd = Command::new("go");
        cmd.current_dir(&src)
            .env("CGO_ENABLED", "0")
            .env("GOFLAGS", "-mod=mod -buildvcs=false")
            .env("GOTOOLCHAIN", "local")
            .args(["build", "-v", "-ldflags", &self.ldflags, "-o"])
            .arg(&partial)
            .args(&self.packages)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("could not start `go build`")?;
        // `go build -v` names each package as it compiles: show a running count
        // so a 30-minute build is visibly alive, and keep the tail for errors.
        let stderr = child.stderr.take().expect("piped");
        let mut count = 0usize;
        let mut tail: Vec<String> = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            count += 1;
            if count.is_multiple_of(200) {
                eprintln!("    {}: {count} packages compiled, now {line}", self.key);
            }
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!(
                "building {} failed ({status}); the last lines of `go build`:\n{}\n\
                 The wrapper module is in {}",
                self.key,
                tail.join("\n"),
                src.display()
            );
        }
        let _ = std::fs::remove_dir_all(&bin);
        std::fs::rename(&partial, &bin)?;
        step(format!("{} built into {}", self.key, bin.display()));
        Ok(())
    }
}

fn is_complete(bin: &Path, names: &[&str]) -> bool {
    names.iter().all(|n| bin.join(n).is_file())
}

/// `go mod download -json module@version`: where the proxy's copy landed
/// in the module cache (`Dir`, `GoMod`, …).
pub(crate) fn go_mod_download(module: &str, version: &str) -> Result<serde_json::Value> {
    let json = output(
        Command::new("go")
            .args(["mod", "download", "-json"])
            .arg(format!("{module}@{version}"))
            .env("GOFLAGS", "-mod=mod"),
    )
    .with_context(|| format!("could not fetch {module}@{version} from the Go module proxy"))?;
    Ok(serde_json::from_str(&json)?)
}

fn download_go_mod(module: &str, version: &str) -> Result<String> {
    let info = go_mod_download(module, version)?;
    let path = info["GoMod"]
        .as_str()
        .context("`go mod download -json` gave no GoMod path")?;
    Ok(std::fs::read_to_string(path)?)
}

/// `k8s.io/X => ./staging/src/k8s.io/X` lines of the release's go.mod.
fn staging_modules(go_mod: &str) -> Vec<String> {
    go_mod
        .lines()
        .filter_map(|l| {
            let (from, to) = l.trim().split_once("=>")?;
            to.trim()
                .starts_with("./staging/")
                .then(|| from.trim().to_string())
        })
        .collect()
}

fn go_directive(go_mod: &str) -> Option<String> {
    go_mod
        .lines()
        .find_map(|l| l.strip_prefix("go ").map(|v| v.trim().to_string()))
}

fn major_minor(version: &str) -> Result<(String, String)> {
    let mut parts = version.trim_start_matches('v').split('.');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => Ok((a.into(), b.into())),
        _ => bail!("bad version {version}"),
    }
}

/// v1.34.4 -> v0.34.4: the staging modules' published versions.
fn staging_version(version: &str) -> Result<String> {
    let rest = version
        .strip_prefix("v1.")
        .with_context(|| format!("expected a v1.x.y Kubernetes version, got {version}"))?;
    Ok(format!("v0.{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_lines_are_read_from_the_release_go_mod() {
        let m = "replace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\tfoo => bar v1\n)\n";
        assert_eq!(staging_modules(m), vec!["k8s.io/api".to_string()]);
        assert_eq!(staging_version("v1.34.4").unwrap(), "v0.34.4");
        assert_eq!(
            major_minor("v1.34.4").unwrap(),
            ("1".to_string(), "34".to_string())
        );
    }
}
