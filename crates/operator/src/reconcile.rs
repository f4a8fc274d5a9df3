//! One reconcile of the `ClusterAudit`: gather what the plan needs (the rendered policy, the
//! sink, the webhook token, the nodes' reports, and the revision Secret it may release), then
//! carry out the actions it decides (Events, deleting the sink, the status by server-side apply,
//! collecting old revisions), in order.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Secret, Service},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event as KubeEvent, EventType, Recorder},
    },
};
use serde_json::json;

use super::{
    metrics::Metrics,
    plan::{
        self, Desired, Event, Inputs, Lifecycle, PolicyChange, Sink, Tally, guard::GuardConfig,
    },
    sink::{SinkClient, SinkError},
    token,
};
use clusteraudit_core::{
    api::{ClusterAudit, ClusterAuditSpec, Envelope, FIELD_MANAGER, SINGLETON_NAME},
    audit::Policy,
    policy::{
        Rendered,
        envelope::{self, Choice, Released},
    },
    rollout::{
        objects::{self, NODE_REPORT_LABEL, REVISION_LABEL, node_report_from_lease},
        revision::{self, WebhookTarget},
    },
};

/// The one-shot override of the restart guard; set it to a new value to use it once.
pub const FORCE_ROLLOUT_ANNOTATION: &str = "clusteraudit.io/force-rollout";
/// Test-only (honoured with `--enable-test-hooks`, in builds with the `test-hooks` feature): a
/// webhook mode the kube-apiserver refuses, to rehearse a revision that cannot start.
#[cfg(feature = "test-hooks")]
pub const TEST_WEBHOOK_MODE_ANNOTATION: &str = "clusteraudit.io/test-webhook-mode";
/// Present while the operator still has to delete the sink it created (deleteOnDisable).
pub const FINALIZER: &str = "clusteraudit.io/sink-cleanup";
/// The field manager owning the finalizer: apart from the one writing status, so that applying
/// one never drops the other.
const FINALIZER_MANAGER: &str = "clusteraudit-finalizer";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the Kubernetes API refused or failed {what}: {source}")]
    Kube {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sink: {0}")]
    Sink(#[from] SinkError),
    #[error("the collector Service {0} has no ClusterIP for the webhook")]
    NoClusterIp(String),
}

impl ReconcileError {
    /// A bounded label for the error metric.
    pub fn category(&self) -> &'static str {
        match self {
            ReconcileError::Kube { .. } => "kube_api",
            ReconcileError::Read { .. } => "local_file",
            ReconcileError::Sink(_) | ReconcileError::NoClusterIp(_) => "collector",
        }
    }
}

pub(crate) fn kube(what: &'static str) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Kube { what, source }
}

/// How the operator reaches the collector, and how the kube-apiserver will.
pub struct CollectorAccess {
    pub http: reqwest::Client,
    /// The collector's API, for the topic admin calls.
    pub url: String,
    /// The collector's serving CA (PEM), put into the webhook kubeconfig.
    pub ca_pem: String,
    /// A bearer token file for the admin API (re-read each time: projected tokens rotate).
    pub token_file: Option<PathBuf>,
    /// Where the kube-apiserver posts: an address that needs no cluster DNS.
    pub webhook: WebhookAddress,
}

pub enum WebhookAddress {
    Url(String),
    /// A Service in the operator's namespace: https://<its ClusterIP>:<its first port>/v1/webhook.
    Service(String),
}

pub struct Context {
    pub client: kube::Client,
    pub namespace: String,
    pub collector: CollectorAccess,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// How long a change to the webhook token Secret may take to reach the collectors' volumes.
    pub token_propagation: Duration,
    /// The last policy choice, reused while its inputs stay the same.
    pub last_choice: LastChoice,
    /// What of the sink this process found or created, as last known: kept beside the status
    /// because a reconcile can create the sink and fail before its status is written.
    pub sink_memory: std::sync::Mutex<Option<clusteraudit_core::api::SinkStatus>>,
    #[cfg(feature = "test-hooks")]
    pub test_hooks: bool,
}

/// The last choice of what the kube-apiservers run, by its inputs (the released policy, the
/// spec's policy hash, the envelope). `narrows` is exact but not free (0.2 s for the largest spec
/// the API allows, in a release build), and without this every reconcile would ask it again of
/// the same pair.
#[derive(Default)]
pub struct LastChoice(std::sync::Mutex<Option<(ChoiceKey, Choice)>>);

