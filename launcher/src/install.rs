//! `launcher install DEST`: the operator's image has no shell and no `cp`,
//! so its init container runs the launcher itself to copy it into the
//! emptyDir that the trainer container mounts.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Copies the running executable to `dest`, executable by any user (the
/// trainer runs as its image's user, not ours), under a temporary name
/// renamed into place so the trainer never sees half a binary.
pub fn install_self(dest: &Path) -> io::Result<()> {
    let me = std::env::current_exe()?;
    let tmp = dest.with_extension("tmp");
    fs::copy(&me, &tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_an_executable_copy_of_itself() {
        let dir = std::env::temp_dir().join(format!("launcher-install-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("launcher");
        install_self(&dest).unwrap();
        let meta = fs::metadata(&dest).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            meta.len(),
            fs::metadata(std::env::current_exe().unwrap())
                .unwrap()
                .len()
        );
        assert!(!dest.with_extension("tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
