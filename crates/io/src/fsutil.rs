//! Files: the one error every role reports a failed file operation with, and files replaced whole
//! (a reader sees the old content or the new, never half of either).

use std::path::{Path, PathBuf};

/// A file operation that failed: what was being done, to which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct FileError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// For `map_err`: `std::fs::read(&path).map_err(file_error("reading", &path))?`, where `?` turns
/// the [`FileError`] into the caller's error.
pub fn file_error<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> FileError + 'p {
    move |source| FileError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to a temporary file in `scratch` (on the same filesystem as `path`), syncs it,
/// renames it over `path` and syncs the directory, so the new content also survives a crash.
/// The file is readable by everyone and writable by its owner (0644).
pub fn write_atomically(scratch: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_via(scratch, path, bytes, 0o644)
}

/// Replaces `path` whole with `bytes`, the new file having exactly `mode`, through a temporary
/// file in the same directory (so a separate mount of that directory is no obstacle to the
/// rename). For files that hold secrets (0600) or must keep the mode they had.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    replace_via(dir, path, bytes, mode)
}

/// The temporary file gets a random name and is created exclusively (O_CREAT|O_EXCL, which never
/// follows a link at that name), so that nobody who can write to `scratch` can make this write
/// land in another file by planting a link or a file at a name known in advance; the rename
/// replaces a link at `path` itself, not what it points to. The name starts with a dot: the
/// kubelet, which reads every file of its manifest directory as a pod, ignores hidden ones.
fn replace_via(scratch: &Path, path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        // Narrow from the start: the content is written only after this.
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(scratch)?;
    // Exactly `mode`, whatever the umask.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|err| err.error)?;
    if let Some(dir) = path.parent() {
        // Not every filesystem can sync a directory; the rename itself already happened.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_replaced_file_has_exactly_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook.kubeconfig");
        replace_file(&path, b"token", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"token");
        assert_eq!(mode(&path), 0o600);
        replace_file(&path, b"other", 0o640).unwrap();
        assert_eq!(mode(&path), 0o640);
        write_atomically(dir.path(), &path, b"shared").unwrap();
        assert_eq!(mode(&path), 0o644);
        // Nothing is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn links_planted_in_the_directory_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let victim = elsewhere.path().join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        // At the temporary names a predictable scheme would use, and at the file itself.
        for name in [".state.json.tmp", ".state.json"] {
            std::os::unix::fs::symlink(&victim, dir.path().join(name)).unwrap();
        }
        let path = dir.path().join("state.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_atomically(dir.path(), &path, b"{}").unwrap();
        replace_file(&path, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        let written = std::fs::symlink_metadata(&path).unwrap();
        assert!(
            written.file_type().is_file(),
            "the link itself was replaced"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
    }
}
