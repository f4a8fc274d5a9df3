//! Editing the kube-apiserver's static-pod manifest, as pure text in, text out.
//!
//! The agent adds exactly what auditing needs — the audit flags, and a read-only hostPath volume
//! for the revision's files — and leaves everything else as the kubelet would read it. Flags it
//! manages are replaced, never duplicated, so applying a revision twice is applying it once. The
//! original manifest is never reconstructed from an edited one: the agent keeps the bytes it found.

use serde_json::{Value, json};

/// The volume (and mount) the agent adds.
pub const VOLUME_NAME: &str = "clusteraudit";

/// Flags the agent owns: any value they had is replaced.
pub const MANAGED_FLAGS: [&str; 7] = [
    "--audit-policy-file",
    "--audit-webhook-config-file",
    "--audit-webhook-mode",
    "--audit-webhook-batch-max-wait",
    "--audit-webhook-batch-max-size",
    "--audit-webhook-batch-buffer-size",
    "--audit-webhook-initial-backoff",
];

/// What a revision puts into the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    /// The host directory holding the revision's files, mounted read-only at the same path.
    pub dir: String,
    pub policy_file: String,
    pub webhook_config_file: String,
    /// Extra `--flag=value` settings (batching); each must be one of [`MANAGED_FLAGS`].
    pub webhook_flags: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("the manifest is not YAML: {0}")]
    NotYaml(String),
    #[error("the manifest has no kube-apiserver container")]
    NoApiServerContainer,
    #[error("the kube-apiserver container has no command or args to add flags to")]
    NoCommand,
    #[error("{0} is not a flag the agent manages")]
    UnmanagedFlag(String),
    #[error("{0} must be an absolute path under the revision directory")]
    PathOutsideDir(String),
}

/// The manifest with auditing configured as `settings` say.
pub fn apply_audit(manifest: &str, settings: &AuditSettings) -> Result<String, ManifestError> {
    for (flag, _) in &settings.webhook_flags {
        if !MANAGED_FLAGS.contains(&flag.as_str()) {
            return Err(ManifestError::UnmanagedFlag(flag.clone()));
        }
    }
    for path in [&settings.policy_file, &settings.webhook_config_file] {
        if !path.starts_with(&format!("{}/", settings.dir.trim_end_matches('/'))) {
            return Err(ManifestError::PathOutsideDir(path.clone()));
        }
    }
    let mut pod: Value =
        serde_saphyr::from_str(manifest).map_err(|err| ManifestError::NotYaml(err.to_string()))?;
    let spec = pod
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or(ManifestError::NoApiServerContainer)?;
    let containers = spec
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .ok_or(ManifestError::NoApiServerContainer)?;
    let container = containers
        .iter_mut()
        .find(|c| is_apiserver(c))
        .ok_or(ManifestError::NoApiServerContainer)?;
    let container = container
        .as_object_mut()
        .ok_or(ManifestError::NoApiServerContainer)?;

    // Flags live in `command` in kubeadm's manifests, sometimes in `args`.
    let list_key = if container
        .get("args")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        "args"
    } else if container.get("command").and_then(Value::as_array).is_some() {
        "command"
    } else {
        return Err(ManifestError::NoCommand);
    };
    let flags = container
        .get_mut(list_key)
        .and_then(Value::as_array_mut)
        .ok_or(ManifestError::NoCommand)?;
    flags.retain(|arg| {
        let text = arg.as_str().unwrap_or_default();
        let name = text.split('=').next().unwrap_or_default();
        !MANAGED_FLAGS.contains(&name)
    });
    flags.push(json!(format!(
        "--audit-policy-file={}",
        settings.policy_file
    )));
    flags.push(json!(format!(
        "--audit-webhook-config-file={}",
        settings.webhook_config_file
    )));
    for (flag, value) in &settings.webhook_flags {
        if flag != "--audit-policy-file" && flag != "--audit-webhook-config-file" {
            flags.push(json!(format!("{flag}={value}")));
        }
    }

    let mounts = container
        .entry("volumeMounts")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or(ManifestError::NoApiServerContainer)?;
    mounts.retain(|m| m["name"] != VOLUME_NAME);
    mounts.push(json!({"name": VOLUME_NAME, "mountPath": settings.dir, "readOnly": true}));

    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or(ManifestError::NoApiServerContainer)?;
    volumes.retain(|v| v["name"] != VOLUME_NAME);
    volumes.push(json!({
        "name": VOLUME_NAME,
        "hostPath": {"path": settings.dir, "type": "DirectoryOrCreate"},
    }));
    serde_saphyr::to_string(&pod).map_err(|err| ManifestError::NotYaml(err.to_string()))
}

fn is_apiserver(container: &Value) -> bool {
    container["name"] == "kube-apiserver"
        || container["command"]
            .get(0)
            .and_then(Value::as_str)
            .is_some_and(|c| c.rsplit('/').next() == Some("kube-apiserver"))
}

