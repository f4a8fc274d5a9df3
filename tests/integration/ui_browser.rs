//! The page in a real browser: Debian's Chromium, driven by playwright-core
//! (tests/ui/browser.mjs), against the collector over TLS with the read API behind TokenReview and
//! SubjectAccessReview of a real kube-apiserver, holding known events in two topics and an alert
//! rule that fires on them. Screenshots of the search, the dashboard and the alerts are saved
//! under target/tmp/ui-screenshots.

use std::time::Duration;

use clusteraudit_testkit::{ControlPlane, collector_rbac, eventually};
use reqwest::Method;
use serde_json::{Value, json};

const WEBHOOK_TOKEN: &str = "webhook-token-for-the-page";
const SCREENSHOTS: [&str; 3] = ["search.png", "dashboard.png", "alerts.png"];

fn event(id: &str, user: &str, verb: &str, object: Value, code: u16, seconds_ago: i64) -> Value {
    let stamp = (jiff::Timestamp::now() - jiff::SignedDuration::from_secs(seconds_ago)).to_string();
    json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": id, "stage": "ResponseComplete",
        "requestURI": format!("/{id}"),
        "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.7"],
        "userAgent": "kubectl/v1.36.3",
        "objectRef": object,
        "responseStatus": {"metadata": {}, "code": code},
        "requestReceivedTimestamp": stamp, "stageTimestamp": stamp,
        "annotations": {"authorization.k8s.io/decision": if code == 403 { "forbid" } else { "allow" }},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane and Chromium: scripts/test runs it"]
