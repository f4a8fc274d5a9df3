//! Posting the generated EventLists to the collector's webhook: `--concurrency` batches in flight,
//! a throttled batch retried after its `Retry-After`, one that meets transport errors retried a few
//! times, any other answer final.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder};
use tokio::time::Instant;

use clusteraudit_core::audit::EventList;

use crate::freshness::Freshness;
use crate::rendered::{POOL_BATCHES, RenderedBatch};
use crate::{EventGenerator, LoadgenArgs, LoadgenError, Percentiles, Report};

/// Retries of one batch after transport errors (so at most 1 + this many attempts).
const TRANSPORT_RETRIES: usize = 5;
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(100);
/// 429s one batch may get before it is dropped, so a collector that only ever throttles cannot
/// keep the run going forever.
const THROTTLE_RETRIES: usize = 50;
/// The wait after a 429 whose `Retry-After` is missing or unreadable.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Stop sending once this many batches in a row were dropped after all their transport retries:
/// the collector is gone, and the rest of the run would only count errors.
const GIVE_UP_AFTER_DEAD_BATCHES: u64 = 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Batch {
    body: Vec<u8>,
    ids: Vec<String>,
    /// The auditID of the freshness marker this batch carries, if any.
    marker: Option<String>,
}

#[derive(Default)]
struct Stats {
    events_sent: u64,
    events_acked: u64,
    batches_acked: u64,
    batches_rejected: BTreeMap<u16, u64>,
    transport_errors: u64,
    latencies_ms: Vec<f64>,
}

struct Shared {
    client: reqwest::Client,
    urls: Vec<reqwest::Url>,
    /// Round-robin over the targets, per attempt.
    next_url: AtomicU64,
    token: Option<String>,
    deadline: Option<Instant>,
    pacer: Option<Pacer>,
    stats: Mutex<Stats>,
    acked: Option<(PathBuf, Mutex<std::fs::File>)>,
    stop: AtomicBool,
    dead_batches_in_a_row: AtomicU64,
    freshness: Option<Arc<Freshness>>,
}

/// Hands out send slots so that at most `rate` events per second leave, across all senders.
struct Pacer {
    rate: f64,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    fn reserve(&self, events: usize) -> Instant {
        let mut next = self.next.lock().expect("pacer lock");
        let now = Instant::now();
        let slot = next.map_or(now, |next| next.max(now));
        *next = Some(slot + Duration::from_secs_f64(events as f64 / self.rate));
        slot
    }
}

impl Shared {
    fn next_url(&self) -> reqwest::Url {
        let at = self.next_url.fetch_add(1, Ordering::Relaxed) as usize;
        self.urls[at % self.urls.len()].clone()
    }

    /// Runs `fut` unless the deadline passes first.
    async fn before_deadline<F: Future>(&self, fut: F) -> Option<F::Output> {
        match self.deadline {
            None => Some(fut.await),
            Some(deadline) => tokio::time::timeout_at(deadline, fut).await.ok(),
        }
    }

    /// Sleeps, unless that would run past the deadline; false when the run is out of time.
    async fn sleep(&self, duration: Duration) -> bool {
        self.before_deadline(tokio::time::sleep(duration))
            .await
            .is_some()
    }
}

enum Outcome {
    Acked,
    Dropped,
    OutOfTime,
}

