//! The collector's figures on OpenSearch, all in one run against one OpenSearch node on this
//! machine (started by the test kit, 512 MiB heap):
//! - OpenSearch's own `_bulk` rate for the generated documents (4 requests in flight, 5,000
//!   documents each, as the shipper sends them), then events/s through one collector replica
//!   and through three, for the same documents: from the first batch posted to the last event
//!   acknowledged by OpenSearch (the collectors, the load generator and OpenSearch share the
//!   machine's two cores);
//! - at `SEARCH_EVENTS` (default 1 million) stored events: search p50/p99 (user + verb + resource
//!   in a time range) and stats (top users over 24 h) through the collector's API;
//! - bytes per event on OpenSearch (after a flush, and merged to one segment) beside the
//!   embedded store's for the same events.
//!
//!   cargo bench --bench opensearch
//!   INGEST_EVENTS=100000 SEARCH_EVENTS=200000 cargo bench --bench opensearch
//!
//! Under `cargo test` (no `--bench` argument) it runs each part on a few thousand events, as a
//! smoke test, when scripts/test has provided OpenSearch (CLUSTERAUDIT_OPENSEARCH_HOME).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use clusteraudit_embedded_store::{Store, dir_size};
use clusteraudit_loadgen::{EventGenerator, LoadgenArgs, Percentiles};
use clusteraudit_opensearch_store::{bulk, document};
use clusteraudit_testkit::{free_port, opensearch::OpenSearch, process::ManagedProcess};
use serde_json::{Value, json};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const SEED: u64 = 42;
const BULK_DOCS: usize = 5_000;
const IN_FLIGHT: usize = 4;

/// The generated events of `SEED`, `count` of them, as raw JSON, in chunks.
fn generated(count: usize, mut each_chunk: impl FnMut(Vec<String>)) {
    let mut generator = EventGenerator::new(SEED);
    let mut left = count;
    while left > 0 {
        let size = left.min(BULK_DOCS);
        let list = generator.next_list(size);
        each_chunk(
            list.items
                .iter()
                .map(|e| serde_json::to_string(e).unwrap())
                .collect(),
        );
        left -= size;
    }
}

fn items(topic: &str, raws: Vec<String>) -> Vec<bulk::Item> {
    raws.into_iter()
        .map(|raw| {
            let event = serde_json::from_str(&raw).unwrap();
            bulk::Item {
                topic: topic.to_string(),
                document: document::document(&event, &raw).unwrap(),
                raw,
            }
        })
        .collect()
}

