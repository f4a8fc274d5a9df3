//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::{path::Path, time::Duration};

use clusteraudit_testkit::pki::CertificateAuthority;
use serde_json::{Value, json};

use clusteraudit_testkit::{eventually, free_port, process::ManagedProcess};

/// The collector binary in its development mode (plain HTTP on loopback, no authentication).
pub struct DevCollector {
    pub process: ManagedProcess,
    pub url: String,
    pub http: reqwest::Client,
}

impl DevCollector {
    /// The collector's /metrics page.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub async fn start_dev_collector(data: &Path, log: &Path, port: u16) -> DevCollector {
    start_dev_collector_with(data, log, port, &[]).await
}

/// [`start_dev_collector`] with more arguments (another store, say).
pub async fn start_dev_collector_with(
    data: &Path,
    log: &Path,
    port: u16,
    extra: &[String],
) -> DevCollector {
    clusteraudit_io::tls::install_crypto_provider();
    let mut args = vec![
        "collector".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--listen=127.0.0.1:{port}"),
        "--insecure-dev".into(),
        "--max-body-bytes=2097152".into(),
    ];
    args.extend_from_slice(extra);
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
    if let Err(timed_out) = clusteraudit_testkit::readyz(&collector.http, &collector.url).await {
        panic!("{timed_out}: {}", collector.process.log_tail(20));
    }
    collector
}

/// etcd and one control-plane node, "node-1", whose kube-apiserver the stand-in kubelet runs
/// from its static-pod manifest, with back-off short enough for tests (not yet ready).
pub async fn one_static_pod_node() -> clusteraudit_testkit::ControlPlane {
    let mut control_plane =
        clusteraudit_testkit::ControlPlane::start_with(clusteraudit_testkit::ControlPlaneOptions {
            direct_apiserver: false,
            ..Default::default()
        })
        .await
        .expect("etcd starts");
    control_plane
        .add_static_pod_node("node-1", |kubelet| {
            kubelet.backoff_initial = Duration::from_millis(500);
            kubelet.backoff_max = Duration::from_secs(2);
            kubelet.termination_grace = Duration::from_secs(10);
        })
        .expect("the node starts");
    control_plane
}

/// The collector over TLS: a serving certificate from its own CA, the webhook behind a bearer
/// token (and a client-certificate CA), the read API behind TokenReview/SubjectAccessReview of the
/// cluster `kubeconfig` names. Returns it and a webhook kubeconfig for a kube-apiserver.
pub struct TlsCollector {
    pub process: ManagedProcess,
    pub url: String,
    pub http: reqwest::Client,
    /// The CA of its serving certificate.
    pub ca_path: std::path::PathBuf,
    args: Vec<String>,
    dir: std::path::PathBuf,
    starts: usize,
}

/// A committed CRD file: `crds/<name>.yaml`.
pub fn crd(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("crds/{name}.yaml"))
}

pub fn write(path: &Path, content: impl AsRef<[u8]>) {
    std::fs::write(path, content).unwrap();
}

pub async fn start_tls_collector(
    kubeconfig: &Path,
    dir: &Path,
    token: &str,
) -> (TlsCollector, String) {
    start_tls_collector_with(kubeconfig, dir, token, &[]).await
}

/// [`start_tls_collector`] with more flags.
pub async fn start_tls_collector_with(
    kubeconfig: &Path,
    dir: &Path,
    token: &str,
    extra: &[String],
) -> (TlsCollector, String) {
    clusteraudit_io::tls::install_crypto_provider();
    let ca = CertificateAuthority::generate("collector-ca").unwrap();
    let serving = ca
        .issue_server("collector", &["localhost"], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    write(&dir.join("collector-ca.crt"), ca.cert_pem());
    write(&dir.join("collector.crt"), &serving.cert_pem);
    write(&dir.join("collector.key"), &serving.key_pem);
    write(&dir.join("webhook-token"), token);
    // A second way in for webhook callers: a client certificate from this CA.
    let client_ca = CertificateAuthority::generate("webhook-clients").unwrap();
    let client = client_ca
        .issue_client("kube-apiserver-webhook", None)
        .unwrap();
    write(&dir.join("webhook-client-ca.crt"), client_ca.cert_pem());
    write(
        &dir.join("webhook-client.pem"),
        format!("{}{}", client.cert_pem, client.key_pem),
    );
    let port = free_port().unwrap();
    let mut args: Vec<String> = vec![
        "collector".into(),
        format!("--data-dir={}", dir.join("data").display()),
        format!("--listen=127.0.0.1:{port}"),
        format!("--tls-cert={}", dir.join("collector.crt").display()),
        format!("--tls-key={}", dir.join("collector.key").display()),
        format!(
            "--webhook-token-file={}",
            dir.join("webhook-token").display()
        ),
        // What a token rotation adds to the Secret volume, while it lasts.
        format!(
            "--webhook-token-file={}",
            dir.join("webhook-token.previous").display()
        ),
        format!(
            "--webhook-token-file={}",
            dir.join("webhook-token.next").display()
        ),
        format!(
            "--webhook-client-ca={}",
            dir.join("webhook-client-ca.crt").display()
        ),
        format!("--kubeconfig={}", kubeconfig.display()),
    ];
    args.extend(extra.iter().cloned());
    let process = ManagedProcess::spawn(
        "collector",
        Path::new(env!("CARGO_BIN_EXE_clusteraudit")),
        &args,
        &dir.join("collector.log"),
    )
    .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}");
    if let Err(timed_out) = clusteraudit_testkit::readyz(&http, &url).await {
        panic!(
            "the collector never became ready: {timed_out}: {}",
            process.log_tail(30)
        );
    }
    let webhook_kubeconfig = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "collector", "cluster": {
            "server": format!("{url}/v1/webhook"),
            "certificate-authority": dir.join("collector-ca.crt"),
        }}],
        "users": [{"name": "kube-apiserver", "user": {"token": token}}],
        "contexts": [{"name": "webhook", "context": {"cluster": "collector", "user": "kube-apiserver"}}],
        "current-context": "webhook",
    });
    let webhook_config = dir.join("webhook.kubeconfig");
    write(
        &webhook_config,
        serde_json::to_vec_pretty(&webhook_kubeconfig).unwrap(),
    );
    (
        TlsCollector {
            process,
            url,
            http,
            ca_path: dir.join("collector-ca.crt"),
            args,
            dir: dir.to_path_buf(),
            starts: 1,
        },
        webhook_config.display().to_string(),
    )
}

