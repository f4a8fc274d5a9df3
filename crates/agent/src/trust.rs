//! What the agent lets a revision write to its host, as pure code: the webhook kubeconfig must
//! send the audit stream only to the server and CA pinned in the agent's own arguments, with a
//! credential held in the file itself.
//!
//! A revision comes from the API (a Secret, named in the ClusterAudit status). Whoever could
//! write those could otherwise point every kube-apiserver's audit stream, request bodies and all,
//! at a server of their own, turn TLS checks off, or have the kube-apiserver run a program
//! (an exec plugin) or read a file of the host (a client key, a token file) as root. The pins
//! come from where the agent itself was installed (the chart), which those writers do not reach.

use std::collections::BTreeSet;

use base64::Engine;
use kube::config::{AuthInfo, Cluster, Kubeconfig};
use rustls::pki_types::{CertificateDer, pem::PemObject};

/// What a webhook kubeconfig may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pins {
    /// The server URLs allowed, exactly as the kubeconfig must spell one of them.
    pub servers: Vec<String>,
    /// The CA certificates (DER) the kubeconfig must trust: these and no others.
    pub ca: BTreeSet<Vec<u8>>,
}

/// Why a webhook kubeconfig is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("the agent has no pinned webhook server and CA (--webhook-server, --webhook-ca-file)")]
    NotPinned,
    #[error("the webhook kubeconfig is not the JSON the operator writes: {0}")]
    NotJson(String),
    #[error("the webhook kubeconfig has {0}, which the agent cannot check")]
    UnknownField(String),
    #[error("the webhook kubeconfig has no {0}")]
    Missing(&'static str),
    #[error("cluster {cluster} sends to {server}, not to the pinned webhook server ({pinned})")]
    OtherServer {
        cluster: String,
        server: String,
        pinned: String,
    },
    #[error("cluster {0} turns off TLS verification (insecure-skip-tls-verify)")]
    Insecure(String),
    #[error("cluster {0} trusts other CA certificates than the pinned webhook CA")]
    OtherCa(String),
    #[error("cluster {cluster} sets {field}: the webhook goes to the pinned server directly")]
    Redirected {
        cluster: String,
        field: &'static str,
    },
    #[error("user {user} names a file on the host ({field}): credentials must be in the file")]
    HostFile { user: String, field: &'static str },
    #[error("user {user} runs a plugin ({field}), which the kube-apiserver would run as root")]
    Plugin { user: String, field: &'static str },
    #[error("user {user} sets {field}, which a webhook does not use")]
    Unexpected { user: String, field: &'static str },
}

/// Whether the webhook kubeconfig `content` may be written to the host under `pins`.
///
/// It must be JSON (as the operator writes it): YAML's merge keys, anchors and tags, and several
/// documents in one, are read differently by different parsers, and the kube-apiserver must
/// read exactly what was checked here. Fields the parser does not know are refused for the same
/// reason. Every cluster and every user is checked, not only the current context's.
pub fn check_webhook_kubeconfig(content: &str, pins: Option<&Pins>) -> Result<(), Untrusted> {
    let pins = pins.ok_or(Untrusted::NotPinned)?;
    let config: Kubeconfig =
        serde_json::from_str(content).map_err(|err| Untrusted::NotJson(err.to_string()))?;
    unknown("the top level", config.other.keys())?;
    if config.preferences.is_some() || config.extensions.is_some() {
        return Err(Untrusted::UnknownField("preferences or extensions".into()));
    }
    if config.clusters.is_empty() {
        return Err(Untrusted::Missing("cluster"));
    }
    for named in &config.clusters {
        unknown(&format!("cluster {}", named.name), named.other.keys())?;
        let cluster = named
            .cluster
            .as_ref()
            .ok_or(Untrusted::Missing("cluster"))?;
        check_cluster(&named.name, cluster, pins)?;
    }
    for named in &config.auth_infos {
        unknown(&format!("user {}", named.name), named.other.keys())?;
        if let Some(user) = &named.auth_info {
            check_user(&named.name, user)?;
        }
    }
    for named in &config.contexts {
        unknown(&format!("context {}", named.name), named.other.keys())?;
        if let Some(context) = &named.context {
            unknown(&format!("context {}", named.name), context.other.keys())?;
            if context.extensions.is_some() {
                return Err(Untrusted::UnknownField(format!(
                    "extensions in context {}",
                    named.name
                )));
            }
        }
    }
    Ok(())
}

fn unknown<'k>(what: &str, mut keys: impl Iterator<Item = &'k String>) -> Result<(), Untrusted> {
    match keys.next() {
        Some(key) => Err(Untrusted::UnknownField(format!("{key:?} in {what}"))),
        None => Ok(()),
    }
}

fn check_cluster(name: &str, cluster: &Cluster, pins: &Pins) -> Result<(), Untrusted> {
    unknown(&format!("cluster {name}"), cluster.other.keys())?;
    let server = cluster
        .server
        .as_deref()
        .ok_or(Untrusted::Missing("server"))?;
    if !pins.servers.iter().any(|pinned| pinned == server) {
        return Err(Untrusted::OtherServer {
            cluster: name.into(),
            server: server.into(),
            pinned: pins.servers.join(" or "),
        });
    }
    if cluster.insecure_skip_tls_verify == Some(true) {
        return Err(Untrusted::Insecure(name.into()));
    }
    for (field, set) in [
        (
            "certificate-authority",
            cluster.certificate_authority.is_some(),
        ),
        ("proxy-url", cluster.proxy_url.is_some()),
        ("tls-server-name", cluster.tls_server_name.is_some()),
        ("extensions", cluster.extensions.is_some()),
    ] {
        if set {
            return Err(Untrusted::Redirected {
                cluster: name.into(),
                field,
            });
        }
    }
    let data = cluster
        .certificate_authority_data
        .as_deref()
        .ok_or(Untrusted::Missing("certificate-authority-data"))?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| Untrusted::OtherCa(name.into()))?;
    if certificates(&pem).as_ref() != Some(&pins.ca) {
        return Err(Untrusted::OtherCa(name.into()));
    }
    Ok(())
}

fn check_user(name: &str, user: &AuthInfo) -> Result<(), Untrusted> {
    unknown(&format!("user {name}"), user.other.keys())?;
    let user_name = || name.to_string();
    for (field, set) in [
        ("client-certificate", user.client_certificate.is_some()),
        ("client-key", user.client_key.is_some()),
        ("tokenFile", user.token_file.is_some()),
    ] {
        if set {
            return Err(Untrusted::HostFile {
                user: user_name(),
                field,
            });
        }
    }
    for (field, set) in [
        ("exec", user.exec.is_some()),
        ("auth-provider", user.auth_provider.is_some()),
    ] {
        if set {
            return Err(Untrusted::Plugin {
                user: user_name(),
                field,
            });
        }
    }
    for (field, set) in [
        ("username", user.username.is_some()),
        ("password", user.password.is_some()),
        ("as", user.impersonate.is_some()),
        ("as-uid", user.impersonate_uid.is_some()),
        ("as-groups", user.impersonate_groups.is_some()),
        ("as-user-extra", user.impersonate_user_extra.is_some()),
        ("extensions", user.extensions.is_some()),
    ] {
        if set {
            return Err(Untrusted::Unexpected {
                user: user_name(),
                field,
            });
        }
    }
    Ok(())
}

/// The DER certificates in a PEM bundle; None when it holds none or cannot be read.
pub fn certificates(pem: &[u8]) -> Option<BTreeSet<Vec<u8>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .map(|certificate| certificate.map(|c| c.as_ref().to_vec()))
        .collect::<Result<BTreeSet<_>, _>>()
        .ok()?;
    (!certificates.is_empty()).then_some(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusteraudit_core::rollout::revision::{WEBHOOK_CONFIG_FILE, WebhookTarget, build};
    use serde_json::{Value, json};

    const SERVER: &str = "https://10.96.0.50:8443/v1/webhook";

    fn ca(name: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn pins(ca_pem: &str) -> Pins {
        Pins {
            servers: vec![SERVER.into()],
            ca: certificates(ca_pem.as_bytes()).unwrap(),
        }
    }

    /// The kubeconfig the operator writes.
    fn written(server: &str, ca_pem: &str) -> Value {
        let revision = build(
            "rules: []\n",
            &WebhookTarget {
                server: server.into(),
                ca_pem: ca_pem.into(),
                token: "t0ken".into(),
            },
        );
        serde_json::from_str(&revision.files[WEBHOOK_CONFIG_FILE]).unwrap()
    }

    fn check(config: &Value, pins: &Pins) -> Result<(), Untrusted> {
        check_webhook_kubeconfig(&config.to_string(), Some(pins))
    }

    #[test]
    fn the_kubeconfig_the_operator_writes_with_the_pinned_server_and_ca_is_trusted() {
        let ca = ca("collector-ca");
        let pins = pins(&ca);
        assert_eq!(check(&written(SERVER, &ca), &pins), Ok(()));
        // Pretty or compact, it is the same JSON.
        let pretty = build(
            "rules: []\n",
            &WebhookTarget {
                server: SERVER.into(),
                ca_pem: ca.clone(),
                token: "t0ken".into(),
            },
        );
        assert_eq!(
            check_webhook_kubeconfig(&pretty.files[WEBHOOK_CONFIG_FILE], Some(&pins)),
            Ok(())
        );
        // Without pins nothing is trusted.
        assert_eq!(
            check_webhook_kubeconfig(&pretty.files[WEBHOOK_CONFIG_FILE], None),
            Err(Untrusted::NotPinned)
        );
    }

    #[test]
    fn another_server_or_ca_is_refused() {
        let ca = ca("collector-ca");
        let pins = pins(&ca);
        let elsewhere = check(&written("https://203.0.113.9/v1/webhook", &ca), &pins);
        assert!(
            matches!(&elsewhere, Err(Untrusted::OtherServer { server, .. }) if server == "https://203.0.113.9/v1/webhook"),
            "{elsewhere:?}"
        );
        // The pinned server with a look-alike path or port is another server too.
        for server in [
            "https://10.96.0.50:8443/v1/webhook/../other",
            "https://10.96.0.50:9443/v1/webhook",
        ] {
            assert!(matches!(
                check(&written(server, &ca), &pins),
                Err(Untrusted::OtherServer { .. })
            ));
        }
        let attacker = self::ca("attacker-ca");
        assert_eq!(
            check(&written(SERVER, &attacker), &pins),
            Err(Untrusted::OtherCa("clusteraudit-collector".into()))
        );
        // The pinned CA plus one more is not the pinned CA.
        let both = format!("{ca}{attacker}");
        assert_eq!(
            check(&written(SERVER, &both), &pins),
            Err(Untrusted::OtherCa("clusteraudit-collector".into()))
        );
        let mut no_ca = written(SERVER, &ca);
        no_ca["clusters"][0]["cluster"]
            .as_object_mut()
            .unwrap()
            .remove("certificate-authority-data");
        assert_eq!(
            check(&no_ca, &pins),
            Err(Untrusted::Missing("certificate-authority-data"))
        );
        // A second cluster elsewhere, even if no context names it.
        let mut second = written(SERVER, &ca);
        let other = written("https://203.0.113.9/v1/webhook", &ca)["clusters"][0].clone();
        let mut other = other;
        other["name"] = json!("spare");
        second["clusters"].as_array_mut().unwrap().push(other);
        assert!(matches!(
            check(&second, &pins),
            Err(Untrusted::OtherServer { .. })
        ));
    }

    #[test]
    fn tls_turned_off_plugins_and_host_files_are_refused() {
        let ca = ca("collector-ca");
        let pins = pins(&ca);
        let with = |path: &[&str], value: Value| {
            let mut config = written(SERVER, &ca);
            let mut at = &mut config;
            for part in &path[..path.len() - 1] {
                at = match part.parse::<usize>() {
                    Ok(index) => &mut at[index],
                    Err(_) => &mut at[*part],
                };
            }
            at[path[path.len() - 1]] = value;
            check(&config, &pins)
        };
        let cluster = ["clusters", "0", "cluster"];
        let user = ["users", "0", "user"];
        let at = |base: [&'static str; 3], field: &'static str| {
            let mut path = base.to_vec();
            path.push(field);
            path
        };
        assert_eq!(
            with(&at(cluster, "insecure-skip-tls-verify"), json!(true)),
            Err(Untrusted::Insecure("clusteraudit-collector".into()))
        );
        for field in ["certificate-authority", "proxy-url", "tls-server-name"] {
            assert!(
                matches!(
                    with(&at(cluster, field), json!("/etc/kubernetes/pki/x")),
                    Err(Untrusted::Redirected { .. })
                ),
                "{field}"
            );
        }
        assert!(matches!(
            with(
                &at(user, "exec"),
                json!({"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/sh", "args": ["-c", "id"]})
            ),
            Err(Untrusted::Plugin { field: "exec", .. })
        ));
        assert!(matches!(
            with(
                &at(user, "auth-provider"),
                json!({"name": "oidc", "config": {}})
            ),
            Err(Untrusted::Plugin {
                field: "auth-provider",
                ..
            })
        ));
        for field in ["client-certificate", "client-key", "tokenFile"] {
            assert!(
                matches!(
                    with(&at(user, field), json!("/etc/kubernetes/pki/ca.key")),
                    Err(Untrusted::HostFile { .. })
                ),
                "{field}"
            );
        }
        assert!(matches!(
            with(&at(user, "as"), json!("system:admin")),
            Err(Untrusted::Unexpected { .. })
        ));
    }

    #[test]
    fn what_parsers_could_read_differently_is_refused() {
        let ca = ca("collector-ca");
        let pins = pins(&ca);
        // A field the parser does not know, anywhere, might be one the kube-apiserver knows.
        let mut unknown = written(SERVER, &ca);
        unknown["users"][0]["user"]["Exec"] = json!({"command": "/bin/sh"});
        assert!(matches!(
            check(&unknown, &pins),
            Err(Untrusted::UnknownField(_))
        ));
        let mut top = written(SERVER, &ca);
        top["x-extra"] = json!(1);
        assert!(matches!(
            check(&top, &pins),
            Err(Untrusted::UnknownField(_))
        ));
        // A key given twice: one parser may take the first, another the last.
        let good = written(SERVER, &ca).to_string();
        let twice = good.replacen(
            &format!("\"server\":\"{SERVER}\""),
            &format!("\"server\":\"{SERVER}\",\"server\":\"https://203.0.113.9/\""),
            1,
        );
        assert_ne!(twice, good);
        assert!(matches!(
            check_webhook_kubeconfig(&twice, Some(&pins)),
            Err(Untrusted::NotJson(_))
        ));
        // YAML (merge keys, several documents) is not what the operator writes.
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {SERVER}\n    <<: {{proxy-url: http://203.0.113.9}}\n"
        );
        assert!(matches!(
            check_webhook_kubeconfig(&yaml, Some(&pins)),
            Err(Untrusted::NotJson(_))
        ));
    }
}
