//! The data directory's disk, in /metrics: free space and size, read every few seconds, so that
//! an alert warns before the write-ahead log's reserve (--min-free-bytes) starts refusing batches.

use std::{path::PathBuf, time::Duration};

use crate::metrics::Metrics;

/// Often enough that a disk filling at the webhook's full rate is seen well before it is full.
const EVERY: Duration = Duration::from_secs(10);

/// Sets the gauges now and then every [`EVERY`], for as long as the runtime runs.
pub fn start(dir: PathBuf, metrics: &Metrics) {
    let metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            let read_dir = dir.clone();
            match tokio::task::spawn_blocking(move || disk(&read_dir)).await {
                Ok(Ok((free, size))) => {
                    metrics.data_disk_free_bytes.set(saturate(free));
                    metrics.data_disk_size_bytes.set(saturate(size));
                }
                Ok(Err(err)) => {
                    tracing::warn!(dir = %dir.display(), error = %err, "reading the data directory's disk space failed")
                }
                Err(_) => {}
            }
            tokio::time::sleep(EVERY).await;
        }
    });
}

/// Bytes free for an unprivileged writer (what the log's reserve counts) and the file system's
/// size.
fn disk(dir: &std::path::Path) -> nix::Result<(u64, u64)> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    let block = stat.fragment_size();
    Ok((
        stat.blocks_available().saturating_mul(block),
        stat.blocks().saturating_mul(block),
    ))
}

fn saturate(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_has_a_disk_with_room_no_larger_than_it() {
        let dir = tempfile::tempdir().unwrap();
        let (free, size) = disk(dir.path()).unwrap();
        assert!(size > 0);
        assert!(free <= size, "free {free} of {size}");
    }

    #[test]
    fn a_missing_directory_is_an_error_not_zero() {
        assert!(disk(std::path::Path::new("/nonexistent/clusteraudit")).is_err());
    }
}
