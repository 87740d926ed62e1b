//! The termination report: what the launcher tells the operator through the
//! pod's termination message.
//!
//! This module depends on `serde`, `serde_json` and `std` only, so the operator
//! can reuse the type (`#[path = "../launcher/src/report.rs"] mod report;` or a
//! shared crate later) without pulling in anything Linux-specific.

use serde::{Deserialize, Serialize};

/// The kubelet reads at most this many bytes of one container's termination
/// message, so a longer report would be cut mid-JSON. It also shares 12 KiB
/// among all containers of a pod: the operator passes the smaller budget that
/// leaves (`--report-max-bytes`), and [`Report::to_json_within`] obeys it.
pub const MAX_REPORT_BYTES: usize = 4096;

pub const REPORT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum State {
    #[default]
    Running,
    /// Exited 0 without having been asked to stop: the job is done.
    Completed,
    /// Exited non-zero (or was killed) without having been asked to stop.
    Failed,
    /// A stop signal (SIGTERM, SIGINT, SIGHUP) reached the launcher before the
    /// trainer exited, or the trainer stopped because one reached another
    /// rank (`peerStop`): a preemption, whatever the exit code.
    Signalled,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub version: u32,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Name of the signal that killed the trainer ("SIGKILL"), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_signal: Option<String>,
    /// The first stop signal the launcher received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SignalInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_to_exit_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<CheckpointRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<LastCheckpoint>,
    /// The last step the trainer said it completed (`TJ_PROGRESS_FILE`).
    /// `lastStep - lastCheckpoint.step` is what this attempt's end cost:
    /// the steps the next attempt must redo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_step: Option<u64>,
    /// When the launcher first read a step past the one it resumed from:
    /// the end of the time to resume, as the trainer sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step_at_unix_ms: Option<u64>,
    /// What the rank's launcher of an earlier attempt last recorded on the
    /// volume (see `handover`): the step that attempt reached, even when its
    /// pod never reported (a lost node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<crate::handover::Handover>,
    /// The /dev/shm the trainer had, and the most of it in use at any
    /// sample (every 200 ms while it ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm: Option<ShmUse>,
    /// The trainer stopped because another rank of its gang was signalled,
    /// not because the job was done; the state is then `signalled` even
    /// though no signal reached this launcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_stop: Option<PeerStop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saves: Option<Saves>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
    /// How many `skipped` entries were dropped to keep the report under
    /// [`MAX_REPORT_BYTES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_omitted: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaned: Option<Cleaned>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Set when even path truncation could not make the report fit and only
    /// the essentials were kept.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Present once a stop signal reached the launcher: `false` when the
    /// trainer was still running at its deadline, shortly before the
    /// kubelet's SIGKILL (the report written then says so, with `lastStep`,
    /// and the SIGKILL leaves it in place); `true` once it has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_honoured: Option<bool>,
    /// Seconds the launcher waited for its rank's fencing lock, i.e. for the
    /// trainer of an earlier attempt to be gone (0 when it was free).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_wait_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockState>,
}

