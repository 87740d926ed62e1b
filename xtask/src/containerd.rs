//! The node's containerd as a client sees it: where its socket is and how to
//! talk to it. Apart from `node`, which runs it, so that `images` can import
//! into it without depending on the node.

use crate::util::succeeds;
use std::path::Path;
use std::process::{Command, Stdio};

/// The node's own containerd, apart from any the machine may run.
pub const CONTAINERD_SOCKET: &str = "/run/tjo-containerd/containerd.sock";

/// `ctr` against the node's containerd, in the namespace the kubelet uses.
pub fn ctr() -> Command {
    let mut cmd = Command::new("ctr");
    cmd.args(["--address", CONTAINERD_SOCKET, "--namespace", "k8s.io"])
        .stdin(Stdio::null());
    cmd
}

pub fn containerd_ready() -> bool {
    Path::new(CONTAINERD_SOCKET).exists() && succeeds(ctr().arg("version"))
}
