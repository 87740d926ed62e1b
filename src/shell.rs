//! Shell-form detection: a command whose PID 1 would be a shell running a
//! string, which swallows SIGTERM. The CRD refuses what CEL can see; this is
//! the operator's own check, for objects stored before a rule existed.

/// The shell and what it runs, when `command`/`args` is shell form.
pub fn shell_form(command: &[String], args: &[String]) -> Option<String> {
    let shell = command.first()?;
    let base = shell.rsplit('/').next().unwrap_or(shell);
    if !matches!(
        base,
        "sh" | "bash" | "dash" | "ash" | "zsh" | "ksh" | "mksh"
    ) {
        return None;
    }
    let is_dash_c = |a: &String| {
        a.len() > 1
            && a.starts_with('-')
            && !a.starts_with("--")
            && a[1..].chars().all(|c| c.is_ascii_alphabetic())
            && a.contains('c')
    };
    (command.iter().skip(1).any(is_dash_c)
        || (command.len() == 1 && args.first().is_some_and(is_dash_c)))
    .then(|| {
        command
            .iter()
            .chain(args)
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shell_form_detection() {
        assert!(shell_form(&v(&["sh", "-c", "x"]), &[]).is_some());
        assert!(shell_form(&v(&["/bin/bash", "-lc", "x"]), &[]).is_some());
        assert!(shell_form(&v(&["bash"]), &v(&["-c", "x"])).is_some());
        assert!(shell_form(&v(&["bash", "script.sh"]), &[]).is_none());
        assert!(shell_form(&v(&["python3", "-c", "print(1)"]), &[]).is_none());
        assert!(shell_form(&v(&["bash", "--norc", "run.sh"]), &[]).is_none());
    }
}
