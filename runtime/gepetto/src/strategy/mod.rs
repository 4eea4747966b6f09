//! Every decision the original marks "MINERS:" (reference 11.9), behind one trait.
//!
//! A strategy is pure: it reads a [`FleetSnapshot`] and a [`ValidatorView`] and
//! answers; the controller carries the answer out (allocation through
//! `Db::create_deployment`, Kubernetes objects, validator calls). So a simulator can
//! drive a strategy with hand-made snapshots, and two strategies can be compared on
//! the same data.

mod heuristic;
mod multiplier;

use chrono::{DateTime, Utc};

pub use heuristic::Heuristic;
pub use multiplier::Multiplier;

use crate::snapshot::{ChuteSnap, FleetSnapshot, LastInvocations, ServerSnap, ValidatorView};

/// A job the validator offers (`job_created`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobOffer {
    pub job_id: String,
    pub chute_id: String,
    /// Miner hotkeys that must not take it.
    pub exclude: Vec<String>,
    pub disk_gb: f64,
}

/// What to do with a job offer.
#[derive(Debug, Clone, PartialEq)]
pub enum JobDecision {
    /// Deploy on this server (free GPUs are there now).
    Deploy { server_id: String },
    /// No free server: try preempting.
    Preempt,
    /// Leave it to other miners.
    Refuse { why: String },
}

/// One autoscaler candidate, best first in the list a strategy returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleUp {
    pub chute_id: String,
    pub server_id: String,
    pub value: f64,
}

/// Where to put a chute by removing which deployments.
#[derive(Debug, Clone, PartialEq)]
pub struct Preemption {
    pub server_id: String,
    /// Deployment ids to undeploy first (empty: the server already has room).
    pub victims: Vec<String>,
}

/// Moving GPUs from instances that earn little to a chute that would earn much more:
/// undeploy `plan.victims`, then deploy `chute_id` on `plan.server_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rebalance {
    pub chute_id: String,
    pub plan: Preemption,
}

/// How the autoscaler's list is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoscaleMode {
    /// Only the best candidate, one scale-up per tick (original).
    BestOnly,
    /// Walk the list, stop at the first deploy that succeeds (successor).
    FirstThatDeploys,
}

pub trait Strategy: Send + Sync {
    fn name(&self) -> &'static str;

    /// `chute_created` (not job-only): deploy one instance right away?
    fn deploy_on_create(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, _view: &ValidatorView) -> bool {
        !chute.banned && fleet.non_job_count(chute) == 0
    }

    /// `bounty_change`: try to claim the bounty (deploying, preempting if needed)?
    fn claim_bounty(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, _view: &ValidatorView) -> bool {
        // Fix of 19.4: any number of deployments means "already serving".
        !chute.banned && fleet.deployments_of(&chute.chute_id).next().is_none()
    }

    /// The server to add an instance of `chute` on, if any has room.
    fn scale_up_server(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, disk_gb: f64) -> Option<String>;

    /// Autoscaler candidates, best first.
    fn autoscale(&self, fleet: &FleetSnapshot, view: &ValidatorView, disk_gb: f64) -> Vec<ScaleUp>;

    fn autoscale_mode(&self) -> AutoscaleMode;

    /// The deployment to remove when a chute has more instances than wanted.
    fn scale_down(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, now: DateTime<Utc>) -> Option<String>;

    /// `job_created`: accept, preempt for it, or refuse.
    fn accept_job(
        &self,
        job: &JobOffer,
        miner: &str,
        chute: &ChuteSnap,
        fleet: &FleetSnapshot,
    ) -> JobDecision;

    /// When the autoscaler placed nothing (no room): replace low-earning instances with
    /// a chute worth much more? At most one per autoscaler tick. Default: never.
    fn rebalance(
        &self,
        _fleet: &FleetSnapshot,
        _view: &ValidatorView,
        _now: DateTime<Utc>,
        _disk_gb: f64,
    ) -> Option<Rebalance> {
        None
    }

    /// Where to place `chute` by preempting (`None`: do not preempt).
    fn preempt(
        &self,
        chute: &ChuteSnap,
        fleet: &FleetSnapshot,
        view: &ValidatorView,
        last_invocations: &LastInvocations,
        now: DateTime<Utc>,
        disk_gb: f64,
    ) -> Option<Preemption>;
}

/// Unlocked servers with `gpu_count` free GPUs of a supported model and the disk,
/// cheapest first, then tightest fit (bin packing), then by name for determinism.
pub(crate) fn fitting_servers<'a>(
    chute: &ChuteSnap,
    fleet: &'a FleetSnapshot,
    disk_gb: f64,
) -> Vec<(&'a ServerSnap, usize)> {
    if chute.banned || chute.gpu_count == 0 {
        return Vec::new();
    }
    let mut fits: Vec<(&ServerSnap, usize)> = fleet
        .servers
        .iter()
        // A server is registered with one validator: a chute of another cannot run there
        // (its launch token is refused, a legacy announce names GPUs it never verified).
        .filter(|s| !s.locked && s.validator == chute.validator && s.has_disk(disk_gb))
        .map(|s| (s, s.free_gpus(&chute.supported_gpus)))
        .filter(|(_, free)| *free >= chute.gpu_count)
        .collect();
    fits.sort_by(|(a, fa), (b, fb)| {
        a.hourly_cost.total_cmp(&b.hourly_cost).then(fa.cmp(fb)).then_with(|| a.name.cmp(&b.name))
    });
    fits
}

