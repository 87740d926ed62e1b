//! The supervisor: prepare, start the trainer, forward signals, reap, watch
//! saves, report, and exit with the trainer's status. Single-threaded around
//! one poll(2) on a signalfd and an inotify fd, so a signal is never waiting
//! behind anything slower than a stat of a checkpoint.

use crate::checkpoint::{self, Candidate, Name, Verdict};
use crate::cli::Config;
use crate::fence::{self, Fence};
use crate::forward;
use crate::handover::{self, Handover};
use crate::report::{
    CheckpointRef, Cleaned, LastCheckpoint, LockState, PeerStop, Probe, Report, ShmUse, SignalInfo,
    State,
};
use crate::reportfile::ReportFile;
use crate::saves::{round6, Action, Inside, Stats, Tracker};
use crate::sys::{self, Exit, Inotify};
use serde::Deserialize;
use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Kept back from the grace period when telling the trainer its deadline: the
/// launcher still has to see the exit and write the report, and the kubelet's
/// clock started before the signal reached us.
const DEADLINE_RESERVE_SECONDS: f64 = 1.0;

/// How stale the report's `lastStep` may get while nothing else happens. A
/// SIGKILL leaves whatever the last read found; the moments that matter (a
/// stop signal, a save starting or ending) read at once, and this bounds the
/// rest at the price of one small tmpfs read a second.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often /dev/shm's use is sampled: a DataLoader can fill it and crash
/// within a second.
const SHM_EVERY: Duration = Duration::from_millis(200);

/// How often a launcher waiting for its rank's lock tries again: the wait is
/// for a process to die, and a tenth of a second is nothing beside a pod start.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// How often the wait for the lock is logged and published.
const LOCK_NOTE_EVERY: Duration = Duration::from_secs(10);

/// What the trainer writes to `TJ_PROGRESS_FILE` (tjckpt's `step_done`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Progress {
    step: u64,
    #[serde(default)]
    peer_stop: Option<PeerStop>,
}

macro_rules! log {
    ($($t:tt)*) => { eprintln!("launcher: {}", format!($($t)*)) };
}

struct Supervisor {
    cfg: Config,
    report: Report,
    out: ReportFile,
    stats: Stats,
    tracker: Tracker,
    signal_at: Option<Instant>,
    /// The signal-ignored report has been written.
    ignored_reported: bool,
    deadline_file: PathBuf,
    progress_file: PathBuf,
    progress_read_at: Option<Instant>,
    /// Where to leave the step reached for the next attempt: the checkpoint
    /// directory and rank, once the rank's lock is held.
    handover: Option<(PathBuf, u32)>,
}

impl Supervisor {
    fn publish(&mut self) {
        let bytes = self.report.to_json_within(self.cfg.report_max_bytes);
        self.out.write(&bytes);
    }

    /// Picks up the trainer's last completed step; true when the report
    /// changed. Unless `force`d, reads at most every [`PROGRESS_EVERY`]:
    /// reaping orphans wakes the loop too, and need not read anything.
    fn refresh_progress(&mut self, force: bool) -> bool {
        if !force
            && self
                .progress_read_at
                .is_some_and(|t| t.elapsed() < PROGRESS_EVERY)
        {
            return false;
        }
        self.progress_read_at = Some(Instant::now());
        // Bounded: the file is the trainer's to write, and a runaway one
        // must not make PID 1 allocate without limit.
        let mut buf = Vec::new();
        let read = fs::File::open(&self.progress_file)
            .and_then(|f| io::Read::read_to_end(&mut io::Read::take(f, 4096), &mut buf));
        let Some(p) = read
            .ok()
            .and_then(|_| serde_json::from_slice::<Progress>(&buf).ok())
        else {
            return false;
        };
        let before = (self.report.last_step, self.report.peer_stop.clone());
        self.report.last_step = Some(p.step);
        let resumed = self.report.resumed_from.as_ref().map(|c| c.step);
        if self.report.first_step_at_unix_ms.is_none() && Some(p.step) > resumed {
            self.report.first_step_at_unix_ms = Some(sys::now_unix_ms());
        }
        if before.0 != Some(p.step) {
            self.hand_over(p.step);
        }
        // Sticky: once the trainer said why it stops, a later write without
        // the reason does not turn the run back into a completed one.
        if p.peer_stop.is_some() {
            self.report.peer_stop = p.peer_stop;
        }
        before != (self.report.last_step, self.report.peer_stop.clone())
    }

