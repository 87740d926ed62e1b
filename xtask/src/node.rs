//! The local node: Debian's containerd, runc and CNI plugins, and the kubelet
//! of the pinned release, registered with the local control plane.

use crate::util::Paths;
use anyhow::Result;

pub fn up(_paths: &Paths) -> Result<()> {
    Ok(())
}

pub fn down(_paths: &Paths) -> Result<()> {
    Ok(())
}

pub fn status(_paths: &Paths) -> Result<bool> {
    Ok(true)
}

pub fn fake_nodes(_paths: &Paths, _count: u32) -> Result<()> {
    anyhow::bail!("--fake-nodes is not implemented yet")
}
