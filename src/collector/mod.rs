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
pub mod wal;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::Args;

use crate::store::Store;

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
    Store(#[from] crate::store::StoreError),
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
    Kube(String),
}

/// What the request handlers share.
pub struct Shared {
    pub store: Arc<Store>,
    pub wal: wal::Wal,
    pub metrics: metrics::Metrics,
    pub auth: auth::Auth,
    pub max_body_bytes: usize,
    pub ready: std::sync::atomic::AtomicBool,
}

pub async fn run(args: CollectorArgs) -> Result<(), CollectorError> {
    crate::tls::install_crypto_provider();
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

/// Opens the store and the log, replays what the store lacks, and starts the indexer.
pub fn start(args: &CollectorArgs, auth: auth::Auth) -> Result<Arc<Shared>, CollectorError> {
    let store = Arc::new(Store::open(&args.data_dir.join("store"))?);
    let (wal, replayed, durable) =
        wal::Wal::open(&args.data_dir.join("wal"), args.queue_batches, 16)?;
    let started = Instant::now();
    let mut last = 0;
    let mut events = 0;
    for record in &replayed {
        match batch::decode_record(&record.payload) {
            Ok((topic, items)) => events += store.apply(record.end, topic, &items)?,
            Err(err) => {
                tracing::error!(error = %err, end = record.end, "skipping a damaged log record")
            }
        }
        last = record.end;
    }
    if last > 0 {
        store.commit(last)?;
        wal.release_before(last);
    }
    if !replayed.is_empty() {
        tracing::info!(records = replayed.len(), events, elapsed = ?started.elapsed(), "replayed the write-ahead log");
    }
    let metrics = metrics::Metrics::new();
    let shared = Arc::new(Shared {
        store: store.clone(),
        wal: wal.clone(),
        metrics: metrics.clone(),
        auth,
        max_body_bytes: args.max_body_bytes,
        ready: std::sync::atomic::AtomicBool::new(true),
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
        .spawn(move || index_forever(store, wal, durable, metrics))
        .map_err(|source| CollectorError::Read {
            what: "starting the indexer for",
            path: args.data_dir.clone(),
            source,
        })?;
    Ok(shared)
}

const COMMIT_EVERY: Duration = Duration::from_secs(1);

fn index_forever(
    store: Arc<Store>,
    wal: wal::Wal,
    mut durable: tokio::sync::mpsc::Receiver<wal::Durable>,
    metrics: metrics::Metrics,
) {
    let mut last_commit = Instant::now();
    let mut position = 0;
    loop {
        let next = match durable.try_recv() {
            Ok(record) => Some(record),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                if store.has_pending() && last_commit.elapsed() >= COMMIT_EVERY {
                    None
                } else {
                    // Wait for work, but not past the next commit.
                    let wait = COMMIT_EVERY
                        .saturating_sub(last_commit.elapsed())
                        .max(Duration::from_millis(10));
                    match blocking_recv_timeout(&mut durable, wait) {
                        Ok(record) => record,
                        Err(()) => break,
                    }
                }
            }
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
        };
        if let Some(record) = next {
            match batch::decode_record(&record.payload) {
                Ok((topic, items)) => match store.apply(record.end, topic, &items) {
                    Ok(added) => {
                        metrics.events_stored.inc_by(added as u64);
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "indexing a batch failed; it stays in the log")
                    }
                },
                Err(err) => tracing::error!(error = %err, "skipping a damaged log record"),
            }
            position = record.end;
        }
        if store.has_pending() && last_commit.elapsed() >= COMMIT_EVERY {
            match store.commit(position) {
                Ok(()) => wal.release_before(position),
                Err(err) => {
                    tracing::error!(error = %err, "committing the indexes failed; retrying")
                }
            }
            last_commit = Instant::now();
        }
        metrics.queue_depth.set(wal.queued() as i64);
    }
    if let Err(err) = store.commit(position) {
        tracing::error!(error = %err, "the last commit failed; the log will replay it");
    }
}

/// Ok(None) on timeout, Err(()) when the sender is gone.
fn blocking_recv_timeout<T>(
    receiver: &mut tokio::sync::mpsc::Receiver<T>,
    timeout: Duration,
) -> Result<Option<T>, ()> {
    let give_up = Instant::now() + timeout;
    loop {
        match receiver.try_recv() {
            Ok(value) => return Ok(Some(value)),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Err(()),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                if Instant::now() >= give_up {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}
