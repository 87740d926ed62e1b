//! The other half of the lifetime check: trainer processes, not pod objects.
//! A pod object can be gone (forced deletion, PodGC on a lost or
//! out-of-service node) while its processes run on, so during the tests
//! this samples the machine's processes and checks that no two trainers of
//! one rank of one job, from different attempts, are ever alive together.
//!
//! A trainer is a process the launcher started: only it and its children
//! carry `TJ_PROGRESS_FILE`. Its rank of its job is the launcher's lock
//! file it inherited (`<checkpoint dir>/.tj/rank-<R>.lock`), told apart by
//! device and inode, so jobs of the same name in two namespaces never mix;
//! its attempt is `TJ_ATTEMPT`. Sampling can miss an overlap shorter than
//! its period; the launcher's lock is what prevents one.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const PERIOD: Duration = Duration::from_millis(200);

/// A rank: the lock file's device and inode.
type Rank = (u64, u64);

#[derive(Debug, Default)]
pub struct Record {
    pub samples: usize,
    pub ranks: BTreeSet<Rank>,
    /// Trainer processes seen, by pid and attempt.
    pub processes: BTreeSet<(i32, String)>,
    pub overlaps: Vec<String>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<Record>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Record::default()));
        let (halt, rec) = (stop.clone(), record.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let seen = sample();
                check(&mut rec.lock().unwrap(), &seen);
                // The sampling period, not a synchronisation.
                std::thread::sleep(PERIOD);
            }
        });
        Self {
            stop,
            record,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> Record {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut self.record.lock().unwrap())
    }
}

/// One trainer process at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Seen {
    pub pid: i32,
    pub rank: Rank,
    pub attempt: String,
}

/// Folds one sample in: per rank, every trainer alive must be of one attempt.
pub fn check(rec: &mut Record, seen: &[Seen]) {
    rec.samples += 1;
    let mut by_rank: BTreeMap<Rank, BTreeSet<&str>> = BTreeMap::new();
    for s in seen {
        rec.ranks.insert(s.rank);
        rec.processes.insert((s.pid, s.attempt.clone()));
        by_rank.entry(s.rank).or_default().insert(&s.attempt);
    }
    for (rank, attempts) in by_rank.iter().filter(|(_, a)| a.len() > 1) {
        let pids: Vec<String> = seen
            .iter()
            .filter(|s| s.rank == *rank)
            .map(|s| format!("pid {} (attempt {})", s.pid, s.attempt))
            .collect();
        rec.overlaps.push(format!(
            "trainers of attempts {attempts:?} alive together on lock inode {}: {}",
            rank.1,
            pids.join(", ")
        ));
    }
}

fn sample() -> Vec<Seen> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(trainer)
        .collect()
}

/// The process, if it is a trainer holding a rank's lock file.
fn trainer(pid: i32) -> Option<Seen> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    let get = |name: &str| {
        let prefix = format!("{name}=");
        vars.iter()
            .find_map(|v| v.strip_prefix(prefix.as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    get("TJ_PROGRESS_FILE")?;
    let attempt = get("TJ_ATTEMPT")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let rank = fds.flatten().find_map(|fd| {
        let target = std::fs::read_link(fd.path()).ok()?;
        let name = target.file_name()?.to_str()?;
        let in_tj = target.parent()?.file_name()? == ".tj";
        if !(in_tj && name.starts_with("rank-") && name.ends_with(".lock")) {
            return None;
        }
        // Through /proc: the path inside the container's mounts resolves here.
        let meta = std::fs::metadata(fd.path()).ok()?;
        Some((meta.dev(), meta.ino()))
    })?;
    Some(Seen { pid, rank, attempt })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pid: i32, inode: u64, attempt: &str) -> Seen {
        Seen {
            pid,
            rank: (1, inode),
            attempt: attempt.into(),
        }
    }

    #[test]
    fn trainers_of_one_attempt_and_of_other_ranks_are_fine() {
        let mut rec = Record::default();
        // A trainer and its DataLoader worker; another rank's trainer.
        check(
            &mut rec,
            &[seen(10, 7, "1"), seen(11, 7, "1"), seen(12, 8, "2")],
        );
        check(&mut rec, &[seen(20, 7, "2")]);
        assert!(rec.overlaps.is_empty());
        assert_eq!(
            (rec.samples, rec.ranks.len(), rec.processes.len()),
            (2, 2, 4)
        );
    }

    #[test]
    fn two_attempts_on_one_lock_at_once_are_an_overlap() {
        let mut rec = Record::default();
        check(&mut rec, &[seen(10, 7, "1"), seen(20, 7, "2")]);
        assert_eq!(rec.overlaps.len(), 1);
        assert!(
            rec.overlaps[0].contains("pid 10 (attempt 1)"),
            "{:?}",
            rec.overlaps
        );
    }

    #[test]
    fn this_test_process_is_no_trainer() {
        assert_eq!(trainer(std::process::id() as i32), None);
    }
}
