//! What alert rules cost ingestion, and how soon an alert is sent, on this machine:
//! - matching in-process: per event of loadgen's mix, the rules' share of the webhook's work
//!   (matching, grouping, counting in the windows) with 0, 10 and 100 rules;
//! - ingest with 0, 10 and 100 rules: the release collector and the load generator sharing the
//!   machine, rounds interleaved; events/s and the collector's CPU per event;
//! - alert latency: while the load generator sends, probe events that each cross a rule's
//!   threshold are posted one by one; from each probe's acknowledgement to the notification for
//!   its group reaching a JSON webhook, p50 / p99 / max; with one collector, and with two
//!   replicas sharing OpenSearch (with `--bench` only: it starts OpenSearch).
//!
//!   cargo bench --bench alerts
//!   ALERT_BENCH_EVENTS=200000 ALERT_BENCH_ROUNDS=3 ALERT_BENCH_PROBES=60 cargo bench --bench alerts
//!   ALERT_BENCH_ONLY=matching cargo bench --bench alerts    # the in-process part alone
//!   ALERT_BENCH_ONLY=shared cargo bench --bench alerts      # latency with two replicas on OpenSearch
//!   (its background load: ALERT_BENCH_SHARED_RATE, 2,000 events/s)
//!
//! Under `cargo test` (no `--bench` argument) it runs each part for a moment, as a smoke test.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clusteraudit_loadgen::LoadgenArgs;
use clusteraudit_testkit::{free_port, process::ManagedProcess};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The process's user and system CPU time so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the parenthesis.
    (ticks(11) + ticks(12)) / 100.0
}

/// `count` rules over loadgen's mix: deletions, secret reads, refusals, exec and writes per
/// resource and namespace, grouped as people group them.
fn rules(count: usize) -> Vec<Value> {
    let resources = [
        "pods",
        "deployments",
        "secrets",
        "configmaps",
        "services",
        "replicasets",
        "serviceaccounts",
        "roles",
        "rolebindings",
        "jobs",
    ];
    let namespaces = ["default", "kube-system", "shop", "payments", "monitoring"];
    (0..count)
        .map(|i| {
            let resource = resources[i % resources.len()];
            let namespace = namespaces[(i / resources.len()) % namespaces.len()];
            let (query, group_by) = match i % 5 {
                0 => (
                    format!("verb:delete and resource:{resource}"),
                    json!(["user", "namespace"]),
                ),
                1 => (
                    format!("resource:{resource} and (verb:get or verb:list) and not user:system:*"),
                    json!(["user"]),
                ),
                2 => (
                    format!("code>=400 and namespace:{namespace}"),
                    json!(["user", "verb"]),
                ),
                3 => (
                    format!(
                        "namespace:{namespace} and resource:pods and (subresource:exec or subresource:attach)"
                    ),
                    json!(["user"]),
                ),
                _ => (
                    format!(
                        "resource:{resource} and (verb:create or verb:update or verb:patch) and namespace:{namespace}"
                    ),
                    json!(["user", "resource"]),
                ),
            };
            json!({"name": format!("rule-{i}"), "query": query, "windowSeconds": 300,
                   "threshold": 1000, "groupBy": group_by})
        })
        .collect()
}

struct Collector {
    process: ManagedProcess,
    url: String,
    http: reqwest::Client,
}

