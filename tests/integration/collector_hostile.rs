//! Hostile clients against the real collector binary over TLS (issue 12): nobody unauthenticated
//! costs it anything, slow connections are cut after the timeouts, and the kube-apiserver's
//! batches (loadgen with the real token) are acknowledged as fast as without them.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clusteraudit_testkit::{
    eventually, free_port, pki::CertificateAuthority, process::ManagedProcess,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::write;

const TOKEN: &str = "the-kube-apiservers-webhook-token";
/// Longer than a loadgen run: the thousand slow connections stay open all through it, and are
/// closed after.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(15);
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(4);
const SIXTEEN_MIB: u64 = 16 * 1024 * 1024;
/// The ack p99 without hostile clients under which the machine counts as quiet enough to check
/// the bound with them.
const QUIET_P99_MS: f64 = 50.0;

struct Collector {
    process: ManagedProcess,
    addr: SocketAddr,
    ca_path: std::path::PathBuf,
    tls: tokio_rustls::TlsConnector,
    http: reqwest::Client,
}

/// The collector as the chart runs it (TLS, the webhook behind a token, the API behind
/// TokenReview), with short timeouts; its Kubernetes API is unreachable, which only calls with a
/// bearer token to the read and admin API would notice.
async fn start_collector(dir: &Path) -> Collector {
    start_collector_with(dir, None).await
}

/// [`start_collector`], with at most `max_files` file descriptors if given.
async fn start_collector_with(dir: &Path, max_files: Option<u32>) -> Collector {
    clusteraudit_io::tls::install_crypto_provider();
    let ca = CertificateAuthority::generate("collector-ca").unwrap();
    let serving = ca
        .issue_server("collector", &["localhost"], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let ca_path = dir.join("collector-ca.crt");
    write(&ca_path, ca.cert_pem());
    write(&dir.join("collector.crt"), &serving.cert_pem);
    write(&dir.join("collector.key"), &serving.key_pem);
    write(&dir.join("webhook-token"), TOKEN);
    write(
        &dir.join("kubeconfig"),
        r#"{"apiVersion":"v1","kind":"Config",
            "clusters":[{"name":"c","cluster":{"server":"https://127.0.0.1:9"}}],
            "users":[{"name":"u","user":{"token":"t"}}],
            "contexts":[{"name":"c","context":{"cluster":"c","user":"u"}}],
            "current-context":"c"}"#,
    );
    let port = free_port().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut args: Vec<String> = vec![
        "collector".into(),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--listen={addr}"),
        format!("--tls-cert={}", dir.join("collector.crt").display()),
        format!("--tls-key={}", dir.join("collector.key").display()),
        format!(
            "--webhook-token-file={}",
            dir.join("webhook-token").display()
        ),
        format!("--kubeconfig={}", dir.join("kubeconfig").display()),
        format!("--header-read-timeout={}s", HEADER_READ_TIMEOUT.as_secs()),
        format!("--body-read-timeout={}s", BODY_READ_TIMEOUT.as_secs()),
        "--idle-timeout=30s".into(),
    ];
    args.insert(0, env!("CARGO_BIN_EXE_clusteraudit").into());
    if let Some(max_files) = max_files {
        args.splice(
            0..0,
            [
                "/usr/bin/prlimit".into(),
                format!("--nofile={max_files}:{max_files}"),
            ],
        );
    }
    args.splice(0..0, prioritized());
    let process = ManagedProcess::spawn(
        "collector",
        Path::new(&args[0]),
        &args[1..],
        &dir.join("collector.log"),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    if let Err(timed_out) = clusteraudit_testkit::readyz(&http, &format!("https://{addr}")).await {
        panic!("{timed_out}: {}", process.log_tail(30));
    }
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Collector {
        process,
        addr,
        ca_path,
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        http,
    }
}

/// The collector and loadgen stand for machines of their own: they run at a higher CPU priority
/// than the hostile clients of this process (and whatever else this machine runs), which in a
/// cluster would not share their CPU. Without root, nice says so and runs them as they are.
fn prioritized() -> [String; 3] {
    ["/usr/bin/nice".into(), "-n".into(), "-10".into()]
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl Collector {
    async fn connect(&self) -> std::io::Result<Tls> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        self.tls.connect(name, tcp).await
    }

    fn rss(&self) -> Rss {
        Rss::of(self.process.pid())
    }
}

/// The collector's memory from /proc/<pid>/status, in KiB: now and the peak.
#[derive(Clone, Copy, Debug, Default)]
struct Rss {
    now_kib: u64,
    peak_kib: u64,
}

impl Rss {
    fn of(pid: u32) -> Rss {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Rss {
            now_kib: field("VmRSS:"),
            peak_kib: field("VmHWM:"),
        }
    }
}

/// CPU seconds a process has used (user and system), from /proc/<pid>/stat.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, the 12th and 13th after the name; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

/// What a raw request got: the status line's code (none: the connection closed without an
/// answer), how long after the headers were sent the answer came, and whether the connection was
/// closed after it.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    after: Duration,
}

