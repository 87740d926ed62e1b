//! What the operator prints is read by `kubectl logs` and by log
//! collectors, not by a terminal: no colour escape codes in it. The soak
//! found them in every line of its operators' logs.

use std::process::Command;

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainingjob-operator"))
        .args(["run", "--kubeconfig", "/nonexistent/kubeconfig"])
        .args(["--listen", "127.0.0.1:0"])
        // tracing-subscriber leaves colours off when NO_COLOR is set: the
        // test must see what a pod's stdout gets without it.
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .output()
        .expect("the operator binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "no kubeconfig: it must exit non-zero"
    );
    assert!(text.contains("cannot read kubeconfig"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes in the log: {text:?}");
}