/// Adds a scale-up candidate worth `gain` on the server `placements` picks for the
/// chute, if one fits.
pub(crate) fn push_candidate(
    out: &mut Vec<ScaleUp>,
    placements: &mut PlacementCache<'_>,
    chute: &ChuteSnap,
    gain: f64,
) {
    if let Some(server) = placements.pick(chute) {
        out.push(ScaleUp {
            chute_id: chute.chute_id.clone(),
            server_id: server.server_id.clone(),
            value: per_cost(gain, server, chute.gpu_count),
        });
    }
}

/// Best candidate first; equal values by chute id, so the order is reproducible.
pub(crate) fn ranked(mut out: Vec<ScaleUp>) -> Vec<ScaleUp> {
    out.sort_by(|a, b| b.value.total_cmp(&a.value).then_with(|| a.chute_id.cmp(&b.chute_id)));
    out
}

/// The refusals every strategy shares: an excluded miner, a banned chute.
pub(crate) fn screen_job(job: &JobOffer, miner: &str, chute: &ChuteSnap) -> Option<JobDecision> {
    if job.exclude.iter().any(|h| h == miner) {
        return Some(JobDecision::Refuse { why: "this miner is excluded from the job".into() });
    }
    if chute.banned {
        return Some(JobDecision::Refuse { why: "the chute is banned".into() });
    }
    None
}

/// Servers preemption may target for `gpu_count` GPUs of `models`: unlocked, with
/// the disk and enough such GPUs held or not; cheapest first, then fewest free
/// (bin packing), then by name.
pub(crate) fn preemption_servers<'a>(
    fleet: &'a FleetSnapshot,
    chute: &ChuteSnap,
    models: &[String],
    disk_gb: f64,
) -> Vec<&'a ServerSnap> {
    preemption_servers_where(fleet, chute, models, disk_gb, |_| true).into_iter().map(|(_, s)| s).collect()
}

/// [`preemption_servers`] among those `keep` accepts, given each server's position in
/// `fleet.servers` (checked first: a cheap test spares the GPU counting on servers that
/// cannot help); with their positions.
pub(crate) fn preemption_servers_where<'a>(
    fleet: &'a FleetSnapshot,
    chute: &ChuteSnap,
    models: &[String],
    disk_gb: f64,
    keep: impl Fn(usize) -> bool,
) -> Vec<(usize, &'a ServerSnap)> {
    let gpu_count = chute.gpu_count;
    // Free GPUs counted once per server, not once per comparison of the sort.
    let mut servers: Vec<(usize, &ServerSnap, usize)> = fleet
        .servers
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            keep(*i)
                && !s.locked
                && s.validator == chute.validator
                && s.has_disk(disk_gb)
                && s.total_gpus(models) >= gpu_count
        })
        .map(|(i, s)| (i, s, s.free_gpus(models)))
        .collect();
    servers.sort_by(|(_, a, fa), (_, b, fb)| {
        a.hourly_cost.total_cmp(&b.hourly_cost).then(fa.cmp(fb)).then_with(|| a.name.cmp(&b.name))
    });
    servers.into_iter().map(|(i, s, _)| (i, s)).collect()
}

/// Value per GPU-hour of cost; a zero or negative cost (19.8: ZeroDivision in the
/// original) counts as a tiny positive cost instead of failing.
pub(crate) fn per_cost(gain: f64, server: &ServerSnap, gpu_count: usize) -> f64 {
    gain / (server.hourly_cost * gpu_count.max(1) as f64).max(1e-6)
}

/// Caches the fitting servers per (validator, supported models, gpu count) within one
/// decision: thousands of chutes share a handful of GPU requirements, so one
/// autoscaler pass scans the fleet once per distinct requirement, not once per chute.
pub(crate) struct PlacementCache<'a> {
    fleet: &'a FleetSnapshot,
    disk_gb: f64,
    /// How many of the best fits a pick rotates through (1: always the best).
    pool: usize,
    /// Which of them this decision picks (taken modulo the fits there are).
    turn: usize,
    cache: std::collections::HashMap<(String, Vec<String>, usize), Vec<usize>>,
}

impl<'a> PlacementCache<'a> {
    /// Every pick is the best fit ([`fitting_servers`]'s first).
    pub(crate) fn new(fleet: &'a FleetSnapshot, disk_gb: f64) -> Self {
        Self::rotating(fleet, disk_gb, 1, 0)
    }

    /// Picks are the `turn`-th (modulo) of the best `pool` fits of each requirement.
    pub(crate) fn rotating(fleet: &'a FleetSnapshot, disk_gb: f64, pool: usize, turn: usize) -> Self {
        PlacementCache { fleet, disk_gb, pool: pool.max(1), turn, cache: Default::default() }
    }

    /// The server this decision places the chute on: one of its best `pool` fits.
    pub(crate) fn pick(&mut self, chute: &ChuteSnap) -> Option<&'a ServerSnap> {
        let (fleet, turn) = (self.fleet, self.turn);
        let fits = self.fits(chute);
        (!fits.is_empty()).then(|| &fleet.servers[fits[turn % fits.len()]])
    }

    /// Positions in `fleet.servers` of the chute's best `pool` fits, best first.
    fn fits(&mut self, chute: &ChuteSnap) -> &[usize] {
        // Not cached: a banned chute's empty answer is not its requirement's.
        if chute.banned {
            return &[];
        }
        let mut models = chute.supported_gpus.clone();
        models.sort();
        let key = (chute.validator.clone(), models, chute.gpu_count);
        let (fleet, disk, pool) = (self.fleet, self.disk_gb, self.pool);
        self.cache.entry(key).or_insert_with(|| {
            fitting_servers(chute, fleet, disk)
                .iter()
                .take(pool)
                .filter_map(|(s, _)| fleet.servers.iter().position(|x| x.server_id == s.server_id))
                .collect()
        })
    }
}

#[cfg(test)]
mod tests;
