//! Alert rules over the stream of acknowledged events: which events a rule counts and in which
//! group, when a group starts and stops firing, and what a notification says. Pure: the caller
//! passes each event with its time and says what time it is; nothing here reads a clock.
//!
//! A rule fires for a group when at least `threshold` of its matching events fall within the last
//! `window`. The window slides in steps of a sixtieth of its length (at least a second), so the
//! memory a group takes is bounded by 60 counts whatever the event rate; an event is counted for
//! between `window` and `window` plus one step.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    audit::Event,
    query::{self, Field, Op, ParseError, Query, Value},
};

/// Steps a window is cut into.
const STEPS_PER_WINDOW: u32 = 60;

/// What an alert may group by: one alert per distinct combination of these values.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum GroupField {
    #[serde(rename = "user")]
    User,
    #[serde(rename = "namespace")]
    Namespace,
    #[serde(rename = "resource")]
    Resource,
    #[serde(rename = "verb")]
    Verb,
    #[serde(rename = "sourceIP")]
    SourceIp,
    /// Whom a request was made as (`kubectl --as`); `""` for a request that impersonated nobody.
    #[serde(rename = "impersonatedUser")]
    ImpersonatedUser,
}

impl GroupField {
    /// The label the alert carries the value in: the search language's name of the field (each
    /// a valid Prometheus label name).
    pub fn label(self) -> &'static str {
        self.search_field().name()
    }

    /// The event's value, `""` when it has none (a cluster-scoped request has no namespace).
    pub fn value(self, event: &Event) -> String {
        let object = event.object_ref.as_ref();
        match self {
            GroupField::User => event.user.username.clone(),
            GroupField::Namespace => object.map(|o| o.namespace.clone()).unwrap_or_default(),
            GroupField::Resource => object.map(|o| o.resource.clone()).unwrap_or_default(),
            GroupField::Verb => event.verb.clone(),
            GroupField::SourceIp => event.source_ips.first().cloned().unwrap_or_default(),
            GroupField::ImpersonatedUser => event
                .impersonated_user
                .as_ref()
                .map(|u| u.username.clone())
                .unwrap_or_default(),
        }
    }

    /// The search language's field of the same values.
    pub fn search_field(self) -> Field {
        match self {
            GroupField::User => Field::User,
            GroupField::Namespace => Field::Namespace,
            GroupField::Resource => Field::Resource,
            GroupField::Verb => Field::Verb,
            GroupField::SourceIp => Field::SourceIp,
            GroupField::ImpersonatedUser => Field::ImpersonatedUser,
        }
    }
}

/// A group's values, in the rule's `group_by` order.
pub type Group = Vec<String>;

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub query: Query,
    pub window: Duration,
    pub threshold: u64,
    pub group_by: Vec<GroupField>,
    step: Duration,
}

impl Rule {
    /// Compiles a rule; the error is the query's, with its column.
    pub fn new(
        name: &str,
        query: &str,
        window: Duration,
        threshold: u64,
        group_by: &[GroupField],
    ) -> Result<Rule, ParseError> {
        let query = query::parse_matchable(query)?;
        let step = (window / STEPS_PER_WINDOW).max(Duration::from_secs(1));
        let mut group_by = group_by.to_vec();
        group_by.dedup();
        Ok(Rule {
            name: name.to_string(),
            query,
            window,
            threshold: threshold.max(1),
            group_by,
            step,
        })
    }

    /// The group an event counts in, None when the rule does not match it.
    pub fn group_of(&self, event: &Event) -> Option<Group> {
        query::matches(&self.query, event)
            .then(|| self.group_by.iter().map(|f| f.value(event)).collect())
    }

    /// The rule's query narrowed to one group, in the search language: what the page opens for
    /// an alert.
    pub fn group_query(&self, group: &Group) -> String {
        let mut clauses = Vec::new();
        if self.query != Query::All {
            clauses.push(self.query.clone());
        }
        for (field, value) in self.group_by.iter().zip(group) {
            clauses.push(Query::Field {
                field: field.search_field(),
                op: Op::Eq,
                value: Value::Exact(value.clone()),
            });
        }
        match clauses.len() {
            0 => String::new(),
            1 => clauses.remove(0).to_string(),
            _ => Query::And(clauses).to_string(),
        }
    }

