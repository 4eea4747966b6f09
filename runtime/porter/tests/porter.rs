#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Porter over real HTTP: the right answer for signed whitelisted validators,
//! one uniform refusal for everyone else, and limits that hold under a flood.

mod forge;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chutes_protocol::Hotkey;
use forge::{Forgery, apply, genuine, key};
use miner_porter::{Limits, PorterConfig, REFUSAL};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The genuine validator connects from its own loopback address, as a validator
/// on the internet has its own address; flooders use 127.0.0.1.
const VALIDATOR_IP: [u8; 4] = [127, 0, 0, 2];

struct Porter {
    base: String,
    miner: Hotkey,
    validator: Hotkey,
}

async fn start(limits: Limits) -> Porter {
    // reqwest may be built without a rustls provider when other crates are in the build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let miner = key(1);
    let validator = key(2);
    let cfg = PorterConfig {
        real_host: "203.0.113.9".into(),
        real_port: 32000,
        miner_ss58: miner.ss58().into(),
        whitelist: vec![validator.ss58().into()],
        limits,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { miner_porter::serve(listener, &cfg, std::future::pending()).await });
    Porter { base, miner, validator }
}

fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

#[tokio::test]
async fn whitelisted_signed_validators_get_the_real_address() {
    let p = start(Limits::default()).await;
    let http = client_from(VALIDATOR_IP);
    let h = genuine(p.miner.ss58(), &p.validator, "porter");
    let resp = apply(http.get(format!("{}/axon", p.base)), &h).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"host": "203.0.113.9", "port": 32000}));
}

#[tokio::test]
async fn every_forgery_gets_the_same_answer_that_says_nothing() {
    let p = start(Limits::default()).await;
    let http = client_from(VALIDATOR_IP);
    let url = format!("{}/axon", p.base);
    // The replay: accepted once, then sent again.
    let replay = Forgery::Replay.headers(p.miner.ss58(), &p.validator);
    assert_eq!(apply(http.get(&url), &replay).send().await.unwrap().status(), 200);
    let mut cases: Vec<(String, reqwest::RequestBuilder)> = Forgery::ALL
        .iter()
        .filter(|f| **f != Forgery::Replay)
        .map(|f| (format!("{f:?}"), apply(http.get(&url), &f.headers(p.miner.ss58(), &p.validator))))
        .collect();
    cases.push(("replay".into(), apply(http.get(&url), &replay)));
    let mut wrong_miner = genuine(p.miner.ss58(), &p.validator, "porter");
    wrong_miner[0].1 = key(9).ss58().to_owned();
    cases.push(("wrong miner".into(), apply(http.get(&url), &wrong_miner)));
    let mut stale = genuine(p.miner.ss58(), &p.validator, "porter");
    stale[2].1 = "1000".into();
    cases.push(("stale nonce".into(), apply(http.get(&url), &stale)));
    cases.push(("no headers".into(), http.get(&url)));
    for (why, req) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{why}");
        // One body for every refusal: a caller learns nothing about the whitelist.
        assert_eq!(resp.text().await.unwrap(), REFUSAL, "{why}");
    }
    // Nothing else is served.
    for path in ["/", "/ping", "/openapi.json", "/axon/x"] {
        let resp = http.get(format!("{}{path}", p.base)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.bytes().await.unwrap().is_empty(), "{path}");
    }
}

