//! Applying a policy to an event a kube-apiserver already recorded: what the collector does so
//! that a policy which only narrows takes effect without restarting anything.
//!
//! The collector can only take away: an event the kube-apiserver recorded at a lower level than
//! the policy asks is left at its level. What the kube-apiserver itself would have done under the
//! policy is what is done here:
//! - level None, or a stage the decision omits: no event at all;
//! - Metadata: neither `requestObject` nor `responseObject`;
//! - Request: no `responseObject`;
//! - `omitManagedFields`: `metadata.managedFields` removed from the objects kept (and from each
//!   item of a list), as the kube-apiserver clears them before logging; a patch's request body
//!   is the patch as sent, which the kube-apiserver logs untouched, and so is it here.
//!
//! An event left as it is keeps its exact bytes; one that is reduced keeps every other field's
//! bytes and order, with `level` saying the level it was reduced to.

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::eval::Decision;
use crate::audit::{Event, Level, Policy};

/// What happens to one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforced {
    /// Stored as received, byte for byte.
    Keep,
    /// Stored as this JSON instead.
    Reduce(String),
    /// Not stored.
    Drop(DropReason),
}

/// Why an event is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The decision's level is None: by the rule of this index, or by no rule matching.
    LevelNone { rule: Option<usize> },
    /// The event's stage is one the decision omits.
    OmittedStage,
}

/// The metrics label of a rule: its index in the policy, or `none` when no rule matched.
pub fn rule_label(rule: Option<usize>) -> String {
    rule.map_or_else(|| "none".to_string(), |index| index.to_string())
}

/// The label of events dropped for their stage.
pub const OMITTED_STAGE_LABEL: &str = "policy-omitted-stage";

impl DropReason {
    /// The `rule` label in /metrics: the rule's index, `none`, or `policy-omitted-stage`.
    pub fn label(self) -> String {
        match self {
            DropReason::LevelNone { rule } => rule_label(rule),
            DropReason::OmittedStage => OMITTED_STAGE_LABEL.to_string(),
        }
    }
}

/// The hash a policy is known by once enforced: hex SHA-256 of [`Policy::to_yaml`] (the rendered
/// file's hash also covers its header comment, so the two differ for the same rules).
pub fn policy_hash(policy: &Policy) -> String {
    hex::encode(Sha256::digest(policy.to_yaml().as_bytes()))
}

/// Applies `decision` (the policy's, for this event's request) to `event`, whose exact bytes are
/// `raw`.
pub fn enforce(raw: &str, event: &Event, decision: &Decision) -> Enforced {
    if decision.level == Level::None {
        return Enforced::Drop(DropReason::LevelNone {
            rule: decision.rule,
        });
    }
    if decision.omit_stages.contains(&event.stage) {
        return Enforced::Drop(DropReason::OmittedStage);
    }
    let level = event.level.min(decision.level);
    let lower = level < event.level;
    let strip = Strip {
        request: decision.omit_managed_fields && event.verb != "patch",
        response: decision.omit_managed_fields,
    };
    let strip_managed_fields = (strip.request
        && level >= Level::Request
        && event
            .request_object
            .as_ref()
            .is_some_and(has_managed_fields))
        || (strip.response
            && level >= Level::RequestResponse
            && event
                .response_object
                .as_ref()
                .is_some_and(has_managed_fields));
    if !lower && !strip_managed_fields {
        return Enforced::Keep;
    }
    match rewrite(raw, level, lower, strip) {
        Some(reduced) => Enforced::Reduce(reduced),
        // The typed event parsed from these very bytes, so they are an object; should they
        // somehow not be, storing less than asked is not an option the collector has.
        None => Enforced::Keep,
    }
}

/// Which bodies lose their managed fields.
#[derive(Clone, Copy)]
struct Strip {
    request: bool,
    response: bool,
}

fn has_managed_fields(body: &crate::audit::Body) -> bool {
    // Most bodies have none: the text says so without a parse.
    if !body.get().contains("\"managedFields\"") {
        return false;
    }
    let object = body.to_value();
    let in_metadata = |value: &serde_json::Value| {
        value
            .get("metadata")
            .and_then(|m| m.get("managedFields"))
            .is_some()
    };
    in_metadata(&object)
        || object
            .get("items")
            .and_then(|items| items.as_array())
            .is_some_and(|items| items.iter().any(in_metadata))
}

/// Removes `metadata.managedFields` from an object, and from each item of a list.
fn without_managed_fields(raw: &RawValue) -> String {
    let Ok(mut value) = serde_json::from_str::<serde_json::Value>(raw.get()) else {
        return raw.get().to_string();
    };
    let strip = |value: &mut serde_json::Value| {
        if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            metadata.remove("managedFields");
        }
    };
    strip(&mut value);
    if let Some(items) = value.get_mut("items").and_then(|i| i.as_array_mut()) {
        items.iter_mut().for_each(strip);
    }
    serde_json::to_string(&value).expect("a JSON value serializes")
}

