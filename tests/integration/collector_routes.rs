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

    // A restart keeps the routes, and routes what comes next.
    collector.process.stop(Duration::from_secs(30));
    drop(collector);
    collector = start(dir.path(), port, store_args).await;
    assert_eq!(collector.call(Method::GET, &path, None).await.1, body);
    let more: Vec<Value> = (1000..1060).map(event).collect();
    assert_eq!(collector.post_events(&more).await, 200);
    let want_more = expected(&routes, &more);
    for topic in [&security, &deletes] {
        let all: BTreeSet<String> = want[topic].union(&want_more[topic]).cloned().collect();
        let found = ids(&collector.wait_count(topic, "", all.len()).await);
        assert_eq!(found, all, "after the restart: {topic}");
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
        want[&deletes].len() + want_more[&deletes].len() + 1
    );
}
