//! Ingest beside the machine's limits, measured in the same run on the same bytes:
//! - parse: typed JSON decoding (`serde_json` into `audit::EventList`) of the EventLists the load
//!   generator sends, on one core, in events/s;
//! - sync: appending the same batch bodies to a file with an fdatasync after each batch (what an
//!   acknowledgement per batch would cost without group commit), in MB/s and events/s;
//! - ingest: the release collector at a fixed offered rate, the load generator on the same
//!   machine with freshness markers on: events acknowledged per second, ack latency, 429s, how
//!   long the store took to hold every acknowledged event, and ack-to-searchable freshness;
//!
//! then ingest as a fraction of each limit.
//!
//!   cargo bench --bench ingest_limits
//!   INGEST_RATE=50000 INGEST_SECONDS=600 LIMIT_SECONDS=30 cargo bench --bench ingest_limits
//!
//! Knobs: `LIMIT_SECONDS` (10, each limit), `INGEST_RATE` (100000 events/s offered),
//! `INGEST_SECONDS` (120), `INGEST_CONCURRENCY` (16 batches in flight), `SKIP_INGEST=1` (the
//! limits alone), `BENCH_DIR` (where the
//! synced file and the collector's data go: put it on the disk you mean to measure). The default
//! run takes about four minutes. Under `cargo test` (no `--bench` argument) each part runs for a
//! moment, as a smoke test.

use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use clusteraudit_core::audit::{Event, EventList};
use clusteraudit_loadgen::{EventGenerator, FreshnessArgs, LoadgenArgs, event_list_json};
use clusteraudit_testkit::{free_port, process::ManagedProcess};

/// The load generator's seed here: the limits are measured on the batches it will send.
const SEED: u64 = 42;
/// The kube-apiserver's default batch size, and the load generator's.
const BATCH: usize = 400;
/// Distinct batches the limits cycle through (40,000 events).
const SAMPLE_BATCHES: usize = 100;
/// The synced file starts over past this size, as a write-ahead log moves to a new segment.
const SEGMENT_BYTES: u64 = 256 << 20;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Limits {
    parse_events_per_second: f64,
    sync_events_per_second: f64,
    sync_bytes_per_second: f64,
    bytes_per_event: f64,
}

