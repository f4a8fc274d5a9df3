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
/// The temporary name starts with a dot: the kubelet, which reads every file of its manifest
/// directory as a pod, ignores hidden ones.
pub fn write_atomically(scratch: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = scratch.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Not every filesystem can sync a directory; the rename itself already happened.
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}
