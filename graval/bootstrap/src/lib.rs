//! The GraVal bootstrap server a validator talks to while verifying a new GPU node
//! (chutes-miner `graval_bootstrap/bootstrap.py`, GraVal 0.2.6 shapes):
//!
//! | endpoint | auth | body / response |
//! |---|---|---|
//! | `GET /ping` | none | `pong` |
//! | `GET /devices` | the miner itself, purpose `graval` | `{"devices": [device_info…]}` |
//! | `POST /prove` | whitelisted validator, body hash | `{seed, iterations, ciphertext: {uuid: b64}}` → `{devices, seed, proof: {uuid: {...}}, plaintext: {uuid: str}}` |
//! | `GET /info?challenge=` | whitelisted validator, purpose `graval` | 64-char text |
//! | `POST /remote_token` | whitelisted validator, purpose `graval` | `{token_url}` → the URL's JSON `token` as text |
//!
//! Differences from the original: an empty whitelist refuses every validator call
//! instead of switching verification off; nonces are bounded in the future too and a
//! nonce+signature pair is accepted once (both from `chutes_protocol::InboundVerifier`);
//! an unknown device uuid or an undecryptable ciphertext is a 400 naming it, not a 500.
//!
//! Every signed route checks what needs no body first (headers, miner, whitelist,
//! nonce window, replay: `InboundVerifier::precheck`, in a route layer), and only
//! then reads a body of at most [`MAX_BODY`] bytes (413 beyond); the original read
//! up to axum's 2 MB default before it authorized anything.
//!
//! `/remote_token` and its `token_url`: the original signs the purpose `graval`, so
//! the URL the node fetches is not covered and anyone on the path could redirect
//! the fetch (for instance to a service inside the cluster, whose JSON `token` the
//! server would hand back). The deployed validator still signs that way, so both
//! forms are accepted:
//! * a signature over sha256 of the body (as `/prove` does) covers `token_url`: the
//!   URL is fetched wherever it points;
//! * the original's purpose signature does not: the URL is fetched only if every
//!   address its host resolves to is public (never loopback, private, link-local...),
//!   and the connection goes to the address that was checked. What an attacker on
//!   the path can still do is point the fetch at a public server of theirs, which
//!   makes the validator's egress check fail: no more than dropping the request.

pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Extension, Json, Router};
use chutes_protocol::auth::{AuthError, InboundVerifier, Payload, Prechecked, now_unix};
use graval::node::decrypt_challenge;
use graval::{DeviceInfo, Node, WorkProduct};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

/// The purpose string GET endpoints (and `/remote_token`) are signed with.
pub const PURPOSE: &str = "graval";

/// Shared server state. GPU work is serialized by the node's mutex, as the
/// original's `gpu_lock`.
pub struct AppState {
    node: Arc<Mutex<Node>>,
    devices: Vec<DeviceInfo>,
    /// Requests from whitelisted validators.
    validators: InboundVerifier,
    /// Requests the miner signs for itself (`/devices`).
    miner_self: InboundVerifier,
}

impl AppState {
    /// `whitelist` may be empty: then every validator endpoint answers 401.
    pub fn new(
        node: Node,
        miner_ss58: &str,
        whitelist: &[String],
    ) -> Result<Self, chutes_protocol::KeyError> {
        let devices = node.devices();
        Ok(Self {
            node: Arc::new(Mutex::new(node)),
            devices,
            validators: InboundVerifier::new(miner_ss58, whitelist.iter().map(String::as_str))?,
            miner_self: InboundVerifier::new(miner_ss58, [miner_ss58])?,
        })
    }
}

/// Largest request body read. A challenge holds one short base64 ciphertext per
/// GPU (well under 1 KiB each) and `/remote_token` one URL; the original accepted
/// axum's 2 MB default.
pub const MAX_BODY: usize = 64 * 1024;

/// Which verifier a signed route answers to.
#[derive(Clone, Copy)]
enum Signers {
    /// The miner itself (`/devices`).
    Miner,
    /// Whitelisted validators.
    Validators,
}

pub fn router(state: Arc<AppState>) -> Router {
    let signed = |signers: Signers, route: MethodRouter<Arc<AppState>>| {
        route.route_layer(axum::middleware::from_fn_with_state(
            (state.clone(), signers),
            move |State((s, signers)): State<(Arc<AppState>, Signers)>, req: Request, next: Next| async move {
                precheck(&s, signers, req, next).await
            },
        ))
    };
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/devices", signed(Signers::Miner, get(devices)))
        .route("/prove", signed(Signers::Validators, post(prove)))
        .route("/info", signed(Signers::Validators, get(info)))
        .route("/remote_token", signed(Signers::Validators, post(remote_token)))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

impl AppState {
    fn verifier(&self, signers: Signers) -> &InboundVerifier {
        match signers {
            Signers::Miner => &self.miner_self,
            Signers::Validators => &self.validators,
        }
    }
}

/// The request's checks that need no body, before any body is read; the handler
/// finishes with the signature over what the route signs.
async fn precheck(s: &AppState, signers: Signers, mut req: Request, next: Next) -> Response {
    match s.verifier(signers).precheck(req.headers(), now_unix()) {
        Ok(pre) => {
            req.extensions_mut().insert(Checked { pre, signers });
            next.run(req).await
        }
        Err(e) => refused(&e).into_response(),
    }
}

/// A request that passed the precheck, for the handler to finish.
#[derive(Clone)]
struct Checked {
    pre: Prechecked,
    signers: Signers,
}

fn refused(e: &AuthError) -> ApiError {
    tracing::warn!(error = %e, "refused request");
    ApiError(StatusCode::UNAUTHORIZED, format!("go away: {e}"))
}

/// An error answer: status plus a plain-text reason.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn authorize(s: &AppState, c: &Checked, payload: Payload<'_>) -> Result<String, ApiError> {
    s.verifier(c.signers).finish(&c.pre, payload, now_unix()).map_err(|e| refused(&e))
}

