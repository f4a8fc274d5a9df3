//! Alert rules evaluated on the stream of acknowledged events, and the nodes batches come from.
//!
//! The webhook matches each event it keeps against the compiled rules before the log append
//! (the event is decoded there already), and counts the matches only once the batch is
//! acknowledged: an alert never counts an event the kube-apiserver will send again. A task
//! advances every rule's window once a second and hands what starts or stops firing to the
//! notifier. The windows live in memory; when a rule appears (at start, or when it is set or
//! changed) its window is first filled from the store, so a restart neither forgets what fired nor
//! fires it anew.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::Args;
use clusteraudit_core::{
    alert::{
        Change, GapChange, GapWatch, Group, GroupAlert, Notification, Presentation, Rule, RuleSpec,
        Window, notification,
    },
    audit::Event,
    query::{Field, required_values},
};
use clusteraudit_store::{AuditStore, MAX_PAGE, SearchRequest, catalog::Catalog};
use serde_json::{Value, json};

use crate::{
    metrics::{AlertLabel, Metrics, NodeLabel},
    notify::{Notifier, NotifyArgs},
};

mod shared;
pub use shared::SHARED_TICK;

#[derive(Args, Debug, Clone)]
pub struct AlertArgs {
    #[command(flatten)]
    pub notify: NotifyArgs,
    /// The address people reach the collector's page at (e.g. https://audit.example.com): an
    /// alert's link (Alertmanager's generatorURL) opens the page's search there.
    #[arg(long, default_value = "https://clusteraudit-collector")]
    pub public_url: String,
    /// Groups one rule tracks at most; events of further groups are not counted (and counted in
    /// the logs), so a rule grouping by a value an attacker chooses cannot take the memory.
    #[arg(long, default_value_t = 10_000)]
    pub alert_max_groups: usize,
    /// A control-plane node the operator says audits, from which no batch arrived for this long,
    /// is in an audit gap (alert AuditGap); 0s: never.
    #[arg(long, default_value = "5m")]
    pub audit_gap_after: humantime::Duration,
}

/// Events a rule being filled remembers having counted live, at most (past it, an event both
/// acknowledged meanwhile and found in the store may count twice).
const MAX_COUNTED_LIVE: usize = 1_000_000;
/// How long a new rule waits before reading its window from the store: the embedded store
/// commits about once a second, so what was acknowledged before the rule is searchable then.
const FILL_DELAY: Duration = Duration::from_secs(2);

/// Events read back from the store to fill one rule's window, at most.
const REBUILD_MAX_EVENTS: usize = 100_000;
/// Firings kept for the page and the API.
const RECENT: usize = 100;
/// Nodes remembered at most: the webhook's callers are the control plane's kube-apiservers.
const MAX_NODES: usize = 256;

/// A rule as the webhook matches it.
#[derive(Debug)]
pub struct Compiled {
    pub spec: RuleSpec,
    rule: Rule,
    presentation: Presentation,
    /// The topic whose events it counts: the spec's, or the routed topic.
    topic: String,
}

/// The rules in force, as one snapshot the webhook takes per batch. Most rules name the
/// resource, verb or namespace they are about; those are only tried on events of it.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<Arc<Compiled>>,
    by_resource: HashMap<String, Vec<usize>>,
    by_verb: HashMap<String, Vec<usize>>,
    by_namespace: HashMap<String, Vec<usize>>,
    others: Vec<usize>,
}

/// An acknowledged event a rule counts.
pub struct Hit {
    rule: Arc<Compiled>,
    group: Group,
    at_micros: i64,
    /// Which event it is, for a rule still reading its window from the store.
    key: u64,
}

/// An event's identity, (auditID, stage), hashed.
fn event_key(event: &Event) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one((&event.audit_id, event.stage.as_str()))
}

impl Hit {
    /// The rule's name, the group and the event's time: what a window counts.
    pub fn parts(&self) -> (&str, &Group, i64) {
        (&self.rule.spec.name, &self.group, self.at_micros)
    }
}

impl RuleSet {
    fn new(rules: Vec<Arc<Compiled>>) -> RuleSet {
        let mut set = RuleSet::default();
        for (index, compiled) in rules.iter().enumerate() {
            let query = &compiled.rule.query;
            if let Some(resources) = required_values(query, Field::Resource) {
                for resource in resources {
                    set.by_resource
                        .entry(resource.to_string())
                        .or_default()
                        .push(index);
                }
            } else if let Some(verbs) = required_values(query, Field::Verb) {
                for verb in verbs {
                    set.by_verb.entry(verb.to_string()).or_default().push(index);
                }
            } else if let Some(namespaces) = required_values(query, Field::Namespace) {
                for namespace in namespaces {
                    set.by_namespace
                        .entry(namespace.to_string())
                        .or_default()
                        .push(index);
                }
            } else {
                set.others.push(index);
            }
        }
        set.rules = rules;
        set
    }

