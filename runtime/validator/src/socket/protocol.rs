//! Engine.IO v4 / Socket.IO v5 text packets over a websocket, the subset a
//! validator connection uses (default namespace, JSON events, no binary).
//!
//! With the websocket transport every frame carries exactly one Engine.IO packet:
//! `0{open json}`, `1` close, `2` ping, `3` pong, `4<socket.io packet>` message,
//! `6` noop. A Socket.IO packet is `<type>[<nsp>,][<ack id>][<json>]` with types
//! 0 CONNECT, 1 DISCONNECT, 2 EVENT, 3 ACK, 4 CONNECT_ERROR, 5/6 binary forms.
//! In v4 the *server* pings and the client answers `3`; a client that hears no
//! ping for `pingInterval + pingTimeout` must treat the connection as dead.

use std::time::Duration;

use serde_json::Value;

/// One decoded frame from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Engine.IO handshake: the server's ping schedule.
    Open {
        sid: String,
        ping_interval: Duration,
        ping_timeout: Duration,
    },
    Ping,
    /// Engine.IO close, or Socket.IO DISCONNECT of our namespace.
    Closed,
    /// Socket.IO CONNECT acknowledged for the default namespace.
    Connected,
    /// The server refused the namespace connection.
    ConnectError(Value),
    Event {
        name: String,
        args: Vec<Value>,
        ack: Option<u64>,
    },
    /// Anything we do not act on (pong, noop, acks, binary, other namespaces).
    Ignored(&'static str),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed socket.io frame ({what}): {frame}")]
pub struct FrameError {
    pub what: &'static str,
    /// The frame, cut to 200 characters.
    pub frame: String,
}

fn bad(what: &'static str, frame: &str) -> FrameError {
    FrameError { what, frame: frame.chars().take(200).collect() }
}

pub fn decode(frame: &str) -> Result<Inbound, FrameError> {
    let mut chars = frame.chars();
    let Some(kind) = chars.next() else { return Err(bad("empty frame", frame)) };
    let rest = chars.as_str();
    match kind {
        '0' => decode_open(rest).ok_or_else(|| bad("open packet", frame)),
        '1' => Ok(Inbound::Closed),
        '2' => Ok(Inbound::Ping),
        '3' => Ok(Inbound::Ignored("pong")),
        '4' => decode_socketio(rest, frame),
        '6' => Ok(Inbound::Ignored("noop")),
        _ => Err(bad("unknown engine.io packet type", frame)),
    }
}

fn decode_open(json: &str) -> Option<Inbound> {
    let v: Value = serde_json::from_str(json).ok()?;
    Some(Inbound::Open {
        sid: v.get("sid")?.as_str()?.to_owned(),
        ping_interval: Duration::from_millis(v.get("pingInterval")?.as_u64()?),
        ping_timeout: Duration::from_millis(v.get("pingTimeout")?.as_u64()?),
    })
}

fn decode_socketio(packet: &str, frame: &str) -> Result<Inbound, FrameError> {
    let mut chars = packet.chars();
    let Some(kind) = chars.next() else { return Err(bad("empty socket.io packet", frame)) };
    let mut rest = chars.as_str();
    if matches!(kind, '5' | '6') {
        return Ok(Inbound::Ignored("binary packet"));
    }
    // Namespace: present when the packet starts with '/', ends at ','.
    if rest.starts_with('/') {
        let (nsp, after) = rest.split_once(',').unwrap_or((rest, ""));
        if nsp != "/" {
            return Ok(Inbound::Ignored("other namespace"));
        }
        rest = after;
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (ack_text, json) = rest.split_at(digits);
    let ack = if ack_text.is_empty() { None } else { ack_text.parse().ok() };
    let body = || -> Result<Value, FrameError> {
        if json.is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str(json).map_err(|_| bad("json", frame))
        }
    };
    match kind {
        '0' => Ok(Inbound::Connected),
        '1' => Ok(Inbound::Closed),
        '2' => match body()? {
            Value::Array(mut items) if !items.is_empty() => match items.remove(0) {
                Value::String(name) => Ok(Inbound::Event { name, args: items, ack }),
                _ => Err(bad("event name is not a string", frame)),
            },
            _ => Err(bad("event is not a non-empty array", frame)),
        },
        '3' => Ok(Inbound::Ignored("ack")),
        '4' => Ok(Inbound::ConnectError(body()?)),
        _ => Err(bad("unknown socket.io packet type", frame)),
    }
}

/// `40`: join the default namespace.
pub const CONNECT: &str = "40";
/// `41`: leave the default namespace (polite disconnect).
pub const DISCONNECT: &str = "41";
/// `3`: answer to a server ping.
pub const PONG: &str = "3";

/// `42["name",data]`
pub fn event(name: &str, data: &Value) -> String {
    format!("42{}", Value::Array(vec![Value::String(name.to_owned()), data.clone()]))
}

/// `43<id>[]`: acknowledges an event the server sent with an ack id.
pub fn ack(id: u64) -> String {
    format!("43{id}[]")
}

/// The websocket URL for a validator's socket address (`wss://ws.chutes.ai`,
/// `https://…` or `http://…` too), at socket.io's default path.
pub fn websocket_url(base: &str) -> Result<String, String> {
    let (scheme, rest) = base.split_once("://").ok_or_else(|| format!("{base:?} has no scheme (wss://…)"))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => return Err(format!("{base:?}: scheme {other} is not ws, wss, http or https")),
    };
    let (host_path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let host_path = host_path.trim_end_matches('/');
    if host_path.is_empty() {
        return Err(format!("{base:?} has no host"));
    }
    let path = if host_path.ends_with("/socket.io") { String::new() } else { "/socket.io".to_owned() };
    let extra = if query.is_empty() { String::new() } else { format!("&{query}") };
    Ok(format!("{scheme}://{host_path}{path}/?EIO=4&transport=websocket{extra}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_what_a_socketio_server_sends() {
        assert_eq!(
            decode(
                r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
            ),
            Ok(Inbound::Open {
                sid: "abc".into(),
                ping_interval: Duration::from_secs(25),
                ping_timeout: Duration::from_secs(20)
            })
        );
        assert_eq!(decode("2"), Ok(Inbound::Ping));
        assert_eq!(decode(r#"40{"sid":"x"}"#), Ok(Inbound::Connected));
        assert_eq!(decode("41"), Ok(Inbound::Closed));
        assert_eq!(decode("1"), Ok(Inbound::Closed));
        assert_eq!(decode(r#"44{"message":"no"}"#), Ok(Inbound::ConnectError(json!({"message": "no"}))));
        assert_eq!(
            decode(r#"42["miner_broadcast",{"reason":"chute_created","data":{"chute_id":"c"}}]"#),
            Ok(Inbound::Event {
                name: "miner_broadcast".into(),
                args: vec![json!({"reason":"chute_created","data":{"chute_id":"c"}})],
                ack: None
            })
        );
        assert_eq!(
            decode(r#"4212["auth_success",{"message":"Authenticated"}]"#),
            Ok(Inbound::Event {
                name: "auth_success".into(),
                args: vec![json!({"message":"Authenticated"})],
                ack: Some(12)
            })
        );
        assert_eq!(
            decode(r#"42/,7["x"]"#),
            Ok(Inbound::Event { name: "x".into(), args: vec![], ack: Some(7) })
        );
        assert_eq!(decode(r#"42/admin,["x"]"#), Ok(Inbound::Ignored("other namespace")));
        assert_eq!(
            decode(r#"451-["x",{"_placeholder":true,"num":0}]"#),
            Ok(Inbound::Ignored("binary packet"))
        );
    }

    #[test]
    fn malformed_frames_are_named() {
        assert_eq!(decode("").unwrap_err().what, "empty frame");
        assert_eq!(decode("9").unwrap_err().what, "unknown engine.io packet type");
        assert_eq!(decode("42{}").unwrap_err().what, "event is not a non-empty array");
        assert_eq!(decode("42[1]").unwrap_err().what, "event name is not a string");
        assert_eq!(decode("42[").unwrap_err().what, "json");
        assert_eq!(decode("0{}").unwrap_err().what, "open packet");
    }

    #[test]
    fn encodes_events_and_acks() {
        assert_eq!(
            event("authenticate", &json!({"X-Chutes-Hotkey": "5F"})),
            r#"42["authenticate",{"X-Chutes-Hotkey":"5F"}]"#
        );
        assert_eq!(ack(3), "433[]");
    }

    #[test]
    fn websocket_urls() {
        assert_eq!(
            websocket_url("wss://ws.chutes.ai").unwrap(),
            "wss://ws.chutes.ai/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            websocket_url("https://ws.chutes.ai/").unwrap(),
            "wss://ws.chutes.ai/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            websocket_url("http://127.0.0.1:9/socket.io/?x=1").unwrap(),
            "ws://127.0.0.1:9/socket.io/?EIO=4&transport=websocket&x=1"
        );
        assert!(websocket_url("ws.chutes.ai").unwrap_err().contains("no scheme"));
        assert!(websocket_url("ftp://x").unwrap_err().contains("ftp"));
        assert!(websocket_url("wss://").unwrap_err().contains("no host"));
    }
}
