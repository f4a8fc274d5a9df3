//! The chart's PrometheusRule and Grafana dashboard, against the real tools: promtool checks the
//! rules and runs their unit tests (tests/prometheus/prometheusrule.test.yaml), and a real
//! Prometheus, scraping a real collector and a real operator the way the chart's ServiceMonitor
//! does, answers every query of the dashboard with data once they have worked: a kube-apiserver
//! rolled out to audit into the collector, an audit alert rule fired to a real Alertmanager, a
//! batch refused.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use clusteraudit_core::api::ClusterAudit;
use clusteraudit_testkit::{
    Alertmanager, Prometheus, Promtool, cluster::kubernetes_version, collector_rbac, eventually,
    free_port, pki::CertificateAuthority, process::ManagedProcess,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const NAMESPACE: &str = "clusteraudit-system";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];
const WEBHOOK_TOKEN: &str = "webhook-token-for-the-observability-test";
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/clusteraudit");
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/clusteraudit/dashboards/clusteraudit.json"
);
const RULE_TEMPLATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/clusteraudit/templates/prometheusrule.yaml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/prometheus/prometheusrule.test.yaml"
);

/// What `helm template` renders (release `clusteraudit`) with every observability part on,
/// as JSON documents.
fn render(extra: &[&str]) -> Vec<Value> {
    let binaries = clusteraudit_testkit::Binaries::locate().expect("helm is provided");
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(binaries.helm())
        .args(["template", "clusteraudit", CHART, "--namespace", NAMESPACE])
        .args(["--kube-version", &kubernetes_version()])
        .args(["--set", "networkPolicy.allowWebhookFromAnywhere=true"])
        .args(["--set", "prometheusRule.enabled=true"])
        .args(["--set", "grafanaDashboard.enabled=true"])
        .args(["--set", "serviceMonitor.enabled=true"])
        .args(extra)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    text.split("\n---")
        .filter(|doc| doc.lines().any(|l| l.starts_with("kind:")))
        .map(|doc| serde_saphyr::from_str::<Value>(doc).expect("a YAML document"))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Every query of a dashboard, by panel title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or_default().to_string();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or_default().into()))
        })
        .collect()
}

/// The series names the collector's and the operator's registries declare: what their /metrics
/// shows (a family with no series yet shows nothing there, so each name `register` is called
/// with in their sources counts too), with the suffixes the exposition adds.
fn declared_series() -> BTreeSet<String> {
    let registered = [
        (
            "clusteraudit_collector",
            include_str!("../../crates/collector/src/metrics.rs"),
        ),
        (
            "clusteraudit_operator",
            include_str!("../../crates/operator/src/metrics.rs"),
        ),
    ];
    let mut names = BTreeSet::new();
    for (prefix, source) in registered {
        for call in source.split("registry.register(").skip(1) {
            let name = call.split('"').nth(1).expect("a metric's name first");
            for suffix in ["", "_total", "_bucket", "_count", "_sum"] {
                names.insert(format!("{prefix}_{name}{suffix}"));
            }
        }
    }
    let exposed = clusteraudit_collector::metrics::Metrics::new().encode()
        + &clusteraudit_operator::metrics::Metrics::new().encode();
    for line in exposed.lines().filter(|l| !l.starts_with('#')) {
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        assert!(
            names.contains(&name),
            "{name} is exposed but was not found registered"
        );
    }
    names
}

/// The `clusteraudit_*` series names a text mentions.
fn series_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("clusteraudit_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        if name.starts_with("clusteraudit_collector_") || name.starts_with("clusteraudit_operator_")
        {
            names.insert(name);
        }
    }
    names
}

