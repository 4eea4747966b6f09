//! `images push` to a registry (values `images.registry`): the OCI distribution API.
//!
//! A small client of our own on reqwest rather than a registry crate: a push needs six
//! endpoints (`GET /v2/`, manifest and blob `HEAD`, upload `POST`/`PATCH`/`PUT`, manifest
//! `PUT`) and the two ways registries ask for credentials, which is less code than the
//! dependencies a general client brings.
//!
//! * Auth: the first `GET /v2/` answers 401 with a `WWW-Authenticate` challenge. `Basic`:
//!   every request carries the credentials. `Bearer realm=...,service=...`: a token for
//!   `repository:<repo>:pull,push` is fetched from the realm (with the credentials, if
//!   any) and renewed when a request is refused again. A refusal of the credentials
//!   themselves is an error that names the registry and the user, before anything is
//!   uploaded.
//! * An image whose manifest digest the registry holds is left alone; of the others, each
//!   blob the registry holds (`HEAD`) is skipped, the rest uploaded in one `PUT` (small)
//!   or `PATCH` chunks closed by a `PUT ?digest=` (large: never held in memory whole).
//!   The manifest goes last, by tag, so a registry never lists an image whose blobs it
//!   lacks.
//! * The password lives in [`Credentials`], whose `Debug` redacts it; it appears in no
//!   error, URL or log line. Credentials (Basic, or a Bearer token for the registry) go to
//!   the registry's own origin only; see [`Route`] for a `Location` or redirect elsewhere.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use provision_errors::chain;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use sha2::Digest as _;
use zeroize::Zeroizing;

use crate::lock::{Lock, LockedImage};

/// Blobs up to this size go up in one request; larger ones in chunks of this size.
pub const CHUNK: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("images.registry `{value}`: {reason}")]
    Invalid { value: String, reason: String },
    #[error("registry {registry}: {what}: {reason}")]
    Http { registry: String, what: String, reason: String },
    #[error(
        "registry {registry} refused the credentials of user `{user}` ({status}); check --registry-user and \
         --registry-password-file"
    )]
    Refused { registry: String, user: String, status: StatusCode },
    #[error(
        "registry {registry} asks for credentials ({scheme}); pass --registry-user and --registry-password-file"
    )]
    NeedsCredentials { registry: String, scheme: String },
    #[error("registry {registry}: {what}: {status}{body}")]
    Status { registry: String, what: String, status: StatusCode, body: String },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{archive}: {reason}")]
    Archive { archive: PathBuf, reason: String },
}

/// Where the images go: `host[:port][/path]`, e.g. `registry.example.com/miner`; the
/// image `chutes-miner` becomes the repository `<path>/chutes-miner`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    pub host: String,
    pub path: String,
}

impl RegistryRef {
    pub fn parse(value: &str) -> Result<RegistryRef, RegistryError> {
        let bad =
            |reason: &str| RegistryError::Invalid { value: value.to_string(), reason: reason.to_string() };
        if value.contains("://") {
            return Err(bad(
                "give host[:port][/path] without a scheme (the registry is always reached over HTTPS)",
            ));
        }
        let value_trimmed = value.trim_end_matches('/');
        let (host, path) = value_trimmed.split_once('/').unwrap_or((value_trimmed, ""));
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let host_ok =
            host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !host_ok {
            return Err(bad("the host may hold only letters, digits, `.`, `-` and a `:port`"));
        }
        // Repository path components: lowercase alphanumerics with `.`, `_`, `-` separators.
        let path_ok = path.split('/').all(|c| {
            path.is_empty()
                || (!c.is_empty()
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                    }))
        });
        if !path_ok {
            return Err(bad("the path may hold only lowercase letters, digits, `.`, `_`, `-` and `/`"));
        }
        Ok(RegistryRef { host: host.to_string(), path: path.to_string() })
    }

    /// The repository of `image` in this registry.
    pub fn repository(&self, image: &str) -> String {
        if self.path.is_empty() { image.to_string() } else { format!("{}/{image}", self.path) }
    }

    /// `host/path/image@digest`: what manifests reference.
    pub fn reference(&self, image: &str, digest: &str) -> String {
        format!("{}/{}@{digest}", self.host, self.repository(image))
    }
}

impl std::fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() { f.write_str(&self.host) } else { write!(f, "{}/{}", self.host, self.path) }
    }
}

