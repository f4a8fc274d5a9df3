//! What one audit event becomes in OpenSearch: its document, the index it goes to, and the index
//! template every event index is created from.
//!
//! The fields are filled exactly when the embedded store fills its own (`user`, `verb` and
//! `apiGroup` even when empty), so the same query matches the same events in both stores.

use base64::Engine;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use clusteraudit_core::audit::Event;

/// The longest keyword value kept, in bytes. Lucene refuses a term over 32766 bytes, which would
/// refuse the whole event, and a username can be megabytes long; queries cut their values the
/// same way, so exact and prefix matches on long values still work.
pub const MAX_KEYWORD_BYTES: usize = 4096;

/// Bumped whenever [`index_template`] changes, so a collector can tell an outdated installed
/// template from a current one.
pub const TEMPLATE_VERSION: u32 = 3;

/// The latest time `date_nanos` holds (2262-04-11), in microseconds; its earliest is the epoch.
pub const MAX_TIME_MICROS: i64 = i64::MAX / 1000;

/// Free-text words this long (in bytes) or longer are dropped, as the embedded store's tokenizer
/// drops them: they are hashes and tokens, not something anyone types.
const MAX_WORD_BYTES: usize = 40;

/// The keyword fields, as the template maps them and queries name them.
const KEYWORD_FIELDS: [&str; 18] = [
    "user",
    "groups",
    "verb",
    "resource",
    "subresource",
    "apiGroup",
    "namespace",
    "name",
    "sourceIPs",
    "userAgent",
    "stage",
    "level",
    "decision",
    "auditID",
    "uri",
    "id",
    "impersonatedUser",
    "roleRef",
];

/// The keyword fields added after the first template: indices created from an older template
/// (`dynamic: strict`) refuse documents holding them until they are added to their mapping.
pub const ADDED_KEYWORD_FIELDS: [&str; 2] = ["impersonatedUser", "roleRef"];

/// `s` cut to at most [`MAX_KEYWORD_BYTES`], at a character boundary.
pub fn truncate_keyword(s: &str) -> &str {
    if s.len() <= MAX_KEYWORD_BYTES {
        return s;
    }
    let mut end = MAX_KEYWORD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The document id of an event: the same for every copy of it, so a retried or replayed bulk
/// request never stores an event twice. 18 bytes of SHA-256 make 24 base64 characters, with
/// collisions out of reach for any number of events a cluster holds.
pub fn document_id(audit_id: &str, stage: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(audit_id.as_bytes());
    hasher.update(b"\n");
    hasher.update(stage.as_bytes());
    let hash = hasher.finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&hash[..18])
}

/// Whether a prefix makes valid index names: OpenSearch and Elasticsearch take lowercase names
/// only, none starting with `-`, `_` or `+`, without `\ / * ? " < > | , #` or spaces; the bound
/// leaves room for the topic and the date within the 255 bytes of a name.
pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 100
        && !prefix.starts_with('-')
        && !prefix.ends_with('-')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        // With a `tp` part, one deployment's event pattern (`x-tp-*`) would also match another's
        // indices (prefix `x-tp-y`), and Elasticsearch refuses overlapping templates.
        && !prefix.split('-').any(|part| part == "tp")
}

/// The index of a topic's events of one UTC day (days since the epoch).
pub fn index_name(prefix: &str, topic_id: &str, day: i64) -> String {
    let date = clusteraudit_store::date_of_day(day);
    format!(
        "{prefix}-{topic_id}-{:04}.{:02}.{:02}",
        date.year(),
        date.month(),
        date.day()
    )
}

/// The day of an index [`index_name`] made for this prefix and topic; `None` for any other name.
pub fn parse_index_day(prefix: &str, topic_id: &str, index_name: &str) -> Option<i64> {
    let date = index_name
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .strip_prefix(topic_id)?
        .strip_prefix('-')?;
    let bytes = date.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes[range.clone()]
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| &date[range])
    };
    if bytes.len() != 10 || bytes[4] != b'.' || bytes[7] != b'.' {
        return None;
    }
    let year = digits(0..4)?.parse().ok()?;
    let month = digits(5..7)?.parse().ok()?;
    let day = digits(8..10)?.parse().ok()?;
    clusteraudit_store::day_of_date(jiff::civil::Date::new(year, month, day).ok()?)
}