    fn step_of(&self, at: SystemTime) -> u64 {
        let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        (since_epoch.as_millis() / self.step.as_millis().max(1)) as u64
    }
}

/// A group starting or stopping to fire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Fired {
        group: Group,
        count: u64,
        at: SystemTime,
    },
    Resolved {
        group: Group,
        at: SystemTime,
    },
}

#[derive(Debug, Default)]
struct GroupState {
    /// (step, events) for the steps still in the window, oldest first.
    steps: VecDeque<(u64, u64)>,
    total: u64,
    firing_since: Option<SystemTime>,
}

/// A group that fires now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firing<'a> {
    pub group: &'a Group,
    pub count: u64,
    pub since: SystemTime,
}

/// One rule's counts per group over its sliding window, and which groups fire.
#[derive(Debug)]
pub struct Window {
    rule: Rule,
    groups: HashMap<Group, GroupState>,
    max_groups: usize,
    /// Events not counted because the rule already tracked `max_groups` groups.
    pub overflowed: u64,
}

impl Window {
    /// `max_groups` bounds the memory a rule can take, whatever the events' variety.
    pub fn new(rule: Rule, max_groups: usize) -> Window {
        Window {
            rule,
            groups: HashMap::new(),
            max_groups,
            overflowed: 0,
        }
    }

    pub fn rule(&self) -> &Rule {
        &self.rule
    }

    /// Counts an event that happened at `at`, if the rule matches it.
    pub fn observe(&mut self, event: &Event, at: SystemTime) {
        if let Some(group) = self.rule.group_of(event) {
            self.count(group, at, 1);
        }
    }

    /// Counts `events` events of `group` at `at` (what a rebuild from the store finds).
    pub fn count(&mut self, group: Group, at: SystemTime, events: u64) {
        let step = self.rule.step_of(at);
        let tracked = self.groups.len();
        let state = match self.groups.get_mut(&group) {
            Some(state) => state,
            None if tracked >= self.max_groups => {
                self.overflowed += events;
                return;
            }
            None => self.groups.entry(group).or_default(),
        };
        state.total += events;
        // Events arrive nearly in order: the step is at the back, or a new one goes in its place.
        match state.steps.iter().rposition(|(s, _)| *s <= step) {
            Some(i) if state.steps[i].0 == step => state.steps[i].1 += events,
            Some(i) => state.steps.insert(i + 1, (step, events)),
            None => state.steps.push_front((step, events)),
        }
    }

    /// Replaces every group's count with what `counts` says was in the window at `at`: what the
    /// store holds when several replicas share it and the store, not one replica, has seen every
    /// event. A firing group not in `counts` resolves at the next [`Window::advance`].
    pub fn replace(&mut self, counts: impl IntoIterator<Item = (Group, u64)>, at: SystemTime) {
        self.groups.retain(|_, state| state.firing_since.is_some());
        for state in self.groups.values_mut() {
            state.steps.clear();
            state.total = 0;
        }
        self.overflowed = 0;
        for (group, events) in counts {
            if events > 0 {
                self.count(group, at, events);
            }
        }
    }

    /// Lets go of what left the window by `now`, and says which groups started or stopped firing.
    pub fn advance(&mut self, now: SystemTime) -> Vec<Change> {
        let oldest_kept = self
            .rule
            .step_of(now.checked_sub(self.rule.window).unwrap_or(UNIX_EPOCH));
        let threshold = self.rule.threshold;
        let mut changes = Vec::new();
        self.groups.retain(|group, state| {
            while let Some((step, events)) = state.steps.front().copied() {
                if step >= oldest_kept {
                    break;
                }
                state.steps.pop_front();
                state.total -= events;
            }
            match (state.firing_since, state.total >= threshold) {
                (None, true) => {
                    state.firing_since = Some(now);
                    changes.push(Change::Fired {
                        group: group.clone(),
                        count: state.total,
                        at: now,
                    });
                }
                (Some(_), false) => {
                    state.firing_since = None;
                    changes.push(Change::Resolved {
                        group: group.clone(),
                        at: now,
                    });
                }
                _ => {}
            }
            state.total > 0 || state.firing_since.is_some()
        });
        changes.sort_by(|a, b| group_of_change(a).cmp(group_of_change(b)));
        changes
    }

