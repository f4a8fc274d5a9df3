//! The collector's figures on this machine:
//! - ingest with durable acknowledgement: the release collector and the load generator sharing
//!   the machine, for `INGEST_SECONDS` (default 300): events/s, batch ack latency, collector RSS,
//!   and freshness (acknowledgement to returned by search, from the load generator's markers);
//! - storage: bytes on disk per stored event (indexes included);
//! - search over `SEARCH_EVENTS` (default 10 million) stored events: selective filters (user + verb
//!   + resource in a time range) p50/p99, and stats (top users over 24 h).
//!
//!   cargo bench --bench collector
//!   INGEST_SECONDS=60 SEARCH_EVENTS=1000000 cargo bench --bench collector
//!   SKIP_INGEST=1 SEARCH_STORE=/var/tmp/store-10m cargo bench --bench collector   # loads once, then reuses
//!
//! Under `cargo test` (no `--bench` argument) it runs each part for a moment, as a smoke test.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use clusteraudit_core::query;
use clusteraudit_embedded_store::{Store, dir_size};
use clusteraudit_loadgen::{EventGenerator, LoadgenArgs, Percentiles};
use clusteraudit_store::{StatsField, StatsRequest};
use clusteraudit_testkit::{free_port, process::ManagedProcess};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A line of /proc/PID/status, in KiB.
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

