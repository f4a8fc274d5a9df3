//! The OpenSearch store's drain: a shipper reads the write-ahead log, sends the events in bulk
//! requests (several in flight), and releases the log only up to where every earlier event is
//! acknowledged by OpenSearch or, refused for good, kept in the dead-letter file. OpenSearch slow
//! or down: requests are retried with backoff, the log grows, and the webhook sheds load once the
//! backlog reaches its bound.

use std::{
    collections::VecDeque,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream::FuturesUnordered};

use clusteraudit_core::audit::Event;
use clusteraudit_opensearch_store::{
    OpenSearchStore,
    bulk::{Item, Outcome},
    document,
};
use clusteraudit_store::AuditStore;

use super::{CollectorError, DrainProgress, batch, metrics::Metrics, wal};

/// A bulk request carries at most this many events or raw bytes.
const BULK_EVENTS: usize = 5_000;
const BULK_BYTES: usize = 5 * 1024 * 1024;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub fn start(
    store: Arc<OpenSearchStore>,
    data_dir: &Path,
    wal: &wal::Wal,
    metrics: &Metrics,
    drain: &Arc<DrainProgress>,
) -> Result<(), CollectorError> {
    let reader = wal.reader()?;
    drain.position.store(reader.position(), Ordering::SeqCst);
    let shipper = Shipper {
        store,
        wal: wal.clone(),
        reader: Some(reader),
        metrics: metrics.clone(),
        drain: drain.clone(),
        dead_letters: data_dir.join("dead-letter.jsonl"),
        order: VecDeque::new(),
        next_seq: 0,
    };
    tokio::spawn(shipper.run());
    Ok(())
}

/// A run of log records shipped together.
struct Job {
    seq: u64,
    /// The log position just past its last record.
    end: u64,
    items: Vec<Item>,
    /// Events that could not even be made into documents.
    unreadable: Vec<DeadLetter>,
}

struct DeadLetter {
    topic: String,
    status: u16,
    reason: String,
    raw: String,
}

struct Shipped {
    seq: u64,
    stored: u64,
    dead: Vec<DeadLetter>,
}

/// A job in log order: done once its events are stored or dead-lettered.
struct InOrder {
    seq: u64,
    end: u64,
    oldest_micros: i64,
    done: bool,
}

struct Shipper {
    store: Arc<OpenSearchStore>,
    wal: wal::Wal,
    /// Lent to a blocking task while it reads.
    reader: Option<wal::WalReader>,
    metrics: Metrics,
    drain: Arc<DrainProgress>,
    dead_letters: PathBuf,
    order: VecDeque<InOrder>,
    next_seq: u64,
}

impl Shipper {
    async fn run(mut self) {
        let mut backoff = BACKOFF_FIRST;
        while let Err(err) = self.store.prepare().await {
            tracing::warn!(error = %err, "preparing OpenSearch failed; the log keeps the events meanwhile");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        tracing::info!(url = self.store.client().base(), "shipping to OpenSearch");
        let concurrency = self.store.bulk_concurrency();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < concurrency {
                let Some(job) = self.read_job().await else {
                    break;
                };
                let oldest_micros = job
                    .items
                    .iter()
                    .map(|item| item.document.time_micros)
                    .min()
                    .unwrap_or(0);
                self.order.push_back(InOrder {
                    seq: job.seq,
                    end: job.end,
                    oldest_micros,
                    done: false,
                });
                in_flight.push(ship(self.store.clone(), self.metrics.clone(), job));
            }
            self.publish_oldest();
            if in_flight.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            let shipped = if in_flight.len() < concurrency {
                tokio::select! {
                    shipped = in_flight.next() => shipped,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => None,
                }
            } else {
                in_flight.next().await
            };
            if let Some(shipped) = shipped {
                self.finish(shipped).await;
            }
        }
    }

    /// Reads the next records (up to a bulk request's worth) from the durable log.
    async fn read_job(&mut self) -> Option<Job> {
        let mut reader = self.reader.take()?;
        let wal = self.wal.clone();
        let seq = self.next_seq;
        let (reader, job) = tokio::task::spawn_blocking(move || {
            let limit = wal.durable_end();
            let mut job = Job {
                seq,
                end: reader.position(),
                items: Vec::new(),
                unreadable: Vec::new(),
            };
            let mut bytes = 0usize;
            let mut records = 0;
            while job.items.len() < BULK_EVENTS && bytes < BULK_BYTES {
                match reader.next(limit) {
                    Ok(Some((end, payload))) => {
                        records += 1;
                        bytes += payload.len();
                        job.end = end;
                        let decoded = wal.handover().and_then(|handover| handover.take(end));
                        add_record(&mut job, &payload, end, decoded.as_ref());
                    }
                    Ok(None) => break,
                    Err(err) => {
                        tracing::error!(error = %err, "reading the write-ahead log failed; retrying");
                        break;
                    }
                }
            }
            (reader, (records > 0).then_some(job))
        })
        .await
        .ok()?;
        self.reader = Some(reader);
        if job.is_some() {
            self.next_seq += 1;
        }
        job
    }

