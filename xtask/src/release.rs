//! What a release is made of: the project's own binaries, built static for
//! a `FROM scratch` image, the operator's image as an OCI archive, and the
//! packaged chart.
//!
//! The musl target cannot be installed here (rustup needs the network), so
//! the static binaries come from the gnu target with crt-static: glibc links
//! statically as long as nothing resolves names through NSS, and neither the
//! operator (it reaches the API server by address) nor the launcher does.

use crate::util::{run, step, Paths};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const CHART: &str = "charts/trainingjob-operator";

/// Builds the operator and the launcher, static, in release mode, and
/// returns the folder that holds them.
pub fn static_binaries(paths: &Paths) -> Result<PathBuf> {
    step("building the operator and the launcher (static, release)");
    run(Command::new("cargo")
        .current_dir(&paths.root)
        // A target dir of its own: RUSTFLAGS differ from the normal build's,
        // and sharing one would rebuild every crate each time we switch.
        .env("CARGO_TARGET_DIR", paths.root.join("target/static"))
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            TARGET,
            "--workspace",
            "--bin",
            "trainingjob-operator",
            "--bin",
            "launcher",
        ]))
    .context("building the static binaries")?;
    Ok(paths
        .root
        .join("target/static")
        .join(TARGET)
        .join("release"))
}

/// The chart's version and appVersion, read from its Chart.yaml.
fn chart_versions(paths: &Paths) -> Result<(String, String)> {
    let chart = std::fs::read_to_string(paths.root.join(CHART).join("Chart.yaml"))
        .context("reading the chart's Chart.yaml")?;
    let field = |name: &str| {
        chart
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().trim_matches('"').to_string())
            .with_context(|| format!("the chart's Chart.yaml has no {name}"))
    };
    Ok((field("version:")?, field("appVersion:")?))
}

/// The chart's default image: `image.repository` in values.yaml, tagged
/// with the chart's appVersion (what the chart pulls when no tag is set).
pub fn chart_image(paths: &Paths) -> Result<String> {
    let values = std::fs::read_to_string(paths.root.join(CHART).join("values.yaml"))
        .context("reading the chart's values.yaml")?;
    let repository = values
        .lines()
        .skip_while(|l| !l.starts_with("image:"))
        .find_map(|l| l.trim().strip_prefix("repository:"))
        .map(|v| v.trim().trim_matches('"').to_string())
        .context("the chart's values.yaml has no image.repository")?;
    Ok(format!("{repository}:{}", chart_versions(paths)?.1))
}

/// `REGISTRY/REPO[:TAG]` with the chart's appVersion as the tag when none
/// is given (a `:` after the last `/` is a tag; before it, a port).
pub fn with_default_tag(paths: &Paths, reference: &str) -> Result<String> {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || last.contains('@') {
        return Ok(reference.to_string());
    }
    Ok(format!("{reference}:{}", chart_versions(paths)?.1))
}

/// `cargo xtask release --out DIR`: what a platform team ships. The
/// operator's image as an OCI archive named `image` (default: the chart's
/// own image), and the chart packaged by `helm package`.
pub fn release(paths: &Paths, out: &Path, image: Option<&str>) -> Result<()> {
    let image = match image {
        Some(i) => with_default_tag(paths, i)?,
        None => chart_image(paths)?,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (version, app_version) = chart_versions(paths)?;
    let archive = out.join(format!("trainingjob-operator-{app_version}.oci.tar"));
    crate::images::export_operator(paths, &image, Some(&archive), false)?;
    let helm = crate::helm::helm(paths)?.join("helm");
    run(Command::new(helm)
        .current_dir(&paths.root)
        .args(["package", CHART, "--destination"])
        .arg(out)
        .stdout(Stdio::null()))
    .context("helm package")?;
    let chart = out.join(format!("trainingjob-operator-{version}.tgz"));
    step(format!(
        "release {app_version}: {} (image {image}) and {}",
        archive.display(),
        chart.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_without_a_tag_gets_the_charts_app_version() {
        let paths = Paths::new().unwrap();
        let (_, app) = chart_versions(&paths).unwrap();
        for (given, want) in [
            (
                "registry.example:5000/team/tjo",
                format!("registry.example:5000/team/tjo:{app}"),
            ),
            (
                "registry.example/tjo:1.2",
                "registry.example/tjo:1.2".to_string(),
            ),
            (
                "r.example/tjo@sha256:ab",
                "r.example/tjo@sha256:ab".to_string(),
            ),
        ] {
            assert_eq!(with_default_tag(&paths, given).unwrap(), want);
        }
        assert!(chart_image(&paths).unwrap().ends_with(&format!(":{app}")));
    }
}
