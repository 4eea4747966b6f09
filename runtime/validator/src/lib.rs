//! The miner's side of each validator it serves.
//!
//! * [`socket`]: one socket.io client per validator (Engine.IO v4 over a websocket,
//!   written here on tokio-tungstenite so reconnects and the `authenticate` handshake
//!   are ours to control). Accepted `miner_broadcast` events go to the durable event
//!   stream ([`miner_events::Producer`]) in the original `{event_type, event_data}`
//!   shape, with `event_data.validator` set.
//! * [`rest`]: the signed REST client for the validator API (section 10 of the
//!   reference): body-hash or purpose signatures as each endpoint expects, the
//!   `data: {json}` listings with the `NO_ITEMS` sentinel, timeouts, and retries on
//!   connection errors and 5xx only (writes on 502 and 503 alone).
//!
//! All signing goes through `chutes-protocol`; nothing here touches key material
//! beyond calling [`chutes_protocol::Hotkey::sign_request`].
pub mod rest;
pub mod socket;

/// The addresses of one validator, as `VALIDATORS` lists them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ValidatorTarget {
    /// The validator's hotkey (SS58); stamped on every event as `validator`.
    pub hotkey: String,
    /// REST base URL, e.g. `https://api.chutes.ai`.
    pub api: String,
    /// socket.io URL, e.g. `wss://ws.chutes.ai`.
    pub socket: String,
}

/// rustls needs a process-wide crypto provider; kube and reqwest are built without
/// one picked. Installing ring when none is set is harmless if the binary already did.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