    /// Keeps the most of /dev/shm seen in use.
    fn sample_shm(&mut self) {
        let Some((size, used)) = crate::shm::usage(&self.cfg.shm_dir) else {
            return;
        };
        let shm = self.report.shm.get_or_insert(ShmUse::default());
        shm.size_bytes = size;
        shm.peak_used_bytes = shm.peak_used_bytes.max(used);
    }

    /// Leaves the step reached on the volume for the next attempt.
    fn hand_over(&self, step: u64) {
        let Some((dir, rank)) = &self.handover else {
            return;
        };
        let h = Handover {
            attempt: self.cfg.attempt.unwrap_or(0),
            step,
        };
        if let Err(e) = handover::write(dir, *rank, h) {
            log!(
                "cannot record progress in {} ({e})",
                handover::path(dir, *rank).display()
            );
        }
    }

    /// `path` is complete now: a `skipped` entry from before it was
    /// rewritten no longer describes it.
    fn completed(&mut self, path: &Path) {
        let p = path.to_string_lossy();
        self.report.skipped.retain(|s| s.path != p);
    }

    fn set_last_checkpoint(&mut self, step: u64, path: &Path, bytes: u64, at_unix_ms: u64) {
        if self
            .report
            .last_checkpoint
            .as_ref()
            .is_some_and(|l| l.step > step)
        {
            return;
        }
        self.report.last_checkpoint = Some(LastCheckpoint {
            step,
            path: path.to_string_lossy().into_owned(),
            bytes,
            at_unix_ms,
        });
    }
}

pub fn run(cfg: Config) -> i32 {
    let mut handled = sys::FORWARDED.to_vec();
    handled.push(libc::SIGCHLD);
    let sfd = match sys::signalfd_for(&handled) {
        Ok(fd) => fd,
        Err(e) => {
            log!("cannot set up signal handling: {e}");
            return 1;
        }
    };
    if let Err(e) = sys::set_child_subreaper() {
        log!("PR_SET_CHILD_SUBREAPER failed ({e}); orphans will not be reaped unless PID 1");
    }
    let mut sv = Supervisor::new(cfg);
    // Before anything touches the checkpoint directory: a trainer of an
    // earlier attempt may still be writing into it, and rank 0 deletes
    // temporaries.
    let fence = match acquire_fence(&mut sv, &sfd) {
        Ok(f) => f,
        Err(status) => return status,
    };
    let resume = prepare(&mut sv);
    // A stop signal that arrived while we prepared: the pod is going away, so
    // do not start a trainer only to interrupt it.
    if let Some(s) = pending_stop(&sfd) {
        return stopped_before_start(&mut sv, s);
    }
    // Watching before the trainer starts, so that its first save, however
    // early, is timed from its first event.
    let mut watch = Watch::new(sv.cfg.checkpoint_dir.as_deref());
    if let Some(w) = watch.as_mut() {
        w.watch_existing();
    }
    let child_pid = match spawn(&mut sv, resume.as_ref(), fence.as_ref()) {
        Ok(pid) => pid,
        Err(status) => return status,
    };
    let exit = supervise(&mut sv, &sfd, child_pid, watch);
    let status = finish(&mut sv, exit);
    // Held to the end, though the trainer's inherited copy is what counts.
    drop(fence);
    status
}

impl Supervisor {
    fn new(cfg: Config) -> Supervisor {
        let deadline_file = cfg
            .shm_dir
            .join(format!("tj-deadline-{}", std::process::id()));
        // Same pid as a launcher before us in this /dev/shm (PID 1 in every
        // container): its trainer's steps are not ours.
        let progress_file = cfg
            .shm_dir
            .join(format!("tj-progress-{}", std::process::id()));
        let _ = fs::remove_file(&progress_file);
        Supervisor {
            report: Report::new(cfg.attempt),
            out: ReportFile::new(cfg.report_path.clone()),
            stats: Stats::default(),
            tracker: Tracker::default(),
            signal_at: None,
            ignored_reported: false,
            deadline_file,
            progress_file,
            progress_read_at: None,
            handover: None,
            cfg,
        }
    }

    /// When, after the stop signal, a trainer that is still running counts
    /// as not honouring it: at its own deadline (grace less the second kept
    /// for the launcher), or at 90% of a grace period under ten seconds, so
    /// that the report is in place before the kubelet's SIGKILL.
    fn honour_by(&self) -> Option<Instant> {
        let g = self.cfg.grace_seconds;
        let margin = DEADLINE_RESERVE_SECONDS.min(g * 0.1);
        self.signal_at
            .map(|t| t + Duration::from_secs_f64((g - margin).max(0.0)))
    }