#[test]
fn every_dashboard_panel_queries_series_the_components_declare() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).expect("JSON");
    let declared = declared_series();
    let panels: Vec<&Value> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    assert_eq!(dashboard["uid"], "clusteraudit");
    let ids: BTreeSet<u64> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().expect("a panel id"))
        .collect();
    assert_eq!(
        ids.len(),
        dashboard["panels"].as_array().unwrap().len(),
        "panel ids are unique"
    );
    for panel in dashboard["panels"].as_array().unwrap() {
        let at = &panel["gridPos"];
        assert!(
            at["w"]
                .as_u64()
                .is_some_and(|w| w > 0 && at["x"].as_u64().unwrap() + w <= 24),
            "{}: {at}",
            panel["title"]
        );
    }
    for panel in &panels {
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                !expr.trim().is_empty(),
                "{}: an empty query",
                panel["title"]
            );
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{}",
                panel["title"]
            );
            let named = series_named(expr);
            assert!(!named.is_empty(), "{}: {expr}", panel["title"]);
            for name in named {
                assert!(
                    declared.contains(&name),
                    "{}: {name} is not a series the collector or the operator exposes",
                    panel["title"]
                );
            }
        }
    }
    let rules = std::fs::read_to_string(RULE_TEMPLATE).unwrap();
    for name in series_named(&rules) {
        assert!(
            declared.contains(&name),
            "the PrometheusRule reads {name}, which nothing exposes"
        );
    }
}

#[test]
#[ignore = "needs helm and promtool: scripts/test runs it"]
fn the_prometheus_rule_passes_promtool_and_its_unit_tests_cover_every_alert() {
    let docs = render(&[]);
    let rule = of_kind(&docs, "PrometheusRule");
    assert_eq!(rule.len(), 1, "one PrometheusRule");
    let groups = rule[0]["spec"]["groups"].clone();
    let alerts: BTreeSet<String> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| {
            let name = r["alert"]
                .as_str()
                .expect("only alerting rules")
                .to_string();
            assert!(
                ["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    r["annotations"][annotation]
                        .as_str()
                        .is_some_and(|t| t.len() > 20),
                    "{name}: {annotation}"
                );
            }
            name
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let rules_path = dir.path().join("clusteraudit.rules.yaml");
    // JSON is YAML.
    std::fs::write(&rules_path, json!({"groups": groups}).to_string()).unwrap();
    let tests_text = std::fs::read_to_string(RULE_TESTS).unwrap();
    let tests_path = dir.path().join("prometheusrule.test.yaml");
    std::fs::write(&tests_path, &tests_text).unwrap();

    let promtool = Promtool::locate().expect("promtool is provided");
    let check = promtool.check_rules(&[&rules_path]).unwrap();
    assert!(check.success, "promtool check rules: {}", check.output);
    let test = promtool.test_rules(&[&tests_path]).unwrap();
    assert!(test.success, "promtool test rules: {}", test.output);

    // Each alert has a case where it fires and a case where it does not.
    let tests: Value = serde_saphyr::from_str(&tests_text).unwrap();
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap().iter())
    {
        let name = case["alertname"].as_str().unwrap().to_string();
        if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
            firing.insert(name);
        } else {
            quiet.insert(name);
        }
    }
    assert_eq!(firing, alerts, "alerts with a unit test where they fire");
    assert_eq!(quiet, alerts, "alerts with a unit test where they do not");
}

/// A collector over TLS whose serving certificate names the chart's Service, as the
/// ServiceMonitor's `tlsConfig.serverName` expects, sending alerts to `alertmanager`.
struct Collector {
    process: ManagedProcess,
    /// `https://127.0.0.1:<port>`.
    url: String,
    http: reqwest::Client,
    ca_path: PathBuf,
}

