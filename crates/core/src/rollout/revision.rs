//! Revisions: immutable, content-addressed bundles of everything a kube-apiserver reads for
//! auditing (the policy, the webhook kubeconfig, the webhook flags). The same inputs always make
//! the same revision, so a spec change that does not touch these inputs (a topic, a retention)
//! makes no new revision and restarts nothing.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::rollout::manifest::AuditSettings;

pub const POLICY_FILE: &str = "policy.yaml";
pub const WEBHOOK_CONFIG_FILE: &str = "webhook.kubeconfig";

/// Where the kube-apiserver posts its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    /// An address that needs no cluster DNS (the collector Service's ClusterIP, or a node-local
    /// listener): the kube-apiserver resolves names with the host's resolver.
    pub server: String,
    pub ca_pem: String,
    pub token: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision {
    /// `rev-` and the first ten hex digits of the content hash.
    pub name: String,
    /// Hex SHA-256 over the files and flags.
    pub hash: String,
    /// File name to content.
    pub files: BTreeMap<String, String>,
    /// Webhook flags beyond the two file paths.
    pub flags: Vec<(String, String)>,
}

/// The webhook batching the kube-apiserver uses: events leave within a second, in batches the
/// collector acknowledges quickly.
pub fn webhook_flags() -> Vec<(String, String)> {
    [
        ("--audit-webhook-mode", "batch"),
        ("--audit-webhook-batch-max-wait", "1s"),
        ("--audit-webhook-batch-max-size", "400"),
        ("--audit-webhook-batch-buffer-size", "10000"),
        ("--audit-webhook-initial-backoff", "5s"),
    ]
    .into_iter()
    .map(|(flag, value)| (flag.to_string(), value.to_string()))
    .collect()
}

pub fn build(policy_yaml: &str, webhook: &WebhookTarget) -> Revision {
    use base64::Engine;
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "clusteraudit-collector", "cluster": {
            "server": webhook.server,
            "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(webhook.ca_pem.as_bytes()),
        }}],
        "users": [{"name": "kube-apiserver", "user": {"token": webhook.token}}],
        "contexts": [{"name": "clusteraudit", "context": {"cluster": "clusteraudit-collector", "user": "kube-apiserver"}}],
        "current-context": "clusteraudit",
    });
    let files = BTreeMap::from([
        (POLICY_FILE.to_string(), policy_yaml.to_string()),
        (
            WEBHOOK_CONFIG_FILE.to_string(),
            serde_json::to_string_pretty(&kubeconfig).expect("a kubeconfig serializes") + "\n",
        ),
    ]);
    Revision::new(files, webhook_flags())
}

/// The rollout target that means auditing off: every node back on the manifest its agent found
/// before auditing.
pub const ORIGINAL: &str = "original";

impl Revision {
    /// A revision of exactly these files and flags, named by their content.
    pub fn new(files: BTreeMap<String, String>, flags: Vec<(String, String)>) -> Revision {
        let mut digest = Sha256::new();
        for (name, content) in &files {
            // Lengths keep the concatenation unambiguous.
            digest.update((name.len() as u64).to_le_bytes());
            digest.update(name.as_bytes());
            digest.update((content.len() as u64).to_le_bytes());
            digest.update(content.as_bytes());
        }
        for (flag, value) in &flags {
            digest.update(format!("{flag}={value}\n").as_bytes());
        }
        let hash = hex::encode(digest.finalize());
        Revision {
            name: format!("rev-{}", &hash[..10]),
            hash,
            files,
            flags,
        }
    }

    /// The same revision with one webhook flag's value replaced (a new revision, named anew).
    pub fn with_flag(self, flag: &str, value: &str) -> Revision {
        let mut flags = self.flags;
        match flags.iter_mut().find(|(name, _)| name == flag) {
            Some((_, existing)) => *existing = value.to_string(),
            None => flags.push((flag.to_string(), value.to_string())),
        }
        Revision::new(self.files, flags)
    }

    /// The manifest settings for this revision with its files under `base_dir` on the node.
    pub fn audit_settings(&self, base_dir: &str) -> AuditSettings {
        let dir = format!("{}/{}", base_dir.trim_end_matches('/'), self.name);
        AuditSettings {
            policy_file: format!("{dir}/{POLICY_FILE}"),
            webhook_config_file: format!("{dir}/{WEBHOOK_CONFIG_FILE}"),
            dir,
            webhook_flags: self.flags.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClusterAuditSpec, SinkSpec};

    fn target() -> WebhookTarget {
        WebhookTarget {
            server: "https://10.96.0.50:443/v1/webhook".into(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            token: "t0ken".into(),
        }
    }

    fn policy_of(spec: &ClusterAuditSpec) -> String {
        crate::policy::render(&spec.policy).unwrap().yaml
    }

    #[test]
    fn the_same_inputs_make_the_same_revision() {
        let spec: ClusterAuditSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let a = build(&policy_of(&spec), &target());
        let b = build(&policy_of(&spec), &target());
        assert_eq!(a, b);
        assert!(a.name.starts_with("rev-") && a.name.len() == 14);
        assert!(a.files[WEBHOOK_CONFIG_FILE].contains("https://10.96.0.50:443/v1/webhook"));
    }

    #[test]
    fn sink_and_retention_changes_make_no_new_revision_policy_changes_do() {
        let base: ClusterAuditSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let mut retention = base.clone();
        retention.sink = SinkSpec {
            delete_on_disable: true,
            ..SinkSpec::default()
        };
        retention.sink.topic.retention_days = Some(7);
        retention.sink.topic.name = Some("other-topic".into());
        retention.rollout.min_restart_interval = crate::api::GoDuration::new("10m").unwrap();
        assert_eq!(
            build(&policy_of(&base), &target()).name,
            build(&policy_of(&retention), &target()).name
        );
        let mut profile = base.clone();
        profile.policy.profile = crate::api::Profile::AllRequestBodies;
        assert_ne!(
            build(&policy_of(&base), &target()).name,
            build(&policy_of(&profile), &target()).name
        );
        let mut rotated = target();
        rotated.token = "new-token".into();
        assert_ne!(
            build(&policy_of(&base), &target()).name,
            build(&policy_of(&base), &rotated).name
        );
    }

    #[test]
    fn a_revision_patches_a_manifest_with_its_own_paths() {
        let spec: ClusterAuditSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        let revision = build(&policy_of(&spec), &target());
        let settings = revision.audit_settings("/etc/kubernetes/clusteraudit/");
        assert_eq!(
            settings.dir,
            format!("/etc/kubernetes/clusteraudit/{}", revision.name)
        );
        assert!(settings.policy_file.ends_with("/policy.yaml"));
        let manifest = "apiVersion: v1\nkind: Pod\nmetadata: {name: kube-apiserver}\nspec:\n  containers:\n  - name: kube-apiserver\n    command: [kube-apiserver, --secure-port=6443]\n";
        let patched = crate::rollout::manifest::apply_audit(manifest, &settings).unwrap();
        let flags = crate::rollout::manifest::apiserver_flags(&patched).unwrap();
        assert!(
            flags.contains(&"--audit-webhook-mode=batch".to_string()),
            "{flags:?}"
        );
        assert!(flags.contains(&format!("--audit-policy-file={}", settings.policy_file)));
    }
}