/// A user and the password read from a file. `Debug` shows the user only.
pub struct Credentials {
    user: String,
    password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

impl Credentials {
    /// `user` with the password held in `file` (one line; a trailing newline is dropped).
    pub fn from_file(user: &str, file: &Path) -> Result<Credentials, RegistryError> {
        let err = |reason: String| RegistryError::File { path: file.to_path_buf(), reason };
        let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| err(e.to_string()))?);
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(err("the registry password file is empty".into()));
        }
        if user.is_empty() || user.contains(':') {
            return Err(err(format!("registry user `{user}` must be non-empty and hold no `:`")));
        }
        Ok(Credentials { user: user.to_string(), password: Zeroizing::new(password.to_string()) })
    }

    fn basic(&self) -> Zeroizing<String> {
        let pair = Zeroizing::new(format!("{}:{}", self.user, self.password.as_str()));
        Zeroizing::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())))
    }
}

/// What a push did with one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The registry already holds the manifest digest: nothing was sent.
    Present,
    /// `check`: it would be pushed.
    WouldPush,
    /// Pushed: blobs uploaded (and their bytes) and blobs the registry held already.
    Uploaded { blobs: usize, bytes: u64, skipped: usize },
}

/// Where a request may go, by its URL against the registry's (`https://<host>`).
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The registry's own origin (scheme, host and port): with the credentials.
    Registry,
    /// Another origin over HTTPS (an upload `Location` on object storage or a CDN, which
    /// the distribution spec allows: the URL carries its own state or signature): without
    /// the credentials, which belong to the registry and not to its storage backend.
    Elsewhere,
    /// Plain HTTP, even to the registry's host (a proxy that terminates TLS and lets the
    /// registry believe it is reached over HTTP): refused, whatever it would carry. Blobs
    /// and upload state would cross the network in the clear, and the registry is always
    /// reached over HTTPS.
    Downgrade,
}

fn route(base: &reqwest::Url, url: &reqwest::Url) -> Route {
    if url.origin() == base.origin() {
        Route::Registry
    } else if url.scheme() == "https" {
        Route::Elsewhere
    } else {
        Route::Downgrade
    }
}

/// Whether the registry's credentials may go to the token service its Bearer challenge
/// names: over https, or over plain http only on this machine's loopback (nothing crosses
/// the network; the lab's token service). The realm is the registry's word, but a
/// misconfigured or hostile one must not get the password sent in the clear.
fn realm_takes_credentials(realm: &reqwest::Url) -> bool {
    let host = realm.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    realm.scheme() == "https" || (realm.scheme() == "http" && loopback)
}

/// A URL as an error shows it: no user or password, query (upload state, signatures) or
/// fragment.
fn shown(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

#[derive(Clone)]
enum Auth {
    Anonymous,
    Basic,
    Bearer { realm: String, service: Option<String> },
}

/// A client for one registry, with the credentials (if any) and the CA to trust.
pub struct Client {
    http: reqwest::Client,
    registry: RegistryRef,
    /// `https://<host>/`: the origin that gets the credentials.
    base: reqwest::Url,
    credentials: Option<Credentials>,
    auth: Auth,
    /// Bearer tokens by repository.
    tokens: HashMap<String, Zeroizing<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.registry)
            .field("credentials", &self.credentials)
            .finish()
    }
}

/// `key="value"` pairs of a challenge's parameters (quoted values may hold commas).
fn challenge_params(params: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_string());
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

/// A blob of an archive: where its bytes lie.
struct Blob {
    digest: String,
    offset: u64,
    size: u64,
}

