//! A control plane on loopback: etcd, a PKI, a kube-apiserver run directly and/or "control-plane
//! nodes" whose kube-apiserver is a static pod run by the stand-in kubelet.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use base64::Engine;

use super::{
    Binaries, Kubelet, KubeletOptions, Result, TestkitError,
    etcd::Etcd,
    eventually, file_error, free_port,
    manifest::{ApiServerConfig, write_manifest_atomically},
    process::ManagedProcess,
};
use crate::pki::CertificateAuthority;

/// An ordinary (non-admin) user of the test cluster, authenticated by a static token.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub name: String,
    pub token: String,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// Start one kube-apiserver as a plain process (most tests); without it the cluster only has
    /// what [`ControlPlane::add_static_pod_node`] adds.
    pub direct_apiserver: bool,
    /// Appended to the direct kube-apiserver's flags.
    pub extra_apiserver_args: Vec<String>,
    /// How long a kube-apiserver may take to become ready.
    pub ready_timeout: Duration,
    /// Each static-pod node's kube-apiserver also logs its audit events to a file of its own
    /// ([`StaticPodNode::audit_log_path`]) once auditing is configured: what it sent, for
    /// comparing with what the collector stored.
    pub static_pod_audit_log: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            direct_apiserver: true,
            extra_apiserver_args: Vec::new(),
            ready_timeout: Duration::from_secs(180),
            static_pod_audit_log: false,
        }
    }
}

impl StaticPodNode {
    fn audit_log_dir_under(root: &Path) -> PathBuf {
        root.join("var/log/kubernetes")
    }

    /// Where the kube-apiserver logs audit events with [`ControlPlaneOptions::static_pod_audit_log`].
    pub fn audit_log_path(&self) -> Option<PathBuf> {
        self.config
            .audit_log_dir
            .as_ref()
            .map(|dir| dir.join("audit.log"))
    }
}

/// A control-plane node whose kube-apiserver runs from a kubeadm-style static-pod manifest.
pub struct StaticPodNode {
    pub name: String,
    /// The node's `/etc/kubernetes`.
    pub kubernetes_dir: PathBuf,
    pub manifest_dir: PathBuf,
    /// `<manifest_dir>/kube-apiserver.yaml`.
    pub manifest_path: PathBuf,
    pub port: u16,
    pub config: ApiServerConfig,
    pub kubelet: Kubelet,
}

impl StaticPodNode {
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The `clusteraudit agent` command line for this node: its manifest, its state directory
    /// under the node's `/etc/kubernetes`, its own readiness endpoint.
    pub fn agent_args(&self, namespace: &str, kubeconfig: &Path) -> Vec<String> {
        vec![
            "agent".to_string(),
            format!("--node-name={}", self.name),
            format!("--namespace={namespace}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--manifest={}", self.manifest_path.display()),
            format!(
                "--state-dir={}",
                self.kubernetes_dir.join("clusteraudit").display()
            ),
            format!("--readyz-url=https://127.0.0.1:{}/readyz", self.port),
            "--resync-seconds=5".into(),
        ]
    }

    /// Waits until the node's kube-apiserver answers `/readyz` as the kubelet sees it.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.kubelet
            .wait_for(
                timeout,
                |pod, _| pod.is_some_and(|p| p.ready),
                "kube-apiserver",
            )
            .await
    }
}

pub struct ControlPlane {
    // Fields drop in order: containers first, then the kube-apiserver, etcd, and the files.
    nodes: Vec<StaticPodNode>,
    apiserver: Option<ManagedProcess>,
    apiserver_port: Option<u16>,
    etcd: Etcd,
    binaries: Binaries,
    users: Vec<TestUser>,
    pki_dir: PathBuf,
    kubeconfig_path: PathBuf,
    options: ControlPlaneOptions,
    dir: tempfile::TempDir,
}

const ADMIN_USER: &str = "clusteraudit-admin";

impl ControlPlane {
    /// etcd plus one kube-apiserver, ready, with the default options.
    pub async fn start() -> Result<ControlPlane> {
        Self::start_with(ControlPlaneOptions::default()).await
    }