    /// Rules over `topic` that count every event from the start (no window read back first):
    /// what the benchmarks match with.
    pub fn for_topic(specs: &[RuleSpec], topic: &str) -> RuleSet {
        let compiled = specs
            .iter()
            .filter_map(|spec| {
                let (rule, presentation) = spec.compile().ok()?;
                Some(Arc::new(Compiled {
                    spec: spec.clone(),
                    rule,
                    presentation,
                    topic: topic.to_string(),
                }))
            })
            .collect();
        RuleSet::new(compiled)
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The matches of an event stored in `topic` and in the `routed` topics.
    pub fn observe(
        &self,
        topic: &str,
        routed: &[&str],
        event: &Event,
        at_micros: i64,
        hits: &mut Vec<Hit>,
    ) {
        let object = event.object_ref.as_ref();
        let candidates = object
            .and_then(|o| self.by_resource.get(o.resource.as_str()))
            .into_iter()
            .chain(self.by_verb.get(event.verb.as_str()))
            .chain(object.and_then(|o| self.by_namespace.get(o.namespace.as_str())))
            .flatten()
            .chain(&self.others);
        for compiled in candidates.map(|&i| &self.rules[i]) {
            if compiled.topic != topic && !routed.contains(&compiled.topic.as_str()) {
                continue;
            }
            if let Some(group) = compiled.rule.group_of(event) {
                hits.push(Hit {
                    rule: compiled.clone(),
                    group,
                    at_micros,
                    key: event_key(event),
                });
            }
        }
    }
}

struct RuleState {
    compiled: Arc<Compiled>,
    window: Window,
    /// Filled from the store before it is advanced.
    ready: bool,
    /// While it is being filled: the events counted as they were acknowledged, which the store
    /// may also return.
    counted_live: std::collections::HashSet<u64>,
    firing: HashMap<Group, (SystemTime, u64)>,
    last_fired: Option<SystemTime>,
}

#[derive(Clone)]
struct Recent {
    rule: String,
    group: BTreeMap<String, String>,
    query: String,
    topic: String,
    count: u64,
    fired_at: SystemTime,
    resolved_at: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    rules: BTreeMap<String, RuleState>,
    recent: VecDeque<Recent>,
}

pub struct Alerting {
    /// Where the firing groups are kept across restarts, so that a group still firing after a
    /// restart keeps the start Alertmanager knows it by.
    firing_file: Option<std::path::PathBuf>,
    /// What the file held at start: (rule, group) -> (the rule's spec, since).
    restored: Mutex<Restored>,
    rules: RwLock<Arc<RuleSet>>,
    state: Mutex<State>,
    notifier: Option<Notifier>,
    metrics: Metrics,
    search_url: String,
    max_groups: usize,
    refreshing: tokio::sync::Mutex<()>,
    /// Which nodes batches come from, and which are silent.
    pub nodes: Nodes,
    public_url: String,
    /// Set when several replicas share the store: then one of them evaluates the rules on the
    /// store's counts, and none counts live.
    shared: std::sync::OnceLock<shared::SharedMode>,
}

fn micros_to_time(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64)
}