fn status_of(response: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(response).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends `head` (request line and headers, with the blank line) and then `chunk` every `every`
/// until the server answers and closes, or `give_up` passes.
async fn trickle_body(
    stream: Tls,
    head: String,
    chunk: usize,
    every: Duration,
    give_up: Duration,
) -> Answer {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let sent = Instant::now();
    let mut response = Vec::new();
    let mut answered = None;
    if writer.write_all(head.as_bytes()).await.is_err() {
        return Answer {
            status: None,
            after: sent.elapsed(),
        };
    }
    let filler = vec![b' '; chunk];
    let mut buf = vec![0u8; 4096];
    let mut writing = true;
    while sent.elapsed() < give_up {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answered.get_or_insert(sent.elapsed());
                    response.extend_from_slice(&buf[..n]);
                }
            },
            _ = tokio::time::sleep(every), if writing => {
                writing = writer.write_all(&filler).await.is_ok();
            }
        }
    }
    Answer {
        status: status_of(&response),
        after: answered.unwrap_or(sent.elapsed()),
    }
}

/// A connection that sends a request line and then one header a second, never finishing: how
/// long until the collector closes it (none: it did not within two minutes).
async fn trickle_headers(stream: Tls) -> Option<Duration> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let started = Instant::now();
    writer
        .write_all(b"POST /v1/webhook HTTP/1.1\r\nhost: collector\r\n")
        .await
        .ok()?;
    let mut buf = [0u8; 1024];
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(120) {
        tokio::select! {
            read = reader.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                n += 1;
                if writer.write_all(format!("x-slow-{n}: a\r\n").as_bytes()).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
    None
}

fn unauthenticated_upload_head(path: &str, authorization: Option<&str>) -> String {
    let authorization = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST {path} HTTP/1.1\r\nhost: collector\r\ncontent-type: application/json\r\n{authorization}content-length: {SIXTEEN_MIB}\r\n\r\n"
    )
}

#[derive(Debug, serde::Deserialize)]
struct LoadgenReport {
    events_sent: u64,
    events_acked: u64,
    batches_rejected: std::collections::BTreeMap<String, u64>,
    transport_errors: u64,
    ack_latency_ms: Latency,
}

#[derive(Debug, serde::Deserialize)]
struct Latency {
    p50: f64,
    p99: f64,
    max: f64,
}

