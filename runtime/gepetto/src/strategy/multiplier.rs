//! The successor's strategy (reference 20.7): the validator's
//! `effective_compute_multiplier` (bounty age, urgency, TEE and private bonuses in one
//! number) per unit of hourly cost decides what to scale; preemption only removes
//! instances the validator pays less for than the newcomer, never a chute's last
//! instance, never private (non-preemptible) or freshly activated ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Duration, Utc};

use super::{
    AutoscaleMode, JobDecision, JobOffer, Preemption, Rebalance, ScaleUp, Strategy, fitting_servers,
    preemption_servers_where, push_candidate, ranked, screen_job,
};
use crate::snapshot::{ChuteSnap, DeploymentSnap, FleetSnapshot, LastInvocations, ValidatorView};
use miner_validator::rest::RemoteMetrics;

/// Best-fit servers considered per placement; one is picked in turn so a single
/// broken server cannot swallow every deployment (`SCALE_UP_CANDIDATE_POOL = 2`).
const CANDIDATE_POOL: usize = 2;
/// A victim must have been active this long (62 minutes in the successor).
const MIN_ACTIVE: i64 = 62;

/// A new instance expected to be busier than this share of the time is worth its
/// GPUs; below it, the GPUs are left for a chute with demand (the validator scores
/// utilisation and scales idle chutes down, reference 21 on chutes-api #22).
const MIN_EXPECTED_UTILISATION: f64 = 0.3;

/// An instance that would be a chute's only one stays for good (preemption never
/// removes a chute's last instance, the validator never scales it down): it must
/// expect to be busy at least this share of the time, or a chute whose traffic is
/// a trickle would hold its GPUs (a whole server, for an 8-GPU chute) all week.
const MIN_SOLE_UTILISATION: f64 = 0.6;

/// Rebalancing replaces instances earning under this share of what the newcomer
/// would (per GPU): the margin pays for the newcomer's warm-up and for demand
/// estimates an hour old.
const REPLACE_BELOW: f64 = 0.5;

/// Instances' worth of demand in the last hour ([`RemoteMetrics::demand_instances`];
/// `None`: no metrics).
fn demand(chute_id: &str, view: &ValidatorView) -> Option<f64> {
    view.metrics.get(chute_id).map(RemoteMetrics::demand_instances)
}

/// Instances' worth of demand nobody served in the last hour.
pub(crate) fn unmet_instances(chute_id: &str, view: &ValidatorView) -> f64 {
    view.metrics.get(chute_id).map_or(0.0, RemoteMetrics::unmet_instances)
}

/// The share of time each instance of a chute is busy now (last hour's demand over
/// its instances).
pub(crate) fn current_utilisation(chute_id: &str, view: &ValidatorView) -> f64 {
    let instances = view.instance_count(chute_id).unwrap_or(0).max(1);
    demand(chute_id, view).map_or(0.0, |d| (d / instances as f64).min(1.0))
}

/// What a chute pays this miner, as the validator's figures show it: the demand is
/// split evenly over every miner's active instances, each busy `min(1, demand / n)`
/// of the time and paid that times the multiplier it activated with. One more
/// instance is worth what this miner's earnings on the chute change by: a fifth
/// instance of a chute whose demand four of ours already serve earns nothing, it only
/// splits the same work five ways.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Share {
    /// `None`: no metrics (no traffic in the last hour).
    demand: Option<f64>,
    /// Every miner's active instances.
    instances: usize,
    /// The sum of the multipliers the validator pays this miner's active instances.
    ours: f64,
}

impl Share {
    /// This miner's instance ids by chute, for [`Share::of`] (one pass over the
    /// deployments, not one per chute).
    pub(crate) fn ours(fleet: &FleetSnapshot) -> std::collections::HashMap<&str, Vec<&str>> {
        // A miner holds a handful of instances per chute: a list compared by value costs
        // less than hashing every miner's instance ids, on every autoscaler tick.
        let mut ours: std::collections::HashMap<&str, Vec<&str>> = Default::default();
        for d in &fleet.deployments {
            if let Some(id) = d.instance_id.as_deref() {
                ours.entry(d.chute_id.as_str()).or_default().push(id);
            }
        }
        ours
    }

