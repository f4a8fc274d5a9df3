//! The collector enforcing a topic's audit policy on the events it receives: set through the API,
//! applied before the events are logged exactly as the evaluator decides, counted in /metrics,
//! kept across a restart, refused whole when it is bad, and only for callers allowed to.

use std::{collections::HashMap, path::Path, time::Duration};

use clusteraudit_core::{
    audit::{Event, Policy},
    policy::{
        Evaluator, RequestAttributes,
        enforce::{Enforced, enforce},
    },
};
use clusteraudit_testkit::{ControlPlane, collector_rbac, eventually, free_port};
use reqwest::Method;
use serde_json::{Value, json};

use crate::collector_api::event_day;
use crate::support::{DevCollector as Collector, start_dev_collector_with};

const OBJECT_META: &str = "managedFields";

fn object(kind: &str, name: &str) -> Value {
    json!({"kind": kind, "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "shop",
            OBJECT_META: [{"manager": "kubectl", "operation": "Update"}]},
        "data": {"k": "v"}})
}

/// An event as a kube-apiserver recording everything would send it.
fn loud_event(i: usize, user: &str, verb: &str, resource: &str, stage: &str) -> Value {
    let day = event_day();
    let name = format!("obj-{}", i % 7);
    json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "auditID": format!("00000000-0000-0000-0001-{i:012}"),
        "stage": stage,
        "requestURI": format!("/api/v1/namespaces/shop/{resource}/{name}"),
        "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.9"],
        "userAgent": "kubectl/v1.36.3",
        "objectRef": {"resource": resource, "namespace": "shop", "name": name, "apiVersion": "v1"},
        "responseStatus": {"metadata": {}, "code": 200},
        "requestObject": object("ConfigMap", &name),
        "responseObject": object("ConfigMap", &name),
        "requestReceivedTimestamp": format!("{day}T11:00:{:02}.{:06}Z", i % 60, i),
        "stageTimestamp": format!("{day}T11:00:{:02}.{:06}Z", i % 60, i + 1),
        "annotations": {"authorization.k8s.io/decision": "allow"},
    })
}

/// A narrowing an admin would make: a noisy service account silenced, secrets at Metadata,
/// writes with their request only, reads of configmaps whole, RequestReceived omitted, managed
/// fields left out.
fn narrowed_policy() -> Value {
    json!({
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "omitManagedFields": true,
        "rules": [
            {"level": "None", "users": ["system:serviceaccount:shop:noisy"]},
            {"level": "Metadata", "resources": [{"group": "", "resources": ["secrets"]}]},
            {"level": "Request", "verbs": ["create", "update", "patch", "delete"]},
            {"level": "RequestResponse", "verbs": ["get"], "resources": [{"group": "", "resources": ["configmaps"]}]},
            {"level": "Metadata", "omitStages": ["ResponseStarted"]},
        ],
    })
}

fn traffic(from: usize, count: usize) -> Vec<Value> {
    let users = [
        "alice",
        "bob",
        "system:serviceaccount:shop:noisy",
        "system:serviceaccount:shop:app",
    ];
    let verbs = ["get", "list", "create", "update", "delete", "watch"];
    let resources = ["configmaps", "secrets", "pods"];
    let stages = [
        "ResponseComplete",
        "RequestReceived",
        "ResponseComplete",
        "ResponseStarted",
    ];
    (from..from + count)
        .map(|i| {
            loud_event(
                i,
                users[i % users.len()],
                verbs[i % verbs.len()],
                // Divided so that every user, verb, resource and stage meet.
                resources[(i / 6) % resources.len()],
                stages[(i / 18) % stages.len()],
            )
        })
        .collect()
}

/// What the evaluator says of each event: kept as it is, reduced to this, or not at all; and the
/// count of drops and reductions by rule label.
struct Expected {
    stored: HashMap<(String, String), Value>,
    dropped: HashMap<String, u64>,
    reduced: HashMap<String, u64>,
}

