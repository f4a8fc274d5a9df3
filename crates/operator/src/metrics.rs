//! The operator's Prometheus metrics.

use std::sync::{Arc, Mutex};

use clusteraudit_core::{api::ClusterAuditStatus, rollout::revision};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Category {
    pub category: String,
}

/// A control-plane node: bounded by the nodes of the cluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

/// A node and one of the fixed [`NODE_STATES`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeStateLabel {
    pub node: String,
    pub state: &'static str,
}

/// One of the ClusterAudit's condition types (six).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabel {
    pub condition: String,
}

/// Where a node stands in the rollout, exactly one at a time: `current` (runs the latest
/// revision), `rolling` (moving to a revision), `failed` (the latest revision failed to become
/// ready there and is not retried by itself), `refused` (its agent refuses the latest revision),
/// `behind` (runs an older revision and is not moving yet: the rollout goes node by node).
pub const NODE_STATES: [&str; 5] = ["current", "rolling", "failed", "refused", "behind"];

#[derive(Clone)]
pub struct Metrics {
    pub node_auditing: Family<NodeLabel, Gauge>,
    pub node_rollout_state: Family<NodeStateLabel, Gauge>,
    pub condition: Family<ConditionLabel, Gauge>,
    pub condition_since: Family<ConditionLabel, Gauge>,
    /// The nodes and conditions last exported, so that a node gone from the status leaves the
    /// metrics too.
    exported: Arc<Mutex<Vec<String>>>,
    pub reconciles: Counter,
    pub errors: Family<Category, Counter>,
    pub rollouts: Counter,
    pub throttled: Counter,
    pub reconcile_seconds: Histogram,
    pub leader: Gauge,
    registry: Arc<Registry>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("clusteraudit_operator");
        let metrics = Metrics {
            reconciles: Counter::default(),
            errors: Family::default(),
            rollouts: Counter::default(),
            throttled: Counter::default(),
            reconcile_seconds: Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                0.5, 1.0, 2.5, 5.0,
            ]),
            leader: Gauge::default(),
            node_auditing: Family::default(),
            node_rollout_state: Family::default(),
            condition: Family::default(),
            condition_since: Family::default(),
            exported: Arc::default(),
            registry: Arc::new(Registry::default()),
        };
        registry.register(
            "node_auditing",
            "1 while the node's kube-apiserver runs an auditing revision (what the node's agent reports), 0 while it runs its original manifest",
            metrics.node_auditing.clone(),
        );
        registry.register(
            "node_rollout_state",
            "Where each control-plane node stands in the rollout: 1 for its state (current, rolling, failed, refused, behind), 0 for the others",
            metrics.node_rollout_state.clone(),
        );
        registry.register(
            "condition",
            "1 while the ClusterAudit's condition is True, by condition type (Ready, PolicyRendered, SinkReady, RolloutProgressing, RolloutThrottled, Degraded)",
            metrics.condition.clone(),
        );
        registry.register(
            "condition_last_transition_timestamp_seconds",
            "When the ClusterAudit's condition last changed status, as Unix time, by condition type",
            metrics.condition_since.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles of the ClusterAudit",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by what failed",
            metrics.errors.clone(),
        );
        registry.register(
            "rollouts_started",
            "Rollouts released to the nodes (each restarts every kube-apiserver once)",
            metrics.rollouts.clone(),
        );
        registry.register(
            "throttled_decisions",
            "Reconciles in which the restart guard held a rollout back",
            metrics.throttled.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Reconcile duration",
            metrics.reconcile_seconds.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    pub fn error(&self, category: &str) {
        self.errors
            .get_or_create(&Category {
                category: category.to_string(),
            })
            .inc();
    }

    /// Exports the status the leader just wrote. A standby writes none, so its gauges stay
    /// absent and `max` over operator replicas is the leader's.
    pub fn record_status(&self, status: &ClusterAuditStatus) {
        let mut exported = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        for node in exported.drain(..) {
            self.node_auditing.remove(&NodeLabel { node: node.clone() });
            for state in NODE_STATES {
                self.node_rollout_state.remove(&NodeStateLabel {
                    node: node.clone(),
                    state,
                });
            }
        }
        let latest = status.revision.as_ref().and_then(|r| r.latest.as_deref());
        for node in status.revision.iter().flat_map(|r| &r.nodes) {
            let auditing = node
                .current
                .as_deref()
                .is_some_and(|current| current != revision::ORIGINAL);
            self.node_auditing
                .get_or_create(&NodeLabel {
                    node: node.name.clone(),
                })
                .set(i64::from(auditing));
            let state = node_state(node, latest);
            for candidate in NODE_STATES {
                self.node_rollout_state
                    .get_or_create(&NodeStateLabel {
                        node: node.name.clone(),
                        state: candidate,
                    })
                    .set(i64::from(candidate == state));
            }
            exported.push(node.name.clone());
        }
        for condition in &status.conditions {
            let label = ConditionLabel {
                condition: condition.type_.clone(),
            };
            self.condition
                .get_or_create(&label)
                .set(i64::from(condition.status == "True"));
            self.condition_since
                .get_or_create(&label)
                .set(condition.last_transition_time.0.as_second());
        }
    }

    pub fn encode(&self) -> String {
        clusteraudit_io::metrics::text(&self.registry)
    }
}

