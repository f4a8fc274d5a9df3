//! The `AuditAlert` API (`clusteraudit.io/v1alpha1`): one alert rule over the stored audit
//! events, managed with `kubectl apply` like any other object. The operator checks what CEL
//! cannot (the query, the templates), says so in `Valid`, and hands the valid rules to the
//! collector, which evaluates them on every event it acknowledges.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{GoDuration, schema};
use crate::alert::{GroupField, RuleSpec};

/// An alert on audit events: fire when at least `threshold` events matching `query` fall within
/// `window`, one alert per group of `groupBy` values.
// Printer columns of one type repeat `type_ = ...`, which the lint takes for a repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "clusteraudit.io",
    version = "v1alpha1",
    kind = "AuditAlert",
    plural = "auditalerts",
    shortname = "aalert",
    category = "clusteraudit",
    status = "AuditAlertStatus",
    derive = "PartialEq",
    doc = "AuditAlert fires when enough audit events matching a query fall within a window, one alert per group, and notifies Alertmanager.",
    printcolumn(name = "Query", type_ = "string", json_path = ".spec.query"),
    printcolumn(name = "Threshold", type_ = "integer", json_path = ".spec.threshold"),
    printcolumn(name = "Window", type_ = "string", json_path = ".spec.window"),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status"
    ),
    printcolumn(name = "Firing", type_ = "integer", json_path = ".status.firingGroups"),
    printcolumn(name = "Last Fired", type_ = "date", json_path = ".status.lastFiredAt"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AuditAlertSpec {
    /// The events counted, in the search language (`verb:create and resource:pods`); empty:
    /// every event.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub query: String,
    /// The topic whose events are counted, by name (or id); absent: the topic the ClusterAudit
    /// sends events to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("size(self) > 0 && size(self) <= 128").message("topic must be a topic's name or id, 1 to 128 characters"))]
    #[schemars(length(max = 128))]
    pub topic: Option<String>,
    /// How far back events count.
    #[serde(default = "default_window")]
    #[x_kube(validation = super::duration_rule("window", "1s", "24h"))]
    pub window: GoDuration,
    /// Fire when at least this many matching events fall within the window.
    #[serde(default = "default_threshold")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1 && self <= 1000000000").message("threshold must be between 1 and 1000000000").reason(kube::core::Reason::FieldValueInvalid))]
    pub threshold: i64,
    /// One alert per distinct combination of these: user, namespace, resource, verb, sourceIP,
    /// impersonatedUser (whom a request was made as).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(f, self.exists_one(g, g == f))").message("groupBy names a field twice").reason(kube::core::Reason::FieldValueDuplicate))]
    #[schemars(length(max = 5))]
    pub group_by: Vec<GroupField>,
    /// The alert's severity label (critical, warning, info, ...).
    #[serde(default = "default_severity")]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-zA-Z0-9_.-]{1,63}$')").message("severity must be 1 to 63 letters, digits, '_', '.' or '-'"))]
    #[schemars(length(max = 63))]
    pub severity: String,
    /// The summary annotation; `{{count}}`, `{{threshold}}`, `{{window}}`, `{{rule}}` and each
    /// groupBy field (`{{user}}`, ...) are filled in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub summary: Option<String>,
    /// The description annotation, with the same placeholders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// Extra labels on the alert (team, runbook_url, ...), for Alertmanager's routing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(k, k.matches('^[a-zA-Z_][a-zA-Z0-9_]*$') && !k.startsWith('__'))").message("label names must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __"))]
    #[schemars(extend("maxProperties" = 16))]
    pub labels: BTreeMap<String, String>,
}

/// What the operator and the collector report.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuditAlertStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Valid (the spec compiles), Active (the collector evaluates it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,
    /// The topic whose events are counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// How many groups fire now.
    #[serde(default)]
    pub firing_groups: i64,
    /// The groups firing now (the first 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub firing: Vec<FiringGroup>,
    /// When a group last started firing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_at: Option<Time>,
}

/// A group that fires.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FiringGroup {
    /// The groupBy fields' values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group: BTreeMap<String, String>,
    /// Matching events within the window when it last changed.
    pub count: i64,
    pub since: Time,
    /// The search that shows the group's events.
    pub query: String,
}

/// The most firing groups the status lists.
pub const MAX_FIRING_IN_STATUS: usize = 20;

fn default_window() -> GoDuration {
    GoDuration::from_static("5m")
}

fn default_threshold() -> i64 {
    1
}

fn default_severity() -> String {
    "warning".into()
}

impl AuditAlertSpec {
    /// The rule the collector evaluates, for the topic `topic_id` (empty: the routed topic).
    /// The error names the spec's field, and for the query its column.
    pub fn rule_spec(
        &self,
        name: &str,
        topic_id: &str,
    ) -> Result<RuleSpec, crate::alert::RuleError> {
        let window = self
            .window
            .to_duration()
            .map_err(|err| crate::alert::RuleError {
                field: "window",
                message: err.to_string(),
            })?;
        let spec = RuleSpec {
            name: name.to_string(),
            topic: topic_id.to_string(),
            query: self.query.clone(),
            window_seconds: window.as_secs(),
            threshold: u64::try_from(self.threshold).unwrap_or(0),
            group_by: self.group_by.clone(),
            severity: self.severity.clone(),
            summary: self.summary.clone(),
            description: self.description.clone(),
            labels: self.labels.clone(),
        };
        spec.compile()?;
        Ok(spec)
    }
}

/// The AuditAlert CustomResourceDefinition as YAML, exactly as committed in `crds/auditalert.yaml`.
pub fn crd_yaml() -> String {
    super::generated_yaml(&AuditAlert::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_becomes_the_collectors_rule_or_names_its_wrong_field() {
        let spec: AuditAlertSpec = serde_json::from_value(serde_json::json!({
            "query": "verb:create and resource:pods", "window": "10m", "threshold": 3,
            "groupBy": ["user", "namespace"]
        }))
        .unwrap();
        let rule = spec.rule_spec("exec", "tp-1").unwrap();
        assert_eq!(rule.window_seconds, 600);
        assert_eq!(rule.severity, "warning");
        let mut bad = spec.clone();
        bad.query = "verb:(".into();
        let err = bad.rule_spec("exec", "").unwrap_err();
        assert_eq!(err.field, "query");
        assert!(err.message.contains("column"), "{err}");
    }
}
