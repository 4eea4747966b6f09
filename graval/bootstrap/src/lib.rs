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

pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chutes_protocol::auth::{InboundVerifier, Payload, now_unix};
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

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/devices", get(devices))
        .route("/prove", post(prove))
        .route("/info", get(info))
        .route("/remote_token", post(remote_token))
        .with_state(state)
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

fn authorize(v: &InboundVerifier, headers: &HeaderMap, payload: Payload<'_>) -> Result<String, ApiError> {
    v.verify(headers, payload, now_unix()).map_err(|e| {
        tracing::warn!(error = %e, "refused request");
        ApiError(StatusCode::UNAUTHORIZED, format!("go away: {e}"))
    })
}

#[derive(Serialize)]
struct DevicesResponse<'a> {
    devices: &'a [DeviceInfo],
}

async fn devices(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&s.miner_self, &headers, Payload::Purpose(PURPOSE))?;
    Ok(Json(DevicesResponse { devices: &s.devices }).into_response())
}

/// The validator's PoVW challenge.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    pub seed: u64,
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
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let signer = authorize(&s.validators, &headers, Payload::Body(&body))?;
    let challenge: Challenge =
        serde_json::from_slice(&body).map_err(|e| bad_request(format!("invalid challenge body: {e}")))?;
    // The prover's own bound (v2 plans ask 16..=64 per model), checked before any work.
    graval::proof::check_iterations(challenge.iterations).map_err(|e| bad_request(e.to_string()))?;
    let by_uuid: HashMap<&str, usize> =
        s.devices.iter().enumerate().map(|(i, d)| (d.uuid.as_str(), i)).collect();
    if let Some(unknown) = challenge.ciphertext.keys().find(|u| !by_uuid.contains_key(u.as_str())) {
        return Err(bad_request(format!("ciphertext names device {unknown}, which this node does not have")));
    }
    tracing::info!(validator = %signer, seed = challenge.seed, iterations = challenge.iterations, "proving");
    let guard = s.node.clone().lock_owned().await;
    let (seed, iterations) = (challenge.seed, challenge.iterations);
    let runs = tokio::task::spawn_blocking(move || {
        let mut node = guard;
        node.prove(seed, iterations)
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
    headers: HeaderMap,
    Query(q): Query<InfoQuery>,
) -> Result<String, ApiError> {
    authorize(&s.validators, &headers, Payload::Purpose(PURPOSE))?;
    graval::challenge::respond(&q.challenge, &s.devices).map_err(|e| bad_request(e.to_string()))
}

#[derive(Deserialize)]
struct TokenRequest {
    token_url: String,
}

async fn remote_token(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<String, ApiError> {
    authorize(&s.validators, &headers, Payload::Purpose(PURPOSE))?;
    let req: TokenRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("invalid body, expected {{\"token_url\": ...}}: {e}")))?;
    token::fetch_token(&req.token_url).await.map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))
}
