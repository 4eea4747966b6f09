//! The socket.io client for one validator.
//!
//! Lifecycle of one connection: websocket to `<socket>/socket.io/?EIO=4&transport=websocket`,
//! Engine.IO open, `40` (join `/`), then emit `authenticate` with the signed headers
//! (purpose `sockets`) as a plain JSON object, exactly as the original did. The
//! server answers `auth_success` or `auth_failed`; after success it sends
//! `miner_broadcast` events. Any failure (refused connect, auth failure, missed
//! pings, server disconnect) ends the connection and another is tried after a
//! capped, jittered backoff, forever: the original gave up if the very first
//! connect failed, leaving the miner deaf until restarted.

pub mod protocol;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chutes_protocol::{Hotkey, Payload};
use futures_util::{SinkExt, StreamExt};
use miner_events::{Backoff, MinerEvent, Producer};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::ValidatorTarget;
use protocol::Inbound;

/// `miner_broadcast` reasons the miner acts on; anything else is logged and dropped,
/// as the original did.
pub const ACCEPTED_REASONS: &[&str] = &miner_events::payloads::VALIDATOR_REASONS;

/// Where one validator connection stands; watch it through [`SocketHandle::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketState {
    Connecting,
    /// Connected, `authenticate` sent, no answer yet.
    Authenticating,
    Authenticated,
    /// The last attempt ended; the text says why. A new attempt follows.
    Retrying {
        reason: String,
        attempt: u32,
    },
    Stopped,
}

/// Timings of the client. `Default` is what the miner runs with.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// First reconnect delay; doubles up to `backoff_cap`, with jitter.
    pub backoff_initial: Duration,
    pub backoff_cap: Duration,
    /// TCP + TLS + websocket + Engine.IO open.
    pub connect_timeout: Duration,
    /// From sending `authenticate` to `auth_success`/`auth_failed`.
    pub auth_timeout: Duration,
    /// A connection that stayed authenticated this long resets the backoff.
    pub stable_after: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            backoff_initial: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct SocketStats {
    pub connects: AtomicU64,
    pub authenticated: AtomicU64,
    /// `miner_broadcast` events handed to the event stream.
    pub events_accepted: AtomicU64,
    /// `miner_broadcast` events dropped (unknown reason or malformed).
    pub events_dropped: AtomicU64,
}

/// A running validator connection.
#[derive(Debug)]
pub struct SocketHandle {
    pub join: JoinHandle<()>,
    pub state: watch::Receiver<SocketState>,
    pub stats: Arc<SocketStats>,
}

/// Starts the client for `target`, reconnecting forever until `shutdown`.
pub fn spawn(
    target: ValidatorTarget,
    hotkey: Arc<Hotkey>,
    producer: Producer,
    shutdown: CancellationToken,
) -> SocketHandle {
    spawn_with(target, hotkey, producer, shutdown, SocketOptions::default())
}

pub fn spawn_with(
    target: ValidatorTarget,
    hotkey: Arc<Hotkey>,
    producer: Producer,
    shutdown: CancellationToken,
    options: SocketOptions,
) -> SocketHandle {
    let (state_tx, state) = watch::channel(SocketState::Connecting);
    let stats = Arc::new(SocketStats::default());
    let client = Client { target, hotkey, producer, options, state: state_tx, stats: stats.clone() };
    let join = tokio::spawn(client.run(shutdown));
    SocketHandle { join, state, stats }
}

