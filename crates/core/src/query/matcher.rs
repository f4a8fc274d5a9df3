//! Whether one event matches a query, in memory: what routes decide at intake. Its answer is the
//! embedded store's search answer for the same event (a property test in the embedded store
//! compares the two), so a route holds exactly what searching the main topic would find.
//!
//! What the store indexes decides presence: user, verb, stage, level and URI are always there
//! (an empty string is a value, matched by `user:""`); resource and apiGroup whenever the event
//! names an object; subresource, namespace and name only when not empty; code, userAgent and
//! decision when the event has them; each group and source IP on its own; impersonatedUser when
//! the request impersonated someone (an empty name is a value, as for user); roleRef when
//! [`role_ref`] finds one.

use super::{Field, Op, ParseError, Query, Value};
use crate::audit::Event;

/// Free-text words longer than this (in bytes, not less) are not indexed, so never match.
const MAX_WORD_BYTES: usize = 40;

/// The values `field` must take for `query` to match an event: `Some(values)` when no event
/// whose `field` is none of `values` can match (so a rule needs only be tried on events with one
/// of them), `None` when the query does not narrow `field` that way. Only single-valued fields
/// (resource, verb, namespace, ...) are meaningful here.
pub fn required_values(query: &Query, field: Field) -> Option<Vec<&str>> {
    match query {
        Query::Field {
            field: f,
            op: Op::Eq,
            value: Value::Exact(value),
        } if *f == field => Some(vec![value.as_str()]),
        // One narrowing part narrows the whole conjunction.
        Query::And(parts) => parts.iter().find_map(|p| required_values(p, field)),
        // Every alternative must narrow it, and the union is what is required.
        Query::Or(parts) => {
            let mut values = Vec::new();
            for part in parts {
                values.extend(required_values(part, field)?);
            }
            values.sort_unstable();
            values.dedup();
            Some(values)
        }
        _ => None,
    }
}

/// The role a RoleBinding or ClusterRoleBinding event's binding grants: `roleRef.name` of the
/// response body, else of the request body. The response holds the stored binding, whole even
/// after a patch whose request names only what it changes (roleRef itself cannot change); the
/// request covers a refused create and events logged at Request level, whose response is not
/// kept. `None` for events on anything else, and for binding events logged without bodies
/// (Metadata level) or whose bodies hold no binding (a list, a delete's options).
///
/// Bodies are kept as text; only binding events pay for reading them.
pub fn role_ref(event: &Event) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Binding {
        #[serde(rename = "roleRef")]
        role_ref: RoleRef,
    }
    #[derive(serde::Deserialize)]
    struct RoleRef {
        name: String,
    }
    let object = event.object_ref.as_ref()?;
    let is_binding = object.api_group == "rbac.authorization.k8s.io"
        && matches!(
            object.resource.as_str(),
            "rolebindings" | "clusterrolebindings"
        );
    if !is_binding {
        return None;
    }
    [&event.response_object, &event.request_object]
        .into_iter()
        .flatten()
        .find_map(|body| serde_json::from_str::<Binding>(body.get()).ok())
        .map(|binding| binding.role_ref.name)
}

/// Whether `event` matches `query`.
pub fn matches(query: &Query, event: &Event) -> bool {
    match query {
        Query::All => true,
        Query::And(parts) => parts.iter().all(|q| matches(q, event)),
        Query::Or(parts) => parts.iter().any(|q| matches(q, event)),
        Query::Not(inner) => !matches(inner, event),
        Query::Text(text) => {
            let wanted = words(text);
            if wanted.is_empty() {
                return true;
            }
            let mut haystack = words(event.request_path());
            if let Some(object) = &event.object_ref {
                haystack.extend(words(&object.name));
            }
            wanted.iter().all(|w| haystack.contains(w))
        }
        Query::Field { field, op, value } => field_matches(*field, *op, value, event),
    }
}

/// Parses a query for matching events one by one: the search language, less what the store
/// cannot answer either (an auditID prefix: only whole IDs are indexed).
pub fn parse_matchable(input: &str) -> Result<Query, ParseError> {
    let query = super::parse(input)?;
    if has_audit_id_prefix(&query) {
        return Err(ParseError {
            column: 1,
            message: "auditID matches whole IDs only (no `*` but `auditID:*`)".into(),
        });
    }
    Ok(query)
}

