//! Event to Job applied: `chute_created` handled by Gepetto until the chute Job is
//! stored in the Kubernetes emulator, one event at a time as the consumer delivers
//! them, on 50 servers of 8 GPUs and 200 chutes (real Postgres, both emulators).
//! Prints median and p99; nothing is asserted.
//!
//! The emulator's share is taken out: the Kubernetes emulator reports how long each
//! write held it (its handling plus the controllers it set off, `write_costs`); the
//! time of the writes made while an event was in flight is subtracted from that
//! event's figure. The validator emulator's time (the chute fetch and the launch
//! config) stays in, so "Gepetto's share" is an upper bound.
//!
//! `cargo bench -p miner-gepetto --bench event_to_job` (add `--profile dev` to reuse
//! the test build; the figures are then those of an unoptimized build).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let w = world(Shape { servers: 50, gpus: 8, ..Shape::default() }).await;
        let chutes = 200;
        for i in 0..chutes {
            w.chute(&format!("c{i}"), "v1", 1);
        }
        let mut took = Vec::new();
        let mut handler = Vec::new();
        let mut net = Vec::new();
        for i in 0..chutes {
            let id = format!("c{i}");
            let event = w.created(&id, "v1", false);
            let costs_before = w.kube.write_costs().len();
            let t = Instant::now();
            w.gepetto.handle(&event).await.unwrap();
            handler.push(t.elapsed());
            let deps = w.db.deployments_where(miner_db::DeploymentKey::Chute, &id).await.unwrap();
            let name = format!("chute-{}", deps[0].deployment_id);
            while w.kube.get("batch/v1", "Job", Some(NS), &name).unwrap().is_none() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let elapsed = t.elapsed();
            took.push(elapsed);
            let emulator: Duration = w.kube.write_costs().iter().skip(costs_before).sum();
            net.push(elapsed.saturating_sub(emulator));
        }
        w.gepetto.wait_idle().await;
        let pct = |v: &mut Vec<Duration>, p: f64| {
            v.sort();
            v[((v.len() as f64 - 1.0) * p).round() as usize]
        };
        println!("event to Job applied, 50 servers x 8 GPUs, {chutes} chute_created:");
        println!(
            "  median {:.2?}  p99 {:.2?}  (of which the acked handler: median {:.2?}, p99 {:.2?})",
            pct(&mut took, 0.5),
            pct(&mut took, 0.99),
            pct(&mut handler, 0.5),
            pct(&mut handler, 0.99)
        );
        println!(
            "  Gepetto's share (the Kubernetes emulator's write time taken out): median {:.2?}  p99 {:.2?}",
            pct(&mut net, 0.5),
            pct(&mut net, 0.99)
        );
    });
}
