//! The successor's strategy (reference 20.7): the validator's
//! `effective_compute_multiplier` (bounty age, urgency, TEE and private bonuses in one
//! number) per unit of hourly cost decides what to scale; preemption only removes
//! instances the validator pays less for than the newcomer, never a chute's last
//! instance, never private (non-preemptible) or freshly activated ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Duration, Utc};

use super::{
    AutoscaleMode, JobDecision, JobOffer, Preemption, ScaleUp, Strategy, fitting_servers, preemption_servers,
    push_candidate, ranked, screen_job,
};
use crate::snapshot::{ChuteSnap, FleetSnapshot, LastInvocations, ValidatorView};

/// Best-fit servers considered per placement; one is picked in turn so a single
/// broken server cannot swallow every deployment (`SCALE_UP_CANDIDATE_POOL = 2`).
const CANDIDATE_POOL: usize = 2;
/// A victim must have been active this long (62 minutes in the successor).
const MIN_ACTIVE: i64 = 62;

/// A new instance expected to be busier than this share of the time is worth its
/// GPUs; below it, the GPUs are left for a chute with demand (the validator scores
/// utilisation and scales idle chutes down, reference 21 on chutes-api #22).
const MIN_EXPECTED_UTILISATION: f64 = 0.3;

/// The share of time one more instance of the chute would be busy, from the last
/// hour's metrics: its demand (compute served plus rate-limited invocations at the
/// mean compute time, in instances' worth) over the instances there would be. A
/// chute no miner serves (a bounty) counts as fully busy; one with instances but no
/// metrics has had no traffic and counts as idle.
pub(crate) fn expected_utilisation(chute_id: &str, view: &ValidatorView) -> f64 {
    let instances = view.instance_count(chute_id).unwrap_or(0);
    let Some(m) = view.metrics.get(chute_id) else {
        return if instances == 0 { 1.0 } else { 0.0 };
    };
    let per_invocation =
        if m.total_invocations > 0.0 { m.total_compute_time / m.total_invocations } else { 0.0 };
    let demand = (m.total_compute_time + m.rate_limit_count * per_invocation) / 3600.0;
    if instances == 0 && demand <= 0.0 {
        return 1.0;
    }
    (demand / (instances + 1) as f64).min(1.0)
}

#[derive(Debug, Default)]
pub struct Multiplier {
    /// Rotates through the candidate pool (the successor picked at random; a
    /// rotation spreads the same way and keeps decisions reproducible).
    turn: AtomicUsize,
}

impl Multiplier {
    fn has_pending(chute_id: &str, fleet: &FleetSnapshot) -> bool {
        fleet.deployments_of(chute_id).any(|d| d.job_id.is_none() && d.activated_at.is_none() && !d.active)
    }
}

impl Strategy for Multiplier {
    fn name(&self) -> &'static str {
        "multiplier"
    }

    fn scale_up_server(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, disk_gb: f64) -> Option<String> {
        let fits = fitting_servers(chute, fleet, disk_gb);
        let pool = fits.len().min(CANDIDATE_POOL);
        if pool == 0 {
            return None;
        }
        let pick = self.turn.fetch_add(1, Ordering::Relaxed) % pool;
        Some(fits[pick].0.server_id.clone())
    }

    fn autoscale(&self, fleet: &FleetSnapshot, view: &ValidatorView, disk_gb: f64) -> Vec<ScaleUp> {
        let mut placements = super::PlacementCache::new(fleet, disk_gb);
        let pending: std::collections::HashSet<&str> = fleet
            .deployments
            .iter()
            .filter(|d| d.job_id.is_none() && d.activated_at.is_none() && !d.active)
            .map(|d| d.chute_id.as_str())
            .collect();
        let mut out = Vec::new();
        for (chute_id, remote) in &view.chutes {
            let Some(chute) = fleet.chutes.get(chute_id) else { continue };
            if chute.version != remote.version
                || !remote.has_cords
                || view.capped.contains(chute_id)
                || pending.contains(chute_id.as_str())
            {
                continue;
            }
            let Some(multiplier) = remote.effective_compute_multiplier else { continue };
            let utilisation = expected_utilisation(chute_id, view);
            if utilisation < MIN_EXPECTED_UTILISATION {
                continue; // it would sit idle on GPUs a busier chute can use
            }
            push_candidate(&mut out, &mut placements, chute, multiplier * utilisation);
        }
        ranked(out)
    }

    fn autoscale_mode(&self) -> AutoscaleMode {
        AutoscaleMode::FirstThatDeploys
    }

    fn scale_down(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, now: DateTime<Utc>) -> Option<String> {
        if !chute.preemptible {
            return None; // private chutes are never scaled down
        }
        super::heuristic::scale_down_by_cost(chute, fleet, now)
    }

    fn accept_job(
        &self,
        job: &JobOffer,
        miner: &str,
        chute: &ChuteSnap,
        fleet: &FleetSnapshot,
    ) -> JobDecision {
        if let Some(refusal) = screen_job(job, miner, chute) {
            return refusal;
        }
        match self.scale_up_server(chute, fleet, job.disk_gb) {
            Some(server_id) => JobDecision::Deploy { server_id },
            None => JobDecision::Preempt,
        }
    }

    fn preempt(
        &self,
        chute: &ChuteSnap,
        fleet: &FleetSnapshot,
        view: &ValidatorView,
        _last_invocations: &LastInvocations,
        now: DateTime<Utc>,
        disk_gb: f64,
    ) -> Option<Preemption> {
        if chute.banned || chute.gpu_count == 0 || Self::has_pending(&chute.chute_id, fleet) {
            return None;
        }
        let newcomer = view.chutes.get(&chute.chute_id).and_then(|c| c.effective_compute_multiplier)?;
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        let servers = preemption_servers(fleet, &chute.supported_gpus, chute.gpu_count, disk_gb);
        for server in servers {
            let free = server.free_gpus(&chute.supported_gpus);
            if free >= chute.gpu_count {
                return Some(Preemption { server_id: server.server_id.clone(), victims: Vec::new() });
            }
            let mut candidates: Vec<(f64, &crate::snapshot::DeploymentSnap)> = fleet
                .deployments
                .iter()
                .filter(|d| d.server_id == server.server_id && d.job_id.is_none() && d.preemptible)
                .filter(|d| d.activated_at.is_some_and(|a| now - a >= Duration::minutes(MIN_ACTIVE)))
                .filter_map(|d| {
                    // Unknown multiplier: the victim's worth is unknown, keep it.
                    let m = view.instance_multiplier(&d.chute_id, d.instance_id.as_deref()?)?;
                    (m < newcomer).then_some((m, d))
                })
                .collect();
            candidates
                .sort_by(|(a, x), (b, y)| a.total_cmp(b).then_with(|| x.deployment_id.cmp(&y.deployment_id)));
            let mut freed = free;
            let mut victims = Vec::new();
            for (_, d) in candidates {
                let Some(global) = view.instance_count(&d.chute_id) else { continue };
                let left = counts.entry(d.chute_id.clone()).or_insert(global);
                if *left <= 1 {
                    continue; // never the last instance of a chute anywhere
                }
                *left -= 1;
                victims.push(d.deployment_id.clone());
                freed += d.gpu_count;
                if freed >= chute.gpu_count {
                    return Some(Preemption { server_id: server.server_id.clone(), victims });
                }
            }
        }
        None
    }
}
