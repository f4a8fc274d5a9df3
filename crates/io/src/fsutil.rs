//! Files replaced whole: a reader sees the old content or the new, never half of either.

use std::path::Path;

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