impl TlsCollector {
    /// The collector's /metrics page.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Kills the collector (SIGKILL) and starts it again on the same data, waiting until it is
    /// ready.
    pub async fn restart(&mut self) {
        self.process.kill_now();
        self.starts += 1;
        self.process = ManagedProcess::spawn(
            "collector",
            Path::new(env!("CARGO_BIN_EXE_clusteraudit")),
            &self.args,
            &self.dir.join(format!("collector-{}.log", self.starts)),
        )
        .unwrap();
        if let Err(timed_out) = clusteraudit_testkit::readyz(&self.http, &self.url).await {
            panic!(
                "the collector never became ready again: {timed_out}: {}",
                self.process.log_tail(30)
            );
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the collector answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Searches the routed topic until `done` holds for the events found, or a minute passes.
    pub async fn search_until(
        &self,
        token: &str,
        query: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let (_, route) = self.get("/v1/route", Some(token)).await;
        let topic = route["topicId"].as_str().expect("a route").to_string();
        let path = format!(
            "/v1/topics/{topic}/events?limit=1000&q={}",
            urlencode(query)
        );
        // The caller's assertions on what was found say more than a timeout would.
        eventually(query, Duration::from_secs(60), async || {
            let (status, page) = self.get(&path, Some(token)).await;
            assert_eq!(status, 200, "{query}: {page}");
            let events = page["events"].as_array().cloned().unwrap_or_default();
            if done(&events) {
                Ok(events)
            } else {
                Err(events)
            }
        })
        .await
        .unwrap_or_else(|timed_out| timed_out.last)
    }
}

fn urlencode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// One static-pod control-plane node, ready, with the ClusterAudit CRD, the operator's namespace
/// and a ClusterAudit of `spec`: for tests that play the operator (revision Secrets and the
/// status) towards a real agent.
pub struct PlayedOperator {
    pub control_plane: clusteraudit_testkit::ControlPlane,
    pub client: kube::Client,
    pub audits: kube::Api<clusteraudit_core::api::ClusterAudit>,
    secrets: kube::Api<k8s_openapi::api::core::v1::Secret>,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    namespace: String,
}

impl PlayedOperator {
    pub async fn start(namespace: &str, spec: Value) -> PlayedOperator {
        use clusteraudit_core::api::ClusterAudit;
        use kube::{Resource, ResourceExt, api::PostParams};
        let control_plane = one_static_pod_node().await;
        let node = control_plane.node("node-1").unwrap();
        assert!(
            node.wait_ready(Duration::from_secs(180)).await,
            "{:#?}",
            node.kubelet.events()
        );
        control_plane.install_crds(&[&crd("clusteraudit")]).unwrap();
        let client = control_plane.client().await.unwrap();
        kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap(),
            )
            .await
            .unwrap();
        let audits: kube::Api<ClusterAudit> = kube::Api::all(client.clone());
        let audit = audits
            .create(
                &PostParams::default(),
                &ClusterAudit::new("cluster", serde_json::from_value(spec).unwrap()),
            )
            .await
            .unwrap();
        let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: ClusterAudit::api_version(&()).into(),
            kind: ClusterAudit::kind(&()).into(),
            name: audit.name_any(),
            uid: audit.uid().unwrap(),
            ..Default::default()
        };
        PlayedOperator {
            secrets: kube::Api::namespaced(client.clone(), namespace),
            control_plane,
            client,
            audits,
            owner,
            namespace: namespace.to_string(),
        }
    }

    /// Writes the revision's Secret, as the operator does before releasing it.
    pub async fn publish(&self, revision: &clusteraudit_core::rollout::revision::Revision) {
        self.secrets
            .create(
                &kube::api::PostParams::default(),
                &clusteraudit_core::rollout::objects::revision_secret(
                    revision,
                    &self.namespace,
                    self.owner.clone(),
                ),
            )
            .await
            .unwrap();
    }

    /// Releases revision `name` with content hash `hash` in the status.
    pub async fn release(&self, name: &str, hash: &str) {
        self.audits
            .patch_status(
                "cluster",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(json!({"status": {"revision": {
                    "latest": name, "desired": name, "latestHash": hash,
                }}})),
            )
            .await
            .unwrap();
    }
}
