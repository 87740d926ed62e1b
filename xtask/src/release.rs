//! The project's own binaries, built static for a `FROM scratch` image.
//!
//! The musl target cannot be installed here (rustup needs the network), so
//! the static binaries come from the gnu target with crt-static: glibc links
//! statically as long as nothing resolves names through NSS, and neither the
//! operator (it reaches the API server by address) nor the launcher does.

use crate::util::{run, step, Paths};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

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
