//! Applying a revision to this node's kube-apiserver, safely.
//!
//! The agent writes the revision's files into their own directory, keeps the manifest it found
//! before auditing (byte for byte) and the last one that came up healthy, rewrites the
//! static-pod manifest atomically, and waits for the kube-apiserver the kubelet restarts to be
//! ready. If it is not ready within the health timeout, the last known good manifest goes back
//! and the failure is reported; the same revision is never retried by itself. Progress is kept
//! in a state file, so an agent restarted midway resumes without restarting kube-apiserver again.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use clusteraudit_core::rollout::manifest::{ManifestError, apply_audit};
use clusteraudit_core::rollout::revision::Revision;

/// Where things are on this node.
#[derive(Clone, Debug)]
pub struct NodePaths {
    /// The kube-apiserver's static-pod manifest.
    pub manifest: PathBuf,
    /// The agent's own directory on the node (revisions, saved manifests, state).
    pub state_dir: PathBuf,
    /// The node's kube-apiserver readiness endpoint.
    pub readyz_url: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the manifest cannot be edited: {0}")]
    Manifest(#[from] ManifestError),
    #[error("the state file {path} is damaged: {message}")]
    State { path: PathBuf, message: String },
    #[error(
        "revision {revision} did not become ready within {timeout:?}; the last known good manifest is back ({restored})"
    )]
    FellBack {
        revision: String,
        timeout: Duration,
        /// Whether the restored kube-apiserver came back ready.
        restored: String,
    },
    #[error("revision {0} failed here before; it is not retried by itself")]
    KnownBad(String),
    #[error("the kube-apiserver did not come back after restoring the manifest within {0:?}")]
    NotRestored(Duration),
}

fn io<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> NodeError + 'p {
    move |source| NodeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What the agent remembers on the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// The revision the running kube-apiserver was last seen ready with.
    pub current: Option<String>,
    /// A revision being applied: the manifest may already name it.
    pub applying: Option<String>,
    pub last_failed: Option<String>,
    pub reason: Option<String>,
}

pub struct Node {
    paths: NodePaths,
    http: reqwest::Client,
}

const ORIGINAL: &str = "original-kube-apiserver.yaml";
const LAST_GOOD: &str = "last-good-kube-apiserver.yaml";
const STATE: &str = "state.json";

