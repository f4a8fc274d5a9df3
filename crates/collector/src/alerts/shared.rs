//! Alerting when several replicas share one store (OpenSearch). A replica sees only the batches
//! that reached it, so none can count a rule's window from its own stream; the store has seen
//! every event. One replica, the holder of a lease kept in the store, counts each rule's window
//! there every tick, fires and resolves, and notifies; the others serve its published view.
//! Every replica publishes the nodes it took batches from, so the audit gap, `GET /v1/nodes`
//! and the rollout's delivery gate see every node whichever replica its batches reach.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clusteraudit_core::alert::EvaluatorLease;
use clusteraudit_store::{GroupCountRequest, SharedState, WriteIf};
use futures::StreamExt;
use serde_json::{Value, json};

use super::{Alerting, KeptFiring, RuleSet, lock, micros_to_time};

/// How often the evaluating replica counts every rule, and every replica publishes its nodes.
pub const SHARED_TICK: Duration = Duration::from_secs(2);
/// How long the evaluator's lease lasts without renewal before another replica takes over.
const LEASE: Duration = Duration::from_secs(15);
/// How often the evaluator writes its lease (and its view with it): well within the lease, and
/// not every tick, since each write waits behind the shippers' bulk requests in OpenSearch's
/// write queue.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Topics counted at once.
const TOPICS_IN_FLIGHT: usize = 4;
/// One topic's count deadline: a slow store delays its rules to the next tick.
const COUNT_TIMEOUT: Duration = Duration::from_secs(10);

const EVALUATOR_DOC: &str = "alerts-evaluator";
const EXPECTED_NODES_DOC: &str = "alerts-expected-nodes";
const REPLICA_KIND: &str = "replica-nodes";

pub struct SharedMode {
    state: Arc<dyn SharedState>,
    replica: String,
    leading: AtomicBool,
    /// When this replica last wrote the lease, while it leads.
    renewed: Mutex<Option<std::time::Instant>>,
    /// The firing groups as last written with the lease: when they change, the lease is written
    /// at the next tick, so that a successor does not fire them anew.
    published_firing: Mutex<Value>,
    /// The evaluator's name and view as last read, for `GET /v1/alerts` on the other replicas.
    evaluator: Mutex<Option<(String, Value)>>,
    pub(super) no_rules: Arc<RuleSet>,
}

impl SharedMode {
    pub(super) fn view(&self, alerting: &Alerting) -> Value {
        let mut view = if self.leading.load(Ordering::SeqCst) {
            alerting.own_view()
        } else {
            match &*lock(&self.evaluator) {
                Some((_, view)) if view.is_object() => view.clone(),
                _ => alerting.own_view(),
            }
        };
        let evaluator = if self.leading.load(Ordering::SeqCst) {
            Some(self.replica.clone())
        } else {
            lock(&self.evaluator).as_ref().map(|(name, _)| name.clone())
        };
        if let Value::Object(map) = &mut view {
            map.insert("evaluator".into(), evaluator.into());
            map.insert("replica".into(), self.replica.clone().into());
        }
        view
    }
}

fn micros(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
}

impl Alerting {
    /// Evaluates on the shared store's counts from now on, as `replica` (unique among the
    /// replicas: the pod's name). Call before [`Alerting::start`].
    pub fn share(&self, state: Arc<dyn SharedState>, replica: String) {
        let _ = self.shared.set(SharedMode {
            state,
            replica,
            leading: AtomicBool::new(false),
            renewed: Mutex::new(None),
            published_firing: Mutex::new(Value::Null),
            evaluator: Mutex::new(None),
            no_rules: Arc::new(RuleSet::default()),
        });
    }

    /// Records the nodes the operator expects to send, for every replica.
    pub async fn expect_nodes(
        &self,
        nodes: &[String],
    ) -> Result<(), clusteraudit_store::StoreError> {
        self.nodes.expect(nodes);
        if let Some(shared) = self.shared.get() {
            shared
                .state
                .write_shared(
                    EXPECTED_NODES_DOC.into(),
                    "expected-nodes",
                    json!({ "expected": nodes }),
                    WriteIf::Always,
                )
                .await?;
        }
        Ok(())
    }

    /// One evaluation tick of a replica sharing the store.
    async fn shared_tick(&self, shared: &SharedMode) {
        let now = SystemTime::now();
        if !self.hold_lease(shared, now).await {
            // Only the evaluator notifies; the others keep the nodes' gaps for their own view.
            let _ = self.nodes.advance(now);
            return;
        }
        let counting = std::time::Instant::now();
        self.count_from_store(shared, now).await;
        self.metrics
            .alert_evaluation_seconds
            .observe(counting.elapsed().as_secs_f64());
        self.advance(now);
        if self.firing_to_keep() != *lock(&shared.published_firing) {
            *lock(&shared.renewed) = None;
        }
    }

