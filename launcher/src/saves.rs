//! Measuring saves from directory events: the clock starts when the
//! temporary name appears, a checkpoint directory is created in place (as
//! DCP does), or an existing checkpoint starts being rewritten in place; it
//! stops when the final name appears, the completion marker inside it is
//! written, or the rewritten file is closed. Pure over events so the timing
//! rules are unit-testable.

use crate::checkpoint::{is_marker, parse_name, Name, Naming, HF_INCOMPLETE};
use crate::report::{p95, Saves};
use std::collections::HashMap;
use std::time::Instant;

/// Save durations kept for the p95: bounded so a job saving every few seconds
/// for weeks does not grow the launcher.
const MAX_SAMPLES: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// A save began (the trainer just finished a step).
    Started,
    /// A checkpoint directory is being written in place: watch inside it for
    /// its completion marker.
    WatchInside(String),
    /// `name` may now be complete; `started` is when its save began, if seen.
    Check {
        name: String,
        started: Option<Instant>,
    },
}

/// What happened to a file inside a checkpoint directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inside {
    /// Created or written to: it may still be incomplete.
    Written,
    /// Closed after writing, or renamed into place: whole.
    Finished,
    Removed,
}

#[derive(Default)]
pub struct Tracker {
    pending: HashMap<String, Instant>,
}

impl Tracker {
    /// Starts the clock for `name` unless a save of it is already running.
    fn start(&mut self, name: &str, now: Instant) -> bool {
        if self.pending.contains_key(name) {
            return false;
        }
        // Bound the map: a trainer that abandons temporaries (deleted
        // without IN_DELETE being seen) must not leak.
        if self.pending.len() > 64 {
            self.pending.clear();
        }
        self.pending.insert(name.to_string(), now);
        true
    }

    fn started(&mut self, name: &str, now: Instant) -> Action {
        if self.start(name, now) {
            Action::Started
        } else {
            Action::Nothing
        }
    }

    /// Something appeared in the checkpoint directory: created, or renamed
    /// into it.
    pub fn appeared(&mut self, name: &str, is_dir: bool, renamed: bool, now: Instant) -> Action {
        match parse_name(name) {
            Some(Name::Temp { final_name }) => {
                if matches!(parse_name(&final_name), Some(Name::Final { .. })) {
                    return self.started(&final_name, now);
                }
                Action::Nothing
            }
            Some(Name::Final { naming, .. }) => {
                if renamed {
                    Action::Check {
                        name: name.to_string(),
                        started: self.pending.get(name).copied(),
                    }
                } else if is_dir && naming != Naming::StepFile {
                    self.start(name, now);
                    Action::WatchInside(name.to_string())
                } else {
                    // A file created under its final name: written in
                    // place, done when it is closed.
                    self.started(name, now)
                }
            }
            None => Action::Nothing,
        }
    }

    /// A file in the checkpoint directory was written to. Only a final name
    /// matters: that is a checkpoint being rewritten in place.
    pub fn modified(&mut self, name: &str, now: Instant) -> Action {
        match parse_name(name) {
            Some(Name::Final {
                naming: Naming::StepFile,
                ..
            }) => self.started(name, now),
            _ => Action::Nothing,
        }
    }

    /// A file in the checkpoint directory that was open for writing was
    /// closed: an in-place write of a final name is then done.
    pub fn closed(&self, name: &str) -> Action {
        match self.pending.get(name) {
            Some(&t) if matches!(parse_name(name), Some(Name::Final { .. })) => Action::Check {
                name: name.to_string(),
                started: Some(t),
            },
            _ => Action::Nothing,
        }
    }

    /// A temporary was deleted: that save was abandoned.
    pub fn deleted(&mut self, name: &str) {
        if let Some(Name::Temp { final_name }) = parse_name(name) {
            self.pending.remove(&final_name);
        }
    }

    /// Something happened to `file` inside checkpoint directory `dir`. The
    /// completion marker finished (or Hugging Face's incomplete marker
    /// removed) means it may be complete; any other write means a save into
    /// it is under way, which for a checkpoint that already existed is an
    /// in-place rewrite whose clock starts now.
    pub fn inside(&mut self, dir: &str, file: &str, what: Inside, now: Instant) -> Action {
        let done = match what {
            Inside::Removed => file == HF_INCOMPLETE,
            Inside::Finished => is_marker(file) && file != HF_INCOMPLETE,
            Inside::Written => false,
        };
        if done {
            Action::Check {
                name: dir.to_string(),
                started: self.pending.get(dir).copied(),
            }
        } else if what == Inside::Removed {
            Action::Nothing
        } else {
            self.started(dir, now)
        }
    }

    /// The check found `name` complete.
    pub fn completed(&mut self, name: &str) {
        self.pending.remove(name);
    }
}

#[derive(Default, Debug)]
pub struct Stats {
    count: u32,
    last_seconds: Option<f64>,
    last_bytes: u64,
    samples: Vec<f64>,
    timed_bytes: u64,
    timed_seconds: f64,
}