#[derive(Serialize)]
struct DevicesResponse<'a> {
    devices: &'a [DeviceInfo],
}

async fn devices(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Checked>,
) -> Result<Response, ApiError> {
    authorize(&s, &c, Payload::Purpose(PURPOSE))?;
    Ok(Json(DevicesResponse { devices: &s.devices }).into_response())
}

/// The validator's PoVW challenge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub seed: u64,
    /// 64 hex characters, fresh for every `/prove` ([`graval::Nonce`]): without it the
    /// whole proof could be computed before the validator asks. Required.
    pub nonce: String,
    #[serde(default = "one")]
    pub iterations: u64,
    #[serde(default)]
    pub ciphertext: BTreeMap<String, String>,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceProof {
    pub device_id: usize,
    pub device_uuid: String,
    pub device_name: String,
    pub work_product: WorkProduct,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProveResponse {
    pub devices: Vec<DeviceInfo>,
    pub seed: u64,
    pub proof: BTreeMap<String, DeviceProof>,
    pub plaintext: BTreeMap<String, String>,
}

async fn prove(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Checked>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let signer = authorize(&s, &c, Payload::Body(&body))?;
    let challenge: Challenge =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid challenge body: {e}")))?;
    // The prover's own bound (v2 plans ask 16..=64 per model), checked before any work.
    graval::proof::check_iterations(challenge.iterations).map_err(|e| bad_request(e.to_string()))?;
    let nonce = graval::Nonce::from_hex(&challenge.nonce)
        .ok_or_else(|| bad_request("nonce must be 64 hex characters (32 fresh random bytes)"))?;
    let by_uuid: HashMap<&str, usize> =
        s.devices.iter().enumerate().map(|(i, d)| (d.uuid.as_str(), i)).collect();
    if let Some(unknown) = challenge.ciphertext.keys().find(|u| !by_uuid.contains_key(u.as_str())) {
        return Err(bad_request(format!("ciphertext names device {unknown}, which this node does not have")));
    }
    // What can be told from the text alone is refused before a minute of proof work.
    for (uuid, ct) in &challenge.ciphertext {
        match graval::crypto::parse_transport(ct) {
            Ok((Some(seed), _)) if seed != challenge.seed => {
                return Err(bad_request(format!(
                    "ciphertext for device {uuid}: its seed is not the request's"
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(bad_request(format!("ciphertext for device {uuid}: {e}"))),
        }
    }
    tracing::info!(validator = %signer, seed = challenge.seed, iterations = challenge.iterations, "proving");
    let guard = s.node.clone().lock_owned().await;
    let (seed, iterations) = (challenge.seed, challenge.iterations);
    let runs = tokio::task::spawn_blocking(move || {
        let mut node = guard;
        node.prove(seed, &nonce, iterations)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("proof task failed: {e}")))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("proof failed: {e}")))?;

    let mut plaintext = BTreeMap::new();
    for (uuid, ct) in &challenge.ciphertext {
        let run = &runs[by_uuid[uuid.as_str()]];
        let text = decrypt_challenge(run, iterations, ct)
            .map_err(|e| bad_request(format!("ciphertext for device {uuid}: {e}")))?;
        plaintext.insert(uuid.clone(), text);
    }
    let proof = runs
        .into_iter()
        .enumerate()
        .map(|(device_id, r)| {
            (
                r.device.uuid.clone(),
                DeviceProof {
                    device_id,
                    device_uuid: r.device.uuid,
                    device_name: r.device.name,
                    work_product: r.work_product,
                },
            )
        })
        .collect();
    Ok(Json(ProveResponse { devices: s.devices.clone(), seed, proof, plaintext }).into_response())
}

#[derive(Deserialize)]
struct InfoQuery {
    challenge: String,
}

async fn info(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Checked>,
    Query(q): Query<InfoQuery>,
) -> Result<String, ApiError> {
    authorize(&s, &c, Payload::Purpose(PURPOSE))?;
    graval::challenge::respond(&q.challenge, &s.devices).map_err(|e| bad_request(e.to_string()))
}

#[derive(Deserialize)]
struct TokenRequest {
    token_url: String,
}

async fn remote_token(
    State(s): State<Arc<AppState>>,
    Extension(c): Extension<Checked>,
    body: Bytes,
) -> Result<String, ApiError> {
    // Body-signed covers token_url; the original's purpose form does not (see the
    // module docs), so its URL may only lead to public addresses.
    let reach = match s.verifier(c.signers).finish(&c.pre, Payload::Body(&body), now_unix()) {
        Ok(_) => token::Reach::Anywhere,
        Err(AuthError::Signature(_)) => {
            authorize(&s, &c, Payload::Purpose(PURPOSE))?;
            token::Reach::PublicOnly
        }
        Err(e) => return Err(refused(&e)),
    };
    let req: TokenRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid body, expected {{\"token_url\": ...}}: {e}")))?;
    token::fetch_token(&req.token_url, reach).await.map_err(|e| match e {
        // The request's own URL is wrong: the caller's error, not the upstream's.
        token::TokenError::NotPublic { .. } | token::TokenError::Url(_) => bad_request(e.to_string()),
        other => ApiError(StatusCode::BAD_GATEWAY, other.to_string()),
    })
}
