//! The `ClusterAudit` API (`clusteraudit.io/v1alpha1`).
//!
//! The kube-apiserver has exactly one audit configuration, so the resource is cluster-scoped and there
//! is one object, named `cluster`. Everything CEL can check is checked by the apiserver itself
//! (`x-kubernetes-validations`), so a GitOps pipeline gets the refusal at apply time; the operator
//! checks the rest and reports `Ready=False, reason=InvalidSpec`.

pub mod alert;
mod duration;
mod schema;

pub use duration::{DurationError, GoDuration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::audit::{PolicyRule, Stage};

/// The only name a `ClusterAudit` may have.
pub const SINGLETON_NAME: &str = "cluster";
/// The field manager the project's writers use for server-side apply.
pub const FIELD_MANAGER: &str = "clusteraudit";

/// Cluster auditing, declared: the policy the kube-apiserver applies, where the events go, and how
/// the kube-apiserver restarts that auditing needs are rolled out.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "clusteraudit.io",
    version = "v1alpha1",
    kind = "ClusterAudit",
    plural = "clusteraudits",
    shortname = "caudit",
    category = "clusteraudit",
    status = "ClusterAuditStatus",
    derive = "PartialEq",
    doc = "ClusterAudit turns kube-apiserver auditing on for the whole control plane: the audit policy, the log destination and a guarded, node-by-node rollout.",
    printcolumn(name = "Enabled", type_ = "boolean", json_path = ".spec.enabled"),
    printcolumn(name = "Profile", type_ = "string", json_path = ".spec.policy.profile"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".status.revision.latest"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name == 'cluster'").message("there is one ClusterAudit per cluster and it must be named 'cluster'").reason(Reason::FieldValueInvalid)
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAuditSpec {
    /// Whether the kube-apiserver audits at all. Turning it off restores the manifests the agents
    /// found before auditing was turned on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// What gets logged, and at which level.
    #[serde(default)]
    pub policy: PolicySpec,
    /// Where the events go: a topic inside a logset of the collector.
    #[serde(default)]
    pub sink: SinkSpec,
    /// How kube-apiserver restarts are spent.
    #[serde(default)]
    pub rollout: RolloutSpec,
}

/// The audit policy, as a profile plus adjustments.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// The base policy: None, Metadata, Default, WriteRequestBodies or AllRequestBodies.
    #[serde(default)]
    pub profile: Profile,
    /// Prepend the well-known noise exclusions (kube-proxy watches, leader-election traffic, health
    /// endpoints, ...).
    #[serde(default = "default_true")]
    pub exclude_noise: bool,
    /// Stages never logged, policy-wide.
    #[serde(default = "default_omit_stages")]
    #[schemars(schema_with = "schema::stage_set")]
    pub omit_stages: Vec<Stage>,
    /// Leave managedFields out of logged request and response bodies.
    #[serde(default = "default_true")]
    pub omit_managed_fields: bool,
    /// audit.k8s.io/v1 PolicyRules, checked in order before the profile's rules; first match wins.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub rules: Vec<PolicyRule>,
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            profile: Profile::default(),
            exclude_noise: true,
            omit_stages: default_omit_stages(),
            omit_managed_fields: true,
            rules: Vec::new(),
        }
    }
}

/// A base audit policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Auditing configured but nothing logged.
    None,
    /// Metadata for every request.
    Metadata,
    /// Metadata for secret-bearing resources and reads, Request for writes.
    #[default]
    Default,
    /// As Default, with request and response bodies of writes.
    WriteRequestBodies,
    /// As Default, with request and response bodies of every request.
    AllRequestBodies,
}

/// The log destination: a logset holding a topic, in the collector.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// The logset that holds the topic.
    #[serde(default = "default_logset")]
    pub logset: LogsetRef,
    /// The topic the events are stored in.
    #[serde(default = "default_topic")]
    pub topic: TopicRef,
    /// On disable, delete the logset and topic, but only those the operator itself created.
    #[serde(default)]
    pub delete_on_disable: bool,
    /// Events also stored in other topics of the logset: every event that matches a route's query
    /// is stored in the route's topic as well, which keeps it for its own retentionDays (every
    /// secrets access kept a year in a `security` topic, say). Routes never restart anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub routes: Vec<RouteSpec>,
}