fn measure_limits(seconds: f64, dir: &Path) -> Limits {
    let mut generator = EventGenerator::new(SEED);
    let batches: Vec<Vec<u8>> = (0..SAMPLE_BATCHES)
        .map(|_| event_list_json(&generator.next_list(BATCH)))
        .collect();
    let sample_bytes: usize = batches.iter().map(Vec::len).sum();
    let bytes_per_event = sample_bytes as f64 / (SAMPLE_BATCHES * BATCH) as f64;
    println!(
        "the bytes: {SAMPLE_BATCHES} EventLists of {BATCH} events from the load generator (seed {SEED}), {bytes_per_event:.0} bytes per event"
    );

    // One core: this thread alone, nothing else of the bench running.
    let started = Instant::now();
    let mut events = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        for body in &batches {
            let list: EventList = serde_json::from_slice(body).expect("the sample decodes");
            events += black_box(list).items.len() as u64;
        }
    }
    let parse_events_per_second = events as f64 / started.elapsed().as_secs_f64();
    println!(
        "limit, parse (typed JSON into audit::EventList, one core): {parse_events_per_second:.0} events/s ({:.0} MB/s)",
        parse_events_per_second * bytes_per_event / 1e6
    );
    // For comparison, not a limit: the webhook's shape of decode, which keeps each item's bytes
    // (the list with raw items, then each item typed).
    #[derive(serde::Deserialize)]
    struct RawItems<'a> {
        #[serde(borrow)]
        items: Vec<&'a serde_json::value::RawValue>,
    }
    let started = Instant::now();
    let mut events = 0u64;
    while started.elapsed().as_secs_f64() < seconds / 2.0 {
        for body in &batches {
            let list: RawItems<'_> = serde_json::from_slice(body).expect("the sample decodes");
            for item in list.items {
                let event: Event = serde_json::from_str(item.get()).expect("an item decodes");
                black_box((item, event));
                events += 1;
            }
        }
    }
    println!(
        "  (for comparison: raw items, then each item typed, as the webhook keeps each event's bytes: {:.0} events/s)",
        events as f64 / started.elapsed().as_secs_f64()
    );

    let path = dir.join("sync-limit.log");
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .expect("the synced file opens")
    };
    let mut file = open();
    let (mut events, mut bytes, mut syncs, mut in_segment) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    'sync: loop {
        for body in &batches {
            file.write_all(body).expect("append");
            file.sync_data().expect("fdatasync");
            events += BATCH as u64;
            bytes += body.len() as u64;
            syncs += 1;
            in_segment += body.len() as u64;
            if in_segment >= SEGMENT_BYTES {
                file = open();
                in_segment = 0;
            }
            if started.elapsed().as_secs_f64() >= seconds {
                break 'sync;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    let sync_bytes_per_second = bytes as f64 / elapsed;
    let sync_events_per_second = events as f64 / elapsed;
    println!(
        "limit, sync (append one batch, fdatasync, {syncs} times): {:.0} MB/s, {sync_events_per_second:.0} events/s, {:.2} ms per sync",
        sync_bytes_per_second / 1e6,
        elapsed * 1000.0 / syncs.max(1) as f64
    );
    Limits {
        parse_events_per_second,
        sync_events_per_second,
        sync_bytes_per_second,
        bytes_per_event,
    }
}

struct Ingest {
    acked_per_second: f64,
    stored_per_second: f64,
}

async fn ingest(rate: u64, seconds: u64, concurrency: usize, dir: &Path) -> Ingest {
    let port = free_port().unwrap();
    let data = dir.join("collector");
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
    let started = Instant::now();
    let report = clusteraudit_loadgen::run(LoadgenArgs {
        target: vec![format!("{url}/v1/webhook")],
        events: u64::MAX / 2,
        batch: BATCH,
        concurrency,
        token: None,
        token_file: None,
        ca_file: None,
        insecure_skip_verify: false,
        duration: Some(Duration::from_secs(seconds).into()),
        rate,
        seed: SEED,
        acked_ids_file: None,
        json: false,
        freshness: FreshnessArgs {
            enabled: true,
            ..FreshnessArgs::default()
        },
    })
    .await
    .expect("the load generator runs");
    // Only the sending counts towards the acknowledged rate; the freshness wait after it does not.
    let sending_seconds = report.seconds;

    let route: serde_json::Value = http
        .get(format!("{url}/v1/route"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let topic = route["topicId"].as_str().unwrap().to_string();
    let catch_up = Instant::now() + Duration::from_secs(300);
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_stored_after = started.elapsed().as_secs_f64();
    collector.stop(Duration::from_secs(30));

    println!(
        "ingest ({seconds} s offered at {rate} events/s, {concurrency} batches of {BATCH} in flight, collector and load generator on this machine):"
    );
    for line in report.to_string().lines() {
        println!("  {line}");
    }
    println!(
        "  stored: {stored} of {} acknowledged, all of them {:.1} s after the first was sent ({:.1} s after sending stopped)",
        report.events_acked,
        all_stored_after,
        all_stored_after - sending_seconds
    );
    Ingest {
        acked_per_second: report.events_acked as f64 / sending_seconds,
        stored_per_second: stored as f64 / all_stored_after,
    }
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
    let (limit_seconds, rate, ingest_seconds) = if benchmarking {
        (
            env_or("LIMIT_SECONDS", 10.0),
            env_or("INGEST_RATE", 100_000),
            env_or("INGEST_SECONDS", 120),
        )
    } else {
        (0.5, 2_000, 2)
    };
    let concurrency = env_or("INGEST_CONCURRENCY", 16);

    let limits = measure_limits(limit_seconds, dir.path());
    if env_or("SKIP_INGEST", 0) != 0 {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ingest = runtime.block_on(ingest(rate, ingest_seconds, concurrency, dir.path()));

    let fraction = |ingest: f64| {
        format!(
            "{:.2} of parse, {:.2} of sync",
            ingest / limits.parse_events_per_second,
            ingest / limits.sync_events_per_second
        )
    };
    println!(
        "ingest against the limits (sync in bytes: {:.0} MB/s acknowledged of {:.0} MB/s):",
        ingest.acked_per_second * limits.bytes_per_event / 1e6,
        limits.sync_bytes_per_second / 1e6
    );
    println!(
        "  acknowledged {:.0} events/s: {}",
        ingest.acked_per_second,
        fraction(ingest.acked_per_second)
    );
    println!(
        "  stored (every acknowledged event counted in the store, over the time to get there) {:.0} events/s: {}",
        ingest.stored_per_second,
        fraction(ingest.stored_per_second)
    );
}