type ChoiceKey = (Option<String>, String, Envelope);

impl LastChoice {
    fn get_or(&self, key: ChoiceKey, choose: impl FnOnce() -> Choice) -> Choice {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((k, choice)) if *k == key => choice.clone(),
            _ => {
                let choice = choose();
                *last = Some((key, choice.clone()));
                choice
            }
        }
    }
}

impl Context {
    pub(crate) fn sink_client(&self) -> Result<SinkClient, ReconcileError> {
        let token = match &self.collector.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ReconcileError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        Ok(SinkClient::new(
            self.collector.http.clone(),
            &self.collector.url,
            token,
        ))
    }

    async fn publish(&self, audit: &ClusterAudit, event: Event) {
        let reason = event.reason;
        let event = KubeEvent {
            type_: if event.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(event.note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &audit.object_ref(&())).await {
            tracing::warn!(%err, reason, "could not publish an Event");
        }
    }
}

pub async fn reconcile(
    audit: Arc<ClusterAudit>,
    context: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let result = reconcile_inner(&audit, &context).await;
    context
        .metrics
        .reconcile_seconds
        .observe(started.elapsed().as_secs_f64());
    context.metrics.reconciles.inc();
    result
}

pub fn error_policy(
    _audit: Arc<ClusterAudit>,
    error: &ReconcileError,
    context: Arc<Context>,
) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    context.metrics.error(error.category());
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile_inner(
    audit: &ClusterAudit,
    context: &Context,
) -> Result<Action, ReconcileError> {
    if audit.name_any() != SINGLETON_NAME {
        // The CRD refuses other names; nothing to do for one that slipped through.
        return Ok(Action::await_change());
    }
    let audits: Api<ClusterAudit> = Api::all(context.client.clone());
    let lifecycle = plan::lifecycle(Lifecycle {
        deleting: audit.metadata.deletion_timestamp.is_some(),
        has_finalizer: audit.finalizers().iter().any(|f| f == FINALIZER),
        delete_on_disable: audit.spec.sink.delete_on_disable,
        sink: audit.status.as_ref().and_then(|s| s.sink.as_ref()),
    });
    if let Some(done) = execute(audit, context, &audits, lifecycle).await? {
        return Ok(done);
    }

    let now = SystemTime::now();
    let previous = audit.status.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(context.client.clone(), &context.namespace);
    let reports: Vec<_> = leases
        .list(&ListParams::default().labels(NODE_REPORT_LABEL))
        .await
        .map_err(kube("listing node reports"))?
        .items
        .iter()
        .filter_map(node_report_from_lease)
        .collect();

    let spec = &audit.spec;
    let mut token_requeue = None;
    let mut policy_comparison = PolicyChange::NotCompared;
    let mut enforced = None;
    let (desired, sink) = match validate(spec) {
        Err(message) => (Desired::Invalid { message }, Sink::NotChecked),
        Ok(_) if !spec.enabled => (Desired::Off, Sink::NotChecked),
        Ok(rendered) => {
            let sink_client = context.sink_client()?;
            let mut known = None;
            let remembered = crate::sink::with_remembered(
                previous.sink.as_ref(),
                context
                    .sink_memory
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref(),
            );
            let sink = match sink_client
                .ensure_remembering(&spec.sink, remembered.as_ref(), &mut known)
                .await
            {
                Ok(status) => Sink::Ready(status),
                Err(err) => Sink::Failed {
                    reason: sink_reason(&err),
                    message: err.to_string(),
                    known,
                },
            };
            if let Sink::Ready(status)
            | Sink::Failed {
                known: Some(status),
                ..
            } = &sink
            {
                *context
                    .sink_memory
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
            }
            // The revision carries the released revision's policy while the spec's only narrows
            // it: the kube-apiservers already send more than it wants, so no restart is needed.
            let released = match previous.revision.as_ref().and_then(|r| r.latest.as_deref()) {
                Some(name) if name != revision::ORIGINAL => released_policy(context, name).await?,
                _ => None,
            };
            let released = released
                .as_ref()
                .map(|(yaml, policy)| Released { yaml, policy });
            let key = (
                released.map(|r| r.yaml.to_string()),
                rendered.hash.clone(),
                spec.rollout.envelope,
            );
            let choice = context.last_choice.get_or(key, || {
                envelope::choose(released, &rendered, spec.rollout.envelope)
            });
            let policy_yaml = choice.runs(released, &rendered).yaml.to_string();
            let policy_change = match (&choice, choice.reason()) {
                (Choice::Keep { narrowed: true }, _) => PolicyChange::Narrows,
                (_, Some(reason)) => PolicyChange::Widens(reason),
                _ => PolicyChange::NotCompared,
            };
            policy_comparison = policy_change;
            let server = webhook_url(context).await?;
            let target = |token: &str| WebhookTarget {
                server: server.clone(),
                ca_pem: context.collector.ca_pem.clone(),
                token: token.to_string(),
            };
            let token = token::settle(
                context,
                audit
                    .annotations()
                    .get(token::ROTATE_ANNOTATION)
                    .map(String::as_str),
                |token| {
                    let name = revision::build(&policy_yaml, &target(token)).name;
                    !reports.is_empty() && reports.iter().all(|r| r.current == name)
                },
                now,
            )
            .await?;
            for event in token.events {
                context.publish(audit, event).await;
            }
            token_requeue = token.requeue_within;
            #[cfg_attr(not(feature = "test-hooks"), expect(unused_mut))]
            let mut revision = revision::build(&policy_yaml, &target(&token.token));
            #[cfg(feature = "test-hooks")]
            if context.test_hooks
                && let Some(mode) = audit.annotations().get(TEST_WEBHOOK_MODE_ANNOTATION)
            {
                revision = revision.with_flag("--audit-webhook-mode", mode);
            }
            ensure_revision_secret(audit, context, &revision).await?;
            // The collector enforces the spec's policy once every node runs a revision that sends
            // no less; until then, what it enforced before.
            if let Sink::Ready(status) = &sink
                && let Some(topic) = &status.topic_id
                && !reports.is_empty()
                && reports.iter().all(|r| r.current == revision.name)
            {
                match sink_client.ensure_policy(topic, &rendered.policy).await {
                    Ok(()) => enforced = Some(rendered.hash.clone()),
                    Err(err) => {
                        tracing::warn!(%err, "the collector does not enforce the spec's policy yet");
                        token_requeue =
                            Some(token_requeue.unwrap_or(ENFORCE_RETRY).min(ENFORCE_RETRY));
                    }
                }
            }
            (
                Desired::Revision {
                    name: revision.name,
                    hash: revision.hash,
                    policy_hash: rendered.hash,
                },
                sink,
            )
        }
    };
    let actions = plan::plan(Inputs {
        now,
        generation: audit.metadata.generation,
        previous: &previous,
        desired,
        sink,
        delete_on_disable: spec.sink.delete_on_disable,
        guard: guard_config(spec),
        reports: &reports,
        force_rollout: audit
            .annotations()
            .get(FORCE_ROLLOUT_ANNOTATION)
            .map(String::as_str),
        policy_change: policy_comparison,
        enforced_policy_hash: enforced,
    });
    let actions = actions
        .into_iter()
        .map(|action| match (action, token_requeue) {
            (plan::Action::RequeueAfter(after), Some(token)) => {
                plan::Action::RequeueAfter(after.min(token))
            }
            (action, _) => action,
        })
        .collect();
    let done = execute(audit, context, &audits, actions).await?;
    Ok(done.expect("a plan ends with when to look again"))
}

/// Carries out `actions` in order, stopping at the first that fails. Returns what the controller
/// does next once an action ends the reconcile, None when none did.
async fn execute(
    audit: &ClusterAudit,
    context: &Context,
    audits: &Api<ClusterAudit>,
    actions: Vec<plan::Action>,
) -> Result<Option<Action>, ReconcileError> {
    for action in actions {
        match action {
            plan::Action::SetFinalizer(present) => apply_finalizer(audits, present).await?,
            plan::Action::Publish(event) => context.publish(audit, event).await,
            plan::Action::Count(Tally::RolloutStarted) => {
                context.metrics.rollouts.inc();
            }
            plan::Action::Count(Tally::Throttled) => {
                context.metrics.throttled.inc();
            }
            plan::Action::DeleteSink { sink, announce } => {
                let deleted = context.sink_client()?.delete_created(&sink).await?;
                if announce {
                    let note = format!("{deleted} (deleteOnDisable)");
                    context
                        .publish(
                            audit,
                            Event {
                                warning: false,
                                reason: "SinkDeleted",
                                note,
                            },
                        )
                        .await;
                }
            }
            plan::Action::WriteStatus(status) => {
                let patch = json!({
                    "apiVersion": ClusterAudit::api_version(&()),
                    "kind": ClusterAudit::kind(&()),
                    "status": status,
                });
                audits
                    .patch_status(
                        SINGLETON_NAME,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(&patch),
                    )
                    .await
                    .map_err(kube("writing the status"))?;
                context.metrics.record_status(&status);
            }
            plan::Action::CollectRevisions { in_use, spare } => {
                collect_old_revisions(context, &in_use, spare).await?;
            }
            plan::Action::RequeueAfter(after) => return Ok(Some(Action::requeue(after))),
            plan::Action::AwaitChange => return Ok(Some(Action::await_change())),
        }
    }
    Ok(None)
}

/// What CEL cannot check: the rules' meaning (a rule for both resources and non-resource URLs,
/// say) and durations beyond their syntax. Returns the policy YAML and its hash.
/// How soon to try again when the collector does not take the policy to enforce.
const ENFORCE_RETRY: Duration = Duration::from_secs(5);

/// The policy a released revision carries (its text and parsed), None when its Secret is gone.
async fn released_policy(
    context: &Context,
    name: &str,
) -> Result<Option<(String, Policy)>, ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &context.namespace);
    let Some(secret) = secrets
        .get_opt(&objects::revision_secret_name(name))
        .await
        .map_err(kube("reading the released revision"))?
    else {
        return Ok(None);
    };
    let yaml = secret
        .data
        .as_ref()
        .and_then(|d| d.get(revision::POLICY_FILE))
        .map(|b| String::from_utf8_lossy(&b.0).to_string());
    Ok(yaml.and_then(|yaml| Policy::from_yaml(&yaml).ok().map(|policy| (yaml, policy))))
}

