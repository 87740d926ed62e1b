//! Who gets a forwarded signal.
//!
//! The rule: the trainer process itself, never its process group, and never
//! its descendants.
//!
//! * Not the group: PyTorch DataLoader workers treat a SIGTERM from anyone but
//!   their parent as fatal (they re-raise it), and the trainer's SIGCHLD
//!   handler then raises "DataLoader worker ... is killed by signal" in the
//!   middle of the step, before any checkpoint. The trainer stops its own
//!   workers once it has saved.
//! * Through shells: if the direct child is a shell (`sh -c "python t.py; ..."`)
//!   that forked the real trainer, the shell would not pass SIGTERM on (and a
//!   non-interactive shell dies of it, orphaning the trainer while the
//!   container goes down). So the signal goes to the shell's children instead
//!   of the shell, descending through nested shells; a shell with no children
//!   (between commands) gets it itself. Children of a non-shell (the trainer's
//!   workers) are never signalled.
//!
//! Shells that exec their last command (`bash -c "python t.py"`) need nothing
//! special: by the time a signal comes, the child is python.

use std::fs;

const SHELLS: [&str; 11] = [
    "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox", "fish", "tcsh", "csh",
];

pub fn is_shell_name(name: &str) -> bool {
    SHELLS.contains(&name)
}

/// Whether `pid` runs a shell, by its executable and, if that is unreadable
/// (another user's process), its command name.
pub fn is_shell(pid: i32) -> bool {
    if let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) {
        if let Some(n) = exe.file_name().and_then(|n| n.to_str()) {
            return is_shell_name(n);
        }
    }
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| is_shell_name(c.trim_end()))
}

/// Direct children of `pid`, from /proc/<pid>/task/*/children, or by scanning
/// every process's parent where the kernel lacks that file.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        let mut any = false;
        for t in tasks.flatten() {
            if let Ok(s) = fs::read_to_string(t.path().join("children")) {
                any = true;
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
        if any {
            return out;
        }
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        let Some(child) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(p.path().join("stat")) {
            if parent_from_stat(&stat) == Some(pid) {
                out.push(child);
            }
        }
    }
    out
}

/// The ppid field of /proc/<pid>/stat; the command name before it is in
/// parentheses and may itself contain spaces and parentheses.
pub fn parent_from_stat(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// The processes a signal for the trainer goes to, given the launcher's
/// direct child. Pure over the two lookups so the rule can be unit-tested.
pub fn targets_with(
    child: i32,
    is_shell: &impl Fn(i32) -> bool,
    children: &impl Fn(i32) -> Vec<i32>,
) -> Vec<i32> {
    fn walk(
        pid: i32,
        depth: u32,
        is_shell: &impl Fn(i32) -> bool,
        children: &impl Fn(i32) -> Vec<i32>,
        out: &mut Vec<i32>,
    ) {
        if depth < 8 && is_shell(pid) {
            let kids = children(pid);
            if !kids.is_empty() {
                for k in kids {
                    walk(k, depth + 1, is_shell, children, out);
                }
                return;
            }
        }
        out.push(pid);
    }
    let mut out = Vec::new();
    walk(child, 0, is_shell, children, &mut out);
    out
}

pub fn targets(child: i32) -> Vec<i32> {
    targets_with(child, &is_shell, &children)
}

#[cfg(test)]
mod tests {
    use super::*;

    // pid 1: sh -> 2: python (-> 5, 6 workers); 3: bash -> 4: sh (no kids)
    fn shell(p: i32) -> bool {
        matches!(p, 1 | 3 | 4 | 10 | 11)
    }
    fn kids(p: i32) -> Vec<i32> {
        match p {
            1 => vec![2],
            2 => vec![5, 6],
            10 => vec![11, 12],
            11 => vec![13],
            _ => vec![],
        }
    }

    #[test]
    fn trainer_itself_not_its_workers() {
        assert_eq!(targets_with(2, &shell, &kids), vec![2]);
    }

    #[test]
    fn through_a_shell_to_the_trainer_only() {
        assert_eq!(targets_with(1, &shell, &kids), vec![2]);
    }

    #[test]
    fn idle_shell_gets_it_itself() {
        assert_eq!(targets_with(4, &shell, &kids), vec![4]);
    }

    #[test]
    fn nested_shells_and_pipelines() {
        assert_eq!(targets_with(10, &shell, &kids), vec![13, 12]);
    }

    #[test]
    fn stat_parsing() {
        assert_eq!(parent_from_stat("42 (py) thon) S 7 42 42 0"), Some(7));
        assert_eq!(parent_from_stat("garbage"), None);
        assert!(is_shell_name("dash") && !is_shell_name("python3"));
    }
}
