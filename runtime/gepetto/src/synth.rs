//! Synthetic fleets for benchmarks, tests and simulators: deterministic in `seed`.

use std::collections::HashMap;

use miner_validator::rest::RemoteMetrics;
use rand::{Rng, SeedableRng};

use crate::snapshot::{
    ChuteSnap, DeploymentSnap, FleetSnapshot, GpuSnap, RemoteChuteInfo, ServerSnap, ValidatorView,
};

pub const MODELS: [&str; 4] = ["h100", "a100", "l40s", "h200"];

/// `servers` servers of `gpus` GPUs (models spread over [`MODELS`], prices by model),
/// `chutes` chutes asking 1, 2, 4 or 8 GPUs of one or two models, about a third of
/// the GPUs held by deployments, metrics and multipliers for every chute.
pub fn fleet(servers: usize, gpus: usize, chutes: usize, seed: u64) -> (FleetSnapshot, ValidatorView) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut fleet = FleetSnapshot::default();
    let mut view = ValidatorView::default();
    for c in 0..chutes {
        let first = MODELS[rng.gen_range(0..MODELS.len())];
        let mut supported = vec![first.to_owned()];
        if rng.gen_bool(0.5) {
            let second = MODELS[rng.gen_range(0..MODELS.len())];
            if second != first {
                supported.push(second.to_owned());
            }
        }
        let chute_id = format!("chute-{c:05}");
        fleet.chutes.insert(
            chute_id.clone(),
            ChuteSnap {
                chute_id: chute_id.clone(),
                validator: "5Validator".into(),
                version: "v1".into(),
                supported_gpus: supported,
                gpu_count: [1, 1, 2, 4, 8][rng.gen_range(0..5)].min(gpus),
                banned: false,
                preemptible: true,
                chutes_version: Some("0.3.40".into()),
            },
        );
        view.chutes.insert(
            chute_id.clone(),
            RemoteChuteInfo {
                version: "v1".into(),
                has_cords: true,
                effective_compute_multiplier: Some(rng.gen_range(0.5..4.0)),
            },
        );
        view.metrics.insert(
            chute_id.clone(),
            RemoteMetrics {
                chute_id,
                total_invocations: rng.gen_range(0.0..10_000.0),
                total_compute_time: rng.gen_range(0.0..50_000.0),
                compute_multiplier: Some(rng.gen_range(0.5..4.0)),
                rate_limit_count: if rng.gen_bool(0.2) { rng.gen_range(1.0..500.0) } else { 0.0 },
                instance_count: rng.gen_range(0..8),
                total_usage_usd: Some(rng.gen_range(0.0..100.0)),
                ..Default::default()
            },
        );
    }
    let chute_ids: Vec<String> = fleet.chutes.keys().cloned().collect();
    let mut n = 0usize;
    for s in 0..servers {
        let model = MODELS[s % MODELS.len()];
        let cost = HashMap::from([("h100", 2.0), ("a100", 1.2), ("l40s", 0.8), ("h200", 3.0)])[model];
        let server_id = format!("server-{s:05}");
        let mut gpu_list: Vec<GpuSnap> = (0..gpus)
            .map(|g| GpuSnap {
                gpu_id: format!("{server_id}-gpu-{g}"),
                model: model.into(),
                verified: true,
                deployment_id: None,
            })
            .collect();
        // a third of the GPUs busy with single-GPU deployments
        for g in gpu_list.iter_mut().take(gpus / 3) {
            n += 1;
            let deployment_id = format!("dep-{n:06}");
            g.deployment_id = Some(deployment_id.clone());
            let chute_id = chute_ids[rng.gen_range(0..chute_ids.len().max(1))].clone();
            fleet.deployments.push(DeploymentSnap {
                deployment_id,
                chute_id,
                version: "v1".into(),
                validator: "5Validator".into(),
                server_id: server_id.clone(),
                gpu_count: 1,
                job_id: None,
                instance_id: Some(format!("inst-{n:06}")),
                active: true,
                stub: false,
                verified_at: None,
                activated_at: None,
                created_at: None,
                preemptible: true,
            });
        }
        fleet.servers.push(ServerSnap {
            server_id: server_id.clone(),
            name: server_id,
            validator: "5Validator".into(),
            hourly_cost: cost,
            locked: false,
            gpus: gpu_list,
            disk_available_gb: Some(rng.gen_range(0.0..2000.0)),
        });
    }
    (fleet, view)
}