    /// Says in the report, before the SIGKILL can, that the trainer did not
    /// stop in time and which step it had reached.
    fn check_signal_ignored(&mut self) {
        if self.ignored_reported || self.honour_by().is_none_or(|t| Instant::now() < t) {
            return;
        }
        self.ignored_reported = true;
        self.refresh_progress(true);
        self.report.state = State::Signalled;
        self.report.signal_honoured = Some(false);
        let saved = self.report.last_checkpoint.as_ref().map(|c| c.step);
        log!(
            "the trainer is still running {:.1}s after {}, close to the {}s grace period: \
             it did not honour the signal; last step {}, last checkpoint {}",
            self.signal_at.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            self.report
                .signal
                .as_ref()
                .map_or("the signal", |s| s.name.as_str()),
            fmt_seconds(self.cfg.grace_seconds),
            self.report
                .last_step
                .map_or("unknown".into(), |s| s.to_string()),
            saved.map_or("none".into(), |s| s.to_string()),
        );
        // After the log line: whoever reads the report may kill us at once.
        self.publish();
    }

    /// How long poll may sleep: progress is read every [`PROGRESS_EVERY`],
    /// and the signal-ignored report must not be late.
    fn poll_timeout_ms(&self) -> i32 {
        let mut t = PROGRESS_EVERY.min(SHM_EVERY);
        if let (false, Some(at)) = (self.ignored_reported, self.honour_by()) {
            t = t.min(at.saturating_duration_since(Instant::now()));
        }
        // Rounded up, so a wake-up is never a few microseconds early.
        t.as_micros().div_ceil(1000) as i32
    }
}

/// Cleans and resolves the checkpoint directory, cleans /dev/shm, probes.
/// Returns the checkpoint to resume from.
fn prepare(sv: &mut Supervisor) -> Option<Candidate> {
    let resume = sv
        .cfg
        .checkpoint_dir
        .clone()
        .and_then(|d| prepare_checkpoints(sv, &d));
    let shm_removed = match crate::shm::clean(&sv.cfg.shm_dir) {
        Ok(n) => n,
        Err(e) => {
            log!(
                "not cleaning {}: cannot tell what is in use ({e})",
                sv.cfg.shm_dir.display()
            );
            0
        }
    };
    if shm_removed > 0 {
        log!(
            "removed {shm_removed} stale entries from {}",
            sv.cfg.shm_dir.display()
        );
    }
    let cleaned = sv.report.cleaned.get_or_insert_with(Cleaned::default);
    cleaned.shm_entries = shm_removed;
    if *cleaned == Cleaned::default() {
        sv.report.cleaned = None;
    }
    if let (true, Some(dir)) = (sv.cfg.probe, sv.cfg.checkpoint_dir.clone()) {
        match probe(&dir, sv.cfg.probe_bytes) {
            Ok(p) => {
                log!(
                    "probe: {} bytes in {:.3}s ({:.0} MB/s)",
                    p.bytes,
                    p.seconds,
                    p.bytes_per_second / 1e6
                );
                sv.report.probe = Some(p);
            }
            Err(e) => log!("probe of {} failed: {e}", dir.display()),
        }
    }
    resume
}

/// The first stop signal waiting on the signalfd, if any; others are dropped
/// (there is no trainer yet to pass them to).
fn pending_stop(sfd: &OwnedFd) -> Option<i32> {
    sys::read_signals(sfd)
        .ok()?
        .into_iter()
        .map(|s| s.signo)
        .find(|&s| sys::is_stop_signal(s))
}

fn stopped_before_start(sv: &mut Supervisor, sig: i32) -> i32 {
    sv.report.signal = Some(SignalInfo {
        name: sys::signal_name(sig),
        at_unix_ms: sys::now_unix_ms(),
    });
    sv.report.state = State::Signalled;
    sv.report.exit_code = Some(128 + sig);
    sv.publish();
    log!(
        "{} before the trainer started; not starting it",
        sys::signal_name(sig)
    );
    128 + sig
}