/// Forgers flood from one address with every kind of forgery while a validator
/// asks from another. Every forged request must get a definite refusal (401, or 503
/// when no verification slot is free; none lost, none answered 200), and every one
/// of the validator's requests must be answered 200: the per-peer share guarantees
/// the validator a slot however the flood is scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_every_forgery_never_keeps_a_genuine_validator_unanswered() {
    let p = start(Limits {
        max_in_flight: 4,
        max_in_flight_per_peer: 2,
        request_timeout: Duration::from_secs(60),
        ..Limits::default()
    })
    .await;
    let url = format!("{}/axon", p.base);
    let validator_http = client_from(VALIDATOR_IP);
    let replay = Forgery::Replay.headers(p.miner.ss58(), &p.validator);
    assert_eq!(apply(validator_http.get(&url), &replay).send().await.unwrap().status(), 200);
    let kinds: Vec<(Forgery, forge::Headers)> = Forgery::ALL
        .iter()
        .map(|f| {
            (*f, if *f == Forgery::Replay { replay.clone() } else { f.headers(p.miner.ss58(), &p.validator) })
        })
        .collect();

    let flood_http = client_from([127, 0, 0, 1]);
    let (flooders, per_flooder) = (32, 40);
    let forged: Vec<_> = (0..flooders)
        .map(|i| {
            let (http, url, kinds) = (flood_http.clone(), url.clone(), kinds.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for n in 0..per_flooder {
                    let (kind, headers) = &kinds[(i + n) % kinds.len()];
                    let outcome = match apply(http.get(&url), headers).send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body = r.text().await.unwrap_or_default();
                            Ok((status, body))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    seen.push((*kind, outcome));
                }
                seen
            })
        })
        .collect();

    // The validator keeps asking until the flood is over (and at least 20 times).
    let mut genuine_outcomes = Vec::new();
    while genuine_outcomes.len() < 20 || !forged.iter().all(|t| t.is_finished()) {
        let h = genuine(p.miner.ss58(), &p.validator, "porter");
        let outcome = apply(validator_http.get(&url), &h).send().await.map(|r| r.status().as_u16());
        genuine_outcomes.push(outcome.map_err(|e| e.to_string()));
        if genuine_outcomes.len() > 5000 {
            break;
        }
    }
    let unanswered: Vec<_> = genuine_outcomes.iter().filter(|o| !matches!(o, Ok(200))).collect();
    assert!(unanswered.is_empty(), "the validator went unanswered: {unanswered:?}");

    let mut by_kind = BTreeMap::<Forgery, BTreeMap<u16, usize>>::new();
    let mut bodies_401 = BTreeSet::new();
    let mut total = 0;
    for task in forged {
        for (kind, outcome) in task.await.unwrap() {
            total += 1;
            let (status, body) = outcome.unwrap_or_else(|e| panic!("{kind:?} forgery got no answer: {e}"));
            *by_kind.entry(kind).or_default().entry(status).or_default() += 1;
            if status == 401 {
                bodies_401.insert(body);
            }
        }
    }
    assert_eq!(total, flooders * per_flooder);
    for (kind, statuses) in &by_kind {
        assert!(statuses.keys().all(|s| *s == 401 || *s == 503), "{kind:?}: {statuses:?}");
        // Refused by the cheap checks, before any verification slot is needed.
        if matches!(kind, Forgery::Stranger | Forgery::Replay) {
            assert_eq!(statuses.keys().collect::<Vec<_>>(), [&401], "{kind:?}: {statuses:?}");
        }
    }
    assert_eq!(bodies_401, BTreeSet::from([REFUSAL.to_owned()]));
}

/// Reads until the server closes the connection (EOF or reset); false if it is
/// still open after `deadline`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, deadline: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn one_peer_cannot_take_every_connection_and_silent_connections_are_cut() {
    let p = start(Limits {
        max_connections_per_peer: 4,
        header_timeout: Duration::from_secs(120),
        ..Limits::default()
    })
    .await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    // Four silent connections from one address fill its share.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // The fifth from the same address is closed before a byte is read.
    let mut fifth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(closed_by_server(&mut fifth, Duration::from_secs(60)).await, "the fifth connection stayed open");
    // Another peer is served meanwhile.
    let http = client_from(VALIDATOR_IP);
    let h = genuine(p.miner.ss58(), &p.validator, "porter");
    assert_eq!(apply(http.get(format!("{}/axon", p.base)), &h).send().await.unwrap().status(), 200);
    // When one connection goes, the address gets its slot back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut again = tokio::net::TcpStream::connect(&addr).await.unwrap();
        again.write_all(b"GET /nothing HTTP/1.1\r\nHost: porter\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let _ = again.read_to_end(&mut answer).await;
        if answer.starts_with(b"HTTP/1.1 404") {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Headers that never finish (slowloris) or never start are cut after header_timeout.
    let p = start(Limits { header_timeout: Duration::from_secs(1), ..Limits::default() }).await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /axon HTTP/1.1\r\nHost: porter\r\n").await.unwrap();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(
        closed_by_server(&mut slow, Duration::from_secs(60)).await,
        "a half-sent request kept its connection"
    );
    assert!(closed_by_server(&mut silent, Duration::from_secs(60)).await, "a silent connection was kept");
}
