//! The `AuditAlert` objects: the leader checks each one, hands the valid ones to the collector
//! as its whole set of rules, and writes back what the collector reports (firing groups, when
//! last fired). The collector evaluates; the operator only translates and reports, so that
//! alerts keep firing while the operator is away.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::{Event as KubeEvent, EventType},
        watcher,
    },
};
use serde_json::{Value, json};

use clusteraudit_core::{
    alert::RuleSpec,
    api::{
        ClusterAudit, ClusterAuditStatus, SINGLETON_NAME,
        alert::{AuditAlert, AuditAlertStatus, FiringGroup, MAX_FIRING_IN_STATUS},
    },
    rollout::revision,
};

use crate::{
    conditions::{self, Observed},
    reconcile::Context,
};

pub const VALID: &str = "Valid";
pub const ACTIVE: &str = "Active";

/// How often the rules are handed over and the status refreshed without any change to the
/// objects: firing groups change with the events, not with the objects.
const RESYNC: Duration = Duration::from_secs(10);
/// The rules are set again this often even when unchanged, in case the collector's catalog
/// lost them (a new OpenSearch, a wiped volume).
const REPUSH: Duration = Duration::from_secs(300);

/// What an AuditAlert amounts to.
#[derive(Clone, Debug, PartialEq)]
pub enum Judged {
    /// The rule the collector evaluates.
    Rule(RuleSpec),
    /// Refused: the condition's reason and message.
    Invalid {
        reason: &'static str,
        message: String,
    },
    /// Its topic could not be looked up now (the collector is unreachable).
    Unknown,
}

/// Checks an alert. `topics` (id, name) is None when they could not be listed.
pub fn judge(alert: &AuditAlert, topics: Option<&[(String, String)]>) -> Judged {
    let topic_id = match &alert.spec.topic {
        None => String::new(),
        Some(wanted) => {
            let Some(topics) = topics else {
                return Judged::Unknown;
            };
            if let Some((id, _)) = topics.iter().find(|(id, _)| id == wanted) {
                id.clone()
            } else {
                let named: Vec<&String> = topics
                    .iter()
                    .filter(|(_, name)| name == wanted)
                    .map(|(id, _)| id)
                    .collect();
                match named[..] {
                    [id] => id.clone(),
                    [] => {
                        return Judged::Invalid {
                            reason: "TopicNotFound",
                            message: format!("spec.topic: the collector has no topic {wanted:?}"),
                        };
                    }
                    _ => {
                        return Judged::Invalid {
                            reason: "TopicAmbiguous",
                            message: format!(
                                "spec.topic: {} logsets hold a topic named {wanted:?}; name it by id",
                                named.len()
                            ),
                        };
                    }
                }
            }
        }
    };
    match alert.spec.rule_spec(&alert.name_any(), &topic_id) {
        Ok(rule) => Judged::Rule(rule),
        Err(err) => Judged::Invalid {
            reason: if err.field == "query" {
                "InvalidQuery"
            } else {
                "InvalidSpec"
            },
            message: format!("spec.{}: {}", err.field, err.message),
        },
    }
}