    /// The groups firing now, in no particular order.
    pub fn firing(&self) -> impl Iterator<Item = Firing<'_>> {
        self.groups.iter().filter_map(|(group, state)| {
            state.firing_since.map(|since| Firing {
                group,
                count: state.total,
                since,
            })
        })
    }

    /// Groups tracked now (firing or counting).
    pub fn groups(&self) -> usize {
        self.groups.len()
    }
}

fn group_of_change(change: &Change) -> &Group {
    match change {
        Change::Fired { group, .. } | Change::Resolved { group, .. } => group,
    }
}

/// A rule as the operator sets it on the collector and the collector keeps it in its catalog:
/// an `AuditAlert`'s spec with its topic resolved to an id and its window in seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSpec {
    pub name: String,
    /// The topic's id; empty: the topic the webhook routes to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub topic: String,
    #[serde(default)]
    pub query: String,
    pub window_seconds: u64,
    pub threshold: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<GroupField>,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_severity() -> String {
    "warning".into()
}

/// The longest window: a group's memory is 60 counts whatever the window, but a rebuild after a
/// restart reads the whole window back from the store.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The most rules the collector evaluates.
pub const MAX_RULES: usize = 500;
const MAX_LABELS: usize = 16;
const MAX_TEXT: usize = 4096;

/// What is wrong with a rule: the field, and why (for the query, with its column).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleError {
    pub field: &'static str,
    pub message: String,
}

impl RuleError {
    fn new(field: &'static str, message: impl Into<String>) -> RuleError {
        RuleError {
            field,
            message: message.into(),
        }
    }
}

/// Prometheus' label name syntax.
fn valid_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.starts_with("__")
}

impl RuleSpec {
    /// Compiles the rule, or says which field is wrong and why.
    pub fn compile(&self) -> Result<(Rule, Presentation), RuleError> {
        if self.name.is_empty() || self.name.len() > 253 {
            return Err(RuleError::new("name", "must be 1 to 253 characters"));
        }
        let window = Duration::from_secs(self.window_seconds);
        if window.is_zero() || window > MAX_WINDOW {
            return Err(RuleError::new(
                "window",
                format!(
                    "{} is not between 1s and {}",
                    humantime::format_duration(window),
                    humantime::format_duration(MAX_WINDOW)
                ),
            ));
        }
        if self.threshold == 0 {
            return Err(RuleError::new("threshold", "must be at least 1"));
        }
        let mut seen = Vec::new();
        for field in &self.group_by {
            if seen.contains(field) {
                return Err(RuleError::new(
                    "groupBy",
                    format!("{} is named twice", field.label()),
                ));
            }
            seen.push(*field);
        }
        if self.severity.is_empty() || self.severity.len() > 63 {
            return Err(RuleError::new("severity", "must be 1 to 63 characters"));
        }
        for (field, text) in [
            ("summary", &self.summary),
            ("description", &self.description),
        ] {
            if let Some(text) = text {
                if text.len() > MAX_TEXT {
                    return Err(RuleError::new(
                        field,
                        format!("longer than {MAX_TEXT} bytes"),
                    ));
                }
                check_template(text, &self.group_by)
                    .map_err(|err| RuleError::new(field, err.to_string()))?;
            }
        }
        if self.labels.len() > MAX_LABELS {
            return Err(RuleError::new(
                "labels",
                format!("{} labels; at most {MAX_LABELS}", self.labels.len()),
            ));
        }
        for (name, value) in &self.labels {
            if !valid_label_name(name) {
                return Err(RuleError::new(
                    "labels",
                    format!("{name:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not __...)"),
                ));
            }
            let reserved = ["alertname", "severity", "topic"].contains(&name.as_str())
                || self.group_by.iter().any(|f| f.label() == name);
            if reserved {
                return Err(RuleError::new(
                    "labels",
                    format!("{name:?} is set by the alert itself"),
                ));
            }
            if value.len() > MAX_TEXT {
                return Err(RuleError::new(
                    "labels",
                    format!("the value of {name:?} is longer than {MAX_TEXT} bytes"),
                ));
            }
        }
        let rule = Rule::new(
            &self.name,
            &self.query,
            window,
            self.threshold,
            &self.group_by,
        )
        .map_err(|err| {
            RuleError::new(
                "query",
                format!("at column {}: {}", err.column, err.message),
            )
        })?;
        let presentation = Presentation {
            severity: self.severity.clone(),
            summary: self.summary.clone(),
            description: self.description.clone(),
            labels: self.labels.clone(),
        };
        Ok((rule, presentation))
    }
}

