//! kube-apiserver command lines and the kubeadm-style static-pod manifests that carry them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::core::v1::{
        Container, HTTPGetAction, HostPathVolumeSource, Pod, PodSpec, Probe, Volume, VolumeMount,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::{Result, TestkitError, file_error};

/// Everything a kube-apiserver of the test control plane needs to know.
#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    pub etcd_url: String,
    pub secure_port: u16,
    /// Holds ca.crt, apiserver.crt/.key, sa.key/.pub and tokens.csv.
    pub pki_dir: PathBuf,
    /// Extra `--flag=value` arguments, appended after the standard ones.
    pub extra_args: Vec<String>,
    /// A directory the kube-apiserver also logs its audit events to (`audit.log`), mounted into
    /// its pod; whatever the audit policy has it record, once one is configured.
    pub audit_log_dir: Option<PathBuf>,
}

impl ApiServerConfig {
    /// The command line after the program name.
    pub fn args(&self) -> Vec<String> {
        let pki = |file: &str| self.pki_dir.join(file).display().to_string();
        let mut args = vec![
            "--advertise-address=127.0.0.1".to_string(),
            "--bind-address=127.0.0.1".to_string(),
            format!("--secure-port={}", self.secure_port),
            "--allow-privileged=true".to_string(),
            "--authorization-mode=RBAC".to_string(),
            format!("--client-ca-file={}", pki("ca.crt")),
            format!("--etcd-servers={}", self.etcd_url),
            format!("--tls-cert-file={}", pki("apiserver.crt")),
            format!("--tls-private-key-file={}", pki("apiserver.key")),
            format!("--token-auth-file={}", pki("tokens.csv")),
            format!("--service-account-key-file={}", pki("sa.pub")),
            format!("--service-account-signing-key-file={}", pki("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            // The collector asks TokenReviews for its own audience; the test users' static tokens
            // count for it only if the kube-apiserver lists it.
            "--api-audiences=https://kubernetes.default.svc.cluster.local,clusteraudit".to_string(),
            "--service-cluster-ip-range=10.96.0.0/12".to_string(),
            // Every test kube-apiserver advertises 127.0.0.1, which the endpoints of the
            // `kubernetes` Service may not hold; nothing in the tests routes through it.
            "--endpoint-reconciler-type=none".to_string(),
            "--profiling=false".to_string(),
        ];
        if let Some(dir) = &self.audit_log_dir {
            args.push(format!(
                "--audit-log-path={}",
                dir.join("audit.log").display()
            ));
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// A kubeadm-style static-pod manifest running this kube-apiserver.
    pub fn kubeadm_manifest(&self, node_name: &str, image: &str) -> Pod {
        let mut mounts = Vec::new();
        let mut volumes = Vec::new();
        let mut mount = |name: &str, path: String, read_only: bool| {
            mounts.push(VolumeMount {
                name: name.into(),
                mount_path: path.clone(),
                read_only: Some(read_only),
                ..Default::default()
            });
            volumes.push(Volume {
                name: name.into(),
                host_path: Some(HostPathVolumeSource {
                    path,
                    type_: Some("DirectoryOrCreate".into()),
                }),
                ..Default::default()
            });
        };
        mount("k8s-certs", self.pki_dir.display().to_string(), true);
        if let Some(dir) = &self.audit_log_dir {
            mount("audit-log", dir.display().to_string(), false);
        }
        let probe = |path: &str, initial_delay: i32, period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                host: Some("127.0.0.1".into()),
                path: Some(path.into()),
                port: IntOrString::Int(self.secure_port as i32),
                scheme: Some("HTTPS".into()),
                ..Default::default()
            }),
            initial_delay_seconds: (initial_delay > 0).then_some(initial_delay),
            period_seconds: Some(period),
            timeout_seconds: Some(15),
            failure_threshold: Some(failures),
            ..Default::default()
        };
        let mut command = vec!["kube-apiserver".to_string()];
        command.extend(self.args());
        Pod {
            metadata: ObjectMeta {
                name: Some("kube-apiserver".into()),
                namespace: Some("kube-system".into()),
                labels: Some(BTreeMap::from([
                    ("component".to_string(), "kube-apiserver".to_string()),
                    ("tier".to_string(), "control-plane".to_string()),
                ])),
                annotations: Some(BTreeMap::from([(
                    "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint".to_string(),
                    format!("127.0.0.1:{}", self.secure_port),
                )])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                host_network: Some(true),
                priority_class_name: Some("system-node-critical".into()),
                node_name: Some(node_name.into()),
                containers: vec![Container {
                    name: "kube-apiserver".into(),
                    image: Some(image.into()),
                    image_pull_policy: Some("IfNotPresent".into()),
                    command: Some(command),
                    liveness_probe: Some(probe("/livez", 10, 10, 8)),
                    readiness_probe: Some(probe("/readyz", 0, 1, 3)),
                    startup_probe: Some(probe("/livez", 10, 10, 24)),
                    volume_mounts: Some(mounts),
                    ..Default::default()
                }],
                volumes: Some(volumes),
                ..Default::default()
            }),
            status: None,
        }
    }
}

/// Writes a manifest the way an editor that cares does: to a temporary file, then renamed over
/// the old one, so a reader never sees half a file.
pub fn write_manifest_atomically(path: &Path, pod: &Pod) -> Result<()> {
    let yaml = serde_saphyr::to_string(pod).map_err(|err| TestkitError::Encode {
        what: "a static-pod manifest",
        reason: err.to_string(),
    })?;
    write_atomically(path, yaml.as_bytes())
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(file_error("creating a directory", dir))?;
    clusteraudit_io::fsutil::write_atomically(dir, path, bytes)
        .map_err(file_error("replacing", path))?;
    Ok(())
}
