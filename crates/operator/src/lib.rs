//! `clusteraudit operator`: reconciles the `ClusterAudit`. The leader (a Lease elects one replica)
//! validates the spec, renders the policy, ensures the sink through the collector's topic API,
//! cuts content-addressed revisions, releases them to the nodes' agents through the restart
//! guard, and reports it all in status, conditions and Events.

pub mod alerts;
pub mod conditions;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod sink;
pub mod token;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Secret};
use kube::{
    Api,
    runtime::{
        Controller,
        events::{Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};

use clusteraudit_core::{
    api::{ClusterAudit, SINGLETON_NAME},
    rollout::objects,
};

#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// The namespace of the operator's own objects (revision Secrets, Leases, the webhook token).
    #[arg(long, env = "POD_NAMESPACE", default_value = "clusteraudit")]
    pub namespace: String,
    /// A kubeconfig; without it, the in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The collector's API (topic admin calls), e.g. https://clusteraudit-collector.clusteraudit.svc:8443.
    #[arg(long)]
    pub collector_url: String,
    /// The CA that signed the collector's serving certificate (PEM).
    #[arg(long)]
    pub collector_ca_file: PathBuf,
    /// A bearer token file for the collector's admin API (default: none).
    #[arg(long)]
    pub collector_token_file: Option<PathBuf>,
    /// Where the kube-apiservers post events: an address that needs no cluster DNS, such as the
    /// collector Service's ClusterIP (default: from --collector-service, else the collector URL
    /// + /v1/webhook).
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// The collector's Service in the operator's namespace: the webhook goes to its ClusterIP,
    /// which the kube-apiserver reaches without cluster DNS.
    #[arg(long, conflicts_with = "webhook_url")]
    pub collector_service: Option<String>,
    /// /metrics, /livez and /readyz.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// This replica's name in the leader election.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a leader's Lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_seconds: u64,
    /// How long a change to the webhook token Secret may take to reach the collectors (the
    /// kubelet's sync period plus its cache's): a rotated token is used only after this long,
    /// and only once the collector accepts it.
    #[arg(long, default_value_t = 120)]
    pub webhook_token_propagation_seconds: u64,
    /// Honour test-only annotations. Only builds with the `test-hooks` feature (the tests') have
    /// this flag; release builds cannot be talked into it.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true)]
    pub enable_test_hooks: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] clusteraudit_io::kubeclient::KubeClientError),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the collector CA {0} holds no usable certificate")]
    BadCa(PathBuf),
    #[error("serving metrics on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("lost the leader Lease; exiting so that a fresh start follows the new leader")]
    LostLeadership,
}

pub async fn run(args: OperatorArgs) -> Result<(), OperatorError> {
    let identity = args.identity.clone().unwrap_or_else(|| {
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes).expect("the OS has randomness");
        format!("operator-{}", hex::encode(bytes))
    });
    let client = clusteraudit_io::kubeclient::client_as(
        args.kubeconfig.as_deref(),
        &format!(
            "clusteraudit-operator/{} ({identity})",
            env!("CARGO_PKG_VERSION")
        ),
    )
    .await
    .map_err(OperatorError::Client)?;
    let ca_pem =
        std::fs::read_to_string(&args.collector_ca_file).map_err(|source| OperatorError::Read {
            path: args.collector_ca_file.clone(),
            source,
        })?;
    let certificate = reqwest::Certificate::from_pem(ca_pem.as_bytes())
        .map_err(|_| OperatorError::BadCa(args.collector_ca_file.clone()))?;
    let http = reqwest::Client::builder()
        .add_root_certificate(certificate)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|_| OperatorError::BadCa(args.collector_ca_file.clone()))?;
    let collector_url = args.collector_url.trim_end_matches('/').to_string();
    let metrics = Arc::new(metrics::Metrics::new());
    serve_health(args.listen, metrics.clone()).await?;

    // The API may be away for a while at start (the kube-apiserver this replica talks to
    // restarting for a rollout, say): keep trying rather than exit.
    let mut delay = Duration::from_millis(500);
    let election = loop {
        match kube_lease_manager::LeaseManagerBuilder::new(client.clone(), objects::LEADER_LEASE)
            .with_namespace(&args.namespace)
            .with_identity(&identity)
            .with_duration(args.lease_seconds)
            .with_grace((args.lease_seconds / 3).max(1))
            .build()
            .await
        {
            Ok(election) => break election,
            Err(err) => {
                tracing::warn!(%err, "the leader Lease cannot be reached yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
        }
    };
    let (mut leader, election_task) = election.watch().await;
    tracing::info!(%identity, "waiting for the leader Lease");
    while !*leader.borrow_and_update() {
        if leader.changed().await.is_err() {
            return Err(OperatorError::LostLeadership);
        }
    }
    tracing::info!(%identity, "leading");
    metrics.leader.set(1);

    let context = Arc::new(reconcile::Context {
        token_propagation: Duration::from_secs(args.webhook_token_propagation_seconds),
        client: client.clone(),
        namespace: args.namespace.clone(),
        collector: reconcile::CollectorAccess {
            http,
            webhook: match (&args.webhook_url, &args.collector_service) {
                (Some(url), _) => reconcile::WebhookAddress::Url(url.clone()),
                (None, Some(service)) => reconcile::WebhookAddress::Service(service.clone()),
                (None, None) => {
                    reconcile::WebhookAddress::Url(format!("{collector_url}/v1/webhook"))
                }
            },
            url: collector_url,
            ca_pem,
            token_file: args.collector_token_file.clone(),
        },
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "clusteraudit-operator".into(),
                instance: Some(identity.clone()),
            },
        ),
        metrics: metrics.clone(),
        last_choice: Default::default(),
        sink_memory: Default::default(),
        #[cfg(feature = "test-hooks")]
        test_hooks: args.enable_test_hooks,
    });
    tokio::spawn(alerts::run(context.clone()));
    let singleton = || Some(ObjectRef::<ClusterAudit>::new(SINGLETON_NAME));
    let controller = Controller::new(
        Api::<ClusterAudit>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<Secret>::namespaced(client.clone(), &args.namespace),
        watcher::Config::default().labels(objects::REVISION_LABEL),
        move |_| singleton(),
    )
    .watches(
        Api::<Lease>::namespaced(client.clone(), &args.namespace),
        watcher::Config::default().labels(objects::NODE_REPORT_LABEL),
        move |_| singleton(),
    )
    // Every rollout restarts the kube-apiserver these watches go through.
    .trigger_backoff(clusteraudit_io::watch::WatchBackoff::default())
    .shutdown_on_signal()
    .run(reconcile::reconcile, reconcile::error_policy, context)
    .for_each(|result| async move {
        if let Err(err) = result {
            tracing::debug!(%err, "controller");
        }
    });
    let outcome = tokio::select! {
        _ = controller => Ok(()),
        () = async {
            loop {
                if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                    return;
                }
            }
        } => Err(OperatorError::LostLeadership),
    };
    metrics.leader.set(0);
    // Closing the channel makes the election task release the Lease, so a standby takes over now
    // rather than when it expires.
    drop(leader);
    let _ = tokio::time::timeout(Duration::from_secs(5), election_task).await;
    outcome
}

async fn serve_health(
    address: SocketAddr,
    metrics: Arc<metrics::Metrics>,
) -> Result<(), OperatorError> {
    use axum::{Router, routing::get};
    let router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.encode() }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| OperatorError::Listen { address, source })?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(%err, "the metrics server stopped");
        }
    });
    Ok(())
}