/// Which control-plane nodes have gone silent: a node whose kube-apiserver runs an auditing
/// revision (it is *expected*) and from which no batch arrived for `after` is in an audit gap.
/// Silence counts from the node's last batch, or from when it became expected or the watch
/// started, whichever is latest, so a node is never blamed for time nobody was listening.
#[derive(Debug)]
pub struct GapWatch {
    after: Duration,
    started: SystemTime,
    nodes: BTreeMap<String, NodeWatch>,
}

#[derive(Debug, Default)]
struct NodeWatch {
    expected_since: Option<SystemTime>,
    last_batch: Option<SystemTime>,
    firing_since: Option<SystemTime>,
}

/// A node entering or leaving an audit gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GapChange {
    /// Silent since `since` (its last batch, or when listening began).
    Fired { node: String, since: SystemTime },
    Resolved {
        node: String,
        since: SystemTime,
        at: SystemTime,
    },
}

impl GapWatch {
    pub fn new(after: Duration, started: SystemTime) -> GapWatch {
        GapWatch {
            after,
            started,
            nodes: BTreeMap::new(),
        }
    }

    /// The nodes expected to send from now on; the others are no longer watched.
    pub fn expect(&mut self, nodes: &[String], now: SystemTime) {
        for node in nodes {
            let watch = self.nodes.entry(node.clone()).or_default();
            watch.expected_since.get_or_insert(now);
        }
        for (node, watch) in &mut self.nodes {
            if !nodes.contains(node) {
                watch.expected_since = None;
            }
        }
    }

    /// A batch from `node` was acknowledged at `at`.
    pub fn batch(&mut self, node: &str, at: SystemTime) {
        let watch = self.nodes.entry(node.to_string()).or_default();
        watch.last_batch = watch.last_batch.max(Some(at));
    }

    /// When the node last sent a batch, if it did while watched.
    pub fn last_batch(&self, node: &str) -> Option<SystemTime> {
        self.nodes.get(node)?.last_batch
    }

    fn silent_since(&self, watch: &NodeWatch) -> Option<SystemTime> {
        let expected = watch.expected_since?;
        Some(
            expected
                .max(self.started)
                .max(watch.last_batch.unwrap_or(UNIX_EPOCH)),
        )
    }

    /// Says which nodes entered or left a gap by `now`.
    pub fn advance(&mut self, now: SystemTime) -> Vec<GapChange> {
        let mut changes = Vec::new();
        let silences: Vec<(String, Option<SystemTime>)> = self
            .nodes
            .iter()
            .map(|(node, watch)| (node.clone(), self.silent_since(watch)))
            .collect();
        for (node, silent_since) in silences {
            let watch = self.nodes.get_mut(&node).expect("listed above");
            let in_gap = silent_since
                .is_some_and(|since| now.duration_since(since).unwrap_or_default() >= self.after);
            match (watch.firing_since, in_gap) {
                (None, true) => {
                    let since = silent_since.expect("in a gap");
                    watch.firing_since = Some(since);
                    changes.push(GapChange::Fired { node, since });
                }
                (Some(since), false) => {
                    watch.firing_since = None;
                    changes.push(GapChange::Resolved {
                        node,
                        since,
                        at: now,
                    });
                }
                _ => {}
            }
        }
        self.nodes
            .retain(|_, w| w.expected_since.is_some() || w.last_batch.is_some());
        changes
    }

    /// The nodes in a gap now, with since when they are silent.
    pub fn firing(&self) -> impl Iterator<Item = (&str, SystemTime)> {
        self.nodes
            .iter()
            .filter_map(|(node, w)| w.firing_since.map(|since| (node.as_str(), since)))
    }

    /// The nodes expected to send.
    pub fn expected(&self) -> impl Iterator<Item = &str> {
        self.nodes
            .iter()
            .filter(|(_, w)| w.expected_since.is_some())
            .map(|(node, _)| node.as_str())
    }
}

