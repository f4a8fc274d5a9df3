//! Applying a revision to this node's kube-apiserver, safely.
//!
//! The agent writes the revision's files into their own directory, keeps the manifest it found
//! before auditing (byte for byte) and the last one that came up healthy, rewrites the
//! static-pod manifest atomically, and waits for the kube-apiserver the kubelet restarts to be
//! ready and (with the delivery gate, [`crate::delivery`]) for the collector to receive a batch
//! from it. If either does not happen within the health timeout, the last known good manifest
//! goes back and the failure is reported; the same revision is never retried by itself. Progress is kept
//! in a state file, so an agent restarted midway resumes without restarting kube-apiserver again.
//!
//! What to do next is decided in [`crate::step`]; this carries it out on the node.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use clusteraudit_core::rollout::manifest::{ManifestError, apply_audit};
use clusteraudit_core::rollout::revision::Revision;
use clusteraudit_io::{FileError, file_error};

use crate::delivery::Asker;
pub use crate::step::NodeState;
use crate::step::{Action, Facts, Goal, Outcome, Rollout};

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
    #[error(transparent)]
    File(#[from] FileError),
    #[error("building the readiness client: {0}")]
    ReadinessClient(#[source] reqwest::Error),
    #[error("the manifest cannot be edited: {0}")]
    Manifest(#[from] ManifestError),
    #[error("the state file {path} is damaged: {message}")]
    State { path: PathBuf, message: String },
    #[error(
        "revision {revision} fell back: {reason}; the last known good manifest is back ({restored})"
    )]
    FellBack {
        revision: String,
        reason: String,
        /// Whether the restored kube-apiserver came back ready.
        restored: String,
    },
    #[error("revision {0} failed here before; it is not retried by itself")]
    KnownBad(String),
    #[error("the kube-apiserver did not come back after restoring the manifest within {0:?}")]
    NotRestored(Duration),
}

pub struct Node {
    paths: NodePaths,
    http: reqwest::Client,
}

const ORIGINAL: &str = "original-kube-apiserver.yaml";
const LAST_GOOD: &str = "last-good-kube-apiserver.yaml";
const STATE: &str = "state.json";
/// The agent's files and directories on the host: root's alone (a revision holds the webhook
/// token; the kube-apiserver reads them as root).
const PRIVATE: u32 = 0o600;
const PRIVATE_DIR: u32 = 0o700;

fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
        .map_err(file_error("creating", dir))
}

