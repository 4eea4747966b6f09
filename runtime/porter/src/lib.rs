//! Porter (section 15): `GET /axon` tells whitelisted validators where the real
//! miner API is, and tells nobody else anything.
//!
//! It sits on a public port, so it is built to be cheap and to survive floods.
//! A request goes through these gates, cheapest first:
//!
//! 1. **Connections.** At most `max_connections` at once, and at most
//!    `max_connections_per_peer` from one source address; a connection over either
//!    limit is closed at once, before a byte is read. Request headers must arrive
//!    within `header_timeout` (slowloris). One peer cannot take every slot.
//! 2. **Cheap checks** ([`InboundVerifier::precheck`]): headers present, this miner,
//!    a whitelisted signer, the nonce inside the window, a signature not accepted
//!    before (so a replayed genuine request costs a hash-map lookup).
//! 3. **Verification slots.** The sr25519 check runs on the blocking pool, at most
//!    `max_in_flight` at once and at most `max_in_flight_per_peer` for one source
//!    address. A request that finds no free slot is answered 503 at once. Because the
//!    check is awaited off the async workers, the gate really fills under a flood, and
//!    the per-peer share keeps a flooder from taking the slots a validator needs.
//! 4. **One verification per forgery**: validators sign the raw message
//!    (substrate-interface), so the `<Bytes>` wrapped form is not tried.
//!
//! Every refusal is the same `401 {"detail":"go away"}`: the body does not say which
//! check failed, so a caller cannot probe the whitelist. The reason goes to the
//! debug log. Every other path is a bare 404. The answer is serialised once.
//!
//! Porter runs its own accept loop on hyper instead of `axum::serve` because the
//! per-peer connection limit needs the peer address before the connection is served,
//! and tower's concurrency limit has no notion of a peer.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chutes_protocol::InboundVerifier;
use chutes_protocol::auth::{Payload, now_unix};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum PorterError {
    #[error("porter settings: {0}")]
    Key(#[from] chutes_protocol::KeyError),
    #[error("porter settings: {0}")]
    Encode(#[from] serde_json::Error),
}

/// How much of the machine a flood may take. Defaults suit one porter pod.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Signature verifications running at once; more are answered 503.
    pub max_in_flight: usize,
    /// Verifications running at once for one source address.
    pub max_in_flight_per_peer: usize,
    /// Open connections; more are closed on accept.
    pub max_connections: usize,
    /// Open connections from one source address.
    pub max_connections_per_peer: usize,
    /// A request's headers must arrive within this time.
    pub header_timeout: Duration,
    /// Longest a request may take once its headers are in (503 after).
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 64,
            max_in_flight_per_peer: 8,
            max_connections: 4096,
            max_connections_per_peer: 64,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What porter needs to run.
#[derive(Debug, Clone)]
pub struct PorterConfig {
    pub real_host: String,
    pub real_port: u16,
    pub miner_ss58: String,
    pub whitelist: Vec<String>,
    pub limits: Limits,
}

/// Counts per source address, each entry removed when its count drops to zero, so
/// the map holds only peers with something open.
#[derive(Default)]
struct PerPeer(Mutex<HashMap<IpAddr, usize>>);

impl PerPeer {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= max {
            if *n == 0 {
                map.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(PeerSlot { owner: self.clone(), ip })
    }
}

struct PeerSlot {
    owner: Arc<PerPeer>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.owner.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[derive(Clone)]
struct Porter {
    verifier: Arc<InboundVerifier>,
    /// The precomputed `{"host": .., "port": ..}` body.
    answer: Bytes,
    slots: Arc<Semaphore>,
    peer_slots: Arc<PerPeer>,
    limits: Limits,
}

/// The source address of the connection a request came on.
#[derive(Clone, Copy)]
struct Peer(IpAddr);

fn app(cfg: &PorterConfig) -> Result<Router, PorterError> {
    let verifier = InboundVerifier::new(&cfg.miner_ss58, cfg.whitelist.iter().map(String::as_str))?
        .exact_messages_only();
    let answer = serde_json::to_vec(&serde_json::json!({ "host": cfg.real_host, "port": cfg.real_port }))?;
    let porter = Porter {
        verifier: Arc::new(verifier),
        answer: Bytes::from(answer),
        slots: Arc::new(Semaphore::new(cfg.limits.max_in_flight.max(1))),
        peer_slots: Arc::default(),
        limits: cfg.limits.clone(),
    };
    Ok(Router::new()
        .route("/axon", get(axon))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(porter))
}

fn json(status: StatusCode, body: &'static str) -> Response {
    let mut r = (status, Body::from(body)).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// The one answer to every refused request.
pub const REFUSAL: &str = r#"{"detail":"go away"}"#;
/// The answer when no verification slot is free.
pub const BUSY: &str = r#"{"detail":"busy, retry later"}"#;

fn refuse(reason: &dyn std::fmt::Display) -> Response {
    tracing::debug!(%reason, "porter refused a request");
    json(StatusCode::UNAUTHORIZED, REFUSAL)
}

async fn axon(State(p): State<Porter>, req: Request) -> Response {
    let now = now_unix();
    let pre = match p.verifier.precheck(req.headers(), now) {
        Ok(pre) => pre,
        Err(e) => return refuse(&e),
    };
    // A request always arrives through `serve`, which adds the peer; the fallback
    // only matters for `router()` used without it (one shared bucket then).
    let peer = req.extensions().get::<Peer>().map(|p| p.0).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let Some(peer_slot) = p.peer_slots.try_take(peer, p.limits.max_in_flight_per_peer.max(1)) else {
        return json(StatusCode::SERVICE_UNAVAILABLE, BUSY);
    };
    let Ok(slot) = p.slots.clone().try_acquire_owned() else {
        return json(StatusCode::SERVICE_UNAVAILABLE, BUSY);
    };
    let verifier = p.verifier.clone();
    let check = tokio::task::spawn_blocking(move || {
        let _held: (OwnedSemaphorePermit, PeerSlot) = (slot, peer_slot);
        // The time of the check, not of the arrival: a request queued here past the
        // nonce window is refused.
        verifier.finish(&pre, Payload::Purpose("porter"), now_unix())
    });
    match tokio::time::timeout(p.limits.request_timeout, check).await {
        Ok(Ok(Ok(_))) => {
            let mut r = (StatusCode::OK, Body::from(p.answer.clone())).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Ok(Ok(Err(e))) => refuse(&e),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "porter verification task failed");
            json(StatusCode::SERVICE_UNAVAILABLE, BUSY)
        }
        Err(_) => json(StatusCode::SERVICE_UNAVAILABLE, BUSY),
    }
}

/// The porter app without the connection limits (for in-process tests).
pub fn router(cfg: &PorterConfig) -> Result<Router, PorterError> {
    app(cfg)
}

/// Serves porter until `shutdown` resolves, with every limit of [`Limits`].
/// In-flight requests finish before it returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: &PorterConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), std::io::Error> {
    let app = app(cfg).map_err(std::io::Error::other)?;
    let limits = cfg.limits.clone();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_peer = Arc::new(PerPeer::default());
    let tracker = TaskTracker::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "porter accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(conn_slot) = admit(&connections, &per_peer, addr, &limits) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        let header_timeout = limits.header_timeout;
        tracker.spawn(async move {
            let _held = conn_slot;
            let peer = Peer(addr.ip());
            let service =
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer);
                    let app = app.clone();
                    async move { tower::ServiceExt::oneshot(app, req.map(Body::new)).await }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = async { drop(stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn admit(
    connections: &Arc<Semaphore>,
    per_peer: &Arc<PerPeer>,
    addr: SocketAddr,
    limits: &Limits,
) -> Option<(OwnedSemaphorePermit, PeerSlot)> {
    let Ok(total) = connections.clone().try_acquire_owned() else {
        tracing::debug!(peer = %addr, "porter at its connection limit; closing");
        return None;
    };
    let Some(mine) = per_peer.try_take(addr.ip(), limits.max_connections_per_peer.max(1)) else {
        tracing::debug!(peer = %addr, "peer at its connection limit; closing");
        return None;
    };
    Some((total, mine))
}