    pub async fn start_with(options: ControlPlaneOptions) -> Result<ControlPlane> {
        clusteraudit_io::tls::install_crypto_provider();
        let binaries = Binaries::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("clusteraudit-cp-")
            .tempdir()
            .map_err(file_error(
                "creating a scratch directory",
                &std::env::temp_dir(),
            ))?;
        if std::env::var_os("CLUSTERAUDIT_KEEP_TEST_DIRS").is_some() {
            eprintln!("control plane files: {}", dir.path().display());
        }
        let pki_dir = dir.path().join("pki");
        let users = write_pki(&pki_dir)?;
        let etcd = Etcd::start(&binaries, dir.path()).await?;
        let mut control_plane = ControlPlane {
            nodes: Vec::new(),
            apiserver: None,
            apiserver_port: None,
            etcd,
            binaries,
            users,
            kubeconfig_path: dir.path().join("admin.kubeconfig"),
            pki_dir,
            options,
            dir,
        };
        if control_plane.options.direct_apiserver {
            control_plane.start_direct_apiserver().await?;
        }
        Ok(control_plane)
    }

    /// Restarts the direct kube-apiserver with other extra flags (an audit policy, say), on the
    /// same port, and waits until it is ready again.
    pub async fn restart_apiserver(&mut self, extra_args: Vec<String>) -> Result<()> {
        if let Some(mut old) = self.apiserver.take() {
            old.stop(std::time::Duration::from_secs(10));
        }
        self.options.extra_apiserver_args = extra_args;
        self.start_direct_apiserver().await
    }