/// Posts `--events` events in `--batch`-sized EventLists to `--target`, `--concurrency` at a time.
pub async fn run(args: LoadgenArgs) -> Result<Report, LoadgenError> {
    if args.batch == 0 {
        return Err(LoadgenError::InvalidArguments(
            "--batch must be at least 1".into(),
        ));
    }
    if args.concurrency == 0 {
        return Err(LoadgenError::InvalidArguments(
            "--concurrency must be at least 1".into(),
        ));
    }
    let mut urls = Vec::with_capacity(args.target.len());
    for target in &args.target {
        let url = reqwest::Url::parse(target).map_err(|err| LoadgenError::InvalidTarget {
            target: target.clone(),
            reason: err.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(LoadgenError::InvalidTarget {
                target: target.clone(),
                reason: "expected http://host[:port]/path or https://host[:port]/path".into(),
            });
        }
        urls.push(url);
    }
    if urls.is_empty() {
        return Err(LoadgenError::InvalidArguments(
            "--target is required".into(),
        ));
    }
    let token = resolve_token(&args)?;
    let client = build_client(&args, &urls)?;
    let acked = match &args.acked_ids_file {
        None => None,
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LoadgenError::AckedIdsFile {
                    path: path.clone(),
                    source,
                })?;
            Some((path.clone(), Mutex::new(file)))
        }
    };

    let freshness = if args.freshness.enabled {
        Some(Freshness::start(&args.freshness, client.clone(), &urls[0]).await?)
    } else {
        None
    };

    let start = Instant::now();
    let shared = Arc::new(Shared {
        client,
        urls,
        next_url: AtomicU64::new(0),
        token,
        deadline: args.duration.map(|d| start + Duration::from(d)),
        pacer: (args.rate > 0).then(|| Pacer {
            rate: args.rate as f64,
            next: Mutex::new(None),
        }),
        stats: Mutex::new(Stats::default()),
        acked,
        stop: AtomicBool::new(false),
        dead_batches_in_a_row: AtomicU64::new(0),
        freshness: freshness.clone(),
    });
    let poller = freshness.clone().map(|f| tokio::spawn(f.poll()));
    tracing::info!(
        targets = ?args.target,
        events = args.events,
        batch = args.batch,
        concurrency = args.concurrency,
        rate = args.rate,
        "load generator starting"
    );

    // The producer generates and encodes batches on a blocking thread, a few ahead of the senders.
    let (tx, rx) = tokio::sync::mpsc::channel::<Batch>(args.concurrency * 2);
    let producer = {
        let (events, batch, seed) = (args.events, args.batch, args.seed);
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let mut generator = EventGenerator::new(seed);
            // The first batches are made and kept; the rest are those again, stamped anew.
            let mut pool: Vec<RenderedBatch> = Vec::with_capacity(POOL_BATCHES);
            let mut reused = 0usize;
            let mut fresh_ids = crate::rendered::id_source(seed);
            let mut remaining = events;
            while remaining > 0 && !shared.stop.load(Ordering::Relaxed) {
                let size = remaining.min(batch as u64) as usize;
                let marker = shared
                    .freshness
                    .as_ref()
                    .and_then(|f| f.book().mint(std::time::Instant::now()));
                let batch = if marker.is_none() && size == batch && pool.len() == POOL_BATCHES {
                    let (body, ids) = pool[reused % POOL_BATCHES]
                        .restamped(&mut fresh_ids, jiff::Timestamp::now());
                    reused += 1;
                    Batch {
                        body,
                        ids,
                        marker: None,
                    }
                } else {
                    let mut list = generator.next_list(size);
                    // The marker is an ordinary event of the mix under a fresh auditID.
                    if let Some(id) = &marker {
                        let event = &mut list.items[size / 2];
                        event.audit_id = id.clone();
                        event.user.username = crate::freshness::MARKER_USER.into();
                    }
                    let ids = list.items.iter().map(|e| e.audit_id.clone()).collect();
                    let rendered = (marker.is_none() && size == batch && pool.len() < POOL_BATCHES)
                        .then(|| RenderedBatch::render(&list))
                        .flatten();
                    let body = match rendered {
                        Some(rendered) => {
                            let body = rendered.body().to_vec();
                            pool.push(rendered);
                            body
                        }
                        None => event_list_json(&list),
                    };
                    Batch { body, ids, marker }
                };
                if tx.blocking_send(batch).is_err() {
                    break;
                }
                remaining -= size as u64;
            }
        })
    };

    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut senders = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        let (shared, rx) = (shared.clone(), rx.clone());
        senders.push(tokio::spawn(async move { send_queued(&shared, &rx).await }));
    }
    let mut first_error = None;
    for sender in futures::future::join_all(senders).await {
        let result = sender.map_err(|err| LoadgenError::Task(err.to_string()));
        if let Err(err) = result.and_then(|r| r)
            && first_error.is_none()
        {
            first_error = Some(err);
        }
    }
    // Every receiver is gone now, so the producer's next send fails and it returns.
    shared.stop.store(true, Ordering::Relaxed);
    drop(rx);
    producer
        .await
        .map_err(|err| LoadgenError::Task(err.to_string()))?;
    if let Some(err) = first_error {
        return Err(err);
    }

    let seconds = start.elapsed().as_secs_f64();
    let freshness = match (&shared.freshness, poller) {
        (Some(freshness), Some(poller)) => {
            freshness.sending_done();
            Some(
                poller
                    .await
                    .map_err(|err| LoadgenError::Task(err.to_string()))?,
            )
        }
        _ => None,
    };
    let mut stats = std::mem::take(&mut *shared.stats.lock().expect("stats lock"));
    let report = Report {
        events_sent: stats.events_sent,
        events_acked: stats.events_acked,
        batches_acked: stats.batches_acked,
        batches_rejected: stats.batches_rejected,
        transport_errors: stats.transport_errors,
        seconds,
        events_per_second: if seconds > 0.0 {
            stats.events_acked as f64 / seconds
        } else {
            0.0
        },
        ack_latency_ms: Percentiles::from_samples(&mut stats.latencies_ms),
        freshness,
    };
    tracing::info!(
        acked = report.events_acked,
        events_per_second = report.events_per_second,
        "load generator done"
    );
    Ok(report)
}