fn time_text(at: SystemTime) -> String {
    jiff::Timestamp::try_from(at)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Alerting {
    pub fn new(
        args: &AlertArgs,
        metrics: &Metrics,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Arc<Alerting>, crate::notify::NotifyError> {
        let firing_file = data_dir.map(|dir| dir.join("alerts-firing.json"));
        let restored = KeptFiring::restore(
            firing_file
                .as_deref()
                .and_then(|path| std::fs::read(path).ok())
                .and_then(|bytes| serde_json::from_slice::<Vec<KeptFiring>>(&bytes).ok())
                .unwrap_or_default(),
        );
        let options = args.notify.options();
        let notifier = if options.receivers.is_empty() {
            None
        } else {
            Some(Notifier::start(options, metrics)?)
        };
        Ok(Arc::new(Alerting {
            firing_file,
            restored: Mutex::new(restored),
            rules: RwLock::default(),
            state: Mutex::default(),
            notifier,
            metrics: metrics.clone(),
            search_url: format!("{}/ui/search", args.public_url.trim_end_matches('/')),
            max_groups: args.alert_max_groups.max(1),
            refreshing: tokio::sync::Mutex::new(()),
            nodes: Nodes::new(args.audit_gap_after.into(), data_dir),
            public_url: args.public_url.trim_end_matches('/').to_string(),
            shared: std::sync::OnceLock::new(),
        }))
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The rules the webhook matches its events against: none when the store counts for all
    /// replicas.
    pub fn live_rules(&self) -> Arc<RuleSet> {
        match self.shared.get() {
            Some(shared) => shared.no_rules.clone(),
            None => self.rules(),
        }
    }

    /// Counts the matches of a batch the webhook acknowledged.
    pub fn record(&self, hits: Vec<Hit>) {
        if hits.is_empty() || self.shared.get().is_some() {
            return;
        }
        let mut state = lock(&self.state);
        for hit in hits {
            let Some(rule) = state.rules.get_mut(&hit.rule.spec.name) else {
                continue;
            };
            // A batch matched against rules replaced meanwhile counts for none of them.
            if !Arc::ptr_eq(&rule.compiled, &hit.rule) {
                continue;
            }
            if !rule.ready && rule.counted_live.len() < MAX_COUNTED_LIVE {
                rule.counted_live.insert(hit.key);
            }
            rule.window
                .count(hit.group, micros_to_time(hit.at_micros), 1);
        }
    }

    /// Takes the catalog's rules: unchanged ones keep their windows, new or changed ones are
    /// filled from the store first.
    pub async fn update(self: &Arc<Self>, store: &Arc<dyn AuditStore>, catalog: &Catalog) {
        let _refreshing = self.refreshing.lock().await;
        let current = self.rules();
        let unchanged = current.rules.len() == catalog.alerts().len()
            && current.rules.iter().zip(catalog.alerts()).all(|(c, spec)| {
                c.spec == *spec && (!spec.topic.is_empty() || c.topic == catalog.route())
            });
        if unchanged {
            return;
        }
        let mut next = Vec::new();
        let mut fresh = Vec::new();
        for spec in catalog.alerts() {
            let topic = if spec.topic.is_empty() {
                catalog.route().to_string()
            } else {
                spec.topic.clone()
            };
            if let Some(kept) = current
                .rules
                .iter()
                .find(|c| c.spec == *spec && c.topic == topic)
            {
                next.push(kept.clone());
                continue;
            }
            // The catalog holds only rules that compile.
            let Ok((rule, presentation)) = spec.compile() else {
                continue;
            };
            let compiled = Arc::new(Compiled {
                spec: spec.clone(),
                rule,
                presentation,
                topic,
            });
            fresh.push(compiled.clone());
            next.push(compiled);
        }
        {
            let mut state = lock(&self.state);
            let names: Vec<&str> = next.iter().map(|c| c.spec.name.as_str()).collect();
            let gone: Vec<String> = state
                .rules
                .keys()
                .filter(|name| !names.contains(&name.as_str()))
                .cloned()
                .collect();
            for name in gone {
                if let Some(rule) = state.rules.remove(&name) {
                    self.resolve_all(&rule, SystemTime::now());
                }
                self.metrics
                    .alerts_firing
                    .remove(&AlertLabel { alertname: name });
            }
            for compiled in &fresh {
                let previous = state.rules.insert(
                    compiled.spec.name.clone(),
                    RuleState {
                        compiled: compiled.clone(),
                        window: Window::new(compiled.rule.clone(), self.max_groups),
                        ready: false,
                        counted_live: Default::default(),
                        firing: HashMap::new(),
                        last_fired: None,
                    },
                );
                // A changed rule starts over: what its old version fired is resolved, and what
                // the new one finds fires under it.
                if let Some(previous) = previous {
                    self.resolve_all(&previous, SystemTime::now());
                }
            }
            self.metrics.alert_rules.set(next.len() as i64);
        }
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(RuleSet::new(next));
        for compiled in fresh {
            tracing::info!(rule = %compiled.spec.name, topic = %compiled.topic, "evaluating alert rule");
            if self.shared.get().is_some() {
                // The evaluating replica counts it from the store at its next tick.
                continue;
            }
            let alerting = self.clone();
            let store = store.clone();
            tokio::spawn(async move { alerting.fill_from_store(&store, compiled).await });
        }
    }

    /// Counts the rule's events already in the store within its window.
    /// Events acknowledged before the rule was in force are counted from the store; those
    /// acknowledged since were counted live and are not counted again.
    async fn fill_from_store(&self, store: &Arc<dyn AuditStore>, compiled: Arc<Compiled>) {
        tokio::time::sleep(FILL_DELAY).await;
        let now = crate::http::now_micros();
        let from = now - compiled.rule.window.as_micros() as i64 - 1_000_000;
        // The webhook takes events up to an hour ahead.
        let until = now + 3_600_000_000;
        let mut counts: HashMap<Group, Vec<(i64, u64)>> = HashMap::new();
        let mut cursor = None;
        let mut read = 0;
        let mut complete = true;
        loop {
            let request = SearchRequest {
                query: compiled.rule.query.clone(),
                from,
                to: until,
                limit: MAX_PAGE,
                cursor: cursor.take(),
            };
            let page = match tokio::time::timeout(
                Duration::from_secs(30),
                store.search(compiled.topic.clone(), request),
            )
            .await
            {
                Ok(Ok(page)) => page,
                Ok(Err(err)) => {
                    tracing::warn!(rule = %compiled.spec.name, error = %err, "reading the rule's window from the store failed; it counts from now");
                    complete = false;
                    break;
                }
                Err(_) => {
                    tracing::warn!(rule = %compiled.spec.name, "reading the rule's window from the store timed out; it counts from now");
                    complete = false;
                    break;
                }
            };
            for raw in &page.events {
                let Ok(event) = serde_json::from_str::<Event>(raw.get()) else {
                    continue;
                };
                let (Some(at), Some(group)) = (event.time_micros(), compiled.rule.group_of(&event))
                else {
                    continue;
                };
                counts
                    .entry(group)
                    .or_default()
                    .push((at, event_key(&event)));
            }
            read += page.events.len();
            match page.cursor {
                Some(next) if read < REBUILD_MAX_EVENTS && !page.events.is_empty() => {
                    cursor = Some(next)
                }
                Some(_) => {
                    complete = false;
                    break;
                }
                None => break,
            }
        }
        let mut state = lock(&self.state);
        let Some(rule) = state.rules.get_mut(&compiled.spec.name) else {
            return;
        };
        if !Arc::ptr_eq(&rule.compiled, &compiled) {
            return;
        }
        let counted_live = std::mem::take(&mut rule.counted_live);
        for (group, events) in counts {
            for (at, key) in events {
                if !counted_live.contains(&key) {
                    rule.window.count(group.clone(), micros_to_time(at), 1);
                }
            }
        }
        rule.ready = true;
        tracing::info!(rule = %compiled.spec.name, events = read, complete, "alert rule's window filled from the store");
    }

    /// Advances every window to `now` and notifies what started or stopped firing.
    pub fn advance(&self, now: SystemTime) {
        // Firing groups are kept (across restarts, and for the next evaluating replica) in
        // microseconds: a start kept to the nanosecond would come back as another start.
        let now = micros_to_time(
            now.duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros() as i64,
        );
        let mut state = lock(&self.state);
        let State { rules, recent } = &mut *state;
        let mut changed = false;
        for (name, rule) in rules.iter_mut() {
            if !rule.ready {
                continue;
            }
            for change in rule.window.advance(now) {
                changed = true;
                match change {
                    Change::Fired { group, count, at } => {
                        let restored = lock(&self.restored)
                            .remove(&(name.clone(), group.clone()))
                            .filter(|(spec, _)| *spec == rule.compiled.spec);
                        if let Some((_, since)) = restored {
                            // Still firing from before a restart: sent again as it was, not
                            // as a new firing.
                            rule.firing.insert(group.clone(), (since, count));
                            rule.last_fired = rule.last_fired.max(Some(since));
                            tracing::info!(rule = %name, group = ?group, count, "alert still firing after a restart");
                            if let Some(notifier) = &self.notifier {
                                let alert = GroupAlert {
                                    group: &group,
                                    count,
                                    since,
                                    resolved_at: None,
                                };
                                notifier.fire(self.notification(&rule.compiled, &alert));
                            }
                            continue;
                        }
                        rule.firing.insert(group.clone(), (at, count));
                        rule.last_fired = Some(at);
                        self.metrics
                            .alerts_fired
                            .get_or_create(&AlertLabel {
                                alertname: name.clone(),
                            })
                            .inc();
                        let alert = GroupAlert {
                            group: &group,
                            count,
                            since: at,
                            resolved_at: None,
                        };
                        let sent = self.notification(&rule.compiled, &alert);
                        tracing::info!(rule = %name, group = ?group, count, "alert firing");
                        recent.push_front(Recent {
                            rule: name.clone(),
                            group: group_labels(&rule.compiled, &group),
                            query: sent.annotations.get("query").cloned().unwrap_or_default(),
                            topic: rule.compiled.topic.clone(),
                            count,
                            fired_at: at,
                            resolved_at: None,
                        });
                        recent.truncate(RECENT);
                        if let Some(notifier) = &self.notifier {
                            notifier.fire(sent);
                        }
                    }
                    Change::Resolved { group, at } => {
                        let (since, count) = rule.firing.remove(&group).unwrap_or((at, 0));
                        tracing::info!(rule = %name, group = ?group, "alert resolved");
                        let labels = group_labels(&rule.compiled, &group);
                        if let Some(entry) = recent.iter_mut().find(|r| {
                            r.rule == *name && r.group == labels && r.resolved_at.is_none()
                        }) {
                            entry.resolved_at = Some(at);
                        }
                        if let Some(notifier) = &self.notifier {
                            let alert = GroupAlert {
                                group: &group,
                                count,
                                since,
                                resolved_at: Some(at),
                            };
                            notifier.resolve(self.notification(&rule.compiled, &alert));
                        }
                    }
                }
            }
            // What was kept from before a restart and does not fire again at once is over.
            let mut restored = lock(&self.restored);
            if !restored.is_empty() {
                restored.retain(|(rule, _), _| rule != name);
            }
            drop(restored);
            self.metrics
                .alerts_firing
                .get_or_create(&AlertLabel {
                    alertname: name.clone(),
                })
                .set(rule.firing.len() as i64);
        }
        if changed {
            self.keep_firing(rules);
        }
        drop(state);
        self.advance_gaps(now);
    }

    fn advance_gaps(&self, now: SystemTime) {
        for change in self.nodes.advance(now) {
            let (node, since, resolved_at) = match change {
                GapChange::Fired { node, since } => {
                    tracing::warn!(%node, since = %time_text(since), "audit gap: no batch from the node");
                    self.metrics
                        .alerts_fired
                        .get_or_create(&AlertLabel {
                            alertname: AUDIT_GAP.into(),
                        })
                        .inc();
                    (node, since, None)
                }
                GapChange::Resolved { node, since, at } => {
                    tracing::info!(%node, "audit gap over: the node sends again");
                    (node, since, Some(at))
                }
            };
            let notification = self.gap_notification(&node, since, resolved_at);
            if let Some(notifier) = &self.notifier {
                match resolved_at {
                    None => notifier.fire(notification),
                    Some(_) => notifier.resolve(notification),
                }
            }
        }
        if !self.nodes.after.is_zero() {
            self.metrics
                .alerts_firing
                .get_or_create(&AlertLabel {
                    alertname: AUDIT_GAP.into(),
                })
                .set(self.nodes.firing().len() as i64);
        }
    }

    fn gap_notification(
        &self,
        node: &str,
        since: SystemTime,
        resolved_at: Option<SystemTime>,
    ) -> Notification {
        let after = humantime::format_duration(self.nodes.after).to_string();
        Notification {
            labels: BTreeMap::from([
                ("alertname".to_string(), AUDIT_GAP.to_string()),
                ("severity".to_string(), "critical".to_string()),
                ("node".to_string(), node.to_string()),
            ]),
            annotations: BTreeMap::from([
                (
                    "summary".to_string(),
                    format!(
                        "no audit events from node {node} since {}",
                        time_text(since)
                    ),
                ),
                (
                    "description".to_string(),
                    format!(
                        "The kube-apiserver on {node} runs an auditing revision, but the collector has acknowledged no batch from it for over {after}: its requests are not being audited. Check the kube-apiserver's audit webhook errors (apiserver_audit_error_total) and its reach to the collector."
                    ),
                ),
            ]),
            starts_at: since,
            ends_at: resolved_at,
            generator_url: format!("{}/ui/alerts", self.public_url),
        }
    }

    /// Writes the firing groups down (replacing the file whole, so a crash leaves the old or
    /// the new one).
    fn keep_firing(&self, rules: &BTreeMap<String, RuleState>) {
        let Some(path) = &self.firing_file else {
            return;
        };
        let written = serde_json::to_vec(&KeptFiring::of(rules))
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let partial = path.with_extension("json.partial");
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, path)
            });
        if let Err(err) = written {
            tracing::warn!(error = %err, path = %path.display(), "keeping the firing alerts failed");
        }
    }

    fn notification(&self, compiled: &Compiled, alert: &GroupAlert<'_>) -> Notification {
        notification(
            &compiled.rule,
            &compiled.presentation,
            &compiled.topic,
            alert,
            &self.search_url,
        )
    }

    fn resolve_all(&self, rule: &RuleState, now: SystemTime) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        for (group, (since, count)) in &rule.firing {
            let alert = GroupAlert {
                group,
                count: *count,
                since: *since,
                resolved_at: Some(now),
            };
            notifier.resolve(self.notification(&rule.compiled, &alert));
        }
    }

    /// What `GET /v1/alerts` answers: the rules with their firing groups, and recent firings;
    /// with a shared store, as the evaluating replica last published them.
    pub fn view(&self) -> Value {
        match self.shared.get() {
            Some(shared) => shared.view(self),
            None => self.own_view(),
        }
    }

    /// The rules with their firing groups, and recent firings, as this replica evaluates them.
    fn own_view(&self) -> Value {
        let state = lock(&self.state);
        let rules: Vec<Value> = self
            .rules()
            .rules
            .iter()
            .map(|compiled| {
                let mut rule = serde_json::to_value(&compiled.spec).unwrap_or(Value::Null);
                let held = state
                    .rules
                    .get(&compiled.spec.name)
                    .filter(|r| Arc::ptr_eq(&r.compiled, compiled));
                let mut firing: Vec<(&Group, &(SystemTime, u64))> =
                    held.map(|r| r.firing.iter().collect()).unwrap_or_default();
                firing.sort();
                let firing: Vec<Value> = firing
                    .into_iter()
                    .map(|(group, (since, count))| {
                        json!({
                            "group": group_labels(compiled, group),
                            "count": count,
                            "since": time_text(*since),
                            "query": compiled.rule.group_query(group),
                        })
                    })
                    .collect();
                if let Value::Object(map) = &mut rule {
                    map.insert("topic".into(), compiled.topic.clone().into());
                    map.insert("firing".into(), firing.into());
                    map.insert(
                        "lastFiredAt".into(),
                        held.and_then(|r| r.last_fired).map(time_text).into(),
                    );
                    map.insert("ready".into(), held.is_some_and(|r| r.ready).into());
                    map.insert(
                        "overflowed".into(),
                        held.map_or(0, |r| r.window.overflowed).into(),
                    );
                }
                rule
            })
            .collect();
        let recent: Vec<Value> = state
            .recent
            .iter()
            .map(|r| {
                json!({
                    "rule": r.rule,
                    "group": r.group,
                    "topic": r.topic,
                    "count": r.count,
                    "query": r.query,
                    "firedAt": time_text(r.fired_at),
                    "resolvedAt": r.resolved_at.map(time_text),
                })
            })
            .collect();
        let mut rules = rules;
        // Listed once there are nodes to watch: until the operator names some, nothing is.
        if !self.nodes.after.is_zero() && self.nodes.watching() {
            let firing: Vec<Value> = self
                .nodes
                .firing()
                .into_iter()
                .map(|(node, since)| {
                    json!({"group": {"node": node}, "count": 0, "since": time_text(since), "query": ""})
                })
                .collect();
            rules.push(json!({
                "name": AUDIT_GAP,
                "builtIn": true,
                "query": "",
                "windowSeconds": self.nodes.after.as_secs(),
                "threshold": 1,
                "groupBy": ["node"],
                "severity": "critical",
                "summary": "a node whose kube-apiserver audits sends no batch",
                "firing": firing,
                "ready": true,
            }));
        }
        json!({"rules": rules, "recent": recent})
    }

    /// Follows the catalog and advances the windows, for as long as the process runs.
    pub fn start(self: &Arc<Self>, store: Arc<dyn AuditStore>) {
        if self.shared.get().is_some() {
            shared::start(self.clone());
        } else {
            let alerting = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    alerting.advance(SystemTime::now());
                }
            });
        }
        let alerting = self.clone();
        tokio::spawn(async move {
            loop {
                alerting.refresh(&store).await;
                tokio::time::sleep(crate::policy::POLICY_REFRESH).await;
            }
        });
    }

    /// Reads the catalog's rules once (a store that does not answer leaves them as they are).
    pub async fn refresh(self: &Arc<Self>, store: &Arc<dyn AuditStore>) {
        match tokio::time::timeout(Duration::from_secs(5), store.catalog()).await {
            Ok(Ok(catalog)) => self.update(store, &catalog).await,
            Ok(Err(err)) => tracing::debug!(error = %err, "rereading the alert rules failed"),
            Err(_) => tracing::debug!("rereading the alert rules timed out"),
        }
    }
}