async fn start_collector(dir: &Path, extra: &[String]) -> Collector {
    let port = free_port().unwrap();
    let mut args = vec![
        "collector".to_string(),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--listen=127.0.0.1:{port}"),
        "--insecure-dev".into(),
    ];
    args.extend(extra.iter().cloned());
    let process = ManagedProcess::spawn(
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
        assert!(Instant::now() < deadline, "{}", process.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Collector { process, url, http }
}

impl Collector {
    async fn set_rules(&self, rules: &[Value]) {
        let response = self
            .http
            .put(format!("{}/v1/alerts", self.url))
            .json(&json!({ "rules": rules }))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
        // Every rule is in force (its window read from the store) before the load starts.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let view: Value = self
                .http
                .get(format!("{}/v1/alerts", self.url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let ready = view["rules"]
                .as_array()
                .map_or(0, |r| r.iter().filter(|r| r["ready"] == true).count());
            if ready >= rules.len() {
                return;
            }
            assert!(Instant::now() < deadline, "rules never ready: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn loadgen(url: &str, events: u64, rate: u64, duration: Option<Duration>) -> LoadgenArgs {
    LoadgenArgs {
        target: vec![format!("{url}/v1/webhook")],
        events,
        batch: 400,
        concurrency: 4,
        token: None,
        token_file: None,
        ca_file: None,
        insecure_skip_verify: false,
        duration: duration.map(Into::into),
        rate,
        seed: 42,
        acked_ids_file: None,
        json: false,
        freshness: Default::default(),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn ingest(dir: &Path, events: u64, rounds: usize) {
    let counts = [0usize, 10, 100];
    let mut rates: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut cpu: HashMap<usize, Vec<f64>> = HashMap::new();
    for round in 0..rounds {
        for &count in &counts {
            let run = dir.join(format!("ingest-{count}-{round}"));
            std::fs::create_dir_all(&run).unwrap();
            let mut collector = start_collector(&run, &[]).await;
            collector.set_rules(&rules(count)).await;
            let pid = collector.process.pid();
            let before = cpu_seconds(pid);
            let report = clusteraudit_loadgen::run(loadgen(&collector.url, events, 0, None))
                .await
                .expect("the load generator runs");
            let used = cpu_seconds(pid) - before;
            collector.process.stop(Duration::from_secs(30));
            rates
                .entry(count)
                .or_default()
                .push(report.events_per_second);
            cpu.entry(count)
                .or_default()
                .push(used * 1e6 / report.events_acked.max(1) as f64);
            println!(
                "  round {round}, {count:>3} rules: {:>8.0} events/s, collector CPU {:.2} µs/event, ack p99 {:.1} ms",
                report.events_per_second,
                used * 1e6 / report.events_acked.max(1) as f64,
                report.ack_latency_ms.p99
            );
        }
    }
    let base_cpu = median(cpu.get_mut(&0).unwrap());
    let base_rate = median(rates.get_mut(&0).unwrap());
    println!("ingest with alert rules ({events} events per run, {rounds} rounds, medians):");
    for count in counts {
        let rate = median(rates.get_mut(&count).unwrap());
        let used = median(cpu.get_mut(&count).unwrap());
        println!(
            "  {count:>3} rules: {rate:>8.0} events/s ({:+.1}%), collector CPU {used:.2} µs/event ({:+.1}%)",
            (rate / base_rate - 1.0) * 100.0,
            (used / base_cpu - 1.0) * 100.0
        );
    }
}

/// A JSON webhook that notes when the first notification for each `user` label arrived.
async fn receiver() -> (String, Arc<Mutex<HashMap<String, Instant>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let kept = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    // One request: headers, then content-length bytes.
                    let (head_end, length) = loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (end + 4, length);
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buffer.len() < head_end + length {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let now = Instant::now();
                    let body: Value = serde_json::from_slice(&buffer[head_end..head_end + length])
                        .unwrap_or_default();
                    buffer.drain(..head_end + length);
                    for alert in body["alerts"].as_array().into_iter().flatten() {
                        if let Some(user) = alert["labels"]["user"].as_str() {
                            kept.lock().unwrap().entry(user.to_string()).or_insert(now);
                        }
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, arrivals)
}

fn probe_batch(user: &str) -> Value {
    let now = jiff::Timestamp::now().to_string();
    json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [{
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": format!("{:08x}-0000-4000-8000-000000000000", rand_u32()),
        "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/kube-system/pods/etcd-0/exec?command=sh",
        "verb": "create", "user": {"username": user}, "sourceIPs": ["10.0.0.9"],
        "objectRef": {"resource": "pods", "namespace": "kube-system", "name": "etcd-0",
                      "subresource": "exec", "apiVersion": "v1"},
        "responseStatus": {"code": 101},
        "requestReceivedTimestamp": now, "stageTimestamp": now,
    }]})
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() as u32
}

/// The probe rule beside 100 ordinary ones.
fn rules_with_probe() -> Vec<Value> {
    let mut with_probe = rules(100);
    with_probe.push(
        json!({"name": "probe", "query": "user:latency-probe-* and subresource:exec",
                           "windowSeconds": 300, "threshold": 1, "groupBy": ["user"]}),
    );
    with_probe
}

/// One collector on its embedded store.
async fn latency(dir: &Path, probes: usize, background_rate: u64) {
    let (webhook, arrivals) = receiver().await;
    let run = dir.join("latency");
    std::fs::create_dir_all(&run).unwrap();
    let mut collector = start_collector(&run, &[format!("--alert-webhook-url={webhook}")]).await;
    collector.set_rules(&rules_with_probe()).await;
    probe(
        &[&collector],
        &arrivals,
        probes,
        background_rate,
        "one collector, embedded store",
    )
    .await;
    collector.process.stop(Duration::from_secs(30));
}

/// Two replicas sharing OpenSearch: the probes and the load are spread over both, and the
/// replica holding the evaluator's lease counts every rule in OpenSearch each tick.
async fn shared_latency(dir: &Path, probes: usize, background_rate: u64) {
    let opensearch = clusteraudit_testkit::opensearch::OpenSearch::start()
        .await
        .expect("OpenSearch starts");
    let (webhook, arrivals) = receiver().await;
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let run = dir.join(format!("shared-latency-{name}"));
        std::fs::create_dir_all(&run).unwrap();
        replicas.push(
            start_collector(
                &run,
                &[
                    "--store=opensearch".into(),
                    format!("--opensearch-url={}", opensearch.url),
                    format!("--alert-webhook-url={webhook}"),
                ],
            )
            .await,
        );
    }
    replicas[0].set_rules(&rules_with_probe()).await;
    let targets: Vec<&Collector> = replicas.iter().collect();
    probe(
        &targets,
        &arrivals,
        probes,
        background_rate,
        "two replicas on OpenSearch",
    )
    .await;
    // How long the evaluator's count of all rules in OpenSearch took, per tick.
    for replica in &replicas {
        let text = replica
            .http
            .get(format!("{}/metrics", replica.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let metric = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let ticks = metric("clusteraudit_collector_alert_evaluation_seconds_count");
        if ticks > 0.0 {
            println!(
                "  the evaluator counted 101 rules in OpenSearch {ticks} times, {:.0} ms each on average",
                metric("clusteraudit_collector_alert_evaluation_seconds_sum") / ticks * 1000.0
            );
        }
    }
    for mut replica in replicas {
        replica.process.stop(Duration::from_secs(30));
    }
}

/// Posts probes one by one, in turn to each collector, under background load spread over them,
/// and prints the time from each probe's acknowledgement to its notification.
async fn probe(
    collectors: &[&Collector],
    arrivals: &Arc<Mutex<HashMap<String, Instant>>>,
    probes: usize,
    background_rate: u64,
    label: &str,
) {
    let background: Vec<_> = collectors
        .iter()
        .map(|collector| {
            let url = collector.url.clone();
            let rate = background_rate / collectors.len() as u64;
            tokio::spawn(async move {
                clusteraudit_loadgen::run(loadgen(
                    &url,
                    u64::MAX / 2,
                    rate,
                    Some(Duration::from_secs(3600)),
                ))
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut acked = Vec::new();
    for i in 0..probes {
        let user = format!("latency-probe-{i}");
        let collector = collectors[i % collectors.len()];
        let response = collector
            .http
            .post(format!("{}/v1/webhook", collector.url))
            .json(&probe_batch(&user))
            .send()
            .await
            .unwrap();
        let at = Instant::now();
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
        acked.push((user, at));
        // Probes spread over the resolution of the rules' tick.
        tokio::time::sleep(Duration::from_millis(237)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals.lock().unwrap().len() < probes && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in background {
        task.abort();
    }
    let arrived = arrivals.lock().unwrap().clone();
    let mut latencies: Vec<f64> = acked
        .iter()
        .filter_map(|(user, at)| {
            arrived
                .get(user)
                .map(|got| (*got - *at).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "alert latency, {label} (101 rules, background load {background_rate} events/s requested): {} of {probes} probes notified; from acknowledgement to the webhook p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// The webhook's share of the rules' cost in-process: matching each decoded event against the
/// rules and counting the matches in their windows, per event of loadgen's mix.
fn matching(events: usize) {
    use clusteraudit_core::{
        alert::{RuleSpec, Window},
        audit::Event,
    };
    let mut generator = clusteraudit_loadgen::EventGenerator::new(7);
    // Decoded, with their times, as the webhook has them before it matches.
    let decoded: Vec<(Event, i64)> = (0..events)
        .map(|_| {
            let bytes = serde_json::to_vec(&generator.next_event()).unwrap();
            let event: Event = serde_json::from_slice(&bytes).unwrap();
            let at = event.time_micros().unwrap_or_default();
            (event, at)
        })
        .collect();
    println!("matching in-process ({events} events of loadgen's mix, best of 5 passes):");
    for count in [0usize, 10, 100] {
        let specs: Vec<RuleSpec> = rules(count)
            .into_iter()
            .map(|r| serde_json::from_value(r).unwrap())
            .collect();
        let set = clusteraudit_collector::alerts::RuleSet::for_topic(&specs, "t");
        let mut best = f64::MAX;
        let mut hits_per_event = 0.0;
        for _ in 0..5 {
            let mut windows: HashMap<String, Window> = specs
                .iter()
                .map(|s| (s.name.clone(), Window::new(s.compile().unwrap().0, 10_000)))
                .collect();
            let started = Instant::now();
            let mut hits = Vec::new();
            let mut counted = 0usize;
            for batch in decoded.chunks(400) {
                for (event, at) in batch {
                    set.observe("t", &[], event, *at, &mut hits);
                }
                counted += hits.len();
                for hit in hits.drain(..) {
                    let (rule, group, at) = hit.parts();
                    if let Some(window) = windows.get_mut(rule) {
                        let at = std::time::UNIX_EPOCH + Duration::from_micros(at.max(0) as u64);
                        window.count(group.clone(), at, 1);
                    }
                }
            }
            best = best.min(started.elapsed().as_secs_f64());
            hits_per_event = counted as f64 / events as f64;
        }
        println!(
            "  {count:>3} rules ({} compiled): {:.2} µs/event, {hits_per_event:.2} matches/event",
            set.len(),
            best * 1e6 / events as f64
        );
    }
}

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (events, rounds, probes, rate) = if benchmarking {
        (
            env_or("ALERT_BENCH_EVENTS", 300_000),
            env_or("ALERT_BENCH_ROUNDS", 3),
            env_or("ALERT_BENCH_PROBES", 60),
            env_or("ALERT_BENCH_RATE", 20_000),
        )
    } else {
        (4_000, 1, 3, 2_000)
    };
    clusteraudit_io::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    matching(if benchmarking { 200_000 } else { 2_000 });
    if std::env::var("ALERT_BENCH_ONLY").is_ok_and(|only| only == "matching") {
        return;
    }
    let only = std::env::var("ALERT_BENCH_ONLY").unwrap_or_default();
    // OpenSearch on this machine takes about 7,000 events/s (see the README): a load above it
    // would measure its backlog, not the alerts.
    let shared_rate = env_or("ALERT_BENCH_SHARED_RATE", 2_000);
    runtime.block_on(async {
        if only == "shared" {
            shared_latency(dir.path(), probes, shared_rate).await;
            return;
        }
        ingest(dir.path(), events, rounds).await;
        latency(dir.path(), probes, rate).await;
        // OpenSearch takes a while to start; the smoke test under `cargo test` leaves it to the
        // integration test of the replicas.
        if benchmarking {
            shared_latency(dir.path(), probes, shared_rate).await;
        }
    });
}
