//! Replaying recorded audit events through a candidate policy: how much it would log, which rules
//! do the work, and what changes against what was recorded.

use std::collections::BTreeMap;

use serde::Serialize;

use super::eval::{Evaluator, RequestAttributes};
use crate::audit::{Event, Level, Policy};

const LEVELS: [Level; 4] = [
    Level::None,
    Level::Metadata,
    Level::Request,
    Level::RequestResponse,
];

/// One event's outcome under the candidate policy (the `--per-event` line).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PerEvent {
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub level: Level,
    pub rule: Option<usize>,
}

/// What a candidate policy would have done with a set of recorded events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Events replayed.
    pub events: u64,
    /// Per candidate level: events that would be written (stage not omitted) and their estimated
    /// bytes.
    pub by_level: BTreeMap<Level, LevelTotals>,
    /// Events whose stage the candidate omits.
    pub omitted_by_stage: u64,
    /// Per rule index (None: no rule matched): events matched.
    pub by_rule: BTreeMap<Option<usize>, u64>,
    /// (recorded level, candidate level) -> events.
    pub transitions: BTreeMap<(Level, Level), u64>,
    /// Events whose candidate level records bodies the recorded event did not have, so their
    /// byte estimate is a lower bound.
    pub bodies_unknown: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelTotals {
    pub events: u64,
    pub bytes: u64,
}

pub struct Preview {
    evaluator: Evaluator,
    report: Report,
}

impl Preview {
    pub fn new(policy: &Policy) -> Self {
        Preview {
            evaluator: Evaluator::new(policy),
            report: Report::default(),
        }
    }

    /// Replays one event; `size` is the length of its recorded JSON.
    pub fn add(&mut self, event: &Event, size: usize) -> PerEvent {
        let decision = self.evaluator.evaluate(&RequestAttributes::of_event(event));
        let report = &mut self.report;
        report.events += 1;
        *report.by_rule.entry(decision.rule).or_default() += 1;
        *report
            .transitions
            .entry((event.level, decision.level))
            .or_default() += 1;
        if decision.level != Level::None {
            if decision.omit_stages.contains(&event.stage) {
                report.omitted_by_stage += 1;
            } else {
                let (bytes, exact) = estimate_bytes(event, size, decision.level);
                if !exact {
                    report.bodies_unknown += 1;
                }
                let totals = report.by_level.entry(decision.level).or_default();
                totals.events += 1;
                totals.bytes += bytes;
            }
        } else {
            report.by_level.entry(Level::None).or_default().events += 1;
        }
        PerEvent {
            audit_id: event.audit_id.clone(),
            level: decision.level,
            rule: decision.rule,
        }
    }

    pub fn report(&self) -> &Report {
        &self.report
    }
}

/// The event's size at `level`: its recorded size without the bodies the level would not keep.
/// Bodies a higher level would keep but the recording lacks are unknown (returns false).
fn estimate_bytes(event: &Event, size: usize, level: Level) -> (u64, bool) {
    let body_len =
        |body: &Option<crate::audit::Body>| body.as_ref().map_or(0, |b| b.get().len() + 20);
    let request = body_len(&event.request_object);
    let response = body_len(&event.response_object);
    let metadata = size.saturating_sub(request + response);
    let mut bytes = metadata;
    if level >= Level::Request {
        bytes += request;
    }
    if level >= Level::RequestResponse {
        bytes += response;
    }
    let exact = level <= event.level || event.level == Level::None;
    (bytes as u64, exact)
}

