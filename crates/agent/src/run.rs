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

use crate::node::{Node, NodeError, NodePaths, NodeState};
use crate::step::{self, Pass, Refused};
use clusteraudit_core::{
    api::{ClusterAudit, SINGLETON_NAME},
    rollout::{
        objects::{
            self, NODE_REPORT_LABEL, NodeReport, ROLLOUT_LEASE, node_report_from_lease,
            node_report_lease,
        },
        revision::Revision,
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
    Refused(#[from] Refused),
    #[error(transparent)]
    Node(#[from] NodeError),
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
}

pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
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
        match step::pass(&state, &step::target(audit.as_ref()), self.node.audited()) {
            Pass::Nothing => Ok(()),
            Pass::Resume(applying) => {
                tracing::info!(revision = %applying, "resuming an interrupted rollout on this node");
                let revision = self.fetch_revision(&applying).await?;
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
                let revision = self.fetch_revision(&target).await?;
                self.apply(revision, health_timeout).await
            }
        }
    }

    /// Applies under the rollout Lease and reports the outcome before letting the Lease go, so
    /// that the next node sees a failure before it could start.
    async fn apply(&self, revision: Revision, health_timeout: Duration) -> Result<(), AgentError> {
        let name = revision.name.clone();
        let node = &self.node;
        let started = Instant::now();
        let outcome = self
            .with_rollout_lease(health_timeout, Some(&name), async {
                tracing::info!(revision = %name, "applying");
                node.apply(&revision, health_timeout).await
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
        let revision = objects::revision_from_secret(&secret, name)?;
        step::verify(name, &revision)?;
        Ok(revision)
    }

    fn report_of(&self, state: &NodeState) -> NodeReport {
        step::report(&self.args.node_name, state)
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
