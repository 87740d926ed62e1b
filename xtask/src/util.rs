//! Small helpers every xtask command shares: where things live, running
//! commands with context, and waiting on a condition with a deadline.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the project keeps what it builds and runs.
pub struct Paths {
    /// The repository root.
    pub root: PathBuf,
    /// Per-checkout runtime state: certificates, kubeconfig, logs, pid files.
    pub state: PathBuf,
    /// Heavy builds reused across checkouts, keyed by version.
    pub cache: PathBuf,
}

impl Paths {
    pub fn new() -> Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask lives one level below the repository root")?
            .to_path_buf();
        let state = root.join(".cluster");
        let cache = match std::env::var_os("TJO_CACHE_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                    .context("neither XDG_CACHE_HOME nor HOME is set; set TJO_CACHE_DIR")?;
                base.join("trainingjob-operator")
            }
        };
        Ok(Self { root, state, cache })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.state.join("kubeconfig")
    }
    pub fn logs(&self) -> PathBuf {
        self.state.join("logs")
    }
    pub fn pids(&self) -> PathBuf {
        self.state.join("pids")
    }
}

/// Prints a step heading, so long runs say what they are doing.
pub fn step(msg: impl AsRef<str>) {
    eprintln!("==> {}", msg.as_ref());
}

/// Runs a command to completion, failing with its name and status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; stderr is shown on failure.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `cmd` exits 0 (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command with `input` on its standard input.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Result<std::process::ExitStatus> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    child
        .stdin
        .take()
        .context("piped stdin")?
        .write_all(input)?;
    Ok(child.wait()?)
}

/// Polls `check` until it returns true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        if check() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
        .unwrap_or(false)
}

/// Installs Debian packages that are missing; `apt-get update` runs once per call.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .map(|s| s.contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(format!("installing Debian packages: {}", missing.join(" ")));
    run(Command::new("apt-get")
        .args(["update", "-qq"])
        .stdin(Stdio::null()))
    .context("apt-get update failed (packages are installed as root)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null()))
    .with_context(|| format!("could not install {}", missing.join(" ")))
}

/// The wall clock as Unix seconds, to compare with the kubelet's and the
/// API server's timestamps.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `2026-12-01T20:21:00.123456789Z` (RFC 3339 in UTC, as the kubelet
/// writes it) as Unix seconds.
pub fn unix_seconds(stamp: &str) -> Option<f64> {
    let s = stamp.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// SplitMix64: a seeded sequence, so that a schedule can be replayed.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
