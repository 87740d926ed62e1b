//! Fencing: one trainer per rank at a time on a checkpoint directory.
//!
//! A force-deleted pod (`--grace-period=0 --force`, as Karpenter does) is gone
//! from the API at once while its processes may still run and still write a
//! checkpoint. The next attempt's pod for the same rank must not start its
//! trainer until they are gone. The launcher takes an exclusive flock(2) on
//! `<checkpoint dir>/.tj/rank-<R>.lock` before it touches the directory and
//! hands the locked descriptor to the trainer (it is inherited across exec),
//! so the lock lives exactly as long as the last process holding it: the
//! kernel releases it when the launcher, the trainer and any child that
//! inherited it are all dead, whichever dies last and however. A launcher that
//! is killed while its trainer runs on therefore does not free the rank.
//!
//! flock locks belong to the open file description, not to a process, which
//! is what makes the inheritance work. On NFS, Linux emulates flock with
//! POSIX byte-range locks, which the server arbitrates between nodes but
//! which belong to the process that took them: there the lock ends with the
//! launcher, which as PID 1 takes the whole container down with it anyway.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// Directory inside the checkpoint directory for the launcher's own files.
/// Its name is no checkpoint name, so scans and cleanup never touch it.
pub const DIR: &str = ".tj";

/// Exit status when the lock stayed held for the whole timeout
/// (EX_TEMPFAIL: try again later).
pub const EXIT_LOCK_TIMEOUT: i32 = 75;

pub fn lock_path(checkpoint_dir: &Path, rank: u32) -> PathBuf {
    checkpoint_dir.join(DIR).join(format!("rank-{rank}.lock"))
}

pub struct Fence {
    file: File,
    path: PathBuf,
}

impl Fence {
    /// Opens (creating) the lock file; does not lock it.
    pub fn open(checkpoint_dir: &Path, rank: u32) -> io::Result<Fence> {
        let path = lock_path(checkpoint_dir, rank);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        // Write access: on NFS the exclusive lock becomes a POSIX write
        // lock, which needs a descriptor open for writing.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        Ok(Fence { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock if it is free. `Ok(false)`: another open file
    /// description holds it.
    pub fn try_lock(&self) -> io::Result<bool> {
        loop {
            let r = unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(false),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
    }

    /// The descriptor the trainer must inherit: see [`inherit`].
    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// For the child between fork and exec (async-signal-safe): clears
/// close-on-exec on `fd`, so the trainer holds the lock too.
pub fn inherit(fd: RawFd) -> io::Result<()> {
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_free_again_when_closed() {
        let d = std::env::temp_dir().join(format!("launcher-fence-{}", std::process::id()));
        let a = Fence::open(&d, 3).unwrap();
        assert_eq!(a.path(), d.join(".tj/rank-3.lock"));
        let b = Fence::open(&d, 3).unwrap();
        let other_rank = Fence::open(&d, 4).unwrap();
        assert!(a.try_lock().unwrap());
        assert!(!b.try_lock().unwrap(), "a second description must wait");
        assert!(other_rank.try_lock().unwrap(), "ranks are independent");
        drop(a);
        assert!(b.try_lock().unwrap());
        fs::remove_dir_all(&d).unwrap();
    }
}
