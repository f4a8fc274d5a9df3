//! The load generator: posts realistic `audit.k8s.io/v1` EventLists to a collector webhook the way
//! the kube-apiserver's webhook backend does, and reports throughput and batch ack latency.
//!
//! [`EventGenerator`] makes the events: a deterministic (per seed) model of a small production
//! cluster, fifteen nodes, a dozen namespaces, a few hundred objects, with the users, verbs,
//! resources, response codes and sizes of a real Metadata-level audit log. [`run`] posts them.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use clusteraudit_core::audit::{Event, EventList, ObjectReference, ResponseStatus, UserInfo};
use clusteraudit_core::audit::{Level, Stage};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Webhook URL, e.g. https://127.0.0.1:8443/v1/webhook
    #[arg(long)]
    pub target: String,
    /// Number of events to send
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Events per EventList (the kube-apiserver's --audit-webhook-batch-max-size defaults to 400)
    #[arg(long, default_value_t = 400)]
    pub batch: usize,
    /// Batches in flight at once
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Bearer token for the webhook (or read from --token-file, which wins when both are given)
    #[arg(long, env = "CLUSTERAUDIT_WEBHOOK_TOKEN")]
    pub token: Option<String>,
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle to trust for https targets (otherwise the system roots are not available either: require it for https unless --insecure-skip-verify)
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// Stop after this long even if not all events are sent (e.g. 5m); bounded runs only
    #[arg(long)]
    pub duration: Option<humantime::Duration>,
    /// Pace to at most this many events per second (0 = as fast as acks allow)
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seed for the event generator, so runs are reproducible
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Append the auditID of every event whose batch got 200 to this file, one per line (used by crash tests to know exactly what was acknowledged)
    #[arg(long)]
    pub acked_ids_file: Option<PathBuf>,
    /// Print the report as one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Events in batches that were posted at least once (a retried batch counts once).
    pub events_sent: u64,
    /// Events in batches the collector answered 200.
    pub events_acked: u64,
    pub batches_acked: u64,
    /// Non-200 answers by HTTP status, one per answer (a batch throttled twice counts two 429s).
    pub batches_rejected: BTreeMap<u16, u64>,
    /// Attempts that got no HTTP answer at all (connect, TLS, reset, timeout).
    pub transport_errors: u64,
    pub seconds: f64,
    /// Acknowledged events per second of the run.
    pub events_per_second: f64,
    /// Send-to-response time of the attempts that got 200.
    pub ack_latency_ms: Percentiles,
}