    /// Publishes this replica's nodes and takes the others' and the expected nodes.
    async fn exchange_nodes(&self, shared: &SharedMode, now: SystemTime) {
        let own: BTreeMap<String, Value> = self
            .nodes
            .own()
            .into_iter()
            .map(|(node, (at, batches))| {
                (
                    node,
                    json!({"lastBatchMicros": micros(at), "batches": batches}),
                )
            })
            .collect();
        let published = shared
            .state
            .write_shared(
                format!("replica-{}", shared.replica),
                REPLICA_KIND,
                json!({"replica": shared.replica, "atMicros": micros(now), "nodes": own}),
                WriteIf::Always,
            )
            .await;
        if let Err(err) = published {
            tracing::debug!(error = %err, "publishing this replica's nodes failed");
        }
        match shared.state.list_shared(REPLICA_KIND).await {
            Ok(replicas) => {
                let mut peers: BTreeMap<String, (SystemTime, u64)> = BTreeMap::new();
                for replica in replicas
                    .iter()
                    .filter(|r| r["replica"].as_str() != Some(shared.replica.as_str()))
                {
                    let Some(nodes) = replica["nodes"].as_object() else {
                        continue;
                    };
                    for (node, seen) in nodes.iter().take(super::MAX_NODES) {
                        if !super::valid_node_name(node) {
                            continue;
                        }
                        let at = micros_to_time(seen["lastBatchMicros"].as_i64().unwrap_or(0));
                        let batches = seen["batches"].as_u64().unwrap_or(0);
                        let entry = peers.entry(node.clone()).or_insert((at, 0));
                        entry.0 = entry.0.max(at);
                        entry.1 += batches;
                    }
                }
                self.nodes.merge_peers(peers);
            }
            Err(err) => tracing::debug!(error = %err, "reading the other replicas' nodes failed"),
        }
        match shared.state.read_shared(EXPECTED_NODES_DOC.into()).await {
            Ok(Some((doc, _))) => {
                let expected: Vec<String> = doc["expected"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect();
                let mut sorted = expected.clone();
                sorted.sort();
                let mut current = self.nodes.expected();
                current.sort();
                if sorted != current {
                    self.nodes.expect(&expected);
                }
            }
            Ok(None) => {}
            Err(err) => tracing::debug!(error = %err, "reading the expected nodes failed"),
        }
    }

    /// Takes or renews the evaluator's lease, publishing this replica's view and firing groups
    /// with it; false when another replica holds it.
    async fn hold_lease(&self, shared: &SharedMode, now: SystemTime) -> bool {
        let started = std::time::Instant::now();
        if shared.leading.load(Ordering::SeqCst)
            && lock(&shared.renewed).is_some_and(|at| at.elapsed() < RENEW_EVERY)
        {
            return true;
        }
        let current = match shared.state.read_shared(EVALUATOR_DOC.into()).await {
            Ok(current) => current,
            Err(err) => {
                tracing::debug!(error = %err, "reading the evaluator's lease failed");
                // Without the store nothing can be counted; whoever holds the lease keeps it.
                return false;
            }
        };
        let lease = current.as_ref().and_then(|(doc, _)| {
            serde_json::from_value::<EvaluatorLease>(doc["lease"].clone()).ok()
        });
        if !EvaluatorLease::may_take(lease.as_ref(), &shared.replica, micros(now), LEASE) {
            let (doc, _) = current.expect("a lease held by another replica was read");
            let holder = lease.map(|l| l.holder).unwrap_or_default();
            *lock(&shared.evaluator) = Some((holder, doc["view"].clone()));
            self.step_down(shared);
            return false;
        }
        let was_leading = shared.leading.load(Ordering::SeqCst);
        let kept_firing = if was_leading {
            self.firing_to_keep()
        } else {
            // Taking over: what the last evaluator had firing goes on under its start.
            current
                .as_ref()
                .map(|(doc, _)| doc["firing"].clone())
                .unwrap_or(Value::Null)
        };
        let doc = json!({
            "lease": EvaluatorLease { holder: shared.replica.clone(), renewed_micros: micros(now) },
            "firing": kept_firing,
            "view": if was_leading { self.own_view() } else { Value::Null },
        });
        let condition = match &current {
            None => WriteIf::Absent,
            Some((_, version)) => WriteIf::Unchanged(*version),
        };
        match shared
            .state
            .write_shared(EVALUATOR_DOC.into(), "evaluator", doc, condition)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Another replica wrote first; it evaluates.
                self.step_down(shared);
                return false;
            }
            Err(err) => {
                tracing::debug!(error = %err, "renewing the evaluator's lease failed");
                // Past its lease another replica may have taken over: stop rather than send twice.
                let expired = lock(&shared.renewed).is_none_or(|at| at.elapsed() >= LEASE);
                if expired {
                    self.step_down(shared);
                    return false;
                }
                return was_leading;
            }
        }
        *lock(&shared.renewed) = Some(started);
        *lock(&shared.published_firing) = kept_firing.clone();
        if !was_leading {
            let firing: Vec<KeptFiring> = serde_json::from_value(kept_firing).unwrap_or_default();
            tracing::info!(replica = %shared.replica, firing = firing.len(), "this replica evaluates the alert rules for every replica now");
            *lock(&self.restored) = KeptFiring::restore(firing);
            shared.leading.store(true, Ordering::SeqCst);
            self.metrics.alert_evaluator.set(1);
            // The gaps this replica followed meanwhile go on from here.
            if let Some(notifier) = &self.notifier {
                for (node, since) in self.nodes.firing() {
                    notifier.fire(self.gap_notification(&node, since, None));
                }
            }
        }
        true
    }

    /// Another replica evaluates: forget what this one had firing without resolving it, and
    /// count from scratch should the lease come back.
    fn step_down(&self, shared: &SharedMode) {
        *lock(&shared.renewed) = None;
        if !shared.leading.swap(false, Ordering::SeqCst) {
            return;
        }
        self.metrics.alert_evaluator.set(0);
        tracing::info!(replica = %shared.replica, "another replica evaluates the alert rules now");
        if let Some(notifier) = &self.notifier {
            notifier.hand_over();
        }
        let mut state = lock(&self.state);
        for (name, rule) in state.rules.iter_mut() {
            rule.window =
                clusteraudit_core::alert::Window::new(rule.compiled.rule.clone(), self.max_groups);
            rule.firing.clear();
            rule.ready = false;
            // What fires is counted by the evaluator's metrics, not twice.
            self.metrics
                .alerts_firing
                .get_or_create(&super::AlertLabel {
                    alertname: name.clone(),
                })
                .set(0);
        }
        self.metrics
            .alerts_firing
            .get_or_create(&super::AlertLabel {
                alertname: super::AUDIT_GAP.into(),
            })
            .set(0);
    }

    fn firing_to_keep(&self) -> Value {
        serde_json::to_value(KeptFiring::of(&lock(&self.state).rules)).unwrap_or(Value::Null)
    }

    /// Counts every rule's window in the store and puts the counts in its window: one call per
    /// topic, which the store answers with few searches.
    async fn count_from_store(&self, shared: &SharedMode, now: SystemTime) {
        let rules: Vec<Arc<super::Compiled>> = self.rules().rules.clone();
        let now_micros = micros(now);
        let mut by_topic: BTreeMap<String, Vec<Arc<super::Compiled>>> = BTreeMap::new();
        for compiled in rules {
            by_topic
                .entry(compiled.topic.clone())
                .or_default()
                .push(compiled);
        }
        let counted: Vec<_> = futures::stream::iter(by_topic)
            .map(|(topic, rules)| {
                let requests = rules
                    .iter()
                    .map(|compiled| GroupCountRequest {
                        query: compiled.rule.query.clone(),
                        from: now_micros - compiled.rule.window.as_micros() as i64,
                        // The webhook takes events up to an hour ahead; the live count counts
                        // them too.
                        to: now_micros + 3_600_000_000,
                        group_by: compiled
                            .rule
                            .group_by
                            .iter()
                            .map(|field| field.search_field())
                            .collect(),
                        max_groups: self.max_groups,
                    })
                    .collect();
                let state = shared.state.clone();
                async move {
                    let counts = tokio::time::timeout(
                        COUNT_TIMEOUT,
                        state.count_groups(topic.clone(), requests),
                    )
                    .await;
                    (topic, rules, counts)
                }
            })
            .buffer_unordered(TOPICS_IN_FLIGHT)
            .collect()
            .await;
        let mut state = lock(&self.state);
        for (topic, rules, counts) in counted {
            let counts = match counts {
                Ok(Ok(counts)) => counts,
                Ok(Err(err)) => {
                    tracing::warn!(%topic, error = %err, "counting the alert rules' windows in the store failed");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(%topic, "counting the alert rules' windows in the store timed out");
                    continue;
                }
            };
            for (compiled, counts) in rules.into_iter().zip(counts) {
                let counts = match counts {
                    Ok(counts) => counts,
                    Err(err) => {
                        tracing::warn!(rule = %compiled.spec.name, error = %err, "counting the rule's window in the store failed");
                        continue;
                    }
                };
                let Some(rule) = state.rules.get_mut(&compiled.spec.name) else {
                    continue;
                };
                if !Arc::ptr_eq(&rule.compiled, &compiled) {
                    continue;
                }
                if !counts.complete {
                    tracing::warn!(rule = %compiled.spec.name, groups = counts.groups.len(), "the rule's window holds more groups than it tracks; the rest are not counted");
                }
                rule.window.replace(counts.groups, now);
                rule.ready = true;
            }
        }
    }
}

/// Runs the shared ticks for as long as the process runs.
pub(super) fn start(alerting: Arc<Alerting>) {
    // The nodes' exchange on its own: its writes wait behind bulk requests, and evaluation must
    // not wait for them.
    let exchanging = alerting.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SHARED_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = exchanging.shared.get() else {
                return;
            };
            exchanging.exchange_nodes(shared, SystemTime::now()).await;
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SHARED_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(shared) = alerting.shared.get() else {
                return;
            };
            alerting.shared_tick(shared).await;
        }
    });
}