impl Node {
    pub fn new(paths: NodePaths) -> Result<Node, NodeError> {
        clusteraudit_io::tls::install_crypto_provider();
        std::fs::create_dir_all(&paths.state_dir).map_err(io("creating", &paths.state_dir))?;
        // Like the kubelet's probes, readiness is asked of the local endpoint without checking
        // its certificate: the answer matters, not who gives it.
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|err| NodeError::Io {
                what: "building the readiness client for",
                path: paths.state_dir.clone(),
                source: std::io::Error::other(err),
            })?;
        Ok(Node { paths, http })
    }

    pub fn state(&self) -> Result<NodeState, NodeError> {
        let path = self.paths.state_dir.join(STATE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| NodeError::State {
                path,
                message: err.to_string(),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(NodeState::default()),
            Err(source) => Err(NodeError::Io {
                what: "reading",
                path,
                source,
            }),
        }
    }

    fn save_state(&self, state: &NodeState) -> Result<(), NodeError> {
        let bytes = serde_json::to_vec_pretty(state).expect("the state serializes");
        write_atomically(
            &self.paths.state_dir,
            &self.paths.state_dir.join(STATE),
            &bytes,
        )
    }

    /// The manifest found before auditing, saved the first time the agent touches it.
    fn original(&self) -> Result<Vec<u8>, NodeError> {
        let saved = self.paths.state_dir.join(ORIGINAL);
        if let Ok(bytes) = std::fs::read(&saved) {
            return Ok(bytes);
        }
        let bytes =
            std::fs::read(&self.paths.manifest).map_err(io("reading", &self.paths.manifest))?;
        write_atomically(&self.paths.state_dir, &saved, &bytes)?;
        Ok(bytes)
    }

    /// Brings this node to `revision`, or back to where it was if the revision does not come up.
    pub async fn apply(
        &self,
        revision: &Revision,
        health_timeout: Duration,
    ) -> Result<NodeState, NodeError> {
        let mut state = self.state()?;
        if state.current.as_deref() == Some(&revision.name) && state.applying.is_none() {
            return Ok(state);
        }
        if state.last_failed.as_deref() == Some(&revision.name) {
            return Err(NodeError::KnownBad(revision.name.clone()));
        }
        self.original()?;
        let current =
            std::fs::read(&self.paths.manifest).map_err(io("reading", &self.paths.manifest))?;
        let settings = revision.audit_settings(&self.paths.state_dir.display().to_string());
        let desired = apply_audit(&String::from_utf8_lossy(&current), &settings)?;

        if state.applying.as_deref() != Some(&revision.name) || current != desired.as_bytes() {
            // The files first, so the manifest never names a file that is not there yet.
            let dir = PathBuf::from(&settings.dir);
            std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
            for (name, content) in &revision.files {
                write_atomically(&self.paths.state_dir, &dir.join(name), content.as_bytes())?;
            }
            if state.applying.is_none() {
                write_atomically(
                    &self.paths.state_dir,
                    &self.paths.state_dir.join(LAST_GOOD),
                    &current,
                )?;
            }
            state.applying = Some(revision.name.clone());
            self.save_state(&state)?;
            if current != desired.as_bytes() {
                write_atomically(
                    &self.paths.state_dir,
                    &self.paths.manifest,
                    desired.as_bytes(),
                )?;
            }
        }
        // Resuming after a crash lands here too: the manifest already names the revision.
        let waiting = Instant::now();
        if self.wait_restarted_and_ready(health_timeout).await {
            tracing::info!(
                revision = %revision.name,
                manifest_written_to_ready_ms = waiting.elapsed().as_millis() as u64,
                "the kube-apiserver is ready with the revision"
            );
            state.current = Some(revision.name.clone());
            state.applying = None;
            self.save_state(&state)?;
            return Ok(state);
        }
        let good = self.paths.state_dir.join(LAST_GOOD);
        let bytes = std::fs::read(&good).map_err(io("reading", &good))?;
        write_atomically(&self.paths.state_dir, &self.paths.manifest, &bytes)?;
        let restored = self.wait_restarted_and_ready(health_timeout).await;
        state.applying = None;
        state.last_failed = Some(revision.name.clone());
        state.reason = Some(format!("not ready within {health_timeout:?}"));
        self.save_state(&state)?;
        Err(NodeError::FellBack {
            revision: revision.name.clone(),
            timeout: health_timeout,
            restored: if restored {
                "ready again"
            } else {
                "not ready yet"
            }
            .into(),
        })
    }

    /// Turns auditing off: the manifest found before auditing goes back, byte for byte.
    pub async fn restore_original(&self, health_timeout: Duration) -> Result<(), NodeError> {
        let saved = self.paths.state_dir.join(ORIGINAL);
        let Ok(original) = std::fs::read(&saved) else {
            return Ok(());
        };
        let current =
            std::fs::read(&self.paths.manifest).map_err(io("reading", &self.paths.manifest))?;
        if current != original {
            write_atomically(&self.paths.state_dir, &self.paths.manifest, &original)?;
            if !self.wait_restarted_and_ready(health_timeout).await {
                return Err(NodeError::NotRestored(health_timeout));
            }
        }
        self.save_state(&NodeState::default())?;
        // The next time auditing is switched on, the manifest found then is the original: it
        // may have been upgraded in between.
        for file in [ORIGINAL, LAST_GOOD] {
            let path = self.paths.state_dir.join(file);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(NodeError::Io {
                        what: "removing",
                        path,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether the agent has changed this node's manifest (and so has an original to restore).
    pub fn audited(&self) -> bool {
        self.paths.state_dir.join(ORIGINAL).exists()
    }

    /// Waits until the kube-apiserver has gone away (the kubelet restarting it) and is ready
    /// again; or, if it never goes away (nothing changed for the kubelet), until it is ready.
    async fn wait_restarted_and_ready(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        let mut went_away = false;
        // The kubelet notices a manifest change within seconds; if the kube-apiserver is still
        // answering after this long, nothing is restarting it.
        let restart_grace = Duration::from_secs(20).min(timeout);
        while started.elapsed() < timeout {
            let ready = self
                .http
                .get(&self.paths.readyz_url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ready {
                went_away = true;
            } else if went_away || started.elapsed() >= restart_grace {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

/// Replaces a file whole, with the temporary file in `scratch` (the agent's own directory, never
/// the manifest directory).
fn write_atomically(scratch: &Path, path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    clusteraudit_io::fsutil::write_atomically(scratch, path, bytes).map_err(io("replacing", path))
}