/// Takes this rank's fencing lock (see `fence`), waiting for it at most the
/// lock timeout. `Err` carries the exit status when the launcher must exit
/// without starting the trainer: the timeout passed, or a stop signal came.
fn acquire_fence(sv: &mut Supervisor, sfd: &OwnedFd) -> Result<Option<Fence>, i32> {
    let Some(dir) = sv.cfg.checkpoint_dir.clone() else {
        return Ok(None);
    };
    let rank = sv.cfg.rank.unwrap_or(0);
    let lock = Fence::open(&dir, rank).and_then(|f| f.try_lock().map(|got| (f, got)));
    let (fence, mut got) = match lock {
        Ok(l) => l,
        Err(e) => {
            log!(
                "cannot lock {} ({e}); starting the trainer unfenced",
                fence::lock_path(&dir, rank).display()
            );
            sv.report.lock = Some(LockState::Unavailable);
            return Ok(None);
        }
    };
    let t0 = Instant::now();
    let timeout = Duration::from_secs_f64(sv.cfg.lock_timeout_seconds);
    let mut next_note = Duration::ZERO;
    while !got {
        let waited = t0.elapsed();
        sv.report.lock_wait_seconds = Some(round6(waited.as_secs_f64()));
        if waited >= timeout {
            return Err(lock_timed_out(sv, &fence, waited));
        }
        if waited >= next_note {
            log!(
                "waiting for {} (rank {rank}): a process of an earlier attempt still holds it; \
                 waited {:.1}s of {}s",
                fence.path().display(),
                waited.as_secs_f64(),
                fmt_seconds(sv.cfg.lock_timeout_seconds)
            );
            sv.report.lock = Some(LockState::Waiting);
            sv.publish();
            next_note = waited + LOCK_NOTE_EVERY;
        }
        let nap = LOCK_POLL.min(timeout - waited).as_millis() as i32;
        if sys::poll_readable(&[sfd.as_raw_fd()], nap).is_ok_and(|r| r[0]) {
            if let Some(s) = pending_stop(sfd) {
                return Err(stopped_before_start(sv, s));
            }
        }
        got = fence.try_lock().unwrap_or(false);
    }
    // Zero when it was free at once (the loop above never ran).
    let waited = if next_note > Duration::ZERO {
        t0.elapsed().as_secs_f64()
    } else {
        0.0
    };
    sv.report.lock = Some(LockState::Held);
    sv.report.lock_wait_seconds = Some(round6(waited));
    // Final now: the trainer that wrote it is gone, or we would not hold the lock.
    sv.report.previous = handover::read(&dir, rank).filter(|h| Some(h.attempt) != sv.cfg.attempt);
    sv.handover = Some((dir, rank));
    if waited > 0.0 {
        log!("got {} after {waited:.1}s", fence.path().display());
    }
    Ok(Some(fence))
}

fn lock_timed_out(sv: &mut Supervisor, fence: &Fence, waited: Duration) -> i32 {
    log!(
        "gave up waiting for {} after {:.1}s (--lock-timeout-seconds {}): a trainer of an \
         earlier attempt for this rank is still alive, and two must never write the same \
         checkpoints; not starting the trainer (exit {})",
        fence.path().display(),
        waited.as_secs_f64(),
        fmt_seconds(sv.cfg.lock_timeout_seconds),
        fence::EXIT_LOCK_TIMEOUT
    );
    sv.report.lock = Some(LockState::TimedOut);
    sv.report.state = State::Failed;
    sv.report.exit_code = Some(fence::EXIT_LOCK_TIMEOUT);
    sv.publish();
    fence::EXIT_LOCK_TIMEOUT
}

/// Starts the trainer; `Err` carries the launcher's exit status.
fn spawn(
    sv: &mut Supervisor,
    resume: Option<&Candidate>,
    fence: Option<&Fence>,
) -> Result<i32, i32> {
    let mut cmd = Command::new(&sv.cfg.command[0]);
    cmd.args(&sv.cfg.command[1..]);
    child_env(
        &mut cmd,
        &sv.cfg,
        resume,
        &sv.deadline_file,
        &sv.progress_file,
    );
    let lock_fd = fence.map(Fence::raw_fd);
    // The signal mask survives fork and exec, and std does not reset it: a
    // trainer started with our mask would never see SIGTERM. The lock's
    // descriptor is inherited so that the trainer alone keeps the rank
    // fenced if the launcher dies first.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            sys::unblock_all_signals()?;
            lock_fd.map_or(Ok(()), fence::inherit)
        });
    }
    sv.publish();
    match cmd.spawn() {
        // We reap with waitpid(-1) ourselves (orphans too); the Child handle
        // is not needed, and dropping it neither waits nor kills.
        Ok(child) => Ok(child.id() as i32),
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            log!("cannot start {:?}: {e}", sv.cfg.command[0]);
            sv.report.state = State::Failed;
            sv.report.exit_code = Some(code);
            sv.publish();
            Err(code)
        }
    }
}

