//! The agent on one control-plane node, with the real kube-apiserver run from its static-pod
//! manifest by the stand-in kubelet: a revision rolls out with one restart, a revision that
//! cannot start falls back to the last known good manifest, and disabling restores the original
//! manifest byte for byte.

use std::time::Duration;

use clusteraudit_agent::node::{Node, NodeError, NodePaths};
use clusteraudit_core::{
    api::PolicySpec,
    policy::render,
    rollout::revision::{self, WebhookTarget},
};
use clusteraudit_testkit::KubeletEvent;

const READY: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the control plane: scripts/test runs it"]
async fn a_revision_rolls_out_falls_back_and_is_undone() {
    let control_plane = crate::support::one_static_pod_node().await;
    let node = control_plane.node("node-1").unwrap();
    assert!(node.wait_ready(READY).await, "{:#?}", node.kubelet.events());
    let original = std::fs::read(&node.manifest_path).unwrap();
    let agent = Node::new(NodePaths {
        manifest: node.manifest_path.clone(),
        state_dir: node.kubernetes_dir.join("clusteraudit"),
        readyz_url: format!("https://127.0.0.1:{}/readyz", node.port),
    })
    .unwrap();
    let target = WebhookTarget {
        // Nothing listens there: the kube-apiserver starts anyway and retries its batches.
        server: "https://127.0.0.1:9/v1/webhook".into(),
        ca_pem: std::fs::read_to_string(control_plane.pki_dir().join("ca.crt")).unwrap(),
        token: "webhook-token".into(),
    };
    let good = revision::build(&render(&PolicySpec::default()).unwrap().yaml, &target);
    let starts = || node.kubelet.starts("kube-apiserver").len();
    assert_eq!(starts(), 1);

    // A revision rolls out with exactly one restart, and the kube-apiserver runs with it.
    let state = agent
        .apply(&good, Duration::from_secs(120))
        .await
        .expect("the revision rolls out");
    assert_eq!(state.current.as_deref(), Some(good.name.as_str()));
    assert!(node.wait_ready(READY).await);
    assert_eq!(starts(), 2, "{:#?}", node.kubelet.events());
    let KubeletEvent::ContainerStarted { argv, .. } =
        node.kubelet.starts("kube-apiserver").pop().unwrap()
    else {
        unreachable!()
    };
    assert!(
        argv.iter()
            .any(|a| a.starts_with("--audit-policy-file=") && a.contains(&good.name)),
        "{argv:?}"
    );
    assert!(
        argv.iter().any(|a| a == "--audit-webhook-mode=batch"),
        "{argv:?}"
    );

    // Applying it again restarts nothing.
    agent.apply(&good, Duration::from_secs(120)).await.unwrap();
    assert!(node.kubelet.wait_syncs(5, Duration::from_secs(30)).await);
    assert_eq!(starts(), 2);

    // A revision the kube-apiserver refuses: back to the last known good manifest, reported,
    // and not retried by itself.
    let mut bad = revision::build(
        &render(&PolicySpec {
            profile: clusteraudit_core::api::Profile::Metadata,
            ..PolicySpec::default()
        })
        .unwrap()
        .yaml,
        &target,
    );
    bad.name = "rev-unstartable".into();
    for (flag, value) in bad.flags.iter_mut() {
        if flag == "--audit-webhook-mode" {
            *value = "bogus".into();
        }
    }
    let good_manifest = std::fs::read(&node.manifest_path).unwrap();
    let err = agent
        .apply(&bad, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, NodeError::FellBack { revision, .. } if revision == "rev-unstartable"),
        "{err}"
    );
    assert!(err.to_string().contains("ready again"), "{err}");
    assert_eq!(std::fs::read(&node.manifest_path).unwrap(), good_manifest);
    assert!(node.wait_ready(READY).await);
    let state = agent.state().unwrap();
    assert_eq!(state.current.as_deref(), Some(good.name.as_str()));
    assert_eq!(state.last_failed.as_deref(), Some("rev-unstartable"));
    assert!(matches!(
        agent.apply(&bad, Duration::from_secs(30)).await,
        Err(NodeError::KnownBad(_))
    ));

    // Disabling puts back the manifest found before auditing, byte for byte.
    agent
        .restore_original(Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&node.manifest_path).unwrap(), original);
    assert!(node.wait_ready(READY).await);
    let KubeletEvent::ContainerStarted { argv, .. } =
        node.kubelet.starts("kube-apiserver").pop().unwrap()
    else {
        unreachable!()
    };
    assert!(!argv.iter().any(|a| a.starts_with("--audit-")), "{argv:?}");
}
