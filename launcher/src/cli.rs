//! Command line and environment. Hand-parsed: a handful of flags do not
//! justify an argument-parsing crate in a binary that goes into every
//! training pod.

use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: launcher run [FLAGS] [--] COMMAND...
       launcher install DEST

Runs COMMAND as the trainer: forwards SIGTERM/SIGINT/SIGUSR1/SIGUSR2/SIGHUP to it,
reaps zombies, resumes it from the latest complete checkpoint and writes a JSON
report to the termination-message path. See docs/checkpoint-contract.md.
`install` copies this binary to DEST (the operator's init container uses it
to put the launcher into a volume the trainer container shares).

flags (each wins over the environment variable beside it):
  --checkpoint-dir DIR          TJ_CHECKPOINT_DIR        where the trainer saves checkpoints
  --report PATH                 TJ_REPORT_PATH           default /dev/termination-log
  --report-max-bytes B          TJ_REPORT_MAX_BYTES      report size bound, 64..4096, default 4096
  --grace-seconds N             TJ_GRACE_SECONDS         seconds from SIGTERM to SIGKILL, default 30
  --attempt A                   TJ_ATTEMPT               attempt number, for the report
  --rank R                      TJ_RANK                  rank, default 0 (lock file, cleanup)
  --lock-timeout-seconds S      TJ_LOCK_TIMEOUT_SECONDS  wait for the rank's lock, default 120
  --shm-dir DIR                 TJ_SHM_DIR               default /dev/shm
  --probe                       TJ_PROBE=1               measure the checkpoint volume's write speed
also read: TJ_PROBE_BYTES (default 67108864), TJ_VERIFY_HASHES (default 1)
exported to COMMAND: TJ_RESUME_PATH, TJ_RESUME_STEP, TJ_CHECKPOINT_DIR,
TJ_GRACE_SECONDS, TJ_DEADLINE_SECONDS, TJ_DEADLINE_FILE, TJ_PROGRESS_FILE,
and TJ_ATTEMPT, TJ_RANK when given
exit status: the trainer's (128+N if killed by signal N); 2 usage error;
75 the rank's lock stayed held for --lock-timeout-seconds (a trainer of an
earlier attempt is still alive); 126/127 COMMAND could not be started";

/// The kubelet never reads more than this much of one container's
/// termination message, whatever budget the operator passes.
pub const REPORT_MAX_BYTES_CEILING: usize = crate::report::MAX_REPORT_BYTES;
/// The smallest budget a report still fits in (`version`, `state` and the
/// `truncated` mark).
pub const REPORT_MAX_BYTES_FLOOR: usize = 64;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub checkpoint_dir: Option<PathBuf>,
    pub report_path: PathBuf,
    pub report_max_bytes: usize,
    pub shm_dir: PathBuf,
    pub probe: bool,
    pub probe_bytes: u64,
    pub grace_seconds: f64,
    pub attempt: Option<u32>,
    pub rank: Option<u32>,
    pub lock_timeout_seconds: f64,
    pub verify_hashes: bool,
    pub command: Vec<OsString>,
}

impl Config {
    /// Only one launcher may delete temporaries in a shared checkpoint
    /// directory: the others start at different times, and a late one could
    /// delete a save that an early rank's trainer has begun. Rank 0 (or a
    /// single-process job) cleans before its trainer starts, and no rank can
    /// reach a save before rank 0 has joined the process group.
    pub fn cleans_temporaries(&self) -> bool {
        self.rank.unwrap_or(0) == 0
    }
}

pub enum Parsed {
    Run(Config),
    Install(PathBuf),
    Help,
}

fn truthy(v: &str) -> bool {
    matches!(v.trim(), "1" | "true" | "yes" | "on")
}

fn seconds(what: &str, v: &str) -> Result<f64, String> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|g| g.is_finite() && *g >= 0.0)
        .ok_or_else(|| format!("{what}={v:?} is not a number of seconds"))
}

fn number<T: std::str::FromStr>(what: &str, v: &str) -> Result<T, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{what}={v:?} is not a whole number"))
}

fn report_bytes(what: &str, v: &str) -> Result<usize, String> {
    let b: usize = number(what, v)?;
    if b < REPORT_MAX_BYTES_FLOOR {
        return Err(format!(
            "{what}={b} is below {REPORT_MAX_BYTES_FLOOR}, too small for any report"
        ));
    }
    Ok(b.min(REPORT_MAX_BYTES_CEILING))
}

