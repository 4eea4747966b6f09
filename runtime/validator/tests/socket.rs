//! The socket.io client against the validator emulator and a real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chutes_protocol::auth::headers;
use common::*;
use lab_hosts::Redis;
use miner_events::Producer;
use miner_validator::socket::{self, SocketOptions, SocketState};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use validator_emulator::Emulator;

/// Payloads as chutes-api sends them (reference section 9).
fn sample_broadcasts() -> Vec<(&'static str, Value)> {
    vec![
        ("chute_created", json!({"chute_id": "c1", "version": "v1", "job_only": false})),
        ("chute_updated", json!({"chute_id": "c1", "version": "v2", "job_only": true})),
        ("chute_deleted", json!({"chute_id": "c1", "version": "v1"})),
        ("bounty_change", json!({"chute_id": "c1", "bounty": 150})),
        ("image_created", json!({"image_id": "i1"})),
        (
            "image_updated",
            json!({"image_id": "i1", "short_tag": "t", "patch_version": "p1", "chutes_version": "0.3.1", "chute_ids": ["c1", "c2"], "image": "user/name:t-p1"}),
        ),
        ("image_deleted", json!({"image_id": "i1"})),
        ("gpu_verified", json!({"gpu_id": "g1", "miner_hotkey": "5Miner"})),
        (
            "instance_created",
            json!({"chute_id": "c1", "gpu_count": 2, "gpu_model_name": "h100", "miner_hotkey": "5Miner", "instance_id": "in1", "config_id": "k1"}),
        ),
        ("instance_verified", json!({"instance_id": "in1", "miner_hotkey": "5Miner"})),
        (
            "instance_activated",
            json!({"chute_id": "c1", "miner_hotkey": "5Miner", "instance_id": "in1", "config_id": "k1"}),
        ),
        (
            "instance_deleted",
            json!({"chute_id": "c1", "miner_hotkey": "5Miner", "instance_id": "in1", "config_id": "k1"}),
        ),
        (
            "rolling_update",
            json!({"chute_id": "c1", "instance_id": "in1", "miner_hotkey": "5Miner", "old_version": "v1", "new_version": "v2", "reason": "code change", "image": "user/name:t"}),
        ),
        (
            "job_created",
            json!({"job_id": "j1", "method": "train", "chute_id": "c1", "image_id": "i1", "gpu_count": 1, "compute_multiplier": 1.5, "exclude": ["5Other"], "disk_gb": 20}),
        ),
        ("job_deleted", json!({"instance_id": "in1", "job_id": "j1"})),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_arrive_in_the_stream_exactly_as_sent() {
    let redis = Redis::start().unwrap();
    let emulator = Emulator::start();
    let hotkey = miner_hotkey();
    emulator.register_hotkeys([hotkey.ss58()]);
    let producer = Producer::connect(&redis.url(), fast_stream()).unwrap();
    let shutdown = CancellationToken::new();
    // One handshake is asserted below: no busy-machine stall may time the first one out.
    let patient = SocketOptions {
        connect_timeout: Duration::from_secs(30),
        auth_timeout: Duration::from_secs(30),
        ..fast_socket()
    };
    let mut handle = socket::spawn_with(
        target(emulator.socket_url(), emulator.api_url()),
        hotkey.clone(),
        producer.clone(),
        shutdown.clone(),
        patient,
    );
    assert!(wait_state(&mut handle.state, SocketState::Authenticated, 10).await);

    // The handshake: exactly the three signed headers, a valid `sockets` signature.
    let attempts = emulator.auth_attempts();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].result, Ok(hotkey.ss58().to_owned()));
    let keys: BTreeSet<&str> = attempts[0].payload.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from([headers::HOTKEY, headers::NONCE, headers::SIGNATURE]));

    for (reason, data) in sample_broadcasts() {
        assert_eq!(emulator.broadcast(reason, data).await, 1, "{reason} went to the miner");
    }
    // Dropped, as the original did: unknown reasons and payloads without object data.
    emulator.broadcast("telemetry", json!({"x": 1})).await;
    emulator.broadcast_raw(json!({"reason": "chute_created", "data": "nope"})).await;
    emulator.broadcast("job_deleted", json!({"instance_id": "in2", "job_id": "last"})).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.stats.events_accepted.load(Ordering::SeqCst) < 16 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    producer.flush().await.unwrap();
    let entries = stream_entries(&redis.url()).await;
    let mut expected: Vec<Value> = sample_broadcasts()
        .into_iter()
        .map(|(reason, mut data)| {
            data["validator"] = json!(VALIDATOR);
            json!({"event_type": reason, "event_data": data})
        })
        .collect();
    expected.push(json!({"event_type": "job_deleted", "event_data": {"instance_id": "in2", "job_id": "last", "validator": VALIDATOR}}));
    let got: Vec<Value> = entries.into_iter().map(|(_, e)| e).collect();
    assert_eq!(got, expected, "every accepted broadcast, in order, in the original shape");
    assert_eq!(handle.stats.events_dropped.load(Ordering::SeqCst), 2);

    shutdown.cancel();
    handle.join.await.unwrap();
    assert_eq!(*handle.state.borrow(), SocketState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_authentication_and_an_absent_validator_are_retried_until_they_succeed() {
    let redis = Redis::start().unwrap();
    let mut emulator = Emulator::start();
    emulator.stop(); // nothing listens: the original gave up here for good
    let hotkey = miner_hotkey();
    let producer = Producer::connect(&redis.url(), fast_stream()).unwrap();
    let shutdown = CancellationToken::new();
    let mut handle = socket::spawn_with(
        target(emulator.socket_url(), emulator.api_url()),
        hotkey.clone(),
        producer,
        shutdown.clone(),
        fast_socket(),
    );
    // Kept trying: a second failed connect, however long the machine takes to get there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let failed_connects = match &*handle.state.borrow() {
            SocketState::Retrying { reason, attempt } => {
                assert!(reason.contains("connect"), "{reason}");
                *attempt
            }
            SocketState::Connecting => 0,
            other => panic!("expected retrying, got {other:?}"),
        };
        if failed_connects >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stopped trying after {failed_connects} connects");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The validator comes up but does not know this hotkey yet.
    emulator.restart();
    emulator.register_hotkeys(["5SomeoneElse"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while emulator.auth_attempts().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts = emulator.auth_attempts();
    assert!(attempts.len() >= 2, "re-authenticates after auth_failed: {attempts:?}");
    assert!(attempts[0].result.as_ref().unwrap_err().contains("not registered"));

    // Registered now: the next attempt succeeds.
    emulator.register_hotkeys([hotkey.ss58()]);
    assert!(wait_state(&mut handle.state, SocketState::Authenticated, 10).await);
    assert!(emulator.wait_authenticated(1, Duration::from_secs(5)).await);

    // A polite server-side disconnect is also followed by a reconnect.
    let before = handle.stats.authenticated.load(Ordering::SeqCst);
    emulator.disconnect_all().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while handle.stats.authenticated.load(Ordering::SeqCst) == before
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(handle.stats.authenticated.load(Ordering::SeqCst), before + 1);
    shutdown.cancel();
    handle.join.await.unwrap();
}

/// The "done when" check: the emulator, Redis and the consumer are each killed and
/// restarted while events flow; every event the emulator sent is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_validator_redis_and_the_consumer_mid_stream_loses_no_event() {
    let mut redis = Redis::start().unwrap();
    let url = redis.url();
    let emulator = Arc::new(tokio::sync::Mutex::new(Emulator::start()));
    let (socket_url, api_url) = {
        let e = emulator.lock().await;
        (e.socket_url(), e.api_url())
    };
    let producer = Producer::connect(&url, fast_stream()).unwrap();
    let shutdown = CancellationToken::new();
    let mut handle = socket::spawn_with(
        target(socket_url, api_url),
        miner_hotkey(),
        producer.clone(),
        shutdown.clone(),
        fast_socket(),
    );
    assert!(wait_state(&mut handle.state, SocketState::Authenticated, 10).await);
    // One channel across all consumer lives: every handler run lands here.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_consumer, consumer) = spawn_collector_into(&url, "gepetto-0", tx.clone());

    // Broadcast continuously; count what the emulator really sent to the miner.
    let stop_broadcasting = CancellationToken::new();
    let sent_count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let broadcaster = {
        let emulator = emulator.clone();
        let stop = stop_broadcasting.clone();
        let sent_count = sent_count.clone();
        tokio::spawn(async move {
            let (mut seq, mut sent) = (0u64, BTreeSet::new());
            while !stop.is_cancelled() {
                seq += 1;
                let e = emulator.lock().await;
                if e.broadcast("bounty_change", json!({"chute_id": format!("c-{seq}"), "bounty": seq})).await
                    > 0
                {
                    sent.insert(seq);
                    sent_count.fetch_add(1, Ordering::SeqCst);
                }
                drop(e);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        })
    };

    let mut consumer = (consumer, stop_consumer);
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Validator crash: held between two broadcasts, once the miner has received all
        // it was sent (what the emulator's send buffer still held at a crash would be the
        // validator's loss, not ours).
        {
            let mut e = emulator.lock().await;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while handle.stats.events_accepted.load(Ordering::SeqCst) < sent_count.load(Ordering::SeqCst) {
                assert!(tokio::time::Instant::now() < deadline, "the miner never received what was sent");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            e.restart();
            assert!(
                e.wait_authenticated(1, Duration::from_secs(10)).await,
                "miner came back (round {round})"
            );
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        redis.kill();
        tokio::time::sleep(Duration::from_millis(400)).await;
        redis.restart().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Gepetto crash: the task dies wherever it is, without acknowledging.
        consumer.0.abort();
        let _ = consumer.0.await;
        let (stop, task) = spawn_collector_into(&url, "gepetto-0", tx.clone());
        consumer = (task, stop);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_broadcasting.cancel();
    let sent = broadcaster.await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), producer.flush()).await.unwrap().unwrap();

    // Handler runs across all lives, until every sent event was handled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (mut handled, mut deliveries) = (BTreeSet::new(), 0usize);
    while !sent.is_subset(&handled) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(d)) => {
                deliveries += 1;
                handled.insert(d.event.event_data["bounty"].as_u64().unwrap());
            }
            _ => panic!("handled {} of {} sent events", handled.len(), sent.len()),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.1.cancel();
    consumer.0.await.unwrap();
    while rx.try_recv().is_ok() {
        deliveries += 1;
    }

    let entries = stream_entries(&url).await;
    let in_stream: BTreeSet<u64> =
        entries.iter().map(|(_, e)| e["event_data"]["bounty"].as_u64().unwrap()).collect();
    let ids: BTreeSet<&String> = entries.iter().map(|(id, _)| id).collect();
    eprintln!(
        "kill test: emulator sent {} events (2 validator crashes, 2 Redis crashes, 2 consumer crashes); \
         stream holds {} entries ({} distinct); handlers ran {} times for {} distinct events ({} redeliveries); {} left pending",
        sent.len(),
        entries.len(),
        in_stream.len(),
        deliveries,
        handled.len(),
        deliveries - handled.len(),
        pending_count(&url).await,
    );
    assert_eq!(handled, sent, "every event the validator sent was handled");
    assert_eq!(in_stream, sent, "every event the validator sent is in the stream");
    assert_eq!(ids.len(), entries.len(), "no event appended twice");
    assert_eq!(entries.len(), sent.len());
    assert_eq!(pending_count(&url).await, 0, "and every one was handled and acknowledged");
    assert!(sent.len() > 50, "the test really streamed: {}", sent.len());
    shutdown.cancel();
    handle.join.await.unwrap();
}

/// A validator that stops pinging (a half-open connection: NAT timeout, frozen
/// peer) is given up on after pingInterval + pingTimeout, and the client reconnects.
/// The server here is a bare websocket speaking Engine.IO by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_that_stops_pinging_is_detected_and_reconnected() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let redis = Redis::start().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let open =
                    r#"0{"sid":"s","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}"#;
                ws.send(Message::text(open)).await.unwrap();
                // Answer the namespace connect and authenticate, then go silent but keep the socket open.
                while let Some(Ok(Message::Text(t))) = ws.next().await {
                    let _ = seen_tx.send(t.to_string());
                    if t.as_str() == "40" {
                        ws.send(Message::text(r#"40{"sid":"n"}"#)).await.unwrap();
                    } else if t.as_str().starts_with(r#"42["authenticate""#) {
                        ws.send(Message::text(r#"42["auth_success",{"message":"Authenticated"}]"#))
                            .await
                            .unwrap();
                    }
                }
            });
        }
    });
    let producer = Producer::connect(&redis.url(), fast_stream()).unwrap();
    let shutdown = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let handle = socket::spawn_with(
        target(format!("ws://127.0.0.1:{port}"), "http://127.0.0.1:1".into()),
        miner_hotkey(),
        producer,
        shutdown.clone(),
        fast_socket(),
    );
    let deadline = started + Duration::from_secs(10);
    while handle.stats.authenticated.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // At least 2: a machine stalled past another 500 ms of silence sees a third, rightly.
    let authenticated = handle.stats.authenticated.load(Ordering::SeqCst);
    assert!(authenticated >= 2, "reconnected after the pings stopped: {authenticated}");
    assert!(
        elapsed >= Duration::from_millis(500),
        "waited out pingInterval + pingTimeout first: {elapsed:?}"
    );
    let mut frames = Vec::new();
    while let Ok(f) = seen.try_recv() {
        frames.push(f);
    }
    assert!(
        frames.iter().filter(|f| *f == "40").count() >= 2,
        "a namespace connect on each connection: {frames:?}"
    );
    shutdown.cancel();
    handle.join.await.unwrap();
}