/// Takes batches off the queue until it is empty, the run is out of time, or it was stopped.
async fn send_queued(
    shared: &Shared,
    rx: &tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Batch>>,
) -> Result<(), LoadgenError> {
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let next = shared.before_deadline(async { rx.lock().await.recv().await });
        let Some(Some(batch)) = next.await else {
            return Ok(());
        };
        let outcome = send_batch(shared, &batch).await?;
        if let (Some(freshness), Some(marker)) = (&shared.freshness, &batch.marker)
            && !matches!(outcome, Outcome::Acked)
        {
            freshness.book().dropped(marker);
        }
        if let Outcome::OutOfTime = outcome {
            return Ok(());
        }
    }
}

/// Posts one batch until it is acknowledged, rejected, or out of retries.
async fn send_batch(shared: &Shared, batch: &Batch) -> Result<Outcome, LoadgenError> {
    let events = batch.ids.len();
    let mut transport_backoff = ConstantBuilder::default()
        .with_delay(TRANSPORT_BACKOFF)
        .with_max_times(TRANSPORT_RETRIES)
        .build();
    let mut throttle_backoff = ConstantBuilder::default()
        .with_delay(DEFAULT_RETRY_AFTER)
        .with_max_times(THROTTLE_RETRIES)
        .build();
    let mut posted = false;
    loop {
        if let Some(pacer) = &shared.pacer {
            let slot = pacer.reserve(events);
            if shared.deadline.is_some_and(|deadline| slot > deadline) {
                return Ok(Outcome::OutOfTime);
            }
            tokio::time::sleep_until(slot).await;
        }
        if !posted {
            posted = true;
            shared.stats.lock().expect("stats lock").events_sent += events as u64;
        }
        let mut request = shared
            .client
            .post(shared.next_url())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(batch.body.clone());
        if let Some(token) = &shared.token {
            request = request.bearer_auth(token);
        }
        let sent = Instant::now();
        let attempt = shared.before_deadline(async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok());
            // Read the (small) answer so the connection can be reused; a 200 counts even if the
            // body is cut short, since the status line already said the batch is durable.
            let _ = response.bytes().await;
            Ok::<_, reqwest::Error>((status, retry_after))
        });
        let Some(answer) = attempt.await else {
            return Ok(Outcome::OutOfTime);
        };
        let latency = sent.elapsed();
        if answer.is_ok() {
            // The collector answers: it is not gone, whatever it said.
            shared.dead_batches_in_a_row.store(0, Ordering::Relaxed);
        }
        match answer {
            Ok((200, _)) => {
                if let (Some(freshness), Some(marker)) = (&shared.freshness, &batch.marker) {
                    freshness.book().acked(marker, std::time::Instant::now());
                }
                record_ack(shared, batch)?;
                let mut stats = shared.stats.lock().expect("stats lock");
                stats.events_acked += events as u64;
                stats.batches_acked += 1;
                stats.latencies_ms.push(latency.as_secs_f64() * 1000.0);
                return Ok(Outcome::Acked);
            }
            Ok((status, retry_after)) => {
                *shared
                    .stats
                    .lock()
                    .expect("stats lock")
                    .batches_rejected
                    .entry(status)
                    .or_default() += 1;
                if status != 429 {
                    tracing::debug!(status, "batch rejected; dropping it");
                    return Ok(Outcome::Dropped);
                }
                let Some(default_wait) = throttle_backoff.next() else {
                    tracing::warn!(
                        retries = THROTTLE_RETRIES,
                        "batch throttled too often; dropping it"
                    );
                    return Ok(Outcome::Dropped);
                };
                let wait = retry_after.map_or(default_wait, Duration::from_secs);
                if !shared.sleep(wait.min(MAX_RETRY_AFTER)).await {
                    return Ok(Outcome::OutOfTime);
                }
            }
            Err(err) => {
                shared.stats.lock().expect("stats lock").transport_errors += 1;
                let Some(wait) = transport_backoff.next() else {
                    tracing::warn!(error = %err, retries = TRANSPORT_RETRIES, "dropping a batch");
                    let dead = shared.dead_batches_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                    if dead >= GIVE_UP_AFTER_DEAD_BATCHES {
                        tracing::warn!(dead, "the collector is unreachable; stopping the run");
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                    return Ok(Outcome::Dropped);
                };
                tracing::debug!(error = %err, "transport error; retrying");
                if !shared.sleep(wait).await {
                    return Ok(Outcome::OutOfTime);
                }
            }
        }
    }
}

