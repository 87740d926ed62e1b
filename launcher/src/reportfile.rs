//! Writing the report so that a reader (the kubelet, after a SIGKILL of the
//! whole container) always finds one complete JSON document.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

enum Mode {
    /// Not tried yet.
    Unknown,
    /// tmp + rename in the same directory: readers see the old or the new
    /// file, never a mix.
    Rename,
    /// In-place rewrite of an open file, see [`write_in_place`].
    InPlace { file: File, len: u64 },
    /// Neither works (no such directory, read-only): training goes on without
    /// a report rather than failing over it.
    Off,
}

pub struct ReportFile {
    path: PathBuf,
    tmp: PathBuf,
    mode: Mode,
}

impl ReportFile {
    pub fn new(path: PathBuf) -> Self {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "report".into());
        // Not `*.tmp`: the report may live in the checkpoint directory, where
        // `*.tmp` means "a checkpoint being written". A fixed name (no pid) so
        // a leftover from a killed launcher is overwritten, not accumulated.
        let tmp = path.with_file_name(format!(".{name}.tj-tmp"));
        ReportFile {
            path,
            tmp,
            mode: Mode::Unknown,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, bytes: &[u8]) {
        loop {
            match &mut self.mode {
                Mode::Off => return,
                Mode::Rename => match self.write_renamed(bytes) {
                    Ok(()) => return,
                    Err(e) => {
                        eprintln!(
                            "launcher: report {}: atomic replace failed ({e}); rewriting in place",
                            self.path.display()
                        );
                        self.mode = self.open_in_place();
                    }
                },
                Mode::InPlace { file, len } => match write_in_place(file, *len, bytes) {
                    Ok(n) => {
                        *len = n;
                        return;
                    }
                    Err(e) => {
                        eprintln!(
                            "launcher: report {}: {e}; giving up on it",
                            self.path.display()
                        );
                        self.mode = Mode::Off;
                    }
                },
                Mode::Unknown => {
                    if self.write_renamed(bytes).is_ok() {
                        self.mode = Mode::Rename;
                        return;
                    }
                    // Kubernetes bind-mounts /dev/termination-log as a single
                    // file: renaming onto a mount point fails (EBUSY), and /dev
                    // may not be writable at all. Rewriting in place is the
                    // only option there.
                    self.mode = self.open_in_place();
                }
            }
        }
    }

    fn write_renamed(&self, bytes: &[u8]) -> io::Result<()> {
        let r = (|| {
            let mut f = File::create(&self.tmp)?;
            f.write_all(bytes)?;
            // No fsync: the report must survive the death of processes, which
            // the page cache already guarantees, not of the node; an fsync
            // here would add milliseconds to every update.
            drop(f);
            fs::rename(&self.tmp, &self.path)
        })();
        if r.is_err() {
            let _ = fs::remove_file(&self.tmp);
        }
        r
    }

    fn open_in_place(&self) -> Mode {
        match OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
        {
            Ok(file) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                Mode::InPlace { file, len }
            }
            Err(e) => {
                eprintln!(
                    "launcher: report {}: cannot write ({e}); continuing without a report",
                    self.path.display()
                );
                Mode::Off
            }
        }
    }
}

/// Rewrites `file` (currently `old_len` bytes long) to hold `json`, such that
/// it is valid JSON at every instant a process death could freeze it in.
///
/// A plain truncate-then-write has a window with an empty file, and a plain
/// overwrite of a longer document leaves its tail behind. Instead the new
/// document is padded with spaces to at least the old length and written with
/// one `pwrite` at offset 0 (JSON allows trailing whitespace, and a write of
/// at most one 4 KiB page to a regular file is not torn by a signal), then the
/// file is truncated to the new length. Dying between the two leaves the new
/// document plus spaces. Returns the new length.
pub fn write_in_place(file: &File, old_len: u64, json: &[u8]) -> io::Result<u64> {
    let mut buf = json.to_vec();
    if (buf.len() as u64) < old_len {
        buf.resize(old_len as usize, b' ');
    }
    file.write_all_at(&buf, 0)?;
    if old_len > json.len() as u64 {
        file.set_len(json.len() as u64)?;
    }
    Ok(json.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_rewrite_never_leaves_stale_tail() {
        let p = std::env::temp_dir().join(format!("launcher-inplace-{}", std::process::id()));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        let long = br#"{"state":"running","skipped":[{"path":"aaaaaaaaaaaaaaaa"}]}"#;
        let short = br#"{"state":"completed"}"#;
        let n = write_in_place(&f, 0, long).unwrap();
        assert_eq!(fs::read(&p).unwrap(), long);
        let n = write_in_place(&f, n, short).unwrap();
        assert_eq!(fs::read(&p).unwrap(), short);
        assert_eq!(n, short.len() as u64);

        // The state a death between pwrite and truncate would leave: still JSON.
        let mut padded = short.to_vec();
        padded.resize(long.len(), b' ');
        f.write_all_at(&padded, 0).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["state"], "completed");
        fs::remove_file(&p).unwrap();
    }

    #[test]
    fn rename_mode_replaces_whole_file() {
        let d = std::env::temp_dir().join(format!("launcher-rf-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let mut r = ReportFile::new(d.join("report.json"));
        r.write(b"{\"a\":1111111111}");
        r.write(b"{\"a\":2}");
        assert_eq!(fs::read(d.join("report.json")).unwrap(), b"{\"a\":2}");
        assert!(matches!(r.mode, Mode::Rename));
        let leftovers: Vec<_> = fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(leftovers.len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }
}
