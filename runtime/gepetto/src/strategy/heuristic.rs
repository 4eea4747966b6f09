//! The original miner's strategy (reference 11.3-11.7), with the bugs of section 19
//! fixed: exclusions read `exclude`, a zero hourly cost does not divide by zero, a
//! preempting job keeps its job id (the controller passes it), several deployments
//! of a bountied chute are fine, and an unknown last invocation (Prometheus down)
//! protects a victim instead of exposing it.

use chrono::{DateTime, Duration, Utc};

use super::{
    AutoscaleMode, JobDecision, JobOffer, PlacementCache, Preemption, ScaleUp, Strategy, fitting_servers,
    preemption_servers, push_candidate, ranked, screen_job,
};
use crate::snapshot::{ChuteSnap, FleetSnapshot, LastInvocations, ValidatorView};

/// The original's heuristic. Stateless.
#[derive(Debug, Default, Clone)]
pub struct Heuristic;

/// GPU types a job is never preempted for (original's strategy hook, kept).
const NEVER_PREEMPT_FOR: [&str; 2] = ["h200", "b200"];

impl Strategy for Heuristic {
    fn name(&self) -> &'static str {
        "heuristic"
    }

    fn scale_up_server(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, disk_gb: f64) -> Option<String> {
        fitting_servers(chute, fleet, disk_gb).first().map(|(s, _)| s.server_id.clone())
    }

    fn autoscale(&self, fleet: &FleetSnapshot, view: &ValidatorView, disk_gb: f64) -> Vec<ScaleUp> {
        let mut placements = PlacementCache::new(fleet, disk_gb);
        let mut local_counts: std::collections::HashMap<&str, usize> = Default::default();
        for d in &fleet.deployments {
            if d.job_id.is_none() {
                *local_counts.entry(d.chute_id.as_str()).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for (chute_id, remote) in &view.chutes {
            let Some(chute) = fleet.chutes.get(chute_id) else { continue };
            if chute.version != remote.version || !remote.has_cords || view.capped.contains(chute_id) {
                continue;
            }
            let local = local_counts.get(chute_id.as_str()).copied().unwrap_or(0);
            if local >= 3 {
                continue;
            }
            let Some(m) = view.metrics.get(chute_id) else { continue };
            let total = m.instance_count.max(0) as f64;
            if local > 0 && local as f64 >= total && m.rate_limit_count == 0.0 {
                continue;
            }
            let mut rate_limited = m.rate_limit_count;
            if m.instance_count >= 5 {
                rate_limited /= 5.0;
            }
            let compute_units = m.total_compute_time * m.compute_multiplier.unwrap_or(1.0);
            let per_invocation =
                compute_units / if m.total_invocations > 0.0 { m.total_invocations } else { 1.0 };
            let theoretical = if rate_limited > 0.0 && per_invocation > 0.0 {
                compute_units + rate_limited * per_invocation
            } else {
                compute_units
            };
            let gain = if total > 0.0 { theoretical / (total + 1.0) } else { theoretical };
            push_candidate(&mut out, &mut placements, chute, gain);
        }
        ranked(out)
    }

    fn autoscale_mode(&self) -> AutoscaleMode {
        AutoscaleMode::BestOnly
    }

    fn scale_down(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, now: DateTime<Utc>) -> Option<String> {
        scale_down_by_cost(chute, fleet, now)
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
        if let Some(server_id) = self.scale_up_server(chute, fleet, job.disk_gb) {
            return JobDecision::Deploy { server_id };
        }
        if chute.supported_gpus.iter().any(|g| !NEVER_PREEMPT_FOR.contains(&g.as_str())) {
            JobDecision::Preempt
        } else {
            JobDecision::Refuse {
                why: "no free GPUs, and h200/b200-only jobs are never preempted for".into(),
            }
        }
    }

    fn preempt(
        &self,
        chute: &ChuteSnap,
        fleet: &FleetSnapshot,
        view: &ValidatorView,
        last_invocations: &LastInvocations,
        now: DateTime<Utc>,
        disk_gb: f64,
    ) -> Option<Preemption> {
        if chute.banned || chute.gpu_count == 0 {
            return None;
        }
        let mut supported = chute.supported_gpus.clone();
        if supported.len() > 1 {
            supported.retain(|g| g != "h200");
        }
        // value of one instance of a chute: usage (+ rate-limited demand) per instance
        let value = |chute_id: &str| -> f64 {
            let Some(m) = view.metrics.get(chute_id) else { return 0.0 };
            let usage = m.total_usage_usd.unwrap_or(0.0);
            let mut rate_limited = m.rate_limit_count;
            if m.instance_count >= 5 {
                rate_limited /= 5.0;
            }
            let per_invocation = if m.total_invocations > 0.0 { usage / m.total_invocations } else { 0.0 };
            (usage + rate_limited * per_invocation) / m.instance_count.max(1) as f64
        };
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        let servers = preemption_servers(fleet, chute, &supported, disk_gb);
        for server in servers {
            let free = server.free_gpus(&supported);
            if free >= chute.gpu_count {
                return Some(Preemption { server_id: server.server_id.clone(), victims: Vec::new() });
            }
            let mut deployments: Vec<_> =
                fleet.deployments.iter().filter(|d| d.server_id == server.server_id).collect();
            deployments.sort_by(|a, b| value(&a.chute_id).total_cmp(&value(&b.chute_id)));
            let mut freed = free;
            let mut victims = Vec::new();
            for d in deployments {
                // Private (non-preemptible) chutes postdate the original; its successor
                // never preempts them, and neither does this port anywhere else.
                if d.job_id.is_some() || !d.preemptible {
                    continue;
                }
                if d.chute_id == chute.chute_id {
                    // An instance of this very chute is here already: do not preempt anywhere.
                    return None;
                }
                let Some(verified) = d.verified_at else { continue };
                if now - verified <= Duration::minutes(60) {
                    continue;
                }
                let global = counts
                    .entry(d.chute_id.clone())
                    .or_insert_with(|| view.instance_count(&d.chute_id).unwrap_or(1));
                if *global > 1 {
                    *global -= 1;
                } else {
                    // Last instance anywhere: only when idle for 10 minutes, known from Prometheus.
                    match last_invocations.get(&d.chute_id) {
                        Some(t) if now - *t >= Duration::minutes(10) => {}
                        _ => continue,
                    }
                }
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

/// Section 11.6: highest `hourly_cost × used/total` among this chute's non-job
/// deployments on unlocked servers, at least 5 minutes old.
pub(crate) fn scale_down_by_cost(
    chute: &ChuteSnap,
    fleet: &FleetSnapshot,
    now: DateTime<Utc>,
) -> Option<String> {
    fleet
        .deployments_of(&chute.chute_id)
        .filter(|d| d.job_id.is_none() && d.created_at.is_some_and(|c| now - c >= Duration::minutes(5)))
        .filter_map(|d| {
            let s = fleet.server(&d.server_id)?;
            if s.locked {
                return None;
            }
            let total = s.gpus.len().max(1) as f64;
            Some((d, s.hourly_cost * s.used_gpus() as f64 / total))
        })
        .max_by(|(a, x), (b, y)| x.total_cmp(y).then_with(|| b.deployment_id.cmp(&a.deployment_id)))
        .map(|(d, _)| d.deployment_id.clone())
}