/// Sends the generated documents straight to `_bulk`, `IN_FLIGHT` requests at a time; returns
/// the seconds taken by the sending alone (the bodies are made beforehand, so that this measures
/// OpenSearch, not the generator). Every item must be stored.
async fn direct_bulk(
    http: &reqwest::Client,
    url: &str,
    prefix: &str,
    topic: &str,
    count: usize,
) -> f64 {
    let (prefix_owned, topic_owned) = (prefix.to_string(), topic.to_string());
    let bodies = tokio::task::spawn_blocking(move || {
        let mut bodies = Vec::new();
        generated(count, |raws| {
            bodies.push(bulk::body(&prefix_owned, &items(&topic_owned, raws)));
        });
        bodies
    })
    .await
    .unwrap();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (queue, http, url) = (queue.clone(), http.clone(), url.to_string());
        senders.push(tokio::spawn(async move {
            loop {
                let Some(body) = queue.lock().unwrap().pop() else {
                    return;
                };
                let answer: Value = http
                    .post(format!("{url}/_bulk"))
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                assert_eq!(answer["errors"], false, "{}", answer["items"][0]);
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    started.elapsed().as_secs_f64()
}

async fn start_collector(
    dir: &Path,
    name: &str,
    opensearch: &str,
    prefix: &str,
) -> (ManagedProcess, String) {
    let port = free_port().unwrap();
    let args = vec![
        "collector".to_string(),
        format!("--data-dir={}", dir.join(name).display()),
        format!("--listen=127.0.0.1:{port}"),
        "--insecure-dev".into(),
        "--store=opensearch".into(),
        format!("--opensearch-url={opensearch}"),
        format!("--opensearch-index-prefix={prefix}"),
    ];
    let process = ManagedProcess::spawn(
        name,
        Path::new(env!("CARGO_BIN_EXE_clusteraudit")),
        &args,
        &dir.join(format!("{name}.log")),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    if let Err(timed_out) = clusteraudit_testkit::readyz(&reqwest::Client::new(), &url).await {
        panic!("{timed_out}: {}", process.log_tail(20));
    }
    (process, url)
}

async fn metric(http: &reqwest::Client, url: &str, name: &str) -> f64 {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Posts `count` generated events round-robin over `replicas` collectors; returns the events/s
/// from the first post to the last event stored in OpenSearch.
async fn through_collectors(
    dir: &Path,
    opensearch: &str,
    prefix: &str,
    replicas: usize,
    count: usize,
) -> f64 {
    let http = reqwest::Client::new();
    let mut collectors = Vec::new();
    for i in 0..replicas {
        collectors.push(start_collector(dir, &format!("{prefix}-{i}"), opensearch, prefix).await);
    }
    let started = Instant::now();
    let report = clusteraudit_loadgen::run(LoadgenArgs {
        target: collectors
            .iter()
            .map(|(_, url)| format!("{url}/v1/webhook"))
            .collect(),
        events: count as u64,
        batch: 400,
        concurrency: 4 * replicas,
        token: None,
        token_file: None,
        ca_file: None,
        insecure_skip_verify: false,
        duration: None,
        rate: 0,
        seed: SEED,
        acked_ids_file: None,
        json: false,
        freshness: Default::default(),
    })
    .await
    .expect("the load generator runs");
    assert_eq!(report.events_acked, count as u64, "{report}");
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let mut stored = 0.0;
        for (_, url) in &collectors {
            stored += metric(&http, url, "clusteraudit_collector_events_stored_total").await;
        }
        if stored as usize >= count {
            break;
        }
        assert!(Instant::now() < deadline, "only {stored} of {count} stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    for (mut process, _) in collectors {
        process.stop(Duration::from_secs(10));
    }
    count as f64 / seconds
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    format!("{base}?{}", query.join("&"))
}

async fn index_bytes(http: &reqwest::Client, url: &str, pattern: &str) -> (u64, u64) {
    let rows: Value = http
        .get(format!(
            "{url}/_cat/indices/{pattern}?format=json&bytes=b&h=docs.count,store.size"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let number = |v: &Value| v.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    rows.as_array()
        .unwrap()
        .iter()
        .fold((0, 0), |(docs, bytes), row| {
            (
                docs + number(&row["docs.count"]),
                bytes + number(&row["store.size"]),
            )
        })
}

async fn search_figures(dir: &Path, opensearch: &OpenSearch, count: usize) {
    let http = reqwest::Client::new();
    let prefix = "bench-search";
    let (mut collector, url) =
        start_collector(dir, "search-collector", &opensearch.url, prefix).await;
    let route: Value = http
        .get(format!("{url}/v1/route"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let topic = route["topicId"].as_str().unwrap().to_string();
    let loading = direct_bulk(&http, &opensearch.url, prefix, &topic, count).await;
    let pattern = format!("{prefix}-{topic}-*");
    http.post(format!("{}/{pattern}/_refresh", opensearch.url))
        .send()
        .await
        .unwrap();
    http.post(format!("{}/{pattern}/_flush", opensearch.url))
        .send()
        .await
        .unwrap();
    println!(
        "loaded {count} events for searching in {loading:.1} s ({:.0} events/s)",
        count as f64 / loading
    );

    // The same user, verb and resource mix as the embedded store's benchmark.
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    let mut users = std::collections::BTreeSet::new();
    generated(count.min(200_000), |raws| {
        for raw in raws {
            let event: clusteraudit_core::audit::Event = serde_json::from_str(&raw).unwrap();
            if users.len() < 500 {
                users.insert(event.user.username.clone());
            }
        }
    });
    let sample: Value = http
        .post(format!("{}/{pattern}/_search", opensearch.url))
        .json(&json!({"size": 0, "aggs": {"first": {"min": {"field": "time"}}, "last": {"max": {"field": "time"}}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    if let (Some(f), Some(l)) = (
        sample["aggregations"]["first"]["value"].as_f64(),
        sample["aggregations"]["last"]["value"].as_f64(),
    ) {
        // Milliseconds, as doubles: the range is widened by one so no event falls outside.
        (first, last) = ((f * 1000.0) as i64 - 1_000, (l * 1000.0) as i64 + 1_000);
    }
    let users: Vec<String> = users.into_iter().collect();
    let verbs = [
        "get", "list", "watch", "update", "patch", "create", "delete",
    ];
    let resources = [
        "pods",
        "leases",
        "configmaps",
        "secrets",
        "deployments",
        "nodes",
        "endpointslices",
    ];
    let span = (last - first).max(1);
    let rounds = if count >= 1_000_000 { 300 } else { 30 };
    let (mut latencies, mut matched) = (Vec::new(), 0);
    let at = |micros: i64| {
        jiff::Timestamp::from_microsecond(micros)
            .unwrap()
            .to_string()
    };
    for i in 0..rounds {
        let q = format!(
            "user:\"{}\" and verb:{} and resource:{}",
            users[(i * 7919) % users.len()],
            verbs[i % verbs.len()],
            resources[(i / 7) % resources.len()]
        );
        let from = first + (span / 3) * (i as i64 % 3);
        let started = Instant::now();
        let page: Value = http
            .get(with_query(
                &format!("{url}/v1/topics/{topic}/events"),
                &[
                    ("q", q.as_str()),
                    ("from", &at(from)),
                    ("to", &at(from + span / 3)),
                    ("limit", "100"),
                ],
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        matched += page["events"].as_array().map_or(0, Vec::len);
    }
    let search = Percentiles::from_samples(&mut latencies);
    println!(
        "search through the collector (user + verb + resource in a time range, {rounds} queries, {matched} events returned): p50 {:.1} ms, p99 {:.1} ms",
        search.p50, search.p99
    );
    let mut stats_latencies = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let stats: Value = http
            .get(with_query(
                &format!("{url}/v1/topics/{topic}/stats"),
                &[
                    ("from", at(last - 86_400_000_000).as_str()),
                    ("to", at(last + 1_000).as_str()),
                    ("by", "user"),
                    ("interval", "1h"),
                ],
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats_latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(stats["total"], count, "{stats}");
    }
    let stats = Percentiles::from_samples(&mut stats_latencies);
    println!(
        "stats (top users over 24 h of {count} events): median {:.0} ms, max {:.0} ms",
        stats.p50, stats.max
    );
    collector.stop(Duration::from_secs(10));

    let (docs, flushed) = index_bytes(&http, &opensearch.url, &pattern).await;
    let merge = http
        .post(format!(
            "{}/{pattern}/_forcemerge?max_num_segments=1&wait_for_completion=true",
            opensearch.url
        ))
        .timeout(Duration::from_secs(1800))
        .send()
        .await
        .unwrap();
    assert!(merge.status().is_success(), "{:?}", merge.text().await);
    // The merged-away segments leave the count once a flush and a refresh let go of them.
    for step in ["_flush", "_refresh"] {
        http.post(format!("{}/{pattern}/{step}", opensearch.url))
            .send()
            .await
            .unwrap();
    }
    let (_, merged) = index_bytes(&http, &opensearch.url, &pattern).await;
    println!(
        "OpenSearch storage: {:.1} bytes per event after a flush, {:.1} merged to one segment ({docs} events, best_compression)",
        flushed as f64 / docs.max(1) as f64,
        merged as f64 / docs.max(1) as f64
    );

    // The embedded store, the same events.
    let store = Store::open(&dir.join("embedded")).unwrap();
    let embedded_topic = store.catalog_file().catalog().route().to_string();
    let mut position = 0u64;
    generated(count, |raws| {
        position += 1;
        let slices: Vec<&[u8]> = raws.iter().map(|r| r.as_bytes()).collect();
        store
            .apply(position, &embedded_topic, &slices, None)
            .unwrap();
        if position.is_multiple_of(40) {
            store.commit(position).unwrap();
        }
    });
    store.commit(position + 1).unwrap();
    println!(
        "embedded store: {:.1} bytes per event, same events",
        dir_size(&dir.join("embedded")) as f64 / count as f64
    );
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    if !benchmarking && std::env::var_os(clusteraudit_testkit::opensearch::HOME_ENV).is_none() {
        println!("skipped: needs OpenSearch, which scripts/test provides");
        return;
    }
    clusteraudit_io::tls::install_crypto_provider();
    let dir = tempfile::Builder::new()
        .prefix("clusteraudit-bench-")
        .tempdir_in(
            std::env::var("BENCH_DIR")
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )
        .unwrap();
    let ingest_events = if benchmarking {
        env_or("INGEST_EVENTS", 300_000)
    } else {
        4_000
    };
    let search_events = if benchmarking {
        env_or("SEARCH_EVENTS", 1_000_000)
    } else {
        4_000
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let opensearch = OpenSearch::start().await.expect("OpenSearch starts");
        let http = reqwest::Client::new();
        if env_or("SKIP_INGEST", 0) == 0 {
            // A fresh JVM compiles as it goes: warm OpenSearch up before measuring anything.
            direct_bulk(&http, &opensearch.url, "bench-warmup", "tp-warmup", ingest_events).await;
            let seconds = direct_bulk(&http, &opensearch.url, "bench-direct", "tp-direct", ingest_events).await;
            let direct = ingest_events as f64 / seconds;
            println!("OpenSearch's own _bulk rate: {direct:.0} events/s ({ingest_events} documents, {IN_FLIGHT} requests of {BULK_DOCS} in flight)");
            for replicas in [1, 3] {
                let rate = through_collectors(dir.path(), &opensearch.url, &format!("bench-{replicas}"), replicas, ingest_events).await;
                println!(
                    "through {replicas} collector replica(s): {rate:.0} events/s, posted to stored in OpenSearch ({:.2} of the _bulk rate)",
                    rate / direct
                );
            }
        }
        if env_or("SKIP_SEARCH", 0) == 0 {
            search_figures(dir.path(), &opensearch, search_events).await;
        }
    });
}
