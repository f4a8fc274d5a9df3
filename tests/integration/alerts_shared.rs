//! Alert rules and the audit gap with two collector replicas sharing a real OpenSearch: a
//! threshold crossed only by events spread over both replicas fires, once; each replica shows
//! the same firing groups and every node; a node silent on both replicas is in an audit gap and
//! nodes sending to either one are not; when the evaluating replica dies, the other carries on
//! without firing anew.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use clusteraudit_testkit::{eventually, free_port, opensearch::OpenSearch};
use serde_json::{Value, json};

use crate::{
    collector_api::event,
    support::{DevCollector as Collector, start_dev_collector_with},
};

/// What a JSON webhook receiver got: each alert with whether it was firing when it arrived.
type Received = Arc<Mutex<Vec<(Value, bool)>>>;

async fn json_receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/alerts",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                let now = jiff::Timestamp::now();
                for alert in body["alerts"].as_array().into_iter().flatten() {
                    let firing = alert["endsAt"]
                        .as_str()
                        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                        .is_none_or(|ends| ends > now);
                    kept.lock().unwrap().push((alert.clone(), firing));
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

/// Firing notifications for `alertname` whose label `label` is `value`, as (startsAt) in order.
fn firings(received: &Received, alertname: &str, label: &str, value: &str) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(alert, firing)| {
            *firing && alert["labels"]["alertname"] == alertname && alert["labels"][label] == value
        })
        .map(|(alert, _)| alert["startsAt"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until `received` holds a firing notification for `alertname` with the label.
async fn wait_for_firing(received: &Received, what: &str, alertname: &str, label: (&str, &str)) {
    eventually(what, Duration::from_secs(60), async || {
        match firings(received, alertname, label.0, label.1).len() {
            0 => Err(received.lock().unwrap().clone()),
            _ => Ok(()),
        }
    })
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out:?}"));
}

/// An event happening now (the rules' windows end now), by `user` with `verb`.
fn event_now(i: usize, user: &str, verb: &str) -> Value {
    let mut event = event(i, user, verb, 200);
    let now = jiff::Timestamp::now().to_string();
    event["requestReceivedTimestamp"] = json!(now);
    event["stageTimestamp"] = json!(now);
    event
}

async fn post_from(collector: &Collector, node: &str, events: &[Value]) {
    let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events});
    let status = collector
        .http
        .post(format!("{}/v1/webhook/{node}", collector.url))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200, "a batch from {node}");
}

async fn alerts(collector: &Collector) -> Value {
    let (status, view) = collector
        .call(reqwest::Method::GET, "/v1/alerts", None)
        .await;
    assert_eq!(status, 200, "{view}");
    view
}