    /// A chute's share, given this miner's instance ids of it: what the validator pays
    /// those of them that are active, with one lookup per listing.
    pub(crate) fn of(chute_id: &str, view: &ValidatorView, ours: &[&str]) -> Share {
        let active = view.active_instances.get(chute_id);
        let paid = if ours.is_empty() {
            0.0
        } else {
            active
                .into_iter()
                .flatten()
                .filter(|i| ours.contains(&i.instance_id.as_str()))
                .filter_map(|i| i.compute_multiplier)
                .sum()
        };
        let metrics = view.metrics.get(chute_id);
        let instances = ValidatorView::count_instances(active, metrics).unwrap_or(0);
        Share { demand: metrics.map(RemoteMetrics::demand_instances), instances, ours: paid }
    }

    /// The share of time each of `n` instances is busy.
    fn busy(&self, n: usize) -> f64 {
        match self.demand {
            Some(d) if n > 0 => (d / n as f64).min(1.0),
            _ => 0.0,
        }
    }

    /// [`Share::gain`] when one more instance is worth its GPUs: expected busy at least
    /// `MIN_EXPECTED_UTILISATION` of the time (at its multiplier), or
    /// `MIN_SOLE_UTILISATION` when it would be the chute's only instance.
    pub(crate) fn worth_an_instance(&self, multiplier: f64) -> Option<f64> {
        let gain = self.gain(multiplier);
        let least = if self.instances == 0 { MIN_SOLE_UTILISATION } else { MIN_EXPECTED_UTILISATION };
        (gain >= least * multiplier).then_some(gain)
    }

    /// What one more instance, paid `multiplier`, adds to this miner's earnings per
    /// second. Nothing for a chute without metrics: no traffic in the last hour, or a
    /// new chute the validator has no figures for yet (a bounty on it has its own
    /// event, `claim_bounty`).
    pub(crate) fn gain(&self, multiplier: f64) -> f64 {
        let n = self.instances;
        self.busy(n + 1) * (self.ours + multiplier) - self.busy(n) * self.ours
    }
}

#[derive(Debug, Default)]
pub struct Multiplier {
    /// Rotates through the candidate pool (the successor picked at random; a
    /// rotation spreads the same way and keeps decisions reproducible).
    turn: AtomicUsize,
}

impl Multiplier {
    /// Chutes worth another instance, with what one would add to this miner's
    /// earnings ([`Share::gain`] at the effective multiplier). Skips chutes the validator
    /// caps, with another version or no cords, and chutes that already have as many
    /// instances launching as there is unserved demand.
    fn wanted<'a>(
        fleet: &'a FleetSnapshot,
        view: &ValidatorView,
        pending: &std::collections::HashMap<&str, usize>,
    ) -> Vec<(&'a ChuteSnap, f64)> {
        let mut out = Vec::new();
        let ours = Share::ours(fleet);
        for (chute_id, remote) in &view.chutes {
            // The checks that need no lookup first: this runs for every chute, twice on
            // most autoscaler ticks.
            let Some(multiplier) = remote.effective_compute_multiplier else { continue };
            if !remote.has_cords {
                continue;
            }
            let Some(chute) = fleet.chutes.get(chute_id) else { continue };
            if chute.version != remote.version || view.capped.contains(chute_id) {
                continue;
            }
            let launching = pending.get(chute_id.as_str()).copied().unwrap_or(0);
            if launching > 0 && launching as f64 >= unmet_instances(chute_id, view) {
                continue; // what is launching already covers the unserved demand
            }
            let share = Share::of(chute_id, view, ours.get(chute_id.as_str()).map_or(&[][..], Vec::as_slice));
            // else it would sit idle, or only split work, on GPUs a busier chute can use
            if let Some(gain) = share.worth_an_instance(multiplier) {
                out.push((chute, gain));
            }
        }
        // HashMap order is not reproducible: sort by chute id
        out.sort_by(|a, b| a.0.chute_id.cmp(&b.0.chute_id));
        out
    }

    /// Whether this miner's first instance of a chute is worth holding: unknown demand
    /// (no metrics yet) counts as yes; known demand must be worth an instance.
    fn worth_holding(chute: &ChuteSnap, view: &ValidatorView) -> bool {
        if !view.metrics.contains_key(&chute.chute_id) {
            return true;
        }
        let multiplier =
            view.chutes.get(&chute.chute_id).and_then(|c| c.effective_compute_multiplier).unwrap_or(1.0);
        Share::of(&chute.chute_id, view, &[]).worth_an_instance(multiplier).is_some()
    }

    /// Instances launching (not a job's, not yet activated), by chute.
    fn pending(fleet: &FleetSnapshot) -> std::collections::HashMap<&str, usize> {
        let mut pending: std::collections::HashMap<&str, usize> = Default::default();
        for d in fleet.deployments.iter().filter(|d| Self::is_pending(d)) {
            *pending.entry(d.chute_id.as_str()).or_default() += 1;
        }
        pending
    }

    fn is_pending(d: &DeploymentSnap) -> bool {
        d.job_id.is_none() && d.activated_at.is_none() && !d.active
    }

    fn has_pending(chute_id: &str, fleet: &FleetSnapshot) -> bool {
        fleet.deployments_of(chute_id).any(Self::is_pending)
    }
}

