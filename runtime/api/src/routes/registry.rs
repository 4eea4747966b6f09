//! `GET /registry/auth`: the node-local nginx registry proxy asks this endpoint
//! (`auth_request`) for signed headers to pass upstream. Only callers on private
//! networks get them; the response headers carry the signature (purpose `registry`).

use std::net::SocketAddr;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use chutes_protocol::auth::Payload;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::netaddr::is_internal;

pub async fn auth(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<(HeaderMap, Json<Value>), ApiError> {
    if !is_internal(peer.ip()) {
        state.metrics.refused("registry_public_address");
        return Err(ApiError::unauthorized(format!(
            "go away: registry auth is only served to private addresses, not {}",
            peer.ip()
        )));
    }
    let headers = state.hotkey.sign_request(Payload::Purpose("registry")).to_header_map();
    Ok((headers, Json(json!({ "authenticated": true }))))
}