    /// The direct kube-apiserver's log.
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir.path().join("kube-apiserver.log")
    }

    async fn start_direct_apiserver(&mut self) -> Result<()> {
        let port = match self.apiserver_port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut config = self.apiserver_config(port);
        config.extra_args = self.options.extra_apiserver_args.clone();
        let mut process = ManagedProcess::spawn(
            "kube-apiserver",
            &self.binaries.kube_apiserver(),
            &config.args(),
            &self.apiserver_log(),
        )?;
        wait_apiserver_ready(
            port,
            &self.pki_dir,
            self.options.ready_timeout,
            Some(&mut process),
        )
        .await?;
        self.apiserver = Some(process);
        self.apiserver_port = Some(port);
        self.write_kubeconfig()?;
        Ok(())
    }

    /// The configuration of a kube-apiserver of this cluster listening on `port`.
    pub fn apiserver_config(&self, port: u16) -> ApiServerConfig {
        ApiServerConfig {
            etcd_url: self.etcd.client_url().to_string(),
            secure_port: port,
            pki_dir: self.pki_dir.clone(),
            extra_args: Vec::new(),
            audit_log_dir: None,
        }
    }

    /// Adds a control-plane node: its own `/etc/kubernetes` (with a copy of the PKI, as kubeadm
    /// gives each node), a kubeadm-style kube-apiserver manifest, and a kubelet running it. Does not
    /// wait for readiness; see [`StaticPodNode::wait_ready`].
    pub fn add_static_pod_node(
        &mut self,
        name: &str,
        tune: impl FnOnce(&mut KubeletOptions),
    ) -> Result<&StaticPodNode> {
        let root = self.dir.path().join("nodes").join(name);
        let kubernetes_dir = root.join("etc/kubernetes");
        let node_pki = kubernetes_dir.join("pki");
        copy_dir(&self.pki_dir, &node_pki)?;
        let manifest_dir = kubernetes_dir.join("manifests");
        let port = free_port()?;
        let mut config = self.apiserver_config(port);
        config.pki_dir = node_pki;
        if self.options.static_pod_audit_log {
            config.audit_log_dir = Some(StaticPodNode::audit_log_dir_under(&root));
        }
        let manifest_path = manifest_dir.join("kube-apiserver.yaml");
        let image = format!("registry.k8s.io/kube-apiserver:{}", kubernetes_version());
        write_manifest_atomically(&manifest_path, &config.kubeadm_manifest(name, &image))?;
        let mut kubelet_options = KubeletOptions::new(
            name,
            &manifest_dir,
            &root.join("var/log/pods"),
            vec![self.binaries.dir.clone()],
        );
        tune(&mut kubelet_options);
        let kubelet = Kubelet::start(kubelet_options)?;
        self.nodes.push(StaticPodNode {
            name: name.to_string(),
            kubernetes_dir,
            manifest_dir,
            manifest_path,
            port,
            config,
            kubelet,
        });
        if self.apiserver_port.is_none() && self.nodes.len() == 1 {
            self.write_kubeconfig()?;
        }
        Ok(self.nodes.last().expect("just pushed"))
    }

    /// The admin kubeconfig pointed at one node's own kube-apiserver (what a component on that
    /// node, talking to its local endpoint, uses).
    pub fn kubeconfig_for_node(&self, name: &str) -> Result<PathBuf> {
        let node = self
            .node(name)
            .ok_or_else(|| TestkitError::Client(format!("no node {name}")))?;
        let text = std::fs::read_to_string(&self.kubeconfig_path)
            .map_err(file_error("reading the kubeconfig", &self.kubeconfig_path))?;
        let mut kubeconfig: serde_json::Value =
            serde_json::from_str(&text).map_err(|err| TestkitError::Client(err.to_string()))?;
        kubeconfig["clusters"][0]["cluster"]["server"] = node.endpoint().into();
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        std::fs::write(&path, kubeconfig.to_string())
            .map_err(file_error("writing a kubeconfig", &path))?;
        Ok(path)
    }

    pub fn nodes(&self) -> &[StaticPodNode] {
        &self.nodes
    }

    pub fn node(&self, name: &str) -> Option<&StaticPodNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    pub fn etcd_url(&self) -> &str {
        self.etcd.client_url()
    }

    pub fn users(&self) -> &[TestUser] {
        &self.users
    }

    pub fn user(&self, name: &str) -> Option<&TestUser> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The endpoint clients use: the direct kube-apiserver, else the first node's.
    pub fn endpoint(&self) -> Option<String> {
        self.apiserver_port
            .or_else(|| self.nodes.first().map(|n| n.port))
            .map(|port| format!("https://127.0.0.1:{port}"))
    }

    /// Admin kubeconfig with one context per user: `admin` (system:masters) and each test user.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// Every process the control plane runs right now.
    pub fn pids(&mut self) -> Vec<u32> {
        let mut pids = vec![self.etcd.pid()];
        if let Some(apiserver) = self.apiserver.as_mut() {
            pids.push(apiserver.pid());
        }
        for node in &self.nodes {
            if let Some(pid) = node
                .kubelet
                .pod_status("kube-apiserver")
                .and_then(|s| s.pid)
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// A client acting as the cluster admin.
    pub async fn client(&self) -> Result<kube::Client> {
        self.client_for_context("admin").await
    }

    /// A client acting as one of [`ControlPlane::users`].
    pub async fn client_as(&self, user: &str) -> Result<kube::Client> {
        self.client_for_context(user).await
    }

    async fn client_for_context(&self, context: &str) -> Result<kube::Client> {
        let text = std::fs::read_to_string(&self.kubeconfig_path)
            .map_err(file_error("reading the kubeconfig", &self.kubeconfig_path))?;
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)
            .map_err(|err| TestkitError::Client(err.to_string()))?;
        let options = kube::config::KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|err| TestkitError::Client(err.to_string()))?;
        kube::Client::try_from(config).map_err(|err| TestkitError::Client(err.to_string()))
    }

    /// The built kubectl, pointed at this cluster as admin.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.binaries.kubectl());
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            .env_remove("KUBECONFIG");
        command
    }

    /// Runs the built kubectl as admin (or as `context`, a test user); its output, and whether
    /// it succeeded.
    pub fn kubectl_as(&self, context: Option<&str>, args: &[&str]) -> Result<(bool, String)> {
        let mut command = self.kubectl();
        if let Some(context) = context {
            command.args(["--context", context]);
        }
        let output = command
            .args(args)
            .output()
            .map_err(|source| TestkitError::Spawn {
                name: "kubectl".into(),
                source,
            })?;
        Ok((
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    }

    /// `kubectl apply --server-side` of a file, as admin.
    pub fn apply_file(&self, path: &Path) -> Result<String> {
        let path = path.display().to_string();
        match self.kubectl_as(None, &["apply", "--server-side", "-f", &path])? {
            (true, output) => Ok(output),
            (false, output) => Err(TestkitError::Client(format!("applying {path}: {output}"))),
        }
    }

    /// Applies CustomResourceDefinition files and waits until the kube-apiserver serves them.
    pub fn install_crds(&self, files: &[&Path]) -> Result<()> {
        for file in files {
            self.apply_file(file)?;
        }
        let mut args = vec![
            "wait".to_string(),
            "--for=condition=Established".into(),
            "--timeout=120s".into(),
        ];
        for file in files {
            args.push("-f".into());
            args.push(file.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match self.kubectl_as(None, &args)? {
            (true, _) => Ok(()),
            (false, output) => Err(TestkitError::Client(format!(
                "waiting for the CRDs to be served: {output}"
            ))),
        }
    }

    /// Applies a document (an object or a `List`), kept as `<name>.json` in the control plane's
    /// directory so that a failing test leaves it to read.
    pub fn apply_json(&self, name: &str, document: &serde_json::Value) -> Result<String> {
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(&path, document.to_string())
            .map_err(file_error("writing a manifest", &path))?;
        self.apply_file(&path)
    }

    fn write_kubeconfig(&self) -> Result<()> {
        let Some(server) = self.endpoint() else {
            return Ok(());
        };
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let read = |file: &str| {
            let path = self.pki_dir.join(file);
            std::fs::read(&path).map_err(file_error("reading the PKI", &path))
        };
        let mut users = vec![serde_json::json!({
            "name": "admin",
            "user": {
                "client-certificate-data": b64(&read("admin.crt")?),
                "client-key-data": b64(&read("admin.key")?),
            },
        })];
        let mut contexts = vec![serde_json::json!({
            "name": "admin",
            "context": {"cluster": "clusteraudit-test", "user": "admin"},
        })];
        for user in &self.users {
            users.push(serde_json::json!({"name": user.name, "user": {"token": user.token}}));
            contexts.push(serde_json::json!({
                "name": user.name,
                "context": {"cluster": "clusteraudit-test", "user": user.name},
            }));
        }
        let kubeconfig = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "clusteraudit-test",
                "cluster": {"server": server, "certificate-authority-data": b64(&read("ca.crt")?)},
            }],
            "users": users,
            "contexts": contexts,
            "current-context": "admin",
        });
        let text =
            serde_json::to_string_pretty(&kubeconfig).map_err(|err| TestkitError::Encode {
                what: "the kubeconfig",
                reason: err.to_string(),
            })?;
        std::fs::write(&self.kubeconfig_path, text)
            .map_err(file_error("writing the kubeconfig", &self.kubeconfig_path))?;
        Ok(())
    }
}

