//! The collector's own API, in its local development mode (plain HTTP on loopback, no
//! authentication): logsets and topics, routing, search with paging, stats, bad input, and
//! durability across a kill -9. The same suite, with the same assertions, runs on each store.

use std::{path::Path, time::Duration};

use clusteraudit_testkit::{eventually, free_port, process::ManagedProcess};
use serde_json::{Value, json};

use crate::support::{
    DevCollector as Collector, start_dev_collector as start, start_dev_collector_with,
};

impl Collector {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, body: Vec<u8>, content_type: &str) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/webhook", self.url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_events(&self, events: &[Value]) -> u16 {
        let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events});
        self.post_raw(serde_json::to_vec(&body).unwrap(), "application/json")
            .await
            .0
    }

    /// All events of a topic matching `q`, following cursors `limit` at a time.
    pub async fn search_all(&self, topic: &str, q: &str, limit: usize) -> Vec<Value> {
        let mut events = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let mut path = format!("/v1/topics/{topic}/events?limit={limit}&q={}", urlencode(q));
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.call(reqwest::Method::GET, &path, None).await;
            assert_eq!(status, 200, "{page}");
            events.extend(page["events"].as_array().cloned().unwrap_or_default());
            match page["cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => break,
            }
        }
        events
    }

    /// The events matching `q` once there are at least `count`, or those found after a minute:
    /// the caller's assertions on them say more than a timeout would.
    pub async fn wait_count(&self, topic: &str, q: &str, count: usize) -> Vec<Value> {
        eventually(q, Duration::from_secs(60), async || {
            let events = self.search_all(topic, q, 1000).await;
            if events.len() >= count {
                Ok(events)
            } else {
                Err(events)
            }
        })
        .await
        .unwrap_or_else(|timed_out| timed_out.last)
    }
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The day the suite's events happened: yesterday (UTC), well within any topic's retention and
/// never in the future.
pub fn event_day() -> String {
    (jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24))
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d")
        .to_string()
}

