//! The collector's Prometheus metrics.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

/// The policy rule that decided an event's fate: its index in the topic's policy, `none` (no
/// rule matched), or `policy-omitted-stage`. Bounded by the length of a policy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rule {
    pub rule: String,
}

/// A route's topic: bounded by the routes of the catalog (16 per topic).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

/// An alert receiver: bounded by the collector's configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabel {
    pub receiver: String,
}

/// A control-plane node that posts to the webhook: bounded by the nodes of the cluster (the
/// webhook takes the name only from callers it authenticated).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

/// An alert rule: bounded by the rules the operator sets.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabel {
    pub alertname: String,
}

#[derive(Clone)]
pub struct Metrics {
    pub node_last_batch: Family<NodeLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub alerts_firing: Family<AlertLabel, Gauge>,
    pub alert_rules: Gauge,
    /// With a shared store: how long the evaluating replica took to count every rule in it.
    pub alert_evaluation_seconds: Histogram,
    /// With a shared store: 1 on the replica evaluating the alert rules for all.
    pub alert_evaluator: Gauge,
    pub alerts_fired: Family<AlertLabel, Counter>,
    pub data_disk_free_bytes: Gauge,
    pub data_disk_size_bytes: Gauge,
    pub notifications_sent: Family<ReceiverLabel, Counter>,
    pub notifications_failed: Family<ReceiverLabel, Counter>,
    pub notifications_dropped: Family<ReceiverLabel, Counter>,
    pub notification_queue_depth: Family<ReceiverLabel, Gauge>,
    pub routed: Family<TopicLabel, Counter>,
    pub policy_dropped: Family<Rule, Counter>,
    pub policy_reduced: Family<Rule, Counter>,
    pub events_received: Counter,
    pub events_stored: Counter,
    pub rejected: Family<Reason, Counter>,
    pub events_refused: Family<Reason, Counter>,
    pub open_connections: Gauge,
    pub queue_depth: Gauge,
    pub batch_ack_seconds: Histogram,
    pub query_seconds: Histogram,
    pub backlog_bytes: Gauge,
    pub oldest_pending_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub events_dead_lettered: Counter,
    pub bulk_retries: Family<Reason, Counter>,
    pub bulk_seconds: Histogram,
    pub wal_damaged: Counter,
    pub wal_skipped_bytes: Counter,
    pub index_failures: Counter,
    registry: Arc<Registry>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("clusteraudit_collector");
        let events_received = Counter::default();
        let events_stored = Counter::default();
        let rejected = Family::<Reason, Counter>::default();
        let events_refused = Family::<Reason, Counter>::default();
        let open_connections = Gauge::default();
        let queue_depth = Gauge::default();
        let latency_buckets = || {
            Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        };
        let batch_ack_seconds = latency_buckets();
        let query_seconds = latency_buckets();
        let backlog_bytes = Gauge::default();
        let oldest_pending_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let events_dead_lettered = Counter::default();
        let bulk_retries = Family::<Reason, Counter>::default();
        let bulk_seconds = latency_buckets();
        let wal_damaged = Counter::default();
        let wal_skipped_bytes = Counter::default();
        let index_failures = Counter::default();
        let policy_dropped = Family::<Rule, Counter>::default();
        let policy_reduced = Family::<Rule, Counter>::default();
        let routed = Family::<TopicLabel, Counter>::default();
        registry.register(
            "routed_events",
            "Events of accepted batches also stored in a route's topic, by that topic (an event routed there by two routes counts once)",
            routed.clone(),
        );
        registry.register(
            "policy_events_dropped",
            "Events of accepted batches not stored because the topic's policy does not record them, by rule (its index, none when no rule matched, policy-omitted-stage)",
            policy_dropped.clone(),
        );
        registry.register(
            "policy_events_reduced",
            "Events stored with less than the kube-apiserver sent (bodies or managed fields removed) because of the topic's policy, by rule",
            policy_reduced.clone(),
        );
        registry.register(
            "events_received",
            "Audit events accepted by the webhook",
            events_received.clone(),
        );
        registry.register(
            "events_stored",
            "Audit events indexed into the store",
            events_stored.clone(),
        );
        registry.register(
            "batches_rejected",
            "Webhook batches refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "events_refused",
            "Events of accepted batches left out, by reason (future: over an hour ahead; past-retention: older than the topic keeps)",
            events_refused.clone(),
        );
        registry.register(
            "open_connections",
            "Connections open to the webhook and API port",
            open_connections.clone(),
        );
        registry.register(
            "queue_depth",
            "Batches waiting for the write-ahead log",
            queue_depth.clone(),
        );
        registry.register(
            "batch_ack_seconds",
            "From receiving a batch to acknowledging it durable",
            batch_ack_seconds.clone(),
        );
        registry.register(
            "query_seconds",
            "Search and stats query latency",
            query_seconds.clone(),
        );
        registry.register(
            "backlog_bytes",
            "Bytes of the write-ahead log the store has not taken in yet",
            backlog_bytes.clone(),
        );
        registry.register(
            "oldest_pending_seconds",
            "Age of the oldest event read from the log and not yet in the store",
            oldest_pending_seconds.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Events the store refused for good, kept in the dead-letter file",
            events_dead_lettered.clone(),
        );
        registry.register(
            "bulk_retries",
            "Bulk requests or items sent again to OpenSearch, by reason",
            bulk_retries.clone(),
        );
        registry.register(
            "bulk_seconds",
            "OpenSearch bulk request latency",
            bulk_seconds.clone(),
        );
        registry.register(
            "wal_damaged",
            "Places in the write-ahead log that could not be read as records (each segment is copied to the quarantine directory)",
            wal_damaged.clone(),
        );
        registry.register(
            "wal_skipped_bytes",
            "Bytes of the write-ahead log passed over as damaged, or cut as a torn tail",
            wal_skipped_bytes.clone(),
        );
        registry.register(
            "index_failures",
            "Times indexing or committing into the embedded store failed; the batches are retried from the log",
            index_failures.clone(),
        );
        let notifications_sent = Family::<ReceiverLabel, Counter>::default();
        let notifications_failed = Family::<ReceiverLabel, Counter>::default();
        let notifications_dropped = Family::<ReceiverLabel, Counter>::default();
        let notification_queue_depth = Family::<ReceiverLabel, Gauge>::default();
        registry.register(
            "notifications_sent",
            "Alert notifications a receiver accepted, by receiver",
            notifications_sent.clone(),
        );
        registry.register(
            "notifications_failed",
            "Attempts to send alert notifications that failed (no answer, 5xx, 429, or refused), by receiver; failed sends are retried with back-off",
            notifications_failed.clone(),
        );
        registry.register(
            "notifications_dropped",
            "Alert notifications never sent, by receiver: the oldest when the receiver's queue was full, or refused by it (4xx)",
            notifications_dropped.clone(),
        );
        registry.register(
            "notification_queue_depth",
            "Alert notifications waiting for a receiver, by receiver",
            notification_queue_depth.clone(),
        );
        let node_last_batch =
            Family::<NodeLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let alerts_firing = Family::<AlertLabel, Gauge>::default();
        let alert_rules = Gauge::default();
        let alert_evaluation_seconds =
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
        let alert_evaluator = Gauge::default();
        registry.register(
            "alert_evaluation_seconds",
            "With OpenSearch: how long the evaluating replica took to count every alert rule's window in the store, per tick",
            alert_evaluation_seconds.clone(),
        );
        registry.register(
            "alert_evaluator",
            "With OpenSearch: 1 on the replica that evaluates the alert rules for every replica",
            alert_evaluator.clone(),
        );
        let alerts_fired = Family::<AlertLabel, Counter>::default();
        let data_disk_free_bytes = Gauge::default();
        let data_disk_size_bytes = Gauge::default();
        registry.register(
            "node_last_batch_timestamp_seconds",
            "When the webhook last acknowledged a batch from a control-plane node (the `node` the agent writes into its kube-apiserver's webhook URL), as Unix time",
            node_last_batch.clone(),
        );
        registry.register(
            "alerts_firing",
            "Groups of an alert rule firing now",
            alerts_firing.clone(),
        );
        registry.register(
            "alert_rules",
            "Alert rules evaluated on acknowledged events",
            alert_rules.clone(),
        );
        registry.register(
            "alerts_fired",
            "Times a group of an alert rule started firing",
            alerts_fired.clone(),
        );
        registry.register(
            "data_disk_free_bytes",
            "Bytes free for the collector on the disk of its data directory",
            data_disk_free_bytes.clone(),
        );
        registry.register(
            "data_disk_size_bytes",
            "Size of the disk of the collector's data directory",
            data_disk_size_bytes.clone(),
        );
        Metrics {
            node_last_batch,
            alerts_firing,
            alert_rules,
            alert_evaluation_seconds,
            alert_evaluator,
            alerts_fired,
            data_disk_free_bytes,
            data_disk_size_bytes,
            notifications_sent,
            notifications_failed,
            notifications_dropped,
            notification_queue_depth,
            routed,
            policy_dropped,
            policy_reduced,
            wal_damaged,
            wal_skipped_bytes,
            index_failures,
            backlog_bytes,
            oldest_pending_seconds,
            events_dead_lettered,
            bulk_retries,
            bulk_seconds,
            events_received,
            events_stored,
            rejected,
            events_refused,
            open_connections,
            queue_depth,
            batch_ack_seconds,
            query_seconds,
            registry: Arc::new(registry),
        }
    }

    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn refuse_event(&self, reason: &str) {
        self.events_refused
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn bulk_retry(&self, reason: &str) {
        self.bulk_retries
            .get_or_create(&Reason {
                reason: reason.to_string(),
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