impl Report {
    /// A table for people.
    pub fn render(&self, policy: &Policy) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let logged: LevelTotals = self
            .by_level
            .iter()
            .filter(|(level, _)| **level != Level::None)
            .fold(LevelTotals::default(), |acc, (_, t)| LevelTotals {
                events: acc.events + t.events,
                bytes: acc.bytes + t.bytes,
            });
        let _ = writeln!(out, "events replayed: {}", self.events);
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<18}{:>10}{:>14}", "level", "events", "est. bytes");
        for level in LEVELS {
            let totals = self.by_level.get(&level).copied().unwrap_or_default();
            let bytes = if level == Level::None {
                "-".to_string()
            } else {
                human_bytes(totals.bytes)
            };
            let _ = writeln!(
                out,
                "{:<18}{:>10}{:>14}",
                format!("{level:?}"),
                totals.events,
                bytes
            );
        }
        let _ = writeln!(
            out,
            "{:<18}{:>10}{:>14}",
            "logged",
            logged.events,
            human_bytes(logged.bytes)
        );
        if self.omitted_by_stage > 0 {
            let _ = writeln!(
                out,
                "(and {} events of omitted stages)",
                self.omitted_by_stage
            );
        }
        if self.bodies_unknown > 0 {
            let _ = writeln!(
                out,
                "(the recording lacks the bodies {} events would now carry: their bytes are a lower bound)",
                self.bodies_unknown
            );
        }

        let _ = writeln!(out);
        let _ = writeln!(out, "rules matching most events:");
        let mut rules: Vec<(&Option<usize>, &u64)> = self.by_rule.iter().collect();
        rules.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (rule, count) in rules.into_iter().take(10) {
            let description = match rule {
                Some(index) => describe_rule(policy, *index),
                None => "no rule matched (None)".to_string(),
            };
            let _ = writeln!(out, "{count:>10}  {description}");
        }

        let _ = writeln!(out);
        let changed: u64 = self
            .transitions
            .iter()
            .filter(|((from, to), _)| from != to)
            .map(|(_, n)| n)
            .sum();
        let more: u64 = self
            .transitions
            .iter()
            .filter(|((from, to), _)| to > from)
            .map(|(_, n)| n)
            .sum();
        let dropped: u64 = self
            .transitions
            .iter()
            .filter(|((from, to), _)| *to == Level::None && *from != Level::None)
            .map(|(_, n)| n)
            .sum();
        let _ = writeln!(
            out,
            "against the recorded levels: {changed} of {} events change ({more} more detail, {} less, of which {dropped} no longer logged)",
            self.events,
            changed - more
        );
        let _ = write!(out, "{:<18}", "recorded \\ new");
        for level in LEVELS {
            let _ = write!(out, "{:>16}", format!("{level:?}"));
        }
        let _ = writeln!(out);
        for from in LEVELS {
            if !self.transitions.keys().any(|(f, _)| *f == from) {
                continue;
            }
            let _ = write!(out, "{:<18}", format!("{from:?}"));
            for to in LEVELS {
                let _ = write!(
                    out,
                    "{:>16}",
                    self.transitions.get(&(from, to)).copied().unwrap_or(0)
                );
            }
            let _ = writeln!(out);
        }
        out
    }
}

