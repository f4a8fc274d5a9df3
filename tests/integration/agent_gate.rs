//! The agent's delivery gate on one control-plane node, with the real kube-apiserver, the real
//! collector over TLS and the agent binary (the test plays the operator: revision Secrets and the
//! status). A revision whose batches reach the collector rolls out: the kube-apiserver posts to
//! the node's own webhook path, and the collector's `GET /v1/nodes` shows the node. A revision
//! whose kube-apiserver comes back ready but whose batches the collector refuses (a webhook token
//! it does not accept, as when a rotated token never reached it) falls back to the last known
//! good manifest, the node's report saying why; so does one the collector will not answer about
//! (the agent's token lacks the chart's RBAC).

use std::time::Duration;

use clusteraudit_core::{
    api::PolicySpec,
    policy::render,
    rollout::{
        objects::{self, NodeReport, node_report_from_lease},
        revision::{self, Revision, WebhookTarget},
    },
};
use clusteraudit_testkit::{eventually, process::ManagedProcess};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use serde_json::{Value, json};

const NAMESPACE: &str = "clusteraudit";
const WEBHOOK_TOKEN: &str = "the-webhook-token-the-collector-accepts";
const HEALTH_TIMEOUT: &str = "45s";
const READY: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn a_node_whose_batches_do_not_reach_the_collector_falls_back() {
    let played = crate::support::PlayedOperator::start(
        NAMESPACE,
        json!({"rollout": {"healthTimeout": HEALTH_TIMEOUT}}),
    )
    .await;
    let (control_plane, client) = (&played.control_plane, &played.client);
    let node = control_plane.node("node-1").unwrap();
    let release = async |revision: &Revision| {
        played.publish(revision).await;
        played.release(&revision.name, &revision.hash).await;
    };

    // The collector, checking readers' tokens with this cluster; the agent's token as the chart
    // gives it: a token of its service account for the collector's audience, with the chart's
    // RBAC (get nodes.clusteraudit.io).
    let dir = control_plane.dir().join("gate-test");
    std::fs::create_dir_all(&dir).unwrap();
    let (collector, _) =
        crate::support::start_tls_collector(control_plane.kubeconfig_path(), &dir, WEBHOOK_TOKEN)
            .await;
    apply_chart_rbac(control_plane);
    let agent_token = clusteraudit_testkit::cluster::service_account_token(
        client,
        NAMESPACE,
        "clusteraudit-agent",
        "clusteraudit",
    )
    .await
    .unwrap();
    let token_file = dir.join("agent-collector-token");
    crate::support::write(&token_file, &agent_token);

    let mut args = node.agent_args(NAMESPACE, control_plane.kubeconfig_path());
    args.push(format!("--webhook-server={}/v1/webhook", collector.url));
    args.push(format!("--webhook-ca-file={}", collector.ca_path.display()));
    args.push(format!("--collector-token-file={}", token_file.display()));
    let log = dir.join("agent.log");
    let agent =
        ManagedProcess::spawn("agent", &crate::operator_rollout::binary(), &args, &log).unwrap();

    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let report = async || -> Result<NodeReport, String> {
        let lease = leases
            .get_opt(&objects::node_report_name("node-1"))
            .await
            .map_err(|err| err.to_string())?
            .ok_or("no report yet")?;
        node_report_from_lease(&lease).ok_or_else(|| "not a report".to_string())
    };
    let starts = || node.kubelet.starts("kube-apiserver").len();
    assert_eq!(starts(), 1);
    let policy = render(&PolicySpec::default()).unwrap().yaml;
    let target = |token: &str| WebhookTarget {
        server: format!("{}/v1/webhook", collector.url),
        ca_pem: std::fs::read_to_string(&collector.ca_path).unwrap(),
        token: token.into(),
    };

    // A revision whose batches arrive: current once the collector has one from node-1.
    let delivering = revision::build(&policy, &target(WEBHOOK_TOKEN));
    let released = std::time::Instant::now();
    release(&delivering).await;
    let rolled_out = eventually("the delivering revision rolled out", READY, async || {
        let report = report().await?;
        if report.current == delivering.name && report.applying.is_none() {
            Ok(report)
        } else {
            Err(format!("{report:?}"))
        }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", agent.log_tail(30)));
    eprintln!(
        "figure: released to current through the gate in {:?}",
        released.elapsed()
    );
    assert_eq!(rolled_out.last_failed, None, "{rolled_out:?}");
    assert_eq!(starts(), 2, "{:#?}", node.kubelet.events());
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(
            node.kubernetes_dir
                .join("clusteraudit")
                .join(&delivering.name)
                .join("webhook.kubeconfig"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        written["clusters"][0]["cluster"]["server"],
        format!("{}/v1/webhook/node-1", collector.url)
    );
    let (status, nodes) = collector.get("/v1/nodes", Some(&agent_token)).await;
    assert_eq!(status, 200, "{nodes}");
    let node_1 = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-1")
        .cloned()
        .unwrap_or_else(|| panic!("{nodes}"));
    assert!(node_1["batches"].as_u64().unwrap() >= 1, "{nodes}");
    let agent_log = std::fs::read_to_string(&log).unwrap();
    if let Some(line) = agent_log
        .lines()
        .find(|l| l.contains("ready_to_batch_received_ms"))
    {
        eprintln!("figure: {line}");
    }
    let delivering_manifest = std::fs::read(&node.manifest_path).unwrap();

    // Ready again, but the collector refuses every batch: back to the delivering revision.
    let silent = revision::build(&policy, &target("a-token-the-collector-never-issued"));
    release(&silent).await;
    let fell_back = eventually("the silent revision fallen back", READY, async || {
        let report = report().await?;
        if report.last_failed.as_deref() == Some(silent.name.as_str()) {
            Ok(report)
        } else {
            Err(format!("{report:?}"))
        }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", agent.log_tail(30)));
    eprintln!("fell back: {fell_back:?}");
    let reason = fell_back.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "the collector received no audit batch from node node-1 within {HEALTH_TIMEOUT}"
        )),
        "{reason}"
    );
    assert_eq!(fell_back.current, delivering.name);
    assert_eq!(
        std::fs::read(&node.manifest_path).unwrap(),
        delivering_manifest
    );
    assert!(node.wait_ready(READY).await);
    // Restarted for the revision, then for the last known good.
    assert_eq!(starts(), 4, "{:#?}", node.kubelet.events());
    let logged = agent_log_since(&log, &agent_log);
    assert!(
        logged.contains("the collector received no audit batch"),
        "{logged}"
    );
    // Not retried by itself.
    assert!(node.kubelet.wait_syncs(5, Duration::from_secs(30)).await);
    assert_eq!(starts(), 4);

    // The agent's token without the chart's RBAC (an upgrade that left it out, say): the
    // collector will not say what it received, and the node falls back saying why.
    let no_rights = clusteraudit_testkit::cluster::service_account_token(
        client,
        NAMESPACE,
        "no-rights",
        "clusteraudit",
    )
    .await
    .unwrap();
    crate::support::write(&token_file, &no_rights);
    let metadata_policy = render(&PolicySpec {
        profile: clusteraudit_core::api::Profile::Metadata,
        ..PolicySpec::default()
    })
    .unwrap()
    .yaml;
    let unanswered = revision::build(&metadata_policy, &target(WEBHOOK_TOKEN));
    release(&unanswered).await;
    let fell_back = eventually("the unanswered revision fallen back", READY, async || {
        let report = report().await?;
        if report.last_failed.as_deref() == Some(unanswered.name.as_str()) {
            Ok(report)
        } else {
            Err(format!("{report:?}"))
        }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", agent.log_tail(30)));
    eprintln!("fell back: {fell_back:?}");
    let reason = fell_back.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("no audit batch from node node-1")
            && reason.contains("the collector's last answer: the collector answered 403"),
        "{reason}"
    );
    assert_eq!(fell_back.current, delivering.name);
    assert_eq!(starts(), 6, "{:#?}", node.kubelet.events());
}

/// What the agent logged after `before` (its log read earlier).
fn agent_log_since(log: &std::path::Path, before: &str) -> String {
    let now = std::fs::read_to_string(log).unwrap();
    now.get(before.len()..).unwrap_or_default().to_string()
}

/// The chart's RBAC, rendered by helm for a release named clusteraudit in the test's namespace.
fn apply_chart_rbac(control_plane: &clusteraudit_testkit::ControlPlane) {
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/clusteraudit");
    let rendered = std::process::Command::new(control_plane.binaries().helm())
        .args(["template", "clusteraudit", chart, "--namespace", NAMESPACE])
        .args(["--show-only", "templates/rbac.yaml"])
        .args([
            "--kube-version",
            &clusteraudit_testkit::cluster::kubernetes_version(),
        ])
        .args(["--set", "networkPolicy.allowWebhookFromAnywhere=true"])
        .env("HELM_CACHE_HOME", control_plane.dir().join("helm/cache"))
        .env("HELM_CONFIG_HOME", control_plane.dir().join("helm/config"))
        .env("HELM_DATA_HOME", control_plane.dir().join("helm/data"))
        .output()
        .expect("helm runs");
    assert!(rendered.status.success(), "{rendered:?}");
    let path = control_plane.dir().join("chart-rbac.yaml");
    std::fs::write(&path, &rendered.stdout).unwrap();
    control_plane.apply_file(&path).unwrap();
}
