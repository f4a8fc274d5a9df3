//! A Kubernetes client from an explicit kubeconfig, or from the environment (in-cluster service
//! account, then $KUBECONFIG / ~/.kube/config), as every role of the binary needs one.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("reading the kubeconfig {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("using the kubeconfig {path}: {source}")]
    Use {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("finding a kubeconfig or in-cluster service account: {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the client: {0}")]
    Build(#[source] kube::Error),
}

pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeClientError> {
    client_as(
        kubeconfig,
        concat!("clusteraudit/", env!("CARGO_PKG_VERSION")),
    )
    .await
}

/// A client whose requests carry `user_agent`, which the kube-apiserver's audit events record:
/// who wrote what can be told apart per replica.
pub async fn client_as(
    kubeconfig: Option<&Path>,
    user_agent: &str,
) -> Result<kube::Client, KubeClientError> {
    crate::tls::install_crypto_provider();
    let mut config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                KubeClientError::Read {
                    path: path.into(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|source| KubeClientError::Use {
                    path: path.into(),
                    source,
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(KubeClientError::Infer)?,
    };
    if let Ok(value) = http::HeaderValue::from_str(user_agent) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    kube::Client::try_from(config).map_err(KubeClientError::Build)
}