impl Strategy for Multiplier {
    fn name(&self) -> &'static str {
        "multiplier"
    }

    /// A chute the validator has no figures for yet (new, unknown demand): yes, as the
    /// successor does. One whose metrics are known (a miner starting up creates every
    /// listed chute): only when they show an instance would be busy enough
    /// ([`Share::worth_an_instance`]), `MIN_SOLE_UTILISATION` of the time when no miner
    /// serves it, since that instance would stay for good.
    fn deploy_on_create(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, view: &ValidatorView) -> bool {
        !chute.banned && fleet.non_job_count(chute) == 0 && Self::worth_holding(chute, view)
    }

    /// As [`Strategy::deploy_on_create`]: a bounty pays once, the instance that claims
    /// it stays.
    fn claim_bounty(&self, chute: &ChuteSnap, fleet: &FleetSnapshot, view: &ValidatorView) -> bool {
        !chute.banned
            && fleet.deployments_of(&chute.chute_id).next().is_none()
            && Self::worth_holding(chute, view)
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
        // Each tick places on one of the best two fits in turn, as `scale_up_server`
        // does: a broken cheapest server (pods that never start) would otherwise take
        // every deploy.
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut placements = super::PlacementCache::rotating(fleet, disk_gb, CANDIDATE_POOL, turn);
        let mut out = Vec::new();
        for (chute, worth) in Self::wanted(fleet, view, &Self::pending(fleet)) {
            push_candidate(&mut out, &mut placements, chute, worth);
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
        // Worth: the multiplier the validator pays the instance (unknown: keep it).
        let victims =
            Victims::new(fleet, now, |d| view.instance_multiplier(&d.chute_id, d.instance_id.as_deref()?));
        victims.make_room(chute, fleet, view, disk_gb, newcomer)
    }

    fn rebalance(
        &self,
        fleet: &FleetSnapshot,
        view: &ValidatorView,
        now: DateTime<Utc>,
        disk_gb: f64,
    ) -> Option<Rebalance> {
        let pending = Self::pending(fleet);
        let mut wanted: Vec<(&ChuteSnap, f64)> = Self::wanted(fleet, view, &pending)
            .into_iter()
            .filter(|(c, _)| !c.banned && c.gpu_count > 0 && !pending.contains_key(c.chute_id.as_str()))
            .map(|(c, worth)| (c, worth / c.gpu_count as f64))
            .collect();
        wanted.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.chute_id.cmp(&b.0.chute_id)));
        // Chutes with the same GPU requirements compete for the same victims: only the
        // best of each requirement is worth a look.
        let mut seen = std::collections::HashSet::new();
        wanted.retain(|(c, _)| {
            let mut models = c.supported_gpus.clone();
            models.sort();
            seen.insert((models, c.gpu_count))
        });
        if wanted.is_empty() {
            return None;
        }
        // Worth: what the instance earns per GPU now, the multiplier it activated with
        // times how busy its chute keeps each instance.
        let victims = Victims::new(fleet, now, |d| {
            let m = view.instance_multiplier(&d.chute_id, d.instance_id.as_deref()?)?;
            Some(m * current_utilisation(&d.chute_id, view) / d.gpu_count.max(1) as f64)
        });
        for (chute, per_gpu) in wanted {
            if per_gpu * REPLACE_BELOW <= victims.cheapest {
                break; // sorted: no later chute beats any instance by the margin either
            }
            if !victims.cheap_enough_on(&chute.supported_gpus, per_gpu * REPLACE_BELOW) {
                // No server with its GPUs holds a victim worth that little: make_room
                // could only find room already free, which is the autoscaler's job.
                continue;
            }
            if let Some(plan) = victims.make_room(chute, fleet, view, disk_gb, per_gpu * REPLACE_BELOW)
                && !plan.victims.is_empty()
            {
                return Some(Rebalance { chute_id: chute.chute_id.clone(), plan });
            }
        }
        None
    }
}

