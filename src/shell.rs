//! Shell-form detection: a command whose trainer would be a shell running a
//! string (`sh -c "..."`), which does not forward SIGTERM, so the trainer is
//! SIGKILLed without saving. The CRD refuses what CEL can see (see
//! `api/schema.rs`, which builds its rule from the lists here, so both agree);
//! this is the operator's own check, for objects stored before a rule existed
//! and for the pod builder.
//!
//! The effective argv is `command ++ args`. Each word gets a class (see
//! [`Class`]); the command is shell form when the classes read
//!
//! ```text
//! [wrapper (its options and operands)...] shell [shell options...] -c
//! ```
//!
//! Wrappers are programs that exec their operand (`env -i X=1`, `busybox`,
//! `tini --`, `timeout -s KILL 10`, `nice -n 5`, `gosu user`, ...), matched by
//! basename like shells; any word containing `$(` counts as a shell, since
//! the kubelet expands `$(VAR)` from the environment. A shell flag cluster
//! that contains `c` (`-c`, `-lc`, `-ec`) is `-c`; shell flags may come before
//! it (`bash -e -o pipefail -c`).
//!
//! What cannot be caught, here or at admission:
//! - a script or binary that runs `sh -c` itself (`["./run.sh"]`,
//!   `["python", "-c", "os.system(...)"]`, `make train`): only the argv is read;
//! - a shell or wrapper under another name (`/opt/x/mysh`, a symlink, a
//!   versioned `bash5.2`), or a wrapper not listed here;
//! - a command string packed into one word (`env -S "sh -c ..."`,
//!   `su -c ...` style tools, `flock -c`);
//! - a word after a wrapper's option that this module takes for the option's
//!   argument when it is in fact the program (`env -i python ...` is fine,
//!   but an unlisted option arity can hide a shell behind a wrapper).
//!
//! The admission rule reads only the first [`ADMISSION_WORDS`] words of
//! `command ++ args` (CEL's cost budget); this check reads them all.

/// Shells that run their `-c` argument as a command string.
pub const SHELLS: &[&str] = &[
    "sh", "bash", "rbash", "dash", "ash", "hush", "zsh", "ksh", "ksh93", "mksh", "lksh", "pdksh",
    "oksh", "yash", "posh", "fish", "csh", "tcsh",
];

/// Programs that exec the rest of their argv, possibly after options and
/// operands of their own (`timeout 10`, `nice -n 5`, `env X=1`).
pub const WRAPPERS: &[&str] = &[
    "env",
    "busybox",
    "tini",
    "tini-static",
    "dumb-init",
    "catatonit",
    "timeout",
    "nice",
    "nohup",
    "stdbuf",
    "setsid",
    "chrt",
    "taskset",
    "ionice",
    "numactl",
    "exec",
    "command",
    "sudo",
    "doas",
    "time",
    "strace",
    "ltrace",
    "unshare",
    "setpriv",
    "prlimit",
    "uv",
    "conda",
    "mamba",
    "micromamba",
    "pixi",
    "poetry",
    "pipenv",
    "run",
];

/// Wrappers whose first operand is not the program (a user, a new root or
/// a lock file): `gosu nobody sh -c ...`.
pub const OPERAND_WRAPPERS: &[&str] = &[
    "gosu",
    "su-exec",
    "setuidgid",
    "s6-setuidgid",
    "chroot",
    "chpst",
];

/// Words of `command ++ args` the admission rule reads.
pub const ADMISSION_WORDS: usize = 16;

/// What a word of the argv is, for shell-form detection. Each has a
/// one-letter code; the CEL rule matches a regex on the codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A shell (by basename), or a word with `$(` in it.
    Shell,
    /// A wrapper that execs its operand.
    Wrapper,
    /// A wrapper whose first operand is not the program.
    OperandWrapper,
    /// `--`: the end of options.
    EndOfOptions,
    /// A short-flag cluster containing `c` (`-c`, `-lc`, `-ec`).
    DashC,
    /// A shell flag that takes the next word (`-o pipefail`, `+O`, `--rcfile`).
    FlagWithValue,
    /// Any other flag (`-e`, `+x`, `--norc`, `--foreground`).
    Flag,
    /// A wrapper's operand: `NAME=value`, a number, a duration, a CPU list.
    Operand,
    /// Anything else: a program, a script, a value.
    Other,
}

impl Class {
    /// The letter the admission rule's regex uses.
    pub const fn code(self) -> char {
        match self {
            Class::Shell => 'S',
            Class::Wrapper => 'W',
            Class::OperandWrapper => 'U',
            Class::EndOfOptions => 'd',
            Class::DashC => 'c',
            Class::FlagWithValue => 'o',
            Class::Flag => 'f',
            Class::Operand => 'n',
            Class::Other => 'x',
        }
    }
}

/// The codes of a shell-form argv, as a regex: wrappers with their flags,
/// operands and flag values, then a shell, its flags, and `-c`.
pub const SHELL_FORM_REGEX: &str = "^((W|Ux?)(W|Ux?|[dcof]x?|n)*)?S(f|o.)*c";