async fn ingest(seconds: u64, dir: &Path) {
    let port = free_port().unwrap();
    let data = dir.join("ingest");
    let args = vec![
        "collector".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--listen=127.0.0.1:{port}"),
        "--insecure-dev".into(),
    ];
    let mut collector = ManagedProcess::spawn(
        "collector",
        Path::new(env!("CARGO_BIN_EXE_clusteraudit")),
        &args,
        &dir.join("collector.log"),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "{}", collector.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = collector.pid();
    // RSS counts the index files the kernel has mapped in (page cache it can drop at will) as
    // well as the process's own memory; both are reported.
    let sampling = tokio::spawn(async move {
        let (mut peak, mut peak_anon) = (0, 0);
        loop {
            peak = peak.max(rss_kib(pid));
            peak_anon = peak_anon.max(status_kib(pid, "RssAnon:"));
            tokio::time::sleep(Duration::from_millis(500)).await;
            if rss_kib(pid) == 0 {
                return (peak, peak_anon);
            }
        }
    });
    let report = clusteraudit_loadgen::run(LoadgenArgs {
        target: vec![format!("{url}/v1/webhook")],
        events: u64::MAX / 2,
        batch: 400,
        concurrency: 4,
        token: None,
        token_file: None,
        ca_file: None,
        insecure_skip_verify: false,
        duration: Some(Duration::from_secs(seconds).into()),
        rate: 0,
        seed: 42,
        acked_ids_file: None,
        json: false,
        freshness: clusteraudit_loadgen::FreshnessArgs {
            enabled: true,
            ..Default::default()
        },
    })
    .await
    .expect("the load generator runs");

    // Let the indexer catch up, then measure what is on disk.
    let (_, route): (u16, serde_json::Value) = {
        let r = http.get(format!("{url}/v1/route")).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    };
    let topic = route["topicId"].as_str().unwrap().to_string();
    let catch_up = Instant::now() + Duration::from_secs(600);
    let mut stored = 0;
    while Instant::now() < catch_up {
        let topic_info: serde_json::Value = http
            .get(format!("{url}/v1/topics/{topic}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stored = topic_info["eventCount"].as_u64().unwrap_or(0);
        if stored >= report.events_acked {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let peak_rss = rss_kib(pid);
    collector.stop(Duration::from_secs(30));
    let (sampled_rss, peak_anon) = sampling.await.unwrap_or((0, 0));
    let peak_rss = sampled_rss.max(peak_rss);
    let store_bytes = dir_size(&data.join("store"));
    println!(
        "ingest ({seconds} s, collector and load generator on this machine, 4 senders, batches of 400):"
    );
    println!("  {report}");
    println!(
        "  events stored: {stored} (acknowledged {})",
        report.events_acked
    );
    println!(
        "  collector peak RSS: {:.1} MiB (of which anonymous memory: {:.1} MiB; the rest is mapped index files)",
        peak_rss as f64 / 1024.0,
        peak_anon as f64 / 1024.0
    );
    if stored > 0 {
        println!(
            "storage: {:.1} bytes per event ({} bytes for {stored} events, indexes included)",
            store_bytes as f64 / stored as f64,
            store_bytes
        );
    }
}

/// What the search part needs to know of the events it loaded.
#[derive(serde::Serialize, serde::Deserialize)]
struct Loaded {
    events: u64,
    first_time: i64,
    last_time: i64,
    users: Vec<String>,
}

/// Loads `events` generated events into the store at `store_dir`, or, when the store already
/// holds that many from an earlier run (`SEARCH_STORE`), reuses them: loading 10 million takes
/// minutes, and trying a change to search should not.
fn load(store: &Store, topic: &str, events: u64, store_dir: &Path) -> Loaded {
    let record = store_dir.join("bench-loaded.json");
    if let Some(loaded) = std::fs::read(&record)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Loaded>(&bytes).ok())
        .filter(|loaded| loaded.events >= events)
    {
        println!(
            "search: reusing the {} events loaded before in {}",
            loaded.events,
            store_dir.display()
        );
        return loaded;
    }
    let mut generator = EventGenerator::new(7);
    let started = Instant::now();
    let mut loaded = 0u64;
    let mut position = 0u64;
    let mut first_time = i64::MAX;
    let mut last_time = i64::MIN;
    let mut users = std::collections::BTreeSet::new();
    while loaded < events {
        let list = generator.next_list(1000);
        let raw: Vec<Vec<u8>> = list
            .items
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap())
            .collect();
        for event in &list.items {
            if users.len() < 500 {
                users.insert(event.user.username.clone());
            }
            if let Some(t) = event.time_micros() {
                first_time = first_time.min(t);
                last_time = last_time.max(t);
            }
        }
        let slices: Vec<&[u8]> = raw.iter().map(|r| r.as_slice()).collect();
        position += 1;
        loaded += store.apply(position, topic, &slices, None).unwrap() as u64;
        if position.is_multiple_of(1000) {
            store.commit(position).unwrap();
        }
    }
    store.commit(position).unwrap();
    let load_seconds = started.elapsed().as_secs_f64();
    println!(
        "search: loaded {loaded} events in {load_seconds:.0} s ({:.0} events/s indexing in-process); {:.1} bytes per event on disk",
        loaded as f64 / load_seconds,
        dir_size(store_dir) as f64 / loaded as f64
    );
    let loaded = Loaded {
        events: loaded,
        first_time,
        last_time,
        users: users.into_iter().collect(),
    };
    std::fs::write(&record, serde_json::to_vec(&loaded).unwrap()).unwrap();
    loaded
}

fn search(events: u64, dir: &Path) {
    let store_dir = std::env::var_os("SEARCH_STORE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.join("search"));
    let store = Store::open(&store_dir).unwrap();
    let topic = store.catalog_file().catalog().route().to_string();
    let Loaded {
        events: loaded,
        first_time,
        last_time,
        users,
    } = load(&store, &topic, events, &store_dir);

    if std::env::var_os("BENCH_SPACE").is_some() {
        for (part, bytes) in store.space_usage(&topic).unwrap().into_iter().take(25) {
            println!(
                "  {:>8.1} bytes/event  {part}",
                bytes as f64 / loaded as f64
            );
        }
    }
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
    let span = (last_time - first_time).max(1);
    let rounds = if events >= 1_000_000 { 300 } else { 30 };
    // Each shape of query over a sliding third of the data: a selective conjunction, a negated
    // clause of two users (which reads every event the rest matches), and user prefixes.
    type Shape = fn(&[String], usize, &str, &str) -> String;
    let shapes: [(&str, Shape); 3] = [
        ("user + verb + resource", |users, i, verb, resource| {
            let user = &users[(i * 7919) % users.len()];
            format!("user:\"{user}\" and verb:{verb} and resource:{resource}")
        }),
        ("verb and not (user or user)", |users, i, verb, _| {
            let (a, b) = (
                &users[(i * 7919) % users.len()],
                &users[(i * 104_729) % users.len()],
            );
            format!("verb:{verb} and not (user:\"{a}\" or user:\"{b}\")")
        }),
        ("user prefix + resource", |_, i, _, resource| {
            let prefix = [
                "system:serviceaccount:kube-system:",
                "system:node:",
                "system:",
            ][i % 3];
            format!("user:{prefix}* and resource:{resource}")
        }),
    ];
    for (shape, query_of) in shapes {
        let mut latencies = Vec::new();
        let mut matched = 0usize;
        let mut slowest: Vec<(f64, usize, String, usize)> = Vec::new();
        for i in 0..rounds {
            let verb = verbs[i % verbs.len()];
            let resource = resources[(i / 7) % resources.len()];
            let text = query_of(&users, i, verb, resource);
            let q = query::parse(&text).unwrap();
            let third = i % 3;
            let from = first_time + (span / 3) * third as i64;
            let to = from + span / 3;
            let started = Instant::now();
            let page = store.search(&topic, &q, from, to, 100, None).unwrap();
            let took = started.elapsed().as_secs_f64() * 1000.0;
            latencies.push(took);
            matched += page.events.len();
            slowest.push((took, third, text, page.events.len()));
            slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
            slowest.truncate(3);
        }
        let search = Percentiles::from_samples(&mut latencies);
        println!(
            "search ({shape} in a time range, {rounds} queries, {matched} events returned): p50 {:.2} ms, p99 {:.2} ms",
            search.p50, search.p99
        );
        for (took, third, text, returned) in slowest {
            println!("  {took:.1} ms, third {third} of the range, {returned} returned: {text}");
        }
    }
    let mut stats_latencies = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let stats = store
            .stats(
                &topic,
                &StatsRequest {
                    query: query::Query::All,
                    from: last_time - 86_400_000_000,
                    to: last_time,
                    by: StatsField::User,
                    interval_micros: 3_600_000_000,
                    top: 10,
                },
            )
            .unwrap();
        stats_latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(stats.total, loaded);
    }
    let stats = Percentiles::from_samples(&mut stats_latencies);
    println!(
        "stats (top users over 24 h of {loaded} events): median {:.0} ms, max {:.0} ms",
        stats.p50, stats.max
    );
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    clusteraudit_io::tls::install_crypto_provider();
    let dir = tempfile::Builder::new()
        .prefix("clusteraudit-bench-")
        .tempdir_in(
            std::env::var("BENCH_DIR")
                .unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
        )
        .unwrap();
    let ingest_seconds = if benchmarking {
        env_or("INGEST_SECONDS", 300)
    } else {
        2
    };
    let search_events = if benchmarking {
        env_or("SEARCH_EVENTS", 10_000_000)
    } else {
        5_000
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    if env_or("SKIP_INGEST", 0) == 0 {
        runtime.block_on(ingest(ingest_seconds, dir.path()));
    }
    if env_or("SKIP_SEARCH", 0) == 0 {
        search(search_events, dir.path());
    }
}