/// A route: the events matching `query` also go to `topic`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// A query in the search language, as on the page: `resource:secrets or verb:delete`. An
    /// empty query matches every event.
    #[schemars(length(max = 1024))]
    pub query: String,
    /// The topic, in the sink's logset: by name (created when missing, unless `create: false`) or
    /// an existing one adopted by id.
    pub topic: TopicRef,
}

impl Default for SinkSpec {
    fn default() -> Self {
        Self {
            logset: default_logset(),
            topic: default_topic(),
            delete_on_disable: false,
            routes: Vec::new(),
        }
    }
}

/// Either a logset by name (created when missing if `create`), or an existing one adopted by id.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.name) != has(self.id)").message("logset: set either name (to create or find it) or id (to adopt an existing one), not both").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.id) || !has(self.create) || !self.create").message("logset: create cannot be true when adopting an existing logset by id").reason(Reason::FieldValueInvalid)
)]
pub struct LogsetRef {
    /// The logset's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("logset name must be a DNS label: lowercase letters, digits and '-', at most 63 characters"))]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// The id of an existing logset to adopt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 128").message("logset id must be 1 to 128 characters"))]
    #[schemars(length(max = 128))]
    pub id: Option<String>,
    /// Create the logset when no logset has this name (default true with a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
}

/// Either a topic by name (created when missing if `create`), or an existing one adopted by id.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.name) != has(self.id)").message("topic: set either name (to create or find it) or id (to adopt an existing one), not both").reason(Reason::FieldValueInvalid),
    validation = Rule::new("!has(self.id) || !has(self.create) || !self.create").message("topic: create cannot be true when adopting an existing topic by id").reason(Reason::FieldValueInvalid)
)]
pub struct TopicRef {
    /// The topic's name, unique within its logset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("topic name must be a DNS label: lowercase letters, digits and '-', at most 63 characters"))]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// The id of an existing topic to adopt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 128").message("topic id must be 1 to 128 characters"))]
    #[schemars(length(max = 128))]
    pub id: Option<String>,
    /// Create the topic when its logset has no topic of this name (default true with a name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
    /// Days events are kept; whole days past it are deleted. Unset keeps the topic's own setting
    /// (30 days for a topic the operator creates). Changing it never restarts kube-apiserver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3650").message("retentionDays must be between 1 and 3650 (ten years)").reason(Reason::FieldValueInvalid))]
    pub retention_days: Option<i32>,
}

impl LogsetRef {
    pub fn wants_create(&self) -> bool {
        self.name.is_some() && self.create.unwrap_or(true)
    }
}

impl TopicRef {
    pub fn wants_create(&self) -> bool {
        self.name.is_some() && self.create.unwrap_or(true)
    }
}

/// The guards on kube-apiserver restarts. Durations are Go-style: `90s`, `5m`, `1h30m`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("duration(self.settleTime) <= duration(self.minRestartInterval)").message("settleTime must not be longer than minRestartInterval").reason(Reason::FieldValueInvalid),
    validation = Rule::new("duration(self.minRestartInterval) <= duration(self.minToggleInterval)").message("minRestartInterval must not be longer than minToggleInterval").reason(Reason::FieldValueInvalid))]
