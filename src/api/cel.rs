//! CEL rules the API server checks at admission, built from the same
//! constants the operator's own checks use, so both refuse the same specs.
//!
//! Cost: the API server estimates each rule's worst case from the schema's
//! bounds and refuses a CRD whose rules could exceed its budget. So rules
//! about the trainer bind it once (`[trainer].all(t, ...)`, CEL's idiom for a
//! let) instead of looping over every container, and the shell rule reads a
//! fixed number of words.

use crate::shell::{self, Class, ADMISSION_WORDS};
use serde_json::{json, Value};

/// Paths the operator mounts into the trainer (its launcher at /tj, the
/// memory-backed /dev/shm) or reads from it (the termination message),
/// after any run of `/` and `./` segments. `..` is refused on its own.
pub const RESERVED_PATH_REGEX: &str = r"^(/|\./)*(tj|dev/(/|\./)*(shm|termination-log))(/.*)?$";
/// A `..` segment, which CEL cannot resolve.
pub const DOTDOT_REGEX: &str = r"(^|/)\.\.(/|$)";
/// Environment variables the operator sets on the trainer besides `TJ_*`.
pub const OPERATOR_ENV: &[&str] = &["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"];
/// Prefix of the names of the volumes and containers the operator adds.
pub const RESERVED_NAME_PREFIX: &str = "tj-";

/// A rule with its message.
pub fn rule(rule: impl Into<String>, message: &str) -> Value {
    json!({"rule": rule.into(), "message": message})
}

/// `body` (which reads the trainer as `t`) for the trainer among the
/// containers `list`: the one named `trainer`, or the only one. A let
/// (`[x].all(t, ...)`) would be cheaper, but the cost estimator loses the
/// schema's bounds through it, so every container is visited.
pub fn for_trainer(list: &str, body: &str) -> String {
    format!("{list}.all(t, !({list}.size() == 1 || t.name == 'trainer') || ({body}))")
}

/// A CEL string literal: CEL reads `\\` and `\'` as escapes, so a regex's
/// backslashes must be doubled.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A CEL list literal of strings.
fn list(items: impl IntoIterator<Item = String>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|s| quote(&s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// Whether the word `a`'s basename is one of `names`, without a regex:
/// `endsWith` with a literal costs the literal's length, not the word's.
fn basename_in(a: &str, names: &[&str]) -> String {
    let plain = list(names.iter().map(|n| n.to_string()));
    let slashed = list(names.iter().map(|n| format!("/{n}")));
    format!("({a} in {plain} || {slashed}.exists(s, {a}.endsWith(s)))")
}

/// The one-letter code of the word `a`, as [`shell::classify`] gives it.
fn class_of_word(a: &str) -> String {
    let flag = format!("({a}.startsWith('-') || {a}.startsWith('+'))");
    let digits = list((0..10).map(|d| d.to_string()));
    let arms = [
        (format!("({} || {a}.contains('$('))", basename_in(a, shell::SHELLS)), Class::Shell),
        (basename_in(a, shell::WRAPPERS), Class::Wrapper),
        (basename_in(a, shell::OPERAND_WRAPPERS), Class::OperandWrapper),
        (format!("{a} == '--'"), Class::EndOfOptions),
        (
            format!("({a}.startsWith('-') && !{a}.startsWith('--') && {a}.contains('c'))"),
            Class::DashC,
        ),
        (
            format!(
                "(({flag} && ({a}.endsWith('o') || {a}.endsWith('O'))) || {a} in ['--rcfile', '--init-file'])"
            ),
            Class::FlagWithValue,
        ),
        (flag.clone(), Class::Flag),
        (
            format!("({a}.contains('=') || {digits}.exists(d, {a}.startsWith(d)))"),
            Class::Operand,
        ),
    ];
    let mut expr = format!("'{}'", Class::Other.code());
    for (test, class) in arms.into_iter().rev() {
        expr = format!("({test} ? '{}' : {expr})", class.code());
    }
    expr
}

/// True when the trainer `t` is not shell form in the first
/// [`ADMISSION_WORDS`] words of `command ++ args`: their class letters,
/// concatenated, must not match [`shell::SHELL_FORM_REGEX`]. Spelled out
/// word by word because the cost estimator loses the words' length bound
/// through a let or a `map(...).join()`, and then refuses the rule.
pub fn trainer_not_shell_form() -> String {
    let argv = "(has(t.args) ? t.command + t.args : t.command)";
    let letters: Vec<String> = (0..ADMISSION_WORDS)
        .map(|i| {
            let word = format!("{argv}[{i}]");
            format!("(size({argv}) > {i} ? {} : '')", class_of_word(&word))
        })
        .collect();
    format!(
        "!has(t.command) || !({}).matches({})",
        letters.join(" + "),
        quote(shell::SHELL_FORM_REGEX)
    )
}

/// True when no environment variable of the trainer `t` is one the
/// operator sets.
pub fn trainer_env_not_reserved() -> String {
    format!(
        "!has(t.env) || t.env.all(e, !e.name.startsWith('TJ_') && !(e.name in {}))",
        list(OPERATOR_ENV.iter().map(|s| s.to_string()))
    )
}

/// True when none of the trainer `t`'s mounts matches `regex`.
pub fn trainer_mounts_not(regex: &str) -> String {
    format!(
        "!has(t.volumeMounts) || t.volumeMounts.all(m, !m.mountPath.matches({}))",
        quote(regex)
    )
}

/// True when no item of the list `self` has a name with the operator's prefix.
pub fn names_not_reserved() -> String {
    format!("self.all(x, !x.name.startsWith('{RESERVED_NAME_PREFIX}'))")
}