/// The class of one word of the argv.
pub fn classify(word: &str) -> Class {
    let base = word.rsplit('/').next().unwrap_or(word);
    let dash = word.starts_with('-');
    let flag = dash || word.starts_with('+');
    if SHELLS.contains(&base) || word.contains("$(") {
        Class::Shell
    } else if WRAPPERS.contains(&base) {
        Class::Wrapper
    } else if OPERAND_WRAPPERS.contains(&base) {
        Class::OperandWrapper
    } else if word == "--" {
        Class::EndOfOptions
    } else if dash && !word.starts_with("--") && word.contains('c') {
        Class::DashC
    } else if (flag && (word.ends_with('o') || word.ends_with('O')))
        || word == "--rcfile"
        || word == "--init-file"
    {
        Class::FlagWithValue
    } else if flag {
        Class::Flag
    } else if word.contains('=') || word.starts_with(|c: char| c.is_ascii_digit()) {
        Class::Operand
    } else {
        Class::Other
    }
}

/// The shell and what it runs, when `command ++ args` is shell form.
pub fn shell_form(command: &[String], args: &[String]) -> Option<String> {
    let argv: Vec<&String> = command.iter().chain(args).collect();
    let classes: Vec<Class> = argv.iter().map(|w| classify(w)).collect();
    let shell = shell_index(&classes)?;
    let dash_c = dash_c_after(&classes, shell)?;
    let shown = argv[..=(dash_c + 1).min(argv.len() - 1)]
        .iter()
        .map(|w| w.as_str())
        .collect::<Vec<_>>();
    Some(shown.join(" "))
}

/// Where the shell is, when every word before it is a wrapper, a wrapper's
/// flag or operand (the same grammar as [`SHELL_FORM_REGEX`]).
fn shell_index(classes: &[Class]) -> Option<usize> {
    use Class::*;
    let mut i = 0;
    // A wrapper must come first: `python run sh -c` is python's business.
    if !matches!(classes.first()?, Wrapper | OperandWrapper | Shell) {
        return None;
    }
    loop {
        match *classes.get(i)? {
            Shell => return Some(i),
            Wrapper | Operand => i += 1,
            OperandWrapper | EndOfOptions | DashC | FlagWithValue | Flag => {
                i += 1;
                if classes.get(i) == Some(&Other) {
                    i += 1;
                }
            }
            Other => return None,
        }
    }
}

/// Where `-c` is, when only shell flags (and their values) come between it
/// and the shell.
fn dash_c_after(classes: &[Class], shell: usize) -> Option<usize> {
    let mut i = shell + 1;
    loop {
        match *classes.get(i)? {
            Class::DashC => return Some(i),
            Class::Flag => i += 1,
            Class::FlagWithValue => i += 2,
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn caught(command: &[&str], args: &[&str]) -> bool {
        shell_form(&v(command), &v(args)).is_some()
    }

    #[test]
    fn shell_form_is_caught_through_wrappers_flags_and_args() {
        for (command, args) in [
            (&["sh", "-c", "x"][..], &[][..]),
            (&["/bin/bash", "-lc", "x"], &[]),
            (&["bash"], &["-c", "x"]),
            (&["/usr/bin/env", "sh", "-c", "x"], &[]),
            (&["env", "-i", "A=1", "bash", "-c", "x"], &[]),
            (&["busybox", "sh", "-c", "x"], &[]),
            (&["tini", "--", "sh", "-c", "x"], &[]),
            (&["dumb-init", "--single-child", "bash", "-c", "x"], &[]),
            (&["timeout", "-s", "KILL", "10", "sh", "-c", "x"], &[]),
            (&["nice", "-n", "5", "nohup", "sh", "-c", "x"], &[]),
            (&["stdbuf", "-oL", "setsid", "-w", "bash", "-c", "x"], &[]),
            (
                &["taskset", "-c", "0-3", "chrt", "-f", "99", "sh", "-c"],
                &[],
            ),
            (&["ionice", "-c", "2", "-n", "0", "zsh", "-c", "x"], &[]),
            (&["gosu", "nobody", "sh", "-c", "x"], &[]),
            (&["sh"], &["-e", "-c", "x"]),
            (&["bash", "-e"], &["-c", "x"]),
            (&["bash", "-o", "pipefail", "-c", "x"], &[]),
            (&["bash", "-eo", "pipefail", "-xc", "x"], &[]),
            (&["/opt/conda/bin/bash", "-c", "x"], &[]),
            (&["$(SHELL_BIN)", "-c", "x"], &[]),
            (&["env", "$(SH)", "-c", "x"], &[]),
            (&["exec", "bash", "--norc", "-c", "x"], &[]),
        ] {
            assert!(caught(command, args), "{command:?} + {args:?} got through");
        }
    }

    #[test]
    fn exec_form_is_left_alone() {
        for (command, args) in [
            (&["python3", "train.py"][..], &[][..]),
            (&["python3", "-c", "print(1)"], &[]),
            (&["bash", "script.sh"], &[]),
            (&["bash", "--norc", "run.sh"], &[]),
            (&["bash", "run.sh", "-c", "cfg.yaml"], &[]),
            (&["bash", "--", "-c"], &[]),
            (&["env", "python", "-c", "x"], &[]),
            (&["timeout", "10", "python", "sh", "-c"], &[]),
            (
                &["torchrun", "--nproc_per_node=8", "train.py"],
                &["sh", "-c"],
            ),
            (&["nice", "-n", "5", "python", "train.py"], &[]),
            (&["sh"], &[]),
        ] {
            assert!(!caught(command, args), "{command:?} + {args:?} refused");
        }
    }

    #[test]
    fn the_message_shows_the_shell_and_its_string() {
        let shown = shell_form(&v(&["tini", "--", "sh", "-c", "python x.py", "y"]), &[]);
        assert_eq!(shown.as_deref(), Some("tini -- sh -c python x.py"));
    }
}
