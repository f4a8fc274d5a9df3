//! The notifier against a real Alertmanager (built by scripts/alerting.sh): a fired alert is read
//! back from Alertmanager's API with its labels, annotations and generatorURL, and its `endsAt`
//! moves ahead as it is re-sent; a resolved one is gone. Failing receivers (a closed port, a server
//! answering 500) are retried with back-off and counted in the collector's metrics, and neither
//! holds up the caller nor the other receivers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use clusteraudit_collector::{
    metrics::Metrics,
    notify::{Notifier, NotifierOptions, ReceiverConfig},
};
use clusteraudit_core::alert::{
    GroupAlert, GroupField, Notification, Presentation, Rule, notification,
};
use clusteraudit_testkit::{
    Alertmanager, Prometheus, Promtool, eventually, free_port, pki::CertificateAuthority,
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Mutex,
};

const SEARCH_URL: &str = "https://audit.example/ui/search";

fn forbidden_rule() -> Rule {
    Rule::new(
        "ManyForbidden",
        "code:403",
        Duration::from_secs(300),
        20,
        &[GroupField::User],
    )
    .unwrap()
}

fn alert_for(user: &str, count: u64, since: SystemTime) -> Notification {
    let presentation = Presentation {
        severity: "warning".into(),
        summary: Some("{{user}} was refused {{count}} times within {{window}}".into()),
        description: Some("Threshold {{threshold}}".into()),
        labels: [("team".to_string(), "platform".to_string())].into(),
    };
    let group = vec![user.to_string()];
    notification(
        &forbidden_rule(),
        &presentation,
        "default",
        &GroupAlert {
            group: &group,
            count,
            since,
            resolved_at: None,
        },
        SEARCH_URL,
    )
}

/// A sample of the collector's metrics text for one receiver, 0 when absent.
fn sample(metrics: &Metrics, name: &str, receiver: &str) -> f64 {
    let prefix = format!("clusteraudit_collector_{name}{{receiver=\"{receiver}\"}} ");
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

fn parse_time(text: &Value) -> jiff::Timestamp {
    text.as_str()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|err| panic!("{text} is not a timestamp: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Alertmanager: scripts/test runs it"]
async fn a_fired_alert_reaches_alertmanager_is_resent_while_firing_and_is_gone_once_resolved() {
    let alertmanager = Alertmanager::start().await.expect("Alertmanager starts");
    let metrics = Metrics::new();
    let receiver = ReceiverConfig::alertmanager(&alertmanager.url);
    let name = receiver.name.clone();
    let notifier = Notifier::start(
        NotifierOptions {
            receivers: vec![receiver],
            resend_interval: Duration::from_secs(1),
            ..NotifierOptions::default()
        },
        &metrics,
    )
    .unwrap();

    let since = SystemTime::now() - Duration::from_secs(5);
    let fired = alert_for("mallory", 21, since);
    let expected_url = fired.generator_url.clone();
    assert!(expected_url.starts_with(SEARCH_URL), "{expected_url}");
    notifier.fire(fired.clone());
    assert_eq!(notifier.firing(), 1);

    let held = eventually(
        "Alertmanager to hold the fired alert",
        Duration::from_secs(30),
        async || match alertmanager
            .alert("ManyForbidden", &[("user", "mallory")])
            .await
        {
            Ok(Some(alert)) => Ok(alert),
            Ok(None) => Err("not there yet".to_string()),
            Err(err) => Err(err),
        },
    )
    .await
    .unwrap();
    eprintln!("Alertmanager holds: {held:#}");
    for (key, value) in &fired.labels {
        assert_eq!(held["labels"][key], value.as_str(), "label {key}: {held:#}");
    }
    assert_eq!(held["labels"]["team"], "platform");
    assert_eq!(held["labels"]["severity"], "warning");
    assert_eq!(
        held["annotations"]["summary"],
        "mallory was refused 21 times within 5m"
    );
    assert_eq!(held["annotations"]["description"], "Threshold 20");
    assert_eq!(held["annotations"]["query"], fired.annotations["query"]);
    assert_eq!(held["generatorURL"], expected_url.as_str());
    assert_eq!(held["status"]["state"], "active", "{held:#}");
    // Alertmanager answers with milliseconds.
    let since_ms = jiff::Timestamp::try_from(since).unwrap().as_millisecond();
    let starts_ms = parse_time(&held["startsAt"]).as_millisecond();
    assert!((starts_ms - since_ms).abs() <= 1, "{held:#}");
    let first_end = parse_time(&held["endsAt"]);
    assert!(
        first_end > jiff::Timestamp::now(),
        "a firing alert ends in the future: {held:#}"
    );

    // Re-sent while firing: Alertmanager sees its end move ahead, and its start stay.
    eventually(
        "the re-sent alert's endsAt to move ahead",
        Duration::from_secs(30),
        async || {
            let alert = alertmanager
                .alert("ManyForbidden", &[("user", "mallory")])
                .await?
                .ok_or("gone")?;
            let end = parse_time(&alert["endsAt"]);
            if end > first_end && parse_time(&alert["startsAt"]) == parse_time(&held["startsAt"]) {
                Ok(())
            } else {
                Err(format!("{alert:#}"))
            }
        },
    )
    .await
    .unwrap();
    assert!(sample(&metrics, "notifications_sent_total", &name) >= 2.0);

    notifier.resolve(fired);
    assert_eq!(notifier.firing(), 0);
    eventually(
        "the resolved alert to be gone from Alertmanager's active alerts",
        Duration::from_secs(30),
        async || match alertmanager
            .alert("ManyForbidden", &[("user", "mallory")])
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(alert)) => Err(format!("{alert:#}")),
            Err(err) => Err(err),
        },
    )
    .await
    .unwrap();
    let text = metrics.encode();
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("notif"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        sample(&metrics, "notifications_failed_total", &name),
        0.0,
        "{}",
        alertmanager.log_tail(20)
    );
    assert_eq!(sample(&metrics, "notifications_dropped_total", &name), 0.0);
}

