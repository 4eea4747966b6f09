//! The emulator refuses what the validator refuses: without this, a client test
//! passing against it would prove little.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report

use std::time::Duration;

use chutes_protocol::auth::now_unix;
use chutes_protocol::{Hotkey, Payload};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use validator_emulator::Emulator;

fn hotkey() -> Hotkey {
    Hotkey::from_seed_hex(&"22".repeat(32), "test seed").unwrap()
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(emulator: &Emulator, path: &str, headers: Option<chutes_protocol::SignedHeaders>) -> u16 {
    let mut req = http().get(format!("{}{path}", emulator.api_url()));
    for (k, v) in headers.iter().flat_map(|h| h.iter()) {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_signatures_are_checked_per_endpoint() {
    let emulator = Emulator::start();
    let key = hotkey();
    assert_eq!(get(&emulator, "/miner/chutes/", None).await, 401, "unsigned");
    assert_eq!(
        get(&emulator, "/miner/chutes/", Some(key.sign_request(Payload::Purpose("launch")))).await,
        401,
        "wrong purpose"
    );
    let stale = key.sign_request_at(Payload::Purpose("miner"), now_unix() - 700);
    assert_eq!(get(&emulator, "/miner/chutes/", Some(stale)).await, 401, "nonce outside 600 s");
    assert_eq!(
        get(&emulator, "/miner/chutes/", Some(key.sign_request(Payload::Purpose("miner")))).await,
        200
    );
    assert_eq!(get(&emulator, "/nodes/supported", None).await, 200, "public");
    assert_eq!(get(&emulator, "/no/such/endpoint", None).await, 404);

    // A body signature must cover the bytes actually sent.
    let signed_for = key.sign_request(Payload::Body(br#"{"nodes":[]}"#));
    let mut req = http().post(format!("{}/nodes/", emulator.api_url())).body(r#"{"nodes":[1]}"#);
    for (k, v) in signed_for.iter() {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 401);

    emulator.register_hotkeys(["5NotThisMiner"]);
    assert_eq!(
        get(&emulator, "/miner/chutes/", Some(key.sign_request(Payload::Purpose("miner")))).await,
        401,
        "unregistered"
    );
    let refused: Vec<_> = emulator.requests().into_iter().filter(|r| r.status == 401).collect();
    assert_eq!(refused.len(), 5);
    assert!(refused.iter().all(|r| r.auth.is_err()));
}

/// Raw socket.io over a websocket: open, join, authenticate, and the reply event.
async fn authenticate_raw(emulator: &Emulator, payload: Value) -> (String, Value) {
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", emulator.socket_url());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.as_str() != "2" => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    };
    assert!(next(&mut ws).await.starts_with("0{"), "engine.io open");
    ws.send(Message::text("40")).await.unwrap();
    assert!(next(&mut ws).await.starts_with("40"), "namespace joined");
    ws.send(Message::text(format!("42{}", json!(["authenticate", payload])))).await.unwrap();
    let reply = next(&mut ws).await;
    let v: Value = serde_json::from_str(reply.strip_prefix("42").unwrap()).unwrap();
    (v[0].as_str().unwrap().to_owned(), v[1].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_authentication_checks_the_sockets_signature() {
    let emulator = Emulator::start();
    let key = hotkey();
    let as_json = |h: chutes_protocol::SignedHeaders| -> Value {
        Value::Object(h.iter().map(|(k, v)| (k.to_owned(), json!(v))).collect())
    };
    let (event, body) =
        authenticate_raw(&emulator, as_json(key.sign_request(Payload::Purpose("miner")))).await;
    assert_eq!(event, "auth_failed");
    assert!(body["error"].as_str().unwrap().contains("signature"), "{body}");
    let (event, _) = authenticate_raw(&emulator, json!({"X-Chutes-Hotkey": key.ss58()})).await;
    assert_eq!(event, "auth_failed");
    let (event, body) =
        authenticate_raw(&emulator, as_json(key.sign_request(Payload::Purpose("sockets")))).await;
    assert_eq!((event.as_str(), body), ("auth_success", json!({"message": "Authenticated"})));
    let results: Vec<bool> = emulator.auth_attempts().iter().map(|a| a.result.is_ok()).collect();
    assert_eq!(results, [false, false, true]);
}
