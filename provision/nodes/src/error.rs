//! Errors of node addition and removal. Each names the node or endpoint and the reason the
//! other side gave; request signatures and the hotkey never appear in them.

#[derive(Debug, thiserror::Error)]
pub enum NodesError {
    #[error("miner API URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("miner API {method} {url}: {reason}")]
    Transport { method: &'static str, url: String, reason: String },
    /// The API answered with an error status; `detail` is its `{"detail": ...}` text.
    #[error("miner API {method} {path} refused ({status}): {detail}")]
    Refused { method: &'static str, path: String, status: u16, detail: String },
    /// 401/403: the API does not take this hotkey's signature (another miner's key, or
    /// the API's clock far off). Only the public SS58 address is named.
    #[error(
        "the miner API at {url} did not accept the hotkey {ss58} ({status}: {detail}); pass the miner's own hotkey (--hotkey)"
    )]
    NotAccepted { url: String, ss58: String, status: u16, detail: String },
    #[error("miner API {path}: unexpected answer: {reason}")]
    BadAnswer { path: String, reason: String },
    /// The add flow ended with the API's error line.
    #[error("{0}")]
    AddFailed(String),
    #[error(
        "the progress stream of {node} ended before the API reported completion or failure; check `GET /servers/` for its state"
    )]
    StreamEnded { node: String },
    #[error("node {node}: {message}")]
    Kube { node: String, message: String },
    #[error("node {node}: pods still on it after {seconds}s: {pods}")]
    DrainTimeout { node: String, seconds: u64, pods: String },
    #[error("cannot write progress output: {0}")]
    Output(#[from] std::io::Error),
}

impl NodesError {
    pub(crate) fn kube(node: &str, e: kube::Error) -> NodesError {
        let message = match e {
            kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
            other => other.to_string(),
        };
        NodesError::Kube { node: node.to_string(), message }
    }
}