/// Appends a 200-acknowledged batch's auditIDs to the acked-ids file, in one write.
fn record_ack(shared: &Shared, batch: &Batch) -> Result<(), LoadgenError> {
    let Some((path, file)) = &shared.acked else {
        return Ok(());
    };
    let mut lines = String::with_capacity(batch.ids.len() * 37);
    for id in &batch.ids {
        lines.push_str(id);
        lines.push('\n');
    }
    let mut file = file.lock().expect("acked-ids lock");
    file.write_all(lines.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|source| {
            shared.stop.store(true, Ordering::Relaxed);
            LoadgenError::AckedIdsFile {
                path: path.clone(),
                source,
            }
        })
}

/// A bearer token from a file, trimmed; an empty file is an error.
pub(crate) fn read_token_file(path: &std::path::Path) -> Result<String, LoadgenError> {
    let token = std::fs::read_to_string(path).map_err(|source| LoadgenError::ReadTokenFile {
        path: path.to_path_buf(),
        source,
    })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(LoadgenError::EmptyTokenFile(path.to_path_buf()));
    }
    Ok(token.to_string())
}

fn resolve_token(args: &LoadgenArgs) -> Result<Option<String>, LoadgenError> {
    if let Some(path) = &args.token_file {
        return read_token_file(path).map(Some);
    }
    Ok(args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string))
}

fn build_client(
    args: &LoadgenArgs,
    urls: &[reqwest::Url],
) -> Result<reqwest::Client, LoadgenError> {
    clusteraudit_io::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("clusteraudit-loadgen/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .no_proxy();
    if let Some(url) = urls.iter().find(|url| url.scheme() == "https") {
        if args.insecure_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        } else {
            let Some(path) = &args.ca_file else {
                return Err(LoadgenError::CaFileRequired(url.to_string()));
            };
            let pem = std::fs::read(path).map_err(|source| LoadgenError::ReadCaFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|err| {
                LoadgenError::ParseCaFile {
                    path: path.clone(),
                    reason: err.to_string(),
                }
            })?;
            if certs.is_empty() {
                return Err(LoadgenError::ParseCaFile {
                    path: path.clone(),
                    reason: "no CERTIFICATE block".into(),
                });
            }
            builder = builder.tls_certs_only(certs);
        }
    }
    builder
        .build()
        .map_err(|err| LoadgenError::BuildClient(err.to_string()))
}

/// Encodes an EventList the way the kube-apiserver's webhook backend does:
/// `{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[...]}`.
pub fn event_list_json(list: &EventList) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + list.items.len() * 900);
    out.extend_from_slice(LIST_HEAD);
    for (i, event) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, event).expect("an Event always serializes");
    }
    out.extend_from_slice(LIST_TAIL);
    out
}

pub(crate) const LIST_HEAD: &[u8] =
    br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#;
