//! Deploy errors. They name the object and what went wrong, never a secret value: Secret
//! data is only ever sent to the API server, and the server does not echo it in errors.

use minerctl_manifests::ObjectKey;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("{0}")]
    Preflight(String),
    #[error("{object}: {message}")]
    Api { object: String, message: String },
    #[error(
        "{object}: fields changed by another manager would be overwritten: {message}\n  (someone edited the object outside minerctl; rerun with --force-conflicts to take the fields back)"
    )]
    Conflict { object: String, message: String },
    #[error("{object}: kind {kind} is not one minerctl can apply")]
    UnknownKind { object: String, kind: String },
    #[error("timed out after {seconds}s waiting for rollouts; not ready:\n{details}")]
    RolloutTimeout { seconds: u64, details: String },
    #[error("cannot write progress output: {0}")]
    Output(#[from] std::io::Error),
}

impl DeployError {
    pub(crate) fn api(key: &ObjectKey, e: kube::Error) -> DeployError {
        match e {
            kube::Error::Api(s) if s.code == 409 && s.message.starts_with("Apply failed") => {
                DeployError::Conflict { object: key.to_string(), message: s.message }
            }
            kube::Error::Api(s) => DeployError::Api {
                object: key.to_string(),
                message: format!("{} ({} {})", s.message, s.code, s.reason),
            },
            other => DeployError::Api { object: key.to_string(), message: other.to_string() },
        }
    }
}
