//! The agent on one control-plane node, with the real kube-apiserver run from its static-pod
//! manifest by the stand-in kubelet: a revision rolls out with one restart, its batches posted
//! to the node's own webhook path; a revision that cannot start falls back to the last known
//! good manifest, and disabling restores the original manifest byte for byte.

use std::{
    io::{BufRead, BufReader, Read, Write},
    sync::{Arc, Mutex},
    time::Duration,
};

use clusteraudit_agent::{
    delivery,
    node::{Node, NodeError, NodePaths},
};
use clusteraudit_core::{
    api::PolicySpec,
    policy::render,
    rollout::revision::{self, WebhookTarget},
};
use clusteraudit_testkit::{KubeletEvent, eventually};

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
    let (webhook, posted) = record_posts();
    let target = WebhookTarget {
        server: format!("{webhook}/v1/webhook"),
        ca_pem: std::fs::read_to_string(control_plane.pki_dir().join("ca.crt")).unwrap(),
        token: "webhook-token".into(),
    };
    let good = revision::build(&render(&PolicySpec::default()).unwrap().yaml, &target);
    // As the agent writes it on node-1.
    let mut good_here = good.clone();
    good_here.files.insert(
        revision::WEBHOOK_CONFIG_FILE.into(),
        delivery::kubeconfig_for_node(&good.files[revision::WEBHOOK_CONFIG_FILE], "node-1")
            .unwrap(),
    );
    let starts = || node.kubelet.starts("kube-apiserver").len();
    assert_eq!(starts(), 1);

    // A revision rolls out with exactly one restart, and the kube-apiserver runs with it.
    let state = agent
        .apply(&good_here, Duration::from_secs(120), None)
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
    // The kube-apiserver posts its batches to the path the kubeconfig names, node and all:
    // that is how the collector tells the nodes apart.
    let paths = eventually(
        "a batch posted to the node's webhook path",
        Duration::from_secs(60),
        async || {
            let paths = posted.lock().unwrap().clone();
            if paths.is_empty() { Err(()) } else { Ok(paths) }
        },
    )
    .await
    .unwrap();
    // (It adds its request timeout as a query parameter.)
    assert!(
        paths
            .iter()
            .all(|p| p.split('?').next() == Some("POST /v1/webhook/node-1")),
        "{paths:?}"
    );

    // Applying it again restarts nothing.
    agent
        .apply(&good_here, Duration::from_secs(120), None)
        .await
        .unwrap();
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
        .apply(&bad, Duration::from_secs(30), None)
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
        agent.apply(&bad, Duration::from_secs(30), None).await,
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

/// A plain HTTP webhook on loopback answering 200 to everything, recording each request's method
/// and path: what the kube-apiserver's audit webhook client puts on the wire.
fn record_posts() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let posted = Arc::new(Mutex::new(Vec::new()));
    let record = posted.clone();
    std::thread::spawn(move || {
        for connection in listener.incoming() {
            let Ok(connection) = connection else { continue };
            let record = record.clone();
            std::thread::spawn(move || {
                let mut writer = connection.try_clone().unwrap();
                let mut reader = BufReader::new(connection);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let mut words = request_line.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    record.lock().unwrap().push(format!("{method} {path}"));
                    if writer
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (url, posted)
}
