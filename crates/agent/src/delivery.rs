//! Whether this node's audit events reach the collector, which a ready kube-apiserver does not
//! prove (a wrong token, a network path blocked from this node only, a webhook the collector
//! refuses all leave `/readyz` answering).
//!
//! The agent writes its node's name into the webhook server URL of the kubeconfig it puts on its
//! node (`https://collector/v1/webhook` becomes `https://collector/v1/webhook/<node>`); the
//! collector records the last batch it acknowledged from each node and shows it at
//! `GET /v1/nodes`. After a restart, the agent waits (within the health timeout) until that page
//! shows a batch from its node acknowledged after the kube-apiserver came back, and otherwise
//! falls back as for a readiness failure.

use std::{path::PathBuf, time::Duration, time::SystemTime};

use clusteraudit_core::audit::{Level, Policy};
use serde::Deserialize;

/// Why a webhook kubeconfig cannot be made this node's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PerNodeError {
    #[error("the webhook kubeconfig is not JSON: {0}")]
    NotJson(String),
    #[error("the webhook kubeconfig names no server")]
    NoServer,
    #[error("the webhook server {0} is not a URL that can take a path")]
    NotAUrl(String),
    #[error("{0:?} is not a node name (a DNS subdomain)")]
    NotANodeName(String),
}

/// The webhook server URL with `node` as one more path segment, spelt as the server was.
pub fn server_for_node(server: &str, node: &str) -> Result<String, PerNodeError> {
    // Kubernetes names nodes as DNS subdomains: nothing in one needs escaping in a path.
    let dns_subdomain = !node.is_empty()
        && node.len() <= 253
        && node.starts_with(|c: char| c.is_ascii_alphanumeric())
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !dns_subdomain {
        return Err(PerNodeError::NotANodeName(node.to_string()));
    }
    let url = reqwest::Url::parse(server).map_err(|_| PerNodeError::NotAUrl(server.to_string()))?;
    if url.cannot_be_a_base() || url.query().is_some() || url.fragment().is_some() {
        return Err(PerNodeError::NotAUrl(server.to_string()));
    }
    Ok(format!("{}/{node}", server.trim_end_matches('/')))
}

/// The webhook kubeconfig this node's kube-apiserver reads: the revision's (already checked
/// against the pins), with every cluster's server naming `node`. The revision itself, its name
/// and hash stay the operator's, the same for every node.
pub fn kubeconfig_for_node(content: &str, node: &str) -> Result<String, PerNodeError> {
    let mut config: serde_json::Value =
        serde_json::from_str(content).map_err(|err| PerNodeError::NotJson(err.to_string()))?;
    let clusters = config
        .get_mut("clusters")
        .and_then(|c| c.as_array_mut())
        .ok_or(PerNodeError::NoServer)?;
    let mut servers = 0;
    for named in clusters {
        let Some(server) = named.pointer_mut("/cluster/server") else {
            continue;
        };
        let Some(url) = server.as_str() else {
            continue;
        };
        *server = serde_json::Value::String(server_for_node(url, node)?);
        servers += 1;
    }
    if servers == 0 {
        return Err(PerNodeError::NoServer);
    }
    Ok(serde_json::to_string_pretty(&config).expect("a JSON value serializes"))
}

