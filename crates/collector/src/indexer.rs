//! The embedded store's drain: an indexer thread follows the write-ahead log into the store and
//! commits about once a second; a restart replays the log past what each window has committed.

use std::{
    io,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use clusteraudit_embedded_store::{Embedded, Store};

use super::{CollectorError, DrainProgress, batch, metrics, wal};

/// Opens the store, replays what it lacks from the log (before the server listens, so search
/// never misses what was acknowledged before a crash), and starts the indexer.
pub fn start(
    data_dir: &Path,
    wal: &wal::Wal,
    metrics: &metrics::Metrics,
    drain: &Arc<DrainProgress>,
) -> Result<Arc<Embedded>, CollectorError> {
    let store = Arc::new(Store::open(&data_dir.join("store"))?);
    let mut indexer = Indexer {
        store: store.clone(),
        wal: wal.clone(),
        reader: wal.reader()?,
        drain: drain.clone(),
        metrics: metrics.clone(),
        last_commit: Instant::now(),
    };
    let started = Instant::now();
    let replayed = indexer.catch_up()?;
    indexer.commit();
    if replayed > 0 {
        tracing::info!(events = replayed, elapsed = ?started.elapsed(), "replayed the write-ahead log");
    }
    std::thread::Builder::new()
        .name("indexer".into())
        .spawn(move || indexer.run())
        .map_err(|source: io::Error| CollectorError::Read {
            what: "starting the indexer for",
            path: data_dir.into(),
            source,
        })?;
    Ok(Arc::new(Embedded(store)))
}

const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Follows the log into the store.
struct Indexer {
    store: Arc<Store>,
    wal: wal::Wal,
    reader: wal::WalReader,
    drain: Arc<DrainProgress>,
    metrics: metrics::Metrics,
    last_commit: Instant,
}

impl Indexer {
    /// Applies every durable record not yet applied; returns the events added.
    fn catch_up(&mut self) -> Result<usize, CollectorError> {
        let mut added = 0;
        let limit = self.wal.durable_end();
        while let Some((end, payload)) = self.reader.next(limit)? {
            match batch::decode_record(&payload) {
                Ok((topic, items)) => match self.store.apply(end, topic, &items) {
                    Ok(n) => added += n,
                    Err(err) => {
                        tracing::error!(error = %err, "indexing a batch failed; it stays in the log")
                    }
                },
                Err(err) => tracing::error!(error = %err, end, "skipping a damaged log record"),
            }
            self.drain.position.store(end, Ordering::SeqCst);
            if self.last_commit.elapsed() >= COMMIT_EVERY {
                self.commit();
            }
        }
        self.metrics.events_stored.inc_by(added as u64);
        Ok(added)
    }

    fn commit(&mut self) {
        let position = self.reader.position();
        if self.store.has_pending() {
            match self.store.commit(position) {
                Ok(()) => self.wal.release_before(position),
                Err(err) => {
                    tracing::error!(error = %err, "committing the indexes failed; retrying")
                }
            }
        }
        self.last_commit = Instant::now();
    }

    fn run(mut self) {
        loop {
            match self.catch_up() {
                Ok(0) => {
                    if self.store.has_pending() && self.last_commit.elapsed() >= COMMIT_EVERY {
                        self.commit();
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(error = %err, "reading the write-ahead log failed; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            self.metrics.queue_depth.set(self.wal.queued() as i64);
        }
    }
}