/// loadgen with the real token, paced like a busy kube-apiserver: 4,000 events a second in
/// batches of 100.
async fn loadgen(collector: &Collector, events: u64, seed: u64) -> LoadgenReport {
    let [nice, nice_args @ ..] = prioritized();
    let output = tokio::process::Command::new(nice)
        .args(nice_args)
        .arg(env!("CARGO_BIN_EXE_clusteraudit"))
        .args([
            "loadgen".to_string(),
            format!("--target=https://{}/v1/webhook", collector.addr),
            format!("--ca-file={}", collector.ca_path.display()),
            format!("--token={TOKEN}"),
            format!("--events={events}"),
            "--batch=100".into(),
            "--concurrency=4".into(),
            "--rate=4000".into(),
            format!("--seed={seed}"),
            "--duration=60s".into(),
            "--json".into(),
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "loadgen printed no report: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    serde_json::from_str(json).unwrap()
}

/// Headers declaring a 16 MiB body and then nothing: answered 401 at once, so the body was never
/// waited for (a collector reading it first would wait --body-read-timeout and answer 408).
async fn assert_refused_unread(collector: &Collector, path: &str, authorization: Option<&str>) {
    let mut stream = collector.connect().await.unwrap();
    stream
        .write_all(unauthenticated_upload_head(path, authorization).as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    let read = tokio::time::timeout(BODY_READ_TIMEOUT * 3, stream.read_to_end(&mut response)).await;
    let status = status_of(&response);
    assert_eq!(
        status,
        Some(401),
        "{path} with {authorization:?}: {:?} {read:?}",
        String::from_utf8_lossy(&response)
    );
    assert!(
        read.is_ok(),
        "{path}: the connection stays open after the 401, waiting for a body nobody will read"
    );
    let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(text.contains("connection: close"), "{text}");
}

fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    samples.sort();
    let rank = (p * samples.len()).div_ceil(100).clamp(1, samples.len());
    samples[rank - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_cost_the_collector_nothing_while_the_kube_apiserver_sends() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Arc::new(start_collector(dir.path()).await);

    // Unauthenticated requests are answered from their headers, before any body is read.
    assert_refused_unread(&collector, "/v1/webhook", None).await;
    assert_refused_unread(&collector, "/v1/webhook", Some("Bearer not-the-token")).await;
    assert_refused_unread(&collector, "/v1/logsets", None).await;

    let pid = collector.process.pid().to_string();
    let cpu_before = cpu_seconds(&pid);
    // The first batches create the log's segment and the day's window: not what is measured.
    loadgen(&collector, 8_000, 1).await;
    let calm = loadgen(&collector, 40_000, 2).await;
    let calm_cpu = cpu_seconds(&pid) - cpu_before;
    let calm_rss = collector.rss();
    println!(
        "without hostile clients: acked {} of {} events, ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; collector RSS {} KiB (peak {} KiB)",
        calm.events_acked,
        calm.events_sent,
        calm.ack_latency_ms.p50,
        calm.ack_latency_ms.p99,
        calm.ack_latency_ms.max,
        calm_rss.now_kib,
        calm_rss.peak_kib
    );

    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (collector, stop, peak_rss) = (collector.clone(), stop.clone(), peak_rss.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                peak_rss.fetch_max(collector.rss().now_kib, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // 1,000 connections trickling headers, each reconnecting once the collector closes it: the
    // first close of each is what the timeout did. They come and go spread over a couple of
    // seconds, as slow clients do: a thousand TLS handshakes at the same instant are a flood of
    // another kind, which costs any TLS server its CPU for a moment.
    let connected = Arc::new(AtomicU64::new(0));
    let tricklers: Vec<_> = (0..1000u64)
        .map(|i| {
            let (collector, stop, connected) = (collector.clone(), stop.clone(), connected.clone());
            tokio::spawn(async move {
                let mut first_close = None;
                let mut rounds = 0u64;
                tokio::time::sleep(Duration::from_millis(i * 2)).await;
                while !stop.load(Ordering::SeqCst) {
                    if rounds > 0 {
                        let jitter = (i * 7919 + rounds * 104_729) % 2000;
                        tokio::time::sleep(Duration::from_millis(jitter)).await;
                    }
                    let Ok(stream) = collector.connect().await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    if rounds == 0 {
                        connected.fetch_add(1, Ordering::SeqCst);
                    }
                    rounds += 1;
                    let closed = trickle_headers(stream).await;
                    first_close.get_or_insert(closed);
                }
                first_close.flatten()
            })
        })
        .collect();
    // 64 unauthenticated uploads of 16 MiB, trickled 4 KiB every 100 ms, each tried again two
    // seconds after it is refused.
    let uploaders: Vec<_> = (0..64)
        .map(|i| {
            let (collector, stop) = (collector.clone(), stop.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let Ok(stream) = collector.connect().await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let authorization = (i % 2 == 0).then_some("Bearer guessed");
                    let head = unauthenticated_upload_head("/v1/webhook", authorization);
                    answers.push(
                        trickle_body(
                            stream,
                            head,
                            4096,
                            Duration::from_millis(100),
                            Duration::from_secs(60),
                        )
                        .await,
                    );
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
                answers
            })
        })
        .collect();
    eventually(
        "1,000 trickling connections open",
        Duration::from_secs(60),
        async || match connected.load(Ordering::SeqCst) {
            1000.. => Ok(()),
            n => Err(n),
        },
    )
    .await
    .unwrap();
    // Authenticated, but with a body that trickles: cut after the body-read timeout.
    let slow_bodies: Vec<_> = (0..4)
        .map(|_| {
            let collector = collector.clone();
            tokio::spawn(async move {
                let stream = collector.connect().await.unwrap();
                let head = format!(
                    "POST /v1/webhook HTTP/1.1\r\nhost: collector\r\ncontent-type: application/json\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 1048576\r\n\r\n"
                );
                trickle_body(
                    stream,
                    head,
                    1024,
                    Duration::from_millis(200),
                    Duration::from_secs(60),
                )
                .await
            })
        })
        .collect();
    // A keep-alive connection left idle after its request.
    let idle = {
        let collector = collector.clone();
        tokio::spawn(async move {
            let mut stream = collector.connect().await.unwrap();
            stream
                .write_all(b"GET /livez HTTP/1.1\r\nhost: collector\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert_eq!(status_of(&buf[..n]), Some(200));
            let answered = Instant::now();
            let closed = tokio::time::timeout(Duration::from_secs(120), async {
                while let Ok(n) = stream.read(&mut buf).await
                    && n > 0
                {}
            })
            .await;
            closed.ok().map(|_| answered.elapsed())
        })
    };

    let (cpu_before, own_before) = (cpu_seconds(&pid), cpu_seconds("self"));
    let hostile = loadgen(&collector, 40_000, 3).await;
    let hostile_cpu = cpu_seconds(&pid) - cpu_before;
    let own_cpu = cpu_seconds("self") - own_before;
    let hostile_rss = collector.rss();
    stop.store(true, Ordering::SeqCst);

    let mut first_closes = Vec::new();
    for trickler in tricklers {
        first_closes.push(
            trickler
                .await
                .unwrap()
                .expect("the collector closes a connection trickling headers"),
        );
    }
    let mut answers = Vec::new();
    for uploader in uploaders {
        answers.extend(uploader.await.unwrap());
    }
    let slow_bodies: Vec<Answer> = futures::future::join_all(slow_bodies)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let idle_closed = idle
        .await
        .unwrap()
        .expect("an idle keep-alive connection is closed");
    sampler.await.unwrap();
    let peak_sampled = peak_rss.load(Ordering::SeqCst);

    let mut upload_answers: Vec<Duration> = answers.iter().map(|a| a.after).collect();
    println!(
        "with 1,000 connections trickling headers and 64 unauthenticated 16 MiB uploads: acked {} of {} events, ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; rejected {:?}, transport errors {}",
        hostile.events_acked,
        hostile.events_sent,
        hostile.ack_latency_ms.p50,
        hostile.ack_latency_ms.p99,
        hostile.ack_latency_ms.max,
        hostile.batches_rejected,
        hostile.transport_errors
    );
    println!(
        "collector CPU during loadgen: {calm_cpu:.1} s without hostile clients, {hostile_cpu:.1} s with them; the hostile clients' own: {own_cpu:.1} s"
    );
    println!(
        "collector RSS: {} KiB at the end of the hostile run, {} KiB sampled peak, {} KiB peak of the process (VmHWM); {} KiB before",
        hostile_rss.now_kib, peak_sampled, hostile_rss.peak_kib, calm_rss.now_kib
    );
    println!(
        "headers trickled: closed after {:?} (min), {:?} (p50), {:?} (max), header-read timeout {HEADER_READ_TIMEOUT:?}",
        percentile(&mut first_closes, 0),
        percentile(&mut first_closes, 50),
        percentile(&mut first_closes, 100)
    );
    println!(
        "unauthenticated uploads: {} tries, answered after {:?} (p50), {:?} (max); statuses {:?}",
        answers.len(),
        percentile(&mut upload_answers, 50),
        percentile(&mut upload_answers, 100),
        answers
            .iter()
            .fold(std::collections::BTreeMap::new(), |mut m, a| {
                *m.entry(a.status).or_insert(0) += 1;
                m
            })
    );
    println!(
        "authenticated bodies trickled: {:?}; idle keep-alive closed after {idle_closed:?}",
        slow_bodies
            .iter()
            .map(|a| (a.status, a.after))
            .collect::<Vec<_>>()
    );

    assert_eq!(
        (hostile.events_acked, hostile.transport_errors),
        (hostile.events_sent, 0),
        "every batch of the real sender is taken: {hostile:?}"
    );
    assert!(
        hostile.batches_rejected.is_empty(),
        "the real sender is never refused: {hostile:?}"
    );
    // The bound the issue names, where this machine can show it: when other work on it already
    // takes the run without hostile clients past half the bound, the figure measures the machine.
    if calm.ack_latency_ms.p99 < QUIET_P99_MS {
        assert!(
            hostile.ack_latency_ms.p99 < 100.0,
            "ack p99 {:.1} ms with hostile clients (without: {:.1} ms)",
            hostile.ack_latency_ms.p99,
            calm.ack_latency_ms.p99
        );
    } else {
        println!(
            "the ack p99 bound is not checked: without hostile clients it is already {:.1} ms, this machine is busy",
            calm.ack_latency_ms.p99
        );
    }
    assert!(
        answers.len() >= 64 && answers.iter().all(|a| a.status == Some(401)),
        "every unauthenticated upload is refused with 401: {answers:?}"
    );
    assert!(
        slow_bodies.iter().all(|a| a.status == Some(408)),
        "{slow_bodies:?}"
    );
    assert!(
        peak_sampled.max(hostile_rss.peak_kib) < 512 * 1024,
        "the collector's memory stays bounded: {peak_sampled} KiB"
    );
    // And it still serves.
    let response = collector
        .http
        .get(format!("https://{}/metrics", collector.addr))
        .send()
        .await
        .unwrap();
    let metrics = response.text().await.unwrap();
    let unauthenticated = metrics
        .lines()
        .find(|l| l.contains(r#"batches_rejected_total{reason="unauthenticated"}"#))
        .unwrap_or_default()
        .to_string();
    println!("{unauthenticated}");
    assert!(!unauthenticated.is_empty(), "{metrics}");
}

/// A batch with an event from two hours ahead and one from 1999: those two are left out and
/// counted by reason, the rest of the batch is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_the_future_or_past_retention_are_left_out_and_the_rest_stored() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let collector = crate::support::start_dev_collector(
        &dir.path().join("data"),
        &dir.path().join("collector.log"),
        port,
    )
    .await;
    let now = jiff::Timestamp::now();
    let at = |i: usize, time: jiff::Timestamp| {
        let mut event = crate::collector_api::event(i, &format!("user-{i}"), "get", 200);
        event["requestReceivedTimestamp"] = time.to_string().into();
        event["stageTimestamp"] = time.to_string().into();
        event
    };
    let batch = [
        at(1, now),
        at(2, now + jiff::SignedDuration::from_hours(2)),
        at(3, "1999-01-01T00:00:00Z".parse().unwrap()),
        at(4, now - jiff::SignedDuration::from_hours(1)),
    ];
    let body =
        serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": batch});
    let (status, answer) = collector
        .post_raw(serde_json::to_vec(&body).unwrap(), "application/json")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["refused"],
        serde_json::json!([{"index": 1, "reason": "future"}, {"index": 2, "reason": "past-retention"}])
    );
    let (_, route) = collector
        .call(reqwest::Method::GET, "/v1/route", None)
        .await;
    let topic = route["topicId"].as_str().unwrap().to_string();
    let users = |events: &[serde_json::Value]| {
        let mut users: Vec<String> = events
            .iter()
            .map(|e| e["user"]["username"].as_str().unwrap().to_string())
            .collect();
        users.sort();
        users
    };
    // The events of a batch are committed together: what is found once two are is all there is.
    let stored = collector.wait_count(&topic, "", 2).await;
    assert_eq!(users(&stored), ["user-1", "user-4"]);
    let metrics = collector.metrics().await;
    for (reason, count) in [("future", 1), ("past-retention", 1)] {
        let line =
            format!(r#"clusteraudit_collector_events_refused_total{{reason="{reason}"}} {count}"#);
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    let received = metrics
        .lines()
        .find(|l| l.starts_with("clusteraudit_collector_events_received_total "))
        .unwrap_or_default();
    assert_eq!(received, "clusteraudit_collector_events_received_total 2");
}

/// Readers cannot take the machine from the webhook: past eight searches at once, the next is
/// refused with 429 rather than queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_eight_searches_at_once_are_refused_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let collector = crate::support::start_dev_collector(
        &dir.path().join("data"),
        &dir.path().join("collector.log"),
        port,
    )
    .await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_clusteraudit"))
        .args([
            "loadgen".to_string(),
            format!("--target={}/v1/webhook", collector.url),
            "--events=20000".into(),
            "--json".into(),
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let (_, route) = collector
        .call(reqwest::Method::GET, "/v1/route", None)
        .await;
    let topic = route["topicId"].as_str().unwrap().to_string();
    collector.wait_count(&topic, "verb:get", 1).await;
    let search = format!(
        "{}/v1/topics/{topic}/events?limit=1000&q=verb%3Aget",
        collector.url
    );
    let busy = eventually(
        "a search refused while eight run",
        Duration::from_secs(60),
        async || {
            let answers = futures::future::join_all((0..64).map(|_| async {
                let response = collector.http.get(&search).send().await.unwrap();
                (response.status().as_u16(), response.text().await.unwrap())
            }))
            .await;
            let ok = answers.iter().filter(|(status, _)| *status == 200).count();
            match answers.into_iter().find(|(status, _)| *status == 429) {
                Some(refused) if ok >= 8 => Ok(refused),
                _ => Err(ok),
            }
        },
    )
    .await
    .unwrap();
    assert!(busy.1.contains("searches are running"), "{busy:?}");
    let metrics = collector.metrics().await;
    assert!(
        metrics.lines().any(|l| l.starts_with(
            r#"clusteraudit_collector_batches_rejected_total{reason="queries-busy"}"#
        )),
        "{metrics}"
    );
}

/// Out of file descriptors, a failing accept() is tried again after a pause that grows, not in a
/// loop that takes a core and floods the log; once descriptors are free, it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_accept_is_retried_after_a_growing_pause() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start_collector_with(dir.path(), Some(128)).await;
    let log = dir.path().join("collector.log");
    let (port, process) = (collector.addr.port(), &collector.process);
    let failures = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("accepting a connection failed"))
            .count()
    };
    // More connections than descriptors: the kernel completes them, the collector cannot take
    // them all.
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        );
    }
    eventually(
        "five failed accepts logged",
        Duration::from_secs(30),
        async || match failures() {
            5.. => Ok(()),
            n => Err(n),
        },
    )
    .await
    .unwrap();
    let logged = failures();
    println!("{logged} failed accepts logged when five were first seen");
    assert!(
        logged < 50,
        "accept() failures are retried in a tight loop: {}",
        process.log_tail(5)
    );
    drop(held);
    eventually(
        "serving again",
        Duration::from_secs(30),
        async || match collector
            .http
            .get(format!("https://{}/livez", collector.addr))
            .send()
            .await
        {
            Ok(response) if response.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await
    .unwrap();
}

/// Guessing tokens against the read API costs the kube-apiserver ten TokenReviews per address,
/// then one every five seconds: past that, 429 without a review. A reader's decision, and a
/// guess already refused, come from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn failed_token_reviews_are_limited_per_client() {
    let control_plane = clusteraudit_testkit::ControlPlane::start()
        .await
        .expect("the control plane starts");
    let dir = control_plane.dir().join("collector");
    std::fs::create_dir_all(&dir).unwrap();
    let (collector, _) =
        crate::support::start_tls_collector(control_plane.kubeconfig_path(), &dir, "webhook-token")
            .await;
    let alice = control_plane.user("alice").unwrap().token.clone();
    // A real token, reviewed: alice has no grant to read audit events here.
    assert_eq!(collector.get("/v1/route", Some(&alice)).await.0, 403);
    for i in 0..10 {
        let (status, body) = collector
            .get("/v1/route", Some(&format!("guess-{i}")))
            .await;
        assert_eq!(status, 401, "guess {i}: {body}");
    }
    let (status, body) = collector.get("/v1/route", Some("guess-10")).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("too many refused tokens")),
        "{body}"
    );
    assert_eq!(collector.get("/v1/route", Some("guess-3")).await.0, 401);
    assert_eq!(collector.get("/v1/route", Some(&alice)).await.0, 403);
}