async fn start_collector(
    dir: &Path,
    kubeconfig: &Path,
    server_name: &str,
    alertmanager: &str,
) -> Collector {
    clusteraudit_io::tls::install_crypto_provider();
    let ca = CertificateAuthority::generate("collector-ca").unwrap();
    let serving = ca
        .issue_server(
            "collector",
            &[server_name, "localhost"],
            &["127.0.0.1".parse().unwrap()],
        )
        .unwrap();
    let ca_path = dir.join("ca.crt");
    for (name, text) in [
        ("ca.crt", ca.cert_pem()),
        ("tls.crt", serving.cert_pem.clone()),
        ("tls.key", serving.key_pem.clone()),
        ("webhook-token", WEBHOOK_TOKEN.to_string()),
    ] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    let port = free_port().unwrap();
    let args = vec![
        "collector".to_string(),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--listen=127.0.0.1:{port}"),
        format!("--tls-cert={}", dir.join("tls.crt").display()),
        format!("--tls-key={}", dir.join("tls.key").display()),
        format!(
            "--webhook-token-file={}",
            dir.join("webhook-token").display()
        ),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--alertmanager-url={alertmanager}"),
        // The collector's own AuditGap alert, as short as the PrometheusRule's in this test.
        "--audit-gap-after=20s".into(),
    ];
    let process = ManagedProcess::spawn(
        "collector",
        &crate::operator_rollout::binary(),
        &args,
        &dir.join("collector.log"),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    if let Err(timed_out) = clusteraudit_testkit::readyz(&http, &url).await {
        panic!("{timed_out}: {}", process.log_tail(30));
    }
    Collector {
        process,
        url,
        http,
        ca_path,
    }
}

/// A prometheus.yml with one scrape job per ServiceMonitor endpoint, named after the Service
/// whose port it scrapes (as prometheus-operator names jobs), with the endpoint's path, scheme
/// and TLS settings; `targets` gives each Service's address here.
fn scrape_config_from_chart(
    docs: &[Value],
    targets: &BTreeMap<String, String>,
    ca_path: &Path,
    interval: Duration,
) -> String {
    let monitor = of_kind(docs, "ServiceMonitor");
    assert_eq!(monitor.len(), 1, "one ServiceMonitor");
    let services = of_kind(docs, "Service");
    let mut jobs = Vec::new();
    for endpoint in monitor[0]["spec"]["endpoints"].as_array().unwrap() {
        let port = endpoint["port"].as_str().unwrap();
        let service = services
            .iter()
            .find(|s| {
                s["spec"]["ports"]
                    .as_array()
                    .is_some_and(|ports| ports.iter().any(|p| p["name"] == port))
            })
            .unwrap_or_else(|| panic!("no Service has a port named {port}"));
        let name = service["metadata"]["name"].as_str().unwrap();
        let target = targets
            .get(name)
            .unwrap_or_else(|| panic!("no address for the Service {name}"));
        let mut job = json!({
            "job_name": name,
            "metrics_path": endpoint["path"],
            "scheme": endpoint["scheme"].as_str().unwrap_or("http"),
            "static_configs": [{"targets": [target]}],
        });
        if let Some(server_name) = endpoint["tlsConfig"]["serverName"].as_str() {
            // The chart takes the CA from the collector's TLS Secret; here, its file.
            assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["key"], "ca.crt");
            job["tls_config"] = json!({
                "ca_file": ca_path.display().to_string(),
                "server_name": server_name,
            });
        }
        jobs.push(job);
    }
    let interval = format!("{}ms", interval.as_millis());
    json!({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": ["clusteraudit.rules.yaml"],
        "scrape_configs": jobs,
    })
    .to_string()
}

/// RBAC letting the user `user` `get nodes.clusteraudit.io` (which nodes' batches the collector
/// received).
fn nodes_reader(user: &str) -> Value {
    let name = "observability-collector-nodes";
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["clusteraudit.io"], "resources": ["nodes"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]},
    ]})
}