/// A firing group as kept across restarts.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeptFiring {
    rule: RuleSpec,
    group: Group,
    since_micros: u64,
}

/// What was firing, by (rule, group): the rule's spec and since when.
type Restored = HashMap<(String, Group), (RuleSpec, SystemTime)>;

impl KeptFiring {
    /// Every rule's firing groups, as kept.
    fn of(rules: &BTreeMap<String, RuleState>) -> Vec<KeptFiring> {
        rules
            .values()
            .flat_map(|rule| {
                rule.firing.iter().map(|(group, (since, _))| KeptFiring {
                    rule: rule.compiled.spec.clone(),
                    group: group.clone(),
                    since_micros: since
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_micros() as u64,
                })
            })
            .collect()
    }

    /// What was kept, as `advance` looks groups up when they fire again.
    fn restore(kept: Vec<KeptFiring>) -> Restored {
        kept.into_iter()
            .map(|kept| {
                (
                    (kept.rule.name.clone(), kept.group),
                    (
                        kept.rule,
                        UNIX_EPOCH + Duration::from_micros(kept.since_micros),
                    ),
                )
            })
            .collect()
    }
}

fn group_labels(compiled: &Compiled, group: &Group) -> BTreeMap<String, String> {
    compiled
        .rule
        .group_by
        .iter()
        .zip(group)
        .map(|(field, value)| (field.label().to_string(), value.clone()))
        .collect()
}