fn expected(policy: &Value, events: &[Value]) -> Expected {
    let policy: Policy = serde_json::from_value(policy.clone()).unwrap();
    let evaluator = Evaluator::new(&policy);
    let mut expected = Expected {
        stored: HashMap::new(),
        dropped: HashMap::new(),
        reduced: HashMap::new(),
    };
    for sent in events {
        let raw = serde_json::to_string(sent).unwrap();
        let event: Event = serde_json::from_str(&raw).unwrap();
        let decision = evaluator.evaluate(&RequestAttributes::of_event(&event));
        let key = (
            sent["auditID"].as_str().unwrap().to_string(),
            sent["stage"].as_str().unwrap().to_string(),
        );
        match enforce(&raw, &event, decision) {
            Enforced::Keep => {
                expected.stored.insert(key, sent.clone());
            }
            Enforced::Reduce(text) => {
                *expected
                    .reduced
                    .entry(clusteraudit_core::policy::enforce::rule_label(
                        decision.rule,
                    ))
                    .or_default() += 1;
                expected
                    .stored
                    .insert(key, serde_json::from_str(&text).unwrap());
            }
            Enforced::Drop(reason) => *expected.dropped.entry(reason.label()).or_default() += 1,
        }
    }
    expected
}

/// The counters of a metric family by its `rule` label.
async fn rule_counters(collector: &Collector, family: &str) -> HashMap<String, u64> {
    let text = collector.metrics().await;
    let prefix = format!("clusteraudit_collector_{family}_total{{rule=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (label, value) = rest.split_once("\"} ")?;
            Some((label.to_string(), value.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

fn difference(after: &HashMap<String, u64>, before: &HashMap<String, u64>) -> HashMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

async fn stored(
    collector: &Collector,
    topic: &str,
    count: usize,
) -> HashMap<(String, String), Value> {
    collector
        .wait_count(topic, "", count)
        .await
        .into_iter()
        .map(|event| {
            (
                (
                    event["auditID"].as_str().unwrap().to_string(),
                    event["stage"].as_str().unwrap().to_string(),
                ),
                event,
            )
        })
        .collect()
}

/// The event of this (auditID, stage), once the store has it.
async fn find(collector: &Collector, topic: &str, key: (String, String)) -> Value {
    eventually("the event", Duration::from_secs(60), async || {
        stored(collector, topic, 0).await.remove(&key).ok_or(())
    })
    .await
    .unwrap_or_else(|_| panic!("{key:?} is never stored"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_collector_stores_events_as_the_topics_policy_records_them() {
    policy_suite(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSearch: scripts/test runs it"]
async fn the_collector_stores_events_as_the_topics_policy_records_them_on_opensearch() {
    let opensearch = clusteraudit_testkit::opensearch::OpenSearch::start()
        .await
        .expect("OpenSearch starts");
    policy_suite(&[
        "--store=opensearch".into(),
        format!("--opensearch-url={}", opensearch.url),
    ])
    .await;
}

async fn start(dir: &Path, name: &str, port: u16, store_args: &[String]) -> Collector {
    start_dev_collector_with(
        &dir.join(format!("data-{name}")),
        &dir.join(format!("{name}.log")),
        port,
        store_args,
    )
    .await
}

async fn policy_suite(store_args: &[String]) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let mut collector = start(dir.path(), "one", port, store_args).await;
    let (_, route) = collector.call(Method::GET, "/v1/route", None).await;
    let topic = route["topicId"].as_str().unwrap().to_string();
    let policy_path = format!("/v1/topics/{topic}/policy");

    // Nothing is enforced at first.
    let (status, body) = collector.call(Method::GET, &policy_path, None).await;
    assert_eq!(status, 404, "{body}");

    // A bad policy is refused with the reason, and changes nothing.
    let mut misspelt = narrowed_policy();
    misspelt["rules"][1]["resource"] = json!([{"resources": ["secrets"]}]);
    let mut empty = narrowed_policy();
    empty["rules"] = json!([]);
    let mut wrong_level = narrowed_policy();
    wrong_level["rules"][0]["level"] = json!("Everything");
    for (bad, reason) in [
        (misspelt, "unknown field `resource`"),
        (empty, "rules"),
        (wrong_level, "Everything"),
        (json!({"kind": "Policy"}), "apiVersion"),
    ] {
        let (status, body) = collector.call(Method::PUT, &policy_path, Some(bad)).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{reason}: {body}"
        );
    }
    assert_eq!(collector.call(Method::GET, &policy_path, None).await.0, 404);
    let (status, body) = collector
        .call(
            Method::PUT,
            "/v1/topics/tp-missing/policy",
            Some(narrowed_policy()),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Set, and read back with its hash.
    let (status, set) = collector
        .call(Method::PUT, &policy_path, Some(narrowed_policy()))
        .await;
    assert_eq!(status, 200, "{set}");
    let hash = set["hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 64);
    let typed: Policy = serde_json::from_value(narrowed_policy()).unwrap();
    assert_eq!(
        hash,
        clusteraudit_core::policy::enforce::policy_hash(&typed)
    );
    let (status, got) = collector.call(Method::GET, &policy_path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["hash"], hash);
    assert_eq!(got["topicId"], topic);
    assert_eq!(
        serde_json::from_value::<Policy>(got["policy"].clone()).unwrap(),
        typed
    );

    // Events sent at RequestResponse are stored exactly as the evaluator says.
    let dropped_before = rule_counters(&collector, "policy_events_dropped").await;
    let reduced_before = rule_counters(&collector, "policy_events_reduced").await;
    let sent = traffic(0, 240);
    for chunk in sent.chunks(60) {
        assert_eq!(collector.post_events(chunk).await, 200);
    }
    let want = expected(&narrowed_policy(), &sent);
    // Every kind of outcome is met, so the comparison below means something.
    for label in ["0", "policy-omitted-stage"] {
        assert!(want.dropped.contains_key(label), "{:?}", want.dropped);
    }
    for label in ["1", "2", "3", "4"] {
        assert!(want.reduced.contains_key(label), "{:?}", want.reduced);
    }
    let found = stored(&collector, &topic, want.stored.len()).await;
    assert_eq!(found.len(), want.stored.len());
    for (key, event) in &want.stored {
        assert_eq!(found.get(key), Some(event), "{key:?}");
    }
    // And independently of the evaluator, what the policy says in words.
    for event in found.values() {
        assert_ne!(
            event["user"]["username"],
            "system:serviceaccount:shop:noisy"
        );
        assert_ne!(event["stage"], "RequestReceived");
        assert!(!event.to_string().contains(OBJECT_META), "{event}");
        if event["objectRef"]["resource"] == "secrets" {
            assert_eq!(event["level"], "Metadata");
            assert!(event.get("requestObject").is_none());
        }
        if event["verb"] == "delete" && event["objectRef"]["resource"] != "secrets" {
            assert_eq!(event["level"], "Request");
            assert!(event.get("requestObject").is_some() && event.get("responseObject").is_none());
        }
    }
    // Counted by rule, once each.
    let counted = eventually("the policy counters", Duration::from_secs(30), async || {
        let dropped = difference(
            &rule_counters(&collector, "policy_events_dropped").await,
            &dropped_before,
        );
        let reduced = difference(
            &rule_counters(&collector, "policy_events_reduced").await,
            &reduced_before,
        );
        if dropped == want.dropped && reduced == want.reduced {
            Ok(())
        } else {
            Err((dropped, reduced))
        }
    })
    .await;
    assert!(
        counted.is_ok(),
        "{counted:?} vs {:?} {:?}",
        want.dropped,
        want.reduced
    );

    // A restart keeps the policy, and enforces it on what comes next.
    collector.process.stop(Duration::from_secs(30));
    drop(collector);
    collector = start(dir.path(), "one", port, store_args).await;
    let (status, got) = collector.call(Method::GET, &policy_path, None).await;
    assert_eq!(
        (status, got["hash"].as_str()),
        (200, Some(hash.as_str())),
        "{got}"
    );
    let more = traffic(1000, 60);
    assert_eq!(collector.post_events(&more).await, 200);
    let want_more = expected(&narrowed_policy(), &more);
    let found = stored(
        &collector,
        &topic,
        want.stored.len() + want_more.stored.len(),
    )
    .await;
    for (key, event) in &want_more.stored {
        assert_eq!(found.get(key), Some(event), "after the restart: {key:?}");
    }
    assert_eq!(found.len(), want.stored.len() + want_more.stored.len());
    let key = |event: &Value| {
        (
            event["auditID"].as_str().unwrap().to_string(),
            event["stage"].as_str().unwrap().to_string(),
        )
    };

    // With OpenSearch, a second replica follows the policy the first set, and stops with it.
    if !store_args.is_empty() {
        let other = start(dir.path(), "two", free_port().unwrap(), store_args).await;
        let (status, got) = other.call(Method::GET, &policy_path, None).await;
        assert_eq!((status, got["hash"].as_str()), (200, Some(hash.as_str())));
        let wider = json!({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "rules": [{"level": "None", "users": ["bob"]}, {"level": "Request"}]});
        let (status, _) = collector
            .call(Method::PUT, &policy_path, Some(wider.clone()))
            .await;
        assert_eq!(status, 200);
        // Bob's events stop reaching the store through the other replica within seconds.
        let bob = loud_event(5000, "bob", "get", "pods", "ResponseComplete");
        let alice = loud_event(5001, "alice", "get", "pods", "ResponseComplete");
        let followed = eventually(
            "the other replica follows",
            Duration::from_secs(30),
            async || {
                let before = rule_counters(&other, "policy_events_dropped").await;
                assert_eq!(other.post_events(std::slice::from_ref(&bob)).await, 200);
                let after = rule_counters(&other, "policy_events_dropped").await;
                if difference(&after, &before).get("0") == Some(&1) {
                    Ok(())
                } else {
                    Err(after)
                }
            },
        )
        .await;
        assert!(followed.is_ok(), "{followed:?}");
        assert_eq!(other.post_events(std::slice::from_ref(&alice)).await, 200);
        let alice_found = find(&other, &topic, key(&alice)).await;
        assert_eq!(alice_found["level"], "Request");
        assert!(alice_found.get("responseObject").is_none());
    }

    // Deleting the policy stores events as received again.
    let (status, _) = collector.call(Method::DELETE, &policy_path, None).await;
    assert_eq!(status, 204);
    assert_eq!(collector.call(Method::GET, &policy_path, None).await.0, 404);
    let noisy = loud_event(
        9000,
        "system:serviceaccount:shop:noisy",
        "get",
        "secrets",
        "ResponseComplete",
    );
    assert_eq!(
        collector.post_events(std::slice::from_ref(&noisy)).await,
        200
    );
    assert_eq!(find(&collector, &topic, key(&noisy)).await, noisy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn only_a_topic_admin_sets_the_policy() {
    let control_plane = ControlPlane::start()
        .await
        .expect("the control plane starts");
    let dir = control_plane.dir().join("collector");
    std::fs::create_dir_all(&dir).unwrap();
    let (collector, _) =
        crate::support::start_tls_collector(control_plane.kubeconfig_path(), &dir, "webhook-token")
            .await;
    // bob administers topics; alice only reads audit events.
    control_plane
        .apply_json("collector-rbac", &collector_rbac(&["bob"], &["alice"]))
        .unwrap();
    let token = |user: &str| control_plane.user(user).unwrap().token.clone();
    let (alice, bob, mallory) = (token("alice"), token("bob"), token("mallory"));
    let (_, route) = collector.get("/v1/route", Some(&alice)).await;
    let path = format!(
        "/v1/topics/{}/policy",
        route["topicId"].as_str().expect("a route")
    );
    let call = async |method: Method, who: Option<&str>| {
        let mut request = collector
            .http
            .request(method.clone(), format!("{}{path}", collector.url));
        if method == Method::PUT {
            request = request.json(&narrowed_policy());
        }
        if let Some(token) = who {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    assert_eq!(call(Method::PUT, None).await.0, 401);
    assert_eq!(call(Method::PUT, Some("not-a-token")).await.0, 401);
    let (status, body) = call(Method::PUT, Some(&alice)).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("alice may not update topics.clusteraudit.io"),
        "{body}"
    );
    assert_eq!(call(Method::DELETE, Some(&alice)).await.0, 403);
    assert_eq!(call(Method::GET, Some(&mallory)).await.0, 403);
    // Refused calls changed nothing.
    assert_eq!(call(Method::GET, Some(&alice)).await.0, 404);
    let (status, set) = call(Method::PUT, Some(&bob)).await;
    assert_eq!(status, 200, "{set}");
    let (status, got) = call(Method::GET, Some(&alice)).await;
    assert_eq!((status, &got["hash"]), (200, &set["hash"]));
    assert_eq!(call(Method::DELETE, Some(&bob)).await.0, 204);
}
