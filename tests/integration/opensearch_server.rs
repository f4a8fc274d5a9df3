//! The test kit's real OpenSearch: it takes a document and finds it, it hangs as a stuck node does
//! while frozen and answers again once thawed, and nothing of it is left once dropped.

use std::time::{Duration, Instant};

use clusteraudit_testkit::{OpenSearch, process::pid_alive};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSearch: scripts/test runs it"]
async fn opensearch_indexes_searches_hangs_while_frozen_and_stops_on_drop() {
    clusteraudit_io::tls::install_crypto_provider();
    let started = Instant::now();
    let opensearch = OpenSearch::start().await.expect("OpenSearch starts");
    eprintln!(
        "OpenSearch healthy after {:.1?} at {}",
        started.elapsed(),
        opensearch.url
    );
    let url = opensearch.url.clone();
    let pid = opensearch.pid();
    let dir = opensearch.dir().to_path_buf();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status.lines().find(|line| line.starts_with("VmRSS:"));
    eprintln!("OpenSearch pid {pid}: {}", rss.unwrap_or("no VmRSS"));
    // The pid that freeze and thaw signal is the JVM itself, not a launcher script.
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "java"
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let event = json!({
        "verb": "delete",
        "user": {"username": "alice"},
        "objectRef": {"resource": "deployments", "namespace": "shop", "name": "web"},
    });
    let indexed = http
        .put(format!("{url}/audit-test/_doc/1?refresh=true"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(
        indexed.status(),
        reqwest::StatusCode::CREATED,
        "{}",
        indexed.text().await.unwrap()
    );

    let search = async || -> Value {
        let response = http
            .post(format!("{url}/audit-test/_search"))
            .json(&json!({"query": {"match": {"user.username": "alice"}}}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{response:?}");
        response.json().await.unwrap()
    };
    let found = search().await;
    assert_eq!(found["hits"]["total"]["value"], 1, "{found:#}");
    assert_eq!(found["hits"]["hits"][0]["_id"], "1", "{found:#}");
    assert_eq!(found["hits"]["hits"][0]["_source"], event, "{found:#}");

    opensearch.freeze();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let asked = Instant::now();
    let hung = impatient
        .get(format!("{url}/_cluster/health"))
        .send()
        .await
        .expect_err("a frozen OpenSearch answers nothing");
    assert!(hung.is_timeout(), "{hung:?}");
    assert!(asked.elapsed() >= Duration::from_secs(2), "{hung:?}");

    opensearch.thaw();
    let health = http
        .get(format!("{url}/_cluster/health"))
        .send()
        .await
        .expect("a thawed OpenSearch answers");
    assert!(health.status().is_success(), "{health:?}");
    assert_eq!(search().await["hits"]["total"]["value"], 1);

    drop(opensearch);
    assert!(!pid_alive(pid), "the JVM outlived its OpenSearch");
    let port = reqwest::Url::parse(&url).unwrap().port().unwrap();
    let connected = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(connected.is_err(), "port {port} still listens after drop");
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
