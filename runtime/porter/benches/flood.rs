//! Porter under a flood: `cargo bench -p miner-porter --bench flood`.
//! Prints the rate of forged requests refused, the share shed with 503, and the
//! latency of genuine requests made while the flood runs. Figures, not asserts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use chutes_protocol::Hotkey;
use chutes_protocol::auth::{Payload, management_message, now_unix};
use miner_porter::PorterConfig;

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

async fn run() {
    let miner = Hotkey::from_seed(&[1; 32], "bench").unwrap();
    let validator = Hotkey::from_seed(&[2; 32], "bench").unwrap();
    let cfg = PorterConfig {
        real_host: "10.0.0.1".into(),
        real_port: 32000,
        miner_ss58: miner.ss58().into(),
        whitelist: vec![validator.ss58().into()],
        max_in_flight: 64,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/axon", listener.local_addr().unwrap());
    tokio::spawn(async move { miner_porter::serve(listener, &cfg, std::future::pending()).await });
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();

    let flooders = 64;
    let duration = Duration::from_secs(5);
    let stop = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..flooders {
        let (http, url, m, v) =
            (http.clone(), url.clone(), miner.ss58().to_owned(), validator.ss58().to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut refused, mut shed, mut other) = (0u64, 0u64, 0u64);
            while Instant::now() < stop {
                let r = http
                    .get(&url)
                    .header("X-Chutes-Miner", &m)
                    .header("X-Chutes-Validator", &v)
                    .header("X-Chutes-Nonce", now_unix().to_string())
                    .header("X-Chutes-Signature", "ab".repeat(64))
                    .send()
                    .await;
                match r.map(|r| r.status().as_u16()) {
                    Ok(401) => refused += 1,
                    Ok(503) => shed += 1,
                    _ => other += 1,
                }
            }
            (refused, shed, other)
        }));
    }
    let mut latencies = Vec::new();
    let mut ok = 0;
    while Instant::now() < stop {
        let nonce = now_unix();
        let sig = validator.sign(
            management_message(miner.ss58(), validator.ss58(), nonce, Payload::Purpose("porter")).as_bytes(),
        );
        let start = Instant::now();
        let status = http
            .get(&url)
            .header("X-Chutes-Miner", miner.ss58())
            .header("X-Chutes-Validator", validator.ss58())
            .header("X-Chutes-Nonce", nonce.to_string())
            .header("X-Chutes-Signature", sig)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        latencies.push(start.elapsed());
        if status == 200 {
            ok += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut refused, mut shed, mut other) = (0, 0, 0);
    for t in tasks {
        let (r, s, o) = t.await.unwrap();
        refused += r;
        shed += s;
        other += o;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let secs = duration.as_secs_f64();
    println!("porter flood, {flooders} concurrent forgers for {secs:.0} s, max_in_flight 64");
    println!("  forged requests refused (401): {refused} ({:.0}/s)", refused as f64 / secs);
    println!("  shed with 503:                 {shed} ({:.0}/s)", shed as f64 / secs);
    println!("  other outcomes:                {other}");
    println!(
        "  genuine requests: {ok}/{} answered 200; latency p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().unwrap()
    );
}
