//! Event bus throughput against a real Redis (lab-hosts: AOF with fsync on every
//! write, the durability the miner wants). Prints figures; asserts nothing about speed.
//!
//! `cargo bench -p miner-events --bench throughput [-- N]`
#![allow(clippy::unwrap_used, clippy::expect_used)] // bench binary: panics are the failure report

use std::time::{Duration, Instant};

use lab_hosts::Redis;
use miner_events::{Consumer, Delivery, MinerEvent, Producer, StreamConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5_000);
    let redis = Redis::start().unwrap();
    let url = redis.url();
    let cfg = StreamConfig { block: Duration::from_millis(200), ..StreamConfig::default() };
    let producer = Producer::connect(&url, cfg.clone()).unwrap();
    let event = |i: usize| {
        MinerEvent::new(
            "instance_activated",
            json!({"chute_id": format!("c-{i}"), "miner_hotkey": "5M", "instance_id": "i", "config_id": "k", "validator": "5V"}),
        )
    };

    let t = Instant::now();
    for i in 0..n {
        producer.publish(&event(i)).await.unwrap();
    }
    producer.flush().await.unwrap();
    let append = t.elapsed();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let consumer = Consumer::new(&url, "gepetto", "bench", cfg).unwrap();
    let s = stop.clone();
    let t = Instant::now();
    let task = tokio::spawn(async move {
        consumer
            .run(
                move |d: Delivery| {
                    let tx = tx.clone();
                    async move { tx.send(d.id).map_err(|e| e.to_string()) }
                },
                s,
            )
            .await
    });
    for _ in 0..n {
        rx.recv().await.unwrap();
    }
    let consume = t.elapsed();
    stop.cancel();
    task.await.unwrap();

    let t = Instant::now();
    producer.publish_confirmed(&event(0)).await.unwrap();
    let one = t.elapsed();
    println!("events: {n}");
    println!(
        "append (queued publish + flush): {:.0} events/s ({:.3} ms each)",
        n as f64 / append.as_secs_f64(),
        append.as_secs_f64() * 1e3 / n as f64
    );
    println!("consume (XREADGROUP + handler + XACK): {:.0} events/s", n as f64 / consume.as_secs_f64());
    println!("publish_confirmed latency, one event: {:.3} ms", one.as_secs_f64() * 1e3);
}
