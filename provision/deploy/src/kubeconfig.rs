//! A kube client from kubeconfig text (a file, or `microk8s config` read over SSH).

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::DeployError;

/// Builds a client for `context` (or the current context) of this kubeconfig.
///
/// `server` replaces the API server URL of every cluster entry (`microk8s config` prints
/// the node's own address, which may not be the one this machine reaches it by). A plain
/// `http://` server carries no TLS, so certificates in the file are ignored for it.
pub async fn client_from_kubeconfig(
    yaml: &str,
    context: Option<&str>,
    server: Option<&str>,
) -> Result<kube::Client, DeployError> {
    // kube links two rustls providers; without a default it panics on the first request.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut kc = Kubeconfig::from_yaml(yaml).map_err(|e| DeployError::Kubeconfig(e.to_string()))?;
    let mut plain_http = false;
    for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        if let Some(s) = server {
            c.server = Some(s.to_string());
        }
        if c.server.as_deref().is_some_and(|s| s.starts_with("http://")) {
            plain_http = true;
            c.certificate_authority = None;
            c.certificate_authority_data = None;
        }
    }
    if plain_http {
        for a in kc.auth_infos.iter_mut().filter_map(|a| a.auth_info.as_mut()) {
            a.client_certificate = None;
            a.client_certificate_data = None;
            a.client_key = None;
            a.client_key_data = None;
        }
    }
    let options = KubeConfigOptions { context: context.map(str::to_string), ..Default::default() };
    let config = kube::Config::from_custom_kubeconfig(kc, &options)
        .await
        .map_err(|e| DeployError::Kubeconfig(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| DeployError::Kubeconfig(e.to_string()))
}
