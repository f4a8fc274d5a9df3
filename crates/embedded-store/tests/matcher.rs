//! The in-memory matcher (`clusteraudit_core::query::matches`, which routes use at intake) against
//! this store's search: over random events and random queries, both find the same events.

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Value as Json, json};

use clusteraudit_core::{
    audit::Event,
    query::{Field, Op, Query, Value, matches, parse_matchable},
};
use clusteraudit_embedded_store::Store;
use clusteraudit_store::{CatalogEdit, Edited};

const USERS: &[&str] = &[
    "alice",
    "Alice",
    "bob",
    "system:serviceaccount:kube-system:ctl",
    "",
];
const GROUPS: &[&str] = &["ops", "dev", "system:authenticated", ""];
const VERBS: &[&str] = &["get", "list", "delete", "create", "watch"];
const RESOURCES: &[&str] = &[
    "pods",
    "secrets",
    "configmaps",
    "",
    "rolebindings",
    "clusterrolebindings",
];
const ROLES: &[&str] = &["cluster-admin", "view", "cluster-admin-x", ""];
const SUBRESOURCES: &[&str] = &["", "status", "log"];
const API_GROUPS: &[&str] = &["", "apps", "rbac.authorization.k8s.io"];
const NAMESPACES: &[&str] = &["", "default", "kube-system", "team-a"];
/// Free text leaves out words of 40 bytes or more: one on each side of that line.
const LONG_39: &str = "abcdefghijabcdefghijabcdefghijabcdefghi";
const LONG_40: &str = "abcdefghijabcdefghijabcdefghijabcdefghij";
const NAMES: &[&str] = &["", "web-1", "Token-X", "db", "Äpfel", LONG_39, LONG_40];
const IPS: &[&str] = &["10.0.0.1", "10.0.0.2", "::1"];
const AGENTS: &[&str] = &["kubectl/v1.36", "curl/8", ""];
const DECISIONS: &[&str] = &["allow", "forbid"];
const STAGES: &[&str] = &[
    "RequestReceived",
    "ResponseStarted",
    "ResponseComplete",
    "Panic",
];
const LEVELS: &[&str] = &["Metadata", "Request", "RequestResponse"];
const CODES: &[i32] = &[200, 201, 403, 404, 500, 0, -5];
const WORDS: &[&str] = &[
    "pods",
    "secrets",
    "token",
    "x",
    "WEB",
    "1",
    "namespaces",
    "kube",
    "healthz",
    "watch",
    "äpfel",
    "ÄPFEL",
    "api",
    "v1",
    "web-1",
    "system",
];
const EVENTS: usize = 400;
const QUERIES: usize = 600;

fn pick<'a>(rng: &mut SmallRng, items: &[&'a str]) -> &'a str {
    items[rng.random_range(0..items.len())]
}

fn some<'a>(rng: &mut SmallRng, items: &[&'a str]) -> Vec<&'a str> {
    items
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.4))
        .collect()
}

