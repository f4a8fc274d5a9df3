//! The operator's side of the sink against a real collector: logsets and topics created or
//! adopted as the spec says, retention and routing followed, clear errors for what is not there,
//! and deleteOnDisable removing only what the operator created.

use clusteraudit_core::api::{LogsetRef, SinkSpec, TopicRef};
use clusteraudit_operator::sink::{SinkClient, SinkError};
use clusteraudit_testkit::free_port;
use serde_json::Value;

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
