//! The miner's HTTP API (axum 0.8), section 6 of the reference.
//!
//! * [`routes::table`] lists every endpoint once, with its handler and its docs;
//!   [`router`] and [`openapi::document`] are both built from it.
//! * Management routes pass [`auth::management`] first: nothing else runs for a
//!   request whose signature does not verify, and every refusal is JSON
//!   `{"detail": "..."}` saying why.
//! * State-changing requests that Gepetto must act on (`server_deleted`, `undeploy`)
//!   are appended to the durable event stream; the HTTP reply is sent only after
//!   Redis confirmed the append.

pub mod add_node;
pub mod auth;
pub mod bootstrap;
pub mod error;
pub mod metrics;
/// Private-address classification, shared with GraVal's bootstrap server.
pub use chutes_protocol::netaddr;
pub mod openapi;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use chutes_protocol::{Hotkey, InboundVerifier};
use miner_config::Validators;
use miner_db::Db;
use miner_events::{MinerEvent, Producer};

pub use add_node::{Bootstraps, NodeBootstrap, Progress, ServerArgs};
pub use error::ApiError;
pub use metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub hotkey: Arc<Hotkey>,
    pub verifier: Arc<InboundVerifier>,
    pub events: Producer,
    pub metrics: Arc<Metrics>,
    pub validators: Arc<Validators>,
    pub bootstrap: Option<Arc<dyn NodeBootstrap>>,
    /// The add-node runs in flight (stopped and awaited by [`serve`] at shutdown).
    pub bootstraps: Bootstraps,
    /// How long a request waits for Redis to confirm an event.
    pub event_timeout: Duration,
    /// Refuse management signatures over the plain purpose `management` (the
    /// original CLI's); accept only ones bound to method and path (`minerctl`'s).
    pub bound_management_only: bool,
}

impl AppState {
    /// State for this miner: management requests must be signed by the miner's own hotkey.
    pub fn new(
        db: Db,
        hotkey: Arc<Hotkey>,
        events: Producer,
        validators: Validators,
    ) -> Result<Self, ApiError> {
        let verifier = InboundVerifier::new(hotkey.ss58(), [hotkey.ss58()])
            .map_err(|e| ApiError::internal(format!("miner hotkey: {e}")))?;
        Ok(AppState {
            db,
            hotkey,
            verifier: Arc::new(verifier),
            events,
            metrics: Arc::new(Metrics::default()),
            validators: Arc::new(validators),
            bootstrap: None,
            bootstraps: Bootstraps::default(),
            event_timeout: Duration::from_secs(5),
            bound_management_only: false,
        })
    }

    /// See [`AppState::bound_management_only`].
    pub fn with_bound_management_only(mut self, on: bool) -> Self {
        self.bound_management_only = on;
        self
    }

    pub fn with_bootstrap(mut self, bootstrap: Arc<dyn NodeBootstrap>) -> Self {
        self.bootstrap = Some(bootstrap);
        self
    }

    /// Appends an internal event and waits for Redis to confirm it.
    pub async fn publish(&self, event: &miner_events::Event) -> Result<String, ApiError> {
        let event_type = event.event_type();
        let event: MinerEvent = event
            .to_miner_event()
            .map_err(|e| ApiError::internal(format!("{event_type} could not be encoded: {e}")))?;
        match tokio::time::timeout(self.event_timeout, self.events.publish_confirmed(&event)).await {
            Ok(Ok(id)) => {
                self.metrics.event_published(event_type);
                Ok(id)
            }
            Ok(Err(e)) => {
                Err(ApiError::unavailable(format!("event stream unavailable, {event_type} not sent: {e}")))
            }
            Err(_) => Err(ApiError::unavailable(format!(
                "event stream (Redis) did not confirm {event_type} within {} s; it stays queued in this API \
                 process and is sent when Redis is back, but is lost if the API restarts first: check that \
                 Gepetto acted on it, else repeat the request",
                self.event_timeout.as_secs()
            ))),
        }
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    router_from(routes::table(), state)
}

/// A router over `routes`, each behind the gate its access level names: a route
/// cannot be registered without the check its documentation promises.
pub fn router_from(routes: Vec<routes::Route>, state: AppState) -> Router {
    let mut managed = Router::new();
    let mut private = Router::new();
    let mut open = Router::new();
    for route in routes {
        match route.doc.access {
            routes::Access::Management => managed = managed.route(route.doc.path, route.handler),
            routes::Access::PrivateNetwork => private = private.route(route.doc.path, route.handler),
            routes::Access::Public => open = open.route(route.doc.path, route.handler),
        }
    }
    let managed = managed.route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::management));
    let private =
        private.route_layer(axum::middleware::from_fn_with_state(state.clone(), auth::private_network));
    let metrics = state.metrics.clone();
    open.merge(managed)
        .merge(private)
        .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
        .layer(axum::middleware::from_fn_with_state(metrics, metrics::track))
        .with_state(state)
}

/// Serves the API until `shutdown` resolves; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let bootstraps = state.bootstraps.clone();
    let stopping = bootstraps.clone();
    // On the signal, add-node runs stop at once and undo what they did: their progress
    // streams are requests the graceful shutdown waits for, and they end with them.
    let shutdown = async move {
        shutdown.await;
        stopping.stop();
    };
    let served = axum::serve(listener, router(state).into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await;
    // A bootstrap whose client was gone had no stream to wait for: wait for it here,
    // within the pod's termination grace period.
    if !bootstraps.finished(BOOTSTRAP_CLEANUP_BOUND).await {
        tracing::warn!("an add-node was still undoing its steps at exit");
    }
    served
}

/// How long a shutdown waits for add-node cleanups after the server stopped (the API
/// pod's `terminationGracePeriodSeconds` leaves room for it).
pub const BOOTSTRAP_CLEANUP_BOUND: Duration = Duration::from_secs(30);
