//! The collector's write-ahead log and embedded store against broken disks, with the real
//! binary: bytes flipped in an old and in the current log segment, an index the store cannot
//! write, a full disk, a deleted topic and the log's release. In each, every acknowledged auditID
//! is searchable afterwards (but those in a record whose bytes were flipped before it was
//! indexed: those bytes are all there was of it).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use clusteraudit_testkit::{eventually, free_port, process::ManagedProcess};
use serde_json::{Value, json};

use crate::collector_api::{event, event_day};
use crate::support::{DevCollector as Collector, start_dev_collector_with as start};

async fn route(collector: &Collector) -> String {
    let (_, route) = collector
        .call(reqwest::Method::GET, "/v1/route", None)
        .await;
    route["topicId"].as_str().expect("a route").to_string()
}

/// Posts a batch; the status and the Retry-After header.
async fn post(collector: &Collector, events: &[Value]) -> (u16, Option<String>) {
    let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events});
    let response = collector
        .http
        .post(format!("{}/v1/webhook", collector.url))
        .json(&body)
        .send()
        .await
        .expect("the collector answers");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (response.status().as_u16(), retry_after)
}

/// The value of a metric line starting with `name` (labels included), 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn stored_ids(collector: &Collector, topic: &str) -> Vec<String> {
    collector
        .search_all(topic, "", 1000)
        .await
        .iter()
        .map(|e| e["auditID"].as_str().unwrap().to_string())
        .collect()
}

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["auditID"].as_str().unwrap().to_string())
        .collect()
}