/// Nearest-rank percentiles; all zero when nothing was measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Sorts `samples` and takes nearest-rank percentiles (the smallest sample with at least p% of
    /// the samples at or below it). NaNs sort last.
    pub fn from_samples(samples: &mut [f64]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                max: 0.0,
            };
        }
        samples.sort_by(f64::total_cmp);
        // rank = ceil(p/100 * n), in integers so that no rounding moves it.
        let rank = |percent: usize| {
            let n = samples.len();
            let rank = (percent * n).div_ceil(100);
            samples[rank.clamp(1, n) - 1]
        };
        Percentiles {
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: samples[samples.len() - 1],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    #[error("the target {target:?} is not a usable http(s) URL: {reason}")]
    InvalidTarget { target: String, reason: String },
    #[error(
        "the target {0:?} is https: give --ca-file with the CA that signed the collector's certificate (or --insecure-skip-verify)"
    )]
    CaFileRequired(String),
    #[error("reading the CA bundle {path}: {source}")]
    ReadCaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CA bundle {path} holds no usable PEM certificate: {reason}")]
    ParseCaFile { path: PathBuf, reason: String },
    #[error("reading the token file {path}: {source}")]
    ReadTokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the token file {0} is empty")]
    EmptyTokenFile(PathBuf),
    #[error("building the HTTP client: {0}")]
    BuildClient(String),
    #[error("writing the acked-ids file {path}: {source}")]
    AckedIdsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("a load generator task failed: {0}")]
    Task(String),
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "acked {} of {} events sent ({} batches) in {:.2}s: {:.0} events/s",
            self.events_acked,
            self.events_sent,
            self.batches_acked,
            self.seconds,
            self.events_per_second
        )?;
        let rejected = if self.batches_rejected.is_empty() {
            "none".to_string()
        } else {
            self.batches_rejected
                .iter()
                .map(|(status, count)| format!("{status}\u{d7}{count}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "rejected answers: {rejected}; transport errors: {}",
            self.transport_errors
        )?;
        let l = &self.ack_latency_ms;
        write!(
            f,
            "batch ack latency: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.p50, l.p90, l.p99, l.max
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Sending
// ---------------------------------------------------------------------------------------------

/// Retries of one batch after transport errors (so at most 1 + this many attempts).
const TRANSPORT_RETRIES: u32 = 5;
const TRANSPORT_BACKOFF: Duration = Duration::from_millis(100);
/// 429s one batch may get before it is dropped, so a collector that only ever throttles cannot
/// keep the run going forever.
const THROTTLE_RETRIES: u32 = 50;
/// Longest `Retry-After` honoured; a missing or unreadable one waits one second.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Stop sending once this many batches in a row were dropped after all their transport retries:
/// the collector is gone, and the rest of the run would only count errors.
const GIVE_UP_AFTER_DEAD_BATCHES: u64 = 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

struct Batch {
    body: Vec<u8>,
    ids: Vec<String>,
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
    url: reqwest::Url,
    token: Option<String>,
    deadline: Option<Instant>,
    pacer: Option<Pacer>,
    stats: Mutex<Stats>,
    acked: Option<(PathBuf, Mutex<std::fs::File>)>,
    stop: AtomicBool,
    dead_batches_in_a_row: AtomicU64,
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
    let url = reqwest::Url::parse(&args.target).map_err(|err| LoadgenError::InvalidTarget {
        target: args.target.clone(),
        reason: err.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(LoadgenError::InvalidTarget {
            target: args.target.clone(),
            reason: "expected http://host[:port]/path or https://host[:port]/path".into(),
        });
    }
    let token = resolve_token(&args)?;
    let client = build_client(&args, &url)?;
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

    let start = Instant::now();
    let shared = Arc::new(Shared {
        client,
        url,
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
    });
    tracing::info!(
        target = %args.target,
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
            let mut remaining = events;
            while remaining > 0 && !shared.stop.load(Ordering::Relaxed) {
                let size = remaining.min(batch as u64) as usize;
                let list = generator.next_list(size);
                let ids = list.items.iter().map(|e| e.audit_id.clone()).collect();
                let batch = Batch {
                    body: event_list_json(&list),
                    ids,
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
        senders.push(tokio::spawn(async move { sender(&shared, &rx).await }));
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
    };
    tracing::info!(
        acked = report.events_acked,
        events_per_second = report.events_per_second,
        "load generator done"
    );
    Ok(report)
}

/// Takes batches off the queue until it is empty, the run is out of time, or it was stopped.
async fn sender(
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
        match send_batch(shared, &batch).await? {
            Outcome::Acked | Outcome::Dropped => {}
            Outcome::OutOfTime => return Ok(()),
        }
    }
}

/// Posts one batch until it is acknowledged, rejected, or out of retries.
async fn send_batch(shared: &Shared, batch: &Batch) -> Result<Outcome, LoadgenError> {
    let events = batch.ids.len();
    let (mut transport_failures, mut throttled, mut posted) = (0u32, 0u32, false);
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
            .post(shared.url.clone())
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
                throttled += 1;
                if throttled > THROTTLE_RETRIES {
                    tracing::warn!(throttled, "batch throttled too often; dropping it");
                    return Ok(Outcome::Dropped);
                }
                let wait = retry_after.map_or(Duration::from_secs(1), Duration::from_secs);
                if !shared.sleep(wait.min(MAX_RETRY_AFTER)).await {
                    return Ok(Outcome::OutOfTime);
                }
            }
            Err(err) => {
                shared.stats.lock().expect("stats lock").transport_errors += 1;
                transport_failures += 1;
                if transport_failures > TRANSPORT_RETRIES {
                    tracing::warn!(error = %err, transport_failures, "dropping a batch");
                    let dead = shared.dead_batches_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                    if dead >= GIVE_UP_AFTER_DEAD_BATCHES {
                        tracing::warn!(dead, "the collector is unreachable; stopping the run");
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                    return Ok(Outcome::Dropped);
                }
                tracing::debug!(error = %err, "transport error; retrying");
                if !shared.sleep(TRANSPORT_BACKOFF).await {
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

fn resolve_token(args: &LoadgenArgs) -> Result<Option<String>, LoadgenError> {
    if let Some(path) = &args.token_file {
        let token =
            std::fs::read_to_string(path).map_err(|source| LoadgenError::ReadTokenFile {
                path: path.clone(),
                source,
            })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(LoadgenError::EmptyTokenFile(path.clone()));
        }
        return Ok(Some(token.to_string()));
    }
    Ok(args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string))
}

fn build_client(args: &LoadgenArgs, url: &reqwest::Url) -> Result<reqwest::Client, LoadgenError> {
    clusteraudit_io::tls::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("clusteraudit-loadgen/", env!("CARGO_PKG_VERSION")))
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .no_proxy();
    if url.scheme() == "https" {
        if args.insecure_skip_verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        } else {
            let Some(path) = &args.ca_file else {
                return Err(LoadgenError::CaFileRequired(args.target.clone()));
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
    out.extend_from_slice(
        br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#,
    );
    for (i, event) in list.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, event).expect("an Event always serializes");
    }
    out.extend_from_slice(b"]}");
    out
}

// ---------------------------------------------------------------------------------------------
// The event generator
// ---------------------------------------------------------------------------------------------

/// xorshift64* with a splitmix64-scrambled seed.
#[derive(Clone, Debug)]
struct XorShift(u64);

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl XorShift {
    fn new(seed: u64) -> Self {
        let state = splitmix64(seed);
        XorShift(if state == 0 {
            0x2545_F491_4F6C_DD1D
        } else {
            state
        })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + ((self.next_u64() as u128 * (hi - lo + 1) as u128) >> 64) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn weighted<T: Copy>(&mut self, items: &[(T, u32)]) -> T {
        items[self.weighted_index(items.iter().map(|&(_, weight)| weight))].0
    }

    /// An index drawn with probability proportional to its weight.
    fn weighted_index(&mut self, weights: impl Iterator<Item = u32> + Clone) -> usize {
        let total: u32 = weights.clone().sum();
        let mut at = self.below(total as usize) as u32;
        let mut last = 0;
        for (index, weight) in weights.enumerate() {
            if at < weight {
                return index;
            }
            at -= weight;
            last = index;
        }
        last
    }

    fn uuid(&mut self) -> String {
        let (hi, lo) = (self.next_u64(), self.next_u64());
        uuid_string(hi, lo)
    }

    /// `n` characters of the alphabet Kubernetes uses for generated name suffixes.
    fn k8s_suffix(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..n).map(|_| *self.pick(ALPHABET) as char).collect()
    }
}

/// A version-4 UUID string from 128 bits.
fn uuid_string(hi: u64, lo: u64) -> String {
    let hi = (hi & !0xF000) | 0x4000;
    let lo = (lo & !(0xC000u64 << 48)) | (0x8000u64 << 48);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xFFFF,
        hi & 0xFFFF,
        lo >> 48,
        lo & 0xFFFF_FFFF_FFFF
    )
}

/// A stable UUID for a name (object UIDs must not change between events about the same object).
fn stable_uuid(seed: u64, parts: &[&str]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ seed;
    for part in parts {
        for &b in part.as_bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
        }
        h = (h ^ 0xFF).wrapping_mul(0x0000_0100_0000_01B3);
    }
    uuid_string(splitmix64(h), splitmix64(h ^ 0x5555_5555_5555_5555))
}

const K8S_VERSION: &str = "v1.36.3";
const K8S_GIT: &str = "kubernetes/abc1234";
const NODE_COUNT: usize = 15;
/// node-1 .. node-3 run the control plane.
const CONTROL_PLANE_NODES: usize = 3;

/// The namespaces of the modelled cluster.
pub const NAMESPACES: [&str; 13] = [
    "default",
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "shop",
    "payments",
    "data",
    "staging-web",
    "monitoring",
    "logging",
    "ingress-nginx",
    "cert-manager",
    "argocd",
];

#[derive(Debug)]
struct Res {
    resource: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    namespaced: bool,
}

impl Res {
    /// `pods`, `deployments.apps`: how API errors name a resource.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

const fn res(
    resource: &'static str,
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    namespaced: bool,
) -> Res {
    Res {
        resource,
        group,
        version,
        kind,
        namespaced,
    }
}

const PODS: Res = res("pods", "", "v1", "Pod", true);
const CONFIGMAPS: Res = res("configmaps", "", "v1", "ConfigMap", true);
const SECRETS: Res = res("secrets", "", "v1", "Secret", true);
const SERVICES: Res = res("services", "", "v1", "Service", true);
const SERVICEACCOUNTS: Res = res("serviceaccounts", "", "v1", "ServiceAccount", true);
const EVENTS: Res = res("events", "", "v1", "Event", true);
const ENDPOINTS: Res = res("endpoints", "", "v1", "Endpoints", true);
const PVCS: Res = res(
    "persistentvolumeclaims",
    "",
    "v1",
    "PersistentVolumeClaim",
    true,
);
const NODES: Res = res("nodes", "", "v1", "Node", false);
const NAMESPACES_RES: Res = res("namespaces", "", "v1", "Namespace", false);
const PVS: Res = res("persistentvolumes", "", "v1", "PersistentVolume", false);
const LEASES: Res = res("leases", "coordination.k8s.io", "v1", "Lease", true);
const DEPLOYMENTS: Res = res("deployments", "apps", "v1", "Deployment", true);
const REPLICASETS: Res = res("replicasets", "apps", "v1", "ReplicaSet", true);
const STATEFULSETS: Res = res("statefulsets", "apps", "v1", "StatefulSet", true);
const DAEMONSETS: Res = res("daemonsets", "apps", "v1", "DaemonSet", true);
const JOBS: Res = res("jobs", "batch", "v1", "Job", true);
const CRONJOBS: Res = res("cronjobs", "batch", "v1", "CronJob", true);
const HPAS: Res = res(
    "horizontalpodautoscalers",
    "autoscaling",
    "v2",
    "HorizontalPodAutoscaler",
    true,
);
const ENDPOINTSLICES: Res = res(
    "endpointslices",
    "discovery.k8s.io",
    "v1",
    "EndpointSlice",
    true,
);
const EVENTS_K8S: Res = res("events", "events.k8s.io", "v1", "Event", true);
const INGRESSES: Res = res("ingresses", "networking.k8s.io", "v1", "Ingress", true);
const CERTIFICATES: Res = res("certificates", "cert-manager.io", "v1", "Certificate", true);
const CERTIFICATEREQUESTS: Res = res(
    "certificaterequests",
    "cert-manager.io",
    "v1",
    "CertificateRequest",
    true,
);
const APPLICATIONS: Res = res(
    "applications",
    "argoproj.io",
    "v1alpha1",
    "Application",
    true,
);
const TOKENREVIEWS: Res = res(
    "tokenreviews",
    "authentication.k8s.io",
    "v1",
    "TokenReview",
    false,
);
const SUBJECTACCESSREVIEWS: Res = res(
    "subjectaccessreviews",
    "authorization.k8s.io",
    "v1",
    "SubjectAccessReview",
    false,
);
const CSIDRIVERS: Res = res("csidrivers", "storage.k8s.io", "v1", "CSIDriver", false);
const CSINODES: Res = res("csinodes", "storage.k8s.io", "v1", "CSINode", false);
const STORAGECLASSES: Res = res(
    "storageclasses",
    "storage.k8s.io",
    "v1",
    "StorageClass",
    false,
);
const RUNTIMECLASSES: Res = res("runtimeclasses", "node.k8s.io", "v1", "RuntimeClass", false);
const PRIORITYCLASSES: Res = res(
    "priorityclasses",
    "scheduling.k8s.io",
    "v1",
    "PriorityClass",
    false,
);

#[derive(Clone, Copy, Debug, PartialEq)]
enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    /// A control-plane static pod, one per control-plane node.
    Static,
}

use WorkloadKind::{DaemonSet as DS, Deployment as D, StatefulSet as SS, Static as ST};

/// (namespace, name, kind, replicas; DaemonSets and static pods ignore the count)
const WORKLOADS: &[(&str, &str, WorkloadKind, usize)] = &[
    ("shop", "web", D, 8),
    ("shop", "cart", D, 4),
    ("shop", "checkout", D, 3),
    ("shop", "catalog", D, 4),
    ("shop", "search", D, 3),
    ("shop", "redis", SS, 3),
    ("payments", "api", D, 4),
    ("payments", "ledger", D, 3),
    ("payments", "fraud-detector", D, 2),
    ("payments", "notifier", D, 2),
    ("data", "postgres", SS, 3),
    ("data", "kafka", SS, 3),
    ("data", "etl-runner", D, 2),
    ("data", "postgres-operator", D, 1),
    ("staging-web", "web", D, 2),
    ("staging-web", "cart", D, 1),
    ("staging-web", "checkout", D, 1),
    ("monitoring", "prometheus-k8s", SS, 2),
    ("monitoring", "alertmanager-main", SS, 3),
    ("monitoring", "grafana", D, 1),
    ("monitoring", "kube-state-metrics", D, 1),
    ("monitoring", "node-exporter", DS, 0),
    ("logging", "fluent-bit", DS, 0),
    ("logging", "loki-gateway", D, 2),
    ("ingress-nginx", "ingress-nginx-controller", D, 3),
    ("cert-manager", "cert-manager", D, 1),
    ("cert-manager", "cert-manager-webhook", D, 1),
    ("cert-manager", "cert-manager-cainjector", D, 1),
    ("argocd", "argocd-server", D, 2),
    ("argocd", "argocd-repo-server", D, 2),
    ("argocd", "argocd-redis", D, 1),
    ("argocd", "argocd-application-controller", SS, 1),
    ("kube-system", "coredns", D, 2),
    ("kube-system", "metrics-server", D, 1),
    ("kube-system", "kube-proxy", DS, 0),
    ("kube-system", "kube-apiserver", ST, 0),
    ("kube-system", "etcd", ST, 0),
    ("kube-system", "kube-controller-manager", ST, 0),
    ("kube-system", "kube-scheduler", ST, 0),
    ("default", "hello", D, 2),
];

/// Where a workload's service account acts.
#[derive(Clone, Copy, Debug)]
enum Scope {
    /// Across all namespaces (list/watch) or on a cluster-scoped resource.
    Cluster,
    /// Its own namespace, collection (list/watch/create).
    OwnNs,
    /// A named object of its own namespace.
    OwnObject,
    /// A named object of any application namespace.
    AnyObject,
    /// One fixed object.
    Fixed(&'static str, &'static str),
}

#[derive(Clone, Copy, Debug)]
struct Act {
    verb: &'static str,
    res: &'static Res,
    sub: &'static str,
    scope: Scope,
}

const fn act(verb: &'static str, res: &'static Res, scope: Scope) -> Act {
    Act {
        verb,
        res,
        sub: "",
        scope,
    }
}

const fn act_sub(verb: &'static str, res: &'static Res, sub: &'static str, scope: Scope) -> Act {
    Act {
        verb,
        res,
        sub,
        scope,
    }
}

/// An in-cluster client: a workload's service account.
struct SaProfile {
    namespace: &'static str,
    name: &'static str,
    /// The workload whose pods use the account.
    workload: &'static str,
    user_agent: &'static str,
    /// Share of all events.
    weight: u32,
    /// True when its permissions come from a RoleBinding in its namespace.
    namespaced_binding: bool,
    actions: &'static [(Act, u32)],
}

use Scope::{AnyObject, Cluster, Fixed, OwnNs, OwnObject};

const SA_PROFILES: &[SaProfile] = &[
    SaProfile {
        namespace: "kube-system",
        name: "coredns",
        workload: "coredns",
        user_agent: "coredns/v0.0.0 (linux/amd64) kubernetes/$Format",
        weight: 14,
        namespaced_binding: false,
        actions: &[
            (act("watch", &ENDPOINTSLICES, Cluster), 4),
            (act("watch", &SERVICES, Cluster), 3),
            (act("watch", &NAMESPACES_RES, Cluster), 2),
            (act("list", &ENDPOINTSLICES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "kube-system",
        name: "kube-proxy",
        workload: "kube-proxy",
        user_agent: "kube-proxy/v1.36.3 (linux/amd64) kubernetes/abc1234",
        weight: 22,
        namespaced_binding: false,
        actions: &[
            (act("watch", &ENDPOINTSLICES, Cluster), 4),
            (act("watch", &SERVICES, Cluster), 3),
            (act("watch", &NODES, Cluster), 1),
            (act("list", &SERVICES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "ingress-nginx",
        name: "ingress-nginx",
        workload: "ingress-nginx-controller",
        user_agent: "nginx-ingress-controller/v1.12.1 (linux/amd64) ingress-nginx/51c2b819690bbf1709b844dbf321a9acf6eda5a7",
        weight: 22,
        namespaced_binding: false,
        actions: &[
            (
                act(
                    "get",
                    &LEASES,
                    Fixed("ingress-nginx", "ingress-nginx-leader"),
                ),
                6,
            ),
            (
                act(
                    "update",
                    &LEASES,
                    Fixed("ingress-nginx", "ingress-nginx-leader"),
                ),
                5,
            ),
            (act("watch", &INGRESSES, Cluster), 3),
            (act("watch", &ENDPOINTSLICES, Cluster), 3),
            (act("watch", &SECRETS, Cluster), 2),
            (act("watch", &CONFIGMAPS, OwnNs), 1),
            (act_sub("update", &INGRESSES, "status", AnyObject), 1),
            (act("create", &EVENTS, OwnNs), 1),
        ],
    },
    SaProfile {
        namespace: "cert-manager",
        name: "cert-manager",
        workload: "cert-manager",
        user_agent: "cert-manager-certificates-trigger/v1.17.2 (linux/amd64) cert-manager/4b9a5c2e1d7f3a6b8c0e9d2f1a3b5c7d9e0f2a4b",
        weight: 16,
        namespaced_binding: false,
        actions: &[
            (
                act(
                    "get",
                    &LEASES,
                    Fixed("kube-system", "cert-manager-controller"),
                ),
                5,
            ),
            (
                act(
                    "update",
                    &LEASES,
                    Fixed("kube-system", "cert-manager-controller"),
                ),
                4,
            ),
            (act("watch", &CERTIFICATES, Cluster), 2),
            (act("watch", &CERTIFICATEREQUESTS, Cluster), 1),
            (act("watch", &SECRETS, Cluster), 1),
            (act("get", &SECRETS, AnyObject), 2),
            (act_sub("update", &CERTIFICATES, "status", AnyObject), 1),
            (act("create", &CERTIFICATEREQUESTS, OwnNs), 1),
        ],
    },
    SaProfile {
        namespace: "monitoring",
        name: "prometheus-k8s",
        workload: "prometheus-k8s",
        user_agent: "Prometheus/3.2.1",
        weight: 12,
        namespaced_binding: false,
        actions: &[
            (act("watch", &PODS, Cluster), 3),
            (act("watch", &ENDPOINTSLICES, Cluster), 3),
            (act("watch", &SERVICES, Cluster), 2),
            (act("list", &PODS, Cluster), 1),
            (act("list", &ENDPOINTSLICES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "monitoring",
        name: "kube-state-metrics",
        workload: "kube-state-metrics",
        user_agent: "kube-state-metrics/v2.15.0 (linux/amd64) kube-state-metrics/0fb7fc2c7c0a0c2b8f2f4a5e8d5c1e6b7a9f0d3c",
        weight: 12,
        namespaced_binding: false,
        actions: &[
            (act("watch", &PODS, Cluster), 1),
            (act("watch", &DEPLOYMENTS, Cluster), 1),
            (act("watch", &REPLICASETS, Cluster), 1),
            (act("watch", &STATEFULSETS, Cluster), 1),
            (act("watch", &DAEMONSETS, Cluster), 1),
            (act("watch", &JOBS, Cluster), 1),
            (act("watch", &CRONJOBS, Cluster), 1),
            (act("watch", &NODES, Cluster), 1),
            (act("watch", &PVCS, Cluster), 1),
            (act("watch", &SECRETS, Cluster), 1),
            (act("watch", &CONFIGMAPS, Cluster), 1),
            (act("watch", &HPAS, Cluster), 1),
            (act("list", &PODS, Cluster), 1),
            (act("list", &NAMESPACES_RES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "argocd",
        name: "argocd-application-controller",
        workload: "argocd-application-controller",
        user_agent: "argocd-application-controller/v3.0.6+db93798 (linux/amd64) argoproj/argo-cd",
        weight: 18,
        namespaced_binding: false,
        actions: &[
            (act("watch", &APPLICATIONS, OwnNs), 2),
            (act("get", &APPLICATIONS, OwnObject), 2),
            (act("patch", &APPLICATIONS, OwnObject), 3),
            (act("get", &DEPLOYMENTS, AnyObject), 2),
            (act("patch", &DEPLOYMENTS, AnyObject), 1),
            (act("get", &CONFIGMAPS, AnyObject), 1),
            (act("patch", &CONFIGMAPS, AnyObject), 1),
            (act("list", &DEPLOYMENTS, Cluster), 1),
            (act("watch", &SERVICES, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "argocd",
        name: "argocd-server",
        workload: "argocd-server",
        user_agent: "argocd-server/v3.0.6+db93798 (linux/amd64) argoproj/argo-cd",
        weight: 6,
        namespaced_binding: true,
        actions: &[
            (act("get", &SECRETS, Fixed("argocd", "argocd-secret")), 2),
            (act("get", &CONFIGMAPS, Fixed("argocd", "argocd-cm")), 2),
            (act("list", &APPLICATIONS, OwnNs), 2),
            (act("get", &APPLICATIONS, OwnObject), 1),
        ],
    },
    SaProfile {
        namespace: "kube-system",
        name: "metrics-server",
        workload: "metrics-server",
        user_agent: "metrics-server/v0.7.2 (linux/amd64) kubernetes/$Format",
        weight: 10,
        namespaced_binding: false,
        actions: &[
            (act("create", &TOKENREVIEWS, Cluster), 3),
            (act("create", &SUBJECTACCESSREVIEWS, Cluster), 3),
            (act("watch", &NODES, Cluster), 1),
            (act("list", &NODES, Cluster), 1),
            (
                act(
                    "get",
                    &CONFIGMAPS,
                    Fixed("kube-system", "extension-apiserver-authentication"),
                ),
                1,
            ),
        ],
    },
    SaProfile {
        namespace: "logging",
        name: "fluent-bit",
        workload: "fluent-bit",
        user_agent: "fluent-bit/4.0.3",
        weight: 14,
        namespaced_binding: false,
        actions: &[
            (act("get", &PODS, AnyObject), 6),
            (act("list", &NAMESPACES_RES, Cluster), 1),
            (act("watch", &PODS, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "data",
        name: "postgres-operator",
        workload: "postgres-operator",
        user_agent: "postgres-operator/v1.14.0 (linux/amd64) kubernetes/$Format",
        weight: 12,
        namespaced_binding: true,
        actions: &[
            (act("get", &LEASES, Fixed("data", "postgres-operator")), 3),
            (
                act("update", &LEASES, Fixed("data", "postgres-operator")),
                3,
            ),
            (act("get", &STATEFULSETS, OwnObject), 2),
            (act("update", &STATEFULSETS, OwnObject), 1),
            (act("patch", &PODS, OwnObject), 1),
            (act("list", &PODS, OwnNs), 1),
            (act("get", &SECRETS, OwnObject), 1),
            (act("get", &SERVICES, OwnObject), 1),
            (act("create", &EVENTS, OwnNs), 1),
            // Not allowed by its Role: answered 403.
            (act("list", &SECRETS, Cluster), 1),
        ],
    },
    SaProfile {
        namespace: "shop",
        name: "web",
        workload: "web",
        user_agent: "Go-http-client/2.0",
        weight: 6,
        namespaced_binding: true,
        actions: &[
            (act("get", &CONFIGMAPS, OwnObject), 3),
            (act("get", &SECRETS, OwnObject), 1),
            (act("watch", &CONFIGMAPS, OwnNs), 1),
        ],
    },
    SaProfile {
        namespace: "payments",
        name: "api",
        workload: "api",
        user_agent: "payments-api/2.14.0 (linux/amd64) kubernetes/$Format",
        weight: 4,
        namespaced_binding: true,
        actions: &[
            (act("get", &SECRETS, OwnObject), 2),
            (act("get", &CONFIGMAPS, OwnObject), 2),
            (act("create", &EVENTS, OwnNs), 1),
        ],
    },
];

/// Controllers of kube-controller-manager that act under their own service account.
const KCM_CONTROLLERS: &[&str] = &[
    "replicaset-controller",
    "deployment-controller",
    "endpointslice-controller",
    "endpointslicemirroring-controller",
    "horizontal-pod-autoscaler",
    "generic-garbage-collector",
    "job-controller",
    "cronjob-controller",
    "node-controller",
    "namespace-controller",
    "statefulset-controller",
    "daemon-set-controller",
    "resourcequota-controller",
    "pvc-protection-controller",
];

struct Human {
    name: &'static str,
    groups: &'static [&'static str],
    user_agent: &'static str,
    source_ip: &'static str,
    /// RBAC reason for what the person may do; `None` marks a developer limited to some namespaces.
    binding: Option<&'static str>,
    /// Namespaces a developer may change and read secrets in.
    own_namespaces: &'static [&'static str],
    weight: u32,
}

const HUMANS: &[Human] = &[
    Human {
        name: "alice@example.com",
        groups: &["oidc:developers", "system:authenticated"],
        user_agent: "kubectl/v1.36.3 (darwin/arm64) kubernetes/abc1234",
        source_ip: "203.0.113.24",
        binding: None,
        own_namespaces: &["shop", "staging-web"],
        weight: 5,
    },
    Human {
        name: "bob@example.com",
        groups: &["oidc:sre", "system:authenticated"],
        user_agent: "kubectl/v1.36.3 (linux/amd64) kubernetes/abc1234",
        source_ip: "192.168.10.31",
        binding: Some(
            r#"RBAC: allowed by ClusterRoleBinding "sre-admin" of ClusterRole "cluster-admin" to Group "oidc:sre""#,
        ),
        own_namespaces: &[],
        weight: 4,
    },
    Human {
        name: "carol@example.com",
        groups: &["oidc:developers", "oidc:payments", "system:authenticated"],
        user_agent: "k9s/v0.50.6 (darwin/arm64) kubernetes/$Format",
        source_ip: "198.51.100.7",
        binding: None,
        own_namespaces: &["payments", "staging-web"],
        weight: 3,
    },
    Human {
        name: "kubernetes-admin",
        groups: &["kubeadm:cluster-admins", "system:authenticated"],
        user_agent: "kubectl/v1.36.3 (linux/amd64) kubernetes/abc1234",
        source_ip: "10.0.0.11",
        binding: Some(
            r#"RBAC: allowed by ClusterRoleBinding "kubeadm:cluster-admins" of ClusterRole "cluster-admin" to Group "kubeadm:cluster-admins""#,
        ),
        own_namespaces: &[],
        weight: 1,
    },
    Human {
        name: "ci-deployer",
        groups: &["ci:deployers", "system:authenticated"],
        user_agent: "Helm/3.18.4",
        source_ip: "10.20.0.5",
        binding: Some(
            r#"RBAC: allowed by ClusterRoleBinding "ci-deployers" of ClusterRole "admin" to Group "ci:deployers""#,
        ),
        own_namespaces: &[],
        weight: 2,
    },
];

const APP_NAMESPACES: &[&str] = &[
    "shop",
    "payments",
    "data",
    "staging-web",
    "monitoring",
    "logging",
    "default",
];

#[derive(Clone, Copy, Debug)]
enum Scenario {
    KubeletLeaseUpdate,
    KubeletLeaseGet,
    KubeletWatch,
    KubeletPodStatus,
    KubeletNodeStatus,
    KubeletGetNode,
    KubeletGetPod,
    KubeletEvent,
    KubeletToken,
    KubeletGetVolumeSource,
    KcmLeaseGet,
    KcmLeaseUpdate,
    KcmInformerWatch,
    KcmInformerList,
    ReplicaSetController,
    DeploymentController,
    EndpointSliceController,
    Autoscaler,
    GarbageCollector,
    JobController,
    OtherControllers,
    SchedulerLeaseGet,
    SchedulerLeaseUpdate,
    SchedulerBind,
    SchedulerWatch,
    SchedulerEvent,
    Workload,
    Person,
    Anonymous,
    ApiServer,
}

const SCENARIOS: &[(Scenario, u32)] = &[
    (Scenario::KubeletLeaseUpdate, 72),
    (Scenario::KubeletLeaseGet, 8),
    (Scenario::KubeletWatch, 50),
    (Scenario::KubeletPodStatus, 28),
    (Scenario::KubeletNodeStatus, 10),
    (Scenario::KubeletGetNode, 14),
    (Scenario::KubeletGetPod, 20),
    (Scenario::KubeletEvent, 14),
    (Scenario::KubeletToken, 10),
    (Scenario::KubeletGetVolumeSource, 10),
    (Scenario::KcmLeaseGet, 48),
    (Scenario::KcmLeaseUpdate, 16),
    (Scenario::KcmInformerWatch, 34),
    (Scenario::KcmInformerList, 6),
    (Scenario::ReplicaSetController, 14),
    (Scenario::DeploymentController, 9),
    (Scenario::EndpointSliceController, 14),
    (Scenario::Autoscaler, 5),
    (Scenario::GarbageCollector, 3),
    (Scenario::JobController, 4),
    (Scenario::OtherControllers, 8),
    (Scenario::SchedulerLeaseGet, 34),
    (Scenario::SchedulerLeaseUpdate, 10),
    (Scenario::SchedulerBind, 8),
    (Scenario::SchedulerWatch, 12),
    (Scenario::SchedulerEvent, 5),
    (Scenario::Workload, 100),
    (Scenario::Person, 40),
    (Scenario::Anonymous, 10),
    (Scenario::ApiServer, 26),
];

/// Who made a request.
#[derive(Clone, Copy, Debug)]
enum Actor {
    Node(usize),
    /// kube-controller-manager on control-plane node `node`: its own identity (leader election,
    /// shared informers) or one of its controllers' service accounts.
    Kcm {
        controller: Option<&'static str>,
        suffix: &'static str,
        node: usize,
    },
    Scheduler {
        suffix: &'static str,
        node: usize,
    },
    Workload {
        profile: usize,
        pod: usize,
    },
    Person(usize),
    Anonymous {
        source_ip: &'static str,
        user_agent: &'static str,
    },
    ApiServer,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Failure {
    NotFound,
    Forbidden,
    Conflict,
    AlreadyExists,
    Invalid,
    Internal,
}

/// A request before it is turned into an event.
struct Req {
    actor: Actor,
    verb: &'static str,
    /// `None` for a non-resource request.
    res: Option<&'static Res>,
    namespace: String,
    /// The object's name; for a create of a collection it comes from the body (empty when the
    /// object has `generateName`) and is not in the URL.
    name: String,
    sub: &'static str,
    /// Non-resource path.
    path: String,
    /// The query string, without `?`; `None` picks the usual one for the verb.
    query: Option<String>,
    /// `fieldSelector=...`/`labelSelector=...` for list and watch.
    selector: Option<String>,
    failure: Option<Failure>,
    /// Whether the random error injection may apply.
    errors: bool,
    level: Level,
    request_object: Option<Value>,
    annotations: Vec<(&'static str, String)>,
    impersonate: Option<UserInfo>,
    /// A RoleBinding rather than a ClusterRoleBinding allowed it (service accounts).
    namespaced_binding: bool,
}

impl Req {
    fn new(
        actor: Actor,
        verb: &'static str,
        res: &'static Res,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Req {
        Req {
            actor,
            verb,
            res: Some(res),
            namespace: namespace.into(),
            name: name.into(),
            sub: "",
            path: String::new(),
            query: None,
            selector: None,
            failure: None,
            errors: true,
            level: Level::Metadata,
            request_object: None,
            annotations: Vec::new(),
            impersonate: None,
            namespaced_binding: false,
        }
    }

    fn non_resource(actor: Actor, path: &str) -> Req {
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (path, Some(String::new())),
        };
        Req {
            res: None,
            path: path.to_string(),
            query,
            errors: false,
            ..Req::new(actor, "get", &PODS, "", "")
        }
    }

    fn sub(mut self, sub: &'static str) -> Req {
        self.sub = sub;
        self
    }

    fn query(mut self, query: impl Into<String>) -> Req {
        self.query = Some(query.into());
        self
    }

    fn selector(mut self, selector: impl Into<String>) -> Req {
        self.selector = Some(selector.into());
        self
    }

    fn fail(mut self, failure: Failure) -> Req {
        self.failure = Some(failure);
        self
    }
}

struct Node {
    name: String,
    ip: String,
    arch: &'static str,
}

struct Workload {
    namespace: &'static str,
    name: &'static str,
    kind: WorkloadKind,
    /// pod-template-hash of the current ReplicaSet (Deployments).
    hash: String,
    /// Suffix of the Service's EndpointSlice.
    slice: String,
    pods: Vec<usize>,
}

struct Pod {
    namespace: &'static str,
    name: String,
    node: usize,
    ip: String,
    workload: usize,
    /// JTI of the pod's projected service account token.
    token_id: String,
}

/// Deterministic realistic event generator, usable from tests and benchmarks too.
///
/// Everything but the timestamps follows from the seed (auditIDs included, so two runs with the
/// same seed post the same auditIDs); timestamps follow the wall clock.
pub struct EventGenerator {
    rng: XorShift,
    seed: u64,
    nodes: Vec<Node>,
    workloads: Vec<Workload>,
    pods: Vec<Pod>,
    resource_version: u64,
    apiserver_leases: Vec<String>,
    apiserver_uid: String,
    sa_uids: Vec<String>,
    /// The workload whose pods each of `SA_PROFILES` runs in.
    sa_workloads: Vec<usize>,
}

impl EventGenerator {
    pub fn new(seed: u64) -> Self {
        let mut rng = XorShift::new(seed);
        let nodes: Vec<Node> = (1..=NODE_COUNT)
            .map(|n| Node {
                name: format!("node-{n}"),
                ip: format!("10.0.0.{}", 10 + n),
                arch: if n > 12 { "arm64" } else { "amd64" },
            })
            .collect();
        let mut workloads = Vec::new();
        let mut pods = Vec::new();
        let mut pod_ips = rustc_hash::FxHashSet::default();
        for &(namespace, name, kind, replicas) in WORKLOADS {
            let index = workloads.len();
            let hash_len = if rng.chance(0.5) { 9 } else { 10 };
            let mut workload = Workload {
                namespace,
                name,
                kind,
                hash: rng.k8s_suffix(hash_len),
                slice: rng.k8s_suffix(5),
                pods: Vec::new(),
            };
            let placements: Vec<(String, usize)> = match kind {
                D => (0..replicas)
                    .map(|_| {
                        let name = format!("{name}-{}-{}", workload.hash, rng.k8s_suffix(5));
                        (
                            name,
                            CONTROL_PLANE_NODES + rng.below(NODE_COUNT - CONTROL_PLANE_NODES),
                        )
                    })
                    .collect(),
                SS => (0..replicas)
                    .map(|i| {
                        let node =
                            CONTROL_PLANE_NODES + rng.below(NODE_COUNT - CONTROL_PLANE_NODES);
                        (format!("{name}-{i}"), node)
                    })
                    .collect(),
                DS => (0..NODE_COUNT)
                    .map(|node| (format!("{name}-{}", rng.k8s_suffix(5)), node))
                    .collect(),
                ST => (0..CONTROL_PLANE_NODES)
                    .map(|node| (format!("{name}-node-{}", node + 1), node))
                    .collect(),
            };
            for (pod_name, node) in placements {
                let host_network =
                    kind == ST || matches!(name, "kube-proxy" | "node-exporter" | "fluent-bit");
                let ip = if host_network {
                    nodes[node].ip.clone()
                } else {
                    loop {
                        let ip = format!("10.244.{}.{}", node, rng.range(2, 250));
                        if pod_ips.insert(ip.clone()) {
                            break ip;
                        }
                    }
                };
                workload.pods.push(pods.len());
                pods.push(Pod {
                    namespace,
                    name: pod_name,
                    node,
                    ip,
                    workload: index,
                    token_id: rng.uuid(),
                });
            }
            workloads.push(workload);
        }
        let apiserver_leases = (0..CONTROL_PLANE_NODES)
            .map(|_| format!("apiserver-{}", rng.k8s_suffix(26)))
            .collect();
        let apiserver_uid = rng.uuid();
        let sa_uids = (0..SA_PROFILES.len() + KCM_CONTROLLERS.len())
            .map(|_| rng.uuid())
            .collect();
        let resource_version = rng.range(4_000_000, 9_000_000);
        let sa_workloads = SA_PROFILES
            .iter()
            .map(|p| {
                workloads
                    .iter()
                    .position(|w| w.namespace == p.namespace && w.name == p.workload)
                    .expect("every profile names a workload")
            })
            .collect();
        EventGenerator {
            rng,
            seed,
            nodes,
            workloads,
            pods,
            resource_version,
            apiserver_leases,
            apiserver_uid,
            sa_uids,
            sa_workloads,
        }
    }

    /// The next event, stamped with the current time.
    pub fn next_event(&mut self) -> Event {
        let req = self.draft();
        self.finish(req, SystemTime::now())
    }

    /// `size` events as an `audit.k8s.io/v1` EventList.
    pub fn next_list(&mut self, size: usize) -> EventList {
        EventList {
            api_version: Some("audit.k8s.io/v1".into()),
            kind: Some("EventList".into()),
            items: (0..size).map(|_| self.next_event()).collect(),
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.resource_version += self.rng.range(1, 40);
        self.resource_version
    }

    fn random_pod(&mut self) -> usize {
        self.rng.below(self.pods.len())
    }

    fn pod_on_node(&mut self, node: usize) -> usize {
        // A few tries for a pod on that node; every node runs DaemonSet pods, so this ends.
        loop {
            let pod = self.random_pod();
            if self.pods[pod].node == node {
                return pod;
            }
        }
    }

    fn workload_in(&mut self, namespace: &str) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.workloads.len())
            .filter(|&w| self.workloads[w].namespace == namespace)
            .collect();
        (!candidates.is_empty()).then(|| *self.rng.pick(&candidates))
    }

    fn app_workload(&mut self) -> usize {
        loop {
            let w = self.rng.below(self.workloads.len());
            if self.workloads[w].kind != ST {
                return w;
            }
        }
    }

    fn deployment(&mut self) -> usize {
        self.workload_of_kind(D)
    }

    /// A random workload of `kind` (every kind occurs in `WORKLOADS`, so this ends).
    fn workload_of_kind(&mut self, kind: WorkloadKind) -> usize {
        loop {
            let w = self.rng.below(self.workloads.len());
            if self.workloads[w].kind == kind {
                return w;
            }
        }
    }

    /// A plausible name for an object of `res` belonging to workload `w`.
    fn object_name(&mut self, res: &Res, w: usize) -> String {
        let workload = &self.workloads[w];
        let name = workload.name;
        match res.resource {
            "pods" => {
                let pods = &self.workloads[w].pods;
                let pod = pods[self.rng.below(pods.len())];
                self.pods[pod].name.clone()
            }
            "replicasets" => format!("{name}-{}", workload.hash),
            "endpointslices" => format!("{name}-{}", workload.slice),
            "configmaps" => match self.rng.below(4) {
                0 => "kube-root-ca.crt".into(),
                1 => format!("{name}-env"),
                _ => format!("{name}-config"),
            },
            "secrets" => match self.rng.below(4) {
                0 => format!("{name}-tls"),
                1 => format!("sh.helm.release.v1.{name}.v{}", self.rng.range(1, 14)),
                _ => format!("{name}-credentials"),
            },
            "events" => {
                let pods = &self.workloads[w].pods;
                let pod = pods[self.rng.below(pods.len())];
                format!("{}.{:016x}", self.pods[pod].name, self.rng.next_u64() >> 4)
            }
            "jobs" => format!("{name}-{}", self.rng.range(29_000_000, 29_400_000)),
            "persistentvolumeclaims" => format!("data-{name}-{}", self.rng.below(3)),
            "certificates" | "certificaterequests" => format!("{name}-tls"),
            "leases" => format!("{name}-leader"),
            "applications" => {
                let other = self.app_workload();
                self.workloads[other].name.to_string()
            }
            _ => name.to_string(),
        }
    }

    /// `allowWatchBookmarks=true&...&watch=true`, and the timeout it asks for.
    fn watch_query(&mut self, selector: Option<&str>) -> (String, u64) {
        let timeout = self.rng.range(300, 599);
        let rv = self.resource_version - self.rng.range(0, 50_000);
        let selector = selector.map(|s| format!("&{s}")).unwrap_or_default();
        (
            format!(
                "allowWatchBookmarks=true{selector}&resourceVersion={rv}\
                 &timeout={}m{}s&timeoutSeconds={timeout}&watch=true",
                timeout / 60,
                timeout % 60
            ),
            timeout,
        )
    }

    fn draft(&mut self) -> Req {
        let scenario = self.rng.weighted(SCENARIOS);
        match scenario {
            Scenario::KubeletLeaseUpdate | Scenario::KubeletLeaseGet => {
                let node = self.rng.below(NODE_COUNT);
                let verb = if matches!(scenario, Scenario::KubeletLeaseGet) {
                    "get"
                } else {
                    "update"
                };
                let name = self.nodes[node].name.clone();
                Req::new(Actor::Node(node), verb, &LEASES, "kube-node-lease", name)
                    .query("timeout=10s")
            }
            Scenario::KubeletWatch => {
                let node = self.rng.below(NODE_COUNT);
                let node_name = self.nodes[node].name.clone();
                let actor = Actor::Node(node);
                match self.rng.below(8) {
                    0 | 1 => Req::new(actor, "watch", &PODS, "", "")
                        .selector(format!("fieldSelector=spec.nodeName%3D{node_name}")),
                    2 => Req::new(actor, "watch", &NODES, "", "")
                        .selector(format!("fieldSelector=metadata.name%3D{node_name}")),
                    3 | 4 => {
                        let pod = self.pod_on_node(node);
                        let (ns, w) = (self.pods[pod].namespace, self.pods[pod].workload);
                        let res = if self.rng.chance(0.6) {
                            &CONFIGMAPS
                        } else {
                            &SECRETS
                        };
                        let name = self.object_name(res, w);
                        Req::new(actor, "watch", res, ns, "")
                            .selector(format!("fieldSelector=metadata.name%3D{name}"))
                    }
                    5 => Req::new(actor, "watch", &SERVICES, "", "").selector(
                        "labelSelector=%21service.kubernetes.io%2Fheadless\
                         %2C%21service.kubernetes.io%2Fservice-proxy-name",
                    ),
                    6 => Req::new(actor, "watch", &CSIDRIVERS, "", ""),
                    _ => Req::new(actor, "watch", &RUNTIMECLASSES, "", ""),
                }
            }
            Scenario::KubeletPodStatus => {
                let pod = self.random_pod();
                let p = &self.pods[pod];
                Req::new(
                    Actor::Node(p.node),
                    "patch",
                    &PODS,
                    p.namespace,
                    p.name.clone(),
                )
                .sub("status")
            }
            Scenario::KubeletNodeStatus => {
                let node = self.rng.below(NODE_COUNT);
                let name = self.nodes[node].name.clone();
                Req::new(Actor::Node(node), "patch", &NODES, "", name)
                    .sub("status")
                    .query("timeout=10s")
            }
            Scenario::KubeletGetNode => {
                let node = self.rng.below(NODE_COUNT);
                let name = self.nodes[node].name.clone();
                Req::new(Actor::Node(node), "get", &NODES, "", name)
                    .query("resourceVersion=0&timeout=10s")
            }
            Scenario::KubeletGetPod => {
                let pod = self.random_pod();
                let p = &self.pods[pod];
                Req::new(
                    Actor::Node(p.node),
                    "get",
                    &PODS,
                    p.namespace,
                    p.name.clone(),
                )
            }
            Scenario::KubeletEvent => {
                let pod = self.random_pod();
                let (node, ns, w) = {
                    let p = &self.pods[pod];
                    (p.node, p.namespace, p.workload)
                };
                let name = self.object_name(&EVENTS, w);
                Req::new(Actor::Node(node), "create", &EVENTS, ns, name)
            }
            Scenario::KubeletToken => {
                let pod = self.random_pod();
                let p = &self.pods[pod];
                let sa = self.workloads[p.workload].name;
                Req::new(
                    Actor::Node(p.node),
                    "create",
                    &SERVICEACCOUNTS,
                    p.namespace,
                    sa,
                )
                .sub("token")
            }
            Scenario::KubeletGetVolumeSource => {
                let pod = self.random_pod();
                let (node, ns, w) = {
                    let p = &self.pods[pod];
                    (p.node, p.namespace, p.workload)
                };
                let res = if self.rng.chance(0.5) {
                    &CONFIGMAPS
                } else {
                    &SECRETS
                };
                let name = self.object_name(res, w);
                Req::new(Actor::Node(node), "get", res, ns, name)
            }
            Scenario::KcmLeaseGet | Scenario::KcmLeaseUpdate => {
                let (verb, node) = if matches!(scenario, Scenario::KcmLeaseGet) {
                    ("get", self.rng.below(CONTROL_PLANE_NODES))
                } else {
                    ("update", 0)
                };
                let actor = Actor::Kcm {
                    controller: None,
                    suffix: "leader-election",
                    node,
                };
                Req::new(
                    actor,
                    verb,
                    &LEASES,
                    "kube-system",
                    "kube-controller-manager",
                )
                .query("timeout=5s")
            }
            Scenario::KcmInformerWatch | Scenario::KcmInformerList => {
                const INFORMED: &[&Res] = &[
                    &PODS,
                    &DEPLOYMENTS,
                    &REPLICASETS,
                    &STATEFULSETS,
                    &DAEMONSETS,
                    &JOBS,
                    &CRONJOBS,
                    &ENDPOINTSLICES,
                    &SERVICES,
                    &NODES,
                    &NAMESPACES_RES,
                    &SERVICEACCOUNTS,
                    &SECRETS,
                    &CONFIGMAPS,
                    &PVCS,
                    &PVS,
                    &HPAS,
                    &LEASES,
                    &INGRESSES,
                    &CSINODES,
                    &PRIORITYCLASSES,
                ];
                let res = *self.rng.pick(INFORMED);
                let verb = if matches!(scenario, Scenario::KcmInformerWatch) {
                    "watch"
                } else {
                    "list"
                };
                let actor = Actor::Kcm {
                    controller: None,
                    suffix: "shared-informers",
                    node: 0,
                };
                Req::new(actor, verb, res, "", "")
            }
            Scenario::ReplicaSetController => {
                let w = self.deployment();
                let ns = self.workloads[w].namespace;
                let actor = kcm("replicaset-controller");
                match self.rng.below(5) {
                    0 | 1 => {
                        let mut req = Req::new(actor, "create", &PODS, ns, "");
                        req.annotations.push((
                            "pod-security.kubernetes.io/enforce-policy",
                            pod_security(ns).to_string(),
                        ));
                        req
                    }
                    2 => {
                        let name = self.object_name(&PODS, w);
                        Req::new(actor, "delete", &PODS, ns, name)
                    }
                    _ => {
                        let name = self.object_name(&REPLICASETS, w);
                        Req::new(actor, "update", &REPLICASETS, ns, name).sub("status")
                    }
                }
            }
            Scenario::DeploymentController => {
                let w = self.deployment();
                let (ns, name) = (self.workloads[w].namespace, self.workloads[w].name);
                let actor = kcm("deployment-controller");
                match self.rng.below(6) {
                    0..=2 => Req::new(actor, "update", &DEPLOYMENTS, ns, name).sub("status"),
                    3 | 4 => {
                        let rs = self.object_name(&REPLICASETS, w);
                        Req::new(actor, "patch", &REPLICASETS, ns, rs)
                    }
                    _ => {
                        let rs = format!("{name}-{}", self.rng.k8s_suffix(10));
                        Req::new(actor, "create", &REPLICASETS, ns, rs)
                    }
                }
            }
            Scenario::EndpointSliceController => {
                let w = self.app_workload();
                let ns = self.workloads[w].namespace;
                let controller = if self.rng.chance(0.9) {
                    "endpointslice-controller"
                } else {
                    "endpointslicemirroring-controller"
                };
                let actor = kcm(controller);
                match self.rng.below(10) {
                    0 => Req::new(actor, "create", &ENDPOINTSLICES, ns, ""),
                    1 => {
                        let name = format!("{}-{}", self.workloads[w].name, self.rng.k8s_suffix(5));
                        Req::new(actor, "delete", &ENDPOINTSLICES, ns, name)
                    }
                    _ => {
                        let name = self.object_name(&ENDPOINTSLICES, w);
                        Req::new(actor, "update", &ENDPOINTSLICES, ns, name)
                    }
                }
            }
            Scenario::Autoscaler => {
                let w = self.deployment();
                let (ns, name) = (self.workloads[w].namespace, self.workloads[w].name);
                let actor = kcm("horizontal-pod-autoscaler");
                match self.rng.below(6) {
                    0..=2 => Req::new(actor, "get", &DEPLOYMENTS, ns, name).sub("scale"),
                    3 => Req::new(actor, "update", &DEPLOYMENTS, ns, name).sub("scale"),
                    _ => Req::new(actor, "update", &HPAS, ns, name).sub("status"),
                }
            }
            Scenario::GarbageCollector => {
                let w = self.deployment();
                let ns = self.workloads[w].namespace;
                let actor = kcm("generic-garbage-collector");
                if self.rng.chance(0.5) {
                    let rs = format!("{}-{}", self.workloads[w].name, self.rng.k8s_suffix(9));
                    Req::new(actor, "delete", &REPLICASETS, ns, rs)
                } else {
                    let res = *self.rng.pick(&[&PODS, &REPLICASETS, &JOBS]);
                    Req::new(actor, "get", res, ns, self.object_name(res, w))
                }
            }
            Scenario::JobController => {
                let ns = "data";
                let job = format!("etl-runner-{}", self.rng.range(29_000_000, 29_400_000));
                match self.rng.below(4) {
                    0 => Req::new(kcm("job-controller"), "create", &PODS, ns, ""),
                    1 | 2 => {
                        Req::new(kcm("job-controller"), "update", &JOBS, ns, job).sub("status")
                    }
                    _ => Req::new(kcm("cronjob-controller"), "create", &JOBS, ns, job),
                }
            }
            Scenario::OtherControllers => match self.rng.below(6) {
                0 => {
                    let node = self.rng.below(NODE_COUNT);
                    let name = self.nodes[node].name.clone();
                    Req::new(kcm("node-controller"), "patch", &NODES, "", name)
                }
                1 => {
                    let w = self.workload_of_kind(SS);
                    let (ns, name) = (self.workloads[w].namespace, self.workloads[w].name);
                    Req::new(
                        kcm("statefulset-controller"),
                        "update",
                        &STATEFULSETS,
                        ns,
                        name,
                    )
                    .sub("status")
                }
                2 => {
                    let w = self.workload_of_kind(DS);
                    let (ns, name) = (self.workloads[w].namespace, self.workloads[w].name);
                    Req::new(
                        kcm("daemon-set-controller"),
                        "update",
                        &DAEMONSETS,
                        ns,
                        name,
                    )
                    .sub("status")
                }
                3 => {
                    let ns = *self.rng.pick(APP_NAMESPACES);
                    Req::new(kcm("resourcequota-controller"), "list", &PODS, ns, "")
                }
                4 => {
                    let ns = *self.rng.pick(APP_NAMESPACES);
                    let w = self.workload_in(ns).unwrap_or(0);
                    let name = self.object_name(&PVCS, w);
                    Req::new(kcm("pvc-protection-controller"), "get", &PVCS, ns, name)
                }
                _ => {
                    let ns = *self.rng.pick(&NAMESPACES);
                    Req::new(kcm("namespace-controller"), "get", &NAMESPACES_RES, "", ns)
                }
            },
            Scenario::SchedulerLeaseGet | Scenario::SchedulerLeaseUpdate => {
                let (verb, node) = if matches!(scenario, Scenario::SchedulerLeaseGet) {
                    ("get", self.rng.below(CONTROL_PLANE_NODES))
                } else {
                    ("update", 1)
                };
                let actor = Actor::Scheduler {
                    suffix: "leader-election",
                    node,
                };
                Req::new(actor, verb, &LEASES, "kube-system", "kube-scheduler").query("timeout=5s")
            }
            Scenario::SchedulerBind => {
                let w = self.app_workload();
                let ns = self.workloads[w].namespace;
                let pod = self.object_name(&PODS, w);
                let actor = Actor::Scheduler {
                    suffix: "scheduler",
                    node: 1,
                };
                Req::new(actor, "create", &PODS, ns, pod).sub("binding")
            }
            Scenario::SchedulerWatch => {
                let res = *self.rng.pick(&[
                    &PODS,
                    &NODES,
                    &PVS,
                    &PVCS,
                    &CSINODES,
                    &STORAGECLASSES,
                    &CSIDRIVERS,
                    &NAMESPACES_RES,
                ]);
                let actor = Actor::Scheduler {
                    suffix: "scheduler",
                    node: 1,
                };
                let req = Req::new(actor, "watch", res, "", "");
                if res.resource == "pods" {
                    req.selector(
                        "fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed",
                    )
                } else {
                    req
                }
            }
            Scenario::SchedulerEvent => {
                let w = self.app_workload();
                let ns = self.workloads[w].namespace;
                let name = self.object_name(&EVENTS, w);
                let actor = Actor::Scheduler {
                    suffix: "scheduler",
                    node: 1,
                };
                Req::new(actor, "create", &EVENTS_K8S, ns, name)
            }
            Scenario::Workload => self.workload_request(),
            Scenario::Person => self.person_request(),
            Scenario::Anonymous => {
                let node = self.rng.below(CONTROL_PLANE_NODES);
                let (source_ip, user_agent) = if self.rng.chance(0.7) {
                    (
                        ["10.0.0.11", "10.0.0.12", "10.0.0.13"][node],
                        "kube-probe/1.36",
                    )
                } else {
                    (
                        *self.rng.pick(&["10.0.0.2", "10.0.0.3"]),
                        "Go-http-client/1.1",
                    )
                };
                let actor = Actor::Anonymous {
                    source_ip,
                    user_agent,
                };
                let path = self.rng.weighted(&[
                    ("/livez", 4),
                    ("/readyz", 4),
                    ("/healthz", 3),
                    ("/version", 1),
                    ("/metrics", 1),
                ]);
                let req = Req::non_resource(actor, path);
                if path == "/metrics" {
                    req.fail(Failure::Forbidden)
                } else {
                    req
                }
            }
            Scenario::ApiServer => {
                let node = self.rng.below(CONTROL_PLANE_NODES);
                let actor = Actor::ApiServer;
                match self.rng.below(10) {
                    0..=3 => {
                        let lease = self.apiserver_leases[node].clone();
                        Req::new(actor, "update", &LEASES, "kube-system", lease)
                    }
                    4 => {
                        let lease = self.apiserver_leases[node].clone();
                        Req::new(actor, "get", &LEASES, "kube-system", lease)
                    }
                    5 | 6 => {
                        let ns = *self.rng.pick(&[
                            "default",
                            "kube-system",
                            "kube-public",
                            "kube-node-lease",
                        ]);
                        Req::new(actor, "get", &NAMESPACES_RES, "", ns)
                    }
                    7 => {
                        let res = if self.rng.chance(0.5) {
                            &ENDPOINTS
                        } else {
                            &ENDPOINTSLICES
                        };
                        Req::new(actor, "get", res, "default", "kubernetes")
                    }
                    8 => Req::new(actor, "get", &SERVICES, "default", "kubernetes"),
                    _ => {
                        let res = *self.rng.pick(&[
                            &PRIORITYCLASSES,
                            &NAMESPACES_RES,
                            &SERVICES,
                            &ENDPOINTSLICES,
                        ]);
                        Req::new(actor, "watch", res, "", "")
                    }
                }
            }
        }
    }

    fn workload_request(&mut self) -> Req {
        let profile = self
            .rng
            .weighted_index(SA_PROFILES.iter().map(|p| p.weight));
        let p = &SA_PROFILES[profile];
        let w = self.sa_workloads[profile];
        let pods = &self.workloads[w].pods;
        let pod = pods[self.rng.below(pods.len())];
        let actor = Actor::Workload { profile, pod };
        let action = self.rng.weighted(p.actions);
        let (ns, name) = match action.scope {
            Cluster => (String::new(), String::new()),
            OwnNs => (p.namespace.to_string(), String::new()),
            OwnObject => (p.namespace.to_string(), self.object_name(action.res, w)),
            AnyObject => {
                let other = self.app_workload();
                let ns = self.workloads[other].namespace;
                (ns.to_string(), self.object_name(action.res, other))
            }
            Fixed(ns, name) => (ns.to_string(), name.to_string()),
        };
        let name = if action.verb == "create" && action.sub.is_empty() {
            match action.res.resource {
                "events" => self.object_name(action.res, w),
                "certificaterequests" => format!("{}-{}", p.workload, self.rng.range(1, 40)),
                _ => String::new(),
            }
        } else {
            name
        };
        let ns = if action.res.namespaced {
            ns
        } else {
            String::new()
        };
        let mut req = Req::new(actor, action.verb, action.res, ns, name).sub(action.sub);
        req.namespaced_binding = p.namespaced_binding;
        if p.name == "postgres-operator"
            && action.verb == "list"
            && action.res.resource == "secrets"
        {
            req = req.fail(Failure::Forbidden);
        }
        if p.name == "argocd-application-controller" && action.verb == "patch" {
            req = req.query("fieldManager=argocd-controller&force=true");
        }
        req
    }

    fn person_request(&mut self) -> Req {
        let person = self.rng.weighted_index(HUMANS.iter().map(|h| h.weight));
        let human = &HUMANS[person];
        let actor = Actor::Person(person);
        let w = self.deployment();
        let (ns, deploy) = (self.workloads[w].namespace, self.workloads[w].name);
        let kubectl = human.user_agent.starts_with("kubectl");
        let helm = human.user_agent.starts_with("Helm");
        let mut req = if helm {
            match self.rng.below(6) {
                0 | 1 => Req::new(actor, "list", &SECRETS, ns, "")
                    .selector(format!("labelSelector=name%3D{deploy}%2Cowner%3Dhelm"))
                    .query(String::new()),
                2 => {
                    let name = format!("sh.helm.release.v1.{deploy}.v{}", self.rng.range(2, 14));
                    Req::new(actor, "create", &SECRETS, ns, name)
                }
                3 => Req::new(actor, "get", &DEPLOYMENTS, ns, deploy),
                4 => {
                    let mut req = Req::new(actor, "patch", &DEPLOYMENTS, ns, deploy);
                    req.level = Level::Request;
                    let image = format!(
                        "registry.example.com/{ns}/{deploy}:1.{}.{}",
                        self.rng.range(0, 40),
                        self.rng.range(0, 9)
                    );
                    req.request_object = Some(json!({"spec": {"template": {"spec": {
                            "containers": [{"name": deploy, "image": image}]}}}}));
                    if self.rng.chance(0.1) {
                        req = req.fail(Failure::Invalid);
                    }
                    req
                }
                _ => {
                    let name = self.object_name(&CONFIGMAPS, w);
                    Req::new(actor, "update", &CONFIGMAPS, ns, name)
                }
            }
        } else {
            match self.rng.weighted(&[
                (0u8, 8),
                (1, 4),
                (2, 3),
                (3, 2),
                (4, 2),
                (5, 2),
                (6, 1),
                (7, 1),
                (8, 1),
                (9, 2),
                (10, 1),
                (11, 1),
                (12, 1),
                (13, 1),
                (14, 1),
                (15, 2),
            ]) {
                0 => Req::new(actor, "list", &PODS, ns, "").query("limit=500"),
                1 => {
                    let pod = self.object_name(&PODS, w);
                    Req::new(actor, "get", &PODS, ns, pod)
                }
                2 => {
                    let pod = self.object_name(&PODS, w);
                    let query = if self.rng.chance(0.5) {
                        format!("container={deploy}&follow=true&tailLines=100")
                    } else {
                        format!("container={deploy}")
                    };
                    Req::new(actor, "get", &PODS, ns, pod)
                        .sub("log")
                        .query(query)
                }
                3 => {
                    let pod = self.object_name(&PODS, w);
                    // kubectl 1.31+ execs over WebSockets (a GET); older clients POST.
                    let verb = if kubectl { "get" } else { "create" };
                    Req::new(actor, verb, &PODS, ns, pod)
                        .sub("exec")
                        .query(format!(
                            "command=sh&container={deploy}&stdin=true&stdout=true&tty=true"
                        ))
                }
                4 => Req::new(actor, "get", &DEPLOYMENTS, ns, deploy),
                5 => {
                    // kubectl rollout restart
                    let mut req = Req::new(actor, "patch", &DEPLOYMENTS, ns, deploy)
                        .query("fieldManager=kubectl-rollout");
                    req.level = Level::Request;
                    let at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
                    req.request_object = Some(json!({"spec":{"template":{"metadata":{
                        "annotations":{"kubectl.kubernetes.io/restartedAt": at}}}}}));
                    req
                }
                6 => Req::new(actor, "get", &DEPLOYMENTS, ns, deploy).sub("scale"),
                7 => {
                    let mut req = Req::new(actor, "patch", &DEPLOYMENTS, ns, deploy).sub("scale");
                    req.level = Level::Request;
                    req.request_object = Some(json!({"spec":{"replicas": self.rng.range(0, 12)}}));
                    req
                }
                8 => {
                    let pod = self.object_name(&PODS, w);
                    let mut req = Req::new(actor, "delete", &PODS, ns, pod);
                    req.level = Level::Request;
                    req.request_object = Some(json!({"kind": "DeleteOptions", "apiVersion": "v1",
                            "propagationPolicy": "Background"}));
                    req
                }
                9 => {
                    let name = self.object_name(&SECRETS, w);
                    Req::new(actor, "get", &SECRETS, ns, name)
                }
                10 => {
                    let name = format!("{deploy}-config");
                    let req = Req::new(actor, "create", &CONFIGMAPS, ns, name)
                        .query("fieldManager=kubectl-create&fieldValidation=Strict");
                    if self.rng.chance(0.3) {
                        req.fail(Failure::AlreadyExists)
                    } else {
                        req
                    }
                }
                11 => Req::new(actor, "list", &NAMESPACES_RES, "", "").query("limit=500"),
                12 => Req::new(actor, "list", &NODES, "", "").query("limit=500"),
                13 => Req::new(actor, "watch", &PODS, ns, ""),
                14 => Req::new(actor, "list", &EVENTS, ns, "").query("limit=500"),
                _ => {
                    let path = *self.rng.pick(&["/api?timeout=32s", "/apis?timeout=32s"]);
                    Req::non_resource(actor, path)
                }
            }
        };
        let changes = matches!(req.verb, "create" | "update" | "patch") && req.sub != "exec";
        if changes && req.res.is_some() && req.failure.is_none() && self.rng.chance(0.08) {
            req = req.fail(Failure::Invalid);
        }
        // Developers may change things and read secrets only in their own namespaces.
        if human.binding.is_none() && req.res.is_some() {
            let own = human.own_namespaces.contains(&req.namespace.as_str());
            let write = !matches!(req.verb, "get" | "list" | "watch") || req.sub == "exec";
            let secret = req.res.is_some_and(|r| r.resource == "secrets");
            if !own
                && (write
                    || secret
                    || req.namespace.is_empty() && req.res.is_some_and(|r| r.resource == "nodes"))
            {
                req = req.fail(Failure::Forbidden);
            }
        }
        // Now and then bob acts as an application's service account to check its permissions.
        if human.name == "bob@example.com" && self.rng.chance(0.05) {
            req.impersonate = Some(UserInfo {
                username: "system:serviceaccount:shop:web".into(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    "system:serviceaccounts:shop".into(),
                    "system:authenticated".into(),
                ],
                ..UserInfo::default()
            });
        }
        req
    }

    fn user(&self, actor: Actor) -> UserInfo {
        let sa_groups = |ns: &str| {
            vec![
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".to_string(),
            ]
        };
        match actor {
            Actor::Node(node) => UserInfo {
                username: format!("system:node:{}", self.nodes[node].name),
                groups: vec!["system:nodes".into(), "system:authenticated".into()],
                ..UserInfo::default()
            },
            Actor::Kcm {
                controller: None, ..
            } => UserInfo {
                username: "system:kube-controller-manager".into(),
                groups: vec!["system:authenticated".into()],
                ..UserInfo::default()
            },
            Actor::Kcm {
                controller: Some(controller),
                ..
            } => {
                let index = KCM_CONTROLLERS
                    .iter()
                    .position(|c| *c == controller)
                    .unwrap_or(0);
                let mut extra = Map::new();
                extra.insert(
                    "authentication.kubernetes.io/credential-id".into(),
                    json!([format!(
                        "JTI={}",
                        stable_uuid(self.seed, &["jti", controller])
                    )]),
                );
                UserInfo {
                    username: format!("system:serviceaccount:kube-system:{controller}"),
                    uid: Some(self.sa_uids[SA_PROFILES.len() + index].clone()),
                    groups: sa_groups("kube-system"),
                    extra: Some(extra),
                }
            }
            Actor::Scheduler { .. } => UserInfo {
                username: "system:kube-scheduler".into(),
                groups: vec!["system:authenticated".into()],
                ..UserInfo::default()
            },
            Actor::Workload { profile, pod } => {
                let p = &SA_PROFILES[profile];
                let pod = &self.pods[pod];
                let node = &self.nodes[pod.node];
                let mut extra = Map::new();
                extra.insert(
                    "authentication.kubernetes.io/credential-id".into(),
                    json!([format!("JTI={}", pod.token_id)]),
                );
                extra.insert(
                    "authentication.kubernetes.io/node-name".into(),
                    json!([node.name]),
                );
                extra.insert(
                    "authentication.kubernetes.io/pod-name".into(),
                    json!([pod.name]),
                );
                UserInfo {
                    username: format!("system:serviceaccount:{}:{}", p.namespace, p.name),
                    uid: Some(self.sa_uids[profile].clone()),
                    groups: sa_groups(p.namespace),
                    extra: Some(extra),
                }
            }
            Actor::Person(person) => UserInfo {
                username: HUMANS[person].name.into(),
                groups: HUMANS[person]
                    .groups
                    .iter()
                    .map(|g| g.to_string())
                    .collect(),
                ..UserInfo::default()
            },
            Actor::Anonymous { .. } => UserInfo {
                username: "system:anonymous".into(),
                groups: vec!["system:unauthenticated".into()],
                ..UserInfo::default()
            },
            Actor::ApiServer => UserInfo {
                username: "system:apiserver".into(),
                uid: Some(self.apiserver_uid.clone()),
                groups: vec!["system:authenticated".into(), "system:masters".into()],
                ..UserInfo::default()
            },
        }
    }

    fn user_agent(&self, actor: Actor) -> String {
        let component =
            |name: &str, arch: &str| format!("{name}/{K8S_VERSION} (linux/{arch}) {K8S_GIT}");
        match actor {
            Actor::Node(node) => component("kubelet", self.nodes[node].arch),
            Actor::Kcm {
                controller, suffix, ..
            } => match controller {
                Some(c) => format!(
                    "{}/system:serviceaccount:kube-system:{c}",
                    component("kube-controller-manager", "amd64")
                ),
                None => format!("{}/{suffix}", component("kube-controller-manager", "amd64")),
            },
            Actor::Scheduler { suffix, .. } => {
                format!("{}/{suffix}", component("kube-scheduler", "amd64"))
            }
            Actor::Workload { profile, .. } => SA_PROFILES[profile].user_agent.into(),
            Actor::Person(person) => HUMANS[person].user_agent.into(),
            Actor::Anonymous { user_agent, .. } => user_agent.into(),
            Actor::ApiServer => component("kube-apiserver", "amd64"),
        }
    }

    fn source_ip(&self, actor: Actor) -> String {
        match actor {
            Actor::Node(node) => self.nodes[node].ip.clone(),
            Actor::Kcm { node, .. } | Actor::Scheduler { node, .. } => self.nodes[node].ip.clone(),
            Actor::Workload { pod, .. } => self.pods[pod].ip.clone(),
            Actor::Person(person) => HUMANS[person].source_ip.into(),
            Actor::Anonymous { source_ip, .. } => source_ip.into(),
            Actor::ApiServer => "::1".into(),
        }
    }

    /// `authorization.k8s.io/reason` of an allowed request.
    fn allow_reason(&self, req: &Req) -> String {
        const DEVELOPERS: &str = "Group \"oidc:developers\"";
        match req.actor {
            // The Node authorizer and the system:masters group give no reason.
            Actor::Node(_) | Actor::ApiServer => String::new(),
            Actor::Kcm {
                controller: None, ..
            } => {
                let user = "system:kube-controller-manager";
                rbac_cluster(user, &format!("User \"{user}\""))
            }
            Actor::Kcm {
                controller: Some(c),
                ..
            } => {
                let role = format!("system:controller:{c}");
                rbac_cluster(&role, &format!("ServiceAccount \"{c}/kube-system\""))
            }
            Actor::Scheduler { .. } => {
                let user = "system:kube-scheduler";
                rbac_cluster(user, &format!("User \"{user}\""))
            }
            Actor::Workload { profile, .. } => {
                let p = &SA_PROFILES[profile];
                let subject = format!("ServiceAccount \"{}/{}\"", p.name, p.namespace);
                if req.namespaced_binding {
                    let binding = format!("RoleBinding \"{}/{}\"", p.name, p.namespace);
                    rbac(&binding, &format!("Role \"{}\"", p.name), &subject)
                } else {
                    rbac_cluster(p.name, &subject)
                }
            }
            Actor::Person(person) => {
                let human = &HUMANS[person];
                let own = human.own_namespaces.contains(&req.namespace.as_str());
                match human.binding {
                    Some(reason) => reason.into(),
                    None if req.res.is_none() => {
                        rbac_cluster("system:discovery", "Group \"system:authenticated\"")
                    }
                    None if !own => rbac(
                        "ClusterRoleBinding \"developers-view\"",
                        "ClusterRole \"view\"",
                        DEVELOPERS,
                    ),
                    None => {
                        let binding = format!("RoleBinding \"developers/{}\"", req.namespace);
                        rbac(&binding, "ClusterRole \"edit\"", DEVELOPERS)
                    }
                }
            }
            Actor::Anonymous { .. } => rbac_cluster(
                "system:public-info-viewer",
                "Group \"system:unauthenticated\"",
            ),
        }
    }

    /// Turns a request into its event, stamped as answered at `now`.
    fn finish(&mut self, mut req: Req, now: SystemTime) -> Event {
        let user = self.user(req.actor);
        let user_agent = self.user_agent(req.actor);
        let source_ip = self.source_ip(req.actor);
        let audit_id = self.rng.uuid();

        // Random failures, at rates a healthy cluster shows.
        if req.failure.is_none() && req.errors {
            let named = !req.name.is_empty();
            let roll = self.rng.next_u64() % 10_000;
            req.failure = match req.verb {
                _ if roll < 5 => Some(Failure::Internal),
                "get" if named && req.sub != "exec" && req.sub != "log" && roll < 300 => {
                    Some(Failure::NotFound)
                }
                "delete" if roll < 400 => Some(Failure::NotFound),
                "patch" if roll < 100 => Some(Failure::NotFound),
                "update" if roll < 300 => Some(Failure::Conflict),
                "create" if named && req.sub.is_empty() && roll < 150 => {
                    Some(Failure::AlreadyExists)
                }
                _ => None,
            };
        }

        let long_running =
            req.verb == "watch" || matches!(req.sub, "exec" | "log" | "attach" | "portforward");
        // A long-running request is recorded when its response starts and again when it ends;
        // a refused one only ends.
        let stage = if long_running && req.failure.is_none() && self.rng.chance(0.5) {
            Stage::ResponseStarted
        } else {
            Stage::ResponseComplete
        };

        // The URL and the object reference.
        let (request_uri, object_ref, watch_timeout) = match req.res {
            None => {
                let query = req.query.clone().unwrap_or_default();
                let uri = if query.is_empty() {
                    req.path.clone()
                } else {
                    format!("{}?{query}", req.path)
                };
                (uri, None, None)
            }
            Some(res) => {
                let collection = matches!(req.verb, "list" | "watch")
                    || req.verb == "create" && req.sub.is_empty();
                let url_name = if collection { "" } else { req.name.as_str() };
                let url_ns = if res.resource == "namespaces" {
                    ""
                } else {
                    req.namespace.as_str()
                };
                let mut path = if res.group.is_empty() {
                    format!("/api/{}", res.version)
                } else {
                    format!("/apis/{}/{}", res.group, res.version)
                };
                if !url_ns.is_empty() {
                    path.push_str("/namespaces/");
                    path.push_str(url_ns);
                }
                path.push('/');
                path.push_str(res.resource);
                if !url_name.is_empty() {
                    path.push('/');
                    path.push_str(url_name);
                    if !req.sub.is_empty() {
                        path.push('/');
                        path.push_str(req.sub);
                    }
                }
                let mut watch_timeout = None;
                let query = match (req.verb, req.query.clone()) {
                    ("watch", _) => {
                        let (query, timeout) = self.watch_query(req.selector.as_deref());
                        watch_timeout = Some(timeout);
                        query
                    }
                    ("list", Some(query)) => match &req.selector {
                        Some(selector) if query.is_empty() => selector.clone(),
                        Some(selector) => format!("{selector}&{query}"),
                        None => query,
                    },
                    ("list", None) => match &req.selector {
                        Some(selector) => format!("{selector}&limit=500&resourceVersion=0"),
                        None => "limit=500&resourceVersion=0".into(),
                    },
                    (_, Some(query)) => query,
                    (_, None) => String::new(),
                };
                let uri = if query.is_empty() {
                    path
                } else {
                    format!("{path}?{query}")
                };
                let name = if collection && req.verb != "create" {
                    String::new()
                } else {
                    req.name.clone()
                };
                let mut object = ObjectReference {
                    resource: res.resource.into(),
                    namespace: if res.resource == "namespaces" {
                        name.clone()
                    } else {
                        req.namespace.clone()
                    },
                    name,
                    api_group: res.group.into(),
                    api_version: Some(res.version.into()),
                    subresource: req.sub.into(),
                    ..ObjectReference::default()
                };
                // An update's body is the whole object: the kube-apiserver copies its uid and
                // resourceVersion into the reference.
                if req.verb == "update" && req.failure != Some(Failure::Forbidden) {
                    object.uid = Some(stable_uuid(
                        self.seed,
                        &[res.resource, &req.namespace, &req.name],
                    ));
                    object.resource_version =
                        Some((self.resource_version - self.rng.range(1, 3000)).to_string());
                }
                (uri, Some(object), watch_timeout)
            }
        };
        self.next_rv();

        let success = match (req.verb, req.sub) {
            (_, "exec") => 101,
            ("create", _) => 201,
            _ => 200,
        };
        let response_status = Some(match req.failure {
            None => ResponseStatus {
                code: Some(success),
                ..ResponseStatus::default()
            },
            Some(failure) => self.failure_status(failure, &req, &user),
        });

        let mut annotations = Map::new();
        let forbidden = req.failure == Some(Failure::Forbidden);
        annotations.insert(
            "authorization.k8s.io/decision".into(),
            Value::String(if forbidden { "forbid" } else { "allow" }.into()),
        );
        annotations.insert(
            "authorization.k8s.io/reason".into(),
            Value::String(if forbidden {
                String::new()
            } else {
                self.allow_reason(&req)
            }),
        );
        for (key, value) in req.annotations.drain(..) {
            annotations.insert(key.into(), Value::String(value));
        }

        // How long the request took, by what it was.
        let micros = match (req.verb, stage) {
            (_, Stage::ResponseStarted) => self.rng.range(150, 2_500),
            ("watch", _) => watch_timeout.unwrap_or(300) * 1_000_000 + self.rng.range(0, 999_999),
            _ if long_running => self.rng.range(2, 900) * 1_000_000 + self.rng.range(0, 999_999),
            ("list", _) => self.rng.range(2_000, 150_000),
            ("get", _) => self.rng.range(250, 9_000),
            _ => self.rng.range(1_500, 40_000),
        };
        let received = now - Duration::from_micros(micros);

        let (request_object, level) = match (req.request_object.take(), req.failure) {
            (Some(object), None | Some(Failure::Invalid | Failure::Conflict)) => {
                (Some(object), req.level)
            }
            _ => (None, Level::Metadata),
        };

        Event {
            api_version: Some("audit.k8s.io/v1".into()),
            kind: Some("Event".into()),
            level,
            audit_id,
            stage,
            request_uri,
            verb: req.verb.into(),
            user,
            impersonated_user: req.impersonate.take(),
            source_ips: vec![source_ip],
            user_agent: Some(user_agent),
            object_ref,
            response_status,
            request_object,
            response_object: None,
            request_received_timestamp: Some(
                humantime::format_rfc3339_micros(received).to_string(),
            ),
            stage_timestamp: Some(humantime::format_rfc3339_micros(now).to_string()),
            annotations: Some(annotations),
        }
    }

    fn failure_status(&mut self, failure: Failure, req: &Req, user: &UserInfo) -> ResponseStatus {
        const MODIFIED: &str = "the object has been modified; \
            please apply your changes to the latest version and try again";
        const BAD_LABEL: &str =
            "name part must consist of alphanumeric characters, '-', '_' or '.'";
        const INTERNAL: &[&str] = &[
            "Internal error occurred: resource quota evaluation timed out",
            "etcdserver: request timed out",
            "Internal error occurred: failed calling webhook \"webhook.cert-manager.io\": \
                context deadline exceeded",
        ];
        let who = req.res.map(|r| r.qualified()).unwrap_or_default();
        let name = &req.name;
        let (code, reason, message) = match failure {
            Failure::NotFound => (404, "NotFound", format!("{who} \"{name}\" not found")),
            Failure::Conflict => (
                409,
                "Conflict",
                format!("Operation cannot be fulfilled on {who} \"{name}\": {MODIFIED}"),
            ),
            Failure::AlreadyExists => {
                let message = format!("{who} \"{name}\" already exists");
                (409, "AlreadyExists", message)
            }
            Failure::Invalid => {
                let res = req.res.unwrap_or(&PODS);
                let kind = match (req.sub, res.group) {
                    ("scale", _) => "Scale.autoscaling".to_string(),
                    (_, "") => res.kind.to_string(),
                    (_, group) => format!("{}.{group}", res.kind),
                };
                let detail = match (req.sub, res.resource) {
                    ("scale", _) => {
                        "spec.replicas: Invalid value: -1: must be greater than or equal to 0"
                            .into()
                    }
                    (_, "deployments" | "statefulsets" | "daemonsets") => {
                        "spec.template.spec.containers[0].image: Required value".to_string()
                    }
                    _ => format!("metadata.labels: Invalid value: \"release/{name}\": {BAD_LABEL}"),
                };
                let message = format!("{kind} \"{name}\" is invalid: {detail}");
                (422, "Invalid", message)
            }
            Failure::Internal => (500, "InternalError", self.rng.pick(INTERNAL).to_string()),
            Failure::Forbidden => {
                let (subject, verb) = (&user.username, req.verb);
                let message = match req.res {
                    None => format!(
                        "forbidden: User \"{subject}\" cannot {verb} path \"{}\"",
                        req.path
                    ),
                    Some(res) => {
                        let resource = if req.sub.is_empty() {
                            res.resource.to_string()
                        } else {
                            format!("{}/{}", res.resource, req.sub)
                        };
                        let unnamed = name.is_empty() || verb == "create" && req.sub.is_empty();
                        let object = if unnamed {
                            who.clone()
                        } else {
                            format!("{who} \"{name}\"")
                        };
                        let scope = if req.namespace.is_empty() {
                            "at the cluster scope".to_string()
                        } else {
                            format!("in the namespace \"{}\"", req.namespace)
                        };
                        format!(
                            "{object} is forbidden: User \"{subject}\" cannot {verb} resource \
                             \"{resource}\" in API group \"{}\" {scope}",
                            res.group
                        )
                    }
                };
                (403, "Forbidden", message)
            }
        };
        ResponseStatus {
            code: Some(code),
            status: Some("Failure".into()),
            reason: Some(reason.into()),
            message: Some(message),
        }
    }
}

fn kcm(controller: &'static str) -> Actor {
    Actor::Kcm {
        controller: Some(controller),
        suffix: "",
        node: 0,
    }
}

/// `RBAC: allowed by <binding> of <role> to <subject>`, as the RBAC authorizer words it.
fn rbac(binding: &str, role: &str, subject: &str) -> String {
    format!("RBAC: allowed by {binding} of {role} to {subject}")
}

/// Allowed by a ClusterRoleBinding named after its ClusterRole.
fn rbac_cluster(name: &str, subject: &str) -> String {
    rbac(
        &format!("ClusterRoleBinding \"{name}\""),
        &format!("ClusterRole \"{name}\""),
        subject,
    )
}

fn pod_security(namespace: &str) -> &'static str {
    match namespace {
        "kube-system" | "monitoring" | "logging" => "privileged:latest",
        "shop" | "payments" => "restricted:latest",
        _ => "baseline:latest",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustc_hash::{FxHashMap, FxHashSet};

    fn without_times(mut event: Event) -> Event {
        event.request_received_timestamp = None;
        event.stage_timestamp = None;
        // The kubectl rollout-restart patch carries a timestamp of its own.
        if event.verb == "patch"
            && event
                .user_agent
                .as_deref()
                .is_some_and(|ua| ua.starts_with("kubectl"))
        {
            event.request_object = None;
        }
        event
    }

    fn sample(seed: u64, n: usize) -> Vec<Event> {
        let mut generator = EventGenerator::new(seed);
        (0..n).map(|_| generator.next_event()).collect()
    }

    #[test]
    fn generator_is_deterministic_for_a_seed() {
        let a: Vec<Event> = sample(7, 2_000).into_iter().map(without_times).collect();
        let b: Vec<Event> = sample(7, 2_000).into_iter().map(without_times).collect();
        assert_eq!(a, b);
        let c: Vec<Event> = sample(8, 2_000).into_iter().map(without_times).collect();
        assert_ne!(a, c);
        assert_ne!(a[0].audit_id, c[0].audit_id);
    }

    #[test]
    fn events_round_trip_through_serde() {
        let mut generator = EventGenerator::new(3);
        let list = generator.next_list(1_000);
        for event in &list.items {
            let json = serde_json::to_string(event).unwrap();
            let back: Event = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, event);
        }
        let body = event_list_json(&list);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["kind"], "EventList");
        assert_eq!(value["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(value["metadata"], json!({}));
        let back: EventList = serde_json::from_slice(&body).unwrap();
        assert_eq!(back, list);
    }

    #[test]
    fn audit_ids_are_unique_uuids() {
        let events = sample(1, 10_000);
        let ids: FxHashSet<&str> = events.iter().map(|e| e.audit_id.as_str()).collect();
        assert_eq!(ids.len(), events.len());
        for id in ids.iter().take(100) {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(
                id.chars()
                    .all(|c| c == '-' || c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            assert!(parts[2].starts_with('4'), "{id}");
            assert!(
                matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "{id}"
            );
        }
    }

    #[test]
    fn event_sizes_are_like_real_metadata_events() {
        let events = sample(5, 10_000);
        let mut sizes: Vec<usize> = events
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap().len())
            .collect();
        sizes.sort_unstable();
        let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        let (p5, p95) = (sizes[sizes.len() / 20], sizes[sizes.len() * 19 / 20]);
        eprintln!(
            "event sizes: mean {mean:.0}, min {}, p5 {p5}, p50 {}, p95 {p95}, max {}",
            sizes[0],
            sizes[sizes.len() / 2],
            sizes[sizes.len() - 1]
        );
        assert!((600.0..=1000.0).contains(&mean), "mean size {mean}");
        assert!(p5 >= 450 && p95 <= 1500, "p5 {p5}, p95 {p95}");
        assert!(sizes[0] >= 300 && sizes[sizes.len() - 1] <= 2000);
    }

    #[test]
    fn events_vary_like_a_real_cluster() {
        let events = sample(11, 10_000);
        let distinct =
            |f: &dyn Fn(&Event) -> String| events.iter().map(f).collect::<FxHashSet<String>>();
        let users = distinct(&|e| e.user.username.clone());
        let verbs = distinct(&|e| e.verb.clone());
        let resources = distinct(&|e| {
            e.object_ref.as_ref().map_or(String::new(), |o| {
                if o.subresource.is_empty() {
                    format!("{}/{}", o.api_group, o.resource)
                } else {
                    format!("{}/{}/{}", o.api_group, o.resource, o.subresource)
                }
            })
        });
        let namespaces = distinct(&|e| {
            e.object_ref
                .as_ref()
                .map_or(String::new(), |o| o.namespace.clone())
        });
        let names = distinct(&|e| {
            e.object_ref
                .as_ref()
                .map_or(String::new(), |o| o.name.clone())
        });
        let ips = distinct(&|e| e.source_ips[0].clone());
        let agents = distinct(&|e| e.user_agent.clone().unwrap_or_default());
        let codes = distinct(&|e| {
            e.response_status
                .as_ref()
                .and_then(|s| s.code)
                .unwrap_or(0)
                .to_string()
        });
        let stages = distinct(&|e| format!("{:?}", e.stage));
        eprintln!(
            "{} users, {} verbs, {} resources, {} namespaces, {} names, {} source IPs, \
             {} user agents, codes {codes:?}",
            users.len(),
            verbs.len(),
            resources.len(),
            namespaces.len(),
            names.len(),
            ips.len(),
            agents.len()
        );
        assert!(users.len() >= 40, "{users:?}");
        for user in [
            "system:node:node-1",
            "system:kube-controller-manager",
            "system:kube-scheduler",
            "system:anonymous",
            "system:serviceaccount:kube-system:coredns",
            "alice@example.com",
        ] {
            assert!(users.contains(user), "{user}");
        }
        for verb in [
            "get", "list", "watch", "create", "update", "patch", "delete",
        ] {
            assert!(verbs.contains(verb), "{verb}");
        }
        for resource in [
            "/pods",
            "/pods/status",
            "/pods/log",
            "/pods/exec",
            "/configmaps",
            "/secrets",
            "coordination.k8s.io/leases",
            "apps/deployments",
            "apps/deployments/scale",
            "/nodes",
            "/nodes/status",
            "/events",
            "discovery.k8s.io/endpointslices",
            "/serviceaccounts/token",
        ] {
            assert!(resources.contains(resource), "{resource}");
        }
        assert!(resources.len() >= 30, "{resources:?}");
        assert!(namespaces.len() >= 13, "{namespaces:?}");
        assert!(names.len() >= 300, "{}", names.len());
        assert!((24..=60).contains(&ips.len()), "{ips:?}");
        assert!(agents.len() >= 15, "{agents:?}");
        for code in ["200", "201", "101", "403", "404", "409", "422"] {
            assert!(codes.contains(code), "{code}");
        }
        assert!(stages.contains("ResponseStarted") && stages.contains("ResponseComplete"));

        // Watch and get lead, like in a real log; Metadata is almost everything.
        let mut by_verb: FxHashMap<&str, usize> = FxHashMap::default();
        for e in &events {
            *by_verb.entry(e.verb.as_str()).or_default() += 1;
        }
        let mut ranked: Vec<(&str, usize)> = by_verb.into_iter().collect();
        ranked.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        eprintln!("verbs: {ranked:?}");
        let top: FxHashSet<&str> = ranked[..3].iter().map(|(v, _)| *v).collect();
        assert!(top.contains("get") && top.contains("watch"), "{ranked:?}");
        let metadata = events.iter().filter(|e| e.level == Level::Metadata).count();
        assert!(metadata * 100 >= events.len() * 97, "{metadata}");
        let ok = events
            .iter()
            .filter(|e| {
                matches!(
                    e.response_status.as_ref().and_then(|s| s.code),
                    Some(200 | 201 | 101)
                )
            })
            .count();
        assert!(ok * 100 >= events.len() * 90, "{ok}");
        let server_errors = events
            .iter()
            .filter(|e| e.response_status.as_ref().and_then(|s| s.code) == Some(500))
            .count();
        assert!(server_errors * 500 <= events.len(), "{server_errors}");
    }

    #[test]
    fn request_uris_match_the_object_reference() {
        for e in sample(13, 5_000) {
            let (path, _query) = e
                .request_uri
                .split_once('?')
                .unwrap_or((&e.request_uri, ""));
            let Some(o) = &e.object_ref else {
                assert!(
                    path.starts_with('/') && !path.starts_with("/api/v1/"),
                    "{}",
                    e.request_uri
                );
                continue;
            };
            let mut expected = if o.api_group.is_empty() {
                "/api/v1".to_string()
            } else {
                format!(
                    "/apis/{}/{}",
                    o.api_group,
                    o.api_version.as_deref().unwrap()
                )
            };
            if !o.namespace.is_empty() && o.resource != "namespaces" {
                expected += &format!("/namespaces/{}", o.namespace);
            }
            expected += &format!("/{}", o.resource);
            let collection = matches!(e.verb.as_str(), "list" | "watch")
                || e.verb == "create" && o.subresource.is_empty();
            if !collection {
                assert!(!o.name.is_empty(), "{e:?}");
                expected += &format!("/{}", o.name);
                if !o.subresource.is_empty() {
                    expected += &format!("/{}", o.subresource);
                }
            }
            assert_eq!(path, expected, "{e:?}");
            if e.verb == "watch" {
                assert!(e.request_uri.contains("watch=true"), "{}", e.request_uri);
            }
            assert_eq!(
                clusteraudit_core::policy::RequestAttributes::of_event(&e).path,
                path
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_micros_at_the_wall_clock() {
        let before = SystemTime::now();
        let events = sample(17, 2_000);
        let after = SystemTime::now();
        for e in &events {
            let stage = e.stage_timestamp.as_deref().unwrap();
            let received = e.request_received_timestamp.as_deref().unwrap();
            for t in [stage, received] {
                assert_eq!(t.len(), "2026-11-26T15:04:05.123456Z".len(), "{t}");
                assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
            }
            let stage = humantime::parse_rfc3339(stage).unwrap();
            let received = humantime::parse_rfc3339(received).unwrap();
            assert!(received <= stage);
            assert!(
                stage + Duration::from_micros(1) >= before
                    && stage <= after + Duration::from_micros(1)
            );
            if e.verb == "watch" && e.stage == Stage::ResponseComplete {
                assert!(stage.duration_since(received).unwrap() >= Duration::from_secs(300));
            }
        }
    }

    #[test]
    fn decisions_match_response_codes() {
        for e in sample(19, 5_000) {
            let annotations = e.annotations.as_ref().unwrap();
            let decision = annotations["authorization.k8s.io/decision"]
                .as_str()
                .unwrap();
            assert!(annotations.contains_key("authorization.k8s.io/reason"));
            let code = e.response_status.as_ref().and_then(|s| s.code).unwrap();
            assert_eq!(decision == "forbid", code == 403, "{e:?}");
            if code >= 400 {
                let status = e.response_status.as_ref().unwrap();
                assert_eq!(status.status.as_deref(), Some("Failure"));
                assert!(status.message.as_deref().is_some_and(|m| !m.is_empty()));
            }
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::from_samples(&mut samples);
        assert_eq!(
            p,
            Percentiles {
                p50: 50.0,
                p90: 90.0,
                p99: 99.0,
                max: 100.0
            }
        );
        let p = Percentiles::from_samples(&mut [7.5]);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (7.5, 7.5, 7.5, 7.5));
        let p = Percentiles::from_samples(&mut [3.0, 1.0, 2.0]);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (2.0, 3.0, 3.0, 3.0));
        let p = Percentiles::from_samples(&mut []);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (0.0, 0.0, 0.0, 0.0));
        let mut thousand: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = Percentiles::from_samples(&mut thousand);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (500.0, 900.0, 990.0, 1000.0));
        // 10 samples: p90 is the 9th, p99 the 10th.
        let mut ten: Vec<f64> = (1..=10).map(f64::from).collect();
        let p = Percentiles::from_samples(&mut ten);
        assert_eq!((p.p50, p.p90, p.p99, p.max), (5.0, 9.0, 10.0, 10.0));
    }

    #[test]
    fn arguments_parse_with_their_defaults() {
        use clap::{CommandFactory, Parser};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadgenArgs,
        }
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["loadgen", "--target", "https://127.0.0.1:8443/v1/webhook"])
            .unwrap();
        let a = cli.args;
        assert_eq!(
            (a.events, a.batch, a.concurrency, a.rate, a.seed),
            (100_000, 400, 4, 0, 1)
        );
        assert!(a.duration.is_none() && !a.json && !a.insecure_skip_verify);
        let cli = Cli::try_parse_from([
            "loadgen",
            "--target=http://collector:8080/v1/webhook",
            "--events=5000",
            "--duration=5m",
            "--rate=2000",
            "--acked-ids-file=/tmp/acked",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.args.events, 5_000);
        assert_eq!(*cli.args.duration.unwrap(), Duration::from_secs(300));
        assert_eq!(cli.args.acked_ids_file, Some(PathBuf::from("/tmp/acked")));
        assert!(cli.args.json);
    }

    fn args(target: String) -> LoadgenArgs {
        LoadgenArgs {
            target,
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
