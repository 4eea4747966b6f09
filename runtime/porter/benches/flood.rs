//! Porter under a flood: `cargo bench -p miner-porter --bench flood`.
//!
//! For each way of forging a request (tests/forge), 64 forgers on 127.0.0.1 send it
//! as fast as porter answers for a few seconds, while a validator on 127.0.0.2 asks
//! for the address one request after another. Prints, per forgery kind, the forged
//! requests refused per second (401, and 503 when no verification slot was free)
//! and the validator's latency percentiles, over at least 1,000 genuine samples in
//! all. Figures, not asserts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/forge/mod.rs"]
mod forge;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use forge::{Forgery, apply, genuine, key};
use miner_porter::{Limits, PorterConfig};

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

fn client(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(ip))
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn run() {
    let miner = key(1);
    let validator = key(2);
    let limits = Limits::default();
    let cfg = PorterConfig {
        real_host: "10.0.0.1".into(),
        real_port: 32000,
        miner_ss58: miner.ss58().into(),
        whitelist: vec![validator.ss58().into()],
        limits: limits.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/axon", listener.local_addr().unwrap());
    tokio::spawn(async move { miner_porter::serve(listener, &cfg, std::future::pending()).await });
    let flood_http = client([127, 0, 0, 1]);
    let validator_http = client([127, 0, 0, 2]);

    let flooders = 64;
    let phase = Duration::from_secs(
        std::env::var("PORTER_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4),
    );
    println!(
        "porter flood: {flooders} forgers on 127.0.0.1, one validator on 127.0.0.2, at least {} s and 200 genuine samples per kind; \
         limits: {} verifications ({} per peer), {} connections per peer",
        phase.as_secs(),
        limits.max_in_flight,
        limits.max_in_flight_per_peer,
        limits.max_connections_per_peer
    );

    // Baseline: the validator alone.
    let mut quiet = Vec::new();
    for _ in 0..300 {
        let h = genuine(miner.ss58(), &validator, "porter");
        let start = Instant::now();
        let ok = apply(validator_http.get(&url), &h).send().await.map(|r| r.status() == 200).unwrap_or(false);
        quiet.push(start.elapsed());
        assert!(ok);
    }
    quiet.sort();
    println!(
        "  no flood:      genuine p50 {:>9.2?}  p99 {:>9.2?}  ({} samples)",
        pct(&quiet, 0.5),
        pct(&quiet, 0.99),
        quiet.len()
    );

    let mut all_genuine = Vec::new();
    let mut genuine_failed = 0;
    for kind in Forgery::ALL {
        let headers = kind.headers(miner.ss58(), &validator);
        if kind == Forgery::Replay {
            let first = apply(validator_http.get(&url), &headers).send().await.unwrap().status();
            assert_eq!(first, 200, "the request to replay must be accepted once");
        }
        // Each kind floods for `phase` and until the validator has 200 samples, so
        // the whole run has at least 1,000.
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..flooders)
            .map(|_| {
                let (http, url, headers, stop) =
                    (flood_http.clone(), url.clone(), headers.clone(), stop.clone());
                tokio::spawn(async move {
                    let (mut refused, mut shed, mut other) = (0u64, 0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        match apply(http.get(&url), &headers).send().await.map(|r| r.status().as_u16()) {
                            Ok(401) => refused += 1,
                            Ok(503) => shed += 1,
                            _ => other += 1,
                        }
                    }
                    (refused, shed, other)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        while started.elapsed() < phase || latencies.len() < 200 {
            let h = genuine(miner.ss58(), &validator, "porter");
            let start = Instant::now();
            let status = apply(validator_http.get(&url), &h).send().await.map(|r| r.status().as_u16());
            latencies.push(start.elapsed());
            if !matches!(status, Ok(200)) {
                genuine_failed += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        let (mut refused, mut shed, mut other) = (0, 0, 0);
        for t in tasks {
            let (r, s, o) = t.await.unwrap();
            refused += r;
            shed += s;
            other += o;
        }
        latencies.sort();
        println!(
            "  {:<13} refused {:>7.0}/s (401 {:>7.0}/s, 503 {:>6.0}/s, other {other}); \
             genuine p50 {:>9.2?}  p99 {:>9.2?}  ({} samples)",
            format!("{kind:?}:"),
            (refused + shed) as f64 / secs,
            refused as f64 / secs,
            shed as f64 / secs,
            pct(&latencies, 0.5),
            pct(&latencies, 0.99),
            latencies.len()
        );
        all_genuine.extend(latencies);
    }
    all_genuine.sort();
    println!(
        "  all floods:    genuine p50 {:>9.2?}  p99 {:>9.2?}  max {:?}; {} samples, {genuine_failed} not answered 200",
        pct(&all_genuine, 0.5),
        pct(&all_genuine, 0.99),
        all_genuine.last().unwrap(),
        all_genuine.len()
    );
}
