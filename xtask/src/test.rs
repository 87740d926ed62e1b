//! `cargo xtask test`: the README's test command, and what CI runs.

use crate::controlplane;
use crate::util::{run, step, Paths};
use anyhow::{Context, Result};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn run_all(paths: &Paths) -> Result<()> {
    let started = Instant::now();
    step("cargo fmt --check");
    run(Command::new("cargo")
        .current_dir(&paths.root)
        .args(["fmt", "--all", "--", "--check"]))
    .context("formatting differs: run `cargo fmt --all`")?;
    step("cargo clippy --all-targets -- -D warnings");
    run(Command::new("cargo").current_dir(&paths.root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("python/run-tests.sh: the trainingjob package's unit tests (pytest)");
    // The script fails on pytest's "no tests collected" (exit 5) too.
    run(Command::new("bash")
        .arg(paths.root.join("python/run-tests.sh"))
        .stdin(std::process::Stdio::null()))
    .context("the Python package's tests failed")?;

    crate::cluster_up(paths, false)?;
    // A benchmark's operator left running would act beside the tests' own.
    crate::daemon::stop(
        paths,
        "trainingjob-operator",
        std::time::Duration::from_secs(10),
    )?;
    crate::images::build_and_import(paths)?;
    install_crd(paths)?;

    let watcher = crate::lifetimes::Watcher::start(paths)?;
    step("cargo test: unit tests, then the tests against the real cluster");
    let k8s = controlplane::k8s_bin(paths)?;
    let path = std::env::join_paths(std::iter::once(k8s).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let helm = crate::helm::helm(paths)?;
    run(Command::new("cargo")
        .current_dir(&paths.root)
        .env("KUBECONFIG", paths.kubeconfig())
        .env("HELM", helm.join("helm"))
        // The release test builds its archive with this very xtask and
        // imports it into the node's containerd.
        .env("TJO_XTASK", std::env::current_exe()?)
        .env(
            "TJO_CONTAINERD_SOCKET",
            crate::containerd::CONTAINERD_SOCKET,
        )
        .env("PATH", path)
        .args(["test", "--workspace", "--", "--include-ignored"]))?;
    let lifetimes = watcher.finish()?;
    step(format!(
        "pod lifetimes: {} pods of {} ranks over {} watch events, no two pods of one rank alive at once",
        lifetimes.pods, lifetimes.ranks, lifetimes.events
    ));
    step(format!(
        "trainer processes: {} of {} ranks over {} samples of the machine, no two attempts of one rank alive at once",
        lifetimes.trainer_processes, lifetimes.trainer_ranks, lifetimes.samples
    ));
    quick_benches(paths)?;
    step(format!(
        "all tests passed in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A quick run of every benchmark, so that none can rot: each must complete
/// and print its figures; the figures themselves are never asserted.
fn quick_benches(paths: &Paths) -> Result<()> {
    step("quick benchmarks: cargo bench -p launcher, bench memory, bench resume, bench scale, bench peers");
    run(Command::new("cargo")
        .current_dir(&paths.root)
        .env("TJO_BENCH_QUICK", "1")
        .args(["bench", "--quiet", "-p", "launcher"]))
    .context("the launcher's benchmark")?;
    // The test profile: the figures are for the ratios, and a release build
    // of the operator's dependencies would cost CI minutes.
    run(Command::new("cargo")
        .current_dir(&paths.root)
        .env("TJO_MEM_JOBS", "200")
        .args(["test", "--quiet", "--bench", "memory"]))
    .context("the operator's memory benchmark")?;
    crate::bench::resume(paths, 2).context("bench resume")?;
    use crate::scale::System::*;
    crate::scale::scale(paths, 100, &[Trainingjob, Jobset, Job]).context("bench scale")?;
    crate::peers::run(paths, true, 1).context("bench peers --quick")?;
    step("a short soak: every fault once, seed 1 (cargo xtask soak --seed 1 --minutes 4)");
    crate::soak::run(paths, 1, 4.0).context("soak")
}

/// Server-side apply: the CRD embeds a whole PodTemplateSpec schema, which is
/// larger than client-side apply's last-applied annotation may hold.
pub fn install_crd(paths: &Paths) -> Result<()> {
    step("installing the TrainingJob CRD");
    run(controlplane::kubectl(paths)?
        .args([
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=trainingjob-operator-xtask",
            "-f",
        ])
        .arg(paths.root.join("crds")))?;
    controlplane::wait_condition(
        paths,
        None,
        "crd/trainingjobs.trainingjob.dev",
        "Established",
        Duration::from_secs(60),
    )
}

/// Rewrites crds/ from the Rust types.
pub fn regenerate_crd(paths: &Paths) -> Result<()> {
    let yaml = crate::util::output(
        Command::new("cargo")
            .current_dir(&paths.root)
            .args(["run", "--quiet", "--bin", "crdgen"]),
    )?;
    crate::util::write(&paths.root.join("crds/trainingjob.yaml"), yaml)?;
    step("wrote crds/trainingjob.yaml");
    crate::helm::sync_crd(paths)?;
    Ok(())
}
