//! One autoscaler decision over 1,000 servers of 8 GPUs and 2,000 chutes.
//!
//! Ours: both strategies on an in-memory snapshot (what the autoscaler loop runs).
//! The original's design: `optimal_scale_up_server` as one SQL query per chute, on
//! the same fleet loaded into a real Postgres (provision/lab/hosts). Prints medians; the
//! target (< 100 ms for ours) is read from the output, never asserted.
//!
//! `cargo bench -p miner-gepetto --bench autoscale`

use std::time::{Duration, Instant};

use miner_db::{Chute, Db, NewDeployment, NewGpu, NewServer};
use miner_gepetto::strategy::{Heuristic, Multiplier, Strategy};
use miner_gepetto::synth;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (servers, gpus, chutes) = (1000, 8, 2000);
    let (fleet, view) = synth::fleet(servers, gpus, chutes, 42);
    println!(
        "fleet: {servers} servers x {gpus} GPUs, {chutes} chutes, {} deployments",
        fleet.deployments.len()
    );
    for strategy in [&Heuristic as &dyn Strategy, &Multiplier::default()] {
        let mut runs = Vec::new();
        let mut picked = 0;
        for _ in 0..15 {
            let t = Instant::now();
            picked = strategy.autoscale(&fleet, &view, 10.0).len();
            runs.push(t.elapsed());
        }
        println!(
            "ours ({:>10}, in-memory snapshot): median {:>9.2?} ({picked} candidates ranked)",
            strategy.name(),
            median(runs)
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let pg = lab_hosts::Postgres::start()?;
    let url = pg.create_database("bench_autoscale")?;
    rt.block_on(async {
        let db = Db::connect(&url).await?;
        db.migrate().await?;
        let load = Instant::now();
        for c in fleet.chutes.values() {
            db.upsert_chute(&Chute {
                chute_id: c.chute_id.clone(),
                validator: c.validator.clone(),
                image: "u/i:1".into(),
                code: "x".into(),
                filename: "x.py".into(),
                ref_str: "x:c".into(),
                version: c.version.clone(),
                supported_gpus: c.supported_gpus.clone(),
                gpu_count: c.gpu_count as i32,
                chutes_version: c.chutes_version.clone(),
                ..Default::default()
            })
            .await?;
        }
        for s in &fleet.servers {
            db.insert_server(&NewServer {
                server_id: s.server_id.clone(),
                validator: s.validator.clone(),
                name: s.name.clone(),
                ip_address: Some("192.0.2.1".into()),
                labels: serde_json::json!({}),
                gpu_count: s.gpus.len() as i32,
                cpu_per_gpu: 4,
                memory_per_gpu: 80,
                hourly_cost: s.hourly_cost,
            })
            .await?;
            let new: Vec<NewGpu> = s
                .gpus
                .iter()
                .map(|g| NewGpu {
                    gpu_id: g.gpu_id.clone(),
                    device_info: serde_json::json!({}),
                    model_short_ref: g.model.clone(),
                })
                .collect();
            db.insert_gpus(&s.server_id, &s.validator, &new).await?;
            db.verify_server_gpus(&s.server_id).await?;
        }
        for d in &fleet.deployments {
            db.create_deployment(
                &NewDeployment {
                    deployment_id: d.deployment_id.clone(),
                    validator: d.validator.clone(),
                    chute_id: d.chute_id.clone(),
                    server_id: d.server_id.clone(),
                    version: d.version.clone(),
                    job_id: None,
                    config_id: None,
                },
                d.gpu_count,
            )
            .await?;
        }
        println!("(loaded into Postgres in {:.1?})", load.elapsed());
        let mut runs = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            for c in fleet.chutes.values() {
                let _ = db.scale_up_candidates(&c.supported_gpus, c.gpu_count as i32).await?;
            }
            runs.push(t.elapsed());
        }
        let sql = median(runs);
        println!("original design (one SQL query per chute, {chutes} queries): median {sql:>9.2?}");
        let t = Instant::now();
        let rows = db.fleet_rows().await?;
        println!(
            "ours, building the snapshot from Postgres (4 queries): {:.2?} ({} gpus)",
            t.elapsed(),
            rows.gpus.len()
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    Ok(())
}
