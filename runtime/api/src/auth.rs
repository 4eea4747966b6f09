//! Management authentication (section 5.3 format 2): the four `X-Chutes-*` headers,
//! signed by an allowed signer over `miner:validator:nonce:X`, where `X` is the
//! sha256 of the body for POST/PUT/PATCH and the purpose `management` otherwise.
//! The nonce must be within 30 s either way and a nonce+signature pair is accepted
//! only once (both fixes over the original, in `chutes_protocol::InboundVerifier`).
//! Nothing runs before the signature is checked except reading a bounded body.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chutes_protocol::auth::{AuthError, Payload, now_unix};

use crate::AppState;
use crate::error::ApiError;

/// Management bodies are small JSON documents.
pub const MAX_BODY: usize = 64 * 1024;

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

pub async fn management(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            state.metrics.refused("body_too_large");
            return ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY} bytes"),
            )
            .into_response();
        }
    };
    let payload = if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
        Payload::Body(&bytes)
    } else {
        Payload::Purpose("management")
    };
    if let Err(e) = state.verifier.verify(&parts.headers, payload, now_unix()) {
        state.metrics.refused(refusal_label(&e));
        tracing::warn!(path = %parts.uri.path(), reason = %e, "management request refused");
        return ApiError::unauthorized(format!("go away: {e}")).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