/// The flags of the kube-apiserver container, for checks.
pub fn apiserver_flags(manifest: &str) -> Result<Vec<String>, ManifestError> {
    let pod: Value =
        serde_saphyr::from_str(manifest).map_err(|err| ManifestError::NotYaml(err.to_string()))?;
    let container = pod["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| is_apiserver(c)))
        .ok_or(ManifestError::NoApiServerContainer)?;
    Ok(container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["args"].as_array().into_iter().flatten())
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = r#"apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint: 10.0.0.10:6443
  labels:
    component: kube-apiserver
    tier: control-plane
  name: kube-apiserver
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-apiserver
    - --advertise-address=10.0.0.10
    - --authorization-mode=Node,RBAC
    - --etcd-servers=https://127.0.0.1:2379
    - --audit-webhook-mode=blocking
    image: registry.k8s.io/kube-apiserver:v1.36.3
    name: kube-apiserver
    volumeMounts:
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
      readOnly: true
  hostNetwork: true
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki
      type: DirectoryOrCreate
    name: k8s-certs
status: {}
"#;

    fn settings() -> AuditSettings {
        AuditSettings {
            dir: "/etc/kubernetes/clusteraudit/rev-1".into(),
            policy_file: "/etc/kubernetes/clusteraudit/rev-1/policy.yaml".into(),
            webhook_config_file: "/etc/kubernetes/clusteraudit/rev-1/webhook.kubeconfig".into(),
            webhook_flags: vec![
                ("--audit-webhook-mode".into(), "batch".into()),
                ("--audit-webhook-batch-max-wait".into(), "1s".into()),
            ],
        }
    }

    #[test]
    fn audit_flags_and_a_volume_are_added_and_nothing_else_changes() {
        let patched = apply_audit(KUBEADM, &settings()).unwrap();
        let before: Value = serde_saphyr::from_str(KUBEADM).unwrap();
        let mut after: Value = serde_saphyr::from_str(&patched).unwrap();
        let flags = apiserver_flags(&patched).unwrap();
        assert_eq!(
            &flags[..4],
            [
                "kube-apiserver",
                "--advertise-address=10.0.0.10",
                "--authorization-mode=Node,RBAC",
                "--etcd-servers=https://127.0.0.1:2379"
            ]
        );
        assert!(flags.contains(
            &"--audit-policy-file=/etc/kubernetes/clusteraudit/rev-1/policy.yaml".to_string()
        ));
        assert!(flags.contains(&"--audit-webhook-mode=batch".to_string()));
        assert!(
            !flags.contains(&"--audit-webhook-mode=blocking".to_string()),
            "the old value stays: {flags:?}"
        );
        // Take the additions back out: what is left is the original, exactly.
        let container = &mut after["spec"]["containers"][0];
        container["command"]
            .as_array_mut()
            .unwrap()
            .retain(|f| !f.as_str().unwrap().starts_with("--audit-"));
        container["volumeMounts"].as_array_mut().unwrap().pop();
        after["spec"]["volumes"].as_array_mut().unwrap().pop();
        let mut original = before.clone();
        original["spec"]["containers"][0]["command"]
            .as_array_mut()
            .unwrap()
            .retain(|f| !f.as_str().unwrap().starts_with("--audit-"));
        assert_eq!(after, original);
    }

    #[test]
    fn applying_twice_is_applying_once() {
        let once = apply_audit(KUBEADM, &settings()).unwrap();
        let twice = apply_audit(&once, &settings()).unwrap();
        assert_eq!(once, twice);
        let mut next = settings();
        next.dir = "/etc/kubernetes/clusteraudit/rev-2".into();
        next.policy_file = "/etc/kubernetes/clusteraudit/rev-2/policy.yaml".into();
        next.webhook_config_file = "/etc/kubernetes/clusteraudit/rev-2/webhook.kubeconfig".into();
        let moved = apply_audit(&once, &next).unwrap();
        let flags = apiserver_flags(&moved).unwrap();
        assert_eq!(
            flags
                .iter()
                .filter(|f| f.starts_with("--audit-policy-file="))
                .count(),
            1
        );
        assert!(!moved.contains("rev-1"), "{moved}");
    }

    #[test]
    fn what_cannot_be_patched_is_refused() {
        assert!(matches!(
            apply_audit("{", &settings()),
            Err(ManifestError::NotYaml(_))
        ));
        assert_eq!(
            apply_audit(
                "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - name: etcd\n    command: [etcd]\n",
                &settings()
            ),
            Err(ManifestError::NoApiServerContainer)
        );
        let mut bad = settings();
        bad.webhook_flags
            .push(("--authorization-mode".into(), "AlwaysAllow".into()));
        assert_eq!(
            apply_audit(KUBEADM, &bad),
            Err(ManifestError::UnmanagedFlag("--authorization-mode".into()))
        );
        let mut outside = settings();
        outside.policy_file = "/tmp/policy.yaml".into();
        assert!(matches!(
            apply_audit(KUBEADM, &outside),
            Err(ManifestError::PathOutsideDir(_))
        ));
    }
}
