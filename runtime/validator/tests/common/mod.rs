//! Shared set-up for the validator crate's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chutes_protocol::Hotkey;
use miner_events::{Consumer, Delivery, StreamConfig};
use miner_validator::ValidatorTarget;
use miner_validator::socket::{SocketOptions, SocketState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

pub const VALIDATOR: &str = "5GVaLiDaToRxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

pub fn miner_hotkey() -> Arc<Hotkey> {
    Arc::new(Hotkey::from_seed_hex(&"11".repeat(32), "test seed").unwrap())
}

pub fn target(socket: String, api: String) -> ValidatorTarget {
    ValidatorTarget { hotkey: VALIDATOR.into(), api, socket }
}

pub fn fast_socket() -> SocketOptions {
    SocketOptions {
        backoff_initial: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(400),
        connect_timeout: Duration::from_secs(3),
        auth_timeout: Duration::from_secs(3),
        stable_after: Duration::from_secs(1),
    }
}

pub fn fast_stream() -> StreamConfig {
    StreamConfig {
        block: Duration::from_millis(200),
        claim_idle: Duration::from_millis(600),
        claim_every: Duration::from_millis(300),
        retry_initial: Duration::from_millis(20),
        retry_cap: Duration::from_millis(300),
        command_timeout: Duration::from_secs(2),
        ..StreamConfig::default()
    }
}

pub async fn wait_state(state: &mut watch::Receiver<SocketState>, want: SocketState, secs: u64) -> bool {
    tokio::time::timeout(Duration::from_secs(secs), state.wait_for(|s| *s == want))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// A consumer whose handler forwards each delivery to the returned channel.
pub fn spawn_collector(
    url: &str,
    name: &str,
) -> (mpsc::UnboundedReceiver<Delivery>, CancellationToken, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, task) = spawn_collector_into(url, name, tx);
    (rx, stop, task)
}

/// Same, forwarding into an existing channel (one channel across consumer lives).
pub fn spawn_collector_into(
    url: &str,
    name: &str,
    tx: mpsc::UnboundedSender<Delivery>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let consumer = Consumer::new(url, "gepetto", name, fast_stream()).unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        consumer
            .run(
                move |d: Delivery| {
                    let tx = tx.clone();
                    async move { tx.send(d).map_err(|e| e.to_string()) }
                },
                s,
            )
            .await
    });
    (stop, task)
}

/// All entries of the stream as (event_id, parsed event JSON).
pub async fn stream_entries(url: &str) -> Vec<(String, serde_json::Value)> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("miner_events").arg("-").arg("+").query_async(&mut conn).await.unwrap();
    raw.into_iter()
        .map(|(_, fields)| {
            let f: BTreeMap<_, _> = fields.into_iter().collect();
            (f["event_id"].clone(), serde_json::from_str(&f["event"]).unwrap())
        })
        .collect()
}

/// Entries read by the group but not acknowledged (`u64::MAX` while Redis is away).
pub async fn pending_count(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return u64::MAX };
    let summary: redis::RedisResult<Vec<redis::Value>> =
        redis::cmd("XPENDING").arg("miner_events").arg("gepetto").query_async(&mut conn).await;
    match summary.as_deref() {
        Ok([redis::Value::Int(n), ..]) => *n as u64,
        _ => u64::MAX,
    }
}
