//! The trace generator: a seeded, documented model of a validator's week and a
//! miner's fleet. Every knob is a field of [`GenParams`] (README: "Generator").

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::trace::{Chute, FORMAT, Header, Record, Server, Trace, ValidatorModel};

/// A GPU type of the market: what the miner pays and what the validator pays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuClass {
    pub model: String,
    pub gpus_per_server: usize,
    /// Miner's cost per GPU-hour.
    pub hourly_cost: f64,
    /// The validator's compute multiplier of one GPU of this type (a chute pays the
    /// multiplier of the lowest type it supports, times its GPU count).
    pub weight: f64,
    /// Share of the miner's servers of this type.
    pub share: f64,
}

fn class(model: &str, gpus: usize, cost: f64, weight: f64, share: f64) -> GpuClass {
    GpuClass { model: model.into(), gpus_per_server: gpus, hourly_cost: cost, weight, share }
}

/// Generator knobs; [`GenParams::default`] is the documented baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenParams {
    pub seed: u64,
    pub days: f64,
    pub servers: usize,
    /// Chutes listed by the validator; 0 means three per server.
    pub chutes: usize,
    /// GPU types, cheapest per unit of compute multiplier last is not required.
    pub gpu_classes: Vec<GpuClass>,
    /// Mean demand other miners leave unserved, in GPUs, over the fleet's GPUs.
    pub demand_to_fleet: f64,
    /// Demand is redrawn every this many seconds.
    pub demand_step_s: u64,
    /// Standard deviation of the log-demand innovation per step (AR(1), phi 0.9).
    pub demand_volatility: f64,
    /// Daily cycle: load × (1 + amplitude × sin).
    pub diurnal_amplitude: f64,
    /// Pareto shape of chute popularity (smaller: a few chutes take most demand).
    pub popularity_shape: f64,
    /// Share of chutes that appear during the period (with a bounty) instead of at 0.
    pub late_chute_share: f64,
    /// Per chute, other miners serve a fraction of its demand drawn from this range...
    pub others_cover: [f64; 2],
    /// ...following it with a lag drawn from this range (seconds).
    pub others_lag_s: [u64; 2],
    /// Per chute-day chance that every other miner leaves a chute for a while (a
    /// bounty appears).
    pub gaps_per_chute_day: f64,
    pub gap_s: [u64; 2],
    pub job_only_share: f64,
    pub private_share: f64,
    /// Job offers per server-hour.
    pub jobs_per_server_hour: f64,
    pub job_duration_s: [u64; 2],
    /// A job's multiplier over its chute's.
    pub job_bonus: [f64; 2],
    pub job_excluded_probability: f64,
    pub updates_per_chute_day: f64,
    pub update_s: [u64; 2],
    pub node_failures_per_server_day: f64,
    pub node_down_s: [u64; 2],
    pub bandwidth_gbps: [f64; 2],
    pub disk_gb: [f64; 2],
    pub validator: ValidatorModel,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            seed: 1,
            days: 7.0,
            servers: 100,
            chutes: 0,
            gpu_classes: vec![
                class("l40s", 4, 0.8, 0.35, 0.15),
                class("a100", 8, 1.3, 0.6, 0.25),
                class("h100", 8, 2.2, 1.0, 0.40),
                class("h200", 8, 3.0, 1.3, 0.15),
                class("b200", 8, 4.5, 2.0, 0.05),
            ],
            demand_to_fleet: 1.0,
            demand_step_s: 900,
            demand_volatility: 0.15,
            diurnal_amplitude: 0.3,
            popularity_shape: 1.2,
            late_chute_share: 0.2,
            others_cover: [0.3, 0.9],
            others_lag_s: [1800, 7200],
            gaps_per_chute_day: 0.1,
            gap_s: [900, 7200],
            job_only_share: 0.1,
            private_share: 0.1,
            jobs_per_server_hour: 0.05,
            job_duration_s: [600, 7200],
            job_bonus: [1.0, 3.0],
            job_excluded_probability: 0.05,
            updates_per_chute_day: 0.05,
            update_s: [600, 3600],
            node_failures_per_server_day: 0.02,
            node_down_s: [600, 21600],
            bandwidth_gbps: [1.0, 10.0],
            disk_gb: [1500.0, 4000.0],
            validator: ValidatorModel::default(),
        }
    }
}

/// Poisson arrival times with `rate` per second over `[0, end)`.
fn arrivals(rng: &mut Rng, rate: f64, end: u64) -> Vec<u64> {
    let mut out = Vec::new();
    if rate <= 0.0 {
        return out;
    }
    let mut t = rng.exp(1.0 / rate);
    while t < end as f64 {
        out.push(t as u64);
        t += rng.exp(1.0 / rate);
    }
    out
}

