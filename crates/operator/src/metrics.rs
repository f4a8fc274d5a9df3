//! The operator's Prometheus metrics.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Category {
    pub category: String,
}

#[derive(Clone)]
pub struct Metrics {
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
            registry: Arc::new(Registry::default()),
        };
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

    pub fn encode(&self) -> String {
        clusteraudit_io::metrics::text(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