/// The configuration the environment alone gives.
fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut cfg = Config {
        checkpoint_dir: nonempty("TJ_CHECKPOINT_DIR").map(PathBuf::from),
        report_path: PathBuf::from(
            nonempty("TJ_REPORT_PATH").unwrap_or_else(|| "/dev/termination-log".into()),
        ),
        report_max_bytes: crate::report::MAX_REPORT_BYTES,
        shm_dir: PathBuf::from(nonempty("TJ_SHM_DIR").unwrap_or_else(|| "/dev/shm".into())),
        probe: nonempty("TJ_PROBE").is_some_and(|v| truthy(&v)),
        probe_bytes: 64 << 20,
        grace_seconds: 30.0,
        // Attempt and rank from the environment are informational: a
        // malformed value must not stop training, so it is ignored rather
        // than rejected. The operator passes them as flags.
        attempt: nonempty("TJ_ATTEMPT").and_then(|v| v.trim().parse().ok()),
        rank: nonempty("TJ_RANK").and_then(|v| v.trim().parse().ok()),
        lock_timeout_seconds: 120.0,
        verify_hashes: nonempty("TJ_VERIFY_HASHES").is_none_or(|v| truthy(&v)),
        command: Vec::new(),
    };
    if let Some(v) = nonempty("TJ_PROBE_BYTES") {
        cfg.probe_bytes = v
            .trim()
            .parse()
            .map_err(|_| format!("TJ_PROBE_BYTES={v:?} is not a byte count"))?;
    }
    if let Some(v) = nonempty("TJ_GRACE_SECONDS") {
        cfg.grace_seconds = seconds("TJ_GRACE_SECONDS", &v)?;
    }
    if let Some(v) = nonempty("TJ_REPORT_MAX_BYTES") {
        cfg.report_max_bytes = report_bytes("TJ_REPORT_MAX_BYTES", &v)?;
    }
    if let Some(v) = nonempty("TJ_LOCK_TIMEOUT_SECONDS") {
        cfg.lock_timeout_seconds = seconds("TJ_LOCK_TIMEOUT_SECONDS", &v)?;
    }
    Ok(cfg)
}

/// Applies one flag that takes a value.
fn apply(cfg: &mut Config, flag: &str, v: OsString) -> Result<(), String> {
    let s = v.to_string_lossy();
    match flag {
        "--checkpoint-dir" => cfg.checkpoint_dir = Some(v.into()),
        "--report" => cfg.report_path = v.into(),
        "--report-max-bytes" => cfg.report_max_bytes = report_bytes(flag, &s)?,
        "--shm-dir" => cfg.shm_dir = v.into(),
        "--grace-seconds" => cfg.grace_seconds = seconds(flag, &s)?,
        "--attempt" => cfg.attempt = Some(number(flag, &s)?),
        "--rank" => cfg.rank = Some(number(flag, &s)?),
        "--lock-timeout-seconds" => cfg.lock_timeout_seconds = seconds(flag, &s)?,
        _ => return Err(format!("unknown flag {flag}")),
    }
    Ok(())
}