impl Node {
    pub fn new(paths: NodePaths) -> Result<Node, NodeError> {
        clusteraudit_io::tls::install_crypto_provider();
        create_private_dir(&paths.state_dir)?;
        // A directory made by an earlier version may be open to everyone, with revisions
        // (tokens) in it.
        std::fs::set_permissions(
            &paths.state_dir,
            std::os::unix::fs::PermissionsExt::from_mode(PRIVATE_DIR),
        )
        .map_err(file_error("narrowing", &paths.state_dir))?;
        // Like the kubelet's probes, readiness is asked of the local endpoint without checking
        // its certificate: the answer matters, not who gives it.
        let http = reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(NodeError::ReadinessClient)?;
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
            Err(source) => Err(FileError {
                what: "reading",
                path,
                source,
            }
            .into()),
        }
    }

    fn save_state(&self, state: &NodeState) -> Result<(), NodeError> {
        let bytes = serde_json::to_vec_pretty(state).expect("the state serializes");
        self.replace(&self.paths.state_dir.join(STATE), &bytes)
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, NodeError> {
        Ok(std::fs::read(path).map_err(file_error("reading", path))?)
    }

    /// Replaces one of the agent's own files whole (they may hold the webhook token): readable
    /// by root alone.
    fn replace(&self, path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
        clusteraudit_io::fsutil::replace_file(path, bytes, PRIVATE)
            .map_err(file_error("replacing", path))?;
        Ok(())
    }

    /// Replaces the static-pod manifest whole, keeping the mode it has.
    fn replace_manifest(&self, bytes: &[u8]) -> Result<(), NodeError> {
        let path = &self.paths.manifest;
        let mode = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
            .map_err(file_error("reading the mode of", path))?;
        clusteraudit_io::fsutil::replace_file(path, bytes, mode)
            .map_err(file_error("replacing", path))?;
        Ok(())
    }

    /// Brings this node to `revision`, or back to where it was if the revision does not come up:
    /// ready, and with `gate`, its batches received by the collector. `revision` holds the
    /// files as this node writes them (its webhook kubeconfig names the node).
    pub async fn apply(
        &self,
        revision: &Revision,
        health_timeout: Duration,
        gate: Option<&Asker>,
    ) -> Result<NodeState, NodeError> {
        let state = self.state()?;
        let current = self.read(&self.paths.manifest)?;
        let settings = revision.audit_settings(&self.paths.state_dir.display().to_string());
        let desired = apply_audit(&String::from_utf8_lossy(&current), &settings)?;
        let mut facts = Facts {
            state,
            original_saved: self.audited(),
            manifest_matches: current == desired.as_bytes(),
        };
        let mut rollout = Rollout::new(
            Goal::Revision {
                name: revision.name.clone(),
                hash: revision.hash.clone(),
            },
            health_timeout,
        );
        if let Some(gate) = gate {
            rollout = rollout.with_delivery_gate(gate.node());
        }
        let mut ready = None;
        // What the collector said last when it did not say yes: a fall back for want of a
        // batch says why (a refused token, the collector unreachable).
        let mut collector_problem: Option<String> = None;
        let mut ready_seen: Option<Instant> = None;
        loop {
            match rollout.step(&facts, ready.take(), Instant::now()) {
                Action::SaveOriginal => {
                    self.replace(&self.paths.state_dir.join(ORIGINAL), &current)?;
                    facts.original_saved = true;
                }
                Action::Apply {
                    last_good,
                    manifest,
                    state,
                } => {
                    let dir = PathBuf::from(&settings.dir);
                    create_private_dir(&dir)?;
                    for (name, content) in &revision.files {
                        self.replace(&dir.join(name), content.as_bytes())?;
                    }
                    if last_good {
                        self.replace(&self.paths.state_dir.join(LAST_GOOD), &current)?;
                    }
                    self.save_state(&state)?;
                    facts.state = state;
                    if manifest {
                        self.replace_manifest(desired.as_bytes())?;
                    }
                    facts.manifest_matches = true;
                }
                Action::CheckHealth { .. } => ready = Some(self.ready().await),
                Action::CheckDelivery { since, .. } => {
                    let gate = gate.expect("only a gated rollout asks the collector");
                    ready_seen.get_or_insert(since);
                    let wall_since = SystemTime::now() - since.elapsed();
                    ready = Some(match gate.received_since(wall_since).await {
                        Ok(received) => {
                            collector_problem = None;
                            received
                        }
                        Err(err) => {
                            let problem = err.to_string();
                            if collector_problem.as_ref() != Some(&problem) {
                                tracing::warn!(revision = %revision.name, %problem, "asking the collector for this node's batches");
                            }
                            collector_problem = Some(problem);
                            false
                        }
                    });
                }
                Action::WaitUntil(at) => tokio::time::sleep_until(at.into()).await,
                Action::FallBack { reason } => {
                    tracing::warn!(revision = %revision.name, %reason, "putting the last known good manifest back");
                    let bytes = self.read(&self.paths.state_dir.join(LAST_GOOD))?;
                    self.replace_manifest(&bytes)?;
                    facts.manifest_matches = false;
                }
                Action::Restore | Action::Forget => {
                    unreachable!("applying a revision never restores the original")
                }
                Action::Finish {
                    mut save,
                    mut outcome,
                } => {
                    if let (Outcome::FellBack { reason, .. }, Some(problem), Some(_)) =
                        (&mut outcome, &collector_problem, ready_seen)
                    {
                        *reason = format!("{reason} (the collector's last answer: {problem})");
                        if let Some(state) = save.as_mut() {
                            state.reason = Some(reason.clone());
                        }
                    }
                    if let Some(state) = save {
                        self.save_state(&state)?;
                        facts.state = state;
                    }
                    return match outcome {
                        Outcome::Current { waited } => {
                            if let Some(waited) = waited {
                                tracing::info!(
                                    revision = %revision.name,
                                    manifest_written_to_ready_ms = waited.as_millis() as u64,
                                    ready_to_batch_received_ms = ready_seen.map(|at| at.elapsed().as_millis() as u64),
                                    "the kube-apiserver is ready with the revision"
                                );
                            }
                            Ok(facts.state)
                        }
                        Outcome::KnownBad => Err(NodeError::KnownBad(revision.name.clone())),
                        Outcome::FellBack { restored, reason } => Err(NodeError::FellBack {
                            revision: revision.name.clone(),
                            reason,
                            restored: if restored {
                                "ready again"
                            } else {
                                "not ready yet"
                            }
                            .into(),
                        }),
                        Outcome::Restored | Outcome::NotRestored => {
                            unreachable!("applying a revision never restores the original")
                        }
                    };
                }
            }
        }
    }

    /// Turns auditing off: the manifest found before auditing goes back, byte for byte.
    pub async fn restore_original(&self, health_timeout: Duration) -> Result<(), NodeError> {
        let original = std::fs::read(self.paths.state_dir.join(ORIGINAL)).ok();
        let manifest_matches = match &original {
            Some(original) => self.read(&self.paths.manifest)? == *original,
            None => false,
        };
        let mut facts = Facts {
            state: NodeState::default(),
            original_saved: original.is_some(),
            manifest_matches,
        };
        let mut rollout = Rollout::new(Goal::Original, health_timeout);
        let mut ready = None;
        loop {
            match rollout.step(&facts, ready.take(), Instant::now()) {
                Action::Restore => {
                    let original = original.as_deref().expect("restoring needs the original");
                    self.replace_manifest(original)?;
                    facts.manifest_matches = true;
                }
                Action::CheckHealth { .. } => ready = Some(self.ready().await),
                Action::WaitUntil(at) => tokio::time::sleep_until(at.into()).await,
                Action::CheckDelivery { .. } => {
                    unreachable!("restoring the original does not wait for the collector")
                }
                Action::Forget => {
                    self.save_state(&NodeState::default())?;
                    for file in [ORIGINAL, LAST_GOOD] {
                        let path = self.paths.state_dir.join(file);
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                            Err(source) => {
                                return Err(FileError {
                                    what: "removing",
                                    path,
                                    source,
                                }
                                .into());
                            }
                        }
                    }
                    facts = Facts::default();
                }
                Action::Finish { save, outcome } => {
                    if let Some(state) = save {
                        self.save_state(&state)?;
                    }
                    return match outcome {
                        Outcome::Restored => Ok(()),
                        Outcome::NotRestored => Err(NodeError::NotRestored(health_timeout)),
                        other => unreachable!("restoring the original ends {other:?}"),
                    };
                }
                Action::SaveOriginal | Action::Apply { .. } | Action::FallBack { .. } => {
                    unreachable!("restoring the original applies no revision")
                }
            }
        }
    }

    /// Whether the agent has changed this node's manifest (and so has an original to restore).
    pub fn audited(&self) -> bool {
        self.paths.state_dir.join(ORIGINAL).exists()
    }

    /// One readiness question to this node's kube-apiserver.
    async fn ready(&self) -> bool {
        self.http
            .get(&self.paths.readyz_url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, os::unix::fs::PermissionsExt};

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    const MANIFEST: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: kube-apiserver}\nspec:\n  containers:\n  - name: kube-apiserver\n    command: [kube-apiserver]\n";

    #[tokio::test]
    async fn the_token_is_written_for_root_alone_and_the_manifest_keeps_its_mode() {
        let host = tempfile::tempdir().unwrap();
        let manifests = host.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        let manifest = manifests.join("kube-apiserver.yaml");
        std::fs::write(&manifest, MANIFEST).unwrap();
        std::fs::set_permissions(&manifest, std::fs::Permissions::from_mode(0o640)).unwrap();
        let state_dir = host.path().join("clusteraudit");
        std::fs::create_dir(&state_dir).unwrap();
        std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let node = Node::new(NodePaths {
            manifest: manifest.clone(),
            state_dir: state_dir.clone(),
            // Nothing answers: the revision falls back, its files stay.
            readyz_url: "http://127.0.0.1:9/readyz".into(),
        })
        .unwrap();
        assert_eq!(mode(&state_dir), 0o700);
        let revision = Revision::new(
            BTreeMap::from([("webhook.kubeconfig".to_string(), "token: t0ken".to_string())]),
            Vec::new(),
        );
        let err = node
            .apply(&revision, Duration::from_millis(200), None)
            .await
            .unwrap_err();
        assert!(matches!(err, NodeError::FellBack { .. }), "{err}");
        let dir = state_dir.join(&revision.name);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("webhook.kubeconfig")), 0o600);
        for file in [STATE, ORIGINAL, LAST_GOOD] {
            assert_eq!(mode(&state_dir.join(file)), 0o600, "{file}");
        }
        assert_eq!(mode(&manifest), 0o640);
        assert_eq!(std::fs::read_to_string(&manifest).unwrap(), MANIFEST);
        // No temporary file is left in the manifest directory, where the kubelet looks.
        assert_eq!(std::fs::read_dir(&manifests).unwrap().count(), 1);
    }
}