fn validate(spec: &ClusterAuditSpec) -> Result<Rendered, String> {
    for (field, duration) in [
        ("spec.rollout.settleTime", &spec.rollout.settle_time),
        (
            "spec.rollout.minRestartInterval",
            &spec.rollout.min_restart_interval,
        ),
        (
            "spec.rollout.minToggleInterval",
            &spec.rollout.min_toggle_interval,
        ),
        ("spec.rollout.healthTimeout", &spec.rollout.health_timeout),
    ] {
        duration
            .to_duration()
            .map_err(|err| format!("{field}: {err}"))?;
    }
    crate::sink::check_routes(&spec.sink)?;
    clusteraudit_core::policy::render(&spec.policy).map_err(|err| err.to_string())
}

pub fn guard_config(spec: &ClusterAuditSpec) -> GuardConfig {
    let duration = |d: &clusteraudit_core::api::GoDuration| d.to_duration().unwrap_or_default();
    GuardConfig {
        settle_time: duration(&spec.rollout.settle_time),
        min_restart_interval: duration(&spec.rollout.min_restart_interval),
        min_toggle_interval: duration(&spec.rollout.min_toggle_interval),
        max_restarts_per_hour: spec.rollout.max_restarts_per_hour.max(1) as u32,
    }
}

pub(crate) async fn webhook_url(context: &Context) -> Result<String, ReconcileError> {
    let name = match &context.collector.webhook {
        WebhookAddress::Url(url) => return Ok(url.clone()),
        WebhookAddress::Service(name) => name,
    };
    let service = Api::<Service>::namespaced(context.client.clone(), &context.namespace)
        .get(name)
        .await
        .map_err(kube("reading the collector Service"))?;
    let spec = service.spec.unwrap_or_default();
    let ip = spec
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or(ReconcileError::NoClusterIp(name.clone()))?;
    let port = spec
        .ports
        .unwrap_or_default()
        .first()
        .map_or(443, |p| p.port);
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    Ok(format!("https://{host}:{port}/v1/webhook"))
}