/// A webhook that answers 500 to its first `failures` requests, then 200, keeping every body and
/// the `authorization` header it came with.
struct FlakyWebhook {
    url: String,
    requests: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
    authorizations: Arc<Mutex<Vec<String>>>,
}

async fn flaky_webhook(failures: usize) -> FlakyWebhook {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/audit", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let authorizations = Arc::new(Mutex::new(Vec::new()));
    let (count, kept, auth) = (requests.clone(), bodies.clone(), authorizations.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (count, kept, auth) = (count.clone(), kept.clone(), auth.clone());
            tokio::spawn(async move {
                loop {
                    let Some((head, body)) = read_request(&mut stream).await else {
                        return;
                    };
                    let authorization = head
                        .lines()
                        .find_map(|line| line.strip_prefix("authorization:"))
                        .map(|value| value.trim().to_string())
                        .unwrap_or_default();
                    auth.lock().await.push(authorization);
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    let status = if n < failures {
                        "500 Internal Server Error"
                    } else {
                        kept.lock()
                            .await
                            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                        "200 OK"
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nno"
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    FlakyWebhook {
        url,
        requests,
        bodies,
        authorizations,
    }
}

/// One HTTP/1.1 request's head (lowercased) and body (by its content-length), None once the
/// connection ends.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    Some((head, buffer[head_end..head_end + length].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Alertmanager: scripts/test runs it"]
async fn failing_receivers_are_retried_counted_and_hold_up_neither_the_caller_nor_the_others() {
    let alertmanager = Alertmanager::start().await.expect("Alertmanager starts");
    let webhook = flaky_webhook(3).await;
    // Nobody listens there: every attempt fails to connect.
    let closed =
        ReceiverConfig::alertmanager(&format!("http://127.0.0.1:{}", free_port().unwrap()));
    let flaky = ReceiverConfig::webhook(&webhook.url);
    let working = ReceiverConfig::alertmanager(&alertmanager.url);
    let (closed_name, flaky_name, working_name) = (
        closed.name.clone(),
        flaky.name.clone(),
        working.name.clone(),
    );
    let metrics = Metrics::new();
    let capacity = 8;
    let notifier = Notifier::start(
        NotifierOptions {
            receivers: vec![closed, flaky, working],
            // No re-send within the test: each alert is queued once per receiver.
            resend_interval: Duration::from_secs(3600),
            queue_capacity: capacity,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..NotifierOptions::default()
        },
        &metrics,
    )
    .unwrap();

    // Far more distinct alerts than a queue holds, fired at once: the calls only queue.
    let alerts = 200;
    let since = SystemTime::now();
    let started = Instant::now();
    for i in 0..alerts {
        notifier.fire(alert_for(&format!("user-{i}"), 20, since));
    }
    eprintln!(
        "{alerts} fire() calls with a closed port and a failing webhook among the receivers: {:?}",
        started.elapsed()
    );
    assert_eq!(notifier.firing(), alerts);

    // The closed port: attempts fail again and again (backing off), the queue stays within its
    // bound and what did not fit is counted as dropped.
    eventually(
        "several failed attempts at the closed port",
        Duration::from_secs(30),
        async || {
            let failed = sample(&metrics, "notifications_failed_total", &closed_name);
            if failed >= 3.0 { Ok(()) } else { Err(failed) }
        },
    )
    .await
    .unwrap();
    let depth = sample(&metrics, "notification_queue_depth", &closed_name);
    assert!(depth <= capacity as f64, "queue depth {depth}");
    let dropped = sample(&metrics, "notifications_dropped_total", &closed_name);
    // What the queue and the batch in flight could hold at most; the rest is dropped.
    assert!(
        dropped >= (alerts - 2 * capacity) as f64,
        "dropped {dropped} of {alerts}"
    );
    assert_eq!(
        sample(&metrics, "notifications_sent_total", &closed_name),
        0.0
    );

    // The webhook: three 500s, then it takes the alerts, as {"alerts": [...]}.
    eventually(
        "the flaky webhook to take alerts after its failures",
        Duration::from_secs(30),
        async || {
            let sent = sample(&metrics, "notifications_sent_total", &flaky_name);
            if sent > 0.0 { Ok(()) } else { Err(sent) }
        },
    )
    .await
    .unwrap();
    assert!(webhook.requests.load(Ordering::SeqCst) >= 4);
    assert_eq!(
        sample(&metrics, "notifications_failed_total", &flaky_name),
        3.0
    );
    let bodies = webhook.bodies.lock().await.clone();
    let delivered: Vec<&Value> = bodies
        .iter()
        .flat_map(|body| body["alerts"].as_array().into_iter().flatten())
        .collect();
    assert!(!delivered.is_empty(), "{bodies:#?}");
    for alert in &delivered {
        assert_eq!(alert["labels"]["alertname"], "ManyForbidden", "{alert:#}");
        assert!(
            alert["generatorURL"]
                .as_str()
                .unwrap()
                .starts_with(SEARCH_URL)
        );
        assert!(alert["endsAt"].is_string(), "{alert:#}");
    }

    // The working Alertmanager, beside the failing receivers: every alert is either delivered or
    // was dropped from its own small queue during the burst, and the newest is delivered.
    let held = eventually(
        "the working Alertmanager to take all its queue held",
        Duration::from_secs(30),
        async || {
            let sent = sample(&metrics, "notifications_sent_total", &working_name);
            let dropped = sample(&metrics, "notifications_dropped_total", &working_name);
            let held = alertmanager.alerts().await?.len();
            if sent + dropped == alerts as f64 && held as f64 == sent {
                Ok(held)
            } else {
                Err(format!("sent {sent}, dropped {dropped}, held {held}"))
            }
        },
    )
    .await
    .unwrap();
    eprintln!("the working Alertmanager holds {held} of the {alerts} alerts of the burst");
    assert!(
        alertmanager
            .alert(
                "ManyForbidden",
                &[("user", &format!("user-{}", alerts - 1))]
            )
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        sample(&metrics, "notifications_failed_total", &working_name),
        0.0
    );
    let text = metrics.encode();
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("notif"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Alertmanager: scripts/test runs it"]
async fn an_https_alertmanager_is_reached_with_the_given_ca_and_a_webhook_gets_the_current_token() {
    let ca = CertificateAuthority::generate("clusteraudit alerting test CA").unwrap();
    let serving = ca
        .issue_server(
            "alertmanager",
            &["localhost"],
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
    let alertmanager = Alertmanager::start_tls(&ca.cert_pem(), &serving)
        .await
        .expect("Alertmanager starts with TLS");
    assert!(alertmanager.url.starts_with("https://"));
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, token_file) = (dir.path().join("ca.pem"), dir.path().join("token"));
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    std::fs::write(&token_file, "first-token\n").unwrap();
    let webhook = flaky_webhook(0).await;

    let trusted = ReceiverConfig {
        ca_file: Some(ca_file),
        ..ReceiverConfig::alertmanager(&alertmanager.url)
    };
    // The same Alertmanager without its CA: the handshake fails, and is retried and counted.
    let untrusted = ReceiverConfig {
        name: "untrusted".into(),
        ..ReceiverConfig::alertmanager(&alertmanager.url)
    };
    let hook = ReceiverConfig {
        bearer_token_file: Some(token_file.clone()),
        ..ReceiverConfig::webhook(&webhook.url)
    };
    let trusted_name = trusted.name.clone();
    let metrics = Metrics::new();
    let notifier = Notifier::start(
        NotifierOptions {
            receivers: vec![trusted, untrusted, hook],
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..NotifierOptions::default()
        },
        &metrics,
    )
    .unwrap();
    notifier.fire(alert_for("mallory", 20, SystemTime::now()));
    eventually(
        "the https Alertmanager to hold the alert",
        Duration::from_secs(30),
        async || match alertmanager
            .alert("ManyForbidden", &[("user", "mallory")])
            .await
        {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("not there yet".to_string()),
            Err(err) => Err(err),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        sample(&metrics, "notifications_failed_total", &trusted_name),
        0.0
    );
    eventually(
        "the receiver without the CA to fail again and again",
        Duration::from_secs(30),
        async || {
            let failed = sample(&metrics, "notifications_failed_total", "untrusted");
            if failed >= 2.0 { Ok(()) } else { Err(failed) }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        sample(&metrics, "notifications_sent_total", "untrusted"),
        0.0
    );

    // The token file is read for each request: a rotated token is the one sent next.
    eventually(
        "the webhook to get the alert with the first token",
        Duration::from_secs(30),
        async || {
            let seen = webhook.authorizations.lock().await.clone();
            if seen.iter().any(|a| a == "bearer first-token") {
                Ok(())
            } else {
                Err(seen)
            }
        },
    )
    .await
    .unwrap();
    std::fs::write(&token_file, "second-token").unwrap();
    notifier.fire(alert_for("eve", 20, SystemTime::now()));
    eventually(
        "the webhook to get the next alert with the rotated token",
        Duration::from_secs(30),
        async || {
            let seen = webhook.authorizations.lock().await.clone();
            if seen.last().is_some_and(|a| a == "bearer second-token") {
                Ok(())
            } else {
                Err(seen)
            }
        },
    )
    .await
    .unwrap();
}

const RULES: &str = r#"groups:
  - name: alertmanager
    rules:
      - alert: AlertmanagerDown
        expr: up{job="alertmanager"} == 0
        for: 1m
        labels:
          severity: critical
        annotations:
          summary: Alertmanager {{ $labels.instance }} is down
"#;

const RULE_TESTS: &str = r#"rule_files:
  - rules.yml
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="alertmanager", instance="am:9093"}'
        values: '1 1 0 0 0'
    alert_rule_test:
      - eval_time: 2m
        alertname: AlertmanagerDown
        exp_alerts: []
      - eval_time: 4m
        alertname: AlertmanagerDown
        exp_alerts:
          - exp_labels:
              severity: critical
              job: alertmanager
              instance: am:9093
            exp_annotations:
              summary: Alertmanager am:9093 is down
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Prometheus: scripts/test runs it"]
async fn prometheus_scrapes_a_target_and_answers_queries_and_promtool_checks_and_tests_rules() {
    let alertmanager = Alertmanager::start().await.expect("Alertmanager starts");
    let target = alertmanager.url.trim_start_matches("http://").to_string();
    let config = Prometheus::scrape_config(
        "alertmanager",
        std::slice::from_ref(&target),
        "/metrics",
        Duration::from_secs(1),
    );
    let started = Instant::now();
    let prometheus = Prometheus::start(&config).await.expect("Prometheus starts");
    eprintln!("Prometheus ready after {:.1?}", started.elapsed());
    let up = eventually(
        "Prometheus to have scraped Alertmanager",
        Duration::from_secs(60),
        async || {
            let result = prometheus.query(r#"up{job="alertmanager"}"#).await?;
            match result.first() {
                Some(series) if series["value"][1] == "1" => Ok(series.clone()),
                _ => Err(format!("{result:?}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(up["metric"]["instance"], target.as_str());
    let build = prometheus.query("alertmanager_build_info").await.unwrap();
    assert_eq!(build[0]["metric"]["version"], "0.35.0", "{build:?}");
    let targets = prometheus.targets().await.unwrap();
    assert_eq!(targets[0]["health"], "up", "{targets:?}");
    // A query Prometheus refuses is an error, not an empty answer.
    assert!(prometheus.query("sum(").await.is_err());

    let promtool = Promtool::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    let tests = dir.path().join("rules_test.yml");
    std::fs::write(&rules, RULES).unwrap();
    std::fs::write(&tests, RULE_TESTS).unwrap();
    let checked = promtool.check_rules(&[&rules]).unwrap();
    assert!(checked.success, "{}", checked.output);
    assert!(
        checked.output.contains("SUCCESS: 1 rules found"),
        "{}",
        checked.output
    );
    let tested = promtool.test_rules(&[&tests]).unwrap();
    assert!(tested.success, "{}", tested.output);
    // Both fail on what is wrong: a broken expression, and an expectation the rule does not meet.
    let broken = dir.path().join("broken.yml");
    std::fs::write(&broken, RULES.replace("== 0", "== ")).unwrap();
    let checked = promtool.check_rules(&[&broken]).unwrap();
    assert!(!checked.success, "{}", checked.output);
    std::fs::write(
        &tests,
        RULE_TESTS.replace("severity: critical", "severity: warning"),
    )
    .unwrap();
    let tested = promtool.test_rules(&[&tests]).unwrap();
    assert!(!tested.success, "{}", tested.output);
}