/// The deployments preemption may remove, by server, least worth first: preemptible,
/// not serving a job, active for `MIN_ACTIVE`, with a known worth.
struct Victims<'a> {
    /// By the server's position in `fleet.servers` (rebalance asks for every server
    /// and every wanted chute: an index, not a string hash).
    by_server: Vec<Vec<(f64, &'a DeploymentSnap)>>,
    /// The least worth of all, also on servers the fleet no longer lists.
    cheapest: f64,
    /// The least worth on servers with a verified GPU of each model.
    cheapest_by_model: std::collections::HashMap<&'a str, f64>,
}

impl<'a> Victims<'a> {
    fn new(
        fleet: &'a FleetSnapshot,
        now: DateTime<Utc>,
        worth: impl Fn(&DeploymentSnap) -> Option<f64>,
    ) -> Self {
        let position: std::collections::HashMap<&str, usize> =
            fleet.servers.iter().enumerate().map(|(i, s)| (s.server_id.as_str(), i)).collect();
        let mut by_server: Vec<Vec<(f64, &DeploymentSnap)>> = vec![Vec::new(); fleet.servers.len()];
        let mut cheapest = f64::INFINITY;
        for d in &fleet.deployments {
            if d.job_id.is_some()
                || !d.preemptible
                || d.activated_at.is_none_or(|a| now - a < Duration::minutes(MIN_ACTIVE))
            {
                continue;
            }
            let Some(w) = worth(d) else { continue };
            cheapest = cheapest.min(w);
            if let Some(&i) = position.get(d.server_id.as_str()) {
                by_server[i].push((w, d));
            }
        }
        for list in &mut by_server {
            list.sort_by(|(a, x), (b, y)| a.total_cmp(b).then_with(|| x.deployment_id.cmp(&y.deployment_id)));
        }
        let mut cheapest_by_model: std::collections::HashMap<&str, f64> = Default::default();
        for (server, list) in fleet.servers.iter().zip(&by_server) {
            let Some((w, _)) = list.first() else { continue };
            // A server's GPUs are of one model: look each model up once, not once per GPU.
            let mut last: Option<&str> = None;
            for g in server.gpus.iter().filter(|g| g.verified) {
                if last == Some(g.model.as_str()) {
                    continue;
                }
                last = Some(g.model.as_str());
                let least = cheapest_by_model.entry(g.model.as_str()).or_insert(f64::INFINITY);
                *least = least.min(*w);
            }
        }
        Victims { by_server, cheapest, cheapest_by_model }
    }

    /// Whether some server with a verified GPU of one of `models` holds a victim worth
    /// less than `below` (when not, [`Victims::make_room`] can only return a server that
    /// has room already, or none).
    fn cheap_enough_on(&self, models: &[String], below: f64) -> bool {
        models.iter().any(|m| self.cheapest_by_model.get(m.as_str()).is_some_and(|w| *w < below))
    }

    /// The cheapest server where `chute` fits after removing deployments of other
    /// chutes worth less than `below`, least worth first, never the last instance of a
    /// chute anywhere.
    fn make_room(
        &self,
        chute: &ChuteSnap,
        fleet: &FleetSnapshot,
        view: &ValidatorView,
        disk_gb: f64,
        below: f64,
    ) -> Option<Preemption> {
        // Only servers with room already, or with a victim cheap enough, can help.
        let helps = |i: usize| {
            self.by_server[i].first().is_some_and(|(w, _)| *w < below)
                || fleet.servers[i].free_gpus(&chute.supported_gpus) >= chute.gpu_count
        };
        for (i, server) in preemption_servers_where(fleet, chute, &chute.supported_gpus, disk_gb, helps) {
            let free = server.free_gpus(&chute.supported_gpus);
            if free >= chute.gpu_count {
                return Some(Preemption { server_id: server.server_id.clone(), victims: Vec::new() });
            }
            let list = &self.by_server[i];
            let mut counts: std::collections::HashMap<&str, usize> = Default::default();
            let mut freed = free;
            let mut victims = Vec::new();
            for (_, d) in list.iter().take_while(|(w, _)| *w < below) {
                if d.chute_id == chute.chute_id {
                    continue;
                }
                let Some(global) = view.instance_count(&d.chute_id) else { continue };
                let left = counts.entry(d.chute_id.as_str()).or_insert(global);
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