pub struct RolloutSpec {
    /// Edits made within this time of each other are coalesced into one restart.
    #[serde(default = "default_settle_time")]
    #[x_kube(validation = duration_rule("settleTime", "0s", "1h"))]
    pub settle_time: GoDuration,
    /// Least time between two restarts of the kube-apiservers.
    #[serde(default = "default_min_restart_interval")]
    #[x_kube(validation = duration_rule("minRestartInterval", "0s", "24h"))]
    pub min_restart_interval: GoDuration,
    /// Least time between turning auditing on and off (either way).
    #[serde(default = "default_min_toggle_interval")]
    #[x_kube(validation = duration_rule("minToggleInterval", "0s", "24h"))]
    pub min_toggle_interval: GoDuration,
    /// Most restarts in any sliding hour.
    #[serde(default = "default_max_restarts_per_hour")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 60").message("maxRestartsPerHour must be between 1 and 60").reason(Reason::FieldValueInvalid))]
    pub max_restarts_per_hour: i32,
    /// How long a node's kube-apiserver has to become ready on a new revision before the agent
    /// restores the last known good manifest.
    #[serde(default = "default_health_timeout")]
    #[x_kube(validation = duration_rule("healthTimeout", "10s", "1h"))]
    pub health_timeout: GoDuration,
    /// What the kube-apiservers run. `Exact`: the spec's policy, restarted into whenever an edit
    /// records more than the running revision sends (edits that only narrow are applied by the
    /// collector). `Wide`: one fixed wide policy (bodies of everything but secret-bearing
    /// resources, every stage but RequestReceived) that the collector narrows to the spec, so no
    /// edit inside it restarts anything, at the cost of the kube-apiservers sending more.
    #[serde(default)]
    pub envelope: Envelope,
}

/// What the kube-apiservers' audit policy is: the spec's own, or a fixed wide one around it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Envelope {
    /// The spec's policy; a widening edit restarts the kube-apiservers.
    #[default]
    Exact,
    /// A fixed wide policy, narrowed to the spec by the collector; a spec outside it runs exactly.
    Wide,
}

/// A CEL rule that a field is a Go-style duration within `[min, max]`.
fn duration_rule(field: &str, min: &str, max: &str) -> kube::core::Rule {
    kube::core::Rule::new(format!(
        "self.matches('{pattern}') && duration(self) >= duration('{min}') && duration(self) <= duration('{max}')",
        pattern = duration::CEL_PATTERN
    ))
    .message(kube::core::Message::Message(format!(
        "{field} must be a duration such as 30s, 5m or 1h30m, between {min} and {max}"
    )))
    .reason(kube::core::Reason::FieldValueInvalid)
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            settle_time: default_settle_time(),
            min_restart_interval: default_min_restart_interval(),
            min_toggle_interval: default_min_toggle_interval(),
            max_restarts_per_hour: default_max_restarts_per_hour(),
            health_timeout: default_health_timeout(),
            envelope: Envelope::default(),
        }
    }
}

/// What the operator observed and did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAuditStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, PolicyRendered, SinkReady, RolloutProgressing, RolloutThrottled, Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// Content hash of the rendered policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    /// Content hash of the rendered policy the collector enforces on the events it receives. A
    /// policy change that only narrows what the running revision records takes effect here,
    /// without a kube-apiserver restart: then it differs from the revision's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_policy_hash: Option<String>,
    /// The latest revision and where each control-plane node stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<RevisionStatus>,
    /// The logset and topic the events go to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<SinkStatus>,
    /// When a kube-apiserver was last restarted for auditing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart_time: Option<Time>,
    /// While restarts are held back: when the next one may start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_restart_allowed_at: Option<Time>,
    /// What the restart guard remembers between reconciles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardStatus>,
}

/// The restart guard's memory: kept in status so that an operator restarted (or a new leader)
/// spends no restart its predecessor already spent.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GuardStatus {
    /// When the spec last asked for a different revision (edits settle from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_since: Option<Time>,
    /// Rollouts started within the last hour.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<Time>,
    /// When a rollout last switched auditing on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_toggle_time: Option<Time>,
    /// The last value of the force-rollout annotation the operator acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_rollout: Option<String>,
}

/// The rollout's position.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// The revision the nodes are rolled to: released by the restart guard. `original` means
    /// auditing off, each node back on the manifest it had before auditing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest: Option<String>,
    /// The revision the current spec asks for; differs from `latest` while the guard holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
    /// The full SHA-256 of the latest revision's content, recorded by the operator that built
    /// it: an agent writes a revision to its node only if the content hashes to this. Written
    /// only through the status subresource, unlike the revision Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_hash: Option<String>,
    /// One entry per control-plane node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::node_revisions")]
    pub nodes: Vec<NodeRevisionStatus>,
}