fn sink_reason(error: &SinkError) -> &'static str {
    match error {
        SinkError::LogsetNameNotFound(_) | SinkError::LogsetIdNotFound(_) => "LogsetNotFound",
        SinkError::TopicNameNotFound { .. } | SinkError::TopicIdNotFound(_) => "TopicNotFound",
        SinkError::TopicInOtherLogset { .. } => "TopicInOtherLogset",
        SinkError::Refused { .. } if !error.is_transient() => "CollectorRefused",
        SinkError::Refused { .. } | SinkError::Unreachable { .. } => "CollectorUnavailable",
    }
}

async fn ensure_revision_secret(
    audit: &ClusterAudit,
    context: &Context,
    revision: &revision::Revision,
) -> Result<(), ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &context.namespace);
    let owner = audit
        .controller_owner_ref(&())
        .expect("a ClusterAudit from the API has a name and uid");
    let secret = objects::revision_secret(revision, &context.namespace, owner);
    let mut body = serde_json::to_value(&secret).expect("a Secret serializes");
    // Server-side apply wants the kind spelled out.
    body["apiVersion"] = "v1".into();
    body["kind"] = "Secret".into();
    // Content-addressed and immutable: applying the same revision again changes nothing.
    secrets
        .patch(
            &objects::revision_secret_name(&revision.name),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube("applying a revision Secret"))?;
    Ok(())
}

