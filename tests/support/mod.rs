//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::{path::Path, time::Duration};

use clusteraudit::testkit::process::ManagedProcess;

/// The collector binary in its development mode (plain HTTP on loopback, no authentication).
pub struct DevCollector {
    pub process: ManagedProcess,
    pub url: String,
    pub http: reqwest::Client,
}

pub async fn start_dev_collector(data: &Path, log: &Path, port: u16) -> DevCollector {
    clusteraudit::tls::install_crypto_provider();
    let args = vec![
        "collector".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--listen=127.0.0.1:{port}"),
        "--insecure-dev".into(),
        "--max-body-bytes=2097152".into(),
    ];
    let process = ManagedProcess::spawn(
        "collector",
        Path::new(env!("CARGO_BIN_EXE_clusteraudit")),
        &args,
        log,
    )
    .unwrap();
    let collector = DevCollector {
        process,
        url: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = collector
            .http
            .get(format!("{}/readyz", collector.url))
            .send()
            .await
            && response.status().is_success()
        {
            return collector;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready: {}",
            collector.process.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// etcd and one control-plane node, "node-1", whose kube-apiserver the stand-in kubelet runs
/// from its static-pod manifest, with back-off short enough for tests (not yet ready).
pub async fn one_static_pod_node() -> clusteraudit::testkit::ControlPlane {
    let mut control_plane = clusteraudit::testkit::ControlPlane::start_with(
        clusteraudit::testkit::ControlPlaneOptions {
            direct_apiserver: false,
            ..Default::default()
        },
    )
    .await
    .expect("etcd starts");
    control_plane
        .add_static_pod_node("node-1", |kubelet| {
            kubelet.backoff_initial = Duration::from_millis(500);
            kubelet.backoff_max = Duration::from_secs(2);
            kubelet.termination_grace = Duration::from_secs(10);
        })
        .expect("the node starts");
    control_plane
}