/// Forwards signals, watches saves and progress until the trainer exits.
fn supervise(sv: &mut Supervisor, sfd: &OwnedFd, child_pid: i32, mut watch: Option<Watch>) -> Exit {
    let exit = loop {
        let mut fds = vec![sfd.as_raw_fd()];
        if let Some(w) = &watch {
            fds.push(w.ino.raw_fd());
        }
        let ready = match sys::poll_readable(&fds, sv.poll_timeout_ms()) {
            Ok(r) => r,
            Err(e) => {
                log!("poll failed: {e}");
                vec![true; fds.len()]
            }
        };
        if ready[0] {
            for s in sys::read_signals(sfd).unwrap_or_default() {
                if s.signo != libc::SIGCHLD {
                    forward_signal(sv, child_pid, s.signo);
                }
            }
        }
        // A save starting or ending means a step just ended: read now, so a
        // save that the grace period cuts short still leaves the step it was
        // saving in the report.
        let save_event =
            ready.get(1) == Some(&true) && watch.as_mut().is_some_and(|w| w.handle(sv));
        sv.sample_shm();
        if sv.refresh_progress(save_event) {
            sv.publish();
        }
        // SIGCHLDs coalesce, so reap everything whenever we wake.
        if let Some(exit) = sys::reap_all()
            .into_iter()
            .find_map(|(pid, exit)| (pid == child_pid).then_some(exit))
        {
            break exit;
        }
        sv.check_signal_ignored();
    };
    // Saves that finished just before the exit may still be queued.
    if let Some(w) = watch.as_mut() {
        w.handle(sv);
    }
    exit
}

fn child_env(
    cmd: &mut Command,
    cfg: &Config,
    resume: Option<&Candidate>,
    deadline_file: &Path,
    progress_file: &Path,
) {
    match resume {
        Some(c) => {
            cmd.env("TJ_RESUME_PATH", &c.path);
            cmd.env("TJ_RESUME_STEP", c.step.to_string());
        }
        // Never let a stale value from the pod spec point at a torn save.
        None => {
            cmd.env_remove("TJ_RESUME_PATH");
            cmd.env_remove("TJ_RESUME_STEP");
        }
    }
    if let Some(d) = &cfg.checkpoint_dir {
        cmd.env("TJ_CHECKPOINT_DIR", d);
    }
    // The flags the operator passed win over the template's env, for the
    // trainer as for the launcher.
    if let Some(a) = cfg.attempt {
        cmd.env("TJ_ATTEMPT", a.to_string());
    }
    if let Some(r) = cfg.rank {
        cmd.env("TJ_RANK", r.to_string());
    }
    cmd.env("TJ_GRACE_SECONDS", fmt_seconds(cfg.grace_seconds));
    cmd.env(
        "TJ_DEADLINE_SECONDS",
        fmt_seconds((cfg.grace_seconds - DEADLINE_RESERVE_SECONDS).max(0.0)),
    );
    cmd.env("TJ_DEADLINE_FILE", deadline_file);
    cmd.env("TJ_PROGRESS_FILE", progress_file);
}

fn fmt_seconds(s: f64) -> String {
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}

/// Cleans temporaries, picks the checkpoint to resume from, and records both
/// in the report. Returns the pick.
fn prepare_checkpoints(sv: &mut Supervisor, dir: &Path) -> Option<Candidate> {
    if let Err(e) = fs::create_dir_all(dir) {
        log!("checkpoint dir {}: {e}", dir.display());
    }
    let scan = match checkpoint::scan(dir) {
        Ok(s) => s,
        Err(e) => {
            log!("cannot list {}: {e}; starting from scratch", dir.display());
            return None;
        }
    };
    if sv.cfg.cleans_temporaries() {
        let (removed, failed) = checkpoint::remove_temporaries(&scan.temporaries);
        if removed > 0 {
            log!(
                "removed {removed} temporaries left by dead writers in {}",
                dir.display()
            );
            sv.report
                .cleaned
                .get_or_insert_with(Cleaned::default)
                .tmp_entries = removed;
        }
        sv.report.skipped.extend(failed);
        remove_old_probes(dir);
    }
    let verify = sv.cfg.verify_hashes;
    let (pick, skipped) = checkpoint::select(scan.candidates, |c| checkpoint::check(c, verify));
    for s in &skipped {
        log!("skipping {}: {}", s.path, s.reason);
    }
    sv.report.skipped.extend(skipped);
    match &pick {
        Some(c) => {
            log!("resuming from {} (step {})", c.path.display(), c.step);
            sv.report.resumed_from = Some(CheckpointRef {
                step: c.step,
                path: c.path.to_string_lossy().into_owned(),
            });
            let (bytes, at) = (
                checkpoint::total_bytes(&c.path),
                checkpoint::mtime_unix_ms(&c.path),
            );
            sv.set_last_checkpoint(c.step, &c.path, bytes, at);
        }
        None => log!(
            "no complete checkpoint in {}; starting from scratch",
            dir.display()
        ),
    }
    pick
}

