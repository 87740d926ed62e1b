//! Removing /dev/shm files that crashed processes leaked.
//!
//! PyTorch DataLoader workers (`torch_<pid>_*`), multiprocessing
//! (`psm_*`, `sem.mp-*`), NCCL (`nccl-*`) and Intel OpenMP
//! (`__KMP_REGISTERED_LIB_<pid>*`) clean up with atexit handlers, which a
//! SIGKILL or OOM kill skips; the files then eat the memory-backed /dev/shm
//! until workers fail to allocate. Only those known names are touched (a user
//! may keep data in /dev/shm on purpose), and never one that a live process
//! has open or mapped, or whose owner pid (when the name carries one) lives.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

const PATTERNS: [&str; 7] = [
    "torch_",
    "psm_",
    "sem.mp-",
    "nccl-",
    "__KMP_REGISTERED_LIB_",
    "tj-deadline-",
    "tj-progress-",
];

/// How full the memory-backed /dev/shm is: (size, bytes used). A DataLoader
/// whose prefetched batches outgrow it fails with ENOSPC or SIGBUS, which
/// looks like any crash from outside; this is the evidence that it was not.
pub fn usage(dir: &Path) -> Option<(u64, u64)> {
    let path = crate::sys::cstring(dir.as_os_str()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let block = st.f_frsize as u64;
    let size = st.f_blocks as u64 * block;
    let used = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64) * block;
    Some((size, used))
}

pub fn is_known_leak_name(name: &str) -> bool {
    PATTERNS.iter().any(|p| name.starts_with(p))
}

/// The pid encoded in names such as `torch_1234_567`,
/// `__KMP_REGISTERED_LIB_1234_0`, `tj-deadline-1234` or `tj-progress-1234`.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = [
        "torch_",
        "__KMP_REGISTERED_LIB_",
        "tj-deadline-",
        "tj-progress-",
    ]
    .iter()
    .find_map(|p| name.strip_prefix(p))?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Paths under `dir` that a live process holds open or mapped. `Err` when a
/// process could not be inspected: then nothing can be proven unused.
fn paths_in_use(dir: &Path) -> io::Result<HashSet<PathBuf>> {
    let me = std::process::id().to_string();
    let mut used = HashSet::new();
    for e in fs::read_dir("/proc")? {
        let e = e?;
        let name = e.file_name();
        let Some(pid) = name.to_str() else { continue };
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let proc_dir = e.path();
        match fs::read_dir(proc_dir.join("fd")) {
            Ok(fds) => {
                for fd in fds.flatten() {
                    if let Ok(target) = fs::read_link(fd.path()) {
                        if target.starts_with(dir) {
                            used.insert(target);
                        }
                    }
                }
            }
            // Exited while we looked.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        match fs::read_to_string(proc_dir.join("maps")) {
            Ok(maps) => {
                for line in maps.lines() {
                    // The path is the 6th field and may contain spaces.
                    let Some(path) = line.splitn(6, ' ').nth(5) else {
                        continue;
                    };
                    let path = path.trim_start();
                    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
                    if Path::new(path).starts_with(dir) {
                        used.insert(PathBuf::from(path));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // A more privileged process (a sandbox's own init) may hide its
            // mappings but not its fds; those were checked above, and a
            // process that can hide its mappings is not one of the trainer's.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(used)
}

/// Removes leaked entries; returns how many were removed.
pub fn clean(dir: &Path) -> io::Result<u32> {
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut victims = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_known_leak_name(name) || !e.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        if owner_pid(name).is_some_and(crate::sys::pid_alive) {
            continue;
        }
        victims.push(e.path());
    }
    if victims.is_empty() {
        return Ok(0);
    }
    // /proc paths are canonical, so compare against the canonical dir.
    let canon = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let used = paths_in_use(&canon)?;
    let mut removed = 0;
    for v in victims {
        let c = canon.join(v.file_name().unwrap_or_default());
        if used.contains(&c) {
            continue;
        }
        if fs::remove_file(&v).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_owner_pids() {
        assert!(is_known_leak_name("torch_123_456"));
        assert!(is_known_leak_name("psm_deadbeef"));
        assert!(!is_known_leak_name("dataset.bin"));
        assert_eq!(owner_pid("torch_123_456"), Some(123));
        assert_eq!(owner_pid("__KMP_REGISTERED_LIB_77_0"), Some(77));
        assert_eq!(owner_pid("tj-deadline-9"), Some(9));
        assert_eq!(owner_pid("tj-progress-12"), Some(12));
        assert!(is_known_leak_name("tj-progress-12"));
        assert_eq!(owner_pid("psm_123"), None);
        assert_eq!(owner_pid("torch_x"), None);
    }
}
