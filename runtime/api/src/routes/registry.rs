//! `GET /registry/auth`: the node-local nginx registry proxy asks this endpoint
//! (`auth_request`) for signed headers to pass upstream. The route is
//! `Access::PrivateNetwork`, which the router enforces (`auth::private_network`);
//! the API Service keeps client addresses (`externalTrafficPolicy: Local`), so a
//! caller from the internet is not rewritten to a node's private address. The
//! response headers carry the signature (purpose `registry`).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chutes_protocol::auth::Payload;
use serde_json::{Value, json};

use crate::AppState;

pub async fn auth(State(state): State<AppState>) -> (HeaderMap, Json<Value>) {
    let headers = state.hotkey.sign_request(Payload::Purpose("registry")).to_header_map();
    (headers, Json(json!({ "authenticated": true })))
}