/// The alert a node in an audit gap raises.
pub const AUDIT_GAP: &str = "AuditGap";

/// Which control-plane nodes batches came from, when last, and which of the nodes that should
/// send have gone silent.
pub struct Nodes {
    after: Duration,
    seen: Mutex<BTreeMap<String, (SystemTime, u64)>>,
    /// What the other replicas sharing the store acknowledged from each node: its last batch,
    /// and their batches summed.
    peers: Mutex<BTreeMap<String, (SystemTime, u64)>>,
    gaps: Mutex<GapWatch>,
    /// Where the last batch times and the expected nodes are kept across restarts.
    file: Option<std::path::PathBuf>,
    changed: std::sync::atomic::AtomicBool,
    last_kept: Mutex<Option<std::time::Instant>>,
}

/// A node name as Kubernetes allows it (a DNS subdomain).
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// What is kept of the nodes across restarts.
#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeptNodes {
    expected: Vec<String>,
    last_batch_micros: BTreeMap<String, u64>,
}

/// How often the nodes' last batches are written down (when they changed).
const KEEP_NODES_EVERY: Duration = Duration::from_secs(10);

impl Nodes {
    fn new(after: Duration, data_dir: Option<&std::path::Path>) -> Nodes {
        let file = data_dir.map(|dir| dir.join("nodes.json"));
        let kept: KeptNodes = file
            .as_deref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let now = SystemTime::now();
        let mut gaps = GapWatch::new(after, now);
        gaps.expect(&kept.expected, now);
        let mut seen = BTreeMap::new();
        for (node, micros) in kept.last_batch_micros {
            let at = UNIX_EPOCH + Duration::from_micros(micros);
            gaps.batch(&node, at);
            seen.insert(node, (at, 0));
        }
        Nodes {
            after,
            seen: Mutex::new(seen),
            peers: Mutex::default(),
            gaps: Mutex::new(gaps),
            file,
            changed: Default::default(),
            last_kept: Mutex::new(None),
        }
    }

