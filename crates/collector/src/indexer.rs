//! The embedded store's drain: an indexer thread follows the write-ahead log into the store and
//! commits about once a second; a restart replays the log past what each window has committed.
//!
//! The log is released only up to what a commit covers. When the store fails to take a batch
//! (a full or broken disk), nothing moves on past it: what was added since the last commit is
//! dropped, reading starts again from that commit, with backoff, and the webhook answers 503
//! until a commit succeeds again.

use std::{
    io,
    path::Path,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use backon::BackoffBuilder;
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
    let reader = wal.reader()?;
    let mut indexer = Indexer {
        store: store.clone(),
        wal: wal.clone(),
        committed: reader.position(),
        reader,
        drain: drain.clone(),
        metrics: metrics.clone(),
        last_commit: Instant::now(),
        uncommitted: 0,
    };
    drain.position.store(indexer.committed, Ordering::SeqCst);
    let started = Instant::now();
    let replayed = indexer.catch_up().and_then(|added| {
        indexer.commit()?;
        Ok(added)
    });
    let failing = match replayed {
        Ok(replayed) => {
            if replayed > 0 {
                tracing::info!(events = replayed, elapsed = ?started.elapsed(), "replayed the write-ahead log");
            }
            false
        }
        // Serving starts anyway: the log takes batches while the indexer retries.
        Err(err) => {
            indexer.failed(&err, FIRST_RETRY);
            true
        }
    };
    std::thread::Builder::new()
        .name("indexer".into())
        .spawn(move || indexer.run(failing))
        .map_err(|source: io::Error| CollectorError::Read {
            what: "starting the indexer for",
            path: data_dir.into(),
            source,
        })?;
    Ok(Arc::new(Embedded(store)))
}

const COMMIT_EVERY: Duration = Duration::from_secs(1);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LONGEST_RETRY: Duration = Duration::from_secs(10);

fn retries() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(FIRST_RETRY)
        .with_max_delay(LONGEST_RETRY)
        .without_max_times()
        .build()
}

/// Follows the log into the store.
struct Indexer {
    store: Arc<Store>,
    wal: wal::Wal,
    reader: wal::WalReader,
    /// The log position the store's last commit covers: reading starts again here after a
    /// failure.
    committed: wal::Position,
    drain: Arc<DrainProgress>,
    metrics: metrics::Metrics,
    last_commit: Instant,
    /// Events added since the last commit.
    uncommitted: u64,
}

impl Indexer {
    /// Applies every durable record not yet applied; returns the events added.
    fn catch_up(&mut self) -> Result<usize, CollectorError> {
        let mut added = 0;
        let limit = self.wal.durable_end();
        while let Some((end, payload)) = self.reader.next(limit)? {
            let decoded = self.wal.handover().and_then(|handover| handover.take(end));
            match batch::decode_sections(&payload) {
                Ok(sections) => {
                    for (section, (topic, items)) in sections.into_iter().enumerate() {
                        let decoded = decoded
                            .as_ref()
                            .and_then(|decoded| decoded.section(section, items.len()));
                        let applied = self.store.apply(end, topic, &items, decoded.as_deref())?;
                        self.uncommitted += applied as u64;
                        added += applied;
                    }
                }
                // Its checksum held, so this is no damage on disk but a record this version
                // cannot read; the rest must not wait for it.
                Err(err) => {
                    tracing::error!(error = %err, end, "skipping a log record that does not decode")
                }
            }
            self.drain.position.store(end, Ordering::SeqCst);
            if self.last_commit.elapsed() >= COMMIT_EVERY {
                self.commit()?;
            }
        }
        Ok(added)
    }

    /// Commits what was added and releases the log up to where the reader is: every record
    /// before it is now in the store, or was skipped (already there, or of a deleted topic).
    fn commit(&mut self) -> Result<(), CollectorError> {
        let position = self.reader.position();
        if self.store.has_pending() {
            self.store.commit(position)?;
            self.metrics
                .events_stored
                .inc_by(std::mem::take(&mut self.uncommitted));
        }
        self.committed = position;
        self.wal.release_before(position);
        self.last_commit = Instant::now();
        Ok(())
    }

    /// Forgets what was not committed and goes back to the last commit, to retry from there.
    fn failed(&mut self, err: &CollectorError, retry_in: Duration) {
        self.metrics.index_failures.inc();
        let dropped = self.store.rollback();
        self.uncommitted = 0;
        self.reader.seek(self.committed);
        // What is read again is decoded from the log.
        if let Some(handover) = self.wal.handover() {
            handover.clear();
        }
        self.drain.position.store(self.committed, Ordering::SeqCst);
        self.drain.store_unavailable.store(true, Ordering::SeqCst);
        tracing::error!(
            error = %err,
            position = self.committed,
            dropped_uncommitted = dropped,
            ?retry_in,
            "indexing into the store failed; the batches stay in the log and are retried from the last commit, and the webhook answers 503 meanwhile"
        );
    }

    fn run(mut self, failing: bool) {
        let mut backoff = failing.then(retries);
        loop {
            let recovering = backoff.is_some();
            let step = self.catch_up().and_then(|added| {
                // While recovering, commit at once: the webhook takes batches again only once
                // the store has.
                if recovering || self.last_commit.elapsed() >= COMMIT_EVERY {
                    self.commit()?;
                }
                Ok(added)
            });
            match step {
                Ok(added) => {
                    if backoff.take().is_some() {
                        self.drain.store_unavailable.store(false, Ordering::SeqCst);
                        tracing::info!(position = self.committed, "the store takes batches again");
                    }
                    if added == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Err(err) => {
                    let delay = backoff
                        .get_or_insert_with(retries)
                        .next()
                        .unwrap_or(LONGEST_RETRY);
                    self.failed(&err, delay);
                    std::thread::sleep(delay);
                }
            }
            self.metrics.queue_depth.set(self.wal.queued() as i64);
        }
    }
}
