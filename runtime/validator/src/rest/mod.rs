//! Signed REST client for the validator API (reference section 10).
//!
//! Each endpoint is signed the way chutes-api checks it: where the endpoint
//! declares a purpose (`miner`, `launch`, `instances`, `nodes`, `graval`) the
//! signature covers the purpose even if a body is sent; otherwise it covers the
//! sha256 of the exact body bytes sent. Public endpoints are not signed.
//!
//! Retries: connection failures and 5xx answers are retried with capped, jittered
//! backoff, re-signing each attempt (fresh nonce). A 4xx is never retried: the
//! validator has decided. Timeouts are retried only for reads and deletes, since a
//! POST that timed out may have been applied; for the same reason a write is sent
//! again after a 502 or 503 (a gateway that reached no server, a server turning work
//! away) but not after a 500 or 504, which can come after the write was applied.
//! `launch_config` is a GET that is not a read: it is sent again only when no
//! connection was made.

mod listing;
pub mod remote;

use std::sync::Arc;
use std::time::Duration;

use chutes_protocol::{Hotkey, Payload};
use miner_events::Backoff;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

pub use listing::{Listing, ListingParser, ListingReply};
pub use remote::{ActiveInstance, RemoteChute, RemoteInstance, RemoteMetrics, Utilization};

use crate::ValidatorTarget;

/// Timeouts and retries. `Default` is what the miner runs with.
#[derive(Debug, Clone)]
pub struct RestOptions {
    /// Tries per call, the first included.
    pub attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_cap: Duration,
    pub connect_timeout: Duration,
    /// Whole request for ordinary calls.
    pub timeout: Duration,
    /// Whole request for `/miner/*` listings (they carry chute code).
    pub listing_timeout: Duration,
    /// Longest silence between two chunks of a listing.
    pub listing_idle: Duration,
    pub max_listing_bytes: usize,
}

impl Default for RestOptions {
    fn default() -> Self {
        RestOptions {
            attempts: 4,
            backoff_initial: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            listing_timeout: Duration::from_secs(300),
            listing_idle: Duration::from_secs(60),
            max_listing_bytes: 512 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RestError {
    #[error("bad validator API URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{method} {url}: {source} (after {attempts} attempt(s))")]
    Transport {
        method: String,
        url: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: HTTP {status}: {body} (after {attempts} attempt(s))")]
    Status { method: String, url: String, status: u16, body: String, attempts: u32 },
    #[error("{method} {url}: unexpected reply: {reason}")]
    Decode { method: String, url: String, reason: String },
}

impl RestError {
    /// The HTTP status, when the validator answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            RestError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `GET /instances/launch_config` refusals the scheduler acts on.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the validator has no capacity for this chute now (423)")]
    AtCapacity,
    #[error("this miner already attempted the job (403)")]
    AlreadyTried,
    #[error("the job is unknown to the validator (404)")]
    JobNotFound,
    #[error(transparent)]
    Other(#[from] RestError),
}

/// A launch token for a new instance. The token is a bearer credential: it is
/// never printed by `Debug`.
#[derive(Clone, Deserialize)]
pub struct LaunchConfig {
    pub token: String,
    pub config_id: String,
}

impl std::fmt::Debug for LaunchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchConfig")
            .field("token", &"<redacted>")
            .field("config_id", &self.config_id)
            .finish()
    }
}

/// `POST /nodes/` reply (202).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PostNodesReply {
    /// The submitted nodes, each with the validator's `seed`.
    pub nodes: Vec<Value>,
    pub task_id: String,
}

/// What a `verification_status` means for add-node (section 6.3 step 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    Pending,
    /// `error` or `failed`.
    Failed(String),
    /// Anything else.
    Done(String),
}

impl Verification {
    pub fn from_status(status: &str) -> Verification {
        match status {
            "pending" => Verification::Pending,
            "error" | "failed" => Verification::Failed(status.to_owned()),
            other => Verification::Done(other.to_owned()),
        }
    }
}

/// How a request is signed.
#[derive(Clone, Copy)]
enum Sign {
    None,
    Purpose(&'static str),
    Body,
}

/// Whether a reply that fails to decode may be quoted in the error (and so reach logs).
#[derive(Debug, Clone, Copy)]
enum Echo {
    Shown,
    /// The reply carries a secret (a launch token): say only where it broke.
    Secret,
}

/// Which failures a request may be sent again after.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads and deletes: connection failures, 5xx and timeouts.
    Idempotent,
    /// Writes: connection failures, 502 and 503. Not a timeout, a 500 or a 504: the
    /// write may have been applied, and sending `POST /nodes/` again would then fail
    /// as a duplicate, or a legacy announce register the instance twice.
    Write,
    /// Sent again only when it never reached the validator (no connection). chutes-api's
    /// `GET /instances/launch_config` appends the miner to the job's history (a second
    /// try is a 403) and inserts a config on every call, so after a lost answer a retry
    /// would turn a granted job into `AlreadyTried` or leave an orphan config.
    Never,
}

impl Retry {
    fn for_method(method: &Method) -> Retry {
        if matches!(*method, Method::GET | Method::DELETE) { Retry::Idempotent } else { Retry::Write }
    }