    /// Records an acknowledged batch from `node`.
    pub fn record(&self, node: &str, metrics: &Metrics) {
        let now = SystemTime::now();
        let mut seen = lock(&self.seen);
        if !seen.contains_key(node) && seen.len() >= MAX_NODES {
            tracing::warn!(
                node,
                "more nodes post to the webhook than the collector keeps track of"
            );
            return;
        }
        let entry = seen.entry(node.to_string()).or_insert((now, 0));
        entry.0 = now;
        entry.1 += 1;
        drop(seen);
        lock(&self.gaps).batch(node, now);
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        metrics
            .node_last_batch
            .get_or_create(&NodeLabel {
                node: node.to_string(),
            })
            .set(
                now.duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
    }

    /// The nodes whose kube-apiservers run an auditing revision (the operator says which).
    pub fn expect(&self, nodes: &[String]) {
        let nodes: Vec<String> = nodes
            .iter()
            .filter(|n| valid_node_name(n))
            .take(MAX_NODES)
            .cloned()
            .collect();
        lock(&self.gaps).expect(&nodes, SystemTime::now());
        self.changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The nodes this replica acknowledged batches from: the last one's time and how many.
    fn own(&self) -> BTreeMap<String, (SystemTime, u64)> {
        lock(&self.seen).clone()
    }

    /// Takes what the other replicas sharing the store acknowledged from each node.
    fn merge_peers(&self, peers: BTreeMap<String, (SystemTime, u64)>) {
        let mut gaps = lock(&self.gaps);
        for (node, (at, _)) in &peers {
            gaps.batch(node, *at);
        }
        drop(gaps);
        *lock(&self.peers) = peers;
    }

    /// The nodes expected to send now.
    fn expected(&self) -> Vec<String> {
        lock(&self.gaps).expected().map(String::from).collect()
    }

    fn advance(&self, now: SystemTime) -> Vec<GapChange> {
        if self.after.is_zero() {
            return Vec::new();
        }
        let changes = lock(&self.gaps).advance(now);
        self.keep();
        changes
    }

    /// Whether any node is expected to send.
    fn watching(&self) -> bool {
        lock(&self.gaps).expected().next().is_some()
    }

    fn firing(&self) -> Vec<(String, SystemTime)> {
        lock(&self.gaps)
            .firing()
            .map(|(node, since)| (node.to_string(), since))
            .collect()
    }

    /// Writes the nodes down, at most every few seconds and only when something changed.
    fn keep(&self) {
        let Some(path) = &self.file else {
            return;
        };
        let mut last = lock(&self.last_kept);
        if last.is_some_and(|at| at.elapsed() < KEEP_NODES_EVERY)
            || !self
                .changed
                .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        *last = Some(std::time::Instant::now());
        let kept = {
            let gaps = lock(&self.gaps);
            let seen = lock(&self.seen);
            KeptNodes {
                expected: gaps.expected().map(String::from).collect(),
                last_batch_micros: seen
                    .iter()
                    .map(|(node, (at, _))| {
                        (
                            node.clone(),
                            at.duration_since(UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_micros() as u64,
                        )
                    })
                    .collect(),
            }
        };
        let written = serde_json::to_vec(&kept)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let partial = path.with_extension("json.partial");
                std::fs::write(&partial, bytes)?;
                std::fs::rename(&partial, path)
            });
        if let Err(err) = written {
            tracing::warn!(error = %err, path = %path.display(), "keeping the nodes' last batches failed");
        }
    }

    /// What `GET /v1/nodes` answers: each node that sent or should send, when it last sent, and
    /// since when it is silent if it is in an audit gap.
    pub fn view(&self) -> Value {
        let mut seen = lock(&self.seen).clone();
        for (node, (at, batches)) in lock(&self.peers).iter() {
            let entry = seen.entry(node.clone()).or_insert((*at, 0));
            entry.0 = entry.0.max(*at);
            entry.1 += batches;
        }
        let gaps = lock(&self.gaps);
        let expected: Vec<&str> = gaps.expected().collect();
        let firing: BTreeMap<&str, SystemTime> = gaps.firing().collect();
        let mut names: Vec<&str> = seen.keys().map(String::as_str).collect();
        names.extend(expected.iter().copied());
        names.sort();
        names.dedup();
        let nodes: Vec<Value> = names
            .into_iter()
            .map(|name| {
                let (last, batches) = seen
                    .get(name)
                    .copied()
                    .map_or((None, 0), |(at, n)| (Some(at), n));
                json!({
                    "name": name,
                    "lastBatchAt": last.map(time_text),
                    "batches": batches,
                    "expected": expected.contains(&name),
                    "silentSince": firing.get(name).copied().map(time_text),
                })
            })
            .collect();
        json!({ "nodes": nodes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, verb: &str) -> Event {
        serde_json::from_value(json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": "00000000-0000-0000-0000-000000000001", "stage": "ResponseComplete",
            "requestURI": "/api/v1/namespaces/kube-system/pods/p/exec", "verb": verb,
            "user": {"username": user}, "sourceIPs": ["10.0.0.7"],
            "objectRef": {"resource": "pods", "namespace": "kube-system", "subresource": "exec"},
            "responseStatus": {"code": 101},
            "stageTimestamp": "2026-11-30T12:00:00.000000Z",
        }))
        .unwrap()
    }

    /// Alerting with no receivers and no data directory, groups bounded at 10.
    fn test_alerting(audit_gap_after: Duration) -> Arc<Alerting> {
        Alerting::new(
            &AlertArgs {
                notify: NotifyArgs::default(),
                public_url: "https://audit.example".into(),
                alert_max_groups: 10,
                audit_gap_after: audit_gap_after.into(),
            },
            &Metrics::new(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn acknowledged_matches_fire_once_and_show_in_the_view() {
        let alerting = test_alerting(Duration::from_secs(300));
        let spec = RuleSpec {
            name: "exec".into(),
            query: "verb:create".into(),
            window_seconds: 300,
            threshold: 2,
            group_by: vec![clusteraudit_core::alert::GroupField::User],
            severity: "critical".into(),
            ..RuleSpec::default()
        };
        let (rule, presentation) = spec.compile().unwrap();
        let compiled = Arc::new(Compiled {
            spec,
            rule: rule.clone(),
            presentation,
            topic: "t".into(),
        });
        *alerting.rules.write().unwrap() = Arc::new(RuleSet::new(vec![compiled.clone()]));
        lock(&alerting.state).rules.insert(
            "exec".into(),
            RuleState {
                compiled: compiled.clone(),
                window: Window::new(rule, 10),
                ready: true,
                counted_live: Default::default(),
                firing: HashMap::new(),
                last_fired: None,
            },
        );
        let now = crate::http::now_micros();
        let rules = alerting.rules();
        let mut hits = Vec::new();
        rules.observe("t", &[], &event("alice", "create"), now, &mut hits);
        rules.observe("t", &[], &event("alice", "get"), now, &mut hits);
        rules.observe("other", &[], &event("alice", "create"), now, &mut hits);
        rules.observe("other", &["t"], &event("alice", "create"), now, &mut hits);
        assert_eq!(hits.len(), 2, "the topic's and a routed copy's matches");
        alerting.record(hits);
        alerting.advance(SystemTime::now());
        let view = alerting.view();
        let firing = &view["rules"][0]["firing"];
        assert_eq!(firing[0]["group"]["user"], "alice");
        assert_eq!(firing[0]["count"], 2);
        assert_eq!(view["recent"][0]["rule"], "exec");
        alerting.advance(SystemTime::now());
        let view = alerting.view();
        assert_eq!(view["recent"].as_array().unwrap().len(), 1, "fires once");
    }

    /// A store holding a fixed set of events, for what a rule reads back when it appears.
    struct EventsInStore(Vec<String>);

    impl AuditStore for EventsInStore {
        fn catalog(&self) -> clusteraudit_store::StoreFuture<'_, Catalog> {
            unimplemented!("not read by the alerts")
        }
        fn edit_catalog(
            &self,
            _: clusteraudit_store::CatalogEdit,
        ) -> clusteraudit_store::StoreFuture<'_, clusteraudit_store::Edited> {
            unimplemented!("not read by the alerts")
        }
        fn route(&self) -> clusteraudit_store::StoreFuture<'_, String> {
            unimplemented!("not read by the alerts")
        }
        fn search(
            &self,
            _: String,
            _: SearchRequest,
        ) -> clusteraudit_store::StoreFuture<'_, clusteraudit_store::Page> {
            let events = self
                .0
                .iter()
                .map(|e| serde_json::value::RawValue::from_string(e.clone()).unwrap())
                .collect();
            Box::pin(std::future::ready(Ok(clusteraudit_store::Page {
                events,
                cursor: None,
            })))
        }
        fn stats(
            &self,
            _: String,
            _: clusteraudit_store::StatsRequest,
        ) -> clusteraudit_store::StoreFuture<'_, clusteraudit_store::Stats> {
            unimplemented!("not read by the alerts")
        }
        fn usage(
            &self,
            _: String,
        ) -> clusteraudit_store::StoreFuture<'_, clusteraudit_store::TopicUsage> {
            unimplemented!("not read by the alerts")
        }
        fn enforce_retention(&self, _: i64) -> clusteraudit_store::StoreFuture<'_, Vec<String>> {
            unimplemented!("not read by the alerts")
        }
    }

    fn event_at(id: u32, user: &str, at: SystemTime) -> String {
        json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": format!("00000000-0000-0000-0000-{id:012}"), "stage": "ResponseComplete",
            "requestURI": "/api/v1/namespaces/shop/secrets", "verb": "list",
            "user": {"username": user}, "sourceIPs": ["10.0.0.7"],
            "objectRef": {"resource": "secrets", "namespace": "shop"},
            "responseStatus": {"code": 200},
            "stageTimestamp": time_text(at),
        })
        .to_string()
    }

    #[tokio::test]
    async fn a_new_rule_counts_the_store_and_the_live_stream_once_each() {
        let now = SystemTime::now();
        // Two events acknowledged before the rule existed, and one acknowledged while it was
        // reading its window (so both live and in the store).
        let before = [1, 2].map(|id| event_at(id, "alice", now));
        let meanwhile = event_at(3, "alice", now);
        let store: Arc<dyn AuditStore> = Arc::new(EventsInStore(
            before.iter().chain([&meanwhile]).cloned().collect(),
        ));
        let alerting = test_alerting(Duration::ZERO);
        let mut catalog = Catalog::default();
        catalog
            .apply(
                &clusteraudit_store::CatalogEdit::Initialize,
                &mut clusteraudit_store::catalog::SystemOrigin,
            )
            .unwrap();
        let spec = RuleSpec {
            name: "secret-lists".into(),
            query: "resource:secrets".into(),
            window_seconds: 300,
            threshold: 4,
            group_by: vec![clusteraudit_core::alert::GroupField::User],
            severity: "warning".into(),
            ..RuleSpec::default()
        };
        catalog
            .apply(
                &clusteraudit_store::CatalogEdit::SetAlerts { rules: vec![spec] },
                &mut clusteraudit_store::catalog::SystemOrigin,
            )
            .unwrap();
        alerting.update(&store, &catalog).await;
        // While the rule waits to read the store, the third event and a fourth are acknowledged.
        let topic = catalog.route().to_string();
        let mut hits = Vec::new();
        for raw in [&meanwhile, &event_at(4, "alice", now)] {
            let event: Event = serde_json::from_str(raw).unwrap();
            let at = event.time_micros().unwrap();
            alerting.rules().observe(&topic, &[], &event, at, &mut hits);
        }
        assert_eq!(hits.len(), 2);
        alerting.record(hits);
        let deadline = std::time::Instant::now() + FILL_DELAY * 10;
        while alerting.view()["rules"][0]["ready"] != true {
            assert!(std::time::Instant::now() < deadline, "{}", alerting.view());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        alerting.advance(SystemTime::now());
        let view = alerting.view();
        assert_eq!(
            view["rules"][0]["firing"][0]["count"], 4,
            "two from the store, two live, the one in both once: {view}"
        );
    }

    #[test]
    fn the_audit_gap_is_listed_once_nodes_are_expected() {
        let alerting = test_alerting(Duration::from_secs(300));
        assert_eq!(alerting.view()["rules"], json!([]), "an empty page says so");
        alerting.nodes.expect(&["cp-1".to_string()]);
        assert_eq!(alerting.view()["rules"][0]["name"], AUDIT_GAP);
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        assert!(valid_node_name("cp-1.example"));
        assert!(!valid_node_name("CP/1"));
        assert!(!valid_node_name(""));
    }
}
