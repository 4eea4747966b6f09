//! The socket.io side: the `authenticate` handshake of chutes-api's socket server.

use chutes_protocol::Payload;
use chutes_protocol::auth::{now_unix, verify_miner_request};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{Data, SocketRef};

use crate::state::Event;
use crate::{AuthAttempt, Shared};

/// Room of sockets that passed `authenticate`; broadcasts go only there.
pub(crate) const AUTHENTICATED: &str = "authenticated";

/// Room of one miner's sockets, for events only that miner may see in full.
fn miner_room(hotkey: &str) -> String {
    format!("miner:{hotkey}")
}

/// Sends events as chutes-api does: to every authenticated socket, except that
/// `config_id` goes only to the miner the instance belongs to, and events with
/// `filter_recipients` go only to those miners. Every event is logged; those that
/// reached a socket are also kept as broadcasts.
pub(crate) async fn emit(io: &SocketIo, shared: &Shared, events: Vec<Event>) {
    for event in events {
        let full = event.payload();
        shared.lock().unwrap().events.push(full.clone());
        let mut reached = 0;
        match (&event.recipients, &event.owner) {
            (Some(recipients), _) => {
                for hotkey in recipients {
                    let n = io.to(miner_room(hotkey)).sockets().len();
                    if n > 0 && io.to(miner_room(hotkey)).emit("miner_broadcast", &full).await.is_ok() {
                        reached += n;
                    }
                }
            }
            (None, Some(owner)) => {
                let n = io.to(miner_room(owner)).sockets().len();
                if n > 0 && io.to(miner_room(owner)).emit("miner_broadcast", &full).await.is_ok() {
                    reached += n;
                }
                let others = || io.to(AUTHENTICATED).except(miner_room(owner));
                let n = others().sockets().len();
                if n > 0 && others().emit("miner_broadcast", &event.public_payload()).await.is_ok() {
                    reached += n;
                }
            }
            (None, None) => {
                let n = io.to(AUTHENTICATED).sockets().len();
                if n > 0 && io.to(AUTHENTICATED).emit("miner_broadcast", &full).await.is_ok() {
                    reached += n;
                }
            }
        }
        if reached > 0 {
            shared.lock().unwrap().broadcasts.push(full);
        }
    }
}

/// The validator accepts nonces within 600 s either way.
const MAX_SKEW: u64 = 600;

pub(crate) fn install(io: &SocketIo, shared: Shared) {
    io.ns("/", move |socket: SocketRef| {
        let shared = shared.clone();
        async move { on_connect(socket, shared) }
    });
}

fn on_connect(socket: SocketRef, shared: Shared) {
    socket.on("authenticate", move |socket: SocketRef, Data(payload): Data<Value>| {
        let shared = shared.clone();
        async move {
            let result = check(&payload, &shared);
            shared.lock().unwrap().auth_attempts.push(AuthAttempt { payload, result: result.clone() });
            match result {
                Ok(hotkey) => {
                    socket.join(AUTHENTICATED);
                    socket.join(miner_room(&hotkey));
                    let _ = socket.emit("auth_success", &json!({"message": "Authenticated"}));
                }
                Err(error) => {
                    let _ = socket.emit("auth_failed", &json!({"error": error}));
                }
            }
        }
    });
}

/// The headers arrive as a JSON object; verify them as the validator's
/// `get_current_user(purpose="sockets")` does.
fn check(payload: &Value, shared: &Shared) -> Result<String, String> {
    let Value::Object(fields) = payload else { return Err("authenticate payload is not an object".into()) };
    let mut headers = HeaderMap::new();
    for (name, value) in fields {
        let (Ok(name), Some(Ok(value))) =
            (HeaderName::try_from(name.as_str()), value.as_str().map(HeaderValue::from_str))
        else {
            return Err(format!("header {name} is not a text header"));
        };
        headers.insert(name, value);
    }
    let hotkey = verify_miner_request(&headers, Payload::Purpose("sockets"), now_unix(), MAX_SKEW)
        .map_err(|e| e.to_string())?;
    match &shared.lock().unwrap().registered {
        Some(set) if !set.contains(&hotkey) => Err(format!("hotkey {hotkey} is not registered")),
        _ => Ok(hotkey),
    }
}