/// How a rule's alerts are presented: what the people who receive them read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Presentation {
    pub severity: String,
    /// Templates: `{{rule}}`, `{{count}}`, `{{threshold}}`, `{{window}}` and each group field
    /// (`{{user}}`, `{{namespace}}`, `{{resource}}`, `{{verb}}`, `{{sourceIP}}`, `{{impersonatedUser}}`).
    pub summary: Option<String>,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// What a receiver is told about one group of one rule, as Alertmanager's v2 API takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(with = "rfc3339")]
    pub starts_at: SystemTime,
    /// Set when the group no longer fires; otherwise the notifier sets how long the alert stays
    /// unless it is sent again.
    #[serde(with = "rfc3339_option", skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<SystemTime>,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

/// A template placeholder that no alert can fill.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown placeholder {{{{{0}}}}}: use rule, count, threshold, window or a groupBy field")]
pub struct TemplateError(pub String);

/// Checks that a template uses only placeholders the rule can fill.
pub fn check_template(template: &str, group_by: &[GroupField]) -> Result<(), TemplateError> {
    for name in placeholders(template) {
        let known = ["rule", "count", "threshold", "window"].contains(&name)
            || group_by.iter().any(|f| f.label() == name);
        if !known {
            return Err(TemplateError(name.to_string()));
        }
    }
    Ok(())
}

fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template
        .split("{{")
        .skip(1)
        .filter_map(|rest| rest.split_once("}}").map(|(name, _)| name.trim()))
}

fn render(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.split_once("}}") {
            Some((name, tail)) => {
                match values.get(name.trim()) {
                    Some(value) => out.push_str(value),
                    None => out.push_str(&rest[start..start + 4 + name.len()]),
                }
                rest = tail;
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// One group's alert: the group, its count, since when it fires, and when it stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAlert<'a> {
    pub group: &'a Group,
    pub count: u64,
    pub since: SystemTime,
    pub resolved_at: Option<SystemTime>,
}

/// The notification for one group of a rule on `topic`. `search_url` is the page's search
/// (`/ui/search`), which the alert's `generatorURL` opens on the group's events.
pub fn notification(
    rule: &Rule,
    presentation: &Presentation,
    topic: &str,
    alert: &GroupAlert<'_>,
    search_url: &str,
) -> Notification {
    let mut values: BTreeMap<&str, String> = BTreeMap::from([
        ("rule", rule.name.clone()),
        ("count", alert.count.to_string()),
        ("threshold", rule.threshold.to_string()),
        (
            "window",
            humantime::format_duration(rule.window).to_string(),
        ),
    ]);
    let mut labels = presentation.labels.clone();
    for (field, value) in rule.group_by.iter().zip(alert.group) {
        values.insert(field.label(), value.clone());
        labels.insert(field.label().to_string(), value.clone());
    }
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), presentation.severity.clone());
    labels.insert("topic".into(), topic.to_string());
    let mut annotations = BTreeMap::new();
    let summary = presentation.summary.as_deref().unwrap_or(
        "{{count}} events matching {{rule}} within {{window}} (threshold {{threshold}})",
    );
    annotations.insert("summary".into(), render(summary, &values));
    if let Some(description) = &presentation.description {
        annotations.insert("description".into(), render(description, &values));
    }
    let query = rule.group_query(alert.group);
    let window_start = alert.since.checked_sub(rule.window).unwrap_or(UNIX_EPOCH);
    let generator_url = format!(
        "{search_url}?topic={}&q={}&from={}",
        encode(topic),
        encode(&query),
        encode(&rfc3339::format(window_start)),
    );
    annotations.insert("query".into(), query);
    Notification {
        labels,
        annotations,
        starts_at: alert.since,
        ends_at: alert.resolved_at,
        generator_url,
    }
}

/// What a URL query value keeps as it is: RFC 3986's unreserved characters.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, QUERY_VALUE).to_string()
}

mod rfc3339 {
    use std::time::SystemTime;

    pub fn format(at: SystemTime) -> String {
        jiff::Timestamp::try_from(at)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    pub fn serialize<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*at))
    }
}

mod rfc3339_option {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(
        at: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_str(&super::rfc3339::format(*at)),
            None => s.serialize_none(),
        }
    }
}