/// The Kubernetes version the control-plane binaries are built at.
pub fn kubernetes_version() -> String {
    std::env::var("KUBERNETES_VERSION").unwrap_or_else(|_| "v1.36.3".to_string())
}

/// Polls `/readyz` of a kube-apiserver on loopback (trusting the cluster CA) until it answers 200,
/// failing early if its process exits.
pub async fn wait_apiserver_ready(
    port: u16,
    pki_dir: &Path,
    timeout: Duration,
    mut process: Option<&mut ManagedProcess>,
) -> Result<()> {
    clusteraudit_io::tls::install_crypto_provider();
    let ca_path = pki_dir.join("ca.crt");
    let ca = std::fs::read(&ca_path).map_err(file_error("reading the CA", &ca_path))?;
    let ca =
        reqwest::Certificate::from_pem(&ca).map_err(|err| TestkitError::Client(err.to_string()))?;
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| TestkitError::Client(err.to_string()))?;
    let url = format!("https://127.0.0.1:{port}/readyz");
    let outcome = eventually("the kube-apiserver's /readyz", timeout, async || {
        if let Some(process) = process.as_deref_mut()
            && let Some(status) = process.exit_status()
        {
            return Ok(Err(TestkitError::ExitedEarly {
                name: "kube-apiserver".into(),
                status: status.to_string(),
                log_tail: process.log_tail(40),
            }));
        }
        match http.get(&url).send().await {
            Ok(response) if response.status().is_success() => Ok(Ok(())),
            Ok(response) => Err(response.status().to_string()),
            Err(err) => Err(err.to_string()),
        }
    })
    .await;
    match outcome {
        Ok(result) => result,
        Err(timed_out) => Err(TestkitError::NotReady {
            name: format!("kube-apiserver on port {port}"),
            waited: timed_out.waited,
            last_answer: timed_out.last,
            log_tail: process.map(|p| p.log_tail(40)).unwrap_or_default(),
        }),
    }
}