/// The rank's fencing lock (`<checkpoint dir>/.tj/rank-<R>.lock`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum LockState {
    /// Held by another process (a trainer of an earlier attempt); the
    /// trainer has not been started.
    Waiting,
    /// Held by this launcher and its trainer.
    Held,
    /// Still held by another process after the lock timeout; the launcher
    /// exited with status 75 without starting the trainer.
    TimedOut,
    /// The filesystem refused the lock (no flock support, read-only): the
    /// trainer runs unfenced.
    Unavailable,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SignalInfo {
    pub name: String,
    pub at_unix_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointRef {
    pub step: u64,
    pub path: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LastCheckpoint {
    pub step: u64,
    pub path: String,
    pub bytes: u64,
    pub at_unix_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ShmUse {
    pub size_bytes: u64,
    pub peak_used_bytes: u64,
}

impl ShmUse {
    /// Full enough that a failure beside it is most likely /dev/shm's: a
    /// quarter or less of it free at the peak. Samples miss the moment of
    /// the failing allocation, which is a whole batch: a 64 MiB /dev/shm
    /// with 18 MiB batches failed with 10 MiB free at the last sample.
    pub fn exhausted(&self) -> bool {
        let free = self.size_bytes.saturating_sub(self.peak_used_bytes);
        self.size_bytes > 0 && free * 4 <= self.size_bytes
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PeerStop {
    pub rank: u32,
    /// The signal that reached that rank ("SIGTERM").
    pub signal: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Saves {
    /// Saves observed completing during this attempt (not counting ones that
    /// existed before the trainer started).
    pub count: u32,
    /// Seconds from the temporary name appearing to the final name, for the
    /// last save whose start was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seconds: Option<f64>,
    pub last_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_seconds: Option<f64>,
    /// Total bytes over total seconds of the timed saves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<f64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    pub bytes: u64,
    pub seconds: f64,
    pub bytes_per_second: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// What the launcher removed before starting the trainer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Cleaned {
    pub tmp_entries: u32,
    pub shm_entries: u32,
}

impl Report {
    pub fn new(attempt: Option<u32>) -> Self {
        Report {
            version: REPORT_VERSION,
            attempt,
            ..Default::default()
        }
    }

    /// [`Report::to_json_within`] the kubelet's per-container maximum.
    pub fn to_bounded_json(&self) -> Vec<u8> {
        self.to_json_within(MAX_REPORT_BYTES)
    }

    /// Serialises the report so that it is valid JSON of at most `max`
    /// bytes (never cut mid-document), whatever the lengths of the paths in
    /// it. It shrinks in steps, stopping at the first that fits: the
    /// `skipped` list first, then paths (keeping their tail, where the step
    /// is), then the optional sections, and last everything but what the
    /// operator decides on. `max` below 64 is raised to 64.
    pub fn to_json_within(&self, max: usize) -> Vec<u8> {
        let max = max.max(64);
        let fits = |r: &Report| {
            let v = serde_json::to_vec(r).expect("report serialises");
            (v.len() <= max).then_some(v)
        };
        if let Some(v) = fits(self) {
            return v;
        }
        let mut r = self.clone();
        for s in &mut r.skipped {
            truncate_head(&mut s.path, 200);
            truncate_head(&mut s.reason, 200);
        }
        r.truncate_paths(1024);
        r.keep_skipped_that_fit(max);
        loop {
            if let Some(v) = fits(&r) {
                return v;
            }
            if r.skipped.pop().is_none() {
                break;
            }
            r.skipped_omitted += 1;
        }
        type Shrink = fn(&mut Report);
        let steps: [Shrink; 7] = [
            |r| r.truncate_paths(256),
            |r| r.truncate_paths(64),
            // Still ends in the checkpoint's name, which holds the step.
            |r| r.truncate_paths(24),
            // Diagnostics: the operator can do without them, not without
            // the last checkpoint and the exit code.
            |r| {
                r.probe = None;
                r.cleaned = None;
                r.resumed_from = None;
                r.shm = None;
                r.previous = None;
                r.first_step_at_unix_ms = None;
            },
            |r| {
                r.truncated = true;
                r.saves = None;
                r.signal_to_exit_seconds = None;
                r.lock = None;
                r.lock_wait_seconds = None;
                r.signal = None;
                r.peer_stop = None;
                r.attempt = None;
                r.term_signal = None;
            },
            // The step a resume can start from goes last but one.
            |r| r.last_checkpoint = None,
            |r| {
                *r = Report {
                    version: r.version,
                    state: r.state,
                    truncated: true,
                    ..Default::default()
                }
            },
        ];
        for shrink in steps {
            shrink(&mut r);
            if let Some(v) = fits(&r) {
                return v;
            }
        }
        // The last step leaves under 64 bytes of fixed-width content.
        serde_json::to_vec(&r).expect("minimal report serialises")
    }

    /// Keeps as many `skipped` entries as fit (the newest checkpoints come
    /// first), counting the rest in `skippedOmitted`. Sized entry by entry
    /// rather than by re-serialising after each drop: the list can be long.
    fn keep_skipped_that_fit(&mut self, max: usize) {
        let all = std::mem::take(&mut self.skipped);
        let total = all.len() as u32 + self.skipped_omitted;
        self.skipped_omitted = total;
        let base =
            serde_json::to_vec(&*self).expect("report serialises").len() + r#","skipped":[]"#.len();
        let mut used = base;
        let mut keep = 0;
        for s in &all {
            let n = serde_json::to_vec(s).expect("entry serialises").len() + 1;
            if used + n > max {
                break;
            }
            used += n;
            keep += 1;
        }
        self.skipped = all.into_iter().take(keep).collect();
        self.skipped_omitted = total - keep as u32;
    }

    fn truncate_paths(&mut self, limit: usize) {
        if let Some(c) = self.resumed_from.as_mut() {
            truncate_head(&mut c.path, limit);
        }
        if let Some(c) = self.last_checkpoint.as_mut() {
            truncate_head(&mut c.path, limit);
        }
        if let Some(s) = self.signal.as_mut() {
            truncate_head(&mut s.name, limit);
        }
        if let Some(s) = self.term_signal.as_mut() {
            truncate_head(s, limit);
        }
        if let Some(p) = self.peer_stop.as_mut() {
            truncate_head(&mut p.signal, limit);
        }
        for s in &mut self.skipped {
            truncate_head(&mut s.path, limit);
            truncate_head(&mut s.reason, limit);
        }
    }
}

/// Keeps the last `max_chars` characters of `s`, marking the cut with "...".
fn truncate_head(s: &mut String, max_chars: usize) {
    if s.len() <= max_chars {
        return;
    }
    let n = s.chars().count();
    if n <= max_chars {
        return;
    }
    let keep = max_chars.saturating_sub(3);
    let start = s
        .char_indices()
        .nth(n - keep)
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    *s = format!("...{}", &s[start..]);
}

/// Nearest-rank 95th percentile; `None` for no samples.
pub fn p95(samples: &[f64]) -> Option<f64> {
    percentile(samples, 95.0)
}

/// Nearest-rank percentile (the smallest sample with at least `pct` percent of
/// samples at or below it), so the value is always one that was observed.
pub fn percentile(samples: &[f64], pct: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((pct / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_report(path_len: usize, skipped: usize) -> Report {
        let long = format!("/ckpt/{}/step-123", "d".repeat(path_len));
        Report {
            state: State::Signalled,
            exit_code: Some(0),
            term_signal: None,
            signal: Some(SignalInfo {
                name: "SIGTERM".into(),
                at_unix_ms: 1_700_000_000_000,
            }),
            signal_to_exit_seconds: Some(1.25),
            resumed_from: Some(CheckpointRef {
                step: 100,
                path: long.clone(),
            }),
            last_checkpoint: Some(LastCheckpoint {
                step: 123,
                path: long.clone(),
                bytes: 14 << 30,
                at_unix_ms: 1_700_000_001_000,
            }),
            saves: Some(Saves {
                count: 3,
                last_seconds: Some(21.1),
                last_bytes: 14 << 30,
                p95_seconds: Some(22.0),
                bytes_per_second: Some(6.6e8),
            }),
            probe: Some(Probe {
                bytes: 64 << 20,
                seconds: 0.04,
                bytes_per_second: 1.6e9,
            }),
            skipped: (0..skipped)
                .map(|i| Skipped {
                    path: format!("{long}-{i}"),
                    reason: "MANIFEST.json lists model.bin with 10 bytes, found 3".into(),
                })
                .collect(),
            cleaned: Some(Cleaned {
                tmp_entries: 2,
                shm_entries: 1,
            }),
            last_step: Some(125),
            peer_stop: Some(PeerStop {
                rank: 1,
                signal: "SIGTERM".into(),
            }),
            signal_honoured: Some(false),
            lock_wait_seconds: Some(3.25),
            lock: Some(LockState::Held),
            // A large node's /dev/shm: these numbers are as wide as they get.
            shm: Some(ShmUse {
                size_bytes: 270_553_174_016,
                peak_used_bytes: 56_634_212_352,
            }),
            previous: Some(crate::handover::Handover {
                attempt: 4_000_000_000,
                step: u64::MAX,
            }),
            first_step_at_unix_ms: Some(1_700_000_002_000),
            ..Report::new(Some(7))
        }
    }

    #[test]
    fn report_fits_any_budget_and_keeps_what_the_operator_needs() {
        for max in [64, 100, 200, 256, 512, 1024, 3072, 4096] {
            for (path_len, skipped) in [(10, 0), (10, 40), (3000, 5), (100_000, 1)] {
                let r = full_report(path_len, skipped);
                let v = r.to_json_within(max);
                let what = format!("budget {max}, path {path_len}, skipped {skipped}");
                assert!(v.len() <= max, "{what}: {} bytes", v.len());
                let back: Report = serde_json::from_slice(&v).expect(&what);
                assert_eq!(back.state, State::Signalled, "{what}");
                if max >= 200 {
                    assert_eq!(back.last_step, Some(125), "{what}");
                    assert_eq!(back.signal_honoured, Some(false), "{what}");
                }
                if max >= 256 {
                    let last = back.last_checkpoint.as_ref().expect(&what);
                    assert_eq!((last.step, back.exit_code), (123, Some(0)), "{what}");
                }
                if max >= 512 {
                    let last = back.last_checkpoint.as_ref().expect(&what);
                    assert!(last.path.ends_with("/step-123"), "{what}: {}", last.path);
                    assert_eq!(back.saves.as_ref().unwrap().p95_seconds, Some(22.0));
                    assert_eq!(back.lock_wait_seconds, Some(3.25), "{what}");
                }
                // Optional lists go before anything else.
                if back.saves.is_none() {
                    assert!(back.skipped.is_empty() && back.truncated, "{what}");
                }
            }
        }
    }

    #[test]
    fn small_report_is_untouched() {
        let r = full_report(10, 2);
        let v = r.to_bounded_json();
        let back: Report = serde_json::from_slice(&v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn report_fits_whatever_the_path_lengths() {
        for path_len in [0, 100, 1000, 4000, 5000, 100_000] {
            for skipped in [0, 1, 5, 50, 2000] {
                if path_len * skipped > 10_000_000 {
                    continue;
                }
                let r = full_report(path_len, skipped);
                let v = r.to_bounded_json();
                assert!(
                    v.len() <= MAX_REPORT_BYTES,
                    "{path_len}/{skipped}: {}",
                    v.len()
                );
                let back: Report = serde_json::from_slice(&v).unwrap();
                assert_eq!(back.state, State::Signalled);
                assert_eq!(back.exit_code, Some(0));
                assert_eq!(back.attempt, Some(7));
                assert_eq!(back.last_step, Some(125));
                let last = back.last_checkpoint.expect("last checkpoint kept");
                assert_eq!(last.step, 123);
                assert!(last.path.ends_with("/step-123"), "{}", last.path);
                assert_eq!(
                    back.skipped.len() as u32 + back.skipped_omitted,
                    skipped as u32
                );
            }
        }
    }

    #[test]
    fn escaped_control_characters_still_fit() {
        let mut r = full_report(10, 0);
        r.last_checkpoint.as_mut().unwrap().path = "\u{1}".repeat(3000);
        let v = r.to_bounded_json();
        assert!(v.len() <= MAX_REPORT_BYTES);
        serde_json::from_slice::<Report>(&v).unwrap();
    }

    #[test]
    fn dev_shm_counts_as_exhausted_only_when_nearly_full() {
        let at = |size: u64, used: u64| ShmUse {
            size_bytes: size,
            peak_used_bytes: used,
        };
        assert!(at(64 << 20, (64 << 20) - 4096).exhausted());
        assert!(
            at(64 << 20, 54 << 20).exhausted(),
            "what the PyTorch example showed"
        );
        assert!(!at(64 << 20, 32 << 20).exhausted());
        assert!(!at(0, 0).exhausted());
    }

    #[test]
    fn reports_without_progress_still_parse() {
        let old = r#"{"version":1,"state":"signalled","exitCode":0,"lastCheckpoint":{"step":4,"path":"/c/step-4","bytes":1,"atUnixMs":2}}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!((r.last_step, &r.peer_stop), (None, &None));
        let v: serde_json::Value = serde_json::from_slice(&r.to_bounded_json()).unwrap();
        assert!(v.get("lastStep").is_none() && v.get("peerStop").is_none());
    }

    #[test]
    fn multibyte_paths_are_cut_on_char_boundaries() {
        let mut s = "é".repeat(5000);
        truncate_head(&mut s, 64);
        assert_eq!(s.chars().count(), 64);
        assert!(s.starts_with("...é"));
    }

    #[test]
    fn keys_are_camel_case() {
        let v: serde_json::Value =
            serde_json::from_slice(&full_report(1, 1).to_bounded_json()).unwrap();
        for k in [
            "version",
            "state",
            "exitCode",
            "signal",
            "signalToExitSeconds",
            "resumedFrom",
            "lastCheckpoint",
            "saves",
            "probe",
            "skipped",
            "attempt",
            "lastStep",
            "peerStop",
            "signalHonoured",
            "lockWaitSeconds",
            "lock",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["state"], "signalled");
        assert_eq!(v["signal"]["atUnixMs"], 1_700_000_000_000u64);
        assert!(v["saves"]["p95Seconds"].is_number());
        assert_eq!(v["lock"], "held");
        assert_eq!(
            serde_json::to_value(LockState::TimedOut).unwrap(),
            "timedOut"
        );
    }

    #[test]
    fn p95_is_nearest_rank() {
        assert_eq!(p95(&[]), None);
        assert_eq!(p95(&[3.0]), Some(3.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p95(&v), Some(95.0));
        let v: Vec<f64> = (1..=20).rev().map(f64::from).collect();
        assert_eq!(p95(&v), Some(19.0));
        assert_eq!(percentile(&[1.0, 2.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[1.0, 2.0], 99.0), Some(2.0));
    }
}
