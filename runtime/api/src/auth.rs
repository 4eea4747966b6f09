//! Management authentication (section 5.3 format 2): the four `X-Chutes-*` headers,
//! signed by an allowed signer over `miner:validator:nonce:X`, where `X` is the
//! sha256 of the body for POST/PUT/PATCH and the purpose `management` otherwise.
//! The nonce must be within 30 s either way and a nonce+signature pair is accepted
//! only once (both fixes over the original, in `chutes_protocol::InboundVerifier`).
//! Nothing runs before the signature is checked; the body (at most 64 KiB) is read
//! only once the headers name this miner and an allowed signer.

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

/// The checks that need no body, so a stranger cannot make us read one: headers
/// present, this miner, a known signer. The full verification follows.
fn precheck(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), AuthError> {
    use chutes_protocol::auth::headers::{MINER, NONCE, SIGNATURE, VALIDATOR};
    let get = |name: &'static str| -> Result<&str, AuthError> {
        headers
            .get(name)
            .ok_or(AuthError::MissingHeader(name))?
            .to_str()
            .map_err(|_| AuthError::BadHeader(name))
    };
    let (miner, validator) = (get(MINER)?, get(VALIDATOR)?);
    get(NONCE)?;
    get(SIGNATURE)?;
    if miner != state.verifier.miner() {
        return Err(AuthError::WrongMiner {
            got: miner.to_owned(),
            expected: state.verifier.miner().to_owned(),
        });
    }
    if !state.verifier.is_signer(validator) {
        return Err(AuthError::UnknownSigner { got: validator.to_owned() });
    }
    Ok(())
}

fn refuse(state: &AppState, path: &str, e: &AuthError) -> Response {
    state.metrics.refused(refusal_label(e));
    tracing::warn!(path, reason = %e, "management request refused");
    ApiError::unauthorized(format!("go away: {e}")).into_response()
}

pub async fn management(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(e) = precheck(&state, req.headers()) {
        return refuse(&state, req.uri().path(), &e);
    }
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
        return refuse(&state, parts.uri.path(), &e);
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