/// Every acknowledged ID is stored, once.
fn assert_all_stored(acked: &BTreeSet<String>, stored: &[String], except: &BTreeSet<String>) {
    let unique: BTreeSet<String> = stored.iter().cloned().collect();
    assert_eq!(unique.len(), stored.len(), "an event was indexed twice");
    let missing: Vec<&String> = acked
        .difference(&unique)
        .filter(|id| !except.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events are missing, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

fn segments(wal: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    found.sort();
    found
}

fn log_bytes(wal: &Path) -> u64 {
    segments(wal)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// Flips a byte in the middle of the payload of the middle whole record of a segment (records
/// are `[length u32][crc32 u32][payload]`); returns the auditIDs that record holds.
fn flip_middle_record(segment: &Path) -> BTreeSet<String> {
    let mut bytes = std::fs::read(segment).unwrap();
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        if len == 0 || offset + 8 + len > bytes.len() {
            break;
        }
        frames.push((offset + 8, len));
        offset += 8 + len;
    }
    assert!(!frames.is_empty(), "{} holds no record", segment.display());
    let (start, len) = frames[frames.len() / 2];
    let payload = String::from_utf8_lossy(&bytes[start..start + len]).into_owned();
    let held: BTreeSet<String> = payload
        .split("\"auditID\":")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
        .map(str::to_string)
        .collect();
    assert!(!held.is_empty(), "no auditID in the record");
    bytes[start + len / 2] ^= 0x20;
    std::fs::write(segment, &bytes).unwrap();
    held
}

fn loadgen(target: &str, acked: &Path, log: &Path, extra: &[&str]) -> ManagedProcess {
    let mut args = vec![
        "loadgen".to_string(),
        format!("--target={target}/v1/webhook"),
        "--batch=400".into(),
        "--concurrency=4".into(),
        format!("--acked-ids-file={}", acked.display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    ManagedProcess::spawn(
        "loadgen",
        Path::new(env!("CARGO_BIN_EXE_clusteraudit")),
        &args,
        log,
    )
    .unwrap()
}

fn acked(file: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn wait_acked(loadgen: &mut ManagedProcess, file: &Path, count: usize) {
    let going = eventually(
        &format!("{count} acknowledged events"),
        Duration::from_secs(120),
        async || match acked(file).len() {
            n if n >= count => Ok(true),
            _ if !loadgen.is_running() => Ok(false),
            n => Err(n),
        },
    )
    .await;
    match going {
        Ok(true) => {}
        Ok(false) => panic!("the load generator exited: {}", loadgen.log_tail(20)),
        Err(timed_out) => panic!("{timed_out}: {}", loadgen.log_tail(20)),
    }
}

async fn wait_exit(process: &mut ManagedProcess) {
    let _ = eventually(
        "the load generator to finish",
        Duration::from_secs(120),
        async || {
            if process.is_running() {
                Err(())
            } else {
                Ok(())
            }
        },
    )
    .await;
    process.stop(Duration::from_secs(5));
}

/// The store cannot write the day's index (a file stands where its directory goes): the batch
/// acknowledged before stays in the log, the webhook answers 503 with Retry-After until the
/// store takes batches again, and then everything acknowledged is searchable, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_store_cannot_take_is_retried_until_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port().unwrap();
    let collector = start(&data, &dir.path().join("collector.log"), port, &[]).await;
    let topic = route(&collector).await;
    // The day's window the events go to, blocked by a file where its directory would be.
    let window = data
        .join("store/topics")
        .join(&topic)
        .join(event_day().replace('-', ""));
    std::fs::create_dir_all(window.parent().unwrap()).unwrap();
    std::fs::write(&window, "not a directory").unwrap();

    let mut acked = BTreeSet::new();
    let mut next = 0;
    let mut batch = || {
        next += 40;
        (next - 40..next)
            .map(|i| event(i, "fay", "create", 200))
            .collect::<Vec<_>>()
    };
    let first = batch();
    assert_eq!(post(&collector, &first).await.0, 200);
    acked.extend(ids(&first));
    let blocked = Instant::now();
    let refused = eventually(
        "the webhook to answer 503",
        Duration::from_secs(30),
        async || {
            let events = batch();
            match post(&collector, &events).await {
                (503, retry_after) => Ok(retry_after),
                (200, _) => {
                    acked.extend(ids(&events));
                    Err(200)
                }
                (status, _) => Err(status),
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {}", collector.process.log_tail(20)));
    let to_503 = blocked.elapsed();
    assert!(refused.is_some(), "a 503 without Retry-After");
    let text = collector.metrics().await;
    assert!(
        metric(&text, "clusteraudit_collector_index_failures_total") >= 1.0,
        "{text}"
    );
    assert!(text.contains(r#"reason="store-unavailable""#), "{text}");

    std::fs::remove_file(&window).unwrap();
    let unblocked = Instant::now();
    eventually(
        "the webhook to take batches again",
        Duration::from_secs(60),
        async || {
            let events = batch();
            match post(&collector, &events).await {
                (200, _) => {
                    acked.extend(ids(&events));
                    Ok(())
                }
                (status, _) => Err(status),
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {}", collector.process.log_tail(20)));
    let recovered = unblocked.elapsed();
    collector.wait_count(&topic, "user:fay", acked.len()).await;
    assert_all_stored(
        &acked,
        &stored_ids(&collector, &topic).await,
        &BTreeSet::new(),
    );
    println!(
        "store failure: first 503 {to_503:?} after it began; batches taken again {recovered:?} after it was fixed; {} events acknowledged, all stored",
        acked.len()
    );
}

/// kill -9 under load with segments of 1 MiB, so that several wait for the indexer; then a byte
/// is flipped in the middle of the oldest and of the current segment. After a restart, every
/// acknowledged event is searchable but those of the two damaged records (unless they were
/// indexed before), the damage is counted and the segments copied to the quarantine, and new
/// batches are stored (their log positions are not ones the store already holds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_in_an_old_and_the_current_segment_cost_only_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port().unwrap();
    let small_segments = ["--wal-segment-bytes=1048576".to_string()];
    let collector = start(
        &data,
        &dir.path().join("collector-1.log"),
        port,
        &small_segments,
    )
    .await;
    let acked_file = dir.path().join("acked-ids");
    let mut load = loadgen(
        &collector.url,
        &acked_file,
        &dir.path().join("loadgen.log"),
        &["--events=2000000", "--duration=120s", "--seed=21"],
    );
    wait_acked(&mut load, &acked_file, 20_000).await;
    let Collector { mut process, .. } = collector;
    process.kill_now();
    wait_exit(&mut load).await;
    let acked = acked(&acked_file);

    let wal = data.join("wal");
    let present = segments(&wal);
    assert!(
        present.len() >= 2,
        "only {} segment(s) wait for the indexer",
        present.len()
    );
    // The last segment may have just been started, empty.
    let current = present[1..]
        .iter()
        .rev()
        .find(|p| std::fs::metadata(p).unwrap().len() > 1024)
        .expect("a segment after the oldest with records in it");
    let mut damaged = flip_middle_record(&present[0]);
    damaged.extend(flip_middle_record(current));

    let restarted = Instant::now();
    let collector = start(
        &data,
        &dir.path().join("collector-2.log"),
        port,
        &small_segments,
    )
    .await;
    let recovery = restarted.elapsed();
    let topic = route(&collector).await;
    let stored = stored_ids(&collector, &topic).await;
    assert_all_stored(&acked, &stored, &damaged);
    let text = collector.metrics().await;
    assert_eq!(
        metric(&text, "clusteraudit_collector_wal_damaged_total"),
        2.0,
        "{text}"
    );
    let quarantined = std::fs::read_dir(data.join("quarantine")).unwrap().count();
    assert!(quarantined >= 2, "{quarantined} segment copies");
    let lost = damaged.iter().filter(|id| !stored.contains(id)).count();

    // The log goes on after the damage: new batches are stored.
    assert_eq!(
        collector
            .post_events(&[event(9_999, "after", "get", 200)])
            .await,
        200
    );
    assert_eq!(collector.wait_count(&topic, "user:after", 1).await.len(), 1);
    println!(
        "flipped bytes: {} segments, {} events acknowledged; ready {recovery:?} after the restart; {} events in the two damaged records, {lost} of them not indexed before and lost, every other acknowledged event stored",
        present.len(),
        acked.len(),
        damaged.len()
    );
}

/// A deleted topic's data does not come back when the log is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_topics_data_does_not_come_back_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port().unwrap();
    let collector = start(&data, &dir.path().join("collector-1.log"), port, &[]).await;
    let default_topic = route(&collector).await;

    // A topic routed to, written, routed away from and deleted.
    let (status, logset) = collector
        .call(
            reqwest::Method::POST,
            "/v1/logsets",
            Some(json!({"name": "doomed"})),
        )
        .await;
    assert_eq!(status, 201, "{logset}");
    let (status, topic) = collector
        .call(
            reqwest::Method::POST,
            &format!("/v1/logsets/{}/topics", logset["id"].as_str().unwrap()),
            Some(json!({"name": "doomed"})),
        )
        .await;
    assert_eq!(status, 201, "{topic}");
    let doomed = topic["id"].as_str().unwrap().to_string();
    let set_route = async |topic: &str| {
        let (status, body) = collector
            .call(
                reqwest::Method::PUT,
                "/v1/route",
                Some(json!({"topicId": topic})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    };
    set_route(&doomed).await;
    for chunk in (0..120)
        .map(|i| event(i, "doomed", "delete", 200))
        .collect::<Vec<_>>()
        .chunks(40)
    {
        assert_eq!(collector.post_events(chunk).await, 200);
    }
    assert_eq!(
        collector
            .wait_count(&doomed, "user:doomed", 120)
            .await
            .len(),
        120
    );
    set_route(&default_topic).await;
    let (status, body) = collector
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/topics/{doomed}"),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let doomed_dir = data.join("store/topics").join(&doomed);
    assert!(!doomed_dir.exists());
    // A crash: the log is replayed from what it still holds.
    let Collector { mut process, .. } = collector;
    process.kill_now();
    let collector = start(&data, &dir.path().join("collector-2.log"), port, &[]).await;
    assert!(
        !doomed_dir.exists(),
        "the deleted topic's data came back from the log"
    );
    let (status, _) = collector
        .call(reqwest::Method::GET, &format!("/v1/topics/{doomed}"), None)
        .await;
    assert_eq!(status, 404);
}

/// After a burst, the log returns to small by itself once the store has it, without more
/// traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_released_after_a_burst_without_more_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port().unwrap();
    let collector = start(&data, &dir.path().join("collector.log"), port, &[]).await;
    let default_topic = route(&collector).await;
    let wal = data.join("wal");
    let acked_file = dir.path().join("acked-ids");
    let mut load = loadgen(
        &collector.url,
        &acked_file,
        &dir.path().join("loadgen.log"),
        &["--events=60000", "--seed=31"],
    );
    let mut peak = 0;
    eventually("the burst to end", Duration::from_secs(120), async || {
        peak = peak.max(log_bytes(&wal));
        if load.is_running() { Err(()) } else { Ok(()) }
    })
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {}", load.log_tail(20)));
    let ended = Instant::now();
    let after_burst = log_bytes(&wal);
    peak = peak.max(after_burst);
    let released = eventually(
        "the log to be released",
        Duration::from_secs(60),
        async || match log_bytes(&wal) {
            n if n < 1024 * 1024 => Ok(n),
            n => Err(n),
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {}", collector.process.log_tail(20)));
    let took = ended.elapsed();
    let acked = acked(&acked_file);
    assert!(acked.len() >= 10_000, "only {} acknowledged", acked.len());
    assert_all_stored(
        &acked,
        &stored_ids(&collector, &default_topic).await,
        &BTreeSet::new(),
    );
    println!(
        "release: {} events acknowledged; log bytes at most {peak} during the burst, {after_burst} when it ended, {released} {took:?} later without traffic",
        acked.len()
    );
}

/// A tmpfs of 96 MiB as the data directory.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=96m", "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "mounting a tmpfs at {}", path.display());
        Tmpfs(path.into())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the collector may still hold files open while it is being stopped.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The data directory fills up under load: the webhook answers 503 (the log cannot grow, the
/// index cannot commit), nothing acknowledged is lost, and once space is freed batches are taken
/// again and every acknowledged event is searchable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs: scripts/test runs it"]
async fn a_full_disk_is_answered_with_503_and_nothing_acknowledged_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tmpfs = Tmpfs::mount(&data);
    let port = free_port().unwrap();
    // The reserve the store commits in, scaled down to the small disk.
    let reserve = ["--min-free-bytes=25165824".to_string()];
    let collector = start(&data, &dir.path().join("collector.log"), port, &reserve).await;
    let topic = route(&collector).await;
    let acked_file = dir.path().join("acked-ids");
    // Bounded, so that the index of everything fits the disk once space is freed.
    let mut load = loadgen(
        &collector.url,
        &acked_file,
        &dir.path().join("loadgen.log"),
        &["--events=200000", "--duration=90s", "--seed=41"],
    );
    wait_acked(&mut load, &acked_file, 10_000).await;

    // Fill what is left.
    let filler_path = data.join("filler");
    let mut filler = std::fs::File::create(&filler_path).unwrap();
    let chunk = vec![0u8; 1024 * 1024];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    let _ = filler.sync_all();
    let full = Instant::now();
    let refused = |text: &str| {
        metric(
            text,
            r#"clusteraudit_collector_batches_rejected_total{reason="log-write"}"#,
        ) + metric(
            text,
            r#"clusteraudit_collector_batches_rejected_total{reason="store-unavailable"}"#,
        )
    };
    eventually("503s", Duration::from_secs(60), async || {
        let text = collector.metrics().await;
        if refused(&text) > 0.0 {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {}", collector.process.log_tail(20)));
    let to_503 = full.elapsed();
    // Full for a while, then space again.
    let during = eventually("more 503s", Duration::from_secs(30), async || {
        let text = collector.metrics().await;
        if refused(&text) >= 200.0 {
            Ok(refused(&text))
        } else {
            Err(text)
        }
    })
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {}", collector.process.log_tail(20)));
    drop(filler);
    std::fs::remove_file(&filler_path).unwrap();
    let freed = Instant::now();
    let held_back = freed - full;
    // The test's own batches, besides the load generator's (which drops what is refused).
    let mut probes = BTreeSet::new();
    let mut next = 0;
    eventually(
        "batches to be taken again",
        Duration::from_secs(60),
        async || {
            next += 1;
            let events = [event(next, "probe", "get", 200)];
            match post(&collector, &events).await {
                (200, _) => {
                    probes.extend(ids(&events));
                    Ok(())
                }
                (status, _) => Err(status),
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}: {}", collector.process.log_tail(20)));
    let resumed = freed.elapsed();
    wait_exit(&mut load).await;
    let mut acked = acked(&acked_file);
    acked.extend(probes);
    let stored = eventually(
        "every acknowledged event",
        Duration::from_secs(60),
        async || {
            let stored = stored_ids(&collector, &topic).await;
            if stored.len() >= acked.len() {
                Ok(stored)
            } else {
                Err(stored)
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| {
        eprintln!("{}", collector.process.log_tail(40));
        timed_out.last
    });
    assert_all_stored(&acked, &stored, &BTreeSet::new());
    println!(
        "disk full: first 503 {to_503:?} after the disk filled; full for {held_back:?} ({during} batches refused); acknowledgements resumed {resumed:?} after space was freed; {} events acknowledged, all stored",
        acked.len()
    );
    drop(collector);
    drop(tmpfs);
}
