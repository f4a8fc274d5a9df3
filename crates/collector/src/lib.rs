//! `clusteraudit collector`: the audit webhook the kube-apiserver posts to, the embedded store
//! behind it, and the read and admin API in front of the store.
//!
//! Ingest: decode and check the EventList, append it to the write-ahead log, answer 200 once it
//! is synced. A bounded queue in front of the log turns overload into `429 Retry-After` at once,
//! so the kube-apiserver is never kept waiting by search load or a slow disk. An indexer thread
//! takes durable records into the store and commits about once a second; a restart replays the
//! log past what each window has committed.

pub mod auth;
pub mod batch;
pub mod http;
pub mod metrics;
pub mod ui;
pub mod wal;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;

use clusteraudit_store::Store;

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
    /// File holding the bearer token the webhook's callers present.
    #[arg(long)]
    pub webhook_token_file: Option<PathBuf>,
    /// CA (PEM) whose client certificates may post to the webhook.
    #[arg(long)]
    pub webhook_client_ca: Option<PathBuf>,
    /// Kubeconfig for TokenReview and SubjectAccessReview (default: in-cluster or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Largest request body accepted.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Batches waiting for the disk before new ones are told to come back later (429).
    #[arg(long, default_value_t = 64)]
    pub queue_batches: usize,
    /// Plain HTTP with authentication off, for local development; loopback addresses only.
    #[arg(long)]
    pub insecure_dev: bool,
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
    #[error("the Kubernetes client for authorization: {0}")]
    Kube(#[source] clusteraudit_io::kubeclient::KubeClientError),
}

/// What the request handlers share.
pub struct Shared {
    pub store: Arc<Store>,
    pub wal: wal::Wal,
    pub metrics: metrics::Metrics,
    pub auth: auth::Auth,
    pub max_body_bytes: usize,
    /// The log position the indexer has applied; how far it trails the log is the backlog.
    pub applied: Arc<std::sync::atomic::AtomicU64>,
}

pub async fn run(args: CollectorArgs) -> Result<(), CollectorError> {
    clusteraudit_io::tls::install_crypto_provider();
    if args.insecure_dev && !args.listen.ip().is_loopback() {
        return Err(CollectorError::InsecureOnNonLoopback(args.listen));
    }
    if !args.insecure_dev && args.webhook_token_file.is_none() && args.webhook_client_ca.is_none() {
        return Err(CollectorError::NoWebhookCredentials);
    }
    let auth = auth::Auth::from_args(&args).await?;
    let shared = start(&args, auth)?;
    let router = http::router(shared.clone());
    if args.insecure_dev {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| CollectorError::Listen {
                addr: args.listen,
                source,
            })?;
        tracing::warn!(addr = %args.listen, "serving plain HTTP without authentication (--insecure-dev)");
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|source| CollectorError::Listen {
                addr: args.listen,
                source,
            })?;
    } else {
        http::serve_tls(&args, router).await?;
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// How far indexing may fall behind the log before the webhook sheds load (429). The backlog is
/// on disk, not in memory; the bound keeps a replay after a crash short.
pub const MAX_INDEX_LAG_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// Opens the store and the log, replays what the store lacks, and starts the indexer.
pub fn start(args: &CollectorArgs, auth: auth::Auth) -> Result<Arc<Shared>, CollectorError> {
    let store = Arc::new(Store::open(&args.data_dir.join("store"))?);
    let wal = wal::Wal::open(&args.data_dir.join("wal"), args.queue_batches)?;
    let mut indexer = Indexer {
        store: store.clone(),
        wal: wal.clone(),
        reader: wal.reader()?,
        applied: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        metrics: metrics::Metrics::new(),
        last_commit: Instant::now(),
    };
    // Replay before serving, so that search never misses what was acknowledged before a crash.
    let started = Instant::now();
    let replayed = indexer.catch_up()?;
    indexer.commit();
    if replayed > 0 {
        tracing::info!(events = replayed, elapsed = ?started.elapsed(), "replayed the write-ahead log");
    }
    let shared = Arc::new(Shared {
        store: store.clone(),
        wal: wal.clone(),
        metrics: indexer.metrics.clone(),
        auth,
        max_body_bytes: args.max_body_bytes,
        applied: indexer.applied.clone(),
    });
    let retention_store = store.clone();
    std::thread::Builder::new()
        .name("retention".into())
        .spawn(move || {
            loop {
                match retention_store.enforce_retention(http::now_micros()) {
                    Ok(deleted) if !deleted.is_empty() => {
                        tracing::info!(windows = deleted.len(), "deleted days past their retention")
                    }
                    Ok(_) => {}
                    Err(err) => tracing::error!(error = %err, "enforcing retention failed"),
                }
                std::thread::sleep(Duration::from_secs(600));
            }
        })
        .map_err(|source| CollectorError::Read {
            what: "starting the retention task for",
            path: args.data_dir.clone(),
            source,
        })?;
    std::thread::Builder::new()
        .name("indexer".into())
        .spawn(move || indexer.run())
        .map_err(|source| CollectorError::Read {
            what: "starting the indexer for",
            path: args.data_dir.clone(),
            source,
        })?;
    Ok(shared)
}

const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// Follows the log into the store.
struct Indexer {
    store: Arc<Store>,
    wal: wal::Wal,
    reader: wal::WalReader,
    /// The log position applied to the store (committed or not).
    applied: Arc<std::sync::atomic::AtomicU64>,
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
            self.applied.store(end, std::sync::atomic::Ordering::SeqCst);
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
