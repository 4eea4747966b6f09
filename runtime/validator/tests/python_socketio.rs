//! The handshake against a socket.io server written by someone else: python-socketio,
//! the library the real validator (chutes-api) runs. Needs `python3` with
//! `python-socketio` and `aiohttp` (see /work/targets/ci-needs.md).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report

mod common;

use std::process::Stdio;
use std::time::Duration;

use chutes_protocol::Payload;
use chutes_protocol::auth::{now_unix, verify_miner_request};
use common::*;
use lab_hosts::Redis;
use miner_events::Producer;
use miner_validator::socket::{self, SocketState};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const PIP: &str = "pip install 'python-socketio==5.18.1' 'aiohttp==3.14.5'";

fn require_python_socketio() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import socketio, aiohttp"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "this test needs python3 with python-socketio and aiohttp: {PIP}");
}

/// Starts the Python server; returns its port and a channel of its JSON lines.
async fn python_server() -> (tokio::process::Child, u16, mpsc::UnboundedReceiver<Value>) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/sio_server.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let ready = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
    assert_eq!(ready["kind"], "ready", "{ready}");
    (child, ready["port"].as_u64().unwrap() as u16, rx)
}

async fn next_kind(rx: &mut mpsc::UnboundedReceiver<Value>, kind: &str, log: &mut Vec<Value>) -> Value {
    loop {
        let v = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} from the python server; saw {log:?}"))
            .unwrap();
        log.push(v.clone());
        if v["kind"] == kind {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_socketio_accepts_the_handshake_and_its_events_reach_the_stream() {
    require_python_socketio();
    let (_child, port, mut rx) = python_server().await;
    let redis = Redis::start().unwrap();
    let producer = Producer::connect(&redis.url(), fast_stream()).unwrap();
    let hotkey = miner_hotkey();
    let shutdown = CancellationToken::new();
    let mut handle = socket::spawn_with(
        target(format!("ws://127.0.0.1:{port}"), "http://127.0.0.1:1".into()),
        hotkey.clone(),
        producer.clone(),
        shutdown.clone(),
        fast_socket(),
    );
    let mut log = Vec::new();
    next_kind(&mut rx, "connect", &mut log).await;
    let auth = next_kind(&mut rx, "authenticate", &mut log).await;
    assert!(wait_state(&mut handle.state, SocketState::Authenticated, 10).await);

    // What python-socketio handed its handler is a dict of the three headers,
    // signed over "<hotkey>:<nonce>:sockets".
    let mut headers = http::HeaderMap::new();
    for (k, v) in auth["data"].as_object().unwrap() {
        headers.insert(http::HeaderName::try_from(k.as_str()).unwrap(), v.as_str().unwrap().parse().unwrap());
    }
    assert_eq!(
        verify_miner_request(&headers, Payload::Purpose("sockets"), now_unix(), 600),
        Ok(hotkey.ss58().to_owned())
    );

    // The broadcast sent with an ack callback is acknowledged.
    next_kind(&mut rx, "ack", &mut log).await;
    // Pings every second with a three-second timeout: still connected 5 s later.
    next_kind(&mut rx, "sent_late", &mut log).await;
    assert!(log.iter().all(|v| v["kind"] != "disconnect"), "dropped mid-way: {log:?}");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut entries = Vec::new();
    while entries.len() < 2 && tokio::time::Instant::now() < deadline {
        producer.flush().await.unwrap();
        entries = stream_entries(&redis.url()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events: Vec<Value> = entries.into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        events,
        [
            json!({"event_type": "chute_created", "event_data": {"chute_id": "py-1", "version": "v1", "job_only": false, "validator": VALIDATOR}}),
            json!({"event_type": "chute_deleted", "event_data": {"chute_id": "py-1", "version": "v1", "validator": VALIDATOR}}),
        ]
    );

    shutdown.cancel();
    handle.join.await.unwrap();
    let bye = next_kind(&mut rx, "disconnect", &mut log).await;
    eprintln!("python-socketio saw: {log:?}");
    assert!(
        bye["reason"].as_str().unwrap_or("").to_lowercase().contains("client"),
        "a polite client disconnect: {bye}"
    );
}