/// Every index of a topic. Topic ids hold no `-` after their `tp-`, so no other topic's
/// indices match.
pub fn topic_index_pattern(prefix: &str, topic_id: &str) -> String {
    format!("{prefix}-{topic_id}-*")
}

/// The index holding the catalog; outside the events pattern (`<prefix>-tp-*`), so it never
/// gets the events' mapping.
pub fn catalog_index(prefix: &str) -> String {
    format!("{prefix}-catalog")
}

/// The body creating one of the collector's own small indices (the catalog, the shared
/// documents): one shard, copied to every node, holding `properties` and nothing mapped by
/// itself.
pub fn small_index(properties: Value) -> Value {
    json!({
        "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-2"},
        "mappings": {"dynamic": false, "properties": properties},
    })
}

/// One event, ready for the bulk request.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub id: String,
    /// When the event happened, microseconds since the epoch: it picks the day's index.
    pub time_micros: i64,
    pub body: Value,
}

/// The document of an event received as `raw`. `None` when the event has no time, or one before
/// 1970 or after 2262, which `date_nanos` cannot hold.
pub fn document(event: &Event, raw: &str) -> Option<Document> {
    let time_micros = event.time_micros()?;
    if !(0..=MAX_TIME_MICROS).contains(&time_micros) {
        return None;
    }
    let id = document_id(&event.audit_id, event.stage.as_str());
    let keyword = |s: &str| Value::String(truncate_keyword(s).to_string());
    let keywords = |values: &[String]| Value::Array(values.iter().map(|v| keyword(v)).collect());

    let mut body = Map::new();
    body.insert("time".into(), Value::String(rfc3339_nanos(time_micros)));
    body.insert("user".into(), keyword(&event.user.username));
    if !event.user.groups.is_empty() {
        body.insert("groups".into(), keywords(&event.user.groups));
    }
    body.insert("verb".into(), keyword(&event.verb));
    let mut text = event.request_path().to_string();
    if let Some(object) = &event.object_ref {
        body.insert("resource".into(), keyword(&object.resource));
        if !object.subresource.is_empty() {
            body.insert("subresource".into(), keyword(&object.subresource));
        }
        body.insert("apiGroup".into(), keyword(&object.api_group));
        if !object.namespace.is_empty() {
            body.insert("namespace".into(), keyword(&object.namespace));
        }
        if !object.name.is_empty() {
            body.insert("name".into(), keyword(&object.name));
            text.push(' ');
            text.push_str(&object.name);
        }
    }
    if let Some(code) = event.response_status.as_ref().and_then(|s| s.code) {
        body.insert("code".into(), json!(code.max(0)));
    }
    if !event.source_ips.is_empty() {
        body.insert("sourceIPs".into(), keywords(&event.source_ips));
    }
    if let Some(agent) = &event.user_agent {
        body.insert("userAgent".into(), keyword(agent));
    }
    body.insert("stage".into(), keyword(event.stage.as_str()));
    body.insert("level".into(), keyword(event.level.as_str()));
    if let Some(decision) = event.decision() {
        body.insert("decision".into(), keyword(decision));
    }
    if let Some(impersonated) = &event.impersonated_user {
        body.insert("impersonatedUser".into(), keyword(&impersonated.username));
    }
    if let Some(role) = clusteraudit_core::query::role_ref(event) {
        body.insert("roleRef".into(), keyword(&role));
    }
    body.insert("auditID".into(), keyword(&event.audit_id));
    body.insert("uri".into(), keyword(event.request_path()));
    let words = unique_words(&text);
    if !words.is_empty() {
        body.insert(
            "text".into(),
            Value::Array(words.into_iter().map(Value::String).collect()),
        );
    }
    body.insert("id".into(), Value::String(id.clone()));
    body.insert("raw".into(), Value::String(raw.to_string()));
    Some(Document {
        id,
        time_micros,
        body: Value::Object(body),
    })
}