fn has_audit_id_prefix(query: &Query) -> bool {
    match query {
        Query::And(parts) | Query::Or(parts) => parts.iter().any(has_audit_id_prefix),
        Query::Not(inner) => has_audit_id_prefix(inner),
        Query::Field {
            field: Field::AuditId,
            value: Value::Prefix(prefix),
            ..
        } => !prefix.is_empty(),
        _ => false,
    }
}

/// The words free text is made of: runs of alphanumeric characters, lowercased, the long ones
/// left out (tantivy's default analyzer, which the store indexes and searches with).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty() && w.len() < MAX_WORD_BYTES)
        .map(|w| w.chars().flat_map(char::to_lowercase).collect())
        .collect()
}

fn field_matches(field: Field, op: Op, value: &Value, event: &Event) -> bool {
    if field == Field::Code {
        let Some(code) = event.response_status.as_ref().and_then(|s| s.code) else {
            return false;
        };
        let code = code.max(0) as u64;
        let Value::Number(n) = value else {
            // `code:*`: any event with a code.
            return true;
        };
        return match op {
            Op::Eq => code == *n,
            Op::Lt => code < *n,
            Op::Le => code <= *n,
            Op::Gt => code > *n,
            Op::Ge => code >= *n,
        };
    }
    let test = |candidate: &str| match value {
        Value::Exact(text) => candidate == text,
        Value::Prefix(prefix) => candidate.starts_with(prefix.as_str()),
        Value::Number(n) => candidate == n.to_string(),
    };
    let object = event.object_ref.as_ref();
    let non_empty = |s: &str| !s.is_empty() && test(s);
    match field {
        Field::User => test(&event.user.username),
        Field::Group => event.user.groups.iter().any(|g| test(g)),
        Field::Verb => test(&event.verb),
        Field::Resource => object.is_some_and(|o| test(&o.resource)),
        Field::Subresource => object.is_some_and(|o| non_empty(&o.subresource)),
        Field::ApiGroup => object.is_some_and(|o| test(&o.api_group)),
        Field::Namespace => object.is_some_and(|o| non_empty(&o.namespace)),
        Field::Name => object.is_some_and(|o| non_empty(&o.name)),
        Field::SourceIp => event.source_ips.iter().any(|ip| test(ip)),
        Field::UserAgent => event.user_agent.as_deref().is_some_and(test),
        Field::Stage => test(event.stage.as_str()),
        Field::Level => test(event.level.as_str()),
        Field::Decision => event.decision().is_some_and(test),
        Field::Uri => test(event.request_path()),
        // Every event has an ID; a prefix other than `*` is refused by `parse_matchable`.
        Field::AuditId => test(&event.audit_id),
        Field::ImpersonatedUser => event
            .impersonated_user
            .as_ref()
            .is_some_and(|u| test(&u.username)),
        Field::RoleRef => role_ref(event).is_some_and(|name| test(&name)),
        Field::Code => unreachable!("handled above"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_values_a_query_requires_of_a_field_are_a_necessary_condition() {
        let required = |q: &str, f| {
            let query = parse_matchable(q).unwrap();
            required_values(&query, f).map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
        };
        assert_eq!(
            required("verb:delete and resource:pods", Field::Resource),
            Some(vec!["pods".to_string()])
        );
        assert_eq!(
            required(
                "(resource:secrets or resource:configmaps) and verb:get",
                Field::Resource
            ),
            Some(vec!["configmaps".to_string(), "secrets".to_string()])
        );
        assert_eq!(
            required("resource:secrets or verb:get", Field::Resource),
            None
        );
        assert_eq!(required("not resource:secrets", Field::Resource), None);
        assert_eq!(required("resource:sec*", Field::Resource), None);
        assert_eq!(required("code>=400", Field::Resource), None);
        // Necessary: whatever matches has one of the values.
        let event = event();
        for q in [
            "resource:secrets and verb:get",
            "(resource:secrets or resource:pods) and code:403",
            "resource:secrets or (resource:secrets and user:x)",
        ] {
            let query = parse_matchable(q).unwrap();
            assert!(matches(&query, &event), "{q}");
            let values = required_values(&query, Field::Resource).unwrap();
            assert!(values.contains(&"secrets"), "{q}: {values:?}");
        }
    }

    fn event() -> Event {
        serde_json::from_str(
            r#"{"level":"RequestResponse","auditID":"a-1","stage":"ResponseComplete",
            "requestURI":"/api/v1/namespaces/kube-system/secrets/Token-X?watch=1","verb":"get",
            "user":{"username":"system:serviceaccount:kube-system:ctl","groups":["system:authenticated","ops"]},
            "sourceIPs":["10.0.0.1","::1"],"userAgent":"kubectl/v1.36",
            "objectRef":{"resource":"secrets","namespace":"kube-system","name":"Token-X","apiVersion":"v1"},
            "responseStatus":{"code":403},
            "annotations":{"authorization.k8s.io/decision":"forbid"},
            "stageTimestamp":"2026-11-30T10:00:00Z"}"#,
        )
        .unwrap()
    }

    fn check(query: &str, event: &Event) -> bool {
        matches(&parse_matchable(query).unwrap(), event)
    }

    #[test]
    fn each_field_matches_its_value_exactly_or_by_prefix() {
        let e = event();
        for (query, expected) in [
            ("user:system:serviceaccount:kube-system:ctl", true),
            ("user:system:*", true),
            ("user:System:*", false),
            ("group:ops", true),
            ("group:op", false),
            ("group:system:auth*", true),
            ("verb:get", true),
            ("verb:list", false),
            ("resource:secrets", true),
            ("resource:secret", false),
            ("subresource:*", false),
            ("apiGroup:*", true),
            (r#"apiGroup:"""#, true),
            ("namespace:kube-system", true),
            ("ns:kube-*", true),
            ("name:Token-X", true),
            ("name:token-x", false),
            ("sourceIP:::1", true),
            ("ip:10.0.*", true),
            ("ip:10.0.0.2", false),
            ("userAgent:kubectl/*", true),
            ("stage:ResponseComplete", true),
            ("level:Request*", true),
            ("level:Metadata", false),
            ("decision:forbid", true),
            ("uri:/api/v1/namespaces/kube-system/secrets/Token-X", true),
            ("uri:/api/v1/*", true),
            (
                r#"uri:"/api/v1/namespaces/kube-system/secrets/Token-X?watch=1""#,
                false,
            ),
            ("auditID:a-1", true),
            ("auditID:a", false),
            ("auditID:*", true),
        ] {
            assert_eq!(check(query, &e), expected, "{query}");
        }
    }

    #[test]
    fn code_compares_as_a_number_and_is_absent_without_a_status() {
        let e = event();
        for (query, expected) in [
            ("code:403", true),
            ("code:*", true),
            ("code>=400 code<500", true),
            ("code>403", false),
            ("code<=403", true),
            ("code<403", false),
            ("status:200", false),
        ] {
            assert_eq!(check(query, &e), expected, "{query}");
        }
        let mut none = event();
        none.response_status = None;
        assert!(!check("code:*", &none));
        assert!(!check("code<1000", &none));
        assert!(check("-code:*", &none));
    }

    #[test]
    fn absent_fields_match_nothing_and_their_negation_everything() {
        let mut bare = event();
        bare.object_ref = None;
        bare.user_agent = None;
        bare.annotations = None;
        bare.source_ips.clear();
        bare.user.groups.clear();
        for field in [
            "resource",
            "apiGroup",
            "namespace",
            "name",
            "userAgent",
            "decision",
            "ip",
            "group",
        ] {
            assert!(!check(&format!("{field}:*"), &bare), "{field}");
            assert!(check(&format!("not {field}:*"), &bare), "{field}");
        }
        // An empty user is still a user: the store indexes the empty string.
        bare.user.username.clear();
        assert!(check("user:*", &bare));
        assert!(check(r#"user:"""#, &bare));
    }

    #[test]
    fn free_text_is_whole_words_of_the_path_or_name_in_any_case() {
        let e = event();
        for (query, expected) in [
            ("secrets", true),
            ("SECRETS", true),
            ("secret", false),
            ("token", true),
            (r#""x token""#, true),
            ("watch", false),
            ("kube-system", true),
            ("ctl", false),
            ("secrets -token", false),
            ("secrets or nothing", true),
            ("(verb:get or verb:list) and not namespace:default", true),
            ("-(resource:secrets verb:get)", false),
            ("", true),
            (r#""--""#, true),
        ] {
            assert_eq!(check(query, &e), expected, "{query}");
        }
    }

    #[test]
    fn impersonated_user_is_the_name_a_request_was_made_as() {
        let mut e = event();
        assert!(!check("impersonatedUser:*", &e));
        assert!(check("not impersonatedUser:*", &e));
        e.impersonated_user = Some(crate::audit::UserInfo {
            username: "mallory".into(),
            groups: vec!["system:masters".into()],
            ..Default::default()
        });
        for (query, expected) in [
            ("impersonatedUser:*", true),
            ("impersonatedUser:mallory", true),
            ("impersonated:mall*", true),
            ("impersonatedUser:Mallory", false),
            ("impersonatedUser:system:*", false),
            // The user is still who authenticated.
            ("user:system:serviceaccount:kube-system:ctl", true),
        ] {
            assert_eq!(check(query, &e), expected, "{query}");
        }
        // An empty name is still an impersonation, as an empty user is still a user.
        e.impersonated_user.as_mut().unwrap().username.clear();
        assert!(check("impersonatedUser:*", &e));
        assert!(check(r#"impersonatedUser:"""#, &e));
    }

    fn binding_event(resource: &str, request: Option<&str>, response: Option<&str>) -> Event {
        let mut event: Event = serde_json::from_value(serde_json::json!({
            "level": "RequestResponse", "auditID": "b-1", "stage": "ResponseComplete",
            "requestURI": format!("/apis/rbac.authorization.k8s.io/v1/{resource}/x"),
            "verb": "patch", "user": {"username": "alice"},
            "objectRef": {"resource": resource, "name": "x",
                          "apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1"},
        }))
        .unwrap();
        let body = |text: &str| serde_json::from_str(text).unwrap();
        event.request_object = request.map(body);
        event.response_object = response.map(body);
        event
    }

    #[test]
    fn role_ref_is_read_from_the_response_else_the_request_of_binding_events_only() {
        let binding = |role: &str| {
            format!(
                r#"{{"kind":"ClusterRoleBinding","roleRef":{{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"{role}"}},"subjects":[]}}"#
            )
        };
        let patch = r#"{"subjects":[{"kind":"User","name":"mallory"}]}"#;
        let status = r#"{"kind":"Status","code":403}"#;
        let admin = binding("cluster-admin");
        let view = binding("view");
        for (resource, request, response, expected) in [
            (
                "clusterrolebindings",
                Some(admin.as_str()),
                None,
                Some("cluster-admin"),
            ),
            ("rolebindings", Some(view.as_str()), None, Some("view")),
            // A patch names only what it changes; the response holds the whole binding.
            (
                "clusterrolebindings",
                Some(patch),
                Some(admin.as_str()),
                Some("cluster-admin"),
            ),
            ("clusterrolebindings", Some(patch), None, None),
            // A refused create: the answer is a Status, the request holds the binding.
            (
                "clusterrolebindings",
                Some(admin.as_str()),
                Some(status),
                Some("cluster-admin"),
            ),
            ("clusterrolebindings", None, None, None),
            ("clusterroles", Some(admin.as_str()), None, None),
            ("clusterrolebindings", Some("[1,2]"), None, None),
        ] {
            let e = binding_event(resource, request, response);
            assert_eq!(
                role_ref(&e).as_deref(),
                expected,
                "{resource} {request:?} {response:?}"
            );
            assert_eq!(check("roleRef:*", &e), expected.is_some());
            assert_eq!(
                check("roleRef:cluster-admin", &e),
                expected == Some("cluster-admin")
            );
            assert_eq!(
                check("roleRef:clus*", &e),
                expected == Some("cluster-admin")
            );
            assert_eq!(check("not roleRef:*", &e), expected.is_none());
        }
        // Another API group's `rolebindings` are not RBAC's.
        let mut other = binding_event("rolebindings", Some(admin.as_str()), None);
        other.object_ref.as_mut().unwrap().api_group = "example.com".into();
        assert_eq!(role_ref(&other), None);
        assert!(!check("roleRef:*", &event()));
    }

    #[test]
    fn an_audit_id_prefix_is_refused_like_the_store_refuses_it() {
        let err = parse_matchable("verb:get or auditID:ab*").unwrap_err();
        assert!(err.message.contains("auditID"), "{err}");
        assert!(parse_matchable("auditID:*").is_ok());
        assert_eq!(parse_matchable("verb:").unwrap_err().column, 6);
    }
}
