#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `chutes-miner gepetto` consumes the durable stream: killing it (SIGKILL) and
//! Redis mid-stream loses no event. Every published event id must show up in the
//! consumer's logs, and nothing may stay pending. The scheduler runs for real, on
//! Postgres and the Kubernetes emulator; these events concern no deployment.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lab_hosts::Redis;
use miner_events::{MinerEvent, Producer, StreamConfig};

const BIN: &str = env!("CARGO_BIN_EXE_chutes-miner");

/// What the scheduler needs besides Redis: Postgres, a cluster (the Kubernetes
/// emulator, through a kubeconfig file) and a validator list. Shared by the tests.
struct Stack {
    pg: lab_hosts::Postgres,
    _kube: kube_emulator::Emulator,
    kubeconfig: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn stack() -> &'static Stack {
    static S: std::sync::OnceLock<Stack> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let kube = kube_emulator::Emulator::start().unwrap();
        kube.create(
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}}),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig).unwrap();
        Stack { pg: lab_hosts::Postgres::start().unwrap(), _kube: kube, kubeconfig, _dir: dir }
    })
}

fn gepetto(redis_url: &str, log: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let s = stack();
    let miner = chutes_protocol::Hotkey::from_seed_hex(SEED, "t").unwrap().ss58().to_owned();
    let validator = chutes_protocol::Hotkey::from_seed(&[9; 32], "t").unwrap().ss58().to_owned();
    Command::new(BIN)
        .args(["gepetto", "--consumer", "gepetto-0"])
        .env_clear()
        .env("POSTGRESQL", s.pg.url())
        .env("KUBECONFIG", &s.kubeconfig)
        .env("MINER_SS58", &miner)
        .env("MINER_SEED", SEED)
        .env(
            "VALIDATORS",
            format!(r#"{{"supported":[{{"hotkey":"{validator}","registry":"r","api":"http://127.0.0.1:9","socket":"ws://127.0.0.1:9"}}]}}"#),
        )
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

/// Every `instance_id` gepetto logged, from the `event_data` field of its JSON logs.
fn handled_instances(log: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["fields"]["event_data"].as_str().map(str::to_owned))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
        .filter_map(|d| d["instance_id"].as_str().map(str::to_owned))
        .collect()
}

const SEED: &str = "0x5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// The whole path, process by process: validator emulator → `chutes-miner api` (socket client)
/// → Redis stream → `chutes-miner gepetto`, while the emulator restarts, Redis is killed and
/// restarted, and gepetto is killed and restarted. Counts what arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_broadcast_is_lost_across_emulator_redis_and_consumer_restarts() {
    let pg = lab_hosts::Postgres::start().unwrap();
    let mut redis = Redis::start().unwrap();
    let mut emulator = validator_emulator::Emulator::start();
    let validator = chutes_protocol::Hotkey::from_seed(&[9; 32], "t").unwrap().ss58().to_owned();
    let miner = chutes_protocol::Hotkey::from_seed_hex(SEED, "t").unwrap().ss58().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gepetto.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut api = Command::new(BIN)
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("POSTGRESQL", pg.url())
        .env("REDIS_URL", redis.url())
        .env("MINER_SS58", &miner)
        .env("MINER_SEED", SEED)
        .env(
            "VALIDATORS",
            format!(
                r#"{{"supported":[{{"hotkey":"{validator}","registry":"r","api":"{}","socket":"{}"}}]}}"#,
                emulator.api_url(),
                emulator.socket_url()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut g = gepetto(&redis.url(), &log);

    let mut sent = 0usize;
    async fn send(emulator: &validator_emulator::Emulator, from: usize, n: usize) -> usize {
        assert!(emulator.wait_authenticated(1, Duration::from_secs(30)).await, "miner not connected");
        for i in from..from + n {
            let data = serde_json::json!({"instance_id": format!("i-{i}"), "miner_hotkey": "m"});
            assert_eq!(
                emulator.broadcast("instance_verified", data).await,
                1,
                "event {i} not delivered to the socket"
            );
        }
        n
    }
    let stream_len = |url: String| async move {
        let client = redis::Client::open(url).unwrap();
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return 0 };
        redis::cmd("XLEN").arg("miner_events").query_async::<usize>(&mut conn).await.unwrap_or(0)
    };
    let redis_url = redis.url();
    let wait_len = |n: usize| {
        let url = redis_url.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while stream_len(url.clone()).await < n {
                assert!(Instant::now() < deadline, "stream stuck below {n}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };

    sent += send(&emulator, sent, 30).await;
    wait_len(sent).await; // what the socket delivered is in Redis before the validator goes away
    emulator.stop();
    emulator.restart();
    sent += send(&emulator, sent, 30).await;
    wait_len(sent).await;
    redis.kill();
    sent += send(&emulator, sent, 30).await; // accepted and queued while Redis is down
    redis.restart().unwrap();
    wait_len(sent).await;
    g.kill().unwrap();
    g.wait().unwrap();
    sent += send(&emulator, sent, 30).await;
    let mut g = gepetto(&redis.url(), &log);
    wait_len(sent).await;

    let want: BTreeSet<String> = (0..sent).map(|i| format!("i-{i}")).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<_> = want.difference(&handled_instances(&log)).cloned().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {sent} events never reached gepetto: {missing:?}",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stream_len(redis.url()).await, sent, "each broadcast appended exactly once");

    for child in [&mut api, &mut g] {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        assert!(child.wait().unwrap().success());
    }
}