/// Where one control-plane node stands in the rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeRevisionStatus {
    /// The node's name.
    pub name: String,
    /// The revision its kube-apiserver runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// The revision it is moving to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The last revision that failed to become ready on this node (never retried by itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A revision this node's agent refuses to write to the host (its content is not what the
    /// status recorded, or its webhook is not the pinned one); nothing of it was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// Why the agent refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_reason: Option<String>,
}

/// The logset and topic in use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logset_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// What the operator created itself (and so may delete with deleteOnDisable).
    #[serde(default)]
    pub created: CreatedBySink,
    /// The routes' topics, in the order of `spec.sink.routes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteStatus>,
}

/// Where a route's events go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// The route's query, as in the spec.
    pub query: String,
    /// The topic the matching events are also stored in.
    pub topic_id: String,
    /// Whether the operator created the topic (and so may delete it with deleteOnDisable).
    #[serde(default)]
    pub created: bool,
}

/// Which parts of the sink the operator created.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CreatedBySink {
    #[serde(default)]
    pub logset: bool,
    #[serde(default)]
    pub topic: bool,
}

fn default_true() -> bool {
    true
}

fn default_omit_stages() -> Vec<Stage> {
    vec![Stage::RequestReceived]
}

fn default_logset() -> LogsetRef {
    LogsetRef {
        name: Some("k8s-audit".into()),
        id: None,
        create: Some(true),
    }
}

fn default_topic() -> TopicRef {
    TopicRef {
        name: Some("cluster-audit".into()),
        id: None,
        create: Some(true),
        retention_days: Some(30),
    }
}

fn default_settle_time() -> GoDuration {
    GoDuration::from_static("30s")
}

fn default_min_restart_interval() -> GoDuration {
    GoDuration::from_static("5m")
}

fn default_min_toggle_interval() -> GoDuration {
    GoDuration::from_static("10m")
}

fn default_max_restarts_per_hour() -> i32 {
    3
}

fn default_health_timeout() -> GoDuration {
    GoDuration::from_static("3m")
}

/// The CustomResourceDefinition as YAML, exactly as committed in `crds/clusteraudit.yaml`.
pub fn crd_yaml() -> String {
    generated_yaml(&ClusterAudit::crd())
}

fn generated_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let body = serde_saphyr::to_string(crd).expect("a CRD always serializes");
    format!(
        "# Generated by `clusteraudit crd` from src/api; do not edit by hand.\n---\n{}",
        body.trim_start_matches("---\n")
    )
}

/// Keys of a `ClusterAudit` document that its schema does not declare (with their paths), as the
/// kube-apiserver's strict field validation would name them. Local tools use it so that a misspelt
/// key is an error rather than silently dropped.
pub fn unknown_fields(document: &serde_json::Value) -> Vec<String> {
    let crd = ClusterAudit::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).expect("a schema serializes"))
        .unwrap_or_default();
    let mut found = Vec::new();
    if let Some(object) = document.as_object() {
        for (key, value) in object {
            match key.as_str() {
                "apiVersion" | "kind" | "metadata" => {}
                _ => match schema["properties"].get(key) {
                    Some(child) => walk_unknown(value, child, key, &mut found),
                    None => found.push(key.clone()),
                },
            }
        }
    }
    found
}

fn walk_unknown(
    value: &serde_json::Value,
    schema: &serde_json::Value,
    path: &str,
    found: &mut Vec<String>,
) {
    if schema["x-kubernetes-preserve-unknown-fields"] == serde_json::Value::Bool(true) {
        return;
    }
    match value {
        serde_json::Value::Object(object) => {
            let Some(properties) = schema["properties"].as_object() else {
                return;
            };
            for (key, child) in object {
                let child_path = format!("{path}.{key}");
                match properties.get(key) {
                    Some(child_schema) => walk_unknown(child, child_schema, &child_path, found),
                    None => found.push(child_path),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_unknown(item, &schema["items"], &format!("{path}[{i}]"), found);
            }
        }
        _ => {}
    }
}
