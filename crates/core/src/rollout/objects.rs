//! The Kubernetes objects the operator and the agents share, as pure conversions: a revision kept
//! in a Secret (it holds the webhook token), and each node's report kept in a Lease.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{coordination::v1::Lease, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference},
};

use super::revision::Revision;

/// Label on every revision Secret; its value is the revision's name.
pub const REVISION_LABEL: &str = "clusteraudit.io/revision";
/// Label on every node report Lease; its value is the node's name.
pub const NODE_REPORT_LABEL: &str = "clusteraudit.io/node-report";
/// The Lease an agent holds while it restarts its kube-apiserver: one node at a time.
pub const ROLLOUT_LEASE: &str = "clusteraudit-rollout";
/// The Lease the operator replicas elect their leader with.
pub const LEADER_LEASE: &str = "clusteraudit-operator";
/// The Secret holding the token the kube-apiserver presents to the collector's webhook.
pub const WEBHOOK_TOKEN_SECRET: &str = "clusteraudit-webhook-token";
pub const WEBHOOK_TOKEN_KEY: &str = "token";
const FLAGS_KEY: &str = "flags.json";
const HASH_ANNOTATION: &str = "clusteraudit.io/revision-hash";

pub fn revision_secret_name(revision: &str) -> String {
    format!("clusteraudit-{revision}")
}

