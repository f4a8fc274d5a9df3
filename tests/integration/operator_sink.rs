//! The operator's side of the sink against a real collector: logsets and topics created or
//! adopted as the spec says, retention and routing followed, clear errors for what is not there,
//! and deleteOnDisable removing only what the operator created; the same for the topics of
//! `sink.routes`, and the routes themselves set in the collector.

use clusteraudit_core::api::{LogsetRef, RouteSpec, RouteStatus, SinkSpec, TopicRef};
use clusteraudit_operator::sink::{SinkClient, SinkError};
use clusteraudit_testkit::free_port;
use serde_json::{Value, json};

async fn get(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_is_created_adopted_and_cleaned_up_as_the_spec_says() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let collector = crate::support::start_dev_collector(
        &dir.path().join("data"),
        &dir.path().join("collector.log"),
        port,
    )
    .await;
    let sink = SinkClient::new(collector.http.clone(), &collector.url, None);

    // The defaults: logset k8s-audit and topic cluster-audit, created, routed to, 30 days.
    let created = sink.ensure(&SinkSpec::default(), None).await.unwrap();
    assert!(created.created.logset && created.created.topic);
    let topic_id = created.topic_id.clone().unwrap();
    let route = get(&collector.http, &format!("{}/v1/route", collector.url)).await;
    assert_eq!(route["topicId"], topic_id);
    let topic = get(
        &collector.http,
        &format!("{}/v1/topics/{topic_id}", collector.url),
    )
    .await;
    assert_eq!(
        (topic["name"].as_str(), topic["retentionDays"].as_i64()),
        (Some("cluster-audit"), Some(30))
    );

    // Reconciling again changes nothing and still remembers what it created.
    let again = sink
        .ensure(&SinkSpec::default(), Some(&created))
        .await
        .unwrap();
    assert_eq!(again, created);

    // A retention change is applied in place.
    let mut spec = SinkSpec::default();
    spec.topic.retention_days = Some(7);
    sink.ensure(&spec, Some(&created)).await.unwrap();
    let topic = get(
        &collector.http,
        &format!("{}/v1/topics/{topic_id}", collector.url),
    )
    .await;
    assert_eq!(topic["retentionDays"], 7);

    // Adopting by id: the collector's own default logset and topic, found by name first.
    let logsets = get(&collector.http, &format!("{}/v1/logsets", collector.url)).await;
    let default_logset = logsets["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "default")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let topics = get(
        &collector.http,
        &format!("{}/v1/logsets/{default_logset}/topics", collector.url),
    )
    .await;
    let default_topic = topics["items"][0]["id"].as_str().unwrap().to_string();
    let adopt = SinkSpec {
        logset: LogsetRef {
            id: Some(default_logset.clone()),
            ..Default::default()
        },
        topic: TopicRef {
            id: Some(default_topic.clone()),
            ..Default::default()
        },
        delete_on_disable: true,
        routes: Vec::new(),
    };
    let adopted = sink.ensure(&adopt, Some(&created)).await.unwrap();
    assert!(!adopted.created.logset && !adopted.created.topic);
    let route = get(&collector.http, &format!("{}/v1/route", collector.url)).await;
    assert_eq!(
        route["topicId"], default_topic,
        "the route follows the spec at run time"
    );

    // What is not there is said clearly, and is not transient.
    let missing = [
        (
            SinkSpec {
                logset: LogsetRef {
                    id: Some("ls-nope".into()),
                    ..Default::default()
                },
                ..SinkSpec::default()
            },
            "no logset with id \"ls-nope\"",
        ),
        (
            SinkSpec {
                logset: LogsetRef {
                    name: Some("absent".into()),
                    create: Some(false),
                    id: None,
                },
                ..SinkSpec::default()
            },
            "no logset named \"absent\", and create is false",
        ),
        (
            SinkSpec {
                topic: TopicRef {
                    id: Some("tp-nope".into()),
                    ..Default::default()
                },
                ..SinkSpec::default()
            },
            "no topic with id \"tp-nope\"",
        ),
        (
            SinkSpec {
                topic: TopicRef {
                    name: Some("absent".into()),
                    create: Some(false),
                    ..Default::default()
                },
                ..SinkSpec::default()
            },
            "no topic named \"absent\"",
        ),
        (
            SinkSpec {
                topic: TopicRef {
                    id: Some(topic_id.clone()),
                    ..Default::default()
                },
                logset: LogsetRef {
                    id: Some(default_logset.clone()),
                    ..Default::default()
                },
                delete_on_disable: false,
                routes: Vec::new(),
            },
            "belongs to logset",
        ),
    ];
    for (spec, message) in missing {
        let err = sink.ensure(&spec, None).await.unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
        assert!(!err.is_transient());
    }

    // deleteOnDisable removes only what the operator created: its topic and logset go, the
    // adopted default ones stay.
    sink.delete_created(&adopted).await.unwrap();
    assert_eq!(
        get(
            &collector.http,
            &format!("{}/v1/topics/{default_topic}", collector.url)
        )
        .await["name"],
        "default"
    );
    sink.ensure(&SinkSpec::default(), Some(&created))
        .await
        .unwrap();
    let deleted = sink.delete_created(&created).await.unwrap();
    assert!(deleted.topic && deleted.logset && deleted.logset_kept.is_none());
    let gone = collector
        .http
        .get(format!("{}/v1/topics/{topic_id}", collector.url))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let logsets = get(&collector.http, &format!("{}/v1/logsets", collector.url)).await;
    assert!(
        logsets["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["name"] != "k8s-audit")
    );
    let route = get(&collector.http, &format!("{}/v1/route", collector.url)).await;
    assert_eq!(route["topicId"], default_topic);

    // A collector that is not there is a transient error.
    let nowhere = SinkClient::new(
        collector.http.clone(),
        &format!("http://127.0.0.1:{}", free_port().unwrap()),
        None,
    );
    let err = nowhere
        .ensure(&SinkSpec::default(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Unreachable { .. }) && err.is_transient(),
        "{err}"
    );
}

fn route(query: &str, topic: TopicRef) -> RouteSpec {
    RouteSpec {
        query: query.into(),
        topic,
    }
}

fn named(name: &str, retention_days: Option<i32>) -> TopicRef {
    TopicRef {
        name: Some(name.into()),
        retention_days,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_topics_are_created_or_adopted_and_only_created_ones_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let collector = crate::support::start_dev_collector(
        &dir.path().join("data"),
        &dir.path().join("collector.log"),
        port,
    )
    .await;
    let sink = SinkClient::new(collector.http.clone(), &collector.url, None);
    let url = |path: &str| format!("{}{path}", collector.url);
    let first = sink.ensure(&SinkSpec::default(), None).await.unwrap();
    let (logset_id, topic_id) = (
        first.logset_id.clone().unwrap(),
        first.topic_id.clone().unwrap(),
    );
    // An `archive` topic that was there before: adopted by name, never deleted.
    let archive = collector
        .http
        .post(url(&format!("/v1/logsets/{logset_id}/topics")))
        .json(&json!({"name": "archive", "retentionDays": 90}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    let spec = SinkSpec {
        delete_on_disable: true,
        routes: vec![
            route(
                "resource:secrets or verb:delete",
                named("security", Some(365)),
            ),
            route("verb:delete", named("archive", None)),
            route("namespace:kube-system", named("security", None)),
        ],
        ..SinkSpec::default()
    };
    let status = sink.ensure(&spec, Some(&first)).await.unwrap();
    let security = status.routes[0].topic_id.clone();
    assert_eq!(
        status.routes,
        vec![
            RouteStatus {
                query: "resource:secrets or verb:delete".into(),
                topic_id: security.clone(),
                created: true
            },
            RouteStatus {
                query: "verb:delete".into(),
                topic_id: archive.clone(),
                created: false
            },
            RouteStatus {
                query: "namespace:kube-system".into(),
                topic_id: security.clone(),
                created: true
            },
        ]
    );
    let topic = get(&collector.http, &url(&format!("/v1/topics/{security}"))).await;
    assert_eq!(
        (topic["name"].as_str(), topic["retentionDays"].as_i64()),
        (Some("security"), Some(365))
    );
    let routes_path = url(&format!("/v1/topics/{topic_id}/routes"));
    let routes = get(&collector.http, &routes_path).await;
    assert_eq!(
        routes,
        json!({"routes": [
            {"query": "resource:secrets or verb:delete", "topicId": security},
            {"query": "verb:delete", "topicId": archive},
            {"query": "namespace:kube-system", "topicId": security},
        ]})
    );
    // Reconciling again changes nothing, and remembers which route topic it created.
    assert_eq!(sink.ensure(&spec, Some(&status)).await.unwrap(), status);

    // The collector routes by them: a secrets read reaches `security`.
    let mut secret = crate::collector_api::event(1, "alice", "get", 200);
    secret["objectRef"]["resource"] = json!("secrets");
    assert_eq!(collector.post_events(&[secret]).await, 200);
    let found = collector.wait_count(&security, "resource:secrets", 1).await;
    assert_eq!(found.len(), 1);

    // A route removed from the spec stops routing; its topic stays.
    let mut fewer = spec.clone();
    fewer.routes.remove(1);
    let status = sink.ensure(&fewer, Some(&status)).await.unwrap();
    assert_eq!(status.routes.len(), 2);
    assert!(status.routes.iter().all(|r| r.created));
    let routes = get(&collector.http, &routes_path).await;
    assert_eq!(routes["routes"].as_array().unwrap().len(), 2);
    let kept = get(&collector.http, &url(&format!("/v1/topics/{archive}"))).await;
    assert_eq!(kept["name"], "archive");

    // A route to the sink's own topic, or one the collector cannot parse, is refused for good
    // and changes nothing.
    let mut itself = fewer.clone();
    itself.routes[0].topic = TopicRef {
        id: Some(topic_id.clone()),
        ..Default::default()
    };
    let mut unparsable = fewer.clone();
    unparsable.routes[1].query = "namespace:".into();
    for (bad, message) in [
        (itself, "spec.sink.routes[0].topic is the sink's own topic"),
        (unparsable, "routes[1].query: at column 11"),
    ] {
        let err = sink.ensure(&bad, Some(&status)).await.unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
        assert!(!err.is_transient(), "{err}");
    }
    assert_eq!(get(&collector.http, &routes_path).await, routes);

    // deleteOnDisable: the routes go, and the route topic the operator created; the adopted
    // `archive` stays, and so the logset it is in.
    let deleted = sink.delete_created(&status).await.unwrap();
    assert_eq!(deleted.route_topics, vec![security.clone()]);
    assert!(deleted.topic && !deleted.logset && deleted.logset_kept.is_some());
    let gone = collector
        .http
        .get(url(&format!("/v1/topics/{security}")))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    let kept = get(&collector.http, &url(&format!("/v1/topics/{archive}"))).await;
    assert_eq!(kept["name"], "archive");
}