/// Grafana's variables in a query, as a dashboard over the last hour would fill them in.
fn as_grafana_sends(expr: &str) -> String {
    expr.replace("$__rate_interval", "30s")
        .replace("$__range", "1h")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane, Prometheus and Alertmanager: scripts/test runs it"]
async fn prometheus_scrapes_both_components_as_the_chart_says_and_every_dashboard_query_has_data() {
    // A short audit gap, so that the rule is seen firing within the test; the kube-apiservers
    // send a batch every second while they have events (`--audit-webhook-batch-max-wait=1s`),
    // and the agents and the operator make some every few seconds.
    let docs = render(&["--set", "prometheusRule.auditGapSeconds=20"]);
    let server_name = of_kind(&docs, "ServiceMonitor")[0]["spec"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e["tlsConfig"]["serverName"].as_str())
        .expect("the collector's endpoint names its Service")
        .to_string();

    let mut control_plane =
        clusteraudit_testkit::ControlPlane::start_with(clusteraudit_testkit::ControlPlaneOptions {
            direct_apiserver: false,
            ..Default::default()
        })
        .await
        .expect("etcd starts");
    for name in NODES {
        control_plane
            .add_static_pod_node(name, |kubelet| {
                kubelet.backoff_initial = Duration::from_millis(500);
                kubelet.backoff_max = Duration::from_secs(2);
                kubelet.termination_grace = Duration::from_secs(10);
            })
            .expect("the node starts");
    }
    for node in control_plane.nodes() {
        assert!(
            node.wait_ready(Duration::from_secs(300)).await,
            "{}: {:#?}",
            node.name,
            node.kubelet.events()
        );
    }
    // The operator, the collector and the test go through node-2's kube-apiserver: node-1's is
    // the one stopped below.
    let kubeconfig = control_plane.kubeconfig_for_node("node-2").unwrap();
    let client = clusteraudit_io::kubeclient::client(Some(&kubeconfig))
        .await
        .unwrap();
    let dir = control_plane.dir().join("observability-test");
    std::fs::create_dir_all(&dir).unwrap();
    control_plane
        .install_crds(&[
            &crate::support::crd("clusteraudit"),
            &crate::support::crd("auditalert"),
        ])
        .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).unwrap(),
        )
        .await
        .unwrap();
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "clusteraudit-webhook-token"},
                "stringData": {"token": WEBHOOK_TOKEN},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    control_plane
        .apply_json(
            "collector-rbac",
            &collector_rbac(&["clusteraudit-operator"], &[]),
        )
        .unwrap();

    let alertmanager = Alertmanager::start().await.expect("Alertmanager starts");
    let collector = start_collector(&dir, &kubeconfig, &server_name, &alertmanager.url).await;
    let operator_token = control_plane
        .user("clusteraudit-operator")
        .unwrap()
        .token
        .clone();
    let token_file = dir.join("operator-token");
    std::fs::write(&token_file, &operator_token).unwrap();
    let operator_port = free_port().unwrap();
    let operator = ManagedProcess::spawn(
        "operator",
        &crate::operator_rollout::binary(),
        &[
            "operator".to_string(),
            format!("--namespace={NAMESPACE}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--collector-url={}", collector.url),
            format!("--collector-ca-file={}", collector.ca_path.display()),
            format!("--collector-token-file={}", token_file.display()),
            format!("--listen=127.0.0.1:{operator_port}"),
            "--lease-seconds=6".into(),
        ],
        &dir.join("operator.log"),
    )
    .unwrap();
    // The agents ask the collector whether their node's batches arrive, as an identity that may
    // `get nodes.clusteraudit.io`: here the operator's.
    control_plane
        .apply_json(
            "collector-nodes-rbac",
            &nodes_reader("clusteraudit-operator"),
        )
        .unwrap();
    let agents: Vec<ManagedProcess> = control_plane
        .nodes()
        .iter()
        .map(|node| {
            let own = control_plane.kubeconfig_for_node(&node.name).unwrap();
            let mut args = node.agent_args(NAMESPACE, &own);
            args.push(format!("--webhook-server={}/v1/webhook", collector.url));
            args.push(format!("--webhook-ca-file={}", collector.ca_path.display()));
            args.push(format!("--collector-token-file={}", token_file.display()));
            ManagedProcess::spawn(
                "agent",
                &crate::operator_rollout::binary(),
                &args,
                &dir.join(format!("agent-{}.log", node.name)),
            )
            .unwrap()
        })
        .collect();
    let logs = || {
        let mut out = format!("--- operator\n{}\n", operator.log_tail(30));
        for agent in &agents {
            out += &format!("--- agent\n{}\n", agent.log_tail(15));
        }
        out + &format!("--- collector\n{}", collector.process.log_tail(20))
    };

    // Prometheus scrapes from the start, as it would in a cluster, and loads the chart's rules.
    let rule = of_kind(&docs, "PrometheusRule");
    let rules_file = json!({"groups": rule[0]["spec"]["groups"]}).to_string();
    let collector_service = "clusteraudit-collector".to_string();
    let targets = BTreeMap::from([
        (
            collector_service.clone(),
            collector.url.trim_start_matches("https://").to_string(),
        ),
        (
            "clusteraudit-operator-metrics".to_string(),
            format!("127.0.0.1:{operator_port}"),
        ),
    ]);
    let config =
        scrape_config_from_chart(&docs, &targets, &collector.ca_path, Duration::from_secs(1));
    let prometheus =
        Prometheus::start_with_files(&config, &[("clusteraudit.rules.yaml", &rules_file)])
            .await
            .expect("Prometheus starts");

    // Auditing on: the operator rolls the one node out, and its kube-apiserver posts its events.
    let document = json!({
        "apiVersion": "clusteraudit.io/v1alpha1",
        "kind": "ClusterAudit",
        "metadata": {"name": "cluster"},
        "spec": crate::operator_rollout::spec(json!({})),
    });
    Api::<ClusterAudit>::all(client.clone())
        .patch(
            "cluster",
            &PatchParams::apply("observability-test").force(),
            &Patch::Apply(&document),
        )
        .await
        .unwrap();
    let audits = Api::<ClusterAudit>::all(client.clone());
    eventually(
        "the rollout to both nodes",
        crate::operator_rollout::ROLLOUT,
        async || match audits.get("cluster").await {
            Ok(audit) if crate::operator_rollout::rolled_out_on(&audit, NODES.len()) => Ok(()),
            Ok(audit) => Err(format!("{:?}", audit.status)),
            Err(err) => Err(err.to_string()),
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", logs()));

    // An AuditAlert the agents' and the operator's reads match within seconds: the operator
    // hands it to the collector, it fires, and the collector notifies Alertmanager.
    control_plane
        .apply_json(
            "any-read",
            &json!({"apiVersion": "clusteraudit.io/v1alpha1", "kind": "AuditAlert",
                "metadata": {"name": "any-read"},
                "spec": {"query": "verb:get", "window": "5m", "threshold": 1,
                         "severity": "warning", "summary": "{{count}} reads"}}),
        )
        .unwrap();
    eventually(
        "the alert in Alertmanager",
        Duration::from_secs(120),
        async || match alertmanager.alert("any-read", &[]).await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", logs()));

    // A batch refused for its content type. (Each node's batches come from its kube-apiserver,
    // through the webhook path its agent wrote.)
    let batch = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": []});
    let answer = collector
        .http
        .post(format!("{}/v1/webhook", collector.url))
        .bearer_auth(WEBHOOK_TOKEN)
        .header("content-type", "text/plain")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 415);

    let up = eventually(
        "both targets up",
        Duration::from_secs(60),
        async || match prometheus.targets().await {
            Ok(targets) if targets.len() == 2 && targets.iter().all(|t| t["health"] == "up") => {
                Ok(targets)
            }
            other => Err(format!("{other:?}")),
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", prometheus.log_tail(20)));
    let jobs: BTreeSet<&str> = up
        .iter()
        .filter_map(|t| t["labels"]["job"].as_str())
        .collect();
    assert_eq!(
        jobs,
        BTreeSet::from([collector_service.as_str(), "clusteraudit-operator-metrics"])
    );
    assert!(
        up.iter().any(|t| t["scrapeUrl"]
            .as_str()
            .unwrap_or("")
            .starts_with("https://")),
        "{up:?}"
    );

    let dashboard = of_kind(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard's ConfigMap, with the sidecar's label");
    let dashboard: Value =
        serde_json::from_str(dashboard["data"]["clusteraudit.json"].as_str().unwrap()).unwrap();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{queries:?}");
    for (panel, expr) in &queries {
        let promql = as_grafana_sends(expr);
        eventually(
            &format!("{panel}: {promql}"),
            Duration::from_secs(60),
            async || match prometheus.query(&promql).await {
                Ok(result) if !result.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await
        .unwrap_or_else(|timed_out| {
            panic!(
                "no data: {timed_out}\n{}\n{}",
                prometheus.log_tail(10),
                logs()
            )
        });
    }

    // The chart's rules load and evaluate in the real Prometheus; none fires on a healthy system.
    let rules = eventually(
        "every rule evaluated",
        Duration::from_secs(60),
        async || {
            let answer: Value = reqwest::get(format!("{}/api/v1/rules", prometheus.url))
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let rules: Vec<Value> = answer["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            if !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok") {
                Ok(rules)
            } else {
                Err(format!("{answer}"))
            }
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    let firing: Vec<&Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
    assert!(firing.is_empty(), "{firing:#?}");

    // The audit gap on real metrics: node-1's kube-apiserver stops (its static pod's manifest
    // taken away) while the operator still reports it running an auditing revision. The alert
    // names node-1 and only node-1, and clears once it is back and posting.
    let node_1 = control_plane.node("node-1").unwrap();
    let aside = dir.join("kube-apiserver.yaml.aside");
    std::fs::rename(&node_1.manifest_path, &aside).unwrap();
    let gap = |node: &str| {
        let node = node.to_string();
        let prometheus = &prometheus;
        async move {
            let alerts = prometheus_alerts(prometheus).await?;
            Ok::<_, String>(alerts.into_iter().find(|a| {
                a["labels"]["alertname"] == "ClusterAuditAuditGap"
                    && a["labels"]["node"] == node.as_str()
                    && a["state"] == "firing"
            }))
        }
    };
    let firing = eventually(
        "ClusterAuditAuditGap firing for node-1",
        Duration::from_secs(180),
        async || match gap("node-1").await {
            Ok(Some(alert)) => Ok(alert),
            other => Err(format!("{other:?}")),
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", logs()));
    assert_eq!(firing["labels"]["severity"], "critical");
    assert!(
        firing["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("node-1")),
        "{firing}"
    );
    assert_eq!(gap("node-2").await, Ok(None), "node-2 still posts");
    // The collector says so itself, to Alertmanager, for node-1 alone.
    let collector_gap = |node: &'static str| {
        let alertmanager = &alertmanager;
        async move { alertmanager.alert("AuditGap", &[("node", node)]).await }
    };
    let sent = eventually(
        "AuditGap for node-1 in Alertmanager",
        Duration::from_secs(120),
        async || match collector_gap("node-1").await {
            Ok(Some(alert)) => Ok(alert),
            other => Err(format!("{other:?}")),
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", logs()));
    assert_eq!(sent["labels"]["severity"], "critical");
    assert_eq!(
        collector_gap("node-2").await,
        Ok(None),
        "node-2 still posts"
    );
    std::fs::rename(&aside, &node_1.manifest_path).unwrap();
    eventually(
        "ClusterAuditAuditGap cleared for node-1",
        Duration::from_secs(180),
        async || match gap("node-1").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", logs()));
    eventually(
        "AuditGap for node-1 resolved in Alertmanager",
        Duration::from_secs(120),
        async || match collector_gap("node-1").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await
    .unwrap_or_else(|timed_out| panic!("{timed_out}\n{}", logs()));
}

/// The alerts Prometheus's rules hold, pending and firing (`GET /api/v1/alerts`).
async fn prometheus_alerts(prometheus: &Prometheus) -> Result<Vec<Value>, String> {
    let answer: Value = reqwest::get(format!("{}/api/v1/alerts", prometheus.url))
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    answer["data"]["alerts"]
        .as_array()
        .cloned()
        .ok_or_else(|| answer.to_string())
}