/// Which replica evaluates the alert rules when several share one store: the holder of a lease
/// kept in the store, which another replica takes over once the holder has not renewed it for
/// the lease's duration. Two replicas that both believe they hold it for a moment send the same
/// alerts twice, which Alertmanager folds into one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvaluatorLease {
    pub holder: String,
    pub renewed_micros: i64,
}

impl EvaluatorLease {
    /// Whether `replica` may write itself in as the holder at `now_micros`.
    pub fn may_take(
        lease: Option<&EvaluatorLease>,
        replica: &str,
        now_micros: i64,
        duration: Duration,
    ) -> bool {
        match lease {
            None => true,
            Some(lease) => {
                lease.holder == replica
                    || now_micros.saturating_sub(lease.renewed_micros) > duration.as_micros() as i64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, verb: &str, resource: &str, namespace: &str, code: u16) -> Event {
        serde_json::from_value(serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": "00000000-0000-0000-0000-000000000001", "stage": "ResponseComplete",
            "requestURI": format!("/api/v1/namespaces/{namespace}/{resource}"), "verb": verb,
            "user": {"username": user}, "sourceIPs": ["10.0.0.7"],
            "objectRef": {"resource": resource, "namespace": namespace, "apiVersion": "v1"},
            "responseStatus": {"code": code},
        }))
        .unwrap()
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn forbidden_rule() -> Rule {
        Rule::new(
            "many-forbidden",
            "code:403",
            Duration::from_secs(300),
            20,
            &[GroupField::User],
        )
        .unwrap()
    }

    #[test]
    fn a_group_fires_at_the_threshold_within_the_window_and_resolves_when_it_leaves() {
        let mut window = Window::new(forbidden_rule(), 100);
        for i in 0..19 {
            window.observe(&event("mallory", "get", "secrets", "prod", 403), at(i));
        }
        // Another user's refusals and mallory's successes count elsewhere, or not at all.
        for i in 0..30 {
            window.observe(&event("alice", "get", "pods", "prod", 403), at(i));
            window.observe(&event("mallory", "get", "pods", "prod", 200), at(i));
        }
        let changes = window.advance(at(20));
        assert_eq!(
            changes,
            [Change::Fired {
                group: vec!["alice".into()],
                count: 30,
                at: at(20)
            }]
        );
        window.observe(&event("mallory", "get", "secrets", "prod", 403), at(25));
        let changes = window.advance(at(26));
        assert_eq!(
            changes,
            [Change::Fired {
                group: vec!["mallory".into()],
                count: 20,
                at: at(26)
            }]
        );
        assert!(
            window.advance(at(100)).is_empty(),
            "nothing changes while it holds"
        );
        assert_eq!(window.firing().count(), 2);
        // Five minutes later the events before 10 s have left the window (steps of 5 s):
        // mallory has 10 left, alice 20.
        let changes = window.advance(at(310));
        assert_eq!(
            changes,
            [Change::Resolved {
                group: vec!["mallory".into()],
                at: at(310)
            }]
        );
        let changes = window.advance(at(320));
        assert_eq!(
            changes,
            [Change::Resolved {
                group: vec!["alice".into()],
                at: at(320)
            }]
        );
        assert_eq!(window.groups(), 2, "their last events still count");
        assert!(window.advance(at(400)).is_empty());
        assert_eq!(window.groups(), 0, "an empty group is let go");
    }

    #[test]
    fn the_number_of_groups_is_bounded() {
        let mut window = Window::new(forbidden_rule(), 3);
        for user in ["a", "b", "c", "d", "e"] {
            window.observe(&event(user, "get", "pods", "", 403), at(0));
        }
        assert_eq!(window.groups(), 3);
        assert_eq!(window.overflowed, 2);
    }

    #[test]
    fn out_of_order_events_count_in_their_own_step() {
        let rule = Rule::new("all", "", Duration::from_secs(60), 3, &[]).unwrap();
        let mut window = Window::new(rule, 10);
        window.observe(&event("a", "get", "pods", "", 200), at(50));
        window.observe(&event("a", "get", "pods", "", 200), at(10));
        window.observe(&event("a", "get", "pods", "", 200), at(30));
        assert_eq!(window.advance(at(60)).len(), 1);
        // At 75 the event of 10 has left; two remain, under the threshold.
        assert!(matches!(
            window.advance(at(75))[..],
            [Change::Resolved { .. }]
        ));
    }

    #[test]
    fn a_notification_carries_the_group_its_texts_and_the_search_that_shows_it() {
        let rule = Rule::new(
            "secret-reads",
            "resource:secrets and verb:get",
            Duration::from_secs(600),
            1,
            &[GroupField::User, GroupField::Namespace],
        )
        .unwrap();
        let presentation = Presentation {
            severity: "critical".into(),
            summary: Some("{{user}} read {{count}} secrets in {{namespace}}".into()),
            description: None,
            labels: BTreeMap::from([("team".into(), "security".into())]),
        };
        let group = vec!["alice".to_string(), "prod ns".to_string()];
        let alert = GroupAlert {
            group: &group,
            count: 4,
            since: at(1000),
            resolved_at: None,
        };
        let n = notification(
            &rule,
            &presentation,
            "tp-1",
            &alert,
            "https://audit.example/ui/search",
        );
        assert_eq!(n.labels["alertname"], "secret-reads");
        assert_eq!(n.labels["user"], "alice");
        assert_eq!(n.labels["namespace"], "prod ns");
        assert_eq!(n.labels["severity"], "critical");
        assert_eq!(n.labels["team"], "security");
        assert_eq!(n.annotations["summary"], "alice read 4 secrets in prod ns");
        let query = &n.annotations["query"];
        // The group's query finds exactly the group's events.
        let parsed = query::parse_matchable(query).unwrap();
        let mut hit = event("alice", "get", "secrets", "prod ns", 200);
        assert!(query::matches(&parsed, &hit), "{query}");
        hit.user.username = "bob".into();
        assert!(!query::matches(&parsed, &hit), "{query}");
        assert!(
            n.generator_url
                .starts_with("https://audit.example/ui/search?topic=tp-1&q=")
        );
        let json = serde_json::to_value(&n).unwrap();
        assert_eq!(json["startsAt"], "2027-01-15T08:16:40Z");
        assert!(json.get("endsAt").is_none());
        assert!(json["generatorURL"].is_string());
    }

    #[test]
    fn a_node_that_sends_nothing_for_the_gap_fires_and_clears_with_its_next_batch() {
        let mut watch = GapWatch::new(Duration::from_secs(300), at(0));
        let nodes = vec!["cp-1".to_string(), "cp-2".to_string()];
        watch.expect(&nodes, at(0));
        watch.batch("cp-1", at(10));
        watch.batch("cp-2", at(10));
        assert!(watch.advance(at(200)).is_empty());
        watch.batch("cp-1", at(250));
        // cp-2 is silent since 10 s: at 310 it has been five minutes.
        assert_eq!(
            watch.advance(at(310)),
            [GapChange::Fired {
                node: "cp-2".into(),
                since: at(10)
            }]
        );
        assert!(watch.advance(at(320)).is_empty(), "fires once");
        watch.batch("cp-2", at(400));
        assert_eq!(
            watch.advance(at(401)),
            [GapChange::Resolved {
                node: "cp-2".into(),
                since: at(10),
                at: at(401)
            }]
        );
        // cp-1 goes quiet because auditing was turned off on it: no gap.
        watch.expect(&["cp-2".to_string()], at(500));
        watch.batch("cp-2", at(900));
        assert!(watch.advance(at(1000)).is_empty());
        assert_eq!(watch.expected().collect::<Vec<_>>(), ["cp-2"]);
    }

    #[test]
    fn silence_counts_from_when_listening_began() {
        // A collector that starts at 1000 does not blame a node for the time before.
        let mut watch = GapWatch::new(Duration::from_secs(300), at(1000));
        watch.expect(&["cp-1".to_string()], at(0));
        assert!(watch.advance(at(1200)).is_empty());
        assert_eq!(
            watch.advance(at(1300)),
            [GapChange::Fired {
                node: "cp-1".into(),
                since: at(1000)
            }]
        );
    }

    #[test]
    fn a_rule_spec_says_which_field_is_wrong() {
        let good = RuleSpec {
            name: "exec".into(),
            query: "verb:create and resource:pods".into(),
            window_seconds: 300,
            threshold: 1,
            group_by: vec![GroupField::User],
            severity: "critical".into(),
            summary: Some("{{user}} exec".into()),
            labels: BTreeMap::from([("team".into(), "sec".into())]),
            ..RuleSpec::default()
        };
        assert!(good.compile().is_ok());
        let wrong = |edit: fn(&mut RuleSpec)| {
            let mut spec = good.clone();
            edit(&mut spec);
            spec.compile().unwrap_err()
        };
        let err = wrong(|s| s.query = "verb:create and (".into());
        assert_eq!(err.field, "query");
        assert!(err.message.starts_with("at column "), "{err}");
        assert_eq!(wrong(|s| s.window_seconds = 0).field, "window");
        assert_eq!(wrong(|s| s.threshold = 0).field, "threshold");
        assert_eq!(
            wrong(|s| s.summary = Some("{{verb}}".into())).field,
            "summary"
        );
        assert_eq!(
            wrong(|s| {
                s.labels.insert("user".into(), "x".into());
            })
            .field,
            "labels"
        );
        assert_eq!(
            wrong(|s| {
                s.labels.insert("bad-name".into(), "x".into());
            })
            .field,
            "labels"
        );
        assert_eq!(
            wrong(|s| s.group_by = vec![GroupField::User, GroupField::User]).field,
            "groupBy"
        );
        let json: RuleSpec = serde_json::from_value(serde_json::json!({
            "name": "n", "windowSeconds": 60, "threshold": 2, "groupBy": ["sourceIP"]
        }))
        .unwrap();
        assert_eq!(json.severity, "warning");
        assert_eq!(json.group_by, [GroupField::SourceIp]);
    }

    #[test]
    fn templates_name_only_what_an_alert_can_fill() {
        assert!(check_template("{{user}} did {{count}}", &[GroupField::User]).is_ok());
        assert_eq!(
            check_template("{{ namespace }}", &[GroupField::User]),
            Err(TemplateError("namespace".into()))
        );
        let values = BTreeMap::from([("count", "3".to_string())]);
        assert_eq!(
            render("{{count}} and {{ count }}, {{", &values),
            "3 and 3, {{"
        );
    }

    #[test]
    fn a_lease_is_renewed_by_its_holder_and_taken_over_only_once_expired() {
        let lease = EvaluatorLease {
            holder: "a".into(),
            renewed_micros: 10_000_000,
        };
        let duration = Duration::from_secs(15);
        assert!(EvaluatorLease::may_take(None, "b", 0, duration));
        assert!(EvaluatorLease::may_take(
            Some(&lease),
            "a",
            20_000_000,
            duration
        ));
        assert!(!EvaluatorLease::may_take(
            Some(&lease),
            "b",
            25_000_000,
            duration
        ));
        assert!(EvaluatorLease::may_take(
            Some(&lease),
            "b",
            25_000_001,
            duration
        ));
    }

    #[test]
    fn replaced_counts_fire_and_a_group_missing_from_them_resolves() {
        let rule = Rule::new(
            "r",
            "verb:delete",
            Duration::from_secs(60),
            3,
            &[GroupField::User],
        )
        .unwrap();
        let mut window = Window::new(rule, 2);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000);
        let alice = vec!["alice".to_string()];
        let bob = vec!["bob".to_string()];
        window.replace([(alice.clone(), 2), (bob.clone(), 1)], t0);
        assert!(window.advance(t0).is_empty());
        let t1 = t0 + Duration::from_secs(2);
        window.replace([(alice.clone(), 3), (bob.clone(), 1)], t1);
        assert_eq!(
            window.advance(t1),
            vec![Change::Fired {
                group: alice.clone(),
                count: 3,
                at: t1
            }]
        );
        // Still firing with a new count: no change; the firing group keeps its start.
        let t2 = t1 + Duration::from_secs(2);
        window.replace([(alice.clone(), 5)], t2);
        assert!(window.advance(t2).is_empty());
        assert_eq!(
            window.firing().next().map(|f| (f.count, f.since)),
            Some((5, t1))
        );
        // Groups no longer counted free their place for new ones.
        let carol = vec!["carol".to_string()];
        let t3 = t2 + Duration::from_secs(2);
        window.replace([(carol.clone(), 1)], t3);
        assert_eq!(window.overflowed, 0);
        assert_eq!(
            window.advance(t3),
            vec![Change::Resolved {
                group: alice,
                at: t3
            }]
        );
        assert_eq!(window.groups(), 1);
    }
}
