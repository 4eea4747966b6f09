//! The miner API's node endpoints (chutes-miner.md §6.3), as `minerctl` calls them.
//!
//! Every request carries the management signature of the miner's own hotkey (the API
//! accepts its own key as signer): the body's sha256 for `POST`, the purpose `management`
//! otherwise. A signature is single-use and valid for 30 s, so each request is signed
//! right before it is sent.

use std::sync::Arc;
use std::time::Duration;

use chutes_protocol::Hotkey;
use chutes_protocol::auth::Payload;
use provision_errors::chain;
use serde::Serialize;
use serde_json::Value;

use crate::error::NodesError;
use crate::sse::{Event, Parser};
use crate::status::{Server, parse_servers};

/// The body of `POST /servers/` (the original's `ServerArgs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerArgs {
    /// The Kubernetes node name (the inventory host name).
    pub name: String,
    /// Hotkey of the validator the GPUs are advertised to.
    pub validator: String,
    /// Price per GPU per hour.
    pub hourly_cost: f64,
    /// GPU type as the validator names it, e.g. `h100_sxm`.
    pub gpu_short_ref: String,
}

/// How a finished add flow ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AddOutcome {
    /// The API's completion line (`completed server bootstrapping in N seconds!`).
    pub completion: String,
    /// Every progress line, in order.
    pub lines: Vec<String>,
}

/// The completion line the API sends last on success.
const COMPLETED: &str = "completed server bootstrapping";
/// The prefix of the API's failure line (the bootstrap has been undone when it is sent).
const FAILED: &str = "error:";

pub struct MinerApi {
    base: String,
    hotkey: Arc<Hotkey>,
    http: reqwest::Client,
}

impl MinerApi {
    /// `base` is the API's root URL, e.g. `http://203.0.113.1:32000`.
    pub fn new(base: &str, hotkey: Arc<Hotkey>) -> Result<MinerApi, NodesError> {
        let bad = |reason: &str| NodesError::BadUrl { url: base.to_string(), reason: reason.to_string() };
        let trimmed = base.trim_end_matches('/');
        let rest = trimmed
            .strip_prefix("http://")
            .or_else(|| trimmed.strip_prefix("https://"))
            .ok_or_else(|| bad("must start with http:// or https://"))?;
        if rest.is_empty() || rest.contains('/') {
            return Err(bad("must be the API's root, scheme://host[:port], without a path"));
        }
        // reqwest is built without a default crypto provider (kube links two).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(MinerApi { base: trimmed.to_string(), hotkey, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> reqwest::RequestBuilder {
        // Requests without a body sign a purpose bound to method and path, so a
        // captured signature cannot be sent to another endpoint (the miner API
        // accepts this form and, unless bound-only, the original CLI's plain one).
        // The path as it goes on the wire (percent-encoded), which is what the API sees.
        let url = format!("{}{path}", self.base);
        let wire_path =
            reqwest::Url::parse(&url).map(|u| u.path().to_owned()).unwrap_or_else(|_| path.to_owned());
        let bound = chutes_protocol::auth::bound_management_purpose(method.as_str(), &wire_path);
        let payload = match &body {
            Some(b) => Payload::Body(b),
            None => Payload::Purpose(&bound),
        };
        let mut rb = self.http.request(method, url);
        for (name, value) in self.hotkey.sign_management(self.hotkey.ss58(), payload).iter() {
            rb = rb.header(name, value);
        }
        match body {
            Some(b) => rb.header(reqwest::header::CONTENT_TYPE, "application/json").body(b),
            None => rb,
        }
    }