/// `wss://` must get as far as a TLS handshake: a build without a TLS feature, or
/// without a rustls crypto provider, fails before that (anchors B.7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_urls_reach_a_tls_handshake() {
    let redis = Redis::start().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Not a TLS server: answers the ClientHello with plain HTTP and hangs up.
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            use tokio::io::AsyncWriteExt;
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let producer = Producer::connect(&redis.url(), fast_stream()).unwrap();
    let shutdown = CancellationToken::new();
    let mut handle = socket::spawn_with(
        target(format!("wss://127.0.0.1:{port}"), "https://127.0.0.1:1".into()),
        miner_hotkey(),
        producer,
        shutdown.clone(),
        fast_socket(),
    );
    let reason = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            handle.state.changed().await.unwrap();
            if let SocketState::Retrying { reason, .. } = &*handle.state.borrow() {
                return reason.clone();
            }
        }
    })
    .await
    .unwrap();
    eprintln!("wss to a non-TLS server: {reason}");
    let lower = reason.to_lowercase();
    assert!(!lower.contains("not enabled") && !lower.contains("feature"), "TLS not built in: {reason}");
    assert!(
        lower.contains("tls")
            || lower.contains("io error")
            || lower.contains("handshake")
            || lower.contains("corrupt"),
        "{reason}"
    );
    shutdown.cancel();
    handle.join.await.unwrap();
}
