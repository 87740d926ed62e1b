//! What one attempt leaves the next on the checkpoint volume: the last step
//! its trainer reached. A pod on a lost node never delivers its report, so
//! without this nobody could say how much work its loss cost. The next
//! attempt's launcher reads it once it holds the rank's lock (the earlier
//! trainer is gone by then, so the record is final) and reports it.
//!
//! `<checkpoint dir>/.tj/rank-<R>.progress`, JSON `{"attempt": A, "step": S}`,
//! replaced by rename so a reader never sees half of it. Not fsynced: it is
//! refreshed every second, and a record a second stale is as good as the
//! launcher's own view of the trainer's progress gets.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Handover {
    pub attempt: u32,
    /// The last step the trainer said it completed.
    pub step: u64,
}

pub fn path(checkpoint_dir: &Path, rank: u32) -> PathBuf {
    checkpoint_dir
        .join(crate::fence::DIR)
        .join(format!("rank-{rank}.progress"))
}

/// The record left by an earlier launcher of this rank, if one parses.
/// Bounded: anything with write access to the volume could have put a
/// large file here.
pub fn read(checkpoint_dir: &Path, rank: u32) -> Option<Handover> {
    let mut buf = Vec::new();
    fs::File::open(path(checkpoint_dir, rank))
        .ok()?
        .take(4096)
        .read_to_end(&mut buf)
        .ok()?;
    serde_json::from_slice(&buf).ok()
}

pub fn write(checkpoint_dir: &Path, rank: u32, h: Handover) -> std::io::Result<()> {
    let dest = path(checkpoint_dir, rank);
    let tmp = dest.with_extension("progress.tmp");
    fs::write(&tmp, serde_json::to_vec(&h)?)?;
    fs::rename(&tmp, &dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_to_the_next_launcher_and_junk_is_ignored() {
        let dir = std::env::temp_dir().join(format!("tj-handover-{}", std::process::id()));
        fs::create_dir_all(dir.join(crate::fence::DIR)).unwrap();
        assert_eq!(read(&dir, 0), None);
        let h = Handover {
            attempt: 3,
            step: 1234,
        };
        write(&dir, 0, h).unwrap();
        assert_eq!(read(&dir, 0), Some(h));
        assert_eq!(read(&dir, 1), None, "ranks apart");
        fs::write(path(&dir, 0), vec![b'{'; 10_000]).unwrap();
        assert_eq!(read(&dir, 0), None);
        let _ = fs::remove_dir_all(&dir);
    }
}