    /// Whether a request answered with this 5xx may be sent again.
    fn after_status(self, status: reqwest::StatusCode) -> bool {
        match self {
            Retry::Idempotent => true,
            Retry::Write => matches!(status.as_u16(), 502 | 503),
            Retry::Never => false,
        }
    }
}

/// The client for one validator. Cheap to clone.
#[derive(Clone)]
pub struct ValidatorClient {
    http: reqwest::Client,
    base: String,
    hotkey: Arc<Hotkey>,
    options: RestOptions,
}

impl std::fmt::Debug for ValidatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidatorClient")
            .field("api", &self.base)
            .field("miner", &self.hotkey.ss58())
            .finish()
    }
}

impl ValidatorClient {
    pub fn new(target: &ValidatorTarget, hotkey: Arc<Hotkey>) -> Result<Self, RestError> {
        Self::with_options(target, hotkey, RestOptions::default())
    }

    pub fn with_options(
        target: &ValidatorTarget,
        hotkey: Arc<Hotkey>,
        options: RestOptions,
    ) -> Result<Self, RestError> {
        let bad = |reason: String| RestError::BadUrl { url: target.api.clone(), reason };
        let base = target.api.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad(format!("scheme {} is not http or https", parsed.scheme())));
        }
        crate::ensure_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .build()
            .map_err(|e| bad(format!("HTTP client: {e}")))?;
        Ok(ValidatorClient { http, base, hotkey, options })
    }

    /// `GET /nodes/supported`: GPU short refs the validator accepts.
    pub async fn nodes_supported(&self) -> Result<Vec<String>, RestError> {
        self.json(Method::GET, "/nodes/supported", Sign::None, None).await
    }

    /// `POST /nodes/` (body-signed): advertise a server's GPUs; 202 with seeds and a task.
    pub async fn post_nodes(&self, body: &Value) -> Result<PostNodesReply, RestError> {
        self.json(Method::POST, "/nodes/", Sign::Body, Some(body)).await
    }

    /// `GET /nodes/verification_status?task_id=` (purpose `graval`): the raw status.
    pub async fn verification_status(&self, task_id: &str) -> Result<Verification, RestError> {
        let path = format!("/nodes/verification_status?task_id={}", encode(task_id));
        let reply: Value = self.json(Method::GET, &path, Sign::Purpose("graval"), None).await?;
        match reply.get("status").and_then(Value::as_str) {
            Some(s) => Ok(Verification::from_status(s)),
            None => Err(self.decode(Method::GET, &path, format!("no string `status` in {reply}"))),
        }
    }

    /// `DELETE /nodes/{gpu_id}` (purpose `nodes`).
    pub async fn delete_node(&self, gpu_id: &str) -> Result<(), RestError> {
        let path = format!("/nodes/{}", encode(gpu_id));
        self.call(Method::DELETE, &path, Sign::Purpose("nodes"), None).await.map(drop)
    }

    /// One `/miner/*` listing (purpose `miner`), streamed.
    pub async fn listing(&self, listing: Listing) -> Result<ListingReply, RestError> {
        let path = listing.path();
        let timeout = self.options.listing_timeout;
        let mut response =
            self.send(Method::GET, path, Sign::Purpose("miner"), None, timeout, Retry::Idempotent).await?;
        let mut parser = ListingParser::new(self.options.max_listing_bytes);
        let fail = |reason: String| self.decode(Method::GET, path, reason);
        loop {
            let chunk = match tokio::time::timeout(self.options.listing_idle, response.chunk()).await {
                Err(_) => {
                    return Err(fail(format!("no data for {:?} mid-listing", self.options.listing_idle)));
                }
                Ok(Err(e)) => return Err(fail(format!("stream broke: {e}"))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            parser.feed(&chunk).map_err(fail)?;
        }
        parser.finish().map_err(fail)
    }

    /// `GET /miner/chutes/{chute_id}/{version}` (purpose `miner`).
    pub async fn chute(&self, chute_id: &str, version: &str) -> Result<Value, RestError> {
        let path = format!("/miner/chutes/{}/{}", encode(chute_id), encode(version));
        self.json(Method::GET, &path, Sign::Purpose("miner"), None).await
    }

    /// `GET /miner/chutes/{chute_id}/{version}`, typed; a reply without the fields a
    /// deployment needs is a [`RestError::Decode`] naming the field.
    pub async fn remote_chute(&self, chute_id: &str, version: &str) -> Result<RemoteChute, RestError> {
        let path = format!("/miner/chutes/{}/{}", encode(chute_id), encode(version));
        self.json(Method::GET, &path, Sign::Purpose("miner"), None).await
    }

    /// A listing with its items typed. `None` when the reply was not authoritative
    /// (neither items nor `NO_ITEMS`); a malformed item fails the whole listing.
    pub async fn typed_listing<T: serde::de::DeserializeOwned>(
        &self,
        listing: Listing,
    ) -> Result<Option<Vec<T>>, RestError> {
        let Some(items) = self.listing(listing).await?.authoritative() else { return Ok(None) };
        items
            .into_iter()
            .map(|item| {
                serde_json::from_value(item)
                    .map_err(|e| self.decode(Method::GET, listing.path(), format!("malformed item: {e}")))
            })
            .collect::<Result<Vec<T>, _>>()
            .map(Some)
    }

    /// `GET /miner/active_instances/` (purpose `miner`): every miner's active instances
    /// with their compute multipliers (the successor's preemption input). Read as a
    /// JSON array, or as a `data:` stream like the other `/miner/*` listings (the
    /// reference names the endpoint, not its framing; the validator emulator answers
    /// JSON).
    pub async fn active_instances(&self) -> Result<Option<Vec<ActiveInstance>>, RestError> {
        let path = Listing::ActiveInstances.path();
        let timeout = self.options.listing_timeout;
        let response =
            self.send(Method::GET, path, Sign::Purpose("miner"), None, timeout, Retry::Idempotent).await?;
        let fail = |reason: String| self.decode(Method::GET, path, reason);
        let body = response.bytes().await.map_err(|e| fail(format!("reading the reply: {e}")))?;
        if body.len() > self.options.max_listing_bytes {
            return Err(fail(format!("reply over {} bytes", self.options.max_listing_bytes)));
        }
        let items: Vec<Value> = if body.trim_ascii_start().first() == Some(&b'[') {
            serde_json::from_slice(&body).map_err(|e| fail(format!("malformed JSON: {e}")))?
        } else {
            let mut parser = ListingParser::new(self.options.max_listing_bytes);
            parser.feed(&body).map_err(fail)?;
            match parser.finish().map_err(fail)?.authoritative() {
                Some(items) => items,
                None => return Ok(None),
            }
        };
        items
            .into_iter()
            .map(|item| serde_json::from_value(item).map_err(|e| fail(format!("malformed item: {e}"))))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// `GET /chutes/utilization`, typed.
    pub async fn utilization_typed(&self) -> Result<Vec<Utilization>, RestError> {
        self.json(Method::GET, "/chutes/utilization", Sign::None, None).await
    }

    /// `GET /miner/inventory` (purpose `miner`).
    pub async fn inventory(&self) -> Result<Vec<Value>, RestError> {
        self.json(Method::GET, "/miner/inventory", Sign::Purpose("miner"), None).await
    }

    /// `DELETE /miner/jobs/{job_id}` (purpose `miner`): give a claimed job back.
    pub async fn release_job(&self, job_id: &str) -> Result<(), RestError> {
        let path = format!("/miner/jobs/{}", encode(job_id));
        self.call(Method::DELETE, &path, Sign::Purpose("miner"), None).await.map(drop)
    }

    /// `GET /chutes/utilization` (public).
    pub async fn utilization(&self) -> Result<Vec<Value>, RestError> {
        self.json(Method::GET, "/chutes/utilization", Sign::None, None).await
    }

    /// `GET /chutes/rolling_updates` (public).
    pub async fn rolling_updates(&self) -> Result<Vec<Value>, RestError> {
        self.json(Method::GET, "/chutes/rolling_updates", Sign::None, None).await
    }

    /// `GET /instances/launch_config?chute_id=[&job_id=]` (purpose `launch`).
    /// Not retried once it reached the validator: a 5xx or a timeout is the caller's
    /// error to judge, since the validator may have granted it (see `Retry::Never`).
    pub async fn launch_config(
        &self,
        chute_id: &str,
        job_id: Option<&str>,
    ) -> Result<LaunchConfig, LaunchError> {
        let mut path = format!("/instances/launch_config?chute_id={}", encode(chute_id));
        if let Some(job) = job_id {
            path.push_str(&format!("&job_id={}", encode(job)));
        }
        match self
            .json_with(Method::GET, &path, Sign::Purpose("launch"), None, Retry::Never, Echo::Secret)
            .await
        {
            Ok(config) => Ok(config),
            Err(e) => Err(match e.status() {
                Some(423) => LaunchError::AtCapacity,
                Some(403) => LaunchError::AlreadyTried,
                Some(404) => LaunchError::JobNotFound,
                _ => LaunchError::Other(e),
            }),
        }
    }

    /// Legacy (chutes < 0.3.0) `POST /instances/{chute_id}/` (body-signed).
    pub async fn announce_instance(
        &self,
        chute_id: &str,
        node_ids: &[String],
        host: &str,
        port: u16,
    ) -> Result<Value, RestError> {
        let path = format!("/instances/{}/", encode(chute_id));
        let body = json!({"node_ids": node_ids, "host": host, "port": port});
        self.json(Method::POST, &path, Sign::Body, Some(&body)).await
    }

    /// Legacy `PATCH /instances/{chute_id}/{instance_id}` `{"active": true}` (body-signed).
    pub async fn activate_instance(&self, chute_id: &str, instance_id: &str) -> Result<Value, RestError> {
        let path = format!("/instances/{}/{}", encode(chute_id), encode(instance_id));
        self.json(Method::PATCH, &path, Sign::Body, Some(&json!({"active": true}))).await
    }

    /// `DELETE /instances/{chute_id}/{instance_id}` (purpose `instances`). A 404
    /// (already gone) is success too; returns whether it was still there.
    pub async fn delete_instance(&self, chute_id: &str, instance_id: &str) -> Result<bool, RestError> {
        let path = format!("/instances/{}/{}", encode(chute_id), encode(instance_id));
        match self.call(Method::DELETE, &path, Sign::Purpose("instances"), None).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        sign: Sign,
        body: Option<&Value>,
    ) -> Result<T, RestError> {
        let retry = Retry::for_method(&method);
        self.json_with(method, path, sign, body, retry, Echo::Shown).await
    }

    async fn json_with<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        sign: Sign,
        body: Option<&Value>,
        retry: Retry,
        echo: Echo,
    ) -> Result<T, RestError> {
        let response = self.send(method.clone(), path, sign, body, self.options.timeout, retry).await?;
        let bytes = response.bytes().await.map_err(|e| self.decode(method.clone(), path, e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            let reason = match echo {
                Echo::Shown => {
                    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                    format!("{e}: {shown}")
                }
                // serde's own message may quote a value of the body, so only where it broke.
                Echo::Secret => format!(
                    "{:?} error at line {} column {} of a {}-byte reply (not shown: it carries a secret)",
                    e.classify(),
                    e.line(),
                    e.column(),
                    bytes.len()
                ),
            };
            self.decode(method, path, reason)
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        sign: Sign,
        body: Option<&Value>,
    ) -> Result<reqwest::Response, RestError> {
        let retry = Retry::for_method(&method);
        self.send(method, path, sign, body, self.options.timeout, retry).await
    }

    /// Sends with signing and retries; a non-2xx final answer is an error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        sign: Sign,
        body: Option<&Value>,
        timeout: Duration,
        retry: Retry,
    ) -> Result<reqwest::Response, RestError> {
        let url = format!("{}{}", self.base, path);
        // The exact bytes sent are the bytes hashed: serde_json's compact form, as orjson.
        let bytes = match body {
            Some(v) => {
                Some(serde_json::to_vec(v).map_err(|e| self.decode(method.clone(), path, e.to_string()))?)
            }
            None => None,
        };
        let idempotent = retry == Retry::Idempotent;
        let attempts = self.options.attempts.max(1);
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_cap);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), &url).timeout(timeout);
            let signed = match (sign, &bytes) {
                (Sign::None, _) => None,
                (Sign::Purpose(p), _) => Some(self.hotkey.sign_request(Payload::Purpose(p))),
                (Sign::Body, Some(b)) => Some(self.hotkey.sign_request(Payload::Body(b))),
                (Sign::Body, None) => Some(self.hotkey.sign_request(Payload::Body(b""))),
            };
            if let Some(headers) = signed {
                for (name, value) in headers.iter() {
                    request = request.header(name, value);
                }
            }
            if let Some(b) = &bytes {
                request = request.header("content-type", "application/json").body(b.clone());
            }
            let last = attempt >= attempts;
            match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response)
                    if response.status().is_server_error()
                        && !last
                        && retry.after_status(response.status()) =>
                {
                    tracing::warn!(%method, %url, status = response.status().as_u16(), attempt, "validator API error; retrying");
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    let body: String = text.chars().take(500).collect();
                    return Err(RestError::Status {
                        method: method.to_string(),
                        url,
                        status,
                        body,
                        attempts: attempt,
                    });
                }
                Err(e) if !last && (e.is_connect() || (idempotent && (e.is_timeout() || e.is_request()))) => {
                    tracing::warn!(%method, %url, error = %e, attempt, "validator API unreachable; retrying");
                }
                Err(source) => {
                    return Err(RestError::Transport {
                        method: method.to_string(),
                        url,
                        attempts: attempt,
                        source,
                    });
                }
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn decode(&self, method: Method, path: &str, reason: String) -> RestError {
        RestError::Decode { method: method.to_string(), url: format!("{}{}", self.base, path), reason }
    }
}

/// Percent-encodes a path segment or query value (ids are uuids and short refs,
/// but a stray `/` or `&` must not change the request).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_change_the_request_shape() {
        assert_eq!(encode("a1-b_2.c~"), "a1-b_2.c~");
        assert_eq!(encode("../x&y=1"), "..%2Fx%26y%3D1");
    }

    #[test]
    fn launch_tokens_stay_out_of_debug_output() {
        let c = LaunchConfig { token: "eyJsecret".into(), config_id: "k".into() };
        assert!(!format!("{c:?}").contains("eyJsecret"));
    }

    #[test]
    fn verification_outcomes() {
        assert_eq!(Verification::from_status("pending"), Verification::Pending);
        assert_eq!(Verification::from_status("failed"), Verification::Failed("failed".into()));
        assert_eq!(Verification::from_status("error"), Verification::Failed("error".into()));
        assert_eq!(Verification::from_status("verified"), Verification::Done("verified".into()));
    }
}