struct Client {
    target: ValidatorTarget,
    hotkey: Arc<Hotkey>,
    producer: Producer,
    options: SocketOptions,
    state: watch::Sender<SocketState>,
    stats: Arc<SocketStats>,
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("bad socket URL: {0}")]
    BadUrl(String),
    #[error("connect: {0}")]
    Connect(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("the validator refused authentication: {0}")]
    AuthFailed(String),
    #[error("the validator refused the namespace: {0}")]
    ConnectError(String),
    #[error("the validator closed the connection")]
    Closed,
    #[error("websocket: {0}")]
    Websocket(String),
    #[error("{0}")]
    Frame(#[from] protocol::FrameError),
    #[error("the event stream producer stopped")]
    ProducerClosed,
    #[error("shutting down")]
    Shutdown,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl Client {
    async fn run(self, shutdown: CancellationToken) {
        crate::ensure_crypto_provider();
        let mut backoff = Backoff::new(self.options.backoff_initial, self.options.backoff_cap);
        loop {
            self.state.send_replace(SocketState::Connecting);
            let mut authenticated_at = None;
            // `connection` watches `shutdown` itself, so it can say goodbye (`41`).
            let ended = self.connection(&mut authenticated_at, &shutdown).await;
            if matches!(ended, Ended::Shutdown | Ended::ProducerClosed) {
                tracing::info!(validator = %self.target.hotkey, reason = %ended, "validator socket stopped");
                break;
            }
            // Only a connection that stayed up a while resets the backoff, so a validator
            // that accepts and drops at once is not hammered.
            if authenticated_at.is_some_and(|t: Instant| t.elapsed() >= self.options.stable_after) {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                validator = %self.target.hotkey, url = %self.target.socket, reason = %ended,
                attempt = backoff.attempts(), retry_in = ?delay, "validator socket down; reconnecting"
            );
            self.state.send_replace(SocketState::Retrying {
                reason: ended.to_string(),
                attempt: backoff.attempts(),
            });
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.state.send_replace(SocketState::Stopped);
    }

    /// One connection, from connect to whatever ends it. The shutdown branch sends a
    /// polite `41` before closing.
    async fn connection(
        &self,
        authenticated_at: &mut Option<Instant>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let url = match protocol::websocket_url(&self.target.socket) {
            Ok(u) => u,
            Err(e) => return Ended::BadUrl(e),
        };
        let connect =
            tokio::time::timeout(self.options.connect_timeout, tokio_tungstenite::connect_async(&url));
        let connected = tokio::select! {
            r = connect => r,
            _ = shutdown.cancelled() => return Ended::Shutdown,
        };
        let mut ws = match connected {
            Err(_) => return Ended::Timeout("the websocket connection"),
            Ok(Err(e)) => return Ended::Connect(e.to_string()),
            Ok(Ok((ws, _))) => ws,
        };
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let ended = tokio::select! {
            e = self.serve(&mut ws, authenticated_at) => e,
            _ = shutdown.cancelled() => Ended::Shutdown,
        };
        if matches!(ended, Ended::Shutdown | Ended::AuthFailed(_)) {
            let _ = ws.send(Message::text(protocol::DISCONNECT)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        ended
    }

    async fn serve(&self, ws: &mut Ws, authenticated_at: &mut Option<Instant>) -> Ended {
        // Engine.IO open: the server's ping schedule.
        let (ping_interval, ping_timeout) =
            match self.next(ws, self.options.connect_timeout, "the engine.io open packet").await {
                Ok(Inbound::Open { ping_interval, ping_timeout, .. }) => (ping_interval, ping_timeout),
                Ok(other) => {
                    return Ended::Websocket(format!("expected the engine.io open packet, got {other:?}"));
                }
                Err(e) => return e,
            };
        let liveness = ping_interval + ping_timeout;
        if let Err(e) = send(ws, protocol::CONNECT).await {
            return e;
        }
        let auth_deadline = Instant::now() + self.options.auth_timeout;
        let mut authenticating = false;
        loop {
            let wait = if authenticated_at.is_some() {
                liveness
            } else {
                auth_deadline.saturating_duration_since(Instant::now())
            };
            let what = if authenticated_at.is_some() {
                "a ping from the validator"
            } else {
                "the authentication reply"
            };
            let frame = match self.next(ws, wait, what).await {
                Ok(f) => f,
                Err(e) => return e,
            };
            let reply = match frame {
                Inbound::Ping => Some(protocol::PONG.to_owned()),
                Inbound::Closed => return Ended::Closed,
                Inbound::ConnectError(v) => return Ended::ConnectError(v.to_string()),
                Inbound::Connected if !authenticating => {
                    authenticating = true;
                    self.state.send_replace(SocketState::Authenticating);
                    Some(protocol::event("authenticate", &self.auth_payload()))
                }
                Inbound::Event { name, args, ack } => {
                    let first = args.into_iter().next().unwrap_or(Value::Null);
                    match name.as_str() {
                        "auth_success" => {
                            *authenticated_at = Some(Instant::now());
                            self.stats.authenticated.fetch_add(1, Ordering::Relaxed);
                            self.state.send_replace(SocketState::Authenticated);
                            tracing::info!(validator = %self.target.hotkey, "authenticated to the validator socket");
                        }
                        "auth_failed" => return Ended::AuthFailed(first.to_string()),
                        "miner_broadcast" => {
                            if let Err(e) = self.accept_broadcast(first).await {
                                return e;
                            }
                        }
                        other => tracing::debug!(event = other, "ignored validator socket event"),
                    }
                    ack.map(protocol::ack)
                }
                Inbound::Open { .. } | Inbound::Connected | Inbound::Ignored(_) => None,
            };
            if let Some(text) = reply
                && let Err(e) = send(ws, &text).await
            {
                return e;
            }
        }
    }

    /// The signed headers as a plain object, as the original's `sign_request(purpose="sockets")`.
    fn auth_payload(&self) -> Value {
        let headers = self.hotkey.sign_request(Payload::Purpose("sockets"));
        Value::Object(headers.iter().map(|(k, v)| (k.to_owned(), Value::String(v.to_owned()))).collect())
    }

    async fn accept_broadcast(&self, payload: Value) -> Result<(), Ended> {
        match to_event(payload, &self.target.hotkey) {
            Ok(event) => {
                self.producer.publish(&event).await.map_err(|_| Ended::ProducerClosed)?;
                self.stats.events_accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(validator = %self.target.hotkey, why, "dropped a miner_broadcast");
            }
        }
        Ok(())
    }

    /// The next text frame, decoded, within `wait`.
    async fn next(&self, ws: &mut Ws, wait: Duration, what: &'static str) -> Result<Inbound, Ended> {
        let deadline = Instant::now() + wait;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(Ended::Timeout(what)),
                Ok(None) => return Err(Ended::Closed),
                Ok(Some(Err(e))) => return Err(Ended::Websocket(e.to_string())),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(text) => return protocol::decode(text.as_str()).map_err(Ended::from),
                Message::Close(_) => return Err(Ended::Closed),
                // Binary attachments, websocket-level pings (tungstenite answers those).
                _ => continue,
            }
        }
    }
}

async fn send(ws: &mut Ws, text: &str) -> Result<(), Ended> {
    ws.send(Message::text(text)).await.map_err(|e| Ended::Websocket(e.to_string()))
}

/// `{reason, data, …}` -> `{event_type: reason, event_data: data + {validator}}`,
/// or why it is dropped.
pub fn to_event(payload: Value, validator: &str) -> Result<MinerEvent, String> {
    let Value::Object(mut payload) = payload else { return Err("payload is not an object".into()) };
    let reason = match payload.get("reason") {
        Some(Value::String(r)) => r.clone(),
        _ => return Err("payload has no string `reason`".into()),
    };
    if !ACCEPTED_REASONS.contains(&reason.as_str()) {
        return Err(format!("reason {reason:?} is not one the miner handles"));
    }
    let mut data: Map<String, Value> = match payload.remove("data") {
        Some(Value::Object(d)) => d,
        _ => return Err(format!("{reason}: `data` is not an object")),
    };
    data.insert("validator".into(), Value::String(validator.to_owned()));
    Ok(MinerEvent::new(reason, Value::Object(data)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn broadcasts_become_the_original_event_shape() {
        let e = to_event(json!({"reason": "instance_created", "data": {"chute_id": "c", "config_id": "k"}, "message": "hi"}), "5Val")
            .unwrap();
        assert_eq!(e.event_type, "instance_created");
        assert_eq!(e.event_data, json!({"chute_id": "c", "config_id": "k", "validator": "5Val"}));
    }

    #[test]
    fn unknown_or_malformed_broadcasts_are_dropped_with_a_reason() {
        assert!(to_event(json!({"reason": "telemetry", "data": {}}), "v").unwrap_err().contains("telemetry"));
        assert!(to_event(json!({"data": {}}), "v").unwrap_err().contains("reason"));
        assert!(to_event(json!({"reason": "chute_created", "data": [1]}), "v").unwrap_err().contains("data"));
        assert!(to_event(json!("x"), "v").is_err());
    }
}