fn random_event(rng: &mut SmallRng, i: usize) -> Json {
    let ns = pick(rng, NAMESPACES);
    let resource = pick(rng, RESOURCES);
    let name = pick(rng, NAMES);
    let uri = match rng.random_range(0..4) {
        0 => "/healthz".to_string(),
        1 => format!("/api/v1/namespaces/{ns}/{resource}/{name}?watch=true"),
        2 => format!("/apis/apps/v1/{resource}"),
        _ => format!("/api/v1/{resource}/{name}"),
    };
    let mut event = json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1",
        "level": pick(rng, LEVELS), "auditID": format!("id-{i}"), "stage": pick(rng, STAGES),
        "requestURI": uri, "verb": pick(rng, VERBS),
        "user": {"username": pick(rng, USERS), "groups": some(rng, GROUPS)},
        "sourceIPs": some(rng, IPS),
        // One day, so one window; distinct times keep the order plain.
        "stageTimestamp": format!("2026-11-30T10:{:02}:{:02}.{:06}Z", i / 3600 % 60, i / 60 % 60, i),
    });
    if rng.random_bool(0.8) {
        event["objectRef"] = json!({
            "resource": resource, "subresource": pick(rng, SUBRESOURCES),
            "apiGroup": pick(rng, API_GROUPS), "namespace": ns, "name": name,
        });
    }
    if rng.random_bool(0.8) {
        event["responseStatus"] = json!({"code": CODES[rng.random_range(0..CODES.len())]});
    }
    if rng.random_bool(0.7) {
        event["userAgent"] = json!(pick(rng, AGENTS));
    }
    if rng.random_bool(0.7) {
        event["annotations"] = json!({"authorization.k8s.io/decision": pick(rng, DECISIONS)});
    }
    if rng.random_bool(0.3) {
        event["impersonatedUser"] = json!({"username": pick(rng, USERS)});
    }
    // Bodies on every kind of event: only a binding's roleRef counts, the response's first.
    let body = |rng: &mut SmallRng| match rng.random_range(0..4) {
        0 => json!({"kind": "Status", "code": 403}),
        1 => json!({"subjects": [{"kind": "User", "name": "x"}]}),
        _ => json!({"roleRef": {"kind": "ClusterRole", "name": pick(rng, ROLES)}}),
    };
    for key in ["requestObject", "responseObject"] {
        if rng.random_bool(0.5) {
            event[key] = body(rng);
        }
    }
    event
}

fn vocabulary(field: Field) -> &'static [&'static str] {
    match field {
        Field::User => USERS,
        Field::Group => GROUPS,
        Field::Verb => VERBS,
        Field::Resource => RESOURCES,
        Field::Subresource => SUBRESOURCES,
        Field::ApiGroup => API_GROUPS,
        Field::Namespace => NAMESPACES,
        Field::Name => NAMES,
        Field::SourceIp => IPS,
        Field::UserAgent => AGENTS,
        Field::Stage => STAGES,
        Field::Level => LEVELS,
        Field::Decision => DECISIONS,
        Field::Uri => &[
            "/healthz",
            "/api/v1/pods/db",
            "/apis/apps/v1/secrets",
            "/api/v1/",
        ],
        Field::AuditId => &["id-1", "id-7", "id-300", "id-9999"],
        Field::ImpersonatedUser => USERS,
        Field::RoleRef => ROLES,
        Field::Code => &[],
    }
}

fn random_term(rng: &mut SmallRng) -> Query {
    if rng.random_bool(0.2) {
        let words: Vec<&str> = (0..rng.random_range(1..3))
            .map(|_| pick(rng, WORDS))
            .collect();
        return Query::Text(words.join(" "));
    }
    let field = Field::ALL[rng.random_range(0..Field::ALL.len())];
    if field == Field::Code {
        if rng.random_bool(0.15) {
            return Query::Field {
                field,
                op: Op::Eq,
                value: Value::Prefix(String::new()),
            };
        }
        let op = [Op::Eq, Op::Lt, Op::Le, Op::Gt, Op::Ge][rng.random_range(0..5)];
        let n = [0, 1, 200, 201, 403, 404, 450, 500, 600][rng.random_range(0..9)];
        return Query::Field {
            field,
            op,
            value: Value::Number(n),
        };
    }
    let word = pick(rng, vocabulary(field)).to_string();
    let value = match rng.random_range(0..4) {
        0 if field != Field::AuditId => {
            let cut = word
                .char_indices()
                .map(|(i, _)| i)
                .nth(rng.random_range(0..=2))
                .unwrap_or(word.len());
            Value::Prefix(word[..cut].to_string())
        }
        1 => Value::Prefix(String::new()),
        _ => Value::Exact(word),
    };
    Query::Field {
        field,
        op: Op::Eq,
        value,
    }
}

