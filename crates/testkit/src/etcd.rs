//! etcd on loopback, in a scratch data directory.

use std::{path::Path, time::Duration};

use super::{
    Binaries, Result, TestkitError, eventually, file_error, free_port, process::ManagedProcess,
};

pub struct Etcd {
    process: ManagedProcess,
    client_url: String,
}

impl Etcd {
    /// Starts etcd with its data under `dir` and waits until it reports healthy.
    pub async fn start(binaries: &Binaries, dir: &Path) -> Result<Etcd> {
        let data_dir = dir.join("etcd-data");
        std::fs::create_dir_all(&data_dir)
            .map_err(file_error("creating the etcd data directory", &data_dir))?;
        let client_url = format!("http://127.0.0.1:{}", free_port()?);
        let peer_url = format!("http://127.0.0.1:{}", free_port()?);
        let args = vec![
            "--name=clusteraudit-test".to_string(),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=clusteraudit-test={peer_url}"),
            // Scratch data on a shared two-core machine: durability of the test cluster's own
            // store is not what the tests are about.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
            "--quota-backend-bytes=4294967296".to_string(),
        ];
        let mut process =
            ManagedProcess::spawn("etcd", &binaries.etcd(), &args, &dir.join("etcd.log"))?;
        let health_url = format!("{client_url}/health");
        let http = reqwest::Client::new();
        let ready = eventually("etcd's /health", Duration::from_secs(60), async || {
            if let Some(status) = process.exit_status() {
                return Ok(Err(TestkitError::ExitedEarly {
                    name: "etcd".into(),
                    status: status.to_string(),
                    log_tail: process.log_tail(30),
                }));
            }
            match http.get(&health_url).send().await {
                Ok(response) if response.status().is_success() => Ok(Ok(())),
                Ok(response) => Err(response.status().to_string()),
                Err(err) => Err(err.to_string()),
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => Ok(Etcd {
                process,
                client_url,
            }),
            Ok(Err(err)) => Err(err),
            Err(timed_out) => Err(TestkitError::NotReady {
                name: "etcd".into(),
                waited: timed_out.waited,
                last_answer: timed_out.last,
                log_tail: process.log_tail(30),
            }),
        }
    }

    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