fn describe_rule(policy: &Policy, index: usize) -> String {
    let Some(rule) = policy.rules.get(index) else {
        return format!("rule {index}");
    };
    let mut parts = vec![format!("rule {index} {:?}", rule.level)];
    let list = |name: &str, items: &[String]| {
        (!items.is_empty()).then(|| format!("{name}={}", items.join(",")))
    };
    parts.extend(list("users", &rule.users));
    parts.extend(list("groups", &rule.user_groups));
    parts.extend(list("verbs", &rule.verbs));
    parts.extend(list("namespaces", &rule.namespaces));
    if !rule.resources.is_empty() {
        let resources: Vec<String> = rule
            .resources
            .iter()
            .map(|gr| {
                let group = if gr.group.is_empty() {
                    "core"
                } else {
                    &gr.group
                };
                if gr.resources.is_empty() {
                    format!("{group}/*")
                } else {
                    format!("{group}/{}", gr.resources.join("|"))
                }
            })
            .collect();
        parts.push(format!("resources={}", resources.join(",")));
    }
    parts.extend(list("urls", &rule.non_resource_urls));
    let mut text = parts.join(" ");
    if text.len() > 110 {
        text.truncate(107);
        text.push_str("...");
    }
    text
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::PolicyRule;

    fn event(line: &str) -> Event {
        serde_json::from_str(line).unwrap()
    }

    const GET_SECRET: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/secrets/db","verb":"get","user":{"username":"alice","groups":["devs","system:authenticated"]},"sourceIPs":["127.0.0.1"],"objectRef":{"resource":"secrets","namespace":"shop","name":"db","apiVersion":"v1"},"responseStatus":{"code":200}}"#;
    const CREATE_DEPLOYMENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a2","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/shop/deployments?fieldManager=kubectl","verb":"create","user":{"username":"bob","groups":["ops"]},"objectRef":{"resource":"deployments","namespace":"shop","name":"web","apiGroup":"apps","apiVersion":"v1"},"requestObject":{"kind":"Deployment","spec":{"replicas":3}},"responseObject":{"kind":"Deployment","status":{}},"responseStatus":{"code":201}}"#;
    const HEALTHZ: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a3","stage":"ResponseComplete","requestURI":"/healthz?timeout=32s","verb":"get","user":{"username":"system:anonymous"}}"#;

    #[test]
    fn replay_counts_levels_rules_and_changes() {
        let policy = Policy {
            api_version: "audit.k8s.io/v1".into(),
            kind: "Policy".into(),
            metadata: None,
            rules: vec![
                PolicyRule {
                    non_resource_urls: vec!["/healthz*".into()],
                    ..PolicyRule::at(Level::None)
                },
                PolicyRule {
                    verbs: vec!["create".into()],
                    ..PolicyRule::at(Level::Request)
                },
                PolicyRule::at(Level::Metadata),
            ],
            omit_stages: vec![],
            omit_managed_fields: None,
        };
        let mut preview = Preview::new(&policy);
        let lines = [GET_SECRET, CREATE_DEPLOYMENT, HEALTHZ];
        let outcomes: Vec<PerEvent> = lines
            .iter()
            .map(|line| preview.add(&event(line), line.len()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                PerEvent {
                    audit_id: "a1".into(),
                    level: Level::Metadata,
                    rule: Some(2)
                },
                PerEvent {
                    audit_id: "a2".into(),
                    level: Level::Request,
                    rule: Some(1)
                },
                PerEvent {
                    audit_id: "a3".into(),
                    level: Level::None,
                    rule: Some(0)
                },
            ]
        );
        let report = preview.report();
        assert_eq!(report.events, 3);
        assert_eq!(report.by_level[&Level::None].events, 1);
        assert_eq!(report.by_level[&Level::Request].events, 1);
        // The create loses its response body.
        assert!(report.by_level[&Level::Request].bytes < CREATE_DEPLOYMENT.len() as u64);
        assert_eq!(
            report.transitions[&(Level::RequestResponse, Level::Request)],
            1
        );
        assert_eq!(report.transitions[&(Level::Metadata, Level::None)], 1);
        let table = report.render(&policy);
        assert!(table.contains("2 of 3 events change"), "{table}");
        assert!(table.contains("rule 1 Request verbs=create"), "{table}");
        assert_eq!(
            serde_json::to_string(&outcomes[2]).unwrap(),
            r#"{"auditID":"a3","level":"None","rule":0}"#
        );
    }

    #[test]
    fn the_policy_sees_a_create_without_its_name_and_a_path_without_its_query() {
        let created = event(CREATE_DEPLOYMENT);
        let attributes = RequestAttributes::of_event(&created);
        assert_eq!(attributes.name, "");
        assert_eq!(attributes.path, "/apis/apps/v1/namespaces/shop/deployments");
        assert_eq!(
            RequestAttributes::of_event(&event(HEALTHZ)).path,
            "/healthz"
        );
        assert!(!RequestAttributes::of_event(&event(HEALTHZ)).resource_request);
    }
}
