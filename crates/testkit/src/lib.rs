//! The test kit: a real control plane for tests and local demos (etcd and kube-apiservers started
//! as processes on loopback, a stand-in kubelet that runs static-pod manifests), certificates for
//! them, and the demo. Never shipped: the tests use it as a dev-dependency, and a person runs it as
//! `clusteraudit-dev`.

pub mod alerting;
pub mod binaries;
pub mod cli;
pub mod cluster;
pub mod demo;
pub mod etcd;
pub mod eventually;
pub mod kubelet;
pub mod manifest;
pub mod opensearch;
pub mod pki;
pub mod process;

use std::{path::PathBuf, time::Duration};

pub use alerting::{Alertmanager, Prometheus, Promtool};
pub use binaries::Binaries;
pub use cluster::{ControlPlane, ControlPlaneOptions, StaticPodNode, TestUser, collector_rbac};
pub use eventually::{TimedOut, eventually, eventually_blocking};
pub use kubelet::{Kubelet, KubeletEvent, KubeletOptions};
pub use opensearch::OpenSearch;

#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("the control-plane binaries are not available: {0}")]
    BinariesUnavailable(String),
    #[error("Alertmanager and Prometheus are not available: {0}")]
    AlertingUnavailable(String),
    #[error(transparent)]
    File(#[from] clusteraudit_io::FileError),
    #[error("minting certificates: {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("no free loopback port: {0}")]
    NoFreePort(#[source] std::io::Error),
    #[error("starting {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before it was ready; its log ends with:\n{log_tail}")]
    ExitedEarly {
        name: String,
        status: String,
        log_tail: String,
    },
    #[error(
        "{name} was not ready after {waited:.1?} (last answer: {last_answer}); its log ends with:\n{log_tail}"
    )]
    NotReady {
        name: String,
        waited: Duration,
        last_answer: String,
        log_tail: String,
    },
    #[error("building a kube client: {0}")]
    Client(String),
    #[error("the static-pod manifest {path} is not usable: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("encoding {what}: {reason}")]
    Encode { what: &'static str, reason: String },
}

pub(crate) use clusteraudit_io::file_error;

pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

/// A loopback port nobody listens on right now. Ports handed out before are never handed out
/// again by this process, so concurrent starts in one test binary do not collide.
pub fn free_port() -> Result<u16> {
    use std::{collections::HashSet, net::TcpListener, sync::Mutex};
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..64 {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .map_err(TestkitError::NoFreePort)?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(TestkitError::NoFreePort(std::io::Error::other(
        "the kernel kept offering ports already handed out",
    )))
}

/// Waits a minute at most for a server of the binary (the collector) at `url` to answer `/readyz`
/// with a success; a timeout says what it answered last.
pub async fn readyz(http: &reqwest::Client, url: &str) -> Result<(), TimedOut<String>> {
    eventually(
        "the collector's /readyz",
        Duration::from_secs(60),
        async || match http.get(format!("{url}/readyz")).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(response.status().to_string()),
            Err(err) => Err(err.to_string()),
        },
    )
    .await
}
