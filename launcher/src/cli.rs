//! Command line and environment. Hand-parsed: four flags do not justify an
//! argument-parsing crate in a binary that goes into every training pod.

use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: launcher run [--checkpoint-dir DIR] [--report PATH] [--shm-dir DIR] [--probe] -- COMMAND...
       launcher install DEST

Runs COMMAND as the trainer: forwards SIGTERM/SIGINT/SIGUSR1/SIGUSR2/SIGHUP to it,
reaps zombies, resumes it from the latest complete checkpoint and writes a JSON
report to the termination-message path. See docs/checkpoint-contract.md.
`install` copies this binary to DEST (the operator's init container uses it
to put the launcher into a volume the trainer container shares).

flags (and the environment variables they override):
  --checkpoint-dir DIR  TJ_CHECKPOINT_DIR  where the trainer saves checkpoints
  --report PATH         TJ_REPORT_PATH     default /dev/termination-log
  --shm-dir DIR         TJ_SHM_DIR         default /dev/shm
  --probe               TJ_PROBE=1         measure the checkpoint volume's write speed
also read: TJ_GRACE_SECONDS (default 30), TJ_ATTEMPT, TJ_RANK, TJ_PROBE_BYTES
(default 67108864), TJ_VERIFY_HASHES (default 1)
exported to COMMAND: TJ_RESUME_PATH, TJ_RESUME_STEP, TJ_CHECKPOINT_DIR,
TJ_GRACE_SECONDS, TJ_DEADLINE_SECONDS, TJ_DEADLINE_FILE, TJ_PROGRESS_FILE";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub checkpoint_dir: Option<PathBuf>,
    pub report_path: PathBuf,
    pub shm_dir: PathBuf,
    pub probe: bool,
    pub probe_bytes: u64,
    pub grace_seconds: f64,
    pub attempt: Option<u32>,
    pub rank: Option<u32>,
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
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let mut cfg = Config {
        checkpoint_dir: nonempty("TJ_CHECKPOINT_DIR").map(PathBuf::from),
        report_path: PathBuf::from(
            nonempty("TJ_REPORT_PATH").unwrap_or_else(|| "/dev/termination-log".into()),
        ),
        shm_dir: PathBuf::from(nonempty("TJ_SHM_DIR").unwrap_or_else(|| "/dev/shm".into())),
        probe: nonempty("TJ_PROBE").is_some_and(|v| truthy(&v)),
        probe_bytes: 64 << 20,
        grace_seconds: 30.0,
        attempt: None,
        rank: None,
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
        cfg.grace_seconds = v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|g| g.is_finite() && *g >= 0.0)
            .ok_or_else(|| format!("TJ_GRACE_SECONDS={v:?} is not a number of seconds"))?;
    }
    // Attempt and rank are informational: a malformed value must not stop
    // training, so it is ignored rather than rejected.
    cfg.attempt = nonempty("TJ_ATTEMPT").and_then(|v| v.trim().parse().ok());
    cfg.rank = nonempty("TJ_RANK").and_then(|v| v.trim().parse().ok());

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
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.to_string(), None),
        };
        let mut value = || -> Result<OsString, String> {
            if let Some(v) = &inline {
                return Ok(v.into());
            }
            i += 1;
            rest.get(i)
                .map(|v| (*v).clone())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--checkpoint-dir" => cfg.checkpoint_dir = Some(value()?.into()),
            "--report" => cfg.report_path = value()?.into(),
            "--shm-dir" => cfg.shm_dir = value()?.into(),
            "--probe" if inline.is_none() => cfg.probe = true,
            "--help" => return Ok(Parsed::Help),
            _ => return Err(format!("unknown flag {a}")),
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