pub(crate) const LIST_TAIL: &[u8] = b"]}";

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use rustc_hash::FxHashSet;
    use serde_json::{Value, json};

    use clusteraudit_core::audit::EventList;

    use super::*;

    fn args(target: String) -> LoadgenArgs {
        LoadgenArgs {
            target: vec![target],
            events: 1_000,
            batch: 400,
            concurrency: 2,
            token: None,
            token_file: None,
            ca_file: None,
            insecure_skip_verify: false,
            duration: None,
            rate: 0,
            seed: 1,
            acked_ids_file: None,
            json: false,
            freshness: Default::default(),
        }
    }

    /// What the test webhook saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        head: String,
        body: Vec<u8>,
        status: u16,
    }

    const THROTTLED: &[u8] =
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n";
    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    const TOO_LARGE: &[u8] =
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\n\r\ntoo large";

    /// 429 with `Retry-After: 0` to the first request, 200 after.
    fn throttle_first(request: usize) -> &'static [u8] {
        if request == 0 { THROTTLED } else { OK }
    }

    /// A minimal HTTP/1.1 webhook that answers its `n`th request with `answer(n)`.
    async fn webhook(answer: fn(usize) -> &'static [u8]) -> (String, Arc<Mutex<Vec<Seen>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/webhook", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        // Read one request: the head, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break at + 4;
                            }
                            let mut chunk = [0u8; 64 * 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < head_end + length {
                            let mut chunk = [0u8; 64 * 1024];
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buf[head_end..head_end + length].to_vec();
                        buf.drain(..head_end + length);
                        let response = {
                            let mut log = log.lock().unwrap();
                            let response = answer(log.len());
                            let status = std::str::from_utf8(&response[9..12]).unwrap();
                            let status = status.parse().unwrap();
                            log.push(Seen { head, body, status });
                            response
                        };
                        if stream.write_all(response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_retries_a_throttled_batch_and_records_acked_ids() {
        let (url, seen) = webhook(throttle_first).await;
        let dir = tempfile::tempdir().unwrap();
        let acked_path = dir.path().join("acked.txt");
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "s3cret-token\n").unwrap();
        let report = run(LoadgenArgs {
            events: 1_000,
            batch: 400,
            concurrency: 2,
            token_file: Some(token_path),
            acked_ids_file: Some(acked_path.clone()),
            ..args(url)
        })
        .await
        .unwrap();
        eprintln!("{report}");
        assert_eq!(report.events_sent, 1_000);
        assert_eq!(report.events_acked, 1_000);
        assert_eq!(report.batches_acked, 3);
        assert_eq!(report.batches_rejected, BTreeMap::from([(429, 1)]));
        assert_eq!(report.transport_errors, 0);
        assert!(report.events_per_second > 0.0);
        assert!(
            report.ack_latency_ms.max >= report.ack_latency_ms.p50
                && report.ack_latency_ms.p50 > 0.0
        );

        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4);
        for request in &seen {
            let head = request.head.to_ascii_lowercase();
            assert!(head.starts_with("post /v1/webhook http/1.1\r\n"), "{head}");
            assert!(
                head.contains("\r\ncontent-type: application/json\r\n"),
                "{head}"
            );
            assert!(
                request
                    .head
                    .contains("\r\nauthorization: Bearer s3cret-token\r\n"),
                "{}",
                request.head
            );
            let value: Value = serde_json::from_slice(&request.body).unwrap();
            assert_eq!(value["metadata"], json!({}));
        }
        // The throttled batch came again, byte for byte.
        assert!(seen[1..].iter().any(|s| s.body == seen[0].body));

        let acked: Vec<String> = std::fs::read_to_string(&acked_path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        let mut expected: Vec<String> = seen
            .iter()
            .filter(|s| s.status == 200)
            .flat_map(|s| serde_json::from_slice::<EventList>(&s.body).unwrap().items)
            .map(|e| e.audit_id)
            .collect();
        assert_eq!(acked.len(), 1_000);
        let mut sorted = acked.clone();
        sorted.sort();
        expected.sort();
        assert_eq!(sorted, expected);
        assert_eq!(acked.iter().collect::<FxHashSet<_>>().len(), 1_000);
        // Each batch's ids went in as one block, in the batch's order.
        let first = serde_json::from_slice::<EventList>(&seen[0].body).unwrap();
        let at = acked
            .iter()
            .position(|id| *id == first.items[0].audit_id)
            .unwrap();
        let block: Vec<&String> = first.items.iter().map(|e| &e.audit_id).collect();
        assert_eq!(
            acked[at..at + block.len()].iter().collect::<Vec<_>>(),
            block
        );
    }

    #[tokio::test]
    async fn run_drops_batches_the_collector_refuses() {
        let (url, seen) = webhook(|_| TOO_LARGE).await;
        let dir = tempfile::tempdir().unwrap();
        let acked_path = dir.path().join("acked.txt");
        std::fs::write(&acked_path, "from-an-earlier-run\n").unwrap();
        let report = run(LoadgenArgs {
            events: 1_000,
            batch: 400,
            acked_ids_file: Some(acked_path.clone()),
            ..args(url)
        })
        .await
        .unwrap();
        assert_eq!(report.events_sent, 1_000);
        assert_eq!(report.events_acked, 0);
        assert_eq!(report.batches_rejected, BTreeMap::from([(413, 3)]));
        assert_eq!(seen.lock().unwrap().len(), 3);
        assert_eq!(report.ack_latency_ms.p99, 0.0);
        // Nothing acknowledged, nothing appended; what was there stays.
        assert_eq!(
            std::fs::read_to_string(&acked_path).unwrap(),
            "from-an-earlier-run\n"
        );
    }

    #[tokio::test]
    async fn run_gives_up_on_an_unreachable_collector() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1/webhook", listener.local_addr().unwrap());
        drop(listener);
        let started = std::time::Instant::now();
        let report = run(LoadgenArgs {
            events: 10,
            batch: 5,
            ..args(url)
        })
        .await
        .unwrap();
        assert_eq!(report.events_sent, 10);
        assert_eq!(report.events_acked, 0);
        assert_eq!(report.batches_acked, 0);
        assert_eq!(report.transport_errors, 2 * (1 + TRANSPORT_RETRIES as u64));
        assert_eq!(report.ack_latency_ms.max, 0.0);
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test]
    async fn run_stops_at_the_duration() {
        // A collector that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/webhook", listener.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let started = std::time::Instant::now();
        let report = run(LoadgenArgs {
            events: 1_000_000,
            duration: Some(Duration::from_millis(300).into()),
            ..args(url)
        })
        .await
        .unwrap();
        hold.abort();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(report.events_acked, 0);
        assert_eq!(report.events_sent, 800);
    }

    #[tokio::test]
    async fn arguments_and_tls_settings_are_checked() {
        let err = run(args("https://127.0.0.1:1/v1/webhook".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, LoadgenError::CaFileRequired(_)), "{err}");
        let err = run(LoadgenArgs {
            batch: 0,
            ..args("http://127.0.0.1:1/".into())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, LoadgenError::InvalidArguments(_)), "{err}");
        let err = run(args("ftp://127.0.0.1/".into())).await.unwrap_err();
        assert!(matches!(err, LoadgenError::InvalidTarget { .. }), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let https = |ca_file: PathBuf| LoadgenArgs {
            events: 1,
            batch: 1,
            ca_file: Some(ca_file),
            ..args("https://127.0.0.1:1/v1/webhook".into())
        };
        let err = run(https(dir.path().join("missing.pem")))
            .await
            .unwrap_err();
        assert!(matches!(err, LoadgenError::ReadCaFile { .. }), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let err = run(https(garbage)).await.unwrap_err();
        assert!(matches!(err, LoadgenError::ParseCaFile { .. }), "{err}");

        // With a CA the client is built; nothing listens on port 1, so every attempt fails.
        let ca =
            clusteraudit_testkit::pki::CertificateAuthority::generate("loadgen-test-ca").unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let report = run(https(ca_path)).await.unwrap();
        assert_eq!(report.transport_errors, 1 + TRANSPORT_RETRIES as u64);
        let report = run(LoadgenArgs {
            events: 1,
            batch: 1,
            insecure_skip_verify: true,
            ..args("https://127.0.0.1:1/v1/webhook".into())
        })
        .await
        .unwrap();
        assert_eq!(report.events_acked, 0);
        let token_file = dir.path().join("empty-token");
        std::fs::write(&token_file, "\n").unwrap();
        let err = run(LoadgenArgs {
            token_file: Some(token_file),
            ..args("http://127.0.0.1:1/".into())
        })
        .await
        .unwrap_err();
        assert!(matches!(err, LoadgenError::EmptyTokenFile(_)), "{err}");
    }

    #[tokio::test]
    async fn rate_paces_the_run() {
        let (url, _seen) = webhook(throttle_first).await;
        let started = std::time::Instant::now();
        let report = run(LoadgenArgs {
            events: 400,
            batch: 100,
            rate: 1_000,
            ..args(url)
        })
        .await
        .unwrap();
        // Four batches of 100 and one retry (the 429) at 1000 events/s: the last leaves at 0.4 s.
        assert_eq!(report.events_acked, 400);
        assert!(
            started.elapsed() >= Duration::from_millis(350),
            "{:?}",
            started.elapsed()
        );
    }
}