/// The words free text matches on, as the embedded store's tokenizer makes them: runs of letters
/// and digits, shorter than 40 bytes, lowercased. Splitting here rather than in an OpenSearch
/// analyzer keeps the two stores' matches identical: the `standard` analyzer would keep
/// `web_1` or `10.0.0.1` whole, where the embedded store splits them.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty() && word.len() < MAX_WORD_BYTES)
        .map(|word| word.chars().flat_map(char::to_lowercase).collect())
}

/// [`words`] without repeats, in order of first appearance.
pub fn unique_words(text: &str) -> Vec<String> {
    let mut unique: Vec<String> = Vec::new();
    for word in words(text) {
        if !unique.contains(&word) {
            unique.push(word);
        }
    }
    unique
}

/// A time as `date_nanos` reads it. All nine fractional digits are always written: a range bound
/// missing them would be rounded up to the end of its second by `lte`.
pub(crate) fn rfc3339_nanos(micros: i64) -> String {
    let second = micros.div_euclid(1_000_000);
    let nanos = micros.rem_euclid(1_000_000) * 1000;
    let time = jiff::Timestamp::from_second(second)
        .map(|t| jiff::tz::Offset::UTC.to_datetime(t))
        .unwrap_or_default();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        time.year(),
        time.month(),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// The mapping of one keyword field that is only ever matched (no column).
/// A keyword field's mapping, the same in the template and when added to older indices (a
/// mapping cannot change a field's `doc_values` once set). Columns only where stats or alert
/// rules group by a field or search sorts on it: the rest are only ever matched, and their
/// columns would be a large part of each event's bytes.
fn keyword_mapping(field: &str) -> Value {
    let columnar = matches!(
        field,
        "user" | "verb" | "resource" | "namespace" | "sourceIPs" | "impersonatedUser" | "id"
    );
    json!({"type": "keyword", "doc_values": columnar})
}

/// The body of `PUT <prefix>-tp-*/_mapping`: the fields [`index_template`] gained since its
/// first version, for the indices created before (adding a field to a mapping is allowed, and
/// adding one that is already there the same way changes nothing).
pub fn added_fields_mapping() -> Value {
    let properties: Map<String, Value> = ADDED_KEYWORD_FIELDS
        .iter()
        .map(|field| (field.to_string(), keyword_mapping(field)))
        .collect();
    json!({"properties": properties})
}

/// The body of `PUT _index_template/<prefix>-events`.
pub fn index_template(prefix: &str) -> Value {
    let mut properties = Map::new();
    for field in KEYWORD_FIELDS {
        properties.insert(field.to_string(), keyword_mapping(field));
    }
    properties.insert("code".into(), json!({"type": "integer"}));
    properties.insert("time".into(), json!({"type": "date_nanos"}));
    // Words, split and lowercased by `words`; matched term by term, never sorted or counted.
    properties.insert(
        "text".into(),
        json!({"type": "keyword", "doc_values": false}),
    );
    // Only ever read back from `_source`.
    properties.insert(
        "raw".into(),
        json!({"type": "keyword", "index": false, "doc_values": false}),
    );
    json!({
        "index_patterns": [format!("{prefix}-tp-*")],
        // Above 500, so that even a prefix such as `logs` wins over Elasticsearch's built-in
        // `logs-*-*` data-stream template (priority 100) and its user overrides.
        "priority": 600,
        "version": TEMPLATE_VERSION,
        "template": {
            "settings": {
                "index": {
                    // Raw events repeat themselves a great deal and are most of the size.
                    "codec": "best_compression",
                    "number_of_shards": 1,
                    "refresh_interval": "1s",
                },
            },
            "mappings": {
                "dynamic": "strict",
                // Only the raw event is ever read back; the fields beside it are indexed from the
                // document and need not be kept twice.
                "_source": {"includes": ["raw"]},
                "properties": properties,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: Value) -> Event {
        serde_json::from_value(json).expect("a valid event")
    }

    fn full_event() -> Value {
        json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "RequestResponse",
            "auditID": "0b7d5a0e-1234-4f00-9a1b-2c3d4e5f6a7b",
            "stage": "ResponseComplete",
            "requestURI": "/apis/apps/v1/namespaces/kube-system/deployments/Web_1?timeout=30s",
            "verb": "patch",
            "user": {"username": "alice", "groups": ["system:masters", "system:authenticated"]},
            "sourceIPs": ["10.0.0.1", "::1"],
            "userAgent": "kubectl/v1.30.0 (linux/amd64)",
            "objectRef": {
                "resource": "deployments",
                "namespace": "kube-system",
                "name": "Web_1",
                "apiGroup": "apps",
                "apiVersion": "v1",
                "subresource": "scale",
            },
            "responseStatus": {"code": 200},
            "requestReceivedTimestamp": "2025-11-30T12:00:00.000001Z",
            "stageTimestamp": "2025-11-30T12:00:00.123456Z",
            "annotations": {"authorization.k8s.io/decision": "allow"},
        })
    }

    #[test]
    fn truncation_cuts_at_a_char_boundary() {
        assert_eq!(truncate_keyword("short"), "short");
        let exact = "a".repeat(MAX_KEYWORD_BYTES);
        assert_eq!(truncate_keyword(&exact), exact);
        let long = "b".repeat(MAX_KEYWORD_BYTES + 1);
        assert_eq!(truncate_keyword(&long).len(), MAX_KEYWORD_BYTES);
        // 'é' is two bytes: one byte short of the limit, the next one would straddle it.
        let wide = format!("{}{}", "a".repeat(MAX_KEYWORD_BYTES - 1), "é".repeat(10));
        assert_eq!(truncate_keyword(&wide), "a".repeat(MAX_KEYWORD_BYTES - 1));
        let crabs = "🦀".repeat(MAX_KEYWORD_BYTES);
        let cut = truncate_keyword(&crabs);
        assert_eq!(cut.len(), MAX_KEYWORD_BYTES);
        assert!(crabs.starts_with(cut));
    }

    #[test]
    fn document_ids_depend_on_audit_id_and_stage_only() {
        let id = document_id("abc", "ResponseComplete");
        assert_eq!(id.len(), 24);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(id, document_id("abc", "ResponseComplete"));
        assert_ne!(id, document_id("abc", "RequestReceived"));
        assert_ne!(id, document_id("abd", "ResponseComplete"));
        // Without the separator these two would hash the same bytes.
        assert_ne!(document_id("ab", "c"), document_id("a", "bc"));
        let digest = Sha256::digest(b"abc\nResponseComplete");
        assert_eq!(
            id,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..18])
        );
    }

    #[test]
    fn prefixes_make_valid_index_names() {
        for good in ["clusteraudit", "a", "audit-prod-2", "0x"] {
            assert!(valid_prefix(good), "{good}");
        }
        let longest = "a".repeat(100);
        assert!(valid_prefix(&longest));
        for bad in [
            "", "-audit", "_audit", "+audit", "Audit", "au dit", "au_dit", "a.b", "a/b", "a*",
            "a?", "a\"", "a<", "a>", "a|", "a,b", "a#", "a\\b", "é", "audit-", "tp", "x-tp-y",
            "tp-audit",
        ] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
        assert!(!valid_prefix(&"a".repeat(101)));
    }

    #[test]
    fn index_names_round_trip() {
        let topic = "tp-0123456789abcdef";
        let day = clusteraudit_store::day_of(1_764_460_800_000_000);
        let name = index_name("clusteraudit", topic, day);
        assert_eq!(name, "clusteraudit-tp-0123456789abcdef-2025.11.30");
        assert_eq!(parse_index_day("clusteraudit", topic, &name), Some(day));
        assert_eq!(index_name("a", "tp-1", 0), "a-tp-1-1970.01.01");
        assert_eq!(parse_index_day("a", "tp-1", "a-tp-1-1970.01.01"), Some(0));
        for day in [0, 1, 59, 365, 11_016, 20_000, 106_751] {
            let name = index_name("p", topic, day);
            assert_eq!(parse_index_day("p", topic, &name), Some(day), "{name}");
        }

        for other in [
            "clusteraudit-tp-0123456789abcdef-2025.11.31",
            "clusteraudit-tp-0123456789abcdef-2025.11.3",
            "clusteraudit-tp-0123456789abcdef-2025-11-30",
            "clusteraudit-tp-0123456789abcdef-2025.11.30x",
            "clusteraudit-tp-0123456789abcdef-+025.11.30",
            "clusteraudit-tp-0123456789abcdef-2025.+1.30",
            "clusteraudit-tp-0123456789abcdef-",
            "clusteraudit-tp-0123456789abcdee-2025.11.30",
            "clusteraudit-tp-0123456789abcdef0-2025.11.30",
            "other-tp-0123456789abcdef-2025.11.30",
            "clusteraudit-catalog",
            "clusteraudit-tp-0123456789abcdef-2025.11.30.é",
        ] {
            assert_eq!(
                parse_index_day("clusteraudit", topic, other),
                None,
                "{other}"
            );
        }
        assert_eq!(
            topic_index_pattern("clusteraudit", topic),
            "clusteraudit-tp-0123456789abcdef-*"
        );
        assert_eq!(catalog_index("clusteraudit"), "clusteraudit-catalog");
    }

    #[test]
    fn the_catalog_and_indices_fall_in_the_right_patterns() {
        let template = index_template("ca");
        let pattern = template["index_patterns"][0].as_str().unwrap();
        let matches = |name: &str| name.starts_with(pattern.trim_end_matches('*'));
        assert!(matches(&index_name("ca", "tp-0123456789abcdef", 20_000)));
        assert!(!matches(&catalog_index("ca")));
    }

    #[test]
    fn document_of_a_full_event() {
        let raw = full_event().to_string();
        let doc = document(&event(full_event()), &raw).unwrap();
        let id = document_id("0b7d5a0e-1234-4f00-9a1b-2c3d4e5f6a7b", "ResponseComplete");
        assert_eq!(doc.id, id);
        assert_eq!(doc.time_micros, 1_764_504_000_123_456);
        assert_eq!(
            doc.body,
            json!({
                "time": "2025-11-30T12:00:00.123456000Z",
                "user": "alice",
                "groups": ["system:masters", "system:authenticated"],
                "verb": "patch",
                "resource": "deployments",
                "subresource": "scale",
                "apiGroup": "apps",
                "namespace": "kube-system",
                "name": "Web_1",
                "code": 200,
                "sourceIPs": ["10.0.0.1", "::1"],
                "userAgent": "kubectl/v1.30.0 (linux/amd64)",
                "stage": "ResponseComplete",
                "level": "RequestResponse",
                "decision": "allow",
                "auditID": "0b7d5a0e-1234-4f00-9a1b-2c3d4e5f6a7b",
                "uri": "/apis/apps/v1/namespaces/kube-system/deployments/Web_1",
                "text": ["apis", "apps", "v1", "namespaces", "kube", "system", "deployments", "web", "1"],
                "id": id,
                "raw": raw,
            })
        );
    }

    #[test]
    fn document_leaves_out_what_the_embedded_store_leaves_out() {
        let raw = r#"{"a": "raw, as received"}"#;
        let doc = document(
            &event(json!({
                "level": "Metadata",
                "auditID": "x",
                "stage": "RequestReceived",
                "requestURI": "/healthz",
                "verb": "get",
                "user": {},
                "requestReceivedTimestamp": "1970-01-01T00:00:00Z",
            })),
            raw,
        )
        .unwrap();
        assert_eq!(doc.time_micros, 0);
        assert_eq!(
            doc.body,
            json!({
                "time": "1970-01-01T00:00:00.000000000Z",
                // Always there, as in the embedded store: `user:""` finds anonymous requests.
                "user": "",
                "verb": "get",
                "stage": "RequestReceived",
                "level": "Metadata",
                "auditID": "x",
                "uri": "/healthz",
                "text": ["healthz"],
                "id": document_id("x", "RequestReceived"),
                "raw": raw,
            })
        );

        // A core-group object still has `resource` and `apiGroup` (empty), as in the embedded
        // store, so `apiGroup:""` finds core resources; empty name, namespace and subresource
        // are left out.
        let doc = document(
            &event(json!({
                "level": "Metadata",
                "auditID": "y",
                "stage": "ResponseComplete",
                "requestURI": "/api/v1/nodes?limit=500",
                "verb": "list",
                "user": {"username": "bob"},
                "userAgent": "",
                "objectRef": {"resource": "nodes", "apiVersion": "v1"},
                "responseStatus": {"code": -3},
                "stageTimestamp": "2025-11-30T12:00:00Z",
                "annotations": {"authorization.k8s.io/decision": 7},
            })),
            "{}",
        )
        .unwrap();
        let body = doc.body.as_object().unwrap();
        assert_eq!(body["resource"], "nodes");
        assert_eq!(body["apiGroup"], "");
        assert_eq!(body["userAgent"], "");
        assert_eq!(body["code"], 0, "negative codes count as 0, as embedded");
        assert_eq!(body["uri"], "/api/v1/nodes");
        assert_eq!(body["text"], json!(["api", "v1", "nodes"]));
        for absent in [
            "namespace",
            "name",
            "subresource",
            "decision",
            "groups",
            "sourceIPs",
        ] {
            assert!(!body.contains_key(absent), "{absent}");
        }
    }

    #[test]
    fn events_without_a_storable_time_make_no_document() {
        let mut json = full_event();
        let object = json.as_object_mut().unwrap();
        object.remove("stageTimestamp");
        object.remove("requestReceivedTimestamp");
        assert_eq!(document(&event(json.clone()), "{}"), None);
        json["stageTimestamp"] = json!("1969-12-31T23:59:59.999999Z");
        assert_eq!(document(&event(json.clone()), "{}"), None);
        json["stageTimestamp"] = json!("2262-04-11T23:47:16.854775Z");
        assert_eq!(
            document(&event(json.clone()), "{}").unwrap().time_micros,
            MAX_TIME_MICROS
        );
        json["stageTimestamp"] = json!("2262-04-11T23:47:16.854776Z");
        assert_eq!(document(&event(json), "{}"), None);
    }

    #[test]
    fn long_keyword_values_are_truncated_and_raw_is_not() {
        let long_user = "u".repeat(3 * MAX_KEYWORD_BYTES);
        let long_group = "g".repeat(MAX_KEYWORD_BYTES + 7);
        let mut json = full_event();
        json["user"] = json!({"username": long_user, "groups": [long_group, "short"]});
        json["requestURI"] = json!(format!("/api/{}", "x".repeat(10_000)));
        let raw = json.to_string();
        let doc = document(&event(json), &raw).unwrap();
        assert_eq!(doc.body["user"], "u".repeat(MAX_KEYWORD_BYTES));
        assert_eq!(
            doc.body["groups"],
            json!(["g".repeat(MAX_KEYWORD_BYTES), "short"])
        );
        assert_eq!(doc.body["uri"].as_str().unwrap().len(), MAX_KEYWORD_BYTES);
        // The 10,000-letter word is too long to be a word; `api` and the name's words stay.
        assert_eq!(doc.body["text"], json!(["api", "web", "1"]));
        assert_eq!(doc.body["raw"], raw);
    }

    #[test]
    fn words_split_like_the_embedded_tokenizer() {
        let all = |text: &str| words(text).collect::<Vec<_>>();
        assert_eq!(
            all("/api/v1/namespaces/Kube-System/pods/web_1 Web-1"),
            [
                "api",
                "v1",
                "namespaces",
                "kube",
                "system",
                "pods",
                "web",
                "1",
                "web",
                "1"
            ]
        );
        assert_eq!(all("10.0.0.1 v1.30"), ["10", "0", "0", "1", "v1", "30"]);
        assert_eq!(all("ÉCOLE 日本語 ñ"), ["école", "日本語", "ñ"]);
        assert_eq!(all("  ///  "), Vec::<String>::new());
        let word39 = "a".repeat(39);
        let word40 = "a".repeat(40);
        assert_eq!(all(&format!("{word39} {word40} b")), [word39.as_str(), "b"]);
        // Length counts bytes, before lowercasing: 20 two-byte letters are too long.
        assert_eq!(all(&"é".repeat(20)), Vec::<String>::new());
        assert_eq!(all(&"é".repeat(19)), ["é".repeat(19)]);
        assert_eq!(unique_words("a/b/a/B"), ["a", "b"]);
    }

    #[test]
    fn times_have_all_nine_fraction_digits() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_764_504_000_000_001),
            "2025-11-30T12:00:00.000001000Z"
        );
        assert_eq!(
            rfc3339_nanos(MAX_TIME_MICROS),
            "2262-04-11T23:47:16.854775000Z"
        );
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999000Z");
    }

    #[test]
    fn template_maps_every_field_a_document_writes() {
        let template = index_template("clusteraudit");
        let properties = template["template"]["mappings"]["properties"]
            .as_object()
            .unwrap();
        let mut json = full_event();
        json["user"]["groups"] = json!(["g"]);
        // Every field: an impersonated request on a binding, with the binding's body.
        json["impersonatedUser"] = json!({"username": "mallory"});
        json["objectRef"]["resource"] = json!("clusterrolebindings");
        json["objectRef"]["apiGroup"] = json!("rbac.authorization.k8s.io");
        json["requestObject"] = json!({"roleRef": {"kind": "ClusterRole", "name": "view"}});
        let doc = document(&event(json), "{}").unwrap();
        assert_eq!(doc.body["impersonatedUser"], "mallory");
        assert_eq!(doc.body["roleRef"], "view");
        for key in doc.body.as_object().unwrap().keys() {
            assert!(properties.contains_key(key), "{key} is not mapped");
        }
        assert_eq!(
            properties.len(),
            doc.body.as_object().unwrap().len(),
            "a full event fills every mapped field"
        );
        assert_eq!(properties["time"]["type"], "date_nanos");
        assert_eq!(properties["code"]["type"], "integer");
        assert_eq!(properties["raw"]["index"], false);
        assert_eq!(properties["raw"]["doc_values"], false);
        for field in KEYWORD_FIELDS {
            assert_eq!(properties[field]["type"], "keyword", "{field}");
        }
        assert_eq!(template["template"]["mappings"]["dynamic"], "strict");
        // Indices from an older template get the added fields mapped as the template maps them.
        let added = added_fields_mapping();
        for field in ADDED_KEYWORD_FIELDS {
            assert_eq!(added["properties"][field], properties[field], "{field}");
        }
        assert_eq!(added["properties"].as_object().unwrap().len(), 2);
        assert_eq!(
            template["template"]["mappings"]["_source"]["includes"],
            json!(["raw"])
        );
        assert_eq!(properties["user"]["doc_values"], true, "stats group by it");
        assert_eq!(properties["id"]["doc_values"], true, "search sorts on it");
        assert_eq!(properties["auditID"]["doc_values"], false);
        assert_eq!(template["index_patterns"], json!(["clusteraudit-tp-*"]));
        assert_eq!(template["version"], TEMPLATE_VERSION);
        let settings = &template["template"]["settings"]["index"];
        assert_eq!(settings["codec"], "best_compression");
        assert_eq!(settings["number_of_shards"], 1);
        assert_eq!(settings["refresh_interval"], "1s");
    }
}