/// The status an alert gets from its judgement and the collector's view of its rule (None:
/// the collector could not be asked, or the rules could not be set: `trouble` says why).
pub fn status_of(
    alert: &AuditAlert,
    judged: &Judged,
    view: Option<&Value>,
    trouble: Option<&str>,
    now: &Time,
) -> AuditAlertStatus {
    let previous = alert.status.clone().unwrap_or_default();
    let generation = alert.metadata.generation;
    let mut status = AuditAlertStatus {
        observed_generation: generation,
        conditions: previous.conditions.clone(),
        last_fired_at: previous.last_fired_at.clone(),
        ..AuditAlertStatus::default()
    };
    let (valid, active) = match judged {
        Judged::Rule(rule) => {
            let valid = Observed {
                type_: VALID,
                status: true,
                reason: "Valid",
                message: format!(
                    "counts events matching {:?} within {}s; fires at {}",
                    rule.query, rule.window_seconds, rule.threshold
                ),
            };
            let entry = view.and_then(|v| {
                v["rules"]
                    .as_array()?
                    .iter()
                    .find(|r| r["name"] == rule.name.as_str())
            });
            let active = match (entry, trouble) {
                (_, Some(trouble)) => Observed {
                    type_: ACTIVE,
                    status: false,
                    reason: "CollectorUnavailable",
                    message: trouble.to_string(),
                },
                (None, None) => Observed {
                    type_: ACTIVE,
                    status: false,
                    reason: "Pending",
                    message: "the collector has not taken the rule yet".into(),
                },
                (Some(entry), None) => {
                    status.topic_id = entry["topic"].as_str().map(String::from);
                    let firing = entry["firing"].as_array().cloned().unwrap_or_default();
                    status.firing_groups = firing.len() as i64;
                    status.firing = firing
                        .iter()
                        .take(MAX_FIRING_IN_STATUS)
                        .filter_map(firing_group)
                        .collect();
                    let fired = entry["lastFiredAt"].as_str().and_then(parse_time);
                    status.last_fired_at = match (fired, previous.last_fired_at) {
                        (Some(fired), Some(before)) if before.0 > fired.0 => Some(before),
                        (Some(fired), _) => Some(fired),
                        (None, before) => before,
                    };
                    if entry["ready"] == true {
                        Observed {
                            type_: ACTIVE,
                            status: true,
                            reason: "Evaluating",
                            message: "the collector counts every event it acknowledges".into(),
                        }
                    } else {
                        Observed {
                            type_: ACTIVE,
                            status: false,
                            reason: "FillingWindow",
                            message: "the collector is reading the window's events from the store"
                                .into(),
                        }
                    }
                }
            };
            (valid, active)
        }
        Judged::Invalid { reason, message } => (
            Observed {
                type_: VALID,
                status: false,
                reason,
                message: message.clone(),
            },
            Observed {
                type_: ACTIVE,
                status: false,
                reason: "Invalid",
                message: "not evaluated until the spec is valid".into(),
            },
        ),
        Judged::Unknown => {
            // Nothing new is known: keep what the status says.
            status.topic_id = previous.topic_id;
            status.firing_groups = previous.firing_groups;
            status.firing = previous.firing;
            return status;
        }
    };
    conditions::set(&mut status.conditions, valid, generation, now);
    conditions::set(&mut status.conditions, active, generation, now);
    status
}

fn parse_time(text: &str) -> Option<Time> {
    text.parse::<k8s_openapi::jiff::Timestamp>().ok().map(Time)
}

fn firing_group(entry: &Value) -> Option<FiringGroup> {
    let group: BTreeMap<String, String> = serde_json::from_value(entry["group"].clone()).ok()?;
    Some(FiringGroup {
        group,
        count: entry["count"].as_i64()?,
        since: parse_time(entry["since"].as_str()?)?,
        query: entry["query"].as_str().unwrap_or_default().to_string(),
    })
}

