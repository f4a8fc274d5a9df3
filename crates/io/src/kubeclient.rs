//! A Kubernetes client from an explicit kubeconfig, or from the environment (in-cluster service
//! account, then $KUBECONFIG / ~/.kube/config), as every role of the binary needs one.

use std::path::Path;

pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    crate::tls::install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|err| format!("reading {}: {err}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|err| format!("using {}: {err}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|err| err.to_string())?,
    };
    kube::Client::try_from(config).map_err(|err| err.to_string())
}