fn random_query(rng: &mut SmallRng, depth: u32) -> Query {
    if depth == 0 || rng.random_bool(0.35) {
        return random_term(rng);
    }
    match rng.random_range(0..3) {
        0 => Query::Not(Box::new(random_query(rng, depth - 1))),
        kind => {
            let parts = (0..rng.random_range(2..4))
                .map(|_| random_query(rng, depth - 1))
                .collect();
            if kind == 1 {
                Query::And(parts)
            } else {
                Query::Or(parts)
            }
        }
    }
}

fn topic(store: &Store) -> String {
    let mut catalog = store.catalog_file();
    let Edited::Logset { logset, .. } = catalog
        .edit(&CatalogEdit::CreateLogset { name: "l".into() })
        .unwrap()
    else {
        panic!("a logset")
    };
    let Edited::Topic { topic, .. } = catalog
        .edit(&CatalogEdit::CreateTopic {
            logset_id: logset.id,
            name: "t".into(),
            retention_days: 3650,
        })
        .unwrap()
    else {
        panic!("a topic")
    };
    topic.id
}

#[test]
fn the_matcher_finds_what_the_store_finds() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let topic = topic(&store);
    let mut rng = SmallRng::seed_from_u64(13);
    let raws: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| serde_json::to_vec(&random_event(&mut rng, i)).unwrap())
        .collect();
    let events: Vec<Event> = raws
        .iter()
        .map(|raw| serde_json::from_slice(raw).unwrap())
        .collect();
    let slices: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
    assert_eq!(store.apply(1, &topic, &slices, None).unwrap(), EVENTS);
    store.commit(1).unwrap();

    let mut nonempty = 0;
    for _ in 0..QUERIES {
        // Through its printed form, as a route's query arrives.
        let text = random_query(&mut rng, 3).to_string();
        let query = parse_matchable(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
        let page = store
            .search(&topic, &query, i64::MIN, i64::MAX, 1000, None)
            .unwrap();
        let found: BTreeSet<String> = page
            .events
            .iter()
            .map(|raw| serde_json::from_str::<Event>(raw.get()).unwrap().audit_id)
            .collect();
        let matched: BTreeSet<String> = events
            .iter()
            .filter(|e| matches(&query, e))
            .map(|e| e.audit_id.clone())
            .collect();
        assert_eq!(matched, found, "query {text}");
        if !found.is_empty() && found.len() < EVENTS {
            nonempty += 1;
        }
    }
    // Most queries tell events apart, or the comparison would prove little.
    assert!(
        nonempty > QUERIES / 3,
        "{nonempty} of {QUERIES} queries split the events"
    );
}

/// The edge random queries seldom meet: a word of 40 bytes is not indexed, so searching for it
/// finds every event, and one of 39 only the events holding it.
#[test]
fn free_text_leaves_out_words_of_40_bytes_or_more_as_the_store_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let topic = topic(&store);
    let mut rng = SmallRng::seed_from_u64(1);
    let mut raws = Vec::new();
    for (i, name) in [LONG_39, LONG_40, "db"].iter().enumerate() {
        let mut event = random_event(&mut rng, i);
        event["objectRef"] = json!({"resource": "pods", "name": name});
        event["requestURI"] = json!("/healthz");
        raws.push(serde_json::to_vec(&event).unwrap());
    }
    let slices: Vec<&[u8]> = raws.iter().map(Vec::as_slice).collect();
    store.apply(1, &topic, &slices, None).unwrap();
    store.commit(1).unwrap();
    for (word, expected) in [(LONG_39, 1), (LONG_40, 3)] {
        let query = parse_matchable(&format!("\"{word}\"")).unwrap();
        let found = store
            .search(&topic, &query, i64::MIN, i64::MAX, 1000, None)
            .unwrap()
            .events
            .len();
        let matched = raws
            .iter()
            .filter(|raw| matches(&query, &serde_json::from_slice(raw).unwrap()))
            .count();
        assert_eq!(
            (found, matched),
            (expected, expected),
            "{} bytes",
            word.len()
        );
    }
}
