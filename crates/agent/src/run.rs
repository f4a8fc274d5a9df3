//! The agent's loop on one control-plane node: follow the rollout target the operator released
//! (`status.revision.latest`), and move this node to it when holding the rollout Lease, one node
//! at a time; report where the node stands in its own Lease.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use kube_lease_manager::LeaseManagerBuilder;

use crate::delivery;
use crate::node::{Node, NodeError, NodePaths, NodeState};
use crate::step::{self, Pass, Refused};
use crate::trust;
use clusteraudit_core::{
    api::{ClusterAudit, SINGLETON_NAME},
    rollout::{
        objects::{
            self, NODE_REPORT_LABEL, NodeReport, ROLLOUT_LEASE, node_report_from_lease,
            node_report_lease,
        },
        revision::{POLICY_FILE, Revision, WEBHOOK_CONFIG_FILE},
    },
};

#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// This control-plane node's name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The operator's namespace (revision Secrets, Leases).
    #[arg(long, env = "POD_NAMESPACE", default_value = "clusteraudit")]
    pub namespace: String,
    /// A kubeconfig; without it, the in-cluster service account (or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kube-apiserver's static-pod manifest.
    #[arg(long, default_value = "/etc/kubernetes/manifests/kube-apiserver.yaml")]
    pub manifest: PathBuf,
    /// The agent's directory on the node: revisions, saved manifests, state. The revisions'
    /// files are mounted into the kube-apiserver from here.
    #[arg(long, default_value = "/etc/kubernetes/clusteraudit")]
    pub state_dir: PathBuf,
    /// This node's kube-apiserver readiness endpoint.
    #[arg(long, default_value = "https://127.0.0.1:6443/readyz")]
    pub readyz_url: String,
    /// How often the target is looked at without a change being seen.
    #[arg(long, default_value_t = 30)]
    pub resync_seconds: u64,
    /// The webhook server a revision may send the audit stream to, exactly as its kubeconfig
    /// must name it (repeat for more than one). A host name also allows the same URL with each
    /// address it resolves to on this node, looked up on every pass (the operator names the
    /// collector Service by its ClusterIP). Without it, every revision is refused.
    #[arg(long = "webhook-server")]
    pub webhook_servers: Vec<String>,
    /// The CA certificates (PEM) a revision's webhook kubeconfig must trust: these and no
    /// others. Read on every pass. Without it, every revision is refused.
    #[arg(long)]
    pub webhook_ca_file: Option<PathBuf>,
    /// A token the collector accepts for `get nodes.clusteraudit.io` (a projected
    /// service-account token for its audience), read at each question: after a restart the
    /// agent asks the collector whether this node's batches arrive.
    #[arg(
        long,
        default_value = "/var/run/secrets/clusteraudit/collector-token/token"
    )]
    pub collector_token_file: PathBuf,
    /// A revision counts as up on this node only once the collector has received a batch from
    /// it sent after the restart, within the health timeout; otherwise the node falls back.
    /// `--delivery-gate=false` trusts a ready kube-apiserver alone (not recommended: a node
    /// whose events never arrive then counts as done).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub delivery_gate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] clusteraudit_io::kubeclient::KubeClientError),
    #[error("the Kubernetes API failed {what}: {source}")]
    Kube {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("the rollout Lease: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("revision {0} has no Secret")]
    RevisionMissing(String),
    #[error(transparent)]
    Revision(#[from] objects::ObjectError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("the webhook kubeconfig for this node: {0}")]
    PerNode(#[from] delivery::PerNodeError),
    #[error("the collector gate: {0}")]
    Gate(#[from] delivery::GateError),
    #[error("reading the pinned webhook CA {path}: {source}")]
    WebhookCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn kube(what: &'static str) -> impl FnOnce(kube::Error) -> AgentError {
    move |source| AgentError::Kube { what, source }
}

struct Agent {
    args: AgentArgs,
    client: kube::Client,
    node: Node,
    /// What the node's Lease says now, so it is written only when it changes.
    last_report: std::sync::Mutex<Option<NodeReport>>,
    /// The revision this agent refuses to write to its host, and why: checked again on every
    /// pass, so fixing the pins or the revision clears it.
    refused: std::sync::Mutex<Option<Refused>>,
}

pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    // The node's name goes into the webhook URL: a name that cannot is an error at start.
    delivery::server_for_node("https://collector/v1/webhook", &args.node_name)?;
    if !args.delivery_gate {
        tracing::warn!(
            "the delivery gate is off: a node whose kube-apiserver is ready counts as done even if its events never reach the collector"
        );
    }
    let client = clusteraudit_io::kubeclient::client(args.kubeconfig.as_deref())
        .await
        .map_err(AgentError::Client)?;
    let node = Node::new(NodePaths {
        manifest: args.manifest.clone(),
        state_dir: args.state_dir.clone(),
        readyz_url: args.readyz_url.clone(),
    })?;
    let resync = Duration::from_secs(args.resync_seconds.max(1));
    let agent = Agent {
        args,
        client: client.clone(),
        node,
        last_report: std::sync::Mutex::new(None),
        refused: std::sync::Mutex::new(None),
    };
    let audits: Api<ClusterAudit> = Api::all(client);
    let mut changes = watcher(
        audits,
        watcher::Config::default().fields(&format!("metadata.name={SINGLETON_NAME}")),
    )
    // The agent restarts the kube-apiserver it watches through.
    .backoff(clusteraudit_io::watch::WatchBackoff::default())
    .boxed();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        if let Err(err) = agent.step().await {
            tracing::warn!(%err, "this pass did not finish; trying again");
        }
        tokio::select! {
            _ = changes.next() => {}
            _ = tokio::time::sleep(resync) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = async {
                match terminate.as_mut() {
                    Some(signal) => { signal.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => return Ok(()),
        }
    }
}

impl Agent {
    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.args.namespace)
    }

    async fn step(&self) -> Result<(), AgentError> {
        let state = self.node.state()?;
        self.report(&state).await?;
        let audit = Api::<ClusterAudit>::all(self.client.clone())
            .get_opt(SINGLETON_NAME)
            .await
            .map_err(kube("reading the ClusterAudit"))?;
        let health_timeout = step::health_timeout(audit.as_ref());
        let target = step::target(audit.as_ref());
        let released_hash = step::released_hash(audit.as_ref());
        let pass = step::pass(&state, &target, self.node.audited());
        if !matches!(pass, Pass::Resume(_) | Pass::Apply(_)) {
            self.refuse(None);
            self.report(&state).await?;
        }
        match pass {
            Pass::Nothing => Ok(()),
            Pass::Resume(applying) => {
                tracing::info!(revision = %applying, "resuming an interrupted rollout on this node");
                let hash =
                    step::expected_hash(&applying, &state, &target, released_hash.as_deref());
                let Some(revision) = self
                    .trusted_revision(&applying, hash.as_deref(), &state)
                    .await?
                else {
                    return Ok(());
                };
                self.apply(revision, health_timeout).await
            }
            Pass::Restore => {
                let node = &self.node;
                let restored = self
                    .with_rollout_lease(health_timeout, None, async {
                        tracing::info!("restoring the original manifest");
                        node.restore_original(health_timeout).await
                    })
                    .await?;
                if let Some(result) = restored {
                    result?;
                    tracing::info!("the original manifest is back and kube-apiserver is ready");
                }
                let state = self.node.state()?;
                self.report(&state).await
            }
            Pass::Apply(target) => {
                // Checked again holding the Lease; checking first spares taking the Lease on
                // every pass while a rollout stands stopped.
                if let Some(failed) = self.failed_elsewhere(&target).await? {
                    tracing::info!(revision = %target, node = %failed, "not applying: it fell back on another node");
                    return Ok(());
                }
                let hash = step::expected_hash(
                    &target,
                    &state,
                    &step::Target::Revision(target.clone()),
                    released_hash.as_deref(),
                );
                let Some(revision) = self
                    .trusted_revision(&target, hash.as_deref(), &state)
                    .await?
                else {
                    return Ok(());
                };
                self.apply(revision, health_timeout).await
            }
        }
    }

    /// The revision `name` from its Secret, if it may be written to this host; otherwise None,
    /// and the refusal goes into this node's report (and so into the ClusterAudit's status).
    async fn trusted_revision(
        &self,
        name: &str,
        hash: Option<&str>,
        state: &NodeState,
    ) -> Result<Option<Revision>, AgentError> {
        let checked = match self.fetch_revision(name).await {
            Ok(revision) => {
                let pins = self.pins().await;
                step::verify(name, hash, &revision, pins.as_ref()).map(|()| revision)
            }
            Err(AgentError::Revision(objects::ObjectError::Tampered {
                expected, actual, ..
            })) => Err(Refused::Tampered {
                released: name.to_string(),
                recorded: hash.unwrap_or(&expected).to_string(),
                actual,
            }),
            Err(err) => return Err(err),
        };
        match checked {
            Ok(revision) => {
                self.refuse(None);
                Ok(Some(revision))
            }
            Err(refused) => {
                let first = self.refuse(Some(refused.clone()));
                if first {
                    tracing::warn!(revision = %name, reason = %refused, "refusing the revision: nothing of it is written to this node");
                }
                self.report(state).await?;
                Ok(None)
            }
        }
    }

    /// Sets the refusal this node reports; true when it is a new one.
    fn refuse(&self, refused: Option<Refused>) -> bool {
        let mut current = self.refused.lock().expect("not poisoned");
        let new = *current != refused;
        *current = refused;
        new
    }

    /// What a revision's webhook may name, from this agent's own arguments: None when they pin
    /// nothing (or the CA file cannot be read), and then nothing is trusted.
    async fn pins(&self) -> Option<trust::Pins> {
        let ca_file = self.args.webhook_ca_file.as_ref()?;
        if self.args.webhook_servers.is_empty() {
            return None;
        }
        let ca = match std::fs::read(ca_file) {
            Ok(pem) => trust::certificates(&pem),
            Err(err) => {
                tracing::warn!(path = %ca_file.display(), %err, "cannot read the pinned webhook CA");
                None
            }
        };
        let Some(ca) = ca else {
            tracing::warn!(path = %ca_file.display(), "the pinned webhook CA file holds no certificate");
            return None;
        };
        let mut servers = Vec::new();
        for pinned in &self.args.webhook_servers {
            servers.push(pinned.clone());
            servers.extend(resolved(pinned).await);
        }
        Some(trust::Pins { servers, ca })
    }

    /// The revision as this node writes it (its webhook kubeconfig names the node, so the
    /// collector knows where each batch comes from), and, unless the gate is off or the
    /// revision's policy records nothing, whom to ask whether this node's batches arrive.
    fn for_this_node(
        &self,
        revision: Revision,
    ) -> Result<(Revision, Option<delivery::Asker>), AgentError> {
        let node = &self.args.node_name;
        let mut local = revision;
        let Some(kubeconfig) = local.files.get(WEBHOOK_CONFIG_FILE) else {
            return Ok((local, None));
        };
        let server = delivery::webhook_server(kubeconfig)?;
        let per_node = delivery::kubeconfig_for_node(kubeconfig, node)?;
        local
            .files
            .insert(WEBHOOK_CONFIG_FILE.to_string(), per_node);
        if !self.args.delivery_gate {
            return Ok((local, None));
        }
        if let Some(policy) = local.files.get(POLICY_FILE)
            && !delivery::policy_records(policy)
        {
            tracing::info!(revision = %local.name, "its policy records nothing: not waiting for a batch from this node");
            return Ok((local, None));
        }
        // Pinned, since the revision was trusted.
        let Some(ca_file) = self.args.webhook_ca_file.as_ref() else {
            return Ok((local, None));
        };
        let ca_pem = std::fs::read(ca_file).map_err(|source| AgentError::WebhookCa {
            path: ca_file.clone(),
            source,
        })?;
        let asker = delivery::Asker::new(delivery::DeliveryGate {
            node: node.clone(),
            nodes_url: delivery::nodes_url(&server)?,
            ca_pem,
            token_file: self.args.collector_token_file.clone(),
        })?;
        Ok((local, Some(asker)))
    }

    /// Applies under the rollout Lease and reports the outcome before letting the Lease go, so
    /// that the next node sees a failure before it could start.
    async fn apply(&self, revision: Revision, health_timeout: Duration) -> Result<(), AgentError> {
        let (revision, gate) = self.for_this_node(revision)?;
        let name = revision.name.clone();
        let node = &self.node;
        let started = Instant::now();
        let outcome = self
            .with_rollout_lease(health_timeout, Some(&name), async {
                tracing::info!(revision = %name, gated = gate.is_some(), "applying");
                node.apply(&revision, health_timeout, gate.as_ref()).await
            })
            .await?;
        let Some(outcome) = outcome else {
            return Ok(());
        };
        match &outcome {
            Ok(_) => tracing::info!(
                revision = %name,
                seconds = started.elapsed().as_secs_f64(),
                "kube-apiserver is ready with the revision"
            ),
            Err(err) => tracing::warn!(revision = %name, %err, "the revision did not come up"),
        }
        match outcome {
            Ok(_) | Err(NodeError::FellBack { .. }) | Err(NodeError::KnownBad(_)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Runs `work` holding the rollout Lease and writes the node's report before letting it go,
    /// so that the next node sees the outcome before it could start. For a revision, first
    /// checks (holding the Lease) that no other node fell back from it, and says this node is
    /// applying it.
    async fn with_rollout_lease<T>(
        &self,
        health_timeout: Duration,
        revision: Option<&str>,
        work: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, AgentError> {
        let Some(manager) = self.acquire(health_timeout).await? else {
            return Ok(None);
        };
        if let Some(revision) = revision {
            if let Some(failed) = self.failed_elsewhere(revision).await? {
                tracing::info!(%revision, node = %failed, "not applying: it fell back on another node");
                self.release(&manager).await;
                return Ok(None);
            }
            // Seen by the operator and by people: this node is the one restarting now.
            let mut applying = self.report_of(&self.node.state()?);
            applying.applying = Some(revision.to_string());
            if let Err(err) = self.write_report(applying).await {
                tracing::debug!(%err, "could not say this node is applying");
            }
        }
        let result = hold_while(&manager, work).await;
        self.report_until_written().await;
        self.release(&manager).await;
        Ok(Some(result))
    }

    /// Takes the rollout Lease, or gives up after a while (the target may change meanwhile).
    async fn acquire(
        &self,
        health_timeout: Duration,
    ) -> Result<Option<kube_lease_manager::LeaseManager>, AgentError> {
        let seconds = step::rollout_lease_seconds(health_timeout);
        let manager = LeaseManagerBuilder::new(self.client.clone(), ROLLOUT_LEASE)
            .with_namespace(&self.args.namespace)
            .with_identity(&self.args.node_name)
            .with_duration(seconds)
            .with_grace(seconds / 2)
            .build()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, manager.changed()).await {
                Ok(Ok(true)) => return Ok(Some(manager)),
                Ok(Ok(false)) => continue,
                Ok(Err(err)) => return Err(err.into()),
                Err(_) => {
                    tracing::debug!("another node holds the rollout Lease");
                    return Ok(None);
                }
            }
        }
    }

    async fn release(&self, manager: &kube_lease_manager::LeaseManager) {
        for _ in 0..30 {
            match manager.release().await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(%err, "releasing the rollout Lease; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The node (other than this one) whose report says `revision` failed there, if any. Read
    /// from the API, not a cache: it decides whether to restart a kube-apiserver.
    async fn failed_elsewhere(&self, revision: &str) -> Result<Option<String>, AgentError> {
        let reports = self
            .leases()
            .list(&ListParams::default().labels(NODE_REPORT_LABEL))
            .await
            .map_err(kube("listing node reports"))?;
        let reports: Vec<NodeReport> = reports
            .items
            .iter()
            .filter_map(node_report_from_lease)
            .collect();
        Ok(step::failed_elsewhere(&reports, &self.args.node_name, revision).map(str::to_string))
    }

    async fn fetch_revision(&self, name: &str) -> Result<Revision, AgentError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.args.namespace);
        let secret = secrets
            .get_opt(&objects::revision_secret_name(name))
            .await
            .map_err(kube("reading a revision Secret"))?
            .ok_or_else(|| AgentError::RevisionMissing(name.to_string()))?;
        Ok(objects::revision_from_secret(&secret, name)?)
    }

    fn report_of(&self, state: &NodeState) -> NodeReport {
        let refused = self.refused.lock().expect("not poisoned");
        step::report(&self.args.node_name, state, refused.as_ref())
    }

    /// Writes the node's report when it changed.
    async fn report(&self, state: &NodeState) -> Result<(), AgentError> {
        let report = self.report_of(state);
        if self.last_report.lock().expect("not poisoned").as_ref() == Some(&report) {
            return Ok(());
        }
        self.write_report(report).await
    }

    async fn write_report(&self, report: NodeReport) -> Result<(), AgentError> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = node_report_lease(&report, &self.args.namespace, now);
        self.leases()
            .patch(
                &objects::node_report_name(&self.args.node_name),
                &PatchParams::apply("clusteraudit-agent").force(),
                &Patch::Apply(&lease),
            )
            .await
            .map_err(kube("writing this node's report"))?;
        *self.last_report.lock().expect("not poisoned") = Some(report);
        Ok(())
    }

    /// After a restart the API may take a while to answer (on a single control-plane node it is
    /// this node's own kube-apiserver); the report must be written before the rollout Lease goes.
    async fn report_until_written(&self) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let result = match self.node.state() {
                Ok(state) => self.report(&state).await,
                Err(err) => Err(err.into()),
            };
            match result {
                Ok(()) => return,
                Err(err) if Instant::now() < deadline => {
                    tracing::debug!(%err, "the report waits for the API");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => {
                    tracing::warn!(%err, "could not write this node's report");
                    return;
                }
            }
        }
    }
}

/// Runs `work` while renewing the Lease `manager` holds. A renewal failing (this node's own
/// kube-apiserver restarting) is retried; the Lease lasts long enough to ride it out.
async fn hold_while<T>(
    manager: &kube_lease_manager::LeaseManager,
    work: impl std::future::Future<Output = T>,
) -> T {
    let renew = async {
        loop {
            match manager.changed().await {
                Ok(true) => {}
                Ok(false) => tracing::warn!("lost the rollout Lease while applying"),
                Err(err) => {
                    tracing::debug!(%err, "renewing the rollout Lease");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    tokio::select! {
        result = work => result,
        _ = renew => unreachable!("renewing never ends"),
    }
}

/// The same webhook URL with each address its host name resolves to here, spelt as the operator
/// spells a ClusterIP (`https://10.96.0.10:443/v1/webhook`, `https://[fd00::a]:443/...`); none
/// for a URL that names an address already or that does not resolve now.
async fn resolved(pinned: &str) -> Vec<String> {
    let Ok(url) = reqwest::Url::parse(pinned) else {
        return Vec::new();
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Vec::new();
    };
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return Vec::new();
    }
    let suffix = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => addresses
            .map(|address| match address.ip() {
                std::net::IpAddr::V4(ip) => format!("{}://{ip}:{port}{suffix}", url.scheme()),
                std::net::IpAddr::V6(ip) => format!("{}://[{ip}]:{port}{suffix}", url.scheme()),
            })
            .collect(),
        Err(err) => {
            tracing::warn!(%host, %err, "cannot resolve the pinned webhook server");
            Vec::new()
        }
    }
}