/// Mints the cluster's PKI into `dir`: ca.crt/key, apiserver.crt/key, admin.crt/key
/// (system:masters), sa.key/pub, and tokens.csv for the ordinary test users.
fn write_pki(dir: &Path) -> Result<Vec<TestUser>> {
    std::fs::create_dir_all(dir).map_err(file_error("creating the PKI directory", dir))?;
    let ca = CertificateAuthority::generate("clusteraudit-test-ca")?;
    let serving = ca.issue_server(
        "kube-apiserver",
        &[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        &[
            "127.0.0.1".parse().expect("an IP"),
            "10.96.0.1".parse().expect("an IP"),
        ],
    )?;
    let admin = ca.issue_client(ADMIN_USER, Some("system:masters"))?;
    let users = [
        ("alice", &["devs"][..]),
        ("bob", &["ops"][..]),
        ("mallory", &[][..]),
        // What the operator's service account is in a real cluster: a token the collector's
        // TokenReview accepts.
        ("clusteraudit-operator", &[][..]),
    ]
    .into_iter()
    .map(|(name, groups)| TestUser {
        name: name.to_string(),
        token: random_token(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    })
    .collect::<Vec<_>>();
    let tokens: String = users
        .iter()
        .map(|u| {
            format!(
                "{},{},uid-{},\"{}\"\n",
                u.token,
                u.name,
                u.name,
                u.groups.join(",")
            )
        })
        .collect();
    let (sa_key, sa_pub) = crate::pki::generate_key_pair_pem()?;
    let files = [
        ("ca.crt", ca.cert_pem()),
        ("ca.key", ca.key_pem().to_string()),
        ("apiserver.crt", serving.cert_pem),
        ("apiserver.key", serving.key_pem),
        ("admin.crt", admin.cert_pem),
        ("admin.key", admin.key_pem),
        ("sa.key", sa_key),
        ("sa.pub", sa_pub),
        ("tokens.csv", tokens),
    ];
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content).map_err(file_error("writing the PKI", &path))?;
    }
    Ok(users)
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    hex::encode(bytes)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(file_error("creating a directory", to))?;
    let entries = std::fs::read_dir(from).map_err(file_error("listing", from))?;
    for entry in entries {
        let entry = entry.map_err(file_error("listing", from))?;
        let target = to.join(entry.file_name());
        std::fs::copy(entry.path(), &target).map_err(file_error("copying", &target))?;
    }
    Ok(())
}

/// RBAC for the collector's virtual resources, as its read and admin API ask the cluster: `admins`
/// may create, update and delete `topics.clusteraudit.io` (and read); `readers` may `get`
/// `auditevents.clusteraudit.io`. A `List` for [`ControlPlane::apply_json`].
pub fn collector_rbac(admins: &[&str], readers: &[&str]) -> serde_json::Value {
    let users = |names: &[&str]| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|name| serde_json::json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name}))
            .collect()
    };
    let read = serde_json::json!({"apiGroups": ["clusteraudit.io"], "resources": ["auditevents"], "verbs": ["get"]});
    let administer = serde_json::json!({"apiGroups": ["clusteraudit.io"], "resources": ["topics"], "verbs": ["create", "update", "delete"]});
    let role = |name: &str, rules: Vec<serde_json::Value>, subjects: Vec<serde_json::Value>| {
        [
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name}, "rules": rules}),
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subjects}),
        ]
    };
    let mut items = Vec::new();
    if !admins.is_empty() {
        items.extend(role(
            "clusteraudit-sink-admin",
            vec![administer, read.clone()],
            users(admins),
        ));
    }
    if !readers.is_empty() {
        items.extend(role("audit-reader", vec![read], users(readers)));
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// What the chart gives the agent's service account `service_account` in `namespace`: `get` on
/// `nodes.clusteraudit.io`, which the collector asks (SubjectAccessReview) before it says which
/// nodes' batches it received.
pub fn agent_gate_rbac(namespace: &str, service_account: &str) -> serde_json::Value {
    let name = format!("{service_account}-collector-nodes");
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["clusteraudit.io"], "resources": ["nodes"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}]},
    ]})
}

/// A token of the service account `name` in `namespace` (created when missing) for `audience`,
/// valid for an hour: what a projected service-account token volume holds.
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audience: &str,
) -> Result<String> {
    use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
    let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("a service account");
    match accounts
        .create(&kube::api::PostParams::default(), &account)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(err) => return Err(TestkitError::Client(err.to_string())),
    }
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "spec": {"audiences": [audience], "expirationSeconds": 3600},
    }))
    .expect("a token request");
    let issued = accounts
        .create_token_request(name, &kube::api::PostParams::default(), &request)
        .await
        .map_err(|err| TestkitError::Client(err.to_string()))?;
    issued
        .status
        .and_then(|s| s.token)
        .ok_or_else(|| TestkitError::Client("the token request issued no token".into()))
}