pub fn node_report_name(node: &str) -> String {
    format!("clusteraudit-node-{node}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    #[error("revision Secret {secret} is missing {key}")]
    MissingKey { secret: String, key: String },
    #[error("revision Secret {secret} has unreadable {key}: {message}")]
    Unreadable {
        secret: String,
        key: String,
        message: String,
    },
    #[error("revision Secret {secret} holds {actual}, not {expected}: its content was changed")]
    Tampered {
        secret: String,
        expected: String,
        actual: String,
    },
}

/// The Secret holding `revision`, owned by the ClusterAudit (`owner`), so it goes with it.
pub fn revision_secret(revision: &Revision, namespace: &str, owner: OwnerReference) -> Secret {
    let mut data: BTreeMap<String, ByteString> = revision
        .files
        .iter()
        .map(|(name, content)| (name.clone(), ByteString(content.clone().into_bytes())))
        .collect();
    data.insert(
        FLAGS_KEY.into(),
        ByteString(serde_json::to_vec(&revision.flags).expect("flags serialize")),
    );
    Secret {
        metadata: ObjectMeta {
            name: Some(revision_secret_name(&revision.name)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([
                (REVISION_LABEL.into(), revision.name.clone()),
                ("app.kubernetes.io/managed-by".into(), "clusteraudit".into()),
            ])),
            annotations: Some(BTreeMap::from([(
                HASH_ANNOTATION.into(),
                revision.hash.clone(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        immutable: Some(true),
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The revision a Secret holds, checked against the name it is known by: content-addressed, so a
/// Secret edited by hand is refused rather than rolled out.
pub fn revision_from_secret(secret: &Secret, expected: &str) -> Result<Revision, ObjectError> {
    let secret_name = secret.metadata.name.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let text = |key: &str| -> Result<String, ObjectError> {
        let bytes = data.get(key).ok_or_else(|| ObjectError::MissingKey {
            secret: secret_name.clone(),
            key: key.into(),
        })?;
        String::from_utf8(bytes.0.clone()).map_err(|err| ObjectError::Unreadable {
            secret: secret_name.clone(),
            key: key.into(),
            message: err.to_string(),
        })
    };
    let flags: Vec<(String, String)> =
        serde_json::from_str(&text(FLAGS_KEY)?).map_err(|err| ObjectError::Unreadable {
            secret: secret_name.clone(),
            key: FLAGS_KEY.into(),
            message: err.to_string(),
        })?;
    let mut files = BTreeMap::new();
    for key in data.keys().filter(|k| k.as_str() != FLAGS_KEY) {
        files.insert(key.clone(), text(key)?);
    }
    let revision = Revision::new(files, flags);
    if revision.name != expected {
        return Err(ObjectError::Tampered {
            secret: secret_name,
            expected: expected.into(),
            actual: revision.name,
        });
    }
    Ok(revision)
}

/// What an agent says about its node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReport {
    pub node: String,
    /// The revision the node's kube-apiserver runs ([`super::revision::ORIGINAL`] when unaudited).
    pub current: String,
    /// A revision being applied right now.
    pub applying: Option<String>,
    pub last_failed: Option<String>,
    pub reason: Option<String>,
    /// A revision the agent refuses to write to its host (see `refused_reason`): unlike a
    /// failure, it is checked again on every pass, so fixing the agent's pins or the revision
    /// clears it.
    pub refused: Option<String>,
    pub refused_reason: Option<String>,
}

const CURRENT: &str = "clusteraudit.io/current";
const APPLYING: &str = "clusteraudit.io/applying";
const LAST_FAILED: &str = "clusteraudit.io/last-failed";
const REASON: &str = "clusteraudit.io/reason";
const REFUSED: &str = "clusteraudit.io/refused";
const REFUSED_REASON: &str = "clusteraudit.io/refused-reason";

/// The Lease carrying a node's report (applied whole by the node's agent).
pub fn node_report_lease(report: &NodeReport, namespace: &str, now: MicroTime) -> Lease {
    let mut annotations = BTreeMap::from([(CURRENT.to_string(), report.current.clone())]);
    for (key, value) in [
        (APPLYING, &report.applying),
        (LAST_FAILED, &report.last_failed),
        (REASON, &report.reason),
        (REFUSED, &report.refused),
        (REFUSED_REASON, &report.refused_reason),
    ] {
        if let Some(value) = value {
            annotations.insert(key.into(), value.clone());
        }
    }
    Lease {
        metadata: ObjectMeta {
            name: Some(node_report_name(&report.node)),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                NODE_REPORT_LABEL.into(),
                report.node.clone(),
            )])),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some(report.node.clone()),
            renew_time: Some(now),
            ..Default::default()
        }),
    }
}

/// The report a Lease carries, if it is one.
pub fn node_report_from_lease(lease: &Lease) -> Option<NodeReport> {
    let node = lease.metadata.labels.as_ref()?.get(NODE_REPORT_LABEL)?;
    let annotations = lease.metadata.annotations.as_ref()?;
    let get = |key: &str| annotations.get(key).cloned();
    Some(NodeReport {
        node: node.clone(),
        current: get(CURRENT)?,
        applying: get(APPLYING),
        last_failed: get(LAST_FAILED),
        reason: get(REASON),
        refused: get(REFUSED),
        refused_reason: get(REFUSED_REASON),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::revision::{WebhookTarget, build};

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "clusteraudit.io/v1alpha1".into(),
            kind: "ClusterAudit".into(),
            name: "cluster".into(),
            uid: "u-1".into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    fn revision() -> Revision {
        build(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
            &WebhookTarget {
                server: "https://10.0.0.1/v1/webhook".into(),
                ca_pem: "ca".into(),
                token: "secret-token".into(),
            },
        )
    }

    #[test]
    fn a_revision_round_trips_through_its_secret() {
        let revision = revision();
        let secret = revision_secret(&revision, "clusteraudit", owner());
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some(format!("clusteraudit-{}", revision.name).as_str())
        );
        assert_eq!(
            revision_from_secret(&secret, &revision.name).unwrap(),
            revision
        );
        let injected = revision.clone().with_flag("--audit-webhook-mode", "bogus");
        let secret = revision_secret(&injected, "clusteraudit", owner());
        assert_eq!(
            revision_from_secret(&secret, &injected.name).unwrap(),
            injected
        );
    }

    #[test]
    fn an_edited_revision_secret_is_refused() {
        let revision = revision();
        let mut secret = revision_secret(&revision, "clusteraudit", owner());
        secret
            .data
            .as_mut()
            .unwrap()
            .insert("policy.yaml".into(), ByteString(b"rules: []".to_vec()));
        assert!(matches!(
            revision_from_secret(&secret, &revision.name),
            Err(ObjectError::Tampered { .. })
        ));
        secret.data.as_mut().unwrap().remove("flags.json");
        assert!(matches!(
            revision_from_secret(&secret, &revision.name),
            Err(ObjectError::MissingKey { .. })
        ));
    }

    #[test]
    fn a_node_report_round_trips_through_its_lease() {
        let report = NodeReport {
            node: "cp-1".into(),
            current: "rev-0123456789".into(),
            applying: None,
            last_failed: Some("rev-badbadbad0".into()),
            reason: Some("not ready within 3m".into()),
            refused: Some("rev-0badc0ffee".into()),
            refused_reason: Some("cluster c sends to https://203.0.113.9/".into()),
        };
        let lease = node_report_lease(
            &report,
            "clusteraudit",
            MicroTime(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        );
        assert_eq!(
            lease.metadata.name.as_deref(),
            Some("clusteraudit-node-cp-1")
        );
        assert_eq!(node_report_from_lease(&lease), Some(report));
        assert_eq!(node_report_from_lease(&Lease::default()), None);
    }
}