/// `args` excludes the program name.
pub fn parse(args: &[OsString], env: impl Fn(&str) -> Option<String>) -> Result<Parsed, String> {
    let mut it = args.iter();
    match it.next().and_then(|a| a.to_str()) {
        Some("run") => {}
        Some("install") => {
            return match (it.next(), it.next()) {
                (Some(dest), None) => Ok(Parsed::Install(PathBuf::from(dest))),
                _ => Err("install takes exactly one argument: the destination path".into()),
            };
        }
        Some("-h" | "--help" | "help") | None => return Ok(Parsed::Help),
        Some(other) => return Err(format!("unknown subcommand {other:?}")),
    }
    let mut cfg = from_env(env)?;
    let rest: Vec<&OsString> = it.collect();
    let mut i = 0;
    while i < rest.len() {
        let a = rest[i].to_string_lossy();
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with("--") {
            break;
        }
        match (a.split_once('='), a.as_ref()) {
            (_, "--help") => return Ok(Parsed::Help),
            (None, "--probe") => cfg.probe = true,
            (Some((flag, v)), _) => apply(&mut cfg, flag, v.into())?,
            (None, flag) => {
                i += 1;
                let v = rest.get(i).ok_or_else(|| format!("{flag} needs a value"))?;
                apply(&mut cfg, flag, (*v).clone())?;
            }
        }
        i += 1;
    }
    cfg.command = rest[i.min(rest.len())..]
        .iter()
        .map(|s| (*s).clone())
        .collect();
    if cfg.command.is_empty() {
        return Err("no command given after --".into());
    }
    Ok(Parsed::Run(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn run(a: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(&args(a), |k| {
            env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
        })? {
            Parsed::Run(c) => Ok(c),
            Parsed::Install(d) => Err(format!("install {}", d.display())),
            Parsed::Help => Err("help".into()),
        }
    }

    #[test]
    fn install_takes_one_destination() {
        assert_eq!(
            run(&["install", "/tj/launcher"], &[]),
            Err("install /tj/launcher".into())
        );
        assert!(run(&["install"], &[]).is_err());
        assert!(run(&["install", "a", "b"], &[]).is_err());
    }

    #[test]
    fn defaults() {
        let c = run(&["run", "--", "python3", "t.py"], &[]).unwrap();
        assert_eq!(c.report_path, PathBuf::from("/dev/termination-log"));
        assert_eq!(c.shm_dir, PathBuf::from("/dev/shm"));
        assert_eq!(c.checkpoint_dir, None);
        assert!(!c.probe && c.verify_hashes);
        assert_eq!(c.grace_seconds, 30.0);
        assert_eq!(c.command, args(&["python3", "t.py"]));
        assert!(c.cleans_temporaries());
    }

    #[test]
    fn flags_override_env() {
        let env = [
            ("TJ_CHECKPOINT_DIR", "/env"),
            ("TJ_REPORT_PATH", "/r"),
            ("TJ_PROBE", "1"),
            ("TJ_GRACE_SECONDS", "45"),
            ("TJ_ATTEMPT", "3"),
            ("TJ_RANK", "2"),
        ];
        let c = run(
            &[
                "run",
                "--checkpoint-dir=/flag",
                "--shm-dir",
                "/s",
                "--",
                "x",
                "--probe",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.checkpoint_dir, Some(PathBuf::from("/flag")));
        assert_eq!(c.report_path, PathBuf::from("/r"));
        assert_eq!(c.shm_dir, PathBuf::from("/s"));
        assert!(c.probe);
        assert_eq!(
            (c.grace_seconds, c.attempt, c.rank),
            (45.0, Some(3), Some(2))
        );
        assert!(!c.cleans_temporaries());
        // Flags after the command belong to the command.
        assert_eq!(c.command, args(&["x", "--probe"]));
    }

    #[test]
    fn operator_flags_win_over_the_templates_env() {
        // A template that sets these must not turn the report or the fence off.
        let env = [
            ("TJ_REPORT_PATH", "/dev/null"),
            ("TJ_REPORT_MAX_BYTES", "100"),
            ("TJ_GRACE_SECONDS", "5"),
            ("TJ_ATTEMPT", "9"),
            ("TJ_RANK", "9"),
            ("TJ_LOCK_TIMEOUT_SECONDS", "1"),
        ];
        let c = run(
            &[
                "run",
                "--checkpoint-dir",
                "/ck",
                "--report",
                "/dev/termination-log",
                "--grace-seconds",
                "42.5",
                "--attempt=3",
                "--rank",
                "1",
                "--report-max-bytes",
                "1024",
                "--lock-timeout-seconds",
                "7",
                "--",
                "python3",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(c.report_path, PathBuf::from("/dev/termination-log"));
        assert_eq!(c.report_max_bytes, 1024);
        assert_eq!(c.grace_seconds, 42.5);
        assert_eq!((c.attempt, c.rank), (Some(3), Some(1)));
        assert_eq!(c.lock_timeout_seconds, 7.0);

        let c = run(&["run", "--", "x"], &env).unwrap();
        assert_eq!(c.report_max_bytes, 100);
        assert_eq!(c.lock_timeout_seconds, 1.0);
        let c = run(&["run", "--", "x"], &[]).unwrap();
        assert_eq!((c.report_max_bytes, c.lock_timeout_seconds), (4096, 120.0));
    }

    #[test]
    fn report_budget_bounds() {
        // The kubelet reads at most 4 KiB of one container's message.
        let c = run(&["run", "--report-max-bytes", "12288", "--", "x"], &[]).unwrap();
        assert_eq!(c.report_max_bytes, 4096);
        assert!(run(&["run", "--report-max-bytes", "63", "--", "x"], &[]).is_err());
        assert!(run(&["run", "--report-max-bytes", "4k", "--", "x"], &[]).is_err());
        assert!(run(&["run", "--rank", "-1", "--", "x"], &[]).is_err());
        assert!(run(&["run", "--grace-seconds", "soon", "--", "x"], &[]).is_err());
        assert!(run(&["run", "--attempt", "--", "x"], &[]).is_err());
    }

    #[test]
    fn command_without_separator() {
        let c = run(&["run", "--probe", "python3", "--x"], &[]).unwrap();
        assert_eq!(c.command, args(&["python3", "--x"]));
    }

    #[test]
    fn errors() {
        assert!(run(&["run", "--"], &[]).is_err());
        assert!(run(&["run", "--report"], &[]).is_err());
        assert!(run(&["run", "--bogus", "--", "x"], &[]).is_err());
        assert!(run(&["walk", "--", "x"], &[]).is_err());
        assert!(run(&["run", "--", "x"], &[("TJ_GRACE_SECONDS", "soon")]).is_err());
        assert_eq!(run(&["--help"], &[]), Err("help".into()));
    }
}
