//! What intake takes from the catalog: each topic's policy, compiled once per change, so that an
//! event costs one evaluation and, when it is kept as it is, no copy; each topic's routes, their
//! queries parsed once per change; and each topic's retention, for refusing events older than it.
//!
//! The catalog is reread every [`POLICY_REFRESH`] in the background, never per batch (the
//! OpenSearch catalog is a request away, and the webhook goes on while OpenSearch is down), so a
//! change made through another replica (one OpenSearch catalog shared by all) is followed within
//! about that long; a policy set through this replica is enforced before its API call answers.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use clusteraudit_core::policy::{
    Evaluator, RequestAttributes,
    enforce::{DropReason, Enforced, OMITTED_STAGE_LABEL, enforce, rule_label},
};
use clusteraudit_core::query::{Query, matches, parse_matchable};
use clusteraudit_store::{AuditStore, Catalog, catalog::TopicRoute};

/// How often the catalog is reread for policies set elsewhere.
pub const POLICY_REFRESH: Duration = Duration::from_secs(1);

/// A topic's policy, ready to evaluate.
pub struct Compiled {
    pub hash: String,
    pub evaluator: Evaluator,
}

impl Compiled {
    /// What the policy makes of one event, counted in `tally`.
    pub fn judge(
        &self,
        raw: &str,
        event: &clusteraudit_core::audit::Event,
        tally: &mut Tally,
    ) -> Enforced {
        let decision = self.evaluator.evaluate(&RequestAttributes::of_event(event));
        let enforced = enforce(raw, event, decision);
        match &enforced {
            Enforced::Keep => {}
            Enforced::Reduce(_) => tally.add_reduced(Label::Rule(decision.rule)),
            Enforced::Drop(DropReason::OmittedStage) => tally.add_dropped(Label::OmittedStage),
            Enforced::Drop(DropReason::LevelNone { rule }) => tally.add_dropped(Label::Rule(*rule)),
        }
        enforced
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Label {
    Rule(Option<usize>),
    OmittedStage,
}

impl Label {
    fn text(self) -> String {
        match self {
            Label::Rule(rule) => rule_label(rule),
            Label::OmittedStage => OMITTED_STAGE_LABEL.to_string(),
        }
    }
}

/// A batch's events dropped and reduced, by rule; counted in /metrics once the batch is taken.
#[derive(Default, Debug)]
pub struct Tally {
    dropped: Vec<(Label, u64)>,
    reduced: Vec<(Label, u64)>,
}

impl Tally {
    fn bump(counts: &mut Vec<(Label, u64)>, label: Label) {
        // A batch meets few rules: a short list beats a map.
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => counts.push((label, 1)),
        }
    }

    fn add_dropped(&mut self, label: Label) {
        Self::bump(&mut self.dropped, label);
    }

    fn add_reduced(&mut self, label: Label) {
        Self::bump(&mut self.reduced, label);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }

    pub fn reduced(&self) -> u64 {
        self.reduced.iter().map(|(_, n)| n).sum()
    }

    pub fn record(&self, metrics: &crate::metrics::Metrics) {
        for (family, counts) in [
            (&metrics.policy_dropped, &self.dropped),
            (&metrics.policy_reduced, &self.reduced),
        ] {
            for (label, n) in counts {
                family
                    .get_or_create(&crate::metrics::Rule { rule: label.text() })
                    .inc_by(*n);
            }
        }
    }
}

/// A topic's routes, their queries parsed.
pub struct Routes {
    /// As in the catalog, to tell a change.
    source: Vec<TopicRoute>,
    routes: Vec<(Query, String)>,
}

impl Routes {
    fn compile(source: &[TopicRoute]) -> Routes {
        let routes = source
            .iter()
            .filter_map(|route| match parse_matchable(&route.query) {
                Ok(query) => Some((query, route.topic_id.clone())),
                // The catalog refuses such a route; one written by a later version is left out
                // rather than routing everything.
                Err(err) => {
                    tracing::warn!(query = %route.query, error = %err, "skipping a route whose query does not parse");
                    None
                }
            })
            .collect();
        Routes {
            source: source.to_vec(),
            routes,
        }
    }

    /// The topics an event goes to besides its own, each once, in the order of the routes.
    pub fn targets(&self, event: &clusteraudit_core::audit::Event) -> Vec<&str> {
        let mut targets: Vec<&str> = Vec::new();
        for (query, topic) in &self.routes {
            if !targets.contains(&topic.as_str()) && matches(query, event) {
                targets.push(topic);
            }
        }
        targets
    }
}

/// The compiled policy of each topic that has one.
#[derive(Default)]
pub struct Enforcement {
    by_topic: RwLock<HashMap<String, Arc<Compiled>>>,
    /// The routes of each topic that has some.
    routes: RwLock<HashMap<String, Arc<Routes>>>,
    /// Each topic's retention in days.
    retention: RwLock<HashMap<String, u32>>,
    /// One catalog read at a time: a periodic read that began before an edit cannot land after
    /// the edit's own read and bring the old policy back.
    reading: tokio::sync::Mutex<()>,
}

impl Enforcement {
    /// The policy the topic's events are held to now, if any.
    pub fn for_topic(&self, topic: &str) -> Option<Arc<Compiled>> {
        self.by_topic
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }

