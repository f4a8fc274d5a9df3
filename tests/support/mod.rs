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