    async fn finish(&mut self, shipped: Shipped) {
        self.metrics.events_stored.inc_by(shipped.stored);
        if !shipped.dead.is_empty() {
            let mut backoff = BACKOFF_FIRST;
            // The log is only released past these once they are safely in the file.
            while let Err(err) = append_dead_letters(&self.dead_letters, &shipped.dead) {
                tracing::error!(error = %err, path = %self.dead_letters.display(), "writing the dead-letter file failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            self.metrics
                .events_dead_lettered
                .inc_by(shipped.dead.len() as u64);
            tracing::warn!(
                events = shipped.dead.len(),
                reason = %shipped.dead[0].reason,
                path = %self.dead_letters.display(),
                "OpenSearch refused events for good; they are in the dead-letter file"
            );
        }
        if let Some(entry) = self.order.iter_mut().find(|e| e.seq == shipped.seq) {
            entry.done = true;
        }
        let mut released = None;
        while self.order.front().is_some_and(|e| e.done) {
            released = self.order.pop_front().map(|e| e.end);
        }
        if let Some(end) = released {
            self.wal.release_before(end);
            self.drain.position.store(end, Ordering::SeqCst);
        }
        self.publish_oldest();
    }

    fn publish_oldest(&self) {
        let oldest = self
            .order
            .iter()
            .filter(|e| !e.done && e.oldest_micros != 0)
            .map(|e| e.oldest_micros)
            .min()
            .unwrap_or(0);
        self.drain
            .oldest_pending_micros
            .store(oldest, Ordering::SeqCst);
    }
}

/// Adds a record's events to the job; `decoded` (the webhook's, when handed over) spares
/// decoding them again.
fn add_record(job: &mut Job, payload: &[u8], end: u64, decoded: Option<&super::handover::Decoded>) {
    let sections = match batch::decode_sections(payload) {
        Ok(decoded) => decoded,
        Err(err) => {
            tracing::error!(error = %err, end, "skipping a damaged log record");
            return;
        }
    };
    for (section, (topic, raws)) in sections.into_iter().enumerate() {
        let decoded = decoded.and_then(|decoded| decoded.section(section, raws.len()));
        for (index, raw) in raws.into_iter().enumerate() {
            let handed = decoded.as_ref().and_then(|decoded| decoded[index]);
            add_event(job, topic, raw, handed.map(|(event, _)| event));
        }
    }
}

fn add_event(job: &mut Job, topic: &str, raw: &[u8], handed: Option<&Event>) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let unstorable = |reason: String| DeadLetter {
        topic: topic.to_string(),
        // Never sent: OpenSearch would refuse it.
        status: 0,
        reason,
        raw: text.clone(),
    };
    let decoded_here;
    let event = match handed {
        Some(event) => event,
        None => match serde_json::from_slice::<Event>(raw) {
            Ok(event) => {
                decoded_here = event;
                &decoded_here
            }
            // The webhook checked it before it was logged; one that no longer reads means a
            // code change, and is kept rather than dropped.
            Err(err) => {
                job.unreadable
                    .push(unstorable(format!("the event no longer decodes: {err}")));
                return;
            }
        },
    };
    match document::document(event, &text) {
        Some(document) => job.items.push(Item {
            topic: topic.to_string(),
            document,
            raw: text,
        }),
        None => job.unreadable.push(unstorable(format!(
            "its time ({}) is outside what OpenSearch's date_nanos holds (1970 to 2262)",
            event
                .stage_timestamp
                .as_deref()
                .or(event.request_received_timestamp.as_deref())
                .unwrap_or("none")
        ))),
    }
}

/// Sends a job until every event is stored or refused for good.
async fn ship(store: Arc<OpenSearchStore>, metrics: Metrics, job: Job) -> Shipped {
    let mut remaining = job.items;
    let mut dead = job.unreadable;
    let mut stored = 0u64;
    let mut backoff = BACKOFF_FIRST;
    while !remaining.is_empty() {
        // A topic deleted since its events were logged: indexing them would create its index
        // again, which no catalog entry (and so no retention) names.
        if let Ok(catalog) = store.catalog().await {
            let before = remaining.len();
            remaining.retain(|item| catalog.topic(&item.topic).is_ok());
            if remaining.len() < before {
                tracing::info!(
                    events = before - remaining.len(),
                    "dropping events of a deleted topic"
                );
            }
            if remaining.is_empty() {
                break;
            }
        }
        let started = Instant::now();
        match store.bulk(&remaining).await {
            Ok(outcomes) => {
                metrics
                    .bulk_seconds
                    .observe(started.elapsed().as_secs_f64());
                let mut retry = Vec::new();
                for (item, outcome) in remaining.into_iter().zip(outcomes) {
                    match outcome {
                        Outcome::Stored => stored += 1,
                        Outcome::Retry(_) => retry.push(item),
                        Outcome::Refused { status, reason } => dead.push(DeadLetter {
                            topic: item.topic,
                            status,
                            reason,
                            raw: item.raw,
                        }),
                    }
                }
                remaining = retry;
                if remaining.is_empty() {
                    break;
                }
                metrics.bulk_retry("item");
            }
            Err(err) => {
                let reason = if err.is_transient() {
                    "unavailable"
                } else {
                    "refused"
                };
                metrics.bulk_retry(reason);
                if backoff >= BACKOFF_MAX / 2 {
                    tracing::warn!(error = %err, "a bulk request failed; retrying");
                } else {
                    tracing::debug!(error = %err, "a bulk request failed; retrying");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    Shipped {
        seq: job.seq,
        stored,
        dead,
    }
}

/// Appends refused events to the dead-letter file, one JSON line each, and syncs it.
fn append_dead_letters(path: &Path, dead: &[DeadLetter]) -> std::io::Result<()> {
    let mut lines = Vec::new();
    let now = jiff::Timestamp::now().to_string();
    for letter in dead {
        let event = serde_json::from_str::<serde_json::Value>(&letter.raw)
            .unwrap_or_else(|_| serde_json::Value::String(letter.raw.clone()));
        serde_json::to_writer(
            &mut lines,
            &serde_json::json!({
                "time": now,
                "topic": letter.topic,
                "status": letter.status,
                "reason": letter.reason,
                "event": event,
            }),
        )
        .expect("JSON serializes");
        lines.push(b'\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(&lines)?;
    file.sync_data()
}
