//! A topic's routes in the collector: every event stored in the topic that matches a route's query
//! is also stored in the route's topic, exactly the events the matcher says, within that topic's
//! own retention; kept across a restart; bad routes refused whole.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::Duration,
};

use clusteraudit_core::{
    audit::Event,
    query::{matches, parse_matchable},
};
use clusteraudit_testkit::{eventually, free_port};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{DevCollector as Collector, start_dev_collector_with};

/// A day `days_ago` days before today (UTC).
fn day(days_ago: i64) -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * days_ago))
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d")
        .to_string()
}

fn event(i: usize) -> Value {
    let verbs = ["get", "list", "delete", "create", "update"];
    let resources = ["secrets", "pods", "configmaps"];
    let namespaces = ["shop", "kube-system"];
    let (verb, resource) = (verbs[i % verbs.len()], resources[(i / 5) % resources.len()]);
    let namespace = namespaces[(i / 15) % namespaces.len()];
    // One in four five days old: the main topic keeps it, a two-day route topic does not.
    let day = day(if (i / 30) % 4 == 3 { 5 } else { 1 });
    json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": format!("00000000-0000-0000-0013-{i:012}"),
        "stage": "ResponseComplete",
        "requestURI": format!("/api/v1/namespaces/{namespace}/{resource}/obj-{}", i % 7),
        "verb": verb,
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "objectRef": {"resource": resource, "namespace": namespace, "name": format!("obj-{}", i % 7), "apiVersion": "v1"},
        "responseStatus": {"code": if verb == "delete" { 404 } else { 200 }},
        "stageTimestamp": format!("{day}T11:{:02}:{:02}.{:06}Z", i / 60 % 60, i % 60, i),
    })
}

fn ids(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["auditID"].as_str().unwrap().to_string())
        .collect()
}

/// Which events each topic should receive through `routes` (query, topic, retention days).
fn expected(routes: &[(&str, &str, i64)], events: &[Value]) -> BTreeMap<String, BTreeSet<String>> {
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (query, topic, retention) in routes {
        let query = parse_matchable(query).unwrap();
        let oldest = day(*retention);
        let entry = want.entry(topic.to_string()).or_default();
        for sent in events {
            let event: Event = serde_json::from_value(sent.clone()).unwrap();
            let time = sent["stageTimestamp"].as_str().unwrap();
            if matches(&query, &event) && time[..10] >= oldest[..] {
                entry.insert(event.audit_id);
            }
        }
    }
    want
}

