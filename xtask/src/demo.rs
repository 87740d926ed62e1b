//! `cargo xtask demo`: the README's main command.

use crate::controlplane;
use crate::util::{run, step, Paths};
use anyhow::Result;

pub fn run_demo(paths: &Paths) -> Result<()> {
    crate::cluster_up(paths, false)?;
    crate::test::install_crd(paths)?;
    step("applying examples/");
    run(controlplane::kubectl(paths)?
        .args(["apply", "--server-side", "-f"])
        .arg(paths.root.join("examples")))?;
    run(controlplane::kubectl(paths)?.args(["get", "trainingjobs", "--all-namespaces"]))?;
    controlplane::print_usage(paths);
    Ok(())
}