/// Keeps the collector's rules and the alerts' status in step, for as long as this replica leads.
pub async fn run(context: Arc<Context>) {
    let api: Api<AuditAlert> = Api::all(context.client.clone());
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = changed.clone();
    let watching = api.clone();
    tokio::spawn(async move {
        let mut stream = watcher(watching, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => notify.notify_one(),
                Err(err) => tracing::debug!(%err, "watching AuditAlerts"),
            }
        }
    });
    let mut pushed: Option<(Vec<RuleSpec>, Instant)> = None;
    let mut expected: Option<(Vec<String>, Instant)> = None;
    loop {
        sync_expected_nodes(&context, &mut expected).await;
        sync(&context, &api, &mut pushed).await;
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// The nodes whose kube-apiservers run an auditing revision, as their agents reported it.
pub fn auditing_nodes(status: Option<&ClusterAuditStatus>) -> Vec<String> {
    let mut nodes: Vec<String> = status
        .and_then(|s| s.revision.as_ref())
        .map(|r| {
            r.nodes
                .iter()
                .filter(|n| {
                    n.current
                        .as_deref()
                        .is_some_and(|c| c != revision::ORIGINAL)
                })
                .map(|n| n.name.clone())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// Tells the collector which nodes should be sending, when that changes (and every few minutes).
async fn sync_expected_nodes(context: &Context, sent: &mut Option<(Vec<String>, Instant)>) {
    let audits: Api<ClusterAudit> = Api::all(context.client.clone());
    let nodes = match audits.get_opt(SINGLETON_NAME).await {
        Ok(audit) => auditing_nodes(audit.as_ref().and_then(|a| a.status.as_ref())),
        Err(err) => {
            tracing::debug!(%err, "reading the ClusterAudit for the auditing nodes");
            return;
        }
    };
    if sent
        .as_ref()
        .is_some_and(|(before, at)| *before == nodes && at.elapsed() < REPUSH)
    {
        return;
    }
    let client = match context.sink_client() {
        Ok(client) => client,
        Err(err) => {
            tracing::warn!(%err, "no collector client for the auditing nodes");
            return;
        }
    };
    match client.set_expected_nodes(&nodes).await {
        Ok(()) => {
            tracing::info!(?nodes, "told the collector which nodes audit");
            *sent = Some((nodes, Instant::now()));
        }
        Err(err) => tracing::warn!(%err, "telling the collector which nodes audit"),
    }
}

async fn sync(
    context: &Context,
    api: &Api<AuditAlert>,
    pushed: &mut Option<(Vec<RuleSpec>, Instant)>,
) {
    let alerts = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(err) => {
            // Also where the AuditAlert CRD is not installed: nothing to evaluate then.
            tracing::debug!(%err, "listing AuditAlerts");
            return;
        }
    };
    let client = match context.sink_client() {
        Ok(client) => client,
        Err(err) => {
            tracing::warn!(%err, "no collector client for the alert rules");
            return;
        }
    };
    let topics = if alerts.iter().any(|a| a.spec.topic.is_some()) {
        match client.all_topics().await {
            Ok(topics) => Some(topics),
            Err(err) => {
                tracing::warn!(%err, "listing the collector's topics for the alerts");
                None
            }
        }
    } else {
        Some(Vec::new())
    };
    let judged: Vec<Judged> = alerts.iter().map(|a| judge(a, topics.as_deref())).collect();
    let mut rules: Vec<RuleSpec> = judged
        .iter()
        .filter_map(|j| match j {
            Judged::Rule(rule) => Some(rule.clone()),
            _ => None,
        })
        .collect();
    rules.sort_by(|a, b| a.name.cmp(&b.name));
    let unknown = judged.contains(&Judged::Unknown);
    let mut trouble = None;
    let due = match pushed {
        Some((set, at)) => *set != rules || at.elapsed() > REPUSH,
        None => true,
    };
    // While a topic cannot be looked up, the set is not known whole: leave the collector's.
    if due && !unknown {
        match client.set_alert_rules(&rules).await {
            Ok(()) => {
                tracing::info!(rules = rules.len(), "alert rules set on the collector");
                *pushed = Some((rules, Instant::now()));
            }
            Err(err) => trouble = Some(err.to_string()),
        }
    }
    let view = match client.alerts().await {
        Ok(view) => Some(view),
        Err(err) => {
            trouble.get_or_insert(err.to_string());
            None
        }
    };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    for (alert, judged) in alerts.iter().zip(&judged) {
        let status = status_of(alert, judged, view.as_ref(), trouble.as_deref(), &now);
        if alert.status.as_ref() == Some(&status) {
            continue;
        }
        let was_valid = alert
            .status
            .as_ref()
            .is_none_or(|s| !conditions::is_false(&s.conditions, VALID));
        let fired_again = status.last_fired_at.is_some()
            && status.last_fired_at != alert.status.as_ref().and_then(|s| s.last_fired_at.clone());
        let patch = Patch::Merge(json!({ "status": status }));
        if let Err(err) = api
            .patch_status(&alert.name_any(), &PatchParams::default(), &patch)
            .await
        {
            tracing::warn!(%err, alert = %alert.name_any(), "writing an AuditAlert's status");
            continue;
        }
        if let Judged::Invalid { reason, message } = judged
            && was_valid
        {
            publish(context, alert, true, reason, message.clone()).await;
        }
        if fired_again {
            let groups = status.firing_groups;
            publish(
                context,
                alert,
                false,
                "Firing",
                format!("{groups} group(s) firing"),
            )
            .await;
        }
    }
}

async fn publish(context: &Context, alert: &AuditAlert, warning: bool, reason: &str, note: String) {
    let event = KubeEvent {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(note),
        action: "Evaluate".into(),
        secondary: None,
    };
    if let Err(err) = context
        .recorder
        .publish(&event, &alert.object_ref(&()))
        .await
    {
        tracing::warn!(%err, reason, "could not publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(spec: Value) -> AuditAlert {
        serde_json::from_value(json!({
            "apiVersion": "clusteraudit.io/v1alpha1", "kind": "AuditAlert",
            "metadata": {"name": "exec", "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    #[test]
    fn an_invalid_query_is_refused_with_its_column() {
        let judged = judge(&alert(json!({"query": "verb:create and ("})), Some(&[]));
        let Judged::Invalid { reason, message } = &judged else {
            panic!("{judged:?}");
        };
        assert_eq!(*reason, "InvalidQuery");
        assert!(message.starts_with("spec.query: at column "), "{message}");
        let status = status_of(&alert(json!({})), &judged, None, None, &now());
        assert!(conditions::is_false(&status.conditions, VALID));
        assert!(conditions::is_false(&status.conditions, ACTIVE));
        assert_eq!(status.observed_generation, Some(2));
    }

    #[test]
    fn a_topic_is_found_by_id_or_by_its_one_name() {
        let topics = [
            ("tp-1".to_string(), "security".to_string()),
            ("tp-2".to_string(), "audit".to_string()),
            ("tp-3".to_string(), "audit".to_string()),
        ];
        let rule = |topic: &str| judge(&alert(json!({"topic": topic})), Some(&topics));
        assert!(matches!(rule("security"), Judged::Rule(r) if r.topic == "tp-1"));
        assert!(matches!(rule("tp-3"), Judged::Rule(r) if r.topic == "tp-3"));
        assert!(matches!(
            rule("audit"),
            Judged::Invalid {
                reason: "TopicAmbiguous",
                ..
            }
        ));
        assert!(matches!(
            rule("none"),
            Judged::Invalid {
                reason: "TopicNotFound",
                ..
            }
        ));
        assert_eq!(judge(&alert(json!({"topic": "x"})), None), Judged::Unknown);
    }

    #[test]
    fn only_nodes_on_an_auditing_revision_should_send() {
        let status: ClusterAuditStatus = serde_json::from_value(json!({"revision": {"nodes": [
            {"name": "cp-2", "current": "rev-3"},
            {"name": "cp-1", "current": "rev-3", "target": "rev-4"},
            {"name": "cp-3", "current": "original"},
            {"name": "cp-4"},
        ]}}))
        .unwrap();
        assert_eq!(auditing_nodes(Some(&status)), ["cp-1", "cp-2"]);
        assert!(auditing_nodes(None).is_empty());
    }

    #[test]
    fn the_collectors_view_becomes_the_status() {
        let alert = alert(json!({"query": "verb:create", "groupBy": ["user"]}));
        let judged = judge(&alert, Some(&[]));
        let view = json!({"rules": [{"name": "exec", "topic": "tp-1", "ready": true,
            "firing": [{"group": {"user": "alice"}, "count": 3, "since": "2026-11-30T12:00:00Z",
                        "query": "verb:create AND user:alice"}],
            "lastFiredAt": "2026-11-30T12:00:00Z"}]});
        let status = status_of(&alert, &judged, Some(&view), None, &now());
        assert!(conditions::is_true(&status.conditions, VALID));
        assert!(conditions::is_true(&status.conditions, ACTIVE));
        assert_eq!(status.firing_groups, 1);
        assert_eq!(status.firing[0].group["user"], "alice");
        assert_eq!(status.topic_id.as_deref(), Some("tp-1"));
        assert!(status.last_fired_at.is_some());
        let unreachable = status_of(&alert, &judged, None, Some("connection refused"), &now());
        assert!(conditions::is_false(&unreachable.conditions, ACTIVE));
    }
}
