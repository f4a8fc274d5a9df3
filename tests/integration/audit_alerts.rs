//! AuditAlerts end to end: the chart's built-in rules and a rule of the test's own are applied
//! to a real kube-apiserver, the operator hands them to the collector, real requests (an exec
//! into a kube-system pod, a secret read, a binding to cluster-admin made with kubectl while one
//! to view does not fire, a request made with `kubectl --as`, an anonymous request, forbidden
//! answers) make them fire, and the alerts are read back from a real
//! Alertmanager with their labels and links; one resolves, and a collector killed and restarted
//! sends no new firing.

use std::{path::Path, process::Command, time::Duration};

use clusteraudit_core::api::alert::AuditAlert;
use clusteraudit_testkit::{
    ControlPlane, alerting::Alertmanager, collector_rbac, eventually, free_port,
    process::ManagedProcess,
};
use kube::Api;
use serde_json::{Value, json};

use crate::support::write;

const TOKEN: &str = "webhook-secret-token";
const NAMESPACE: &str = "clusteraudit";
const PUBLIC_URL: &str = "https://audit.example";

fn kubectl_ok(control_plane: &ControlPlane, args: &[&str]) -> String {
    let output = control_plane.kubectl().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The chart's AuditAlerts, as `helm template` renders them with the defaults.
fn built_in_alerts(control_plane: &ControlPlane) -> String {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/clusteraudit");
    let output = Command::new(control_plane.binaries().helm())
        .args(["template", "clusteraudit", chart, "--namespace", NAMESPACE])
        .args(["--kube-version", "1.36.0"])
        .args(["--set", "networkPolicy.allowWebhookFromAnywhere=true"])
        .args(["--show-only", "templates/auditalerts.yaml"])
        .env("HELM_CACHE_HOME", control_plane.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", control_plane.dir().join("helm/config"))
        .env("HELM_DATA_HOME", control_plane.dir().join("helm/data"))
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn condition(api: &Api<AuditAlert>, name: &str, type_: &str) -> Option<(String, String)> {
    let alert = api.get(name).await.ok()?;
    let condition = alert
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)?;
    Some((condition.status, condition.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane and Alertmanager: scripts/test runs it"]
async fn audit_alerts_fire_on_real_requests_reach_alertmanager_and_survive_a_collector_restart() {
    let mut control_plane = ControlPlane::start()
        .await
        .expect("the control plane starts");
    let dir = control_plane.dir().join("alerts-test");
    std::fs::create_dir_all(&dir).unwrap();
    control_plane
        .install_crds(&[
            &crate::support::crd("clusteraudit"),
            &crate::support::crd("auditalert"),
        ])
        .unwrap();
    kubectl_ok(&control_plane, &["create", "namespace", NAMESPACE]);
    let alertmanager = Alertmanager::start().await.expect("Alertmanager starts");

    // The collector sends to the real Alertmanager, and the kube-apiserver sends it its events.
    let collector_dir = dir.join("collector");
    std::fs::create_dir_all(&collector_dir).unwrap();
    let (mut collector, webhook_config) = crate::support::start_tls_collector_with(
        control_plane.kubeconfig_path(),
        &collector_dir,
        TOKEN,
        &[
            format!("--alertmanager-url={}", alertmanager.url),
            format!("--public-url={PUBLIC_URL}"),
            "--alert-resend-interval=5s".into(),
        ],
    )
    .await;
    let policy = clusteraudit_core::policy::render(&Default::default()).unwrap();
    let policy_path = dir.join("policy.yaml");
    write(&policy_path, &policy.yaml);
    control_plane
        .restart_apiserver(vec![
            format!("--audit-policy-file={}", policy_path.display()),
            format!("--audit-webhook-config-file={webhook_config}"),
            "--audit-webhook-batch-max-wait=1s".into(),
        ])
        .await
        .expect("the kube-apiserver starts with the webhook backend");

    // The operator, with the identity the collector lets administer topics and rules.
    control_plane
        .apply_json(
            "collector-rbac",
            &collector_rbac(&["clusteraudit-operator"], &[]),
        )
        .unwrap();
    let token_file = dir.join("operator-token");
    write(
        &token_file,
        &control_plane.user("clusteraudit-operator").unwrap().token,
    );
    let operator_args = vec![
        "operator".to_string(),
        format!("--namespace={NAMESPACE}"),
        format!("--kubeconfig={}", control_plane.kubeconfig_path().display()),
        format!("--collector-url={}", collector.url),
        format!("--collector-ca-file={}", collector.ca_path.display()),
        format!("--collector-token-file={}", token_file.display()),
        format!("--listen=127.0.0.1:{}", free_port().unwrap()),
        "--lease-seconds=6".into(),
    ];
    let mut operator = ManagedProcess::spawn(
        "operator",
        Path::new(env!("CARGO_BIN_EXE_clusteraudit")),
        &operator_args,
        &dir.join("operator.log"),
    )
    .unwrap();

    // The built-in rules, one of the test's own with a short window, and one that is wrong.
    let built_in = dir.join("built-in-alerts.yaml");
    write(&built_in, built_in_alerts(&control_plane));
    kubectl_ok(&control_plane, &["apply", "-f", built_in.to_str().unwrap()]);
    control_plane
        .apply_json(
            "quick-alerts",
            &json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "clusteraudit.io/v1alpha1", "kind": "AuditAlert",
                 "metadata": {"name": "mallory-refused"},
                 "spec": {"query": "code:403 and user:mallory", "window": "20s", "threshold": 3,
                          "groupBy": ["user"], "severity": "info",
                          "labels": {"team": "security"}}},
                {"apiVersion": "clusteraudit.io/v1alpha1", "kind": "AuditAlert",
                 "metadata": {"name": "broken"},
                 "spec": {"query": "verb:create and (resource:pods"}},
            ]}),
        )
        .unwrap();
    let client = clusteraudit_io::kubeclient::client(Some(control_plane.kubeconfig_path()))
        .await
        .unwrap();
    let alerts: Api<AuditAlert> = Api::all(client);
    let names = [
        "pod-exec-in-kube-system",
        "secret-read-by-user",
        "cluster-admin-binding",
        "impersonation",
        "anonymous-request-allowed",
        "forbidden-burst",
        "mallory-refused",
    ];
    let diagnostics = |operator: &ManagedProcess, collector: &crate::support::TlsCollector| {
        format!(
            "--- operator\n{}\n--- collector\n{}",
            operator.log_tail(30),
            collector.process.log_tail(30)
        )
    };
    for name in names {
        let active = eventually(
            &format!("{name} is valid and evaluated"),
            Duration::from_secs(90),
            async || match condition(&alerts, name, "Active").await {
                Some((status, _)) if status == "True" => Ok(()),
                other => Err(other),
            },
        )
        .await;
        assert!(
            active.is_ok(),
            "{active:?}\n{}",
            diagnostics(&operator, &collector)
        );
    }
    // The wrong one is refused with the column, and nothing else stops for it.
    let (status, message) = condition(&alerts, "broken", "Valid").await.unwrap();
    assert_eq!(status, "False");
    assert!(message.starts_with("spec.query: at column "), "{message}");

    // What the rules are about, done for real through the control plane.
    // No controller manager makes the namespace's default service account here.
    kubectl_ok(
        &control_plane,
        &["create", "serviceaccount", "default", "-n", "kube-system"],
    );
    control_plane
        .apply_json(
            "probe-pod",
            &json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "probe", "namespace": "kube-system"},
                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .unwrap();
    let exec = control_plane
        .kubectl()
        .args(["exec", "-n", "kube-system", "probe", "--", "true"])
        .output()
        .unwrap();
    assert!(
        !exec.status.success(),
        "no kubelet runs the pod, but the exec request reaches the kube-apiserver"
    );
    kubectl_ok(
        &control_plane,
        &[
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=password=x",
        ],
    );
    kubectl_ok(&control_plane, &["get", "secret", "db", "-o", "name"]);
    // A binding to view is no alert. Once the collector holds it (it is found by its role),
    // it was counted before the binding to cluster-admin below, so the rule, had it matched, would
    // fire its group no later than the cluster-admin one.
    kubectl_ok(
        &control_plane,
        &[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
            "-n",
            "default",
        ],
    );
    let operator_token = control_plane
        .user("clusteraudit-operator")
        .unwrap()
        .token
        .clone();
    let found = collector
        .search_until(
            &operator_token,
            "roleRef:view and resource:rolebindings",
            |events| !events.is_empty(),
        )
        .await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["objectRef"]["name"], "bob-view");
    kubectl_ok(
        &control_plane,
        &[
            "create",
            "clusterrolebinding",
            "bob-admin",
            "--clusterrole=cluster-admin",
            "--user=bob",
        ],
    );
    // A request made as someone else; eve may do nothing, so it is refused after the
    // impersonation itself was allowed.
    let impersonated = control_plane
        .kubectl()
        .args(["--as=eve", "get", "namespaces"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&impersonated.stderr).contains("\"eve\" cannot list"),
        "{impersonated:?}"
    );
    // Anonymous callers may read one namespace (a real misconfiguration), and one does.
    control_plane
        .apply_json(
            "anonymous-grant",
            &json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": "anonymous-namespaces"},
                 "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": "anonymous-namespaces"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": "anonymous-namespaces"},
                 "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                               "name": "system:anonymous"}]},
            ]}),
        )
        .unwrap();
    let endpoint = control_plane.endpoint().unwrap();
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let anonymous = eventually(
        "an anonymous read is allowed",
        Duration::from_secs(30),
        async || {
            let response = insecure
                .get(format!("{endpoint}/api/v1/namespaces/default"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(response.status().to_string())
            }
        },
    )
    .await;
    assert!(anonymous.is_ok(), "{anonymous:?}");
    let mallory = control_plane.user("mallory").unwrap().token.clone();
    for _ in 0..25 {
        let response = insecure
            .get(format!("{endpoint}/api/v1/namespaces/default/secrets"))
            .bearer_auth(&mallory)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
    }

    // Each rule's alert reaches Alertmanager with its group, labels and link.
    let admin = "clusteraudit-admin";
    let expected: [(&str, Vec<(&str, &str)>); 7] = [
        (
            "pod-exec-in-kube-system",
            vec![("user", admin), ("severity", "critical")],
        ),
        (
            "secret-read-by-user",
            vec![("user", admin), ("namespace", "default")],
        ),
        (
            "cluster-admin-binding",
            vec![
                ("user", admin),
                ("resource", "clusterrolebindings"),
                ("severity", "critical"),
            ],
        ),
        (
            "impersonation",
            vec![
                ("user", admin),
                ("impersonatedUser", "eve"),
                ("severity", "warning"),
            ],
        ),
        ("anonymous-request-allowed", vec![("sourceIP", "127.0.0.1")]),
        ("forbidden-burst", vec![("user", "mallory")]),
        (
            "mallory-refused",
            vec![("user", "mallory"), ("team", "security")],
        ),
    ];
    let mut starts = Vec::new();
    for (name, labels) in &expected {
        let found = eventually(
            &format!("Alertmanager holds {name} {labels:?}"),
            Duration::from_secs(90),
            async || match alertmanager.alert(name, labels).await {
                Ok(Some(alert)) => Ok(alert),
                other => Err(other),
            },
        )
        .await;
        let alert = match found {
            Ok(alert) => alert,
            Err(timed_out) => panic!(
                "{timed_out:?}\n{:?}\n{}",
                alertmanager.alerts().await,
                diagnostics(&operator, &collector)
            ),
        };
        let link = alert["generatorURL"].as_str().unwrap();
        assert!(
            link.starts_with(&format!("{PUBLIC_URL}/ui/search?topic=")) && link.contains("&q="),
            "{link}"
        );
        assert!(alert["annotations"]["summary"].is_string(), "{alert}");
        assert!(alert["annotations"]["query"].is_string(), "{alert}");
        starts.push((name.to_string(), labels.clone(), alert["startsAt"].clone()));
    }
    // The binding to view fired nothing, here or in Alertmanager.
    let (status, view) = collector.get("/v1/alerts", Some(&operator_token)).await;
    assert_eq!(status, 200);
    let bindings = view["rules"]
        .as_array()
        .and_then(|rules| rules.iter().find(|r| r["name"] == "cluster-admin-binding"))
        .cloned()
        .unwrap();
    assert_eq!(
        bindings["firing"].as_array().unwrap().len(),
        1,
        "only the cluster-admin binding fires: {bindings}"
    );
    assert_eq!(
        alertmanager
            .alert("cluster-admin-binding", &[("resource", "rolebindings")])
            .await
            .unwrap(),
        None
    );
    // Both fields are searchable in the store too.
    let found = collector
        .search_until(&operator_token, "impersonatedUser:eve", |events| {
            !events.is_empty()
        })
        .await;
    assert!(!found.is_empty());
    assert!(
        found.iter().all(|e| e["user"]["username"] == admin),
        "{found:?}"
    );
    let found = collector
        .search_until(
            &operator_token,
            "roleRef:cluster-admin verb:create",
            |events| events.iter().any(|e| e["objectRef"]["name"] == "bob-admin"),
        )
        .await;
    assert!(
        found.iter().any(|e| e["objectRef"]["name"] == "bob-admin"),
        "{found:?}"
    );

    // The AuditAlert says it fires, and when.
    let status = eventually(
        "forbidden-burst's status shows mallory firing",
        Duration::from_secs(60),
        async || {
            let status = alerts
                .get("forbidden-burst")
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            if status.firing_groups == 1 && status.last_fired_at.is_some() {
                Ok(status)
            } else {
                Err(format!("{status:?}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(status.firing[0].group["user"], "mallory");

    // The short window empties, and its alert resolves in Alertmanager.
    let resolved = eventually(
        "mallory-refused resolves",
        Duration::from_secs(120),
        async || match alertmanager.alert("mallory-refused", &[]).await {
            Ok(None) => Ok(()),
            other => Err(other),
        },
    )
    .await;
    assert!(resolved.is_ok(), "{resolved:?}");

    // A collector killed and started again finds what still fires and sends it as it was.
    collector.restart().await;
    let evaluating = eventually(
        "the restarted collector holds forbidden-burst firing",
        Duration::from_secs(60),
        async || {
            let (status, view) = collector
                .get(
                    "/v1/alerts",
                    Some(&control_plane.user("clusteraudit-operator").unwrap().token),
                )
                .await;
            let rule = view["rules"]
                .as_array()
                .and_then(|rules| rules.iter().find(|r| r["name"] == "forbidden-burst"))
                .cloned();
            match rule {
                Some(rule)
                    if status == 200 && rule["firing"].as_array().is_some_and(|f| f.len() == 1) =>
                {
                    Ok(())
                }
                other => Err((status, other)),
            }
        },
    )
    .await;
    assert!(
        evaluating.is_ok(),
        "{evaluating:?}\n{}",
        collector.process.log_tail(30)
    );
    // (Other groups may start firing meanwhile: the operator reads secrets too.)
    let metrics = collector.metrics().await;
    assert!(
        !metrics.lines().any(|l| l.starts_with(
            "clusteraudit_collector_alerts_fired_total{alertname=\"forbidden-burst\"}"
        )),
        "nothing fired anew after the restart:\n{}",
        std::fs::read_to_string(collector.process.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("alert"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (name, labels, started) in &starts {
        if name == "mallory-refused" {
            continue;
        }
        let held: Vec<Value> = alertmanager
            .alerts()
            .await
            .unwrap()
            .into_iter()
            .filter(|a| {
                a["labels"]["alertname"] == name.as_str()
                    && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            })
            .collect();
        assert_eq!(held.len(), 1, "one alert per group: {held:?}");
        assert_eq!(&held[0]["startsAt"], started, "{name} keeps its start");
    }
    operator.stop(Duration::from_secs(5));
}