impl Client {
    /// `ca_file`: PEM certificates trusted besides the system's (a registry with a
    /// certificate of its own CA).
    pub fn new(
        registry: RegistryRef,
        credentials: Option<Credentials>,
        ca_file: Option<&Path>,
    ) -> Result<Client, RegistryError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = reqwest::Url::parse(&format!("https://{}/", registry.host)).map_err(|e| {
            RegistryError::Invalid { value: registry.to_string(), reason: format!("not a host: {e}") }
        })?;
        // Redirects (a blob or manifest HEAD sent on to storage): reqwest (0.13) drops
        // `Authorization` itself when a redirect changes scheme, host or port
        // (`redirect::remove_sensitive_headers`); `send` answers no challenge from another
        // origin; and this policy refuses HTTPS to plain HTTP, as `route` does.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let from_https = attempt.previous().iter().any(|u| u.scheme() == "https");
            if from_https && attempt.url().scheme() != "https" {
                let to = shown(attempt.url());
                attempt.error(format!("refused a redirect to {to}: plain HTTP, not HTTPS"))
            } else if attempt.previous().len() >= 10 {
                attempt.error("too many redirects")
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("minerctl/", env!("CARGO_PKG_VERSION")))
            .redirect(redirects)
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(300));
        if let Some(path) = ca_file {
            let err = |reason: String| RegistryError::File { path: path.to_path_buf(), reason };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| err(chain(&e)))?;
            if certs.is_empty() {
                return Err(err("no PEM certificate in the CA file".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| RegistryError::Http {
            registry: registry.to_string(),
            what: "setting up the HTTPS client".into(),
            reason: chain(&e),
        })?;
        Ok(Client { http, registry, base, credentials, auth: Auth::Anonymous, tokens: HashMap::new() })
    }

    fn http_err(&self, what: &str, e: reqwest::Error) -> RegistryError {
        let mut reason = chain(&e);
        if reason.contains("UnknownIssuer") {
            reason.push_str(" (a certificate of the registry's own CA: pass --registry-ca)");
        }
        RegistryError::Http { registry: self.registry.to_string(), what: what.to_string(), reason }
    }

    fn refused(&self, status: StatusCode) -> RegistryError {
        match &self.credentials {
            Some(c) => {
                RegistryError::Refused { registry: self.registry.to_string(), user: c.user.clone(), status }
            }
            None => RegistryError::NeedsCredentials {
                registry: self.registry.to_string(),
                scheme: format!("{status} without credentials"),
            },
        }
    }

    async fn status_err(&self, what: &str, response: reqwest::Response) -> RegistryError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let body: String = body.trim().chars().take(300).collect();
        let body = if body.is_empty() { String::new() } else { format!(": {body}") };
        RegistryError::Status { registry: self.registry.to_string(), what: what.to_string(), status, body }
    }

    /// Reads the challenge of a 401 and remembers how to answer it.
    fn learn(&mut self, headers: &HeaderMap) -> Result<(), RegistryError> {
        let challenge = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let needs = |scheme: &str| RegistryError::NeedsCredentials {
            registry: self.registry.to_string(),
            scheme: scheme.to_string(),
        };
        self.auth = match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.credentials.is_none() {
                    return Err(needs("Basic"));
                }
                Auth::Basic
            }
            "bearer" => {
                let p = challenge_params(params);
                let realm = p.get("realm").cloned().ok_or_else(|| RegistryError::Http {
                    registry: self.registry.to_string(),
                    what: "reading its Bearer challenge".into(),
                    reason: "no realm".into(),
                })?;
                Auth::Bearer { realm, service: p.get("service").cloned() }
            }
            other => {
                return Err(RegistryError::Http {
                    registry: self.registry.to_string(),
                    what: "reading its authentication challenge".into(),
                    reason: format!("unsupported scheme `{other}`"),
                });
            }
        };
        self.tokens.clear();
        Ok(())
    }

    /// Fetches a Bearer token for `repo` from the realm.
    async fn token(&mut self, repo: &str) -> Result<(), RegistryError> {
        let Auth::Bearer { realm, service } = self.auth.clone() else { return Ok(()) };
        let mut url = reqwest::Url::parse(&realm).map_err(|e| RegistryError::Http {
            registry: self.registry.to_string(),
            what: "reading its Bearer challenge".into(),
            reason: format!("realm `{realm}`: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &format!("repository:{repo}:pull,push"));
        }
        if self.credentials.is_some() && !realm_takes_credentials(&url) {
            return Err(RegistryError::Http {
                registry: self.registry.to_string(),
                what: "fetching a token".into(),
                reason: format!(
                    "its token service {} is not https: the credentials are not sent there in the clear",
                    shown(&url)
                ),
            });
        }
        let mut request = self.http.get(url);
        if let Some(c) = &self.credentials {
            request = request.header(AUTHORIZATION, c.basic().as_str());
        }
        let response = request.send().await.map_err(|e| self.http_err("fetching a token", e))?;
        if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(self.refused(response.status()));
        }
        if !response.status().is_success() {
            return Err(self.status_err("fetching a token", response).await);
        }
        let body = response.bytes().await.map_err(|e| self.http_err("reading its token", e))?;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let token = body["token"].as_str().or_else(|| body["access_token"].as_str()).ok_or_else(|| {
            RegistryError::Http {
                registry: self.registry.to_string(),
                what: "reading its token".into(),
                reason: "no `token` in the answer".into(),
            }
        })?;
        self.tokens.insert(repo.to_string(), Zeroizing::new(format!("Bearer {token}")));
        Ok(())
    }

    fn authorization(&self, repo: &str) -> Option<Zeroizing<String>> {
        match &self.auth {
            Auth::Anonymous => None,
            Auth::Basic => self.credentials.as_ref().map(Credentials::basic),
            Auth::Bearer { .. } => self.tokens.get(repo).cloned(),
        }
    }

    /// `url` (a path under `/v2/`, or an upload location) resolved against the registry,
    /// and whether it gets the credentials ([`Route`]).
    fn target(&self, url: &str, what: &str) -> Result<(reqwest::Url, bool), RegistryError> {
        let err = |reason: String| RegistryError::Http {
            registry: self.registry.to_string(),
            what: what.to_string(),
            reason,
        };
        let url = self.base.join(url).map_err(|e| err(format!("a URL it named: {e}")))?;
        match route(&self.base, &url) {
            Route::Registry => Ok((url, true)),
            Route::Elsewhere => Ok((url, false)),
            Route::Downgrade => Err(err(format!(
                "it sent this request to {}, over plain HTTP: refused (the registry is reached over \
                 HTTPS only; a proxy that terminates TLS in front of it must pass on the original \
                 scheme, e.g. `X-Forwarded-Proto: https`)",
                shown(&url)
            ))),
        }
    }

    /// One request to `url` (a path under `/v2/` or an upload location), answering an
    /// authentication challenge of the registry once. 401 after that is a refusal of the
    /// credentials; 401 from another origin is an error naming it.
    async fn send(
        &mut self,
        method: Method,
        url: &str,
        repo: &str,
        headers: &[(reqwest::header::HeaderName, String)],
        body: Option<bytes::Bytes>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let (url, credentials) = self.target(url, what)?;
        for attempt in 0..2 {
            let mut request = self.http.request(method.clone(), url.clone());
            for (name, value) in headers {
                request = request.header(name, value);
            }
            if let Some(a) = self.authorization(repo).filter(|_| credentials) {
                request = request.header(AUTHORIZATION, a.as_str());
            }
            if let Some(b) = &body {
                request = request.header(CONTENT_LENGTH, b.len()).body(b.clone());
            }
            let response = request.send().await.map_err(|e| self.http_err(what, e))?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            // (the URL that answered, after any redirect)
            if route(&self.base, response.url()) != Route::Registry {
                return Err(RegistryError::Http {
                    registry: self.registry.to_string(),
                    what: what.to_string(),
                    reason: format!(
                        "{} asks for credentials: those of the registry go to {} only",
                        shown(response.url()),
                        self.base.origin().ascii_serialization()
                    ),
                });
            }
            if attempt == 1 {
                return Err(self.refused(response.status()));
            }
            self.learn(response.headers())?;
            self.token(repo).await?;
        }
        Err(self.refused(StatusCode::UNAUTHORIZED))
    }

    /// `GET /v2/`: proves the address, the certificate and the credentials before anything
    /// else is asked or sent.
    pub async fn check(&mut self) -> Result<(), RegistryError> {
        let response = self.send(Method::GET, "/v2/", "", &[], None, "GET /v2/").await?;
        if !response.status().is_success() {
            return Err(self.status_err("GET /v2/ (is this an OCI registry?)", response).await);
        }
        Ok(())
    }

    /// Whether `repo` holds `what` (`manifests/<digest>` or `blobs/<digest>`).
    async fn exists(&mut self, repo: &str, what: &str) -> Result<bool, RegistryError> {
        let accept = [(reqwest::header::ACCEPT, crate::oci::MANIFEST_MEDIA_TYPE.to_string())];
        let path = format!("/v2/{repo}/{what}");
        let response = self.send(Method::HEAD, &path, repo, &accept, None, &format!("HEAD {path}")).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.status_err(&format!("HEAD {path}"), response).await),
        }
    }

    /// The upload location a response names: absolute, or relative to the URL that
    /// answered. [`Client::target`] decides whether it gets the credentials.
    fn location(&self, response: &reqwest::Response, what: &str) -> Result<String, RegistryError> {
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            RegistryError::Http {
                registry: self.registry.to_string(),
                what: what.to_string(),
                reason: "the answer names no Location".into(),
            }
        })?;
        let url = response.url().join(location).map_err(|e| RegistryError::Http {
            registry: self.registry.to_string(),
            what: what.to_string(),
            reason: format!("the answer's Location is no URL: {e}"),
        })?;
        Ok(url.to_string())
    }

    /// Uploads one blob from `file`, checking its digest on the way.
    async fn upload(
        &mut self,
        repo: &str,
        file: &mut std::fs::File,
        archive: &Path,
        blob: &Blob,
    ) -> Result<(), RegistryError> {
        let what = format!("uploading {}", blob.digest);
        let read_err = |e: std::io::Error| RegistryError::Archive {
            archive: archive.to_path_buf(),
            reason: e.to_string(),
        };
        let response = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                repo,
                &[],
                Some(bytes::Bytes::new()),
                &what,
            )
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(self.status_err(&what, response).await);
        }
        let mut location = self.location(&response, &what)?;
        file.seek(SeekFrom::Start(blob.offset)).map_err(read_err)?;
        let mut hash = sha2::Sha256::new();
        let mut sent = 0u64;
        let octet = (CONTENT_TYPE, "application/octet-stream".to_string());
        // Small blobs: the bytes travel with the closing PUT. Large ones: PATCH chunks first.
        let mut last = bytes::Bytes::new();
        while sent < blob.size {
            let n = (blob.size - sent).min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; n];
            file.read_exact(&mut buf).map_err(read_err)?;
            hash.update(&buf);
            if blob.size <= CHUNK as u64 {
                last = bytes::Bytes::from(buf);
                break;
            }
            let range = (reqwest::header::CONTENT_RANGE, format!("{sent}-{}", sent + n as u64 - 1));
            let headers = [octet.clone(), range];
            let response = self
                .send(Method::PATCH, &location, repo, &headers, Some(bytes::Bytes::from(buf)), &what)
                .await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(self.status_err(&what, response).await);
            }
            location = self.location(&response, &what)?;
            sent += n as u64;
        }
        let actual = format!("sha256:{}", hex::encode(hash.finalize()));
        if actual != blob.digest {
            let _ = self.send(Method::DELETE, &location, repo, &[], None, &what).await;
            return Err(RegistryError::Archive {
                archive: archive.to_path_buf(),
                reason: format!(
                    "blob {} holds bytes of digest {actual}: the archive is damaged",
                    blob.digest
                ),
            });
        }
        let separator = if location.contains('?') { '&' } else { '?' };
        let close = format!("{location}{separator}digest={}", blob.digest);
        let response = self.send(Method::PUT, &close, repo, &[octet], Some(last), &what).await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_err(&what, response).await);
        }
        Ok(())
    }

    /// Pushes the image `name` of the lock at `lock_path` (tagged with the lock's tag).
    pub async fn push(
        &mut self,
        lock_path: &Path,
        name: &str,
        image: &LockedImage,
        check: bool,
    ) -> Result<Pushed, RegistryError> {
        let repo = self.registry.repository(name);
        if self.exists(&repo, &format!("manifests/{}", image.digest)).await? {
            return Ok(Pushed::Present);
        }
        if check {
            return Ok(Pushed::WouldPush);
        }
        let archive = Lock::archive_path(lock_path, image);
        let bad = |reason: String| RegistryError::Archive { archive: archive.clone(), reason };
        let mut file = std::fs::File::open(&archive).map_err(|e| bad(e.to_string()))?;
        let entries = crate::tar::index(&mut file, &archive).map_err(|e| bad(e.to_string()))?;
        let blob_at = |digest: &str| -> Result<Blob, RegistryError> {
            let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
            let (offset, size) = entries
                .get(&format!("blobs/sha256/{hex}"))
                .copied()
                .ok_or_else(|| bad(format!("no blob {digest} in the archive")))?;
            Ok(Blob { digest: digest.to_string(), offset, size })
        };
        let manifest_blob = blob_at(&image.digest)?;
        let mut manifest = vec![0u8; manifest_blob.size as usize];
        file.seek(SeekFrom::Start(manifest_blob.offset)).map_err(|e| bad(e.to_string()))?;
        file.read_exact(&mut manifest).map_err(|e| bad(e.to_string()))?;
        if crate::oci::sha256(&manifest) != image.digest {
            return Err(bad(format!(
                "its manifest is not {}: the archive does not match the lock",
                image.digest
            )));
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&manifest).map_err(|e| bad(format!("manifest: {e}")))?;
        let media_type = doc["mediaType"].as_str().unwrap_or(crate::oci::MANIFEST_MEDIA_TYPE).to_string();
        let mut blobs = vec![doc["config"].clone()];
        blobs.extend(doc["layers"].as_array().cloned().unwrap_or_default());
        let (mut uploaded, mut bytes, mut skipped) = (0, 0, 0);
        for descriptor in blobs {
            let digest = descriptor["digest"]
                .as_str()
                .ok_or_else(|| bad("manifest: a descriptor without digest".into()))?;
            let blob = blob_at(digest)?;
            if self.exists(&repo, &format!("blobs/{digest}")).await? {
                skipped += 1;
                continue;
            }
            self.upload(&repo, &mut file, &archive, &blob).await?;
            uploaded += 1;
            bytes += blob.size;
        }
        let tag = image.tag.rsplit_once(':').map_or(image.tag.as_str(), |(_, t)| t);
        let what = format!("PUT manifest {repo}:{tag}");
        let headers = [(CONTENT_TYPE, media_type)];
        let path = format!("/v2/{repo}/manifests/{tag}");
        let response =
            self.send(Method::PUT, &path, &repo, &headers, Some(bytes::Bytes::from(manifest)), &what).await?;
        if response.status() != StatusCode::CREATED {
            return Err(self.status_err(&what, response).await);
        }
        let stored = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok());
        if let Some(stored) = stored.filter(|d| *d != image.digest) {
            return Err(RegistryError::Http {
                registry: self.registry.to_string(),
                what,
                reason: format!("stored the manifest as {stored}, not {}", image.digest),
            });
        }
        Ok(Pushed::Uploaded { blobs: uploaded, bytes, skipped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_values_parse_or_say_what_is_wrong() {
        let r = RegistryRef::parse("registry.example.com:5000/miner/images/").unwrap();
        assert_eq!(r.host, "registry.example.com:5000");
        assert_eq!(
            r.reference("chutes-miner", "sha256:ab"),
            "registry.example.com:5000/miner/images/chutes-miner@sha256:ab"
        );
        assert_eq!(RegistryRef::parse("127.0.0.1:5000").unwrap().repository("x"), "x");
        for (bad, says) in [
            ("https://r.example", "without a scheme"),
            ("/miner", "no host"),
            ("r.example/Miner", "lowercase"),
            ("r.example//x", "lowercase"),
            ("user@r.example", "host may hold"),
        ] {
            let e = RegistryRef::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn bearer_challenges_are_read_with_quoted_commas() {
        let p = challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
    }

    #[test]
    fn credentials_go_to_the_registry_origin_only_and_never_over_plain_http() {
        let base = reqwest::Url::parse("https://registry.example:5000/").unwrap();
        let to = |url: &str| route(&base, &base.join(url).unwrap());
        assert_eq!(to("/v2/a/blobs/uploads/1?_state=x"), Route::Registry);
        assert_eq!(to("https://registry.example:5000/v2/a/blobs/uploads/1"), Route::Registry);
        assert_eq!(to("https://REGISTRY.example:5000/v2/"), Route::Registry);
        assert_eq!(to("https://registry.example/v2/"), Route::Elsewhere, "another port");
        assert_eq!(to("https://storage.example/upload?sig=x"), Route::Elsewhere);
        assert_eq!(to("http://registry.example:5000/v2/"), Route::Downgrade, "the same host over HTTP");
        assert_eq!(to("http://storage.example/upload"), Route::Downgrade);
        let default_port = reqwest::Url::parse("https://registry.example/").unwrap();
        assert_eq!(
            route(&default_port, &default_port.join("https://registry.example:443/v2/").unwrap()),
            Route::Registry
        );
        let url = reqwest::Url::parse("https://u:pw@storage.example/up/1?sig=secret#f").unwrap();
        assert_eq!(shown(&url), "https://storage.example/up/1");
    }

    #[test]
    fn a_token_service_gets_the_credentials_over_https_or_on_loopback_only() {
        let takes = |u: &str| realm_takes_credentials(&reqwest::Url::parse(u).unwrap());
        assert!(takes("https://auth.example/token"));
        assert!(takes("http://127.0.0.1:5001/token") && takes("http://[::1]/token"));
        assert!(takes("http://LOCALHOST:8080/token"));
        assert!(!takes("http://auth.example/token"), "cleartext over the network");
        assert!(!takes("http://192.0.2.7/token"));
        assert!(!takes("ftp://auth.example/token"));
    }

    #[test]
    fn credentials_never_show_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret-pw\n").unwrap();
        let c = Credentials::from_file("miner", &file).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.password.as_str(), "s3cret-pw");
        std::fs::write(&file, "\n").unwrap();
        let e = Credentials::from_file("miner", &file).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("pw"), "{e}");
    }
}