    /// The topic's routes, if it has any.
    pub fn routes_for(&self, topic: &str) -> Option<Arc<Routes>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }

    /// The topic's retention in days; none while the catalog has not been read with it.
    pub fn retention_days(&self, topic: &str) -> Option<u32> {
        self.retention
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied()
    }

    /// Takes the catalog's retentions and policies; only a policy whose hash changed is compiled
    /// again.
    pub fn update(&self, catalog: &Catalog) {
        *self.retention.write().unwrap_or_else(|e| e.into_inner()) = catalog
            .topics()
            .iter()
            .map(|t| (t.id.clone(), t.retention_days))
            .collect();
        self.update_routes(catalog);
        let current = self
            .by_topic
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unchanged = current.len() == catalog.policies().len()
            && catalog
                .policies()
                .iter()
                .all(|p| current.get(&p.topic_id).is_some_and(|c| c.hash == p.hash));
        if unchanged {
            return;
        }
        let next: HashMap<String, Arc<Compiled>> = catalog
            .policies()
            .iter()
            .map(|p| {
                let compiled = match current.get(&p.topic_id) {
                    Some(c) if c.hash == p.hash => c.clone(),
                    _ => {
                        tracing::info!(topic = %p.topic_id, hash = %p.hash, "enforcing a new policy");
                        Arc::new(Compiled {
                            hash: p.hash.clone(),
                            evaluator: Evaluator::new(&p.policy),
                        })
                    }
                };
                (p.topic_id.clone(), compiled)
            })
            .collect();
        for topic in current.keys().filter(|t| !next.contains_key(*t)) {
            tracing::info!(%topic, "no longer enforcing a policy");
        }
        *self.by_topic.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    fn update_routes(&self, catalog: &Catalog) {
        let current = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unchanged = current.len() == catalog.all_routes().len()
            && catalog.all_routes().iter().all(|r| {
                current
                    .get(&r.topic_id)
                    .is_some_and(|c| c.source == r.routes)
            });
        if unchanged {
            return;
        }
        let next: HashMap<String, Arc<Routes>> = catalog
            .all_routes()
            .iter()
            .map(|r| {
                let compiled = match current.get(&r.topic_id) {
                    Some(c) if c.source == r.routes => c.clone(),
                    _ => {
                        tracing::info!(topic = %r.topic_id, routes = r.routes.len(), "routing by new routes");
                        Arc::new(Routes::compile(&r.routes))
                    }
                };
                (r.topic_id.clone(), compiled)
            })
            .collect();
        for topic in current.keys().filter(|t| !next.contains_key(*t)) {
            tracing::info!(%topic, "no longer routing");
        }
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    /// Reads the catalog once, waiting at most a few seconds (a store that does not answer
    /// leaves the policies as they were).
    pub async fn refresh(&self, store: &Arc<dyn AuditStore>) {
        let _reading = self.reading.lock().await;
        match tokio::time::timeout(Duration::from_secs(5), store.catalog()).await {
            Ok(Ok(catalog)) => self.update(&catalog),
            Ok(Err(err)) => tracing::debug!(error = %err, "rereading the policies failed"),
            Err(_) => tracing::debug!("rereading the policies timed out"),
        }
    }

    /// Rereads the catalog every [`POLICY_REFRESH`] for as long as `self` lives.
    pub fn follow(self: &Arc<Self>, store: Arc<dyn AuditStore>) {
        let enforcement = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLICY_REFRESH).await;
                let Some(enforcement) = enforcement.upgrade() else {
                    return;
                };
                enforcement.refresh(&store).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusteraudit_core::audit::{Event, Level, Policy, PolicyRule};
    use clusteraudit_store::{CatalogEdit, catalog::SystemOrigin};

    fn policy(level: Level) -> Box<Policy> {
        Box::new(Policy {
            api_version: "audit.k8s.io/v1".into(),
            kind: "Policy".into(),
            metadata: None,
            rules: vec![PolicyRule::at(level)],
            omit_stages: vec![],
            omit_managed_fields: None,
        })
    }

    #[test]
    fn a_policy_is_compiled_once_per_change_and_counted_by_rule() {
        let mut catalog = Catalog::default();
        catalog
            .apply(&CatalogEdit::Initialize, &mut SystemOrigin)
            .unwrap();
        let topic = catalog.route().to_string();
        let set = |catalog: &mut Catalog, level| {
            catalog
                .apply(
                    &CatalogEdit::SetPolicy {
                        topic_id: topic.clone(),
                        policy: policy(level),
                    },
                    &mut SystemOrigin,
                )
                .unwrap();
        };
        let enforcement = Enforcement::default();
        enforcement.update(&catalog);
        assert!(enforcement.for_topic(&topic).is_none());
        set(&mut catalog, Level::Metadata);
        enforcement.update(&catalog);
        let first = enforcement.for_topic(&topic).unwrap();
        enforcement.update(&catalog);
        assert!(Arc::ptr_eq(&first, &enforcement.for_topic(&topic).unwrap()));
        set(&mut catalog, Level::None);
        enforcement.update(&catalog);
        let second = enforcement.for_topic(&topic).unwrap();
        assert_ne!(second.hash, first.hash);

        let raw = r#"{"level":"RequestResponse","auditID":"a","stage":"ResponseComplete","requestURI":"/api","verb":"get","user":{"username":"u"},"requestObject":{"a":1},"stageTimestamp":"2026-11-30T10:00:00Z"}"#;
        let event: Event = serde_json::from_str(raw).unwrap();
        let mut tally = Tally::default();
        assert!(matches!(
            first.judge(raw, &event, &mut tally),
            Enforced::Reduce(_)
        ));
        assert!(matches!(
            second.judge(raw, &event, &mut tally),
            Enforced::Drop(_)
        ));
        assert!(matches!(
            second.judge(raw, &event, &mut tally),
            Enforced::Drop(_)
        ));
        assert_eq!((tally.reduced(), tally.dropped()), (1, 2));
        let metrics = crate::metrics::Metrics::new();
        tally.record(&metrics);
        let text = metrics.encode();
        assert!(
            text.contains(r#"clusteraudit_collector_policy_events_dropped_total{rule="0"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"clusteraudit_collector_policy_events_reduced_total{rule="0"} 1"#));

        catalog
            .apply(
                &CatalogEdit::DeletePolicy {
                    topic_id: topic.clone(),
                },
                &mut SystemOrigin,
            )
            .unwrap();
        enforcement.update(&catalog);
        assert!(enforcement.for_topic(&topic).is_none());
    }

    #[test]
    fn routes_are_compiled_once_per_change_and_route_each_event_once_per_topic() {
        let mut catalog = Catalog::default();
        catalog
            .apply(&CatalogEdit::Initialize, &mut SystemOrigin)
            .unwrap();
        let main = catalog.route().to_string();
        let logset_id = catalog.topic(&main).unwrap().logset_id.clone();
        let topic = |catalog: &mut Catalog, name: &str| {
            let edit = CatalogEdit::CreateTopic {
                logset_id: logset_id.clone(),
                name: name.into(),
                retention_days: 365,
            };
            match catalog.apply(&edit, &mut SystemOrigin).unwrap().0 {
                clusteraudit_store::Edited::Topic { topic, .. } => topic.id,
                other => panic!("{other:?}"),
            }
        };
        let security = topic(&mut catalog, "security");
        let deletes = topic(&mut catalog, "deletes");
        let route = |query: &str, topic_id: &str| TopicRoute {
            query: query.into(),
            topic_id: topic_id.into(),
        };
        let routes = vec![
            route("resource:secrets", &security),
            route("verb:delete", &deletes),
            route("namespace:kube-system", &security),
        ];
        catalog
            .apply(
                &CatalogEdit::SetRoutes {
                    topic_id: main.clone(),
                    routes,
                },
                &mut SystemOrigin,
            )
            .unwrap();
        let enforcement = Enforcement::default();
        assert!(enforcement.routes_for(&main).is_none());
        enforcement.update(&catalog);
        let first = enforcement.routes_for(&main).unwrap();
        enforcement.update(&catalog);
        assert!(Arc::ptr_eq(&first, &enforcement.routes_for(&main).unwrap()));
        assert!(enforcement.routes_for(&security).is_none());

        let event = |verb: &str, resource: &str, namespace: &str| -> Event {
            serde_json::from_value(serde_json::json!({
                "level": "Metadata", "auditID": "a", "stage": "ResponseComplete",
                "requestURI": "/api", "verb": verb, "user": {"username": "u"},
                "objectRef": {"resource": resource, "namespace": namespace},
                "stageTimestamp": "2026-11-30T10:00:00Z",
            }))
            .unwrap()
        };
        assert_eq!(
            first.targets(&event("get", "secrets", "kube-system")),
            [security.as_str()],
            "two routes to one topic store the event there once"
        );
        assert_eq!(
            first.targets(&event("delete", "secrets", "default")),
            [security.as_str(), deletes.as_str()]
        );
        assert!(first.targets(&event("get", "pods", "default")).is_empty());

        catalog
            .apply(
                &CatalogEdit::SetRoutes {
                    topic_id: main.clone(),
                    routes: vec![],
                },
                &mut SystemOrigin,
            )
            .unwrap();
        enforcement.update(&catalog);
        assert!(enforcement.routes_for(&main).is_none());
    }
}