/// Probe files of a launcher killed mid-probe. Only old ones: a younger one
/// may be another rank's probe in progress.
fn remove_old_probes(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        if old && e.file_name().to_string_lossy().starts_with(".tj-probe-") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Write, fsync, rename, fsync the directory, remove: what an atomic save
/// costs on this volume, as a first bound before real saves are measured.
fn probe(dir: &Path, bytes: u64) -> io::Result<Probe> {
    // The hostname (pod name) keeps ranks sharing a volume apart; the pid is
    // 1 in every container.
    let base = format!(".tj-probe-{}-{}", sys::hostname(), std::process::id());
    let part = dir.join(format!("{base}.part"));
    let done = dir.join(&base);
    // Not zeros: some filesystems and devices compress or skip them.
    let mut chunk = vec![0u8; 1 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in chunk.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    let t0 = Instant::now();
    let r = (|| {
        let mut f = fs::File::create(&part)?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&part, &done)?;
        sys::fsync_dir(dir)
    })();
    let seconds = t0.elapsed().as_secs_f64();
    let _ = fs::remove_file(&part);
    let _ = fs::remove_file(&done);
    r?;
    Ok(Probe {
        bytes,
        seconds: round6(seconds),
        bytes_per_second: if seconds > 0.0 {
            (bytes as f64 / seconds).round()
        } else {
            0.0
        },
    })
}

fn forward_signal(sv: &mut Supervisor, child: i32, sig: i32) {
    // The deadline goes out before the signal: a trainer that reads it in its
    // handler must find it, and a few microseconds of the grace period are a
    // cheaper price than a trainer that falls back to a guess.
    let first_stop = sys::is_stop_signal(sig) && sv.report.signal.is_none();
    if first_stop {
        record_stop(sv, sig);
    }
    let targets = forward::targets(child);
    for &p in &targets {
        // ESRCH: it exited meanwhile; its SIGCHLD is on the way.
        let _ = sys::kill(p, sig);
    }
    if !sys::is_stop_signal(sig) {
        return;
    }
    log!("{} -> pid {:?}", sys::signal_name(sig), targets);
    if first_stop {
        // The step the trainer was on when told to stop, in case nothing
        // later is read (a SIGKILL before the next refresh).
        sv.refresh_progress(true);
        sv.publish();
    }
}

/// Notes the first stop signal and writes the deadline file for it.
fn record_stop(sv: &mut Supervisor, sig: i32) {
    let now_ms = sys::now_unix_ms();
    sv.signal_at = Some(Instant::now());
    sv.report.signal = Some(SignalInfo {
        name: sys::signal_name(sig),
        at_unix_ms: now_ms,
    });
    let grace_ms = (sv.cfg.grace_seconds * 1000.0) as u64;
    let body = format!(
        "{{\"signal\":\"{}\",\"signalAtUnixMs\":{now_ms},\"graceSeconds\":{},\"deadlineUnixMs\":{}}}\n",
        sys::signal_name(sig),
        fmt_seconds(sv.cfg.grace_seconds),
        (now_ms + grace_ms).saturating_sub((DEADLINE_RESERVE_SECONDS * 1000.0) as u64),
    );
    let part = sv.deadline_file.with_extension("part");
    let r = fs::write(&part, body).and_then(|_| fs::rename(&part, &sv.deadline_file));
    if let Err(e) = r {
        log!("cannot write {}: {e}", sv.deadline_file.display());
    }
}

fn finish(sv: &mut Supervisor, exit: Exit) -> i32 {
    let status = exit.status();
    sv.report.exit_code = Some(status);
    if let Exit::Signal(s) = exit {
        sv.report.term_signal = Some(sys::signal_name(s));
    }
    sv.refresh_progress(true);
    // A rank that stopped because a peer was signalled is part of that
    // preemption: reporting it completed would end the job early.
    let stopped = sv.report.signal.is_some() || sv.report.peer_stop.is_some();
    sv.report.state = match (stopped, exit) {
        (true, _) => State::Signalled,
        (false, Exit::Code(0)) => State::Completed,
        (false, _) => State::Failed,
    };
    sv.report.signal_to_exit_seconds = sv.signal_at.map(|t| round6(t.elapsed().as_secs_f64()));
    // It exited, if late: what the kubelet will see is its own exit.
    sv.report.signal_honoured = sv.signal_at.map(|_| true);
    // inotify misses saves made from other nodes (NFS) and overflows; the
    // directory itself is the truth about what exists.
    if let Some(dir) = sv.cfg.checkpoint_dir.clone() {
        if let Ok(scan) = checkpoint::scan(&dir) {
            let newer = |c: &Candidate| {
                sv.report
                    .last_checkpoint
                    .as_ref()
                    .is_none_or(|l| c.step > l.step)
            };
            let cands: Vec<Candidate> = scan.candidates.into_iter().filter(newer).collect();
            if let (Some(c), _) = checkpoint::select(cands, |c| checkpoint::check(c, false)) {
                let (bytes, at) = (
                    checkpoint::total_bytes(&c.path),
                    checkpoint::mtime_unix_ms(&c.path),
                );
                sv.set_last_checkpoint(c.step, &c.path, bytes, at);
            }
        }
    }
    sv.publish();
    let _ = fs::remove_file(&sv.deadline_file);
    let _ = fs::remove_file(&sv.progress_file);
    status
}

/// inotify on the checkpoint directory, plus one watch inside each checkpoint
/// directory that exists or is being written in place (the newest
/// [`MAX_INSIDE_WATCHES`]), so in-place rewrites are seen too.
struct Watch {
    ino: Inotify,
    dir: PathBuf,
    top: i32,
    inside: HashMap<i32, String>,
}

/// Inside watches are one kernel object each, counted against the user's
/// `max_user_watches`; old checkpoints are rarely rewritten.
const MAX_INSIDE_WATCHES: usize = 64;

const TOP_MASK: u32 = libc::IN_CREATE
    | libc::IN_MOVED_TO
    | libc::IN_DELETE
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_ONLYDIR;
const INSIDE_MASK: u32 = libc::IN_CREATE
    | libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_MOVED_TO
    | libc::IN_DELETE
    | libc::IN_ONLYDIR;

impl Watch {
    fn new(dir: Option<&Path>) -> Option<Watch> {
        let dir = dir?;
        let ino = Inotify::new()
            .map_err(|e| log!("inotify unavailable ({e}); saves will not be timed"))
            .ok()?;
        let top = ino
            .add_watch(dir, TOP_MASK)
            .map_err(|e| {
                log!(
                    "cannot watch {} ({e}); saves will not be timed",
                    dir.display()
                )
            })
            .ok()?;
        Some(Watch {
            ino,
            dir: dir.to_path_buf(),
            top,
            inside: HashMap::new(),
        })
    }

    /// Watches inside the checkpoint directories already there, newest
    /// first, so that rewriting one in place is timed.
    fn watch_existing(&mut self) {
        let Ok(mut scan) = checkpoint::scan(&self.dir) else {
            return;
        };
        checkpoint::order(&mut scan.candidates);
        for c in scan.candidates.iter().filter(|c| c.is_dir) {
            if self.inside.len() >= MAX_INSIDE_WATCHES {
                break;
            }
            if let Some(name) = c.path.file_name().and_then(|n| n.to_str()) {
                self.watch_inside(name);
            }
        }
    }

    /// Handles queued events; true when a save started or ended.
    fn handle(&mut self, sv: &mut Supervisor) -> bool {
        let events = match self.ino.read_events() {
            Ok(e) => e,
            Err(e) => {
                log!("reading inotify events: {e}");
                return false;
            }
        };
        let mut saves = false;
        for ev in events {
            if ev.mask & libc::IN_Q_OVERFLOW != 0 {
                // Lost events: fall back to the directory contents, untimed.
                self.rescan(sv);
                saves = true;
                continue;
            }
            if ev.mask & libc::IN_IGNORED != 0 {
                self.inside.remove(&ev.wd);
                continue;
            }
            let Some(name) = ev.name.as_ref().and_then(|n| n.to_str()) else {
                continue;
            };
            let action = self.action(sv, &ev, name);
            saves |= action != Action::Nothing;
            match action {
                Action::Nothing | Action::Started => {}
                Action::WatchInside(name) => {
                    self.watch_inside(&name);
                    // The marker may have been written before the watch.
                    self.check(sv, &name, None);
                }
                Action::Check { name, started } => self.check(sv, &name, started),
            }
        }
        saves
    }

    fn action(&self, sv: &mut Supervisor, ev: &sys::InotifyEvent, name: &str) -> Action {
        let now = Instant::now();
        let has = |m: u32| ev.mask & m != 0;
        if ev.wd == self.top {
            if has(libc::IN_DELETE) {
                sv.tracker.deleted(name);
                Action::Nothing
            } else if has(libc::IN_CREATE | libc::IN_MOVED_TO) {
                let renamed = has(libc::IN_MOVED_TO);
                sv.tracker.appeared(name, has(libc::IN_ISDIR), renamed, now)
            } else if has(libc::IN_CLOSE_WRITE) {
                sv.tracker.closed(name)
            } else {
                sv.tracker.modified(name, now)
            }
        } else if let Some(dir) = self.inside.get(&ev.wd) {
            let what = if has(libc::IN_DELETE) {
                Inside::Removed
            } else if has(libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO) {
                Inside::Finished
            } else {
                Inside::Written
            };
            sv.tracker.inside(dir, name, what, now)
        } else {
            Action::Nothing
        }
    }

    fn watch_inside(&mut self, name: &str) {
        if self.inside.values().any(|n| n == name) {
            return;
        }
        if self.inside.len() >= MAX_INSIDE_WATCHES {
            self.unwatch_oldest();
        }
        if let Ok(wd) = self.ino.add_watch(&self.dir.join(name), INSIDE_MASK) {
            self.inside.insert(wd, name.to_string());
        }
    }

    /// Makes room by dropping the watch on the lowest step.
    fn unwatch_oldest(&mut self) {
        let step = |n: &String| match checkpoint::parse_name(n) {
            Some(Name::Final { step, .. }) => step,
            _ => 0,
        };
        if let Some((&wd, _)) = self.inside.iter().min_by_key(|(_, n)| step(n)) {
            self.ino.rm_watch(wd);
            self.inside.remove(&wd);
        }
    }

    fn check(&mut self, sv: &mut Supervisor, name: &str, started: Option<Instant>) {
        let Some(Name::Final { step, naming }) = checkpoint::parse_name(name) else {
            return;
        };
        let path = self.dir.join(name);
        let is_dir = path.is_dir();
        let cand = Candidate {
            step,
            naming,
            path: path.clone(),
            is_dir,
        };
        if checkpoint::check(&cand, false) != Verdict::Complete {
            if is_dir {
                self.watch_inside(name);
            }
            return;
        }
        let seconds = started.map(|s| s.elapsed().as_secs_f64());
        sv.tracker.completed(name);
        if is_dir {
            // Kept: the same checkpoint may be rewritten in place later.
            self.watch_inside(name);
        }
        let bytes = checkpoint::total_bytes(&path);
        sv.refresh_progress(true);
        sv.stats.record(bytes, seconds);
        sv.report.saves = sv.stats.to_report();
        sv.completed(&path);
        sv.set_last_checkpoint(step, &path, bytes, sys::now_unix_ms());
        sv.publish();
    }

    fn rescan(&mut self, sv: &mut Supervisor) {
        let Ok(scan) = checkpoint::scan(&self.dir) else {
            return;
        };
        if let (Some(c), _) = checkpoint::select(scan.candidates, |c| checkpoint::check(c, false)) {
            let bytes = checkpoint::total_bytes(&c.path);
            sv.completed(&c.path);
            sv.set_last_checkpoint(c.step, &c.path, bytes, checkpoint::mtime_unix_ms(&c.path));
            sv.publish();
        }
    }
}

pub fn main_with_args(args: Vec<OsString>) -> i32 {
    match crate::cli::parse(&args, |k| std::env::var(k).ok()) {
        Ok(crate::cli::Parsed::Help) => {
            println!("{}", crate::cli::USAGE);
            0
        }
        Ok(crate::cli::Parsed::Run(cfg)) => run(cfg),
        Ok(crate::cli::Parsed::Install(dest)) => match crate::install::install_self(&dest) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("launcher: cannot install to {}: {e}", dest.display());
                1
            }
        },
        Err(e) => {
            eprintln!("launcher: {e}\n\n{}", crate::cli::USAGE);
            2
        }
    }
}