/// Where the collector that `webhook_server` (a revision's, as pinned) names lists the nodes it
/// received batches from: the same origin and prefix, `.../v1/nodes`.
pub fn nodes_url(webhook_server: &str) -> Result<reqwest::Url, PerNodeError> {
    let mut url = reqwest::Url::parse(webhook_server)
        .map_err(|_| PerNodeError::NotAUrl(webhook_server.to_string()))?;
    let path = url.path().trim_end_matches('/');
    let prefix = path.strip_suffix("/v1/webhook").unwrap_or("");
    url.set_path(&format!("{prefix}/v1/nodes"));
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The server a webhook kubeconfig sends to (its first cluster's; every one is pinned).
pub fn webhook_server(content: &str) -> Result<String, PerNodeError> {
    let config: serde_json::Value =
        serde_json::from_str(content).map_err(|err| PerNodeError::NotJson(err.to_string()))?;
    config
        .get("clusters")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
        .find_map(|named| named.pointer("/cluster/server")?.as_str())
        .map(str::to_string)
        .ok_or(PerNodeError::NoServer)
}

/// Whether a policy records anything at all: one that records nothing (the None profile) sends
/// no batch, and waiting for one would only make it fall back. A policy that cannot be read is
/// taken to record something.
pub fn policy_records(policy_yaml: &str) -> bool {
    match Policy::from_yaml(policy_yaml) {
        Ok(policy) => policy.rules.iter().any(|rule| rule.level > Level::None),
        Err(_) => true,
    }
}

/// `GET /v1/nodes`: what the collector acknowledged from each node (with OpenSearch, every
/// replica's, merged).
#[derive(Clone, Debug, Deserialize)]
pub struct NodesPage {
    #[serde(default)]
    pub nodes: Vec<NodeBatches>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeBatches {
    pub name: String,
    #[serde(default)]
    pub last_batch_at: Option<String>,
}

/// Whether the page shows a batch from `node` acknowledged at or after `since`.
pub fn received_since(page: &NodesPage, node: &str, since: SystemTime) -> bool {
    let Ok(since) = k8s_openapi::jiff::Timestamp::try_from(since) else {
        return false;
    };
    page.nodes
        .iter()
        .filter(|n| n.name == node)
        .filter_map(|n| n.last_batch_at.as_deref()?.parse().ok())
        .any(|at: k8s_openapi::jiff::Timestamp| at >= since)
}

/// The collector's side of the gate for one apply: whom to ask, as whom.
#[derive(Clone, Debug)]
pub struct DeliveryGate {
    /// This node's name, as in the webhook URL.
    pub node: String,
    pub nodes_url: reqwest::Url,
    /// The pinned webhook CA: the collector's serving certificate must chain to it.
    pub ca_pem: Vec<u8>,
    /// A service-account token for the collector's audience, read at each question (the
    /// kubelet rotates projected tokens).
    pub token_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("the pinned webhook CA holds no certificate usable by the HTTP client: {0}")]
    Ca(String),
    #[error("reading the collector token {path}: {source}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("asking the collector {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the collector answered {status} at {url}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// Asks the collector for what it received.
pub struct Asker {
    gate: DeliveryGate,
    http: reqwest::Client,
}

impl Asker {
    pub fn new(gate: DeliveryGate) -> Result<Asker, GateError> {
        let certificates = reqwest::Certificate::from_pem_bundle(&gate.ca_pem)
            .map_err(|err| GateError::Ca(err.to_string()))?;
        if certificates.is_empty() {
            return Err(GateError::Ca("no CERTIFICATE block".into()));
        }
        let http = reqwest::Client::builder()
            .tls_certs_only(certificates)
            .timeout(Duration::from_secs(5))
            // A new connection for each question: behind a Service, each may reach another
            // replica, and only the one the kube-apiserver's batches reach has seen them.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|err| GateError::Ca(err.to_string()))?;
        Ok(Asker { gate, http })
    }

    pub fn node(&self) -> &str {
        &self.gate.node
    }

    /// Whether the collector shows a batch from this node acknowledged at or after `since`.
    pub async fn received_since(&self, since: SystemTime) -> Result<bool, GateError> {
        let path = &self.gate.token_file;
        let token = std::fs::read_to_string(path).map_err(|source| GateError::Token {
            path: path.clone(),
            source,
        })?;
        let url = self.gate.nodes_url.to_string();
        let request_error = |source| GateError::Request {
            url: url.clone(),
            source,
        };
        let response = self
            .http
            .get(self.gate.nodes_url.clone())
            .bearer_auth(token.trim())
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(GateError::Status {
                url,
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        let page: NodesPage = response.json().await.map_err(request_error)?;
        Ok(received_since(&page, &self.gate.node, since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"{"apiVersion":"v1","kind":"Config","clusters":[{"name":"collector","cluster":{"server":"https://10.96.0.50:443/v1/webhook","certificate-authority-data":"Q0E="}}],"users":[{"name":"kube-apiserver","user":{"token":"t"}}],"contexts":[{"name":"webhook","context":{"cluster":"collector","user":"kube-apiserver"}}],"current-context":"webhook"}"#;

    #[test]
    fn the_node_becomes_the_last_path_segment_of_every_server() {
        let per_node = kubeconfig_for_node(KUBECONFIG, "cp-1").unwrap();
        let config: serde_json::Value = serde_json::from_str(&per_node).unwrap();
        assert_eq!(
            config["clusters"][0]["cluster"]["server"],
            "https://10.96.0.50:443/v1/webhook/cp-1"
        );
        // Nothing else changes.
        let mut expected: serde_json::Value = serde_json::from_str(KUBECONFIG).unwrap();
        expected["clusters"][0]["cluster"]["server"] =
            config["clusters"][0]["cluster"]["server"].clone();
        assert_eq!(config, expected);
        // Made from the revision's content each time: the same for the same node.
        assert_eq!(kubeconfig_for_node(KUBECONFIG, "cp-1").unwrap(), per_node);
    }

    #[test]
    fn a_server_keeps_its_spelling_and_a_trailing_slash_adds_no_empty_segment() {
        for (server, expected) in [
            (
                "https://collector.audit.svc:8443/v1/webhook",
                "https://collector.audit.svc:8443/v1/webhook/cp-1",
            ),
            (
                "https://[fd00::a]:443/v1/webhook/",
                "https://[fd00::a]:443/v1/webhook/cp-1",
            ),
            (
                "https://127.0.0.1:9443/audit/v1/webhook",
                "https://127.0.0.1:9443/audit/v1/webhook/cp-1",
            ),
        ] {
            assert_eq!(server_for_node(server, "cp-1").unwrap(), expected);
        }
        for not_a_node in ["", "a/b", "a?b", "Node-1", "..", "-x"] {
            assert_eq!(
                server_for_node("https://c/v1/webhook", not_a_node),
                Err(PerNodeError::NotANodeName(not_a_node.into())),
                "{not_a_node:?}"
            );
        }
    }

    #[test]
    fn a_kubeconfig_without_a_server_cannot_be_made_a_node_s() {
        assert_eq!(
            kubeconfig_for_node(r#"{"clusters":[]}"#, "n"),
            Err(PerNodeError::NoServer)
        );
        assert!(matches!(
            kubeconfig_for_node("token: t0ken", "n"),
            Err(PerNodeError::NotJson(_))
        ));
    }

    #[test]
    fn the_nodes_page_is_beside_the_webhook() {
        assert_eq!(
            nodes_url("https://10.96.0.50:443/v1/webhook")
                .unwrap()
                .as_str(),
            "https://10.96.0.50/v1/nodes"
        );
        assert_eq!(
            nodes_url("https://127.0.0.1:9443/audit/v1/webhook")
                .unwrap()
                .as_str(),
            "https://127.0.0.1:9443/audit/v1/nodes"
        );
        assert_eq!(
            nodes_url("https://node-local:8443/ingest")
                .unwrap()
                .as_str(),
            "https://node-local:8443/v1/nodes"
        );
        assert_eq!(
            webhook_server(KUBECONFIG).unwrap(),
            "https://10.96.0.50:443/v1/webhook"
        );
    }

    #[test]
    fn only_a_batch_from_this_node_after_the_restart_counts() {
        let page: NodesPage = serde_json::from_str(
            r#"{"nodes":[
                {"name":"cp-1","lastBatchAt":"2026-11-30T12:00:05Z","batches":3},
                {"name":"cp-2","lastBatchAt":"2026-11-30T12:10:00Z","batches":9},
                {"name":"cp-3","lastBatchAt":null,"batches":0}
            ]}"#,
        )
        .unwrap();
        let at = |s: &str| SystemTime::from(s.parse::<k8s_openapi::jiff::Timestamp>().unwrap());
        assert!(received_since(&page, "cp-1", at("2026-11-30T12:00:05Z")));
        assert!(received_since(&page, "cp-1", at("2026-11-30T12:00:00Z")));
        assert!(!received_since(&page, "cp-1", at("2026-11-30T12:00:06Z")));
        assert!(!received_since(&page, "cp-3", at("2026-11-30T11:00:00Z")));
        assert!(!received_since(&page, "cp-4", at("2026-11-30T11:00:00Z")));
    }

    #[test]
    fn a_policy_that_records_nothing_is_not_waited_for() {
        use clusteraudit_core::{
            api::{PolicySpec, Profile},
            policy::render,
        };
        let none = render(&PolicySpec {
            profile: Profile::None,
            ..PolicySpec::default()
        })
        .unwrap();
        assert!(!policy_records(&none.yaml));
        for profile in [Profile::Metadata, Profile::Default] {
            let rendered = render(&PolicySpec {
                profile,
                ..PolicySpec::default()
            })
            .unwrap();
            assert!(policy_records(&rendered.yaml), "{profile:?}");
        }
    }
}
