//! `clusteraudit collector`: the audit webhook the kube-apiserver posts to, the store behind it
//! (embedded, or OpenSearch shared by several replicas), and the read and admin API in front of
//! the store.
//!
//! Ingest: decode and check the EventList, append it to the write-ahead log, answer 200 once it
//! is synced. A bounded queue in front of the log turns overload into `429 Retry-After` at once,
//! so the kube-apiserver is never kept waiting by search load or a slow disk. Behind the log, a
//! drain takes durable records into the store: the embedded indexer commits about once a second
//! and a restart replays the log past what each window has committed; the OpenSearch shipper
//! sends bulk requests and releases the log once OpenSearch acknowledged.

pub mod alerts;
pub mod auth;
pub mod batch;
pub mod handover;
pub mod http;
mod indexer;
pub mod metrics;
pub mod notify;
pub mod policy;
mod shipper;
pub mod ui;
mod usage;
pub mod wal;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::{Args, ValueEnum};

use clusteraudit_store::AuditStore;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// On the collector's own volume: one replica.
    Embedded,
    /// In OpenSearch (or Elasticsearch 8), shared by every replica.
    Opensearch,
}

#[derive(Args, Debug, Clone)]
pub struct CollectorArgs {
    /// Where the write-ahead log, the catalog and the indexes live.
    #[arg(long, default_value = "/var/lib/clusteraudit")]
    pub data_dir: PathBuf,
    /// Address to serve the webhook and the API on.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serving certificate and key (PEM).
    #[arg(long, required_unless_present = "insecure_dev")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, required_unless_present = "insecure_dev")]
    pub tls_key: Option<PathBuf>,
    /// File holding a bearer token the webhook's callers may present; repeatable, any of them is
    /// accepted (during a token rotation: the token Secret's `token`, `previous` and `next`). A
    /// missing or empty file accepts nothing.
    #[arg(long)]
    pub webhook_token_file: Vec<PathBuf>,
    /// CA (PEM) whose client certificates may post to the webhook.
    #[arg(long)]
    pub webhook_client_ca: Option<PathBuf>,
    /// Kubeconfig for TokenReview and SubjectAccessReview (default: in-cluster or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The audience TokenReviews ask for: readers' tokens must be for it (`kubectl create token
    /// SA --audience clusteraudit`), so that a token handed to the collector is no good against
    /// the kube-apiserver. Empty: the kube-apiserver's own audiences, so any token kubectl uses.
    #[arg(
        long,
        env = "CLUSTERAUDIT_TOKEN_AUDIENCE",
        default_value = "clusteraudit"
    )]
    pub token_audience: String,
    /// Largest request body accepted.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Batches waiting for the disk before new ones are told to come back later (429).
    #[arg(long, default_value_t = 64)]
    pub queue_batches: usize,
    /// How far the store may fall behind the log before the webhook sheds load (429). The backlog
    /// waits on disk, not in memory.
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_backlog_bytes: u64,
    /// The size past which the write-ahead log starts a new segment file. The log is released
    /// (deleted) segment by segment once the store holds what is in it.
    #[arg(long, default_value_t = wal::SEGMENT_BYTES, value_parser = clap::value_parser!(u64).range(1024 * 1024..))]
    pub wal_segment_bytes: u64,
    /// Batches are refused (503) while the data directory's disk would have less than this free
    /// after them, so that the store always has room to commit what the log holds; the commit
    /// releases the log, which frees its space again.
    #[arg(long, default_value_t = 256 * 1024 * 1024)]
    pub min_free_bytes: u64,
    /// How often days past their topic's retention are looked for and deleted.
    #[arg(long, default_value = "10m")]
    pub retention_interval: humantime::Duration,
    /// Where events are kept.
    #[arg(long, value_enum, default_value_t = StoreKind::Embedded)]
    pub store: StoreKind,
    #[command(flatten)]
    pub opensearch: clusteraudit_opensearch_store::OpenSearchArgs,
    /// Plain HTTP with authentication off, for local development; loopback addresses only.
    #[arg(long)]
    pub insecure_dev: bool,
    /// What connections and request bodies may cost (boxed: the arguments of every subcommand
    /// share one enum).
    #[command(flatten)]
    pub serve: Box<ServeArgs>,
    /// Where alerts go, and what evaluating them may cost.
    #[command(flatten)]
    pub alerts: Box<alerts::AlertArgs>,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Connections open at once; past it, new ones wait in the listen backlog.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// How long a connection may take to present a request's headers, counted from when it is
    /// ready for one: this also closes keep-alive connections idle for longer, and bounds the TLS
    /// handshake.
    #[arg(long, default_value = "10s")]
    pub header_read_timeout: humantime::Duration,
    /// How long a request may take to send its body; a body still arriving then is cut off (408).
    #[arg(long, default_value = "30s")]
    pub body_read_timeout: humantime::Duration,
    /// A connection that moves no byte either way for this long is closed (a client that stops
    /// reading its answer, say).
    #[arg(long, default_value = "60s")]
    pub idle_timeout: humantime::Duration,
    /// Requests whose bodies are being read or handled at once, over every route that takes a
    /// body (the webhook and the admin API); past it, 429.
    #[arg(long, default_value_t = 64)]
    pub max_in_flight_requests: usize,
    /// Bytes of request bodies held at once, over every route that takes a body; past it, 429.
    /// A body without a Content-Length counts as --max-body-bytes.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    pub max_in_flight_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error(
        "--insecure-dev serves without TLS or authentication, so it only listens on loopback; {0} is not a loopback address"
    )]
    InsecureOnNonLoopback(SocketAddr),
    #[error("without --insecure-dev the webhook needs --webhook-token-file or --webhook-client-ca")]
    NoWebhookCredentials,
    #[error("opening the write-ahead log: {0}")]
    Wal(#[from] wal::WalError),
    #[error("opening the store: {0}")]
    Store(#[from] clusteraudit_store::StoreError),
    #[error("{what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("OpenSearch: {0}")]
    OpenSearch(#[from] clusteraudit_opensearch_store::OpenSearchError),
    #[error("alert receivers: {0}")]
    Notify(#[from] notify::NotifyError),
    #[error("the Kubernetes client for authorization: {0}")]
    Kube(#[source] clusteraudit_io::kubeclient::KubeClientError),
}

/// What the request handlers share.
pub struct Shared {
    pub store: Arc<dyn AuditStore>,
    pub wal: wal::Wal,
    pub metrics: metrics::Metrics,
    pub auth: auth::Auth,
    pub max_body_bytes: usize,
    pub max_backlog_bytes: u64,
    pub drain: Arc<DrainProgress>,
    /// Permits for searches and stats running at once.
    pub queries: tokio::sync::Semaphore,
    /// What connections and request bodies may cost.
    pub limits: http::ServeLimits,
    /// Each topic's policy, applied to its events before they are logged, and its retention, for
    /// refusing events older than it.
    pub enforcement: Arc<policy::Enforcement>,
    /// The alert rules, evaluated on acknowledged events, and which nodes batches come from.
    pub alerting: Arc<alerts::Alerting>,
}

/// How far the store has taken in the log, shared by the drain (which moves it) and the webhook
/// and health checks (which read it).
#[derive(Debug, Default)]
pub struct DrainProgress {
    /// The log position up to which every record is in the store (or applied to it, for the
    /// embedded store, whose commit follows within a second).
    pub position: AtomicU64,
    /// The time (micros) of the oldest event read from the log and not yet in the store; 0 when
    /// there is none.
    pub oldest_pending_micros: AtomicI64,
    /// The embedded store failed to take the last batches (a full or broken disk) and they are
    /// being retried: the webhook answers 503 meanwhile rather than grow a log nobody drains.
    pub store_unavailable: AtomicBool,
}

impl Shared {
    /// Bytes of the log the store has not taken in yet.
    pub fn backlog_bytes(&self) -> u64 {
        self.wal
            .durable_end()
            .saturating_sub(self.drain.position.load(Ordering::SeqCst))
    }

    /// How old the oldest event waiting for the store is.
    pub fn oldest_pending_age(&self) -> Duration {
        let oldest = self.drain.oldest_pending_micros.load(Ordering::SeqCst);
        if oldest == 0 {
            return Duration::ZERO;
        }
        let age = http::now_micros().saturating_sub(oldest).max(0);
        Duration::from_micros(age as u64)
    }
}

pub async fn run(args: CollectorArgs) -> Result<(), CollectorError> {
    clusteraudit_io::tls::install_crypto_provider();
    if args.insecure_dev && !args.listen.ip().is_loopback() {
        return Err(CollectorError::InsecureOnNonLoopback(args.listen));
    }
    if !args.insecure_dev && args.webhook_token_file.is_empty() && args.webhook_client_ca.is_none()
    {
        return Err(CollectorError::NoWebhookCredentials);
    }
    let auth = auth::Auth::from_args(&args).await?;
    let shared = start(&args, auth).await?;
    let router = http::router(shared.clone());
    let tls = if args.insecure_dev {
        tracing::warn!(addr = %args.listen, "serving plain HTTP without authentication (--insecure-dev)");
        None
    } else {
        Some(http::tls_acceptor(&args)?)
    };
    http::serve(&args, tls, router, shared.metrics.clone()).await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// This replica's name among those sharing a store: the host's (a pod's) name with an id kept
/// in the data directory, so that two replicas on one host differ and a restarted one is the
/// same replica.
fn replica_name(data_dir: &std::path::Path) -> String {
    use std::hash::BuildHasher;
    let file = data_dir.join("replica-id");
    let id = match std::fs::read_to_string(&file) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let id = format!(
                "{:08x}",
                std::collections::hash_map::RandomState::new()
                    .hash_one((std::time::SystemTime::now(), std::process::id()))
                    as u32
            );
            if let Err(err) =
                clusteraudit_io::fsutil::write_atomically(data_dir, &file, id.as_bytes())
            {
                tracing::warn!(error = %err, "keeping this replica's id failed; it has a new one at its next start");
            }
            id
        }
    };
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "collector".into());
    format!("{host}-{id}")
}

/// Opens the store and the log, and starts the drain from one to the other and the retention task.
pub async fn start(args: &CollectorArgs, auth: auth::Auth) -> Result<Arc<Shared>, CollectorError> {
    let metrics = metrics::Metrics::new();
    let wal = wal::Wal::open(
        &args.data_dir.join("wal"),
        wal::WalOptions {
            queue: args.queue_batches,
            segment_bytes: args.wal_segment_bytes,
            quarantine: args.data_dir.join("quarantine"),
            min_free_bytes: args.min_free_bytes,
            handover: Some(Arc::new(handover::Handover::new(handover::BUDGET_BYTES))),
        },
        &metrics,
    )?;
    usage::start(args.data_dir.clone(), &metrics);
    let drain = Arc::new(DrainProgress::default());
    let alerting = alerts::Alerting::new(&args.alerts, &metrics, Some(&args.data_dir))?;
    let store: Arc<dyn AuditStore> = match args.store {
        StoreKind::Embedded => indexer::start(&args.data_dir, &wal, &metrics, &drain)?,
        StoreKind::Opensearch => {
            let store = Arc::new(clusteraudit_opensearch_store::OpenSearchStore::connect(
                &args.opensearch,
                &args.data_dir,
            )?);
            // Serving starts with the template and catalog in place when OpenSearch answers;
            // when it does not, the log takes events for the last route this replica knew, and
            // the shipper keeps preparing.
            if let Err(err) = store.prepare().await {
                tracing::warn!(error = %err, "OpenSearch is not ready yet; the log keeps events meanwhile");
            }
            store.follow_route();
            shipper::start(store.clone(), &args.data_dir, &wal, &metrics, &drain)?;
            alerting.share(store.clone(), replica_name(&args.data_dir));
            store
        }
    };
    // The policies are known before the first batch is taken: the embedded catalog is in memory,
    // OpenSearch's is one read away (while OpenSearch is down events are stored unreduced until
    // it answers; nothing is lost, more is kept than asked).
    let enforcement = Arc::new(policy::Enforcement::default());
    enforcement.refresh(&store).await;
    enforcement.follow(store.clone());
    alerting.start(store.clone());
    let retention = store.clone();
    let every = Duration::from(args.retention_interval).max(Duration::from_secs(1));
    tokio::spawn(async move {
        loop {
            match retention.enforce_retention(http::now_micros()).await {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(deleted = ?deleted, "deleted days past their retention")
                }
                Ok(_) => {}
                Err(err) => tracing::error!(error = %err, "enforcing retention failed"),
            }
            tokio::time::sleep(every).await;
        }
    });
    Ok(Arc::new(Shared {
        store,
        wal,
        metrics,
        auth,
        max_body_bytes: args.max_body_bytes,
        max_backlog_bytes: args.max_backlog_bytes,
        drain,
        queries: tokio::sync::Semaphore::new(http::MAX_CONCURRENT_QUERIES),
        limits: http::ServeLimits::from_args(args),
        enforcement,
        alerting,
    }))
}