/// The users of the groups `rule` fires for, in a replica's view.
fn firing_users(view: &Value, rule: &str) -> BTreeSet<String> {
    view["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == rule)
        .flat_map(|r| r["firing"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f["group"]["user"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSearch: scripts/test runs it"]
async fn replicas_sharing_opensearch_count_together_notify_once_and_hand_over() {
    let opensearch = OpenSearch::start().await.expect("OpenSearch starts");
    let (receiver, received) = json_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "--store=opensearch".into(),
        format!("--opensearch-url={}", opensearch.url),
        format!("--alert-webhook-url={receiver}"),
        // Every notification is a change: nothing is sent again while the test runs.
        "--alert-resend-interval=1h".into(),
        "--audit-gap-after=12s".into(),
    ];
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let port = free_port().unwrap();
        replicas.push(
            start_dev_collector_with(
                &dir.path().join(name),
                &dir.path().join(format!("{name}.log")),
                port,
                &args,
            )
            .await,
        );
    }
    let rule = |name: &str, query: &str| json!({"name": name, "query": query, "windowSeconds": 600, "threshold": 4, "groupBy": ["user"]});
    let (status, answer) = replicas[0]
        .call(
            reqwest::Method::PUT,
            "/v1/alerts",
            Some(json!({"rules": [
                rule("deletes", "verb:delete"),
                rule("patches", "verb:patch"),
                // Two fields, one of them missing from the events: OpenSearch's multi-field
                // grouping, with "" for the missing one as the collector's matcher has it.
                {"name": "cluster-lists", "query": "verb:list", "windowSeconds": 600,
                 "threshold": 2, "groupBy": ["user", "namespace"]},
            ]})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    // Both replicas take the rules, and one of them evaluates them for both.
    let evaluator = eventually(
        "an evaluator for both replicas",
        Duration::from_secs(60),
        async || {
            let (a, b) = (alerts(&replicas[0]).await, alerts(&replicas[1]).await);
            let ready = |view: &Value| {
                view["rules"].as_array().is_some_and(|rules| {
                    rules.len() == 3 && rules.iter().all(|r| r["ready"] == true)
                })
            };
            match (a["evaluator"].as_str(), b["evaluator"].as_str()) {
                (Some(x), Some(y)) if x == y && ready(&a) && ready(&b) => Ok(x.to_string()),
                _ => Err((a, b)),
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| {
        panic!(
            "{timed_out:?}\n{}\n{}",
            replicas[0].process.log_tail(20),
            replicas[1].process.log_tail(20)
        )
    });
    let mut evaluating = None;
    for (i, replica) in replicas.iter().enumerate() {
        if alerts(replica).await["replica"] == evaluator.as_str() {
            evaluating = Some(i);
        }
    }
    let evaluating = evaluating.expect("the evaluator is one of the replicas");

    // Four deletes by mallory, two through each replica: only together do they reach the
    // threshold. Alice's three stay below it.
    post_from(
        &replicas[0],
        "cp-1",
        &[
            event_now(1, "mallory", "delete"),
            event_now(2, "mallory", "delete"),
            event_now(3, "alice", "delete"),
        ],
    )
    .await;
    post_from(
        &replicas[1],
        "cp-2",
        &[
            event_now(4, "mallory", "delete"),
            event_now(5, "mallory", "delete"),
            event_now(6, "alice", "delete"),
            event_now(7, "alice", "delete"),
        ],
    )
    .await;
    let cluster_list = |i: usize| {
        let mut event = event_now(i, "ursula", "list");
        event["objectRef"]
            .as_object_mut()
            .unwrap()
            .remove("namespace");
        event
    };
    post_from(&replicas[0], "cp-1", &[cluster_list(8)]).await;
    post_from(&replicas[1], "cp-2", &[cluster_list(9)]).await;
    wait_for_firing(
        &received,
        "mallory's deletes fire",
        "deletes",
        ("user", "mallory"),
    )
    .await;
    // A later firing through the other replica: by the time it arrives, a second evaluator
    // would have sent mallory's again.
    let sentinel: Vec<Value> = (10..14)
        .map(|i| event_now(i, "sentinel", "patch"))
        .collect();
    post_from(&replicas[1], "cp-2", &sentinel).await;
    wait_for_firing(
        &received,
        "the sentinel fires",
        "patches",
        ("user", "sentinel"),
    )
    .await;
    assert_eq!(
        firings(&received, "deletes", "user", "mallory").len(),
        1,
        "one notification for both replicas: {:?}",
        received.lock().unwrap()
    );
    assert!(firings(&received, "deletes", "user", "alice").is_empty());
    let lists = firings(&received, "cluster-lists", "user", "ursula");
    assert_eq!(lists.len(), 1, "{:?}", received.lock().unwrap());
    // Both replicas show the same firing groups, with the count of both.
    for replica in &replicas {
        eventually(
            "the evaluator's view on each replica",
            Duration::from_secs(30),
            async || {
                let view = alerts(replica).await;
                let count = view["rules"][0]["firing"][0]["count"].clone();
                if firing_users(&view, "deletes") == BTreeSet::from(["mallory".to_string()])
                    && count == 4
                {
                    Ok(())
                } else {
                    Err(view)
                }
            },
        )
        .await
        .unwrap_or_else(|timed_out| panic!("{timed_out:?}"));
    }

    // Nodes: cp-1 sends to one replica, cp-2 to the other, cp-3 to none. Each replica lists
    // both senders, and only cp-3 is in an audit gap.
    let (status, answer) = replicas[1]
        .call(
            reqwest::Method::PUT,
            "/v1/nodes",
            Some(json!({"expected": ["cp-1", "cp-2", "cp-3"]})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let heartbeat = {
        let senders: Vec<(String, String)> = replicas
            .iter()
            .zip(["cp-1", "cp-2"])
            .map(|(r, node)| (r.url.clone(), node.to_string()))
            .collect();
        let http = replicas[0].http.clone();
        tokio::spawn(async move {
            let mut i = 1000;
            loop {
                for (url, node) in &senders {
                    i += 1;
                    let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": [event_now(i, "system:kube-scheduler", "get")]});
                    let _ = http
                        .post(format!("{url}/v1/webhook/{node}"))
                        .json(&body)
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    for replica in &replicas {
        eventually(
            "every node on each replica",
            Duration::from_secs(30),
            async || {
                let (_, view) = replica.call(reqwest::Method::GET, "/v1/nodes", None).await;
                let sent: BTreeSet<&str> = view["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|n| n["lastBatchAt"].is_string())
                    .filter_map(|n| n["name"].as_str())
                    .collect();
                if sent == BTreeSet::from(["cp-1", "cp-2"]) {
                    Ok(())
                } else {
                    Err(view)
                }
            },
        )
        .await
        .unwrap_or_else(|timed_out| panic!("{timed_out:?}"));
    }
    wait_for_firing(&received, "cp-3's audit gap", "AuditGap", ("node", "cp-3")).await;
    for node in ["cp-1", "cp-2"] {
        assert!(
            firings(&received, "AuditGap", "node", node).is_empty(),
            "{node} sends to one replica only, and is not in a gap: {:?}",
            received.lock().unwrap()
        );
    }

    // The evaluator dies: the other replica takes over. Mallory's alert goes on under its
    // first start, and a new one fires through the survivor.
    let started = firings(&received, "deletes", "user", "mallory")[0].clone();
    heartbeat.abort();
    replicas[evaluating].process.kill_now();
    let survivor = &replicas[1 - evaluating];
    eventually(
        "the survivor evaluates",
        Duration::from_secs(60),
        async || {
            let view = alerts(survivor).await;
            if view["evaluator"] == view["replica"] {
                Ok(())
            } else {
                Err(view)
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out:?}"));
    let trudy: Vec<Value> = (20..24).map(|i| event_now(i, "trudy", "delete")).collect();
    post_from(survivor, "cp-1", &trudy).await;
    wait_for_firing(
        &received,
        "trudy's deletes fire through the survivor",
        "deletes",
        ("user", "trudy"),
    )
    .await;
    let mallory = firings(&received, "deletes", "user", "mallory");
    assert!(
        mallory.iter().all(|s| *s == started),
        "mallory's alert keeps its start across the hand-over: {mallory:?}"
    );
    let view = alerts(survivor).await;
    assert_eq!(
        firing_users(&view, "deletes"),
        BTreeSet::from(["mallory".to_string(), "trudy".to_string()]),
        "{view}"
    );
}
