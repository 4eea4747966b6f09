//! Porter (section 15): `GET /axon` tells whitelisted validators where the real
//! miner API is, and tells nobody else anything.
//!
//! It sits on a public port, so it is built to be cheap and to survive floods:
//! * the answer is serialised once at start-up;
//! * a request is checked with the cheap tests first (header presence, miner,
//!   whitelisted signer, nonce window) and the sr25519 verification last, and a
//!   nonce+signature pair is accepted once (`chutes_protocol::InboundVerifier`);
//! * at most `max_in_flight` requests are being checked at any time; any beyond
//!   that are answered 503 at once, without reading them further, so a flood costs
//!   a bounded amount of CPU and memory and cannot queue up work;
//! * every other path is a bare 404.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chutes_protocol::InboundVerifier;
use chutes_protocol::auth::{Payload, now_unix};
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PorterError {
    #[error("porter settings: {0}")]
    Key(#[from] chutes_protocol::KeyError),
    #[error("porter settings: {0}")]
    Encode(#[from] serde_json::Error),
}

#[derive(Clone)]
struct Porter {
    verifier: Arc<InboundVerifier>,
    /// The precomputed `{"host": .., "port": ..}` body.
    answer: Bytes,
    gate: Arc<Semaphore>,
}

/// What porter needs to run.
#[derive(Debug, Clone)]
pub struct PorterConfig {
    pub real_host: String,
    pub real_port: u16,
    pub miner_ss58: String,
    pub whitelist: Vec<String>,
    /// Requests checked concurrently; more are refused with 503.
    pub max_in_flight: usize,
}

/// The porter app.
pub fn router(cfg: &PorterConfig) -> Result<Router, PorterError> {
    let verifier = InboundVerifier::new(&cfg.miner_ss58, cfg.whitelist.iter().map(String::as_str))?;
    let answer = serde_json::to_vec(&serde_json::json!({ "host": cfg.real_host, "port": cfg.real_port }))?;
    let porter = Porter {
        verifier: Arc::new(verifier),
        answer: Bytes::from(answer),
        gate: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
    };
    Ok(Router::new()
        .route("/axon", get(axon))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(porter))
}

fn json(status: StatusCode, body: Body) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

async fn axon(State(p): State<Porter>, req: Request) -> Response {
    let Ok(_permit) = p.gate.try_acquire() else {
        return json(StatusCode::SERVICE_UNAVAILABLE, Body::from(r#"{"detail":"busy, retry later"}"#));
    };
    match p.verifier.verify(req.headers(), Payload::Purpose("porter"), now_unix()) {
        Ok(_) => json(StatusCode::OK, Body::from(p.answer.clone())),
        Err(e) => {
            tracing::debug!(reason = %e, "porter refused a request");
            let body = serde_json::json!({ "detail": format!("go away: {e}") }).to_string();
            json(StatusCode::UNAUTHORIZED, Body::from(body))
        }
    }
}

/// Serves porter until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: &PorterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error> {
    let app = router(cfg).map_err(std::io::Error::other)?;
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