pub fn event(i: usize, user: &str, verb: &str, code: u16) -> Value {
    let day = event_day();
    json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": format!("00000000-0000-0000-0000-{i:012}"),
        "stage": "ResponseComplete",
        "requestURI": format!("/apis/apps/v1/namespaces/shop/deployments/web-{}", i % 5),
        "verb": verb,
        "user": {"username": user, "groups": ["devs", "system:authenticated"]},
        "sourceIPs": ["10.0.0.7"],
        "userAgent": "kubectl/v1.36.3",
        "objectRef": {"resource": "deployments", "namespace": "shop", "name": format!("web-{}", i % 5), "apiGroup": "apps", "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": format!("{day}T10:00:{:02}.{:06}Z", i % 60, i),
        "stageTimestamp": format!("{day}T10:00:{:02}.{:06}Z", i % 60, i + 1),
        "annotations": {"authorization.k8s.io/decision": if code == 403 { "forbid" } else { "allow" }},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_api_end_to_end_in_development_mode() {
    api_suite(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSearch: scripts/test runs it"]
async fn the_collector_api_end_to_end_on_opensearch() {
    let opensearch = clusteraudit_testkit::opensearch::OpenSearch::start()
        .await
        .expect("OpenSearch starts");
    api_suite(&[
        "--store=opensearch".into(),
        format!("--opensearch-url={}", opensearch.url),
    ])
    .await;
}

/// Everything the API promises, on the store `store_args` choose.
async fn api_suite(store_args: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Development mode never listens beyond loopback.
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args([
            "collector",
            "--insecure-dev",
            "--listen=0.0.0.0:0",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("only listens on loopback"));

    let port = free_port().unwrap();
    let collector =
        start_dev_collector_with(&data, &dir.path().join("collector-1.log"), port, store_args)
            .await;

    // The default logset and topic exist and receive the webhook's events.
    let (_, route) = collector
        .call(reqwest::Method::GET, "/v1/route", None)
        .await;
    let default_topic = route["topicId"].as_str().unwrap().to_string();
    let (_, topic) = collector
        .call(
            reqwest::Method::GET,
            &format!("/v1/topics/{default_topic}"),
            None,
        )
        .await;
    assert_eq!(topic["name"], "default");
    let users = ["alice", "bob", "carol"];
    let verbs = ["get", "list", "create", "delete"];
    let mut all = Vec::new();
    for i in 0..60 {
        all.push(event(
            i,
            users[i % 3],
            verbs[i % 4],
            if i % 10 == 0 { 403 } else { 200 },
        ));
    }
    for chunk in all.chunks(20) {
        assert_eq!(collector.post_events(chunk).await, 200);
    }
    let found = collector.wait_count(&default_topic, "", 60).await;
    assert_eq!(found.len(), 60);
    // Newest first, and returned exactly as sent.
    assert_eq!(found[0], all[59]);
    assert_eq!(found[59], all[0]);

    // Filters, free text, comparisons, paging.
    let deletes = collector
        .search_all(&default_topic, "verb:delete and user:alice", 1000)
        .await;
    assert_eq!(deletes.len(), 60 / 12);
    let forbidden = collector
        .search_all(&default_topic, "code>=400", 1000)
        .await;
    assert_eq!(forbidden.len(), 6);
    assert!(forbidden.iter().all(|e| e["responseStatus"]["code"] == 403));
    assert_eq!(
        collector
            .search_all(&default_topic, "decision:forbid", 1000)
            .await
            .len(),
        6
    );
    assert_eq!(
        collector
            .search_all(&default_topic, "web-3", 1000)
            .await
            .len(),
        12
    );
    assert_eq!(
        collector
            .search_all(&default_topic, "not user:alice", 1000)
            .await
            .len(),
        40
    );
    assert_eq!(
        collector
            .search_all(&default_topic, "user:a*", 1000)
            .await
            .len(),
        20
    );
    let by_id = collector
        .search_all(
            &default_topic,
            "auditID:00000000-0000-0000-0000-000000000042",
            1000,
        )
        .await;
    assert_eq!(by_id, vec![all[42].clone()]);
    let (status, body) = collector
        .call(
            reqwest::Method::GET,
            &format!("/v1/topics/{default_topic}/events?q=auditID%3A0000*"),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        collector
            .search_all(&default_topic, "code:403 and verb:get", 1000)
            .await
            .len(),
        3
    );
    let paged = collector.search_all(&default_topic, "", 7).await;
    assert_eq!(paged.len(), 60);
    let mut ids: Vec<&str> = paged
        .iter()
        .map(|e| e["auditID"].as_str().unwrap())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 60, "paging repeated or skipped events");
    let (status, body) = collector
        .call(
            reqwest::Method::GET,
            &format!("/v1/topics/{default_topic}/events?q=verb%3Adelete%20and"),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("column"), "{body}");
    let (status, _) = collector
        .call(
            reqwest::Method::GET,
            &format!("/v1/topics/{default_topic}/events?cursor=garbage"),
            None,
        )
        .await;
    assert_eq!(status, 400);

    // Stats: counts over time and the top users.
    let (status, stats) = collector
        .call(reqwest::Method::GET, &format!("/v1/topics/{default_topic}/stats?from={day}T10:00:00Z&to={day}T11:00:00Z&by=user&interval=10s", day = event_day()), None)
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["total"], 60);
    assert_eq!(stats["top"].as_array().unwrap().len(), 3);
    assert_eq!(stats["top"][0]["count"], 20);
    let bucketed: u64 = stats["overTime"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(bucketed, 60);
    // A second per bucket over thirty days would be millions of buckets: refused, with the way out.
    let (status, refused) = collector
        .call(
            reqwest::Method::GET,
            &format!("/v1/topics/{default_topic}/stats?from=720h&interval=1s"),
            None,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("use an interval of at least"),
        "{refused}"
    );

    // Logsets and topics: idempotent creation, refusals, routing at run time.
    let (status, logset) = collector
        .call(
            reqwest::Method::POST,
            "/v1/logsets",
            Some(json!({"name": "k8s-audit"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, again) = collector
        .call(
            reqwest::Method::POST,
            "/v1/logsets",
            Some(json!({"name": "k8s-audit"})),
        )
        .await;
    assert_eq!((status, &again["id"]), (200, &logset["id"]));
    let logset_id = logset["id"].as_str().unwrap();
    let (status, _) = collector
        .call(
            reqwest::Method::POST,
            "/v1/logsets",
            Some(json!({"name": "Bad Name"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = collector
        .call(
            reqwest::Method::POST,
            "/v1/logsets",
            Some(json!({"nmae": "typo"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, topic) = collector
        .call(
            reqwest::Method::POST,
            &format!("/v1/logsets/{logset_id}/topics"),
            Some(json!({"name": "cluster-audit", "retentionDays": 7})),
        )
        .await;
    assert_eq!(status, 201);
    let topic_id = topic["id"].as_str().unwrap().to_string();
    let (_, listed) = collector
        .call(
            reqwest::Method::GET,
            &format!("/v1/logsets/{logset_id}/topics"),
            None,
        )
        .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let (status, patched) = collector
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/topics/{topic_id}"),
            Some(json!({"retentionDays": 90})),
        )
        .await;
    assert_eq!((status, &patched["retentionDays"]), (200, &json!(90)));
    let (status, _) = collector
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/topics/{topic_id}"),
            Some(json!({"retentionDays": 0})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = collector
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/logsets/{logset_id}"),
            None,
        )
        .await;
    assert_eq!(status, 409, "a logset with topics is not deleted");
    let (status, _) = collector
        .call(reqwest::Method::GET, "/v1/topics/tp-missing", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = collector
        .call(
            reqwest::Method::PUT,
            "/v1/route",
            Some(json!({"topicId": topic_id})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        collector
            .post_events(&[event(100, "dave", "patch", 200)])
            .await,
        200
    );
    let routed = collector.wait_count(&topic_id, "user:dave", 1).await;
    assert_eq!(routed.len(), 1, "the new route was not used");
    assert!(
        collector
            .search_all(&default_topic, "user:dave", 1000)
            .await
            .is_empty()
    );
    let (status, _) = collector
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/topics/{topic_id}"),
            None,
        )
        .await;
    assert_eq!(status, 409, "the routed topic is not deleted");
    let (_, usage) = collector
        .call(
            reqwest::Method::GET,
            &format!("/v1/topics/{default_topic}"),
            None,
        )
        .await;
    assert_eq!(usage["eventCount"], 60);
    assert!(usage["sizeBytes"].as_u64().unwrap() > 0);

    // Bad input gets a clear error and changes nothing.
    let list = |items: &str| {
        format!(r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{items}]}}"#)
            .into_bytes()
    };
    let mut deep = "[".repeat(10_000);
    deep.push_str(&"]".repeat(10_000));
    let over_limit = event(200, &"x".repeat(3_000_000), "get", 200);
    let huge_but_allowed = event(201, &"y".repeat(1_000_000), "get", 200);
    let cases: Vec<(&str, Vec<u8>, &str, u16)> = vec![
        ("malformed JSON", b"{\"kind\": \"EventList\", ".to_vec(), "application/json", 400),
        ("another kind", br#"{"kind":"PodList","apiVersion":"v1","items":[]}"#.to_vec(), "application/json", 400),
        ("another apiVersion", br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1beta1","items":[]}"#.to_vec(), "application/json", 400),
        ("an item that is no event", list(r#"{"level":"Metadata"}"#), "application/json", 400),
        ("deep nesting", deep.into_bytes(), "application/json", 400),
        ("invalid UTF-8", vec![b'{', 0xff, 0xfe, b'}'], "application/json", 400),
        ("a wrong content type", list(""), "text/plain", 415),
        ("a body over the limit", serde_json::to_vec(&json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [over_limit]})).unwrap(), "application/json", 413),
        ("a huge string within the limit", serde_json::to_vec(&json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [huge_but_allowed]})).unwrap(), "application/json", 200),
        ("an empty list", list(""), "application/json", 200),
    ];
    for (what, body, content_type, expected) in cases {
        let (status, answer) = collector.post_raw(body, content_type).await;
        assert_eq!(status, expected, "{what}: {answer}");
        if expected >= 400 && expected != 413 {
            assert!(
                answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: no reason given"
            );
        }
    }
    let (_, usage) = collector
        .call(
            reqwest::Method::GET,
            &format!("/v1/topics/{default_topic}"),
            None,
        )
        .await;
    assert_eq!(usage["eventCount"], 60, "bad input changed the store");
    let long_user = collector.wait_count(&topic_id, "user:yyyyyyyyyy*", 1).await;
    assert_eq!(long_user.len(), 1, "a long but valid event was not stored");
    assert_eq!(
        long_user[0]["user"]["username"].as_str().map(str::len),
        Some(1_000_000)
    );
    let metrics = collector.metrics().await;
    assert!(
        metrics.contains("clusteraudit_collector_events_received_total 62"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"reason="invalid""#), "{metrics}");

    // Acknowledged means durable: kill -9 right after the acks, before the indexer's commit,
    // and every event is there after a restart.
    let burst: Vec<Value> = (300..700)
        .map(|i| event(i, "erin", "update", 200))
        .collect();
    for chunk in burst.chunks(40) {
        assert_eq!(collector.post_events(chunk).await, 200);
    }
    let Collector { mut process, .. } = collector;
    process.kill_now();
    let collector =
        start_dev_collector_with(&data, &dir.path().join("collector-2.log"), port, store_args)
            .await;
    let recovered = collector.wait_count(&topic_id, "user:erin", 400).await;
    assert_eq!(recovered.len(), 400, "acknowledged events were lost");
    let mut ids: Vec<&str> = recovered
        .iter()
        .map(|e| e["auditID"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400, "an event was indexed twice");
    assert_eq!(
        collector.search_all(&default_topic, "", 1000).await.len(),
        60
    );
}

/// Kill -9 the collector while the load generator posts at full speed: after a restart, every
/// event of every batch that got a 200 is there, and the collector recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_when_the_collector_is_killed_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port().unwrap();
    let collector = start(&data, &dir.path().join("collector-1.log"), port).await;
    let acked_file = dir.path().join("acked-ids");
    let loadgen_args = vec![
        "loadgen".to_string(),
        format!("--target={}/v1/webhook", collector.url),
        "--events=2000000".into(),
        "--batch=400".into(),
        "--concurrency=4".into(),
        "--seed=11".into(),
        "--duration=120s".into(),
        format!("--acked-ids-file={}", acked_file.display()),
    ];
    let mut loadgen = ManagedProcess::spawn(
        "loadgen",
        Path::new(env!("CARGO_BIN_EXE_clusteraudit")),
        &loadgen_args,
        &dir.path().join("loadgen.log"),
    )
    .unwrap();
    let acked_lines = || {
        std::fs::read_to_string(&acked_file)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let going = eventually(
        "20000 acknowledged events",
        Duration::from_secs(120),
        async || match acked_lines() {
            20_000.. => Ok(true),
            _ if !loadgen.is_running() => Ok(false),
            acked => Err(acked),
        },
    )
    .await;
    match going {
        Ok(true) => {}
        Ok(false) => panic!(
            "the load generator did not get going: it exited: {}",
            loadgen.log_tail(20)
        ),
        Err(timed_out) => panic!(
            "the load generator did not get going: {timed_out}: {}",
            loadgen.log_tail(20)
        ),
    }
    // In the middle of the load: batches in flight, some synced and not yet answered, the
    // indexer between commits.
    let Collector { mut process, .. } = collector;
    process.kill_now();
    // Nothing answers now; the load generator gives up on its own, and is stopped if it has not
    // within two minutes: what it acknowledged before is what counts.
    let _ = eventually(
        "the load generator to give up",
        Duration::from_secs(120),
        async || {
            if loadgen.is_running() {
                Err(())
            } else {
                Ok(())
            }
        },
    )
    .await;
    loadgen.stop(Duration::from_secs(5));
    let acked: std::collections::BTreeSet<String> = std::fs::read_to_string(&acked_file)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(
        acked.len() >= 10_000,
        "only {} events acknowledged",
        acked.len()
    );

    let collector = start(&data, &dir.path().join("collector-2.log"), port).await;
    let (_, route) = collector
        .call(reqwest::Method::GET, "/v1/route", None)
        .await;
    let topic = route["topicId"].as_str().unwrap().to_string();
    let stored: std::collections::BTreeSet<String> = collector
        .search_all(&topic, "", 1000)
        .await
        .iter()
        .map(|e| e["auditID"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events are missing after the crash, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // And it keeps working.
    assert_eq!(
        collector
            .post_events(&[event(9_999, "after", "get", 200)])
            .await,
        200
    );
    assert_eq!(collector.wait_count(&topic, "user:after", 1).await.len(), 1);
}