/// Deletes the revision Secrets not in use, beyond the `spare` newest of them.
async fn collect_old_revisions(
    context: &Context,
    in_use: &[String],
    spare: usize,
) -> Result<(), ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(context.client.clone(), &context.namespace);
    let mut list = secrets
        .list_metadata(&ListParams::default().labels(REVISION_LABEL))
        .await
        .map_err(kube("listing revision Secrets"))?
        .items;
    list.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    let unused = list.iter().filter(|secret| {
        let name = secret.labels().get(REVISION_LABEL);
        name.is_some_and(|n| !in_use.contains(n))
    });
    for secret in unused.skip(spare) {
        match secrets
            .delete(&secret.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(kube("deleting an old revision Secret")(err)),
        }
    }
    Ok(())
}

/// The operator's finalizer by server-side apply: finalizers are a set, so applying the
/// operator's own entry (or none) leaves everyone else's alone.
async fn apply_finalizer(audits: &Api<ClusterAudit>, present: bool) -> Result<(), ReconcileError> {
    let finalizers: Vec<&str> = if present { vec![FINALIZER] } else { vec![] };
    let patch = json!({
        "apiVersion": ClusterAudit::api_version(&()),
        "kind": ClusterAudit::kind(&()),
        "metadata": {"name": SINGLETON_NAME, "finalizers": finalizers},
    });
    audits
        .patch(
            SINGLETON_NAME,
            &PatchParams::apply(FINALIZER_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(kube("updating the finalizer"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_choice_is_made_again_only_when_its_inputs_change() {
        let last = LastChoice::default();
        let mut made = 0;
        let key = |spec: &str| {
            (
                Some("released".to_string()),
                spec.to_string(),
                Envelope::Exact,
            )
        };
        let keep = Choice::Keep { narrowed: true };
        for spec in ["a", "a", "b", "b", "a"] {
            last.get_or(key(spec), || {
                made += 1;
                keep.clone()
            });
        }
        assert_eq!(made, 3);
        last.get_or((None, "a".to_string(), Envelope::Wide), || {
            made += 1;
            keep.clone()
        });
        assert_eq!(made, 4);
    }

    #[test]
    fn what_cel_cannot_catch_is_invalid_with_the_field_named() {
        let spec: ClusterAuditSpec = serde_json::from_value(json!({
            "policy": {"rules": [{"level": "None", "resources": [{"group": ""}], "nonResourceURLs": ["/healthz"]}]}
        }))
        .unwrap();
        let message = validate(&spec).unwrap_err();
        assert!(
            message.contains("spec.policy.rules[0].nonResourceURLs"),
            "{message}"
        );
        let fine: ClusterAuditSpec = serde_json::from_value(json!({})).unwrap();
        let rendered = validate(&fine).unwrap();
        assert!(rendered.yaml.contains("audit.k8s.io/v1") && rendered.hash.len() == 64);
    }

    /// A request that never left, as a failure to reach the collector.
    fn unreachable() -> reqwest::Error {
        clusteraudit_io::tls::install_crypto_provider();
        reqwest::Client::new()
            .get("no scheme")
            .build()
            .expect_err("not a URL")
    }

    #[test]
    fn sink_errors_map_to_reasons_people_can_act_on() {
        assert_eq!(
            sink_reason(&SinkError::LogsetIdNotFound("x".into())),
            "LogsetNotFound"
        );
        assert_eq!(
            sink_reason(&SinkError::Unreachable {
                url: "u".into(),
                source: unreachable()
            }),
            "CollectorUnavailable"
        );
        assert_eq!(
            sink_reason(&SinkError::Refused {
                what: "w".into(),
                status: 403,
                message: "m".into()
            }),
            "CollectorRefused"
        );
    }
}