impl Stats {
    pub fn record(&mut self, bytes: u64, seconds: Option<f64>) {
        self.count += 1;
        self.last_bytes = bytes;
        if let Some(s) = seconds {
            self.last_seconds = Some(s);
            if self.samples.len() == MAX_SAMPLES {
                self.samples.remove(0);
            }
            self.samples.push(s);
            self.timed_bytes += bytes;
            self.timed_seconds += s;
        }
    }

    pub fn to_report(&self) -> Option<Saves> {
        (self.count > 0).then(|| Saves {
            count: self.count,
            last_seconds: self.last_seconds.map(round6),
            last_bytes: self.last_bytes,
            p95_seconds: p95(&self.samples).map(round6),
            bytes_per_second: (self.timed_seconds > 0.0)
                .then(|| (self.timed_bytes as f64 / self.timed_seconds).round()),
        })
    }
}

/// Microseconds are plenty, and shorter numbers leave room in the 4 KiB.
pub fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn file_save_timed_from_tmp_to_rename() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        assert_eq!(
            t.appeared("step-3.ckpt.tmp", false, false, t0),
            Action::Started
        );
        let a = t.appeared("step-3.ckpt", false, true, t0 + Duration::from_secs(2));
        assert_eq!(
            a,
            Action::Check {
                name: "step-3.ckpt".into(),
                started: Some(t0)
            }
        );
        t.completed("step-3.ckpt");
        assert!(t.pending.is_empty());
    }

    #[test]
    fn hf_staging_dir() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.appeared("tmp-checkpoint-500", true, false, t0);
        let a = t.appeared("checkpoint-500", true, true, t0);
        assert!(matches!(
            a,
            Action::Check {
                started: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn dcp_dir_written_in_place() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        assert_eq!(
            t.appeared("step-9", true, false, t0),
            Action::WatchInside("step-9".into())
        );
        assert_eq!(
            t.inside("step-9", "__0_0.distcp", Inside::Finished, t0),
            Action::Nothing
        );
        assert_eq!(
            t.inside("step-9", ".metadata", Inside::Finished, t0),
            Action::Check {
                name: "step-9".into(),
                started: Some(t0)
            }
        );
    }

    #[test]
    fn abandoned_and_unrelated_names() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        t.appeared("step-1.tmp", true, false, t0);
        t.deleted("step-1.tmp");
        assert!(matches!(
            t.appeared("step-1", true, true, t0),
            Action::Check { started: None, .. }
        ));
        assert_eq!(t.appeared("notes.tmp", false, false, t0), Action::Nothing);
        assert!(t.pending.is_empty());
        assert_eq!(t.appeared("step-2.ckpt", false, false, t0), Action::Started);
    }

    #[test]
    fn file_rewritten_in_place_is_timed_from_first_write_to_close() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        // A close without a write (an fsync through a new descriptor) is
        // not a save.
        assert_eq!(t.closed("step-3.ckpt"), Action::Nothing);
        assert_eq!(t.modified("step-3.ckpt", t0), Action::Started);
        assert_eq!(
            t.modified("step-3.ckpt", t0 + Duration::from_secs(1)),
            Action::Nothing,
            "later writes do not restart the clock"
        );
        assert_eq!(t.modified("step-3.ckpt.tmp", t0), Action::Nothing);
        assert_eq!(t.modified("notes.txt", t0), Action::Nothing);
        assert_eq!(
            t.closed("step-3.ckpt"),
            Action::Check {
                name: "step-3.ckpt".into(),
                started: Some(t0)
            }
        );
    }

    #[test]
    fn directory_rewritten_in_place_is_timed_from_first_write_to_marker() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        assert_eq!(
            t.inside("checkpoint-7", "model.safetensors", Inside::Written, t0),
            Action::Started
        );
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(
            t.inside("checkpoint-7", "optimizer.pt", Inside::Finished, t1),
            Action::Nothing
        );
        // Written but not yet closed: may be torn.
        assert_eq!(
            t.inside("checkpoint-7", "trainer_state.json", Inside::Written, t1),
            Action::Nothing
        );
        assert_eq!(
            t.inside("checkpoint-7", "trainer_state.json", Inside::Finished, t1),
            Action::Check {
                name: "checkpoint-7".into(),
                started: Some(t0)
            }
        );
        // Hugging Face's JIT save removes its incomplete marker last.
        assert!(matches!(
            t.inside("checkpoint-7", HF_INCOMPLETE, Inside::Removed, t1),
            Action::Check { started: Some(s), .. } if s == t0
        ));
        assert_eq!(
            t.inside("checkpoint-7", "old.bin", Inside::Removed, t1),
            Action::Nothing
        );
    }

    #[test]
    fn stats() {
        let mut s = Stats::default();
        assert!(s.to_report().is_none());
        for i in 1..=20 {
            s.record(100, Some(i as f64));
        }
        s.record(50, None);
        let r = s.to_report().unwrap();
        assert_eq!(r.count, 21);
        assert_eq!(r.last_bytes, 50);
        assert_eq!(r.last_seconds, Some(20.0));
        assert_eq!(r.p95_seconds, Some(19.0));
        assert_eq!(r.bytes_per_second, Some((2000.0f64 / 210.0).round()));
    }
}
