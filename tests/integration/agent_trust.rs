//! The agent binary on one control-plane node writes to its host only what it can check: a
//! revision sending the audit stream to another server than its pinned one, or whose content
//! does not have the full hash the status records, is refused with the reason in the node's
//! report, and the kube-apiserver is not restarted; the genuine revision then rolls out, its
//! files readable by root alone. The test plays the operator (the revision Secrets, the status).

use std::{os::unix::fs::PermissionsExt, path::PathBuf, time::Duration};

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
use serde_json::json;

const NAMESPACE: &str = "clusteraudit";
const PINNED: &str = "https://127.0.0.1:9/v1/webhook";
const READY: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn the_agent_refuses_a_foreign_webhook_and_a_forged_hash_and_applies_the_genuine_revision() {
    let played = crate::support::PlayedOperator::start(NAMESPACE, json!({})).await;
    let (control_plane, client, _audits) = (&played.control_plane, &played.client, &played.audits);
    let node = control_plane.node("node-1").unwrap();
    let publish = async |revision: &Revision| played.publish(revision).await;
    let release = async |name: &str, hash: &str| played.release(name, hash).await;

    let ca_pem = std::fs::read_to_string(control_plane.pki_dir().join("ca.crt")).unwrap();
    let policy = render(&PolicySpec::default()).unwrap().yaml;
    let target = |server: &str| WebhookTarget {
        // Nothing listens there: the kube-apiserver starts anyway and retries its batches.
        server: server.into(),
        ca_pem: ca_pem.clone(),
        token: "webhook-token".into(),
    };
    let genuine = revision::build(&policy, &target(PINNED));
    let hostile = revision::build(&policy, &target("https://203.0.113.9/v1/webhook"));

    let state_dir = node.kubernetes_dir.join("clusteraudit");
    let mut args = node.agent_args(NAMESPACE, control_plane.kubeconfig_path());
    args.push(format!("--webhook-server={PINNED}"));
    args.push(format!(
        "--webhook-ca-file={}",
        control_plane.pki_dir().join("ca.crt").display()
    ));
    // No collector here to receive the node's batches (the delivery gate is agent_gate's).
    args.push("--delivery-gate=false".into());
    let log = control_plane.dir().join("agent.log");
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
    let original = std::fs::read(&node.manifest_path).unwrap();
    let starts = || node.kubelet.starts("kube-apiserver").len();
    assert_eq!(starts(), 1);

    // Released with its genuine full hash, but sending the audit stream elsewhere.
    publish(&hostile).await;
    release(&hostile.name, &hostile.hash).await;
    let refused = eventually(
        "the foreign webhook refused",
        Duration::from_secs(60),
        async || {
            let report = report().await?;
            match (&report.refused, &report.refused_reason) {
                (Some(refused), Some(reason)) if *refused == hostile.name => Ok(reason.clone()),
                _ => Err(format!("{report:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", agent.log_tail(30)));
    eprintln!("refused: {refused}");
    assert!(
        refused.contains("203.0.113.9") && refused.contains("not to the pinned webhook server"),
        "{refused}"
    );

    // The genuine content, but the status records another full hash (what a forger who can
    // write Secrets but not the status would face: the name's 40 bits match, the rest not).
    publish(&genuine).await;
    let forged = format!("{}{}", &genuine.hash[..10], "0".repeat(54));
    release(&genuine.name, &forged).await;
    let refused = eventually(
        "the unrecorded hash refused",
        Duration::from_secs(60),
        async || {
            let report = report().await?;
            match (&report.refused, &report.refused_reason) {
                (Some(refused), Some(reason)) if *refused == genuine.name => Ok(reason.clone()),
                _ => Err(format!("{report:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", agent.log_tail(30)));
    eprintln!("refused: {refused}");
    assert!(refused.contains("the status records"), "{refused}");
    // Nothing of either was written, nothing restarted.
    assert_eq!(std::fs::read(&node.manifest_path).unwrap(), original);
    assert!(!state_dir.join(&hostile.name).exists());
    assert!(!state_dir.join(&genuine.name).exists());
    assert_eq!(starts(), 1, "{:#?}", node.kubelet.events());

    // The hash the operator records: rolled out, the refusal gone, the token root's alone.
    release(&genuine.name, &genuine.hash).await;
    let report = eventually("the genuine revision rolled out", READY, async || {
        let report = report().await?;
        if report.current == genuine.name && report.applying.is_none() {
            Ok(report)
        } else {
            Err(format!("{report:?}"))
        }
    })
    .await
    .unwrap_or_else(|err| panic!("{err}\n{}", agent.log_tail(30)));
    assert_eq!(report.refused, None);
    assert_eq!(starts(), 2, "{:#?}", node.kubelet.events());
    let mode = |path: PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(state_dir.join(&genuine.name).join("webhook.kubeconfig")),
        0o600
    );
    assert_eq!(mode(state_dir.clone()), 0o700);
}