/// The top-level fields of an object, in order, each as its exact bytes.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

fn rewrite(raw: &str, level: Level, set_level: bool, strip: Strip) -> Option<String> {
    let Fields(fields) = serde_json::from_str(raw).ok()?;
    let mut out = String::with_capacity(raw.len().min(4096));
    out.push('{');
    let mut first = true;
    for (key, value) in fields {
        let kept = match key.as_str() {
            "requestObject" => level >= Level::Request,
            "responseObject" => level >= Level::RequestResponse,
            _ => true,
        };
        if !kept {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::to_string(&key).expect("a string serializes"));
        out.push(':');
        match key.as_str() {
            "level" if set_level => {
                let _ = write!(out, "\"{}\"", level.as_str());
            }
            "requestObject" if strip.request => {
                out.push_str(&without_managed_fields(value));
            }
            "responseObject" if strip.response => {
                out.push_str(&without_managed_fields(value));
            }
            _ => out.push_str(value.get()),
        }
    }
    out.push('}');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{PolicyRule, Stage};
    use crate::policy::{Evaluator, RequestAttributes};

    const POD: &str = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"shop","managedFields":[{"manager":"kubectl"}]},"spec":{}}"#;

    fn event(level: &str, stage: &str, verb: &str, user: &str) -> String {
        format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"{level}","auditID":"a-1","stage":"{stage}","requestURI":"/api/v1/namespaces/shop/pods/web","verb":"{verb}","user":{{"username":"{user}","groups":["system:authenticated"]}},"objectRef":{{"resource":"pods","namespace":"shop","name":"web","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"code":200}},"requestObject":{POD},"responseObject":{POD},"requestReceivedTimestamp":"2026-11-30T10:00:00.000000Z","stageTimestamp":"2026-11-30T10:00:00.010000Z","annotations":{{"authorization.k8s.io/decision":"allow"}}}}"#
        )
    }

    fn run(policy: &Policy, raw: &str) -> Enforced {
        let parsed: Event = serde_json::from_str(raw).unwrap();
        let evaluator = Evaluator::new(policy);
        let decision = evaluator.evaluate(&RequestAttributes::of_event(&parsed));
        enforce(raw, &parsed, decision)
    }

    fn policy(rules: Vec<PolicyRule>) -> Policy {
        Policy {
            api_version: crate::audit::API_VERSION.into(),
            kind: crate::audit::KIND.into(),
            metadata: None,
            rules,
            omit_stages: vec![],
            omit_managed_fields: None,
        }
    }

    fn reduced(enforced: Enforced) -> serde_json::Value {
        match enforced {
            Enforced::Reduce(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("reduced, not {other:?}"),
        }
    }

    #[test]
    fn each_level_keeps_what_the_kube_apiserver_would_have_sent() {
        let raw = event("RequestResponse", "ResponseComplete", "update", "alice");
        assert_eq!(
            run(&policy(vec![PolicyRule::at(Level::RequestResponse)]), &raw),
            Enforced::Keep
        );
        let original: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let request = reduced(run(&policy(vec![PolicyRule::at(Level::Request)]), &raw));
        assert_eq!(request["level"], "Request");
        assert_eq!(request["requestObject"], original["requestObject"]);
        assert!(request.get("responseObject").is_none());
        let metadata = reduced(run(&policy(vec![PolicyRule::at(Level::Metadata)]), &raw));
        assert_eq!(metadata["level"], "Metadata");
        assert!(
            metadata.get("requestObject").is_none() && metadata.get("responseObject").is_none()
        );
        // Everything else is as it was.
        let mut expected = original.clone();
        expected["level"] = "Metadata".into();
        expected.as_object_mut().unwrap().remove("requestObject");
        expected.as_object_mut().unwrap().remove("responseObject");
        assert_eq!(metadata, expected);
        assert_eq!(
            run(&policy(vec![PolicyRule::at(Level::None)]), &raw),
            Enforced::Drop(DropReason::LevelNone { rule: Some(0) })
        );
    }

    #[test]
    fn a_reduced_event_keeps_the_other_fields_bytes_and_order() {
        let raw = event("RequestResponse", "ResponseComplete", "update", "alice");
        let Enforced::Reduce(text) = run(&policy(vec![PolicyRule::at(Level::Metadata)]), &raw)
        else {
            panic!("reduced")
        };
        let request_object = format!(r#","requestObject":{POD},"responseObject":{POD}"#);
        let expected = raw
            .replace(&request_object, "")
            .replace(r#""level":"RequestResponse""#, r#""level":"Metadata""#);
        assert_eq!(text, expected);
    }

    #[test]
    fn the_collector_only_narrows() {
        let raw = event("Metadata", "ResponseComplete", "get", "alice");
        let raw = raw.replace(
            &format!(r#","requestObject":{POD},"responseObject":{POD}"#),
            "",
        );
        assert_eq!(
            run(&policy(vec![PolicyRule::at(Level::RequestResponse)]), &raw),
            Enforced::Keep
        );
        let request = event("Request", "ResponseComplete", "get", "alice")
            .replace(&format!(r#","responseObject":{POD}"#), "");
        assert_eq!(
            run(
                &policy(vec![PolicyRule::at(Level::RequestResponse)]),
                &request
            ),
            Enforced::Keep
        );
    }

    #[test]
    fn omitted_stages_and_unmatched_requests_are_dropped() {
        let raw = event("RequestResponse", "RequestReceived", "get", "alice");
        let mut omitting = policy(vec![PolicyRule::at(Level::Metadata)]);
        omitting.omit_stages = vec![Stage::RequestReceived];
        assert_eq!(
            run(&omitting, &raw),
            Enforced::Drop(DropReason::OmittedStage)
        );
        let mut per_rule = PolicyRule::at(Level::RequestResponse);
        per_rule.omit_stages = vec![Stage::RequestReceived];
        assert_eq!(
            run(&policy(vec![per_rule]), &raw),
            Enforced::Drop(DropReason::OmittedStage)
        );
        let mut bob_only = PolicyRule::at(Level::RequestResponse);
        bob_only.users = vec!["bob".into()];
        let dropped = run(&policy(vec![bob_only.clone()]), &raw);
        assert_eq!(
            dropped,
            Enforced::Drop(DropReason::LevelNone { rule: None })
        );
        let Enforced::Drop(reason) = dropped else {
            unreachable!()
        };
        assert_eq!(reason.label(), "none");
        assert_eq!(DropReason::OmittedStage.label(), "policy-omitted-stage");
        // The first matching rule decides, and the label names it.
        let mut quiet_alice = PolicyRule::at(Level::None);
        quiet_alice.users = vec!["alice".into()];
        assert_eq!(
            run(
                &policy(vec![bob_only, quiet_alice, PolicyRule::at(Level::Metadata)]),
                &raw
            ),
            Enforced::Drop(DropReason::LevelNone { rule: Some(1) })
        );
    }

    #[test]
    fn managed_fields_are_removed_where_the_policy_says() {
        let raw = event("RequestResponse", "ResponseComplete", "update", "alice");
        let mut omitting = policy(vec![PolicyRule::at(Level::RequestResponse)]);
        omitting.omit_managed_fields = Some(true);
        let stripped = reduced(run(&omitting, &raw));
        assert_eq!(stripped["level"], "RequestResponse");
        for body in ["requestObject", "responseObject"] {
            assert!(stripped[body]["metadata"].get("managedFields").is_none());
            assert_eq!(stripped[body]["metadata"]["name"], "web");
        }
        // A rule may say otherwise than its policy.
        let mut keeping = PolicyRule::at(Level::RequestResponse);
        keeping.omit_managed_fields = Some(false);
        let mut policy_keeping = omitting.clone();
        policy_keeping.rules = vec![keeping];
        assert_eq!(run(&policy_keeping, &raw), Enforced::Keep);
        // Items of a list lose theirs too.
        let list = format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{}},"items":[{POD},{POD}]}}"#
        );
        let listed = event("RequestResponse", "ResponseComplete", "list", "alice").replace(
            &format!(r#""responseObject":{POD}"#),
            &format!(r#""responseObject":{list}"#),
        );
        let stripped = reduced(run(&omitting, &listed));
        for item in stripped["responseObject"]["items"].as_array().unwrap() {
            assert!(item["metadata"].get("managedFields").is_none());
        }
        // A patch is logged as sent; the object it answers with loses them.
        let patch = event("RequestResponse", "ResponseComplete", "patch", "alice");
        let stripped = reduced(run(&omitting, &patch));
        assert!(
            stripped["requestObject"]["metadata"]
                .get("managedFields")
                .is_some()
        );
        assert!(
            stripped["responseObject"]["metadata"]
                .get("managedFields")
                .is_none()
        );
        let patch_at_request = patch.replace(&format!(r#","responseObject":{POD}"#), "");
        assert_eq!(run(&omitting, &patch_at_request), Enforced::Keep);
        // Nothing to remove: the bytes are kept.
        let plain = raw.replace(r#","managedFields":[{"manager":"kubectl"}]"#, "");
        assert_eq!(run(&omitting, &plain), Enforced::Keep);
    }

    #[test]
    fn the_hash_follows_the_rules() {
        let a = policy(vec![PolicyRule::at(Level::Metadata)]);
        let b = policy(vec![PolicyRule::at(Level::Request)]);
        assert_eq!(policy_hash(&a), policy_hash(&a.clone()));
        assert_ne!(policy_hash(&a), policy_hash(&b));
        assert_eq!(policy_hash(&a).len(), 64);
    }
}