fn range_u(rng: &mut Rng, r: [u64; 2]) -> u64 {
    rng.int(r[0], r[1].max(r[0]))
}

/// Generates a trace. Same parameters, same trace, byte for byte.
pub fn generate(p: &GenParams) -> Trace {
    let mut rng = Rng::new(p.seed);
    let duration_s = (p.days.max(0.0) * 86_400.0) as u64;
    let step = p.demand_step_s.max(60);
    let steps = duration_s.div_ceil(step) as usize;

    // The fleet: servers by class share, largest remainders first.
    let mut classes = p.gpu_classes.clone();
    classes.retain(|c| c.gpus_per_server > 0);
    let total_share: f64 = classes.iter().map(|c| c.share.max(0.0)).sum::<f64>().max(1e-9);
    let mut servers = Vec::new();
    for i in 0..p.servers {
        // deterministic spread: the class whose cumulative share covers this slot
        let x = (i as f64 + 0.5) / p.servers.max(1) as f64 * total_share;
        let mut acc = 0.0;
        let mut chosen = classes.last();
        for c in &classes {
            acc += c.share.max(0.0);
            if x < acc {
                chosen = Some(c);
                break;
            }
        }
        let Some(c) = chosen else { break };
        servers.push(Server {
            server_id: format!("server-{i:04}"),
            gpu_model: c.model.clone(),
            gpus: c.gpus_per_server,
            hourly_cost: c.hourly_cost,
            disk_gb: rng.range(p.disk_gb[0], p.disk_gb[1]).round(),
            bandwidth_gbps: (rng.range(p.bandwidth_gbps[0], p.bandwidth_gbps[1]) * 10.0).round() / 10.0,
            added_s: 0,
        });
    }

    // Chutes: requirements, sizes, popularity.
    let mut by_weight = classes.clone();
    by_weight.sort_by(|a, b| a.weight.total_cmp(&b.weight).then_with(|| a.model.cmp(&b.model)));
    let n_chutes = if p.chutes == 0 { p.servers * 3 } else { p.chutes };
    let mut chutes = Vec::new();
    let mut popularity = Vec::new();
    let mut cover = Vec::new();
    for i in 0..n_chutes {
        let lowest = rng.int(0, by_weight.len().saturating_sub(1) as u64) as usize;
        let Some(base) = by_weight.get(lowest) else { break };
        let mut supported = vec![base.model.clone()];
        for higher in by_weight.iter().skip(lowest + 1) {
            if rng.chance(0.6) {
                supported.push(higher.model.clone());
            }
        }
        let max_gpus = base.gpus_per_server.max(1);
        let gpu_count = (*rng.pick(&[1usize, 1, 1, 2, 4, 8]).unwrap_or(&1)).min(max_gpus);
        let late = rng.chance(p.late_chute_share);
        let created_s = if late { rng.int(0, duration_s * 9 / 10) } else { 0 };
        chutes.push(Chute {
            chute_id: format!("chute-{i:04}"),
            supported_gpus: supported,
            gpu_count,
            image_gb: rng.range(5.0, 25.0).round(),
            model_gb: (gpu_count as f64 * base.weight * rng.range(10.0, 60.0)).round(),
            compute_multiplier: ((gpu_count as f64 * base.weight * rng.range(0.8, 1.2)) * 1000.0).round()
                / 1000.0,
            invocation_s: rng.range(0.5, 30.0),
            preemptible: !rng.chance(p.private_share),
            job_only: rng.chance(p.job_only_share),
            created_s,
        });
        // Pareto popularity (x_m = 1), heavier tail with a smaller shape
        popularity.push((1.0 - rng.unit()).powf(-1.0 / p.popularity_shape.max(0.1)));
        cover.push(rng.range(p.others_cover[0], p.others_cover[1]));
    }
    // Scale loads per GPU class: the unserved demand of the chutes whose lowest type
    // is a class is `demand_to_fleet` × the fleet's GPUs of that class (a miner buys
    // the GPUs the market asks for; README "Generator").
    let mut lowest_of = Vec::new();
    for c in &chutes {
        lowest_of
            .push(by_weight.iter().position(|k| c.supported_gpus.first() == Some(&k.model)).unwrap_or(0));
    }
    let mut scale = vec![0.0; by_weight.len()];
    for (k, cls) in by_weight.iter().enumerate() {
        let fleet_k: usize = servers.iter().filter(|s| s.gpu_model == cls.model).map(|s| s.gpus).sum();
        let unserved: f64 = chutes
            .iter()
            .enumerate()
            .filter(|(i, c)| !c.job_only && lowest_of[*i] == k)
            .map(|(i, c)| c.gpu_count as f64 * popularity[i] * (1.0 - cover[i]))
            .sum();
        if unserved > 0.0 {
            scale[k] = p.demand_to_fleet * fleet_k as f64 / unserved;
        }
    }

    let mut events: Vec<Record> = Vec::new();
    for (ci, c) in chutes.iter().enumerate() {
        if c.job_only {
            continue;
        }
        let mean = popularity[ci] * scale[lowest_of[ci]];
        let phase = rng.range(0.0, std::f64::consts::TAU);
        let lag_steps = (range_u(&mut rng, p.others_lag_s) / step) as usize;
        let mut x = 0.0;
        let mut loads = Vec::with_capacity(steps);
        for k in 0..steps {
            x = 0.9 * x + p.demand_volatility * rng.normal();
            let t = (k as u64 * step) as f64;
            let daily = 1.0 + p.diurnal_amplitude * (std::f64::consts::TAU * t / 86_400.0 + phase).sin();
            loads.push((mean * daily.max(0.0) * x.exp() * 1000.0).round() / 1000.0);
        }
        // gaps: every other miner leaves for a while (a bounty goes up)
        let mut gaps: Vec<(u64, u64)> = arrivals(&mut rng, p.gaps_per_chute_day / 86_400.0, duration_s)
            .into_iter()
            .map(|t| {
                let t = t / step * step;
                (t, t + range_u(&mut rng, p.gap_s))
            })
            .collect();
        if c.created_s > 0 {
            gaps.push((c.created_s, c.created_s + range_u(&mut rng, p.others_lag_s)));
        }
        let mut last_others = None;
        for (k, load) in loads.iter().enumerate() {
            let t = k as u64 * step;
            if t < c.created_s / step * step {
                continue;
            }
            let t = t.max(c.created_s);
            events.push(Record::Demand { t, chute_id: c.chute_id.clone(), load: *load });
            let lagged = loads[k.saturating_sub(lag_steps)];
            let in_gap = gaps.iter().any(|(a, b)| t >= *a && t < *b);
            let others = if in_gap { 0 } else { (lagged * cover[ci]).round() as u32 };
            if last_others != Some(others) {
                events.push(Record::Others {
                    t,
                    chute_id: c.chute_id.clone(),
                    instances: others,
                    compute_multiplier: c.compute_multiplier,
                });
                last_others = Some(others);
            }
        }
        for (a, _) in &gaps {
            if *a < duration_s {
                let bounty = (c.compute_multiplier * 3600.0 * rng.range(0.5, 2.0)).round();
                events.push(Record::Bounty { t: *a, chute_id: c.chute_id.clone(), bounty });
            }
        }
        for t in arrivals(&mut rng, p.updates_per_chute_day / 86_400.0, duration_s) {
            if t >= c.created_s {
                let until = t + range_u(&mut rng, p.update_s);
                events.push(Record::Updating { t, chute_id: c.chute_id.clone(), until });
            }
        }
    }

    // Jobs: half on job-only chutes (when there are any), half on any chute.
    let job_only: Vec<usize> = (0..chutes.len()).filter(|i| chutes[*i].job_only).collect();
    let all: Vec<usize> = (0..chutes.len()).collect();
    let job_rate = p.jobs_per_server_hour * p.servers as f64 / 3600.0;
    for (n, t) in arrivals(&mut rng, job_rate, duration_s).into_iter().enumerate() {
        let pool = if !job_only.is_empty() && rng.chance(0.5) { &job_only } else { &all };
        let Some(&ci) = rng.pick(pool) else { continue };
        let c = &chutes[ci];
        if t < c.created_s {
            continue;
        }
        events.push(Record::Job {
            t,
            job_id: format!("job-{n:06}"),
            chute_id: c.chute_id.clone(),
            duration_s: range_u(&mut rng, p.job_duration_s),
            compute_multiplier: (c.compute_multiplier * rng.range(p.job_bonus[0], p.job_bonus[1]) * 1000.0)
                .round()
                / 1000.0,
            disk_gb: c.disk_gb().round(),
            excluded: rng.chance(p.job_excluded_probability),
        });
    }

    for s in &servers {
        for t in arrivals(&mut rng, p.node_failures_per_server_day / 86_400.0, duration_s) {
            events.push(Record::NodeFailure {
                t,
                server_id: s.server_id.clone(),
                down_s: range_u(&mut rng, p.node_down_s),
            });
        }
    }
    events.sort_by_key(Record::t);

    Trace {
        header: Header {
            format: FORMAT,
            seed: p.seed,
            source: "generated".into(),
            start_unix: 1_767_225_600, // 2026-01-01T00:00:00Z
            duration_s,
            miner: "5SimulatedMinerHotkey".into(),
            validator: p.validator.clone(),
        },
        servers,
        chutes,
        events,
    }
}
