#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `chutes-miner gepetto` consumes the durable stream: killing it (SIGKILL) and
//! Redis mid-stream loses no event. Every published event id must show up in the
//! consumer's logs, and nothing may stay pending.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use miner_events::{MinerEvent, Producer, StreamConfig};
use test_harness::Redis;

const BIN: &str = env!("CARGO_BIN_EXE_chutes-miner");

fn gepetto(redis_url: &str, log: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(BIN)
        .args(["gepetto", "--consumer", "gepetto-0"])
        .env_clear()
        .env("REDIS_URL", redis_url)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap()
}

fn seen(log: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["event_id"].as_str().map(str::to_owned))
        .collect()
}

async fn publish(p: &Producer, from: usize, n: usize, ids: &mut Vec<String>) {
    for i in from..from + n {
        let event =
            MinerEvent::new("instance_verified", serde_json::json!({"instance_id": format!("i-{i}")}));
        ids.push(p.publish(&event).await.unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_gepetto_and_redis_mid_stream_loses_no_event() {
    let mut redis = Redis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gepetto.log");
    let producer = Producer::connect(&redis.url(), StreamConfig::default()).unwrap();
    let mut ids = Vec::new();

    let mut g = gepetto(&redis.url(), &log);
    publish(&producer, 0, 100, &mut ids).await;
    g.kill().unwrap(); // SIGKILL, mid-stream
    g.wait().unwrap();
    publish(&producer, 100, 100, &mut ids).await;
    redis.kill();
    publish(&producer, 200, 50, &mut ids).await; // queued by the producer while Redis is away
    redis.restart().unwrap();
    let mut g = gepetto(&redis.url(), &log);
    publish(&producer, 250, 50, &mut ids).await;
    tokio::time::timeout(Duration::from_secs(30), producer.flush()).await.unwrap().unwrap();

    let want: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(want.len(), 300);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = seen(&log);
        let missing = want.difference(&got).count();
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} of 300 events never reached gepetto");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Everything handled was acknowledged.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending: redis::streams::StreamPendingReply =
            redis::cmd("XPENDING").arg("miner_events").arg("gepetto").query_async(&mut conn).await.unwrap();
        if pending.count() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{} events left unacknowledged", pending.count());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unsafe { libc::kill(g.id() as i32, libc::SIGTERM) };
    assert!(g.wait().unwrap().success());
}
