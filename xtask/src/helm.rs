//! `helm`, built from the Go module proxy at a pinned version and cached
//! outside the repository like the Kubernetes binaries, and the chart's
//! copy of the generated CRD.

use crate::util::{run, step, succeeds, write, Paths};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Helm 3.19 is built against client-go v0.34, the same minor as the
/// cluster (binaries::KUBERNETES), and needs no newer Go than Kubernetes
/// 1.34 does; later 3.x releases need Go 1.25+ and talk to 1.35+ APIs.
pub const HELM: &str = "v3.19.5";
/// What `helm template` and `helm lint` assume the cluster is without one
/// to ask: helm's own Makefile derives it from its client-go (v0.34).
const HELM_K8S_MAJOR: &str = "1";
const HELM_K8S_MINOR: &str = "34";

/// Where the chart keeps its copy of crds/trainingjob.yaml. Not the
/// chart's `crds/` folder: Helm only ever installs from there, never
/// upgrades, so a template renders this file instead.
pub const CHART_CRD: &str = "charts/trainingjob-operator/files/trainingjob.yaml";

/// The folder holding `helm`, building it first if needed.
pub fn helm(paths: &Paths) -> Result<PathBuf> {
    let dir = paths.cache.join(format!("helm-{HELM}"));
    let bin = dir.join("bin");
    if bin.join("helm").is_file() {
        return Ok(bin);
    }
    if !succeeds(Command::new("go").arg("version")) {
        bail!(
            "the Go toolchain is needed to build helm, and `go version` failed: \
             install Go 1.24 or newer and put `go` on PATH"
        );
    }
    let started = Instant::now();
    step(format!(
        "building helm {HELM} from the Go module proxy (first time only; a few minutes)"
    ));
    let partial = dir.join("bin.partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)?;
    // The same variables helm's Makefile sets, so `helm version` and the
    // Kubernetes version `helm template` assumes are the real ones.
    let ldflags = [
        ("helm.sh/helm/v3/internal/version.version", HELM),
        ("helm.sh/helm/v3/internal/version.gitTreeState", "clean"),
        (
            "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor",
            HELM_K8S_MAJOR,
        ),
        (
            "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor",
            HELM_K8S_MINOR,
        ),
        (
            "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor",
            HELM_K8S_MAJOR,
        ),
        (
            "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor",
            HELM_K8S_MINOR,
        ),
    ]
    .iter()
    .map(|(k, v)| format!("-X {k}={v}"))
    .collect::<Vec<_>>()
    .join(" ");
    // helm's go.mod has no replace directives, so `go install` works.
    run(Command::new("go")
        .args(["install", "-trimpath"])
        .arg(format!("-ldflags=-s -w {ldflags}"))
        .arg(format!("helm.sh/helm/v3/cmd/helm@{HELM}"))
        .env("GOBIN", &partial)
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .stdin(Stdio::null()))
    .context("building helm")?;
    let _ = std::fs::remove_dir_all(&bin);
    std::fs::rename(&partial, &bin)?;
    step(format!(
        "helm {HELM} built into {} in {:.0}s",
        bin.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(bin)
}

/// Copies crds/trainingjob.yaml into the chart; `tests/chart.rs` fails
/// when the two differ.
pub fn sync_crd(paths: &Paths) -> Result<()> {
    let crd = std::fs::read(paths.root.join("crds/trainingjob.yaml"))
        .context("reading crds/trainingjob.yaml")?;
    write(&paths.root.join(CHART_CRD), crd)?;
    step(format!("copied crds/trainingjob.yaml to {CHART_CRD}"));
    Ok(())
}

/// `cargo xtask helm [ARGS]`: the pinned helm against the local cluster;
/// without arguments it prints where helm is.
pub fn run_helm(paths: &Paths, args: &[String]) -> Result<()> {
    let bin = helm(paths)?;
    if args.is_empty() {
        println!("{}", bin.join("helm").display());
        return Ok(());
    }
    run(command(paths, &bin).args(args))
}

/// `helm` with the local cluster's kubeconfig.
fn command(paths: &Paths, bin: &Path) -> Command {
    let mut cmd = Command::new(bin.join("helm"));
    cmd.current_dir(&paths.root)
        .env("KUBECONFIG", paths.kubeconfig());
    cmd
}