async fn the_page_searches_and_charts_for_readers_only() {
    let modules = std::env::var("CLUSTERAUDIT_BROWSER_MODULES").expect(
        "CLUSTERAUDIT_BROWSER_MODULES names playwright-core's node_modules: run scripts/test (it installs Chromium and playwright-core)",
    );
    let chromium =
        std::env::var("CLUSTERAUDIT_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());

    let control_plane = ControlPlane::start()
        .await
        .expect("the control plane starts");
    // alice may read audit logs; mallory may not; bob administers topics and alert rules.
    control_plane
        .apply_json("collector-rbac", &collector_rbac(&["bob"], &["alice"]))
        .unwrap();
    let dir = control_plane.dir().join("page");
    std::fs::create_dir_all(&dir).unwrap();
    let (collector, _) =
        crate::support::start_tls_collector(control_plane.kubeconfig_path(), &dir, WEBHOOK_TOKEN)
            .await;

    let bob = control_plane.user("bob").unwrap().token.clone();
    let admin = async |method: Method, path: &str, body: Value| -> Value {
        let response = collector
            .http
            .request(method, format!("{}{path}", collector.url))
            .bearer_auth(&bob)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    };
    // A second topic, for the picker: the webhook's topic copies its secrets events there.
    let (_, route) = collector.get("/v1/route", Some(&bob)).await;
    let routed = route["topicId"]
        .as_str()
        .expect("a routed topic")
        .to_string();
    let (_, described) = collector
        .get(&format!("/v1/topics/{routed}"), Some(&bob))
        .await;
    let logset = described["logsetId"].as_str().unwrap().to_string();
    let secrets_topic = admin(
        Method::POST,
        &format!("/v1/logsets/{logset}/topics"),
        json!({"name": "secrets"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    admin(
        Method::PUT,
        &format!("/v1/topics/{routed}/routes"),
        json!({"routes": [{"query": "resource:secrets", "topicId": secrets_topic}]}),
    )
    .await;
    // One rule the events below make fire (for alice, who deletes in shop), one they do not.
    admin(
        Method::PUT,
        "/v1/alerts",
        json!({"rules": [
            {"name": "deletions-in-shop", "query": "verb:delete and namespace:shop",
             "windowSeconds": 3600, "threshold": 1, "groupBy": ["user"], "severity": "warning",
             "summary": "{{user}} deleted {{count}} objects in shop"},
            {"name": "exec-in-kube-system", "query": "subresource:exec and namespace:kube-system",
             "windowSeconds": 300, "threshold": 1, "groupBy": ["user"], "severity": "critical"},
        ]}),
    )
    .await;
    let deployment = |name: &str| json!({"resource": "deployments", "namespace": "shop", "name": name, "apiGroup": "apps", "apiVersion": "v1"});
    let secret =
        json!({"resource": "secrets", "namespace": "shop", "name": "db", "apiVersion": "v1"});
    let events = vec![
        event(
            "e2e-create-web",
            "alice",
            "create",
            deployment("web"),
            201,
            600,
        ),
        event(
            "e2e-patch-web",
            "alice",
            "patch",
            deployment("web"),
            200,
            500,
        ),
        event(
            "e2e-delete-web",
            "alice",
            "delete",
            deployment("web"),
            200,
            // Stamped after the rule is set: an event older than the rule counts only if the
            // store already holds it when the rule appears.
            0,
        ),
        event(
            "e2e-create-secret",
            "bob",
            "create",
            secret.clone(),
            201,
            350,
        ),
        event("e2e-get-secret", "bob", "get", secret, 200, 300),
        event(
            "e2e-exec",
            "alice",
            "create",
            json!({"resource": "pods", "subresource": "exec", "namespace": "shop", "name": "web-0", "apiVersion": "v1"}),
            101,
            250,
        ),
        event(
            "e2e-forbidden",
            "mallory",
            "list",
            json!({"resource": "secrets", "namespace": "kube-system", "apiVersion": "v1"}),
            403,
            200,
        ),
        event(
            "e2e-rbac",
            "bob",
            "create",
            json!({"resource": "rolebindings", "namespace": "shop", "name": "edit", "apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1"}),
            201,
            150,
        ),
        event(
            "e2e-not-found",
            "alice",
            "get",
            json!({"resource": "configmaps", "namespace": "shop", "name": "missing", "apiVersion": "v1"}),
            404,
            100,
        ),
    ];
    let total = events.len();
    let response = collector
        .http
        .post(format!("{}/v1/webhook", collector.url))
        .bearer_auth(WEBHOOK_TOKEN)
        .json(&json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": events}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let alice = control_plane.user("alice").unwrap().token.clone();
    let mallory = control_plane.user("mallory").unwrap().token.clone();
    let found = collector
        .search_until(&alice, "", |events| events.len() == total)
        .await;
    assert_eq!(found.len(), total);
    let firing_query = eventually(
        "deletions-in-shop fires for alice",
        Duration::from_secs(60),
        async || {
            let (_, alerts) = collector.get("/v1/alerts", Some(&alice)).await;
            let firing = alerts["rules"]
                .as_array()
                .and_then(|rules| rules.iter().find(|r| r["name"] == "deletions-in-shop"))
                .and_then(|rule| rule["firing"].as_array())
                .and_then(|groups| groups.iter().find(|g| g["group"]["user"] == "alice"))
                .and_then(|group| group["query"].as_str());
            firing.map(str::to_string).ok_or(alerts)
        },
    )
    .await
    .expect("the rule fires");
    let secrets_search = format!("/v1/topics/{secrets_topic}/events?limit=100");
    eventually(
        "the secrets topic holds its 3 events",
        Duration::from_secs(60),
        async || {
            let (_, page) = collector.get(&secrets_search, Some(&alice)).await;
            let held = page["events"].as_array().map_or(0, Vec::len);
            if held == 3 { Ok(()) } else { Err(page) }
        },
    )
    .await
    .expect("the route copies the secrets events");

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&out).unwrap();
    for shot in SCREENSHOTS {
        let _ = std::fs::remove_file(out.join(shot));
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/integration/ui/browser.mjs"
    );
    let mut node = std::process::Command::new("node");
    node.arg(script)
        .env("CLUSTERAUDIT_BROWSER_MODULES", &modules)
        .env("CLUSTERAUDIT_CHROMIUM", &chromium)
        .env("COLLECTOR_URL", &collector.url)
        .env("READER_TOKEN", &alice)
        .env("DENIED_TOKEN", &mallory)
        .env("ADMIN_TOKEN", &bob)
        .env("SECRETS_TOPIC", &secrets_topic)
        .env("FIRING_QUERY", &firing_query)
        .env("OUT_DIR", &out);
    // Each step of the script waits at most 30 s for what it expects.
    let output = tokio::task::spawn_blocking(move || node.output())
        .await
        .unwrap()
        .expect("node runs");
    assert!(
        output.status.success(),
        "the browser checks failed:\n{}\n{}\ncollector log:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        collector.process.log_tail(30)
    );
    for shot in SCREENSHOTS {
        let size = std::fs::metadata(out.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{shot} was saved ({size} bytes)");
    }
}
