//! Files that hold secrets or state: created owner-only (0600 on Unix) and never through a
//! symbolic link, so another local user can neither read them nor redirect the write.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Opens `path` for reading and writing, creating it owner-only if it is missing. Refuses a
/// symbolic link at `path` (`O_NOFOLLOW`), and takes away group and other permissions of an
/// existing file. `truncate` empties it.
pub fn create_private(path: &Path, truncate: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let file = options.open(path).map_err(|e| refuse_link(path, e))?;
    restrict(&file)?;
    Ok(file)
}

/// Replaces `path` with `bytes` atomically: an owner-only temporary file in the same folder,
/// fsynced, renamed over `path` (a rename replaces a symbolic link, never follows it).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}-{n}.tmp", std::process::id()));
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options.open(&tmp).and_then(|mut f| {
        restrict(&f)?;
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(unix)]
fn restrict(file: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_file: &File) -> io::Result<()> {
    Ok(())
}

fn refuse_link(path: &Path, e: io::Error) -> io::Error {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is a symbolic link; refusing to write through it", path.display()),
        )
    } else {
        e
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn created_owner_only_and_existing_files_are_restricted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.db");
        create_private(&p, false).expect("create");
        assert_eq!(mode(&p), 0o600);
        let q = dir.path().join("old.db");
        std::fs::write(&q, b"x").expect("write");
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        create_private(&q, false).expect("open");
        assert_eq!(mode(&q), 0o600, "group/other bits removed");
        assert_eq!(std::fs::read(&q).expect("read"), b"x", "not truncated");
    }

    #[test]
    fn symlinks_are_refused_or_replaced_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("victim");
        std::fs::write(&target, b"precious").expect("write");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = create_private(&link, true).expect_err("a link is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        write_private(&link, b"secret").expect("atomic write replaces the link");
        assert_eq!(std::fs::read(&target).expect("read"), b"precious", "target untouched");
        assert!(!std::fs::symlink_metadata(&link).expect("meta").file_type().is_symlink());
        assert_eq!(mode(&link), 0o600);
        assert_eq!(std::fs::read(&link).expect("read"), b"secret");
    }
}
