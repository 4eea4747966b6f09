//! Management authentication (section 5.3 format 2): the four `X-Chutes-*` headers,
//! signed by an allowed signer over `miner:validator:nonce:X`, where `X` is the
//! sha256 of the body for POST/PUT/PATCH and the purpose `management` otherwise.
//! The nonce must be within 30 s either way and a nonce+signature pair is accepted
//! only once (both fixes over the original, in `chutes_protocol::InboundVerifier`).
//! Nothing runs before the signature is checked; the body (at most 64 KiB) is read
//! only once the headers name this miner and an allowed signer and the nonce is
//! inside the window and unused. Requests without a body may sign the bound purpose
//! [`bound_purpose`] instead of `management`.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chutes_protocol::auth::{AuthError, Payload, now_unix};

use crate::AppState;
use crate::error::ApiError;
use crate::netaddr::is_internal;

/// Management bodies are small JSON documents.
pub const MAX_BODY: usize = 64 * 1024;

/// How long a prechecked request may take to send its body (at most [`MAX_BODY`]).
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn refusal_label(e: &AuthError) -> &'static str {
    match e {
        AuthError::MissingHeader(_) | AuthError::BadHeader(_) => "missing_header",
        AuthError::WrongMiner { .. } => "wrong_miner",
        AuthError::UnknownSigner { .. } => "unknown_signer",
        AuthError::BadNonce | AuthError::StaleNonce { .. } | AuthError::FutureNonce { .. } => "nonce",
        AuthError::Signature(_) => "signature",
        AuthError::Replayed => "replay",
    }
}

/// [`chutes_protocol::auth::bound_management_purpose`] for this request.
pub fn bound_purpose(method: &Method, path: &str) -> String {
    chutes_protocol::auth::bound_management_purpose(method.as_str(), path)
}

fn refuse(state: &AppState, path: &str, e: &AuthError) -> Response {
    state.metrics.refused(refusal_label(e));
    tracing::warn!(path, reason = %e, "management request refused");
    ApiError::unauthorized(format!("go away: {e}")).into_response()
}

/// Management auth. Everything that needs no body runs first (headers, this miner,
/// an allowed signer, the nonce window, replays), so a stranger who knows the
/// miner's public address cannot make the API read a body; then the body (at most
/// [`MAX_BODY`]) is read and the signature checked.
pub async fn management(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let now = now_unix();
    let pre = match state.verifier.precheck(req.headers(), now) {
        Ok(pre) => pre,
        Err(e) => return refuse(&state, req.uri().path(), &e),
    };
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            state.metrics.refused("body_too_large");
            return ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes"),
            )
            .into_response();
        }
        Err(_) => {
            state.metrics.refused("body_timeout");
            return ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                format!("request body not received within {} s", BODY_TIMEOUT.as_secs()),
            )
            .into_response();
        }
    };
    // The nonce is checked again at this moment: a body held back must not outlive the
    // window (the replay cache forgets a signature once the window refuses its nonce).
    let now = now_unix();
    let verified = if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
        // The body hash binds a POST to its content; `POST /servers/` is the only
        // route with a body, so it cannot be redirected to another.
        state.verifier.finish(&pre, Payload::Body(&bytes), now)
    } else {
        let bound = bound_purpose(&parts.method, parts.uri.path());
        match state.verifier.finish(&pre, Payload::Purpose(&bound), now) {
            Err(AuthError::Signature(_)) if !state.bound_management_only => {
                state.verifier.finish(&pre, Payload::Purpose("management"), now)
            }
            other => other,
        }
    };
    if let Err(e) = verified {
        return refuse(&state, parts.uri.path(), &e);
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

/// `Access::PrivateNetwork`: only callers whose address is private, loopback or
/// link-local (see [`crate::netaddr`]). Applied by the router to every route that
/// declares the access level, so a handler cannot forget it.
pub async fn private_network(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let peer = ConnectInfo::<SocketAddr>::from_request_parts(&mut parts, &state).await.ok().map(|c| c.0.ip());
    let req = Request::from_parts(parts, body);
    match peer {
        Some(ip) if is_internal(ip) => next.run(req).await,
        Some(ip) => {
            state.metrics.refused("private_network");
            tracing::warn!(path = req.uri().path(), %ip, "private-network route refused a public caller");
            ApiError::unauthorized(format!(
                "go away: this endpoint is only served to private addresses, not {ip}"
            ))
            .into_response()
        }
        // Served without connection info (not through `serve`): nobody can be trusted.
        None => {
            state.metrics.refused("private_network");
            ApiError::unauthorized("go away: the caller's address is unknown").into_response()
        }
    }
}