    async fn send(
        &self,
        method: &'static str,
        path: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, NodesError> {
        let resp = rb.send().await.map_err(|e| NodesError::Transport {
            method,
            url: format!("{}{path}", self.base),
            reason: chain(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        // The API words every refusal as {"detail": "..."}; anything else is shown as is.
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("detail").map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string)))
            .unwrap_or_else(|| text.trim().to_string());
        if status == 401 || status == 403 {
            return Err(NodesError::NotAccepted {
                url: format!("{}{path}", self.base),
                ss58: self.hotkey.ss58().to_string(),
                status,
                detail,
            });
        }
        Err(NodesError::Refused { method, path: path.to_string(), status, detail })
    }

    async fn json(
        &self,
        method: &'static str,
        path: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<Value, NodesError> {
        let resp = self.send(method, path, rb.timeout(Duration::from_secs(60))).await?;
        resp.json::<Value>()
            .await
            .map_err(|e| NodesError::BadAnswer { path: path.to_string(), reason: e.to_string() })
    }

    /// `POST /servers/`: starts the add flow and follows its progress, calling `on_line`
    /// for each line as it arrives. No overall timeout: the API bounds each of its waits
    /// (GraVal start, validator verification) and always ends the stream with a completion
    /// or an `error:` line.
    pub async fn add_server(
        &self,
        args: &ServerArgs,
        mut on_line: impl FnMut(&Event),
    ) -> Result<AddOutcome, NodesError> {
        let path = "/servers/";
        let body = serde_json::to_vec(args)
            .map_err(|e| NodesError::BadAnswer { path: path.into(), reason: e.to_string() })?;
        let mut resp = self.send("POST", path, self.request(reqwest::Method::POST, path, Some(body))).await?;
        let mut parser = Parser::default();
        let mut lines = vec![];
        let mut verdict: Option<Result<String, String>> = None;
        let mut take = |e: Event, lines: &mut Vec<String>, verdict: &mut Option<Result<String, String>>| {
            on_line(&e);
            if e.message.starts_with(COMPLETED) {
                *verdict = Some(Ok(e.message.clone()));
            } else if let Some(why) = e.message.strip_prefix(FAILED) {
                *verdict = Some(Err(why.trim().to_string()));
            }
            lines.push(e.message);
        };
        loop {
            let chunk = resp.chunk().await.map_err(|e| NodesError::Transport {
                method: "POST",
                url: format!("{}{path}", self.base),
                reason: format!("progress stream broke: {}", chain(&e)),
            });
            match chunk {
                Ok(Some(bytes)) => {
                    for e in parser.push(&bytes) {
                        take(e, &mut lines, &mut verdict);
                    }
                }
                Ok(None) => break,
                Err(e) if verdict.is_some() => {
                    // The verdict arrived; a connection cut after it changes nothing.
                    let _ = e;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = parser.finish() {
            take(e, &mut lines, &mut verdict);
        }
        match verdict {
            Some(Ok(completion)) => Ok(AddOutcome { completion, lines }),
            Some(Err(why)) => Err(NodesError::AddFailed(why)),
            None => Err(NodesError::StreamEnded { node: args.name.clone() }),
        }
    }

    /// `GET /servers/`: every tracked server with its GPUs and deployments (each with its
    /// chute), typed; a missing or mistyped field is an error naming its path.
    pub async fn servers(&self) -> Result<Vec<Server>, NodesError> {
        let path = "/servers/";
        let rb = self.request(reqwest::Method::GET, path, None).timeout(Duration::from_secs(60));
        let body = self.send("GET", path, rb).await?.bytes().await.map_err(|e| NodesError::Transport {
            method: "GET",
            url: format!("{}{path}", self.base),
            reason: format!("reading the answer: {}", chain(&e)),
        })?;
        parse_servers(&body).map_err(|reason| NodesError::BadAnswer { path: path.into(), reason })
    }

    /// `GET /servers/{name}/delete_preflight`: the deployments with jobs running on the
    /// server. `None` when the API does not track the server (404).
    pub async fn delete_preflight(&self, name: &str) -> Result<Option<Vec<Value>>, NodesError> {
        let path = format!("/servers/{name}/delete_preflight");
        match self.json("GET", &path, self.request(reqwest::Method::GET, &path, None)).await {
            Ok(v) => match v.get("jobs") {
                Some(Value::Array(jobs)) => Ok(Some(jobs.clone())),
                _ => Err(NodesError::BadAnswer { path, reason: format!("no `jobs` list in {v}") }),
            },
            Err(NodesError::Refused { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /servers/{name}`: the API records the deletion and Gepetto undeploys and
    /// tells the validators asynchronously. Returns the API's `detail`.
    pub async fn delete_server(&self, name: &str) -> Result<String, NodesError> {
        let path = format!("/servers/{name}");
        let v = self.json("DELETE", &path, self.request(reqwest::Method::DELETE, &path, None)).await?;
        Ok(v.get("detail").and_then(Value::as_str).unwrap_or("deletion started").to_string())
    }
}
