//! Event indices created from the template before `impersonatedUser` and `roleRef` existed: their
//! strict mapping refuses documents holding the two fields, so a collector starting on them maps
//! the fields into them; a day's events still land in the day's index, and the new fields find
//! them.

use std::time::Duration;

use clusteraudit_opensearch_store::document::{ADDED_KEYWORD_FIELDS, index_name, index_template};
use clusteraudit_testkit::{free_port, opensearch::OpenSearch};
use serde_json::{Value, json};

use crate::{
    collector_api::{event, event_day},
    collector_opensearch::route,
    support::start_dev_collector_with,
};

const PREFIX: &str = "fields";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSearch: scripts/test runs it"]
async fn indices_from_the_older_template_get_the_added_fields() {
    let opensearch = OpenSearch::start().await.expect("OpenSearch starts");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("collector.log");
    let args = vec![
        "--store=opensearch".to_string(),
        format!("--opensearch-url={}", opensearch.url),
        format!("--opensearch-index-prefix={PREFIX}"),
    ];
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let call = async |method: reqwest::Method, path: &str, body: Option<Value>| -> (u16, Value) {
        let mut request = http.request(method, format!("{}{path}", opensearch.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    };

    // A collector makes the catalog and the routed topic, and is stopped.
    let mut first = start_dev_collector_with(&data, &log, free_port().unwrap(), &args).await;
    let topic = route(&first).await;
    first.process.stop(Duration::from_secs(10));

    // What the release before left: its template (the current one, less the added fields), and
    // the day's index created from it.
    let mut old = index_template(PREFIX);
    let properties = old["template"]["mappings"]["properties"]
        .as_object_mut()
        .unwrap();
    for field in ADDED_KEYWORD_FIELDS {
        assert!(properties.remove(field).is_some(), "{field}");
    }
    old["version"] = json!(2);
    let (status, answer) = call(
        reqwest::Method::PUT,
        &format!("/_index_template/{PREFIX}-events"),
        Some(old),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let day: jiff::civil::Date = event_day().parse().unwrap();
    let day = clusteraudit_store::day_of_date(day).unwrap();
    let index = index_name(PREFIX, &topic, day);
    let (status, answer) = call(reqwest::Method::PUT, &format!("/{index}"), None).await;
    assert_eq!(status, 200, "{answer}");
    // It refuses a document holding a field it does not map.
    let (status, answer) = call(
        reqwest::Method::PUT,
        &format!("/{index}/_doc/probe"),
        Some(json!({"impersonatedUser": "eve"})),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        answer["error"]["type"], "strict_dynamic_mapping_exception",
        "{answer}"
    );

    // The collector of this release starts on them.
    let collector = start_dev_collector_with(&data, &log, free_port().unwrap(), &args).await;
    let (status, mapping) = call(reqwest::Method::GET, &format!("/{index}/_mapping"), None).await;
    assert_eq!(status, 200, "{mapping}");
    for field in ADDED_KEYWORD_FIELDS {
        assert_eq!(
            mapping[&index]["mappings"]["properties"][field]["type"], "keyword",
            "{field}: {mapping}"
        );
    }

    let mut impersonated = event(1, "alice", "get", 200);
    impersonated["impersonatedUser"] = json!({"username": "eve", "groups": ["devs"]});
    let mut binding = event(2, "alice", "create", 201);
    binding["level"] = json!("Request");
    binding["objectRef"] = json!({"resource": "clusterrolebindings", "name": "eve-admin",
        "apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1"});
    binding["requestObject"] = json!({"kind": "ClusterRoleBinding",
        "metadata": {"name": "eve-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "eve"}]});
    let plain = event(3, "alice", "list", 200);
    assert_eq!(
        collector.post_events(&[impersonated, binding, plain]).await,
        200
    );
    let all = collector.wait_count(&topic, "", 3).await;
    assert_eq!(all.len(), 3, "{}", collector.process.log_tail(20));
    let ids = |q: &'static str| {
        let collector = &collector;
        let topic = &topic;
        async move {
            let mut ids: Vec<String> = collector
                .search_all(topic, q, 100)
                .await
                .iter()
                .map(|e| e["auditID"].as_str().unwrap()[33..].to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(ids("impersonatedUser:eve").await, ["001"]);
    assert_eq!(ids("impersonatedUser:*").await, ["001"]);
    assert_eq!(ids("not impersonatedUser:*").await, ["002", "003"]);
    assert_eq!(ids("roleRef:cluster-admin").await, ["002"]);
    assert_eq!(ids("roleRef:clus*").await, ["002"]);
    assert_eq!(ids("not roleRef:*").await, ["001", "003"]);
    // All three went to the day's index the older template made.
    let (status, count) = call(reqwest::Method::GET, &format!("/{index}/_count"), None).await;
    assert_eq!(status, 200, "{count}");
    assert_eq!(count["count"], 3, "{count}");
}
