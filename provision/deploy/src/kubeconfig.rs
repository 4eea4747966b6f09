//! A kube client from kubeconfig text (a file, or `microk8s config` read over SSH).

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::DeployError;

/// Builds a client for `context` (or the current context) of this kubeconfig.
pub async fn client_from_kubeconfig(yaml: &str, context: Option<&str>) -> Result<kube::Client, DeployError> {
    // kube links two rustls providers; without a default it panics on the first request.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::from_yaml(yaml).map_err(|e| DeployError::Kubeconfig(e.to_string()))?;
    let options = KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| DeployError::Kubeconfig(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| DeployError::Kubeconfig(e.to_string()))
}