fn node_state(
    node: &clusteraudit_core::api::NodeRevisionStatus,
    latest: Option<&str>,
) -> &'static str {
    let is_latest =
        |revision: &Option<String>| revision.as_deref().is_some_and(|r| Some(r) == latest);
    if is_latest(&node.refused) {
        "refused"
    } else if is_latest(&node.last_failed) {
        "failed"
    } else if latest.is_some() && node.current.as_deref() == latest {
        "current"
    } else if node.target.is_some() && node.target != node.current {
        "rolling"
    } else {
        "behind"
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use clusteraudit_core::api::{NodeRevisionStatus, RevisionStatus};

    use super::*;

    fn node(
        name: &str,
        current: &str,
        target: Option<&str>,
        failed: Option<&str>,
    ) -> NodeRevisionStatus {
        NodeRevisionStatus {
            name: name.into(),
            current: Some(current.into()),
            target: target.map(Into::into),
            last_failed: failed.map(Into::into),
            ..Default::default()
        }
    }

    fn status(nodes: Vec<NodeRevisionStatus>) -> ClusterAuditStatus {
        ClusterAuditStatus {
            revision: Some(RevisionStatus {
                latest: Some("r2".into()),
                nodes,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn each_node_has_exactly_one_state_and_says_whether_it_audits() {
        let metrics = Metrics::new();
        metrics.record_status(&status(vec![
            node("cp-1", "r2", None, None),
            node("cp-2", "r1", Some("r2"), None),
            node("cp-3", "r1", None, Some("r2")),
            node("cp-4", revision::ORIGINAL, None, None),
        ]));
        let text = metrics.encode();
        for (node, state) in [
            ("cp-1", "current"),
            ("cp-2", "rolling"),
            ("cp-3", "failed"),
            ("cp-4", "behind"),
        ] {
            for candidate in NODE_STATES {
                let line = format!(
                    "clusteraudit_operator_node_rollout_state{{node=\"{node}\",state=\"{candidate}\"}} {}",
                    i32::from(candidate == state)
                );
                assert!(text.contains(&line), "{line} in\n{text}");
            }
        }
        assert!(text.contains("clusteraudit_operator_node_auditing{node=\"cp-3\"} 1"));
        assert!(text.contains("clusteraudit_operator_node_auditing{node=\"cp-4\"} 0"));
    }

    #[test]
    fn a_node_gone_from_the_status_leaves_the_metrics() {
        let metrics = Metrics::new();
        metrics.record_status(&status(vec![
            node("cp-1", "r2", None, None),
            node("cp-2", "r2", None, None),
        ]));
        metrics.record_status(&status(vec![node("cp-1", "r2", None, None)]));
        let text = metrics.encode();
        assert!(text.contains("node=\"cp-1\""));
        assert!(!text.contains("node=\"cp-2\""), "{text}");
    }
}
