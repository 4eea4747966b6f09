#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The real `chutes-miner` binary: start-up refusals naming the setting, migrate,
//! and the API serving then shutting down gracefully on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chutes_protocol::Hotkey;
use lab_hosts::{Postgres, Redis};

const BIN: &str = env!("CARGO_BIN_EXE_chutes-miner");
const SEED: &str = "0x5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

fn miner() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).env("RUST_LOG", "info");
    c
}

fn stderr_of(c: &mut Command) -> (bool, String) {
    let out = c.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn ss58() -> String {
    Hotkey::from_seed_hex(SEED, "t").unwrap().ss58().to_owned()
}

fn validators() -> String {
    let v = Hotkey::from_seed(&[9; 32], "t").unwrap();
    format!(
        r#"{{"supported":[{{"hotkey":"{}","registry":"r","api":"http://127.0.0.1:9","socket":"ws://127.0.0.1:9"}}]}}"#,
        v.ss58()
    )
}

#[test]
fn help_says_what_gepetto_needs() {
    let out = miner().args(["gepetto", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("scheduler") && text.contains("GEPETTO_STRATEGY"), "{text}");
    assert!(text.contains("GEPETTO_RECORD_TRACE"), "{text}");
    let out = miner().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["api", "gepetto", "porter", "audit-export", "migrate"] {
        assert!(text.contains(sub), "{sub} missing from --help: {text}");
    }
}

#[test]
fn a_missing_or_bad_setting_stops_start_up_naming_it_without_leaking_secrets() {
    let (ok, err) = stderr_of(miner().arg("migrate"));
    assert!(!ok);
    assert!(err.contains("POSTGRESQL is not set"), "{err}");

    let (ok, err) = stderr_of(miner().arg("api").env("MINER_SS58", ss58()));
    assert!(!ok);
    assert!(err.contains("MINER_SEED is not set"), "{err}");

    let wrong = Hotkey::from_seed(&[3; 32], "t").unwrap().ss58().to_owned();
    let (ok, err) = stderr_of(miner().arg("api").env("MINER_SS58", &wrong).env("MINER_SEED", SEED));
    assert!(!ok);
    assert!(err.contains("MINER_SS58") && err.contains("does not match"), "{err}");
    assert!(!err.contains(&SEED[2..]), "seed leaked: {err}");

    let (ok, err) = stderr_of(
        miner()
            .arg("api")
            .env("MINER_SS58", ss58())
            .env("MINER_SEED", SEED)
            .env("VALIDATORS", "{\"supported\": 1}"),
    );
    assert!(!ok);
    assert!(err.contains("VALIDATORS is invalid"), "{err}");

    let (ok, err) = stderr_of(
        miner()
            .arg("api")
            .env("MINER_SS58", ss58())
            .env("MINER_SEED", SEED)
            .env("VALIDATORS", validators())
            .env("REGISTRY_PROXY_PORT", "huge"),
    );
    assert!(!ok);
    assert!(err.contains("REGISTRY_PROXY_PORT"), "{err}");

    let (ok, err) =
        stderr_of(miner().arg("migrate").env("POSTGRESQL", "postgresql://u:hunter2@127.0.0.1:9/db"));
    assert!(!ok);
    assert!(err.contains("connecting to postgresql://u:***@127.0.0.1:9/db"), "{err}");
    assert!(!err.contains("hunter2"), "password leaked: {err}");

    let (ok, err) = stderr_of(miner().arg("porter"));
    assert!(!ok);
    assert!(err.contains("REAL_AXON_HOST is not set"), "{err}");
}

#[test]
fn migrate_then_serve_then_stop_gracefully_on_sigterm() {
    let pg = Postgres::start().unwrap();
    let redis = Redis::start().unwrap();
    let (ok, err) = stderr_of(miner().arg("migrate").env("POSTGRESQL", pg.url()));
    assert!(ok, "{err}");
    assert!(err.contains("database migrated"), "{err}");
    let (ok, err) = stderr_of(miner().arg("migrate").env("POSTGRESQL", pg.url()));
    assert!(ok && err.contains("up to date"), "{err}");

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = miner()
        .args(["api", "--no-sockets", "--listen", &format!("127.0.0.1:{port}")])
        .env("POSTGRESQL", pg.url())
        .env("REDIS_URL", redis.url())
        .env("MINER_SS58", ss58())
        .env("MINER_SEED", SEED)
        .env("VALIDATORS", validators())
        .env("LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = format!("127.0.0.1:{port}");
    let body = loop {
        match test_support::try_http(&addr, "GET", "/ping", &[], b"") {
            Some((_, body)) => break body,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            None => panic!("the API never answered /ping on {addr}"),
        }
    };
    assert!(body.contains(r#"{"message":"pong"}"#), "{body}");

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(status.success(), "exit {status:?}: {logs}");
    assert!(logs.contains("SIGTERM: shutting down"), "{logs}");
    assert!(logs.lines().all(|l| l.trim().is_empty() || l.starts_with('{')), "json logs: {logs}");
    assert!(!logs.contains(&SEED[2..]));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_relays_validator_broadcasts_into_the_stream_exactly() {
    let pg = Postgres::start().unwrap();
    let redis = Redis::start().unwrap();
    let emulator = validator_emulator::Emulator::start();
    let validator = Hotkey::from_seed(&[9; 32], "t").unwrap().ss58().to_owned();
    let validators = format!(
        r#"{{"supported":[{{"hotkey":"{validator}","registry":"r","api":"{}","socket":"{}"}}]}}"#,
        emulator.api_url(),
        emulator.socket_url()
    );
    let port = free_port();
    let mut child = miner()
        .args(["api", "--listen", &format!("127.0.0.1:{port}")])
        .env("POSTGRESQL", pg.url())
        .env("REDIS_URL", redis.url())
        .env("MINER_SS58", ss58())
        .env("MINER_SEED", SEED)
        .env("VALIDATORS", validators)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(emulator.wait_authenticated(1, Duration::from_secs(30)).await, "the miner never authenticated");

    let data = serde_json::json!({"chute_id": "c-1", "version": "v7", "job_only": false});
    assert_eq!(emulator.broadcast("chute_created", data.clone()).await, 1);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let events = loop {
        let reply: redis::streams::StreamRangeReply =
            redis::cmd("XRANGE").arg("miner_events").arg("-").arg("+").query_async(&mut conn).await.unwrap();
        if !reply.ids.is_empty() {
            break reply;
        }
        assert!(Instant::now() < deadline, "the event never reached the stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text: String = events.ids[0].get("event").unwrap();
    let event: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut expected = data;
    expected["validator"] = validator.clone().into();
    assert_eq!(event, serde_json::json!({"event_type": "chute_created", "event_data": expected}));

    // The producer frees the event's queue slot only once Redis's reply is back, which
    // can be a moment after the entry is visible to XRANGE.
    let metrics = loop {
        let (_, metrics) = test_support::http(&format!("127.0.0.1:{port}"), "GET", "/metrics", &[], b"");
        if metrics.contains("miner_events_queued 0") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "the queue never emptied: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains(&format!("miner_validator_events_accepted_total{{validator=\"{validator}\"}} 1")),
        "{metrics}"
    );

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(child.try_wait().unwrap().unwrap().success());
}