async fn routed_counter(collector: &Collector, topic: &str) -> u64 {
    let text = collector.metrics().await;
    let prefix = format!("clusteraudit_collector_routed_events_total{{topic=\"{topic}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

async fn start(dir: &Path, port: u16, store_args: &[String]) -> Collector {
    start_dev_collector_with(
        &dir.join("data"),
        &dir.join("collector.log"),
        port,
        store_args,
    )
    .await
}

async fn create_topic(collector: &Collector, logset: &str, name: &str, days: u32) -> String {
    let (status, topic) = collector
        .call(
            Method::POST,
            &format!("/v1/logsets/{logset}/topics"),
            Some(json!({"name": name, "retentionDays": days})),
        )
        .await;
    assert_eq!(status, 201, "{topic}");
    topic["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_topic_holds_exactly_the_matching_events_within_its_retention() {
    routes_suite(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSearch: scripts/test runs it"]
async fn a_routes_topic_holds_exactly_the_matching_events_on_opensearch() {
    let opensearch = clusteraudit_testkit::opensearch::OpenSearch::start()
        .await
        .expect("OpenSearch starts");
    routes_suite(&[
        "--store=opensearch".into(),
        format!("--opensearch-url={}", opensearch.url),
    ])
    .await;
}

async fn routes_suite(store_args: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut collector = start(dir.path(), port, store_args).await;
    let (_, route) = collector.call(Method::GET, "/v1/route", None).await;
    let main = route["topicId"].as_str().unwrap().to_string();
    let (_, topic) = collector
        .call(Method::GET, &format!("/v1/topics/{main}"), None)
        .await;
    let logset = topic["logsetId"].as_str().unwrap().to_string();
    let security = create_topic(&collector, &logset, "security", 2).await;
    let deletes = create_topic(&collector, &logset, "deletes", 365).await;
    let path = format!("/v1/topics/{main}/routes");

    // None at first; bad requests are refused with the reason, and change nothing.
    let (status, got) = collector.call(Method::GET, &path, None).await;
    assert_eq!((status, got), (200, json!({"routes": []})));
    let route = |query: &str, topic: &str| json!({"query": query, "topicId": topic});
    for (body, reason) in [
        (
            json!({"routes": [route("verb:get", &security), route("resource:secrets or verb=delete", &deletes)]}),
            "routes[1].query: at column 25: `=` is not an operator",
        ),
        (
            json!({"routes": [route("verb:get", "tp-missing")]}),
            "routes[0].topicId: no topic",
        ),
        (
            json!({"routes": [route("verb:get", &main)]}),
            "routes[0].topicId: the route's topic is the topic itself",
        ),
        (json!({"routes": [{"query": "verb:get"}]}), "topicId"),
        (json!({"rutes": []}), "rutes"),
    ] {
        let (status, answer) = collector.call(Method::PUT, &path, Some(body)).await;
        assert_eq!(status, 400, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(reason), "{reason}: {error}");
    }
    let (status, answer) = collector
        .call(
            Method::PUT,
            "/v1/topics/tp-missing/routes",
            Some(json!({"routes": []})),
        )
        .await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(
        collector.call(Method::GET, &path, None).await.1,
        json!({"routes": []})
    );

    // Set: two routes to one topic store a matching event there once.
    let routes = [
        ("resource:secrets or verb:delete", security.as_str(), 2),
        ("namespace:kube-system code>=400", security.as_str(), 2),
        ("verb:delete", deletes.as_str(), 365),
    ];
    let body = json!({"routes": routes.iter().map(|(q, t, _)| route(q, t)).collect::<Vec<_>>()});
    let (status, set) = collector.call(Method::PUT, &path, Some(body.clone())).await;
    assert_eq!((status, &set), (200, &body), "{set}");
    assert_eq!(collector.call(Method::GET, &path, None).await.1, body);

    let sent: Vec<Value> = (0..240).map(event).collect();
    for chunk in sent.chunks(60) {
        assert_eq!(collector.post_events(chunk).await, 200);
    }
    let want = expected(&routes, &sent);
    // The comparison means something: some events routed, some not, some too old for `security`.
    assert!(want[&security].len() > 20 && want[&security].len() < 120);
    assert!(want[&deletes].len() > want[&security].intersection(&want[&deletes]).count());
    let main_ids = ids(&collector.wait_count(&main, "", sent.len()).await);
    assert_eq!(main_ids, ids(&sent), "the main topic keeps every event");
    for topic in [&security, &deletes] {
        let found = ids(&collector.wait_count(topic, "", want[topic].len()).await);
        assert_eq!(&found, &want[topic], "topic {topic}");
        // And the copies are the events as stored in the main topic.
        let copy = &collector.search_all(topic, "", 1000).await[0];
        let id = copy["auditID"].as_str().unwrap();
        let original = collector
            .search_all(&main, &format!("auditID:{id}"), 10)
            .await;
        assert_eq!(original, vec![copy.clone()]);
    }
    for topic in [&security, &deletes] {
        let counted =
            eventually(
                "the routed counter",
                Duration::from_secs(10),
                async || match routed_counter(&collector, topic).await {
                    n if n == want[topic].len() as u64 => Ok(()),
                    n => Err(n),
                },
            )
            .await;
        assert!(counted.is_ok(), "{topic}: {counted:?}");
    }

    // Acknowledged means durable in every topic it was routed to: kill -9 right after the 200s,
    // before the indexer's commit; after the restart the copies are there, once each.
    let killed: Vec<Value> = (500..620).map(event).collect();
    for chunk in killed.chunks(40) {
        assert_eq!(collector.post_events(chunk).await, 200);
    }
    let Collector { mut process, .. } = collector;
    process.kill_now();
    drop(process);
    collector = start(dir.path(), port, store_args).await;
    // The restart keeps the routes, and routes what comes next.
    assert_eq!(collector.call(Method::GET, &path, None).await.1, body);
    let more: Vec<Value> = (1000..1060).map(event).collect();
    assert_eq!(collector.post_events(&more).await, 200);
    let want_killed = expected(&routes, &killed);
    let want_more = expected(&routes, &more);
    for topic in [&security, &deletes] {
        let all: BTreeSet<String> = want[topic]
            .iter()
            .chain(&want_killed[topic])
            .chain(&want_more[topic])
            .cloned()
            .collect();
        let stored = collector.wait_count(topic, "", all.len()).await;
        assert_eq!(
            stored.len(),
            all.len(),
            "{topic}: a copy lost or stored twice"
        );
        assert_eq!(ids(&stored), all, "after the restart: {topic}");
    }

    // The topic's policy comes first: an event it drops is routed nowhere, one it reduces is
    // routed as stored.
    let policy = json!({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
        "rules": [{"level": "None", "verbs": ["watch"]}, {"level": "Metadata"}]});
    let (status, answer) = collector
        .call(
            Method::PUT,
            &format!("/v1/topics/{main}/policy"),
            Some(policy),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let mut loud = event(3002);
    assert_eq!(loud["verb"], "delete");
    loud["level"] = json!("RequestResponse");
    loud["requestObject"] = json!({"kind": "DeleteOptions"});
    let mut watched = event(3007);
    watched["verb"] = json!("watch");
    watched["objectRef"]["resource"] = json!("secrets");
    assert_eq!(collector.post_events(&[loud.clone(), watched]).await, 200);
    let id = loud["auditID"].as_str().unwrap();
    let copy = collector
        .wait_count(&deletes, &format!("auditID:{id}"), 1)
        .await;
    assert_eq!(copy.len(), 1);
    assert_eq!(copy[0]["level"], "Metadata");
    assert!(copy[0].get("requestObject").is_none(), "{}", copy[0]);
    assert!(
        collector
            .search_all(&security, "verb:watch", 10)
            .await
            .is_empty()
    );
    let (status, _) = collector
        .call(Method::DELETE, &format!("/v1/topics/{main}/policy"), None)
        .await;
    assert_eq!(status, 204);

    // Deleting the routes stops the routing; the route topics keep what they hold.
    let (status, _) = collector.call(Method::DELETE, &path, None).await;
    assert_eq!(status, 204);
    assert_eq!(
        collector.call(Method::GET, &path, None).await.1,
        json!({"routes": []})
    );
    let late = event(2002);
    assert_eq!(late["verb"], "delete");
    assert_eq!(
        collector.post_events(std::slice::from_ref(&late)).await,
        200
    );
    let id = late["auditID"].as_str().unwrap();
    collector
        .wait_count(&main, &format!("auditID:{id}"), 1)
        .await;
    // Had it been routed, its copy would be in the same log record, indexed with it.
    assert!(
        collector
            .search_all(&deletes, &format!("auditID:{id}"), 10)
            .await
            .is_empty()
    );
    assert_eq!(
        ids(&collector.search_all(&deletes, "", 1000).await).len(),
        want[&deletes].len() + want_killed[&deletes].len() + want_more[&deletes].len() + 1
    );
}

/// Random events and queries, small vocabularies so that they meet often.
mod random {
    use clusteraudit_core::query::{Field, Op, Query, Value as QueryValue};
    use serde_json::{Value, json};
    use std::hash::{DefaultHasher, Hash, Hasher};

    /// Seeded choices: std's SipHash (fixed keys) of a counter, the same on every run.
    pub struct SmallRng(u64);

    impl SmallRng {
        pub fn seed(seed: u64) -> SmallRng {
            SmallRng(seed << 32)
        }

        fn next(&mut self) -> u64 {
            self.0 += 1;
            let mut hasher = DefaultHasher::new();
            self.0.hash(&mut hasher);
            hasher.finish()
        }

        fn random_range(&mut self, range: std::ops::Range<usize>) -> usize {
            range.start + (self.next() % (range.end - range.start) as u64) as usize
        }

        fn random_bool(&mut self, p: f64) -> bool {
            (self.next() % 1000) < (p * 1000.0) as u64
        }
    }

    const USERS: &[&str] = &[
        "alice",
        "Alice",
        "system:serviceaccount:kube-system:ctl",
        "",
    ];
    const GROUPS: &[&str] = &["ops", "system:authenticated", ""];
    const VERBS: &[&str] = &["get", "list", "delete", "create"];
    const RESOURCES: &[&str] = &["pods", "secrets", ""];
    const SUBRESOURCES: &[&str] = &["", "status"];
    const API_GROUPS: &[&str] = &["", "apps"];
    const NAMESPACES: &[&str] = &["", "default", "kube-system"];
    const NAMES: &[&str] = &["", "web-1", "Token-X", "Äpfel"];
    const IPS: &[&str] = &["10.0.0.1", "::1"];
    const AGENTS: &[&str] = &["kubectl/v1.36", ""];
    const DECISIONS: &[&str] = &["allow", "forbid"];
    const STAGES: &[&str] = &["ResponseStarted", "ResponseComplete"];
    const LEVELS: &[&str] = &["Metadata", "Request"];
    const WORDS: &[&str] = &[
        "pods", "secrets", "token", "x", "WEB", "1", "kube", "healthz", "äpfel",
    ];

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

    pub fn event(rng: &mut SmallRng, i: usize, day: &str) -> Value {
        let (ns, resource, name) = (
            pick(rng, NAMESPACES),
            pick(rng, RESOURCES),
            pick(rng, NAMES),
        );
        let uri = match rng.random_range(0..3) {
            0 => "/healthz".to_string(),
            1 => format!("/api/v1/namespaces/{ns}/{resource}/{name}?watch=true"),
            _ => format!("/api/v1/{resource}/{name}"),
        };
        let mut event = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1",
            "level": pick(rng, LEVELS), "auditID": format!("00000000-0000-0000-0077-{i:012}"),
            "stage": pick(rng, STAGES), "requestURI": uri, "verb": pick(rng, VERBS),
            "user": {"username": pick(rng, USERS), "groups": some(rng, GROUPS)},
            "sourceIPs": some(rng, IPS),
            "stageTimestamp": format!("{day}T10:{:02}:{:02}.{i:06}Z", i / 60 % 60, i % 60),
        });
        if rng.random_bool(0.8) {
            event["objectRef"] = json!({"resource": resource, "subresource": pick(rng, SUBRESOURCES),
                "apiGroup": pick(rng, API_GROUPS), "namespace": ns, "name": name});
        }
        if rng.random_bool(0.8) {
            let code = [200, 403, 404, 500][rng.random_range(0..4)];
            event["responseStatus"] = json!({ "code": code });
        }
        if rng.random_bool(0.7) {
            event["userAgent"] = json!(pick(rng, AGENTS));
        }
        if rng.random_bool(0.7) {
            event["annotations"] = json!({"authorization.k8s.io/decision": pick(rng, DECISIONS)});
        }
        event
    }

    fn term(rng: &mut SmallRng) -> Query {
        if rng.random_bool(0.2) {
            return Query::Text(pick(rng, WORDS).to_string());
        }
        let field = Field::ALL[rng.random_range(0..Field::ALL.len())];
        let vocabulary: &[&str] = match field {
            Field::Code => {
                let op = [Op::Eq, Op::Lt, Op::Ge][rng.random_range(0..3)];
                let n = [200, 403, 450, 500][rng.random_range(0..4)];
                return Query::Field {
                    field,
                    op,
                    value: QueryValue::Number(n),
                };
            }
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
            Field::Uri => &["/healthz", "/api/v1/pods/web-1"],
            Field::AuditId => &["00000000-0000-0000-0077-000000000003"],
            // These events impersonate nobody and bind no role: the fields' absence is checked.
            Field::ImpersonatedUser => USERS,
            Field::RoleRef => &["cluster-admin", "view"],
        };
        let word = pick(rng, vocabulary).to_string();
        let value = match rng.random_range(0..4) {
            0 if field != Field::AuditId => {
                QueryValue::Prefix(word.chars().take(rng.random_range(0..3)).collect())
            }
            1 => QueryValue::Prefix(String::new()),
            _ => QueryValue::Exact(word),
        };
        Query::Field {
            field,
            op: Op::Eq,
            value,
        }
    }

    pub fn query(rng: &mut SmallRng, depth: u32) -> Query {
        if depth == 0 || rng.random_bool(0.35) {
            return term(rng);
        }
        match rng.random_range(0..3) {
            0 => Query::Not(Box::new(query(rng, depth - 1))),
            kind => {
                let parts = (0..2).map(|_| query(rng, depth - 1)).collect();
                if kind == 1 {
                    Query::And(parts)
                } else {
                    Query::Or(parts)
                }
            }
        }
    }
}

/// What a route picks is what searching the topic with its query finds, through the collector:
/// random events posted to the webhook, random queries both ways. Run on OpenSearch; the embedded
/// store's search is compared with the matcher directly, in crates/embedded-store/tests/matcher.rs
/// (through a debug build of the collector, some negations there meet an arithmetic overflow
/// inside tantivy 0.27's fast-field range seek, which release builds wrap).
async fn search_agrees_with_the_matcher(store_args: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let collector = start(dir.path(), free_port().unwrap(), store_args).await;
    let (_, route) = collector.call(Method::GET, "/v1/route", None).await;
    let main = route["topicId"].as_str().unwrap().to_string();
    let mut rng = random::SmallRng::seed(13);
    let yesterday = day(1);
    let sent: Vec<Value> = (0..300)
        .map(|i| random::event(&mut rng, i, &yesterday))
        .collect();
    assert_eq!(collector.post_events(&sent).await, 200);
    collector.wait_count(&main, "", sent.len()).await;
    let events: Vec<Event> = sent
        .iter()
        .map(|e| serde_json::from_value(e.clone()).unwrap())
        .collect();
    let mut differ = Vec::new();
    for _ in 0..300 {
        let text = random::query(&mut rng, 3).to_string();
        let query = parse_matchable(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
        let found = ids(&collector.search_all(&main, &text, 1000).await);
        let matched: BTreeSet<String> = events
            .iter()
            .filter(|e| matches(&query, e))
            .map(|e| e.audit_id.clone())
            .collect();
        if found != matched {
            differ.push(format!(
                "{text}: search {} matcher {}",
                found.len(),
                matched.len()
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{} differ:\n{}",
        differ.len(),
        differ.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSearch: scripts/test runs it"]
async fn searching_a_topic_finds_what_the_matcher_routes_on_opensearch() {
    let opensearch = clusteraudit_testkit::opensearch::OpenSearch::start()
        .await
        .expect("OpenSearch starts");
    search_agrees_with_the_matcher(&[
        "--store=opensearch".into(),
        format!("--opensearch-url={}", opensearch.url),
    ])
    .await;
}
