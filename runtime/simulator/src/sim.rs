//! The discrete-event simulator. Its state *is* a [`FleetSnapshot`] and a
//! [`ValidatorView`], updated in place as events happen, so the strategy under test
//! reads exactly the structures Gepetto builds and answers through the same trait
//! methods; the simulator then carries each answer out the way Gepetto's controller
//! does (README: "How Gepetto is mirrored").
//!
//! Events come from the trace (demand, other miners, bounties, jobs, updates, node
//! failures) and from the simulation itself (a launch becoming active, a job ending,
//! a node coming back, the autoscaler tick, the hourly sample), processed in
//! `(time, class, sequence)` order. Value accrues per chute between the events that
//! change its rate, so the result does not depend on a time step.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use chrono::{DateTime, Duration, Utc};
use miner_gepetto::snapshot::{
    ChuteSnap, DeploymentSnap, FleetSnapshot, GpuSnap, LastInvocations, RemoteChuteInfo, ServerSnap,
    ValidatorView,
};
use miner_gepetto::strategy::{JobDecision, JobOffer, Strategy};
use miner_validator::rest::{ActiveInstance, RemoteMetrics};

use crate::SimError;
use crate::report::StrategyResult;
use crate::rng::{hash_unit, key};
use crate::trace::{Record, Scoring, Trace, ValidatorModel};

const VALIDATOR: &str = "5SimulatedValidator";
const VERSION: &str = "v1";
/// USD per compute-unit-second of usage, for `total_usage_usd` (the original's
/// preemption values instances by it; only ratios matter).
const USD_PER_COMPUTE_SECOND: f64 = 0.0001;
/// The metrics window moves in steps of this many seconds (four make the hour).
const WINDOW_BUCKET_S: u64 = 900;
/// How often the validator model moves instances' multipliers (`multiplier_drift_s`):
/// chutes-api does it on each run of its autoscaler, a CronJob every 30 minutes
/// (`charts/templates/autoscaler-cronjob.yaml`). The period matters, since each run
/// blends the multiplier the instance has then, not the one it activated with.
const DRIFT_S: u64 = 1800;
/// `Scoring::Lifetime`: the start-up (launch to activation) is paid at this share of the
/// instance's multiplier, and an instance the miner ends sooner than `LIFETIME_MIN_S`
/// after activation is not paid at all (chutes-api's `INSTANCES_QUERY`).
const STARTUP_RATE: f64 = 0.3;
const LIFETIME_MIN_S: u64 = 3600;
/// `last_day_value_per_dollar` covers this much of the trace's end: the level a
/// long-running miner holds once its fleet has settled, and the current chutes
/// validator's scoring window (one day).
const LAST_DAY_S: u64 = 86_400;

/// Internal events; the derive orders ties deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Internal {
    Ready(u64),
    JobDone(u64),
    Recover(usize),
    BountyExpire(usize, u64),
    Create(usize),
    /// A job offered in the very second its chute appears (`trace.events` index):
    /// handled once the chute exists, as Gepetto handles `job_created` after
    /// `chute_created`.
    Offer(usize),
    Tick,
    Sample,
    /// The start of the trace's last day ([`LAST_DAY_S`]): the value earned so far.
    LastDay,
}

impl Internal {
    /// Order among events at the same second: state changes, then the trace's
    /// events (class 1), then chute creation (so its first demand and bounty are
    /// known), then the autoscaler, then the sample.
    fn class(&self) -> u8 {
        match self {
            Internal::Ready(_) | Internal::JobDone(_) | Internal::Recover(_) | Internal::BountyExpire(..) => {
                0
            }
            // An offer is pushed while its second's trace events run, so after the
            // chute's creation (pushed at the start) within the class.
            Internal::Create(_) | Internal::Offer(_) => 2,
            Internal::Tick => 3,
            Internal::Sample | Internal::LastDay => 4,
        }
    }
}

#[derive(Debug, Clone)]
struct JobRun {
    duration_s: u64,
    multiplier: f64,
}

#[derive(Debug, Clone)]
struct Dep {
    deployment_id: String,
    instance_id: String,
    chute: usize,
    server: usize,
    gpus: Vec<usize>,
    job: Option<JobRun>,
    launched: u64,
    active_since: Option<u64>,
    /// The compute multiplier the instance activated with (`ChuteRt::ours` has the
    /// one it is paid now, which drifts under `multiplier_drift_s`).
    multiplier: f64,
    disk_gb: f64,
    /// Compute value booked for the instance so far, and the same at the chute's base
    /// multiplier (`Scoring::Lifetime`, which takes it back if the instance is cut
    /// short within its first hour).
    earned: f64,
    earned_base: f64,
    /// `earned` when the last day began (0 for an instance younger): what a take-back
    /// removes from the value before the last day rather than from the last day itself.
    earned_before_last_day: f64,
}

#[derive(Debug, Clone, Default)]
struct ChuteRt {
    created: bool,
    load: f64,
    others: u32,
    others_multiplier: f64,
    /// (compute units, posted at)
    bounty: Option<(f64, u64)>,
    updating_until: u64,
    /// Our active non-job instances: (deployment seq, multiplier), by seq.
    ours: Vec<(u64, f64)>,
    launching: u32,
    last_accrual: u64,
    last_scale_down: u64,
    /// The metrics window: four 15-minute buckets of (served compute-seconds,
    /// unserved compute-seconds, instance-seconds), indexed by bucket number % 4.
    window: [[f64; 3]; 4],
    window_bucket: u64,
}

#[derive(Debug, Clone, Default)]
struct ServerRt {
    down_until: u64,
    /// When it left the fleet for good (`server_removed`).
    removed_at: Option<u64>,
    disk_free: f64,
    disk_gb: f64,
    bandwidth_gbps: f64,
    /// Images and models on the node's disk: chute → last used.
    cache: BTreeMap<usize, u64>,
}

#[derive(Debug, Default)]
struct Stats {
    value_compute: f64,
    /// What the same busy time would have earned at the chutes' base multipliers.
    value_compute_at_base: f64,
    value_bounties: f64,
    value_jobs: f64,
    busy_gpu_s: f64,
    allocated_gpu_s: f64,
    allocated_gpus: usize,
    last_allocation_change: u64,
    launches: u64,
    refusals: u64,
    failed_launches: u64,
    validator_removals: u64,
    lost_to_failures: u64,
    preemptions: u64,
    preemption_value_lost: f64,
    preemption_sunk_usd: f64,
    jobs_completed: u64,
    jobs_refused: u64,
    jobs_lost_race: u64,
    bounties_claimed: u64,
    autoscale_calls: u64,
    rebalances: u64,
    series: Vec<(u64, f64)>,
    /// Value earned before the last day started (0 for a trace of a day or less).
    value_before_last_day: f64,
}

/// One run of one strategy over one trace.
pub struct Simulator<'a> {
    trace: &'a Trace,
    strategy: &'a dyn Strategy,
    vm: ValidatorModel,
    start: DateTime<Utc>,
    now: u64,
    fleet: FleetSnapshot,
    view: ValidatorView,
    servers: Vec<ServerRt>,
    server_index: HashMap<String, usize>,
    chutes: Vec<ChuteRt>,
    chute_index: HashMap<String, usize>,
    deps: BTreeMap<u64, Dep>,
    dep_index: HashMap<String, u64>,
    heap: BinaryHeap<Reverse<(u64, u8, u64, Internal)>>,
    /// Orders internal events pushed for the same second and class.
    seq: u64,
    /// Numbers deployments in the order they were placed. Kept apart from `seq`: a
    /// deployment's number names it and draws its luck (verification time), so an
    /// internal event added or moved must not renumber every deployment after it.
    placed: u64,
    dirty: Vec<bool>,
    stats: Stats,
}

impl<'a> Simulator<'a> {
    pub fn new(trace: &'a Trace, strategy: &'a dyn Strategy) -> Result<Simulator<'a>, SimError> {
        let start = DateTime::<Utc>::from_timestamp(trace.header.start_unix, 0)
            .ok_or_else(|| SimError::Trace("start_unix is out of range".into()))?;
        if let Some([hold, full]) = trace.header.validator.multiplier_drift_s
            && hold > full
        {
            return Err(SimError::Trace(format!(
                "validator.multiplier_drift_s: the hold ({hold} s) ends after the full adjustment ({full} s)"
            )));
        }
        let mut sim = Simulator {
            trace,
            strategy,
            vm: trace.header.validator.clone(),
            start,
            now: 0,
            fleet: FleetSnapshot::default(),
            view: ValidatorView::default(),
            servers: Vec::new(),
            server_index: HashMap::new(),
            chutes: vec![ChuteRt::default(); trace.chutes.len()],
            chute_index: HashMap::new(),
            deps: BTreeMap::new(),
            dep_index: HashMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            placed: 0,
            dirty: vec![false; trace.chutes.len()],
            stats: Stats::default(),
        };
        for (i, s) in trace.servers.iter().enumerate() {
            if sim.server_index.insert(s.server_id.clone(), i).is_some() {
                return Err(SimError::Trace(format!("server {} is listed twice", s.server_id)));
            }
            sim.fleet.servers.push(ServerSnap {
                server_id: s.server_id.clone(),
                name: s.server_id.clone(),
                validator: VALIDATOR.into(),
                hourly_cost: s.hourly_cost,
                locked: false,
                gpus: (0..s.gpus)
                    .map(|g| GpuSnap {
                        gpu_id: format!("{}-gpu-{g}", s.server_id),
                        model: s.gpu_model.clone(),
                        verified: true,
                        deployment_id: None,
                    })
                    .collect(),
                disk_available_gb: Some(s.disk_gb),
            });
            sim.servers.push(ServerRt {
                disk_free: s.disk_gb,
                disk_gb: s.disk_gb,
                bandwidth_gbps: s.bandwidth_gbps.max(0.01),
                ..Default::default()
            });
            if s.added_s > 0 {
                // Not in the fleet yet: no usable GPU until it joins (as a node that is down).
                for g in &mut sim.fleet.servers[i].gpus {
                    g.verified = false;
                }
                sim.servers[i].down_until = s.added_s;
                sim.push(s.added_s, Internal::Recover(i));
            }
        }
        for (i, c) in trace.chutes.iter().enumerate() {
            if sim.chute_index.insert(c.chute_id.clone(), i).is_some() {
                return Err(SimError::Trace(format!("chute {} is listed twice", c.chute_id)));
            }
            sim.push(c.created_s, Internal::Create(i));
        }
        let tick = sim.vm.autoscale_s.max(1);
        let mut t = tick;
        while t <= trace.header.duration_s {
            sim.push(t, Internal::Tick);
            t += tick;
        }
        let mut t = 3600;
        while t <= trace.header.duration_s {
            sim.push(t, Internal::Sample);
            t += 3600;
        }
        let last_day = trace.header.duration_s.saturating_sub(LAST_DAY_S);
        if last_day > 0 {
            sim.push(last_day, Internal::LastDay);
        }
        Ok(sim)
    }

    fn push(&mut self, t: u64, e: Internal) {
        self.seq += 1;
        self.heap.push(Reverse((t, e.class(), self.seq, e)));
    }

    fn at(&self, t: u64) -> DateTime<Utc> {
        self.start + Duration::seconds(t as i64)
    }

    /// Runs to the end of the trace.
    pub fn run(mut self) -> Result<StrategyResult, SimError> {
        let end = self.trace.header.duration_s;
        let events = &self.trace.events;
        let mut next = 0usize;
        loop {
            let trace_key = events.get(next).map(|e| (e.t(), 1u8));
            let internal_key = self.heap.peek().map(|Reverse((t, class, _, _))| (*t, *class));
            let take_trace = match (trace_key, internal_key) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(a), Some(b)) => a < b,
            };
            if take_trace {
                let e = &events[next];
                next += 1;
                if e.t() > end {
                    continue;
                }
                self.advance(e.t());
                self.on_record(e, next - 1)?;
            } else if let Some(Reverse((t, _, _, e))) = self.heap.pop() {
                if t > end {
                    continue;
                }
                self.advance(t);
                self.on_internal(e);
            }
        }
        self.advance(end);
        for c in 0..self.chutes.len() {
            self.accrue(c);
        }
        // a job still running at the end has worked, unpaid
        let running: Vec<(u64, usize)> = self
            .deps
            .values()
            .filter(|d| d.job.is_some())
            .filter_map(|d| d.active_since.map(|a| (end - a, d.gpus.len())))
            .collect();
        for (secs, gpus) in running {
            self.stats.busy_gpu_s += (secs * gpus as u64) as f64;
        }
        Ok(self.finish())
    }

    fn advance(&mut self, t: u64) {
        if t > self.now {
            self.now = t;
        }
        let dt = self.now - self.stats.last_allocation_change;
        self.stats.allocated_gpu_s += (dt as f64) * self.stats.allocated_gpus as f64;
        self.stats.last_allocation_change = self.now;
    }

    fn chute_of(&self, chute_id: &str) -> Result<usize, SimError> {
        self.chute_index.get(chute_id).copied().ok_or_else(|| {
            SimError::Trace(format!("an event names chute {chute_id}, which the trace does not list"))
        })
    }

    fn server_of(&self, server_id: &str) -> Result<usize, SimError> {
        self.server_index.get(server_id).copied().ok_or_else(|| {
            SimError::Trace(format!("an event names server {server_id}, which the trace does not list"))
        })
    }

    /// A trace event; `index` is its position in `trace.events`.
    fn on_record(&mut self, r: &Record, index: usize) -> Result<(), SimError> {
        match r {
            Record::Header(_) | Record::Server(_) | Record::Chute(_) => {}
            Record::Demand { chute_id, load, .. } => {
                let c = self.chute_of(chute_id)?;
                self.accrue(c);
                self.chutes[c].load = load.max(0.0);
                self.dirty[c] = true;
            }
            Record::Others { chute_id, instances, compute_multiplier, .. } => {
                let c = self.chute_of(chute_id)?;
                self.accrue(c);
                let rt = &mut self.chutes[c];
                rt.others = *instances;
                rt.others_multiplier = *compute_multiplier;
                if *instances > 0 {
                    rt.bounty = None; // another miner is serving it: the bounty is theirs
                }
                self.dirty[c] = true;
                self.sync_instances(c);
            }
            Record::Bounty { chute_id, bounty, .. } => {
                let c = self.chute_of(chute_id)?;
                let rt = &mut self.chutes[c];
                if rt.others == 0 && rt.ours.is_empty() {
                    rt.bounty = Some((*bounty, self.now));
                    self.dirty[c] = true;
                    self.push(self.now + self.vm.bounty_window_s, Internal::BountyExpire(c, self.now));
                    if self.chutes[c].created {
                        self.refresh(c);
                        self.on_bounty(c);
                    }
                }
            }
            Record::Job { job_id, chute_id, duration_s, compute_multiplier, disk_gb, excluded, .. } => {
                let c = self.chute_of(chute_id)?;
                if *excluded {
                    return Ok(()); // Gepetto drops excluded offers before asking the strategy
                }
                if !self.chutes[c].created {
                    // Its chute appears later this second (trace events sort first).
                    if self.trace.chutes[c].created_s == self.now {
                        self.push(self.now, Internal::Offer(index));
                    }
                    return Ok(());
                }
                self.on_job(c, job_id, *duration_s, *compute_multiplier, *disk_gb);
            }
            Record::Updating { chute_id, until, .. } => {
                let c = self.chute_of(chute_id)?;
                self.chutes[c].updating_until = *until;
                self.dirty[c] = true;
            }
            Record::ServerRemoved { server_id, .. } => {
                let s = self.server_of(server_id)?;
                self.on_removed(s);
            }
            Record::NodeFailure { server_id, down_s, .. } => {
                let s = self.server_of(server_id)?;
                self.on_failure(s, *down_s);
            }
        }
        Ok(())
    }

    fn on_internal(&mut self, e: Internal) {
        match e {
            Internal::Ready(seq) => self.on_ready(seq),
            Internal::JobDone(seq) => {
                if let Some(d) = self.deps.get(&seq)
                    && let (Some(job), Some(since)) = (&d.job, d.active_since)
                {
                    self.stats.value_jobs += job.duration_s as f64 * job.multiplier;
                    self.stats.busy_gpu_s += ((self.now - since) * d.gpus.len() as u64) as f64;
                    self.stats.jobs_completed += 1;
                    self.remove(seq, false);
                }
            }
            Internal::Offer(index) => {
                let trace = self.trace;
                if let Some(Record::Job { chute_id, job_id, duration_s, compute_multiplier, disk_gb, .. }) =
                    trace.events.get(index)
                    && let Some(&c) = self.chute_index.get(chute_id)
                    && self.chutes[c].created
                {
                    self.on_job(c, job_id, *duration_s, *compute_multiplier, *disk_gb);
                }
            }
            Internal::Recover(s) => {
                if self.now >= self.servers[s].down_until {
                    for g in &mut self.fleet.servers[s].gpus {
                        g.verified = true;
                    }
                }
            }
            Internal::BountyExpire(c, posted) => {
                if self.chutes[c].bounty.is_some_and(|(_, p)| p == posted) {
                    self.chutes[c].bounty = None;
                    self.dirty[c] = true;
                }
            }
            Internal::Create(c) => self.on_create(c),
            Internal::Tick => self.on_tick(),
            Internal::Sample => {
                let v = self.value_so_far();
                self.stats.series.push((self.now, v));
            }
            Internal::LastDay => {
                self.stats.value_before_last_day = self.value_so_far();
                for d in self.deps.values_mut() {
                    d.earned_before_last_day = d.earned;
                }
            }
        }
    }

    /// Books our instances' compute since the chute's last change.
    fn accrue(&mut self, c: usize) {
        let now = self.now;
        let rt = &mut self.chutes[c];
        let from = rt.last_accrual;
        rt.last_accrual = now;
        if now <= from {
            return;
        }
        let n = rt.others as f64 + rt.ours.len() as f64;
        // the validator's metrics window, bucket by bucket
        let mut t = from;
        while t < now {
            let bucket = t / WINDOW_BUCKET_S;
            let upto = ((bucket + 1) * WINDOW_BUCKET_S).min(now);
            if bucket != rt.window_bucket {
                for b in (rt.window_bucket + 1)..=bucket.min(rt.window_bucket + 4) {
                    rt.window[(b % 4) as usize] = [0.0; 3];
                }
                rt.window_bucket = bucket;
            }
            let dt = (upto - t) as f64;
            let w = &mut rt.window[(bucket % 4) as usize];
            w[0] += rt.load.min(n) * dt;
            w[1] += (rt.load - n).max(0.0) * dt;
            w[2] += n * dt;
            t = upto;
        }
        if rt.ours.is_empty() {
            return;
        }
        let dt = (now - from) as f64;
        let u = (rt.load / n).min(1.0);
        let multipliers: f64 = rt.ours.iter().map(|(_, m)| m).sum();
        let spec = &self.trace.chutes[c];
        let base = spec.compute_multiplier;
        match self.vm.scoring {
            Scoring::BusyTime => {
                self.stats.value_compute += u * multipliers * dt;
                self.stats.value_compute_at_base += u * rt.ours.len() as f64 * base * dt;
            }
            Scoring::Lifetime => {
                self.stats.value_compute += multipliers * dt;
                self.stats.value_compute_at_base += rt.ours.len() as f64 * base * dt;
                for (seq, m) in &rt.ours {
                    if let Some(d) = self.deps.get_mut(seq) {
                        d.earned += m * dt;
                        d.earned_base += base * dt;
                    }
                }
            }
        }
        let gpus = spec.gpu_count as f64;
        self.stats.busy_gpu_s += u * rt.ours.len() as f64 * gpus * dt;
    }

    /// The validator's `effective_compute_multiplier` now.
    fn effective_multiplier(&self, c: usize) -> f64 {
        let bounty = match self.chutes[c].bounty {
            Some((_, posted)) => {
                let hours = (self.now - posted) as f64 / 3600.0;
                1.0 + (self.vm.bounty_bonus_per_hour * hours).min(self.vm.bounty_bonus_cap)
            }
            None => 1.0,
        };
        self.multiplier_without_bounty(c) * bounty
    }

    /// The effective multiplier less its bounty bonus: base × private × urgency (what
    /// active instances drift toward).
    fn multiplier_without_bounty(&self, c: usize) -> f64 {
        let spec = &self.trace.chutes[c];
        let rt = &self.chutes[c];
        let n = rt.others as f64 + rt.ours.len() as f64;
        let unmet = (rt.load - n).max(0.0);
        let urgency = 1.0 + self.vm.urgency_bonus * (unmet / rt.load.max(1e-9)).min(1.0);
        let private = if spec.preemptible { 1.0 } else { self.vm.private_bonus };
        spec.compute_multiplier * private * urgency
    }

    /// `multiplier_drift_s`: moves our instances' multipliers toward what the chute pays
    /// now, booking the time before at the old ones. As chutes-api's
    /// `refresh_instance_compute_multipliers`, each run blends what the instance is paid
    /// now (not what it activated with) with weight `t²`, so the old multiplier's share
    /// is the product of `1 − t²` over the runs of the ramp.
    fn drift(&mut self, c: usize) {
        let Some([hold, full]) = self.vm.multiplier_drift_s else { return };
        if self.chutes[c].ours.is_empty() {
            return;
        }
        self.accrue(c);
        let target = self.multiplier_without_bounty(c);
        let ramp = full.saturating_sub(hold).max(1) as f64;
        let now = self.now;
        let rt = &mut self.chutes[c];
        let mut moved = false;
        for (seq, m) in &mut rt.ours {
            let Some(d) = self.deps.get(seq) else { continue };
            let Some(since) = d.active_since else { continue };
            let age = now.saturating_sub(since);
            if age <= hold {
                continue;
            }
            let t = ((age - hold) as f64 / ramp).min(1.0);
            let blend = t * t;
            let paid = *m * (1.0 - blend) + target * blend;
            moved |= paid != *m;
            *m = paid;
        }
        if moved {
            self.sync_instances(c); // the view's active_instances show what is paid now
        }
    }

    /// Instances the validator wants for the chute now.
    fn needed(&self, c: usize) -> usize {
        let rt = &self.chutes[c];
        let by_load = (rt.load / self.vm.target_utilisation.max(1e-3)).ceil() as usize;
        by_load.max(usize::from(rt.bounty.is_some()))
    }

    fn active_total(&self, c: usize) -> usize {
        self.chutes[c].others as usize + self.chutes[c].ours.len()
    }

    /// Rewrites the chute's entries of the validator view: metrics (the last hour,
    /// approximated by the current rates), multiplier, capped flag.
    fn refresh(&mut self, c: usize) {
        self.dirty[c] = false;
        self.accrue(c);
        let spec = &self.trace.chutes[c];
        if !self.chutes[c].created {
            return;
        }
        let ecm = self.effective_multiplier(c);
        let n = self.active_total(c);
        let capped = self.now < self.chutes[c].updating_until || n >= self.needed(c);
        let rt = &self.chutes[c];
        if let Some(info) = self.view.chutes.get_mut(&spec.chute_id) {
            info.effective_compute_multiplier = Some(ecm);
        }
        if capped {
            self.view.capped.insert(spec.chute_id.clone());
        } else {
            self.view.capped.remove(&spec.chute_id);
        }
        // `/miner/metrics/` covers the last hour: the window's buckets, scaled to an hour
        let covered = (self.now - self.now.saturating_sub(3 * WINDOW_BUCKET_S + self.now % WINDOW_BUCKET_S))
            .max(1) as f64;
        let sums = rt.window.iter().fold([0.0; 3], |a, w| [a[0] + w[0], a[1] + w[1], a[2] + w[2]]);
        let scale = 3600.0 / covered;
        let (served, unmet) = (sums[0] * scale, sums[1] * scale);
        if served <= 0.0 && unmet <= 0.0 {
            self.view.metrics.remove(&spec.chute_id); // no recent traffic: not listed
            return;
        }
        let per_invocation = spec.invocation_s.max(1e-3);
        let m = self
            .view
            .metrics
            .entry(spec.chute_id.clone())
            .or_insert_with(|| RemoteMetrics { chute_id: spec.chute_id.clone(), ..Default::default() });
        m.total_compute_time = served;
        m.total_invocations = served / per_invocation;
        m.rate_limit_count = unmet / per_invocation;
        m.instance_count = (sums[2] / covered).round() as i64;
        m.compute_multiplier = Some(spec.compute_multiplier);
        m.total_usage_usd = Some(served * spec.compute_multiplier * USD_PER_COMPUTE_SECOND);
    }

    /// Rewrites `active_instances` of the chute (other miners' first, then ours).
    fn sync_instances(&mut self, c: usize) {
        let spec = &self.trace.chutes[c];
        let rt = &self.chutes[c];
        let list = self.view.active_instances.entry(spec.chute_id.clone()).or_default();
        list.clear();
        for k in 0..rt.others {
            list.push(ActiveInstance {
                chute_id: spec.chute_id.clone(),
                instance_id: format!("other-{k}"),
                compute_multiplier: Some(rt.others_multiplier),
            });
        }
        for (seq, m) in &rt.ours {
            if let Some(d) = self.deps.get(seq) {
                list.push(ActiveInstance {
                    chute_id: spec.chute_id.clone(),
                    instance_id: d.instance_id.clone(),
                    compute_multiplier: Some(*m),
                });
            }
        }
    }

    fn chute_snap(&self, c: usize) -> Option<ChuteSnap> {
        self.fleet.chutes.get(&self.trace.chutes[c].chute_id).cloned()
    }

    fn on_create(&mut self, c: usize) {
        let spec = &self.trace.chutes[c];
        self.chutes[c].created = true;
        self.chutes[c].last_accrual = self.now;
        if self.now == 0 {
            // A chute there when the trace starts has been served before it: the
            // validator's metrics window starts with its load and other miners'
            // instances (one second's worth, scaled to the hour like any window).
            let rt = &mut self.chutes[c];
            let n = f64::from(rt.others);
            rt.window[0] = [rt.load.min(n), (rt.load - n).max(0.0), n];
        }
        let snap = ChuteSnap {
            chute_id: spec.chute_id.clone(),
            validator: VALIDATOR.into(),
            version: VERSION.into(),
            supported_gpus: spec.supported_gpus.clone(),
            gpu_count: spec.gpu_count,
            banned: false,
            preemptible: spec.preemptible,
            chutes_version: Some("0.3.40".into()),
        };
        self.fleet.chutes.insert(spec.chute_id.clone(), snap.clone());
        self.view.chutes.insert(
            spec.chute_id.clone(),
            RemoteChuteInfo {
                version: VERSION.into(),
                has_cords: !spec.job_only,
                effective_compute_multiplier: None,
            },
        );
        self.sync_instances(c);
        self.refresh(c);
        if spec.job_only {
            return;
        }
        // chute_created: deploy one instance right away if the strategy says so
        if self.strategy.deploy_on_create(&snap, &self.fleet, &self.view)
            && let Some(server) = self.strategy.scale_up_server(&snap, &self.fleet, self.vm.default_disk_gb)
        {
            self.launch(c, &server, None);
        }
        if self.chutes[c].bounty.is_some() {
            self.on_bounty(c);
        }
    }

    /// bounty_change: claim it by deploying, or by preempting when the strategy
    /// says so (the controller's order).
    fn on_bounty(&mut self, c: usize) {
        let Some(snap) = self.chute_snap(c) else { return };
        if self.trace.chutes[c].job_only || !self.strategy.claim_bounty(&snap, &self.fleet, &self.view) {
            return;
        }
        if let Some(server) = self.strategy.scale_up_server(&snap, &self.fleet, self.vm.default_disk_gb) {
            self.launch(c, &server, None);
            return;
        }
        if self.strategy.claim_bounty(&snap, &self.fleet, &self.view) {
            self.preempt_and_launch(c, None);
        }
    }

    fn on_job(&mut self, c: usize, job_id: &str, duration_s: u64, multiplier: f64, disk_gb: f64) {
        let Some(snap) = self.chute_snap(c) else { return };
        let offer = JobOffer {
            job_id: job_id.to_owned(),
            chute_id: snap.chute_id.clone(),
            exclude: Vec::new(),
            disk_gb,
        };
        let won = hash_unit(self.trace.header.seed, &[key(job_id)]) < self.vm.job_win_probability;
        let run = JobRun { duration_s, multiplier };
        match self.strategy.accept_job(&offer, &self.trace.header.miner, &snap, &self.fleet) {
            JobDecision::Deploy { server_id } => {
                if won {
                    self.launch(c, &server_id, Some(run));
                } else {
                    self.stats.jobs_lost_race += 1;
                }
            }
            JobDecision::Preempt => {
                if won {
                    self.preempt_and_launch(c, Some(run));
                } else {
                    self.stats.jobs_lost_race += 1;
                }
            }
            JobDecision::Refuse { .. } => self.stats.jobs_refused += 1,
        }
    }

    /// The launch-config answer for a non-job launch: 423 while the chute is
    /// updating, when active plus launching instances already meet the need, and
    /// at random (`refusal_probability`, the same draw for every strategy).
    fn refused(&self, c: usize) -> bool {
        let rt = &self.chutes[c];
        if self.now < rt.updating_until {
            return true;
        }
        if self.active_total(c) + rt.launching as usize >= self.needed(c) {
            return true;
        }
        let draw = hash_unit(self.trace.header.seed, &[key(&self.trace.chutes[c].chute_id), self.now]);
        draw < self.vm.refusal_probability
    }

    /// Indices of the server's GPUs the chute could take (verified, free, supported),
    /// at most its GPU count.
    fn free_gpus(&self, s: usize, c: usize) -> Vec<usize> {
        let spec = &self.trace.chutes[c];
        self.fleet.servers[s]
            .gpus
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                g.verified && g.deployment_id.is_none() && spec.supported_gpus.contains(&g.model)
            })
            .map(|(i, _)| i)
            .take(spec.gpu_count)
            .collect()
    }

    /// Gepetto's deploy on `server`: allocate, ask for the launch config (a 423
    /// undoes it), start the pod (a node without the disk fails it). Returns whether
    /// the placement was made (what the controller's `scale_up` reports), even if
    /// the launch then failed.
    fn launch(&mut self, c: usize, server_id: &str, job: Option<JobRun>) -> bool {
        let Some(&s) = self.server_index.get(server_id) else { return false };
        let free = self.free_gpus(s, c);
        if free.len() < self.trace.chutes[c].gpu_count || self.fleet.servers[s].locked {
            return false;
        }
        if job.is_none() && self.refused(c) {
            self.stats.refusals += 1;
            return true;
        }
        self.place(c, s, free, job);
        true
    }

    fn place(&mut self, c: usize, s: usize, gpus: Vec<usize>, job: Option<JobRun>) {
        let spec = &self.trace.chutes[c];
        let disk = spec.disk_gb();
        if self.servers[s].disk_free < disk {
            self.stats.failed_launches += 1; // Kubernetes cannot fit the pod's ephemeral storage
            return;
        }
        self.stats.launches += 1;
        self.placed += 1;
        let seq = self.placed;
        let deployment_id = format!("dep-{seq:07}");
        let instance_id = format!("inst-{seq:07}");
        // image pull and model download unless the node has them, then verification
        let rt = &mut self.servers[s];
        let pull = if rt.cache.contains_key(&c) {
            0.0
        } else {
            (spec.image_gb + spec.model_gb) * 8.0 / rt.bandwidth_gbps
        };
        rt.cache.insert(c, self.now);
        let cache_cap = rt.disk_gb * 0.5;
        let mut cached: f64 = rt.cache.keys().map(|k| self.trace.chutes[*k].disk_gb()).sum();
        while cached > cache_cap {
            let Some((&oldest, _)) =
                rt.cache.iter().filter(|(k, _)| **k != c).min_by_key(|(k, t)| (**t, **k))
            else {
                break;
            };
            rt.cache.remove(&oldest);
            cached -= self.trace.chutes[oldest].disk_gb();
        }
        rt.disk_free -= disk;
        self.fleet.servers[s].disk_available_gb = Some(rt.disk_free);
        let [lo, hi] = self.vm.verification_s;
        let verify =
            lo as f64 + (hi.saturating_sub(lo)) as f64 * hash_unit(self.trace.header.seed, &[seq, 7]);
        let ready = self.now + (pull + verify).ceil() as u64;
        for &g in &gpus {
            self.fleet.servers[s].gpus[g].deployment_id = Some(deployment_id.clone());
        }
        self.stats.allocated_gpus += gpus.len();
        let at = self.at(self.now);
        self.fleet.deployments.push(DeploymentSnap {
            deployment_id: deployment_id.clone(),
            chute_id: spec.chute_id.clone(),
            version: VERSION.into(),
            validator: VALIDATOR.into(),
            server_id: self.fleet.servers[s].server_id.clone(),
            gpu_count: gpus.len(),
            job_id: job.as_ref().map(|_| format!("job-of-{deployment_id}")),
            instance_id: Some(instance_id.clone()),
            active: false,
            stub: false,
            verified_at: None,
            activated_at: None,
            created_at: Some(at),
            preemptible: spec.preemptible,
        });
        if job.is_none() {
            self.chutes[c].launching += 1;
        }
        self.dep_index.insert(deployment_id.clone(), seq);
        self.deps.insert(
            seq,
            Dep {
                deployment_id,
                instance_id,
                chute: c,
                server: s,
                gpus,
                job,
                launched: self.now,
                active_since: None,
                multiplier: 0.0,
                disk_gb: disk,
                earned: 0.0,
                earned_base: 0.0,
                earned_before_last_day: 0.0,
            },
        );
        self.push(ready, Internal::Ready(seq));
    }

    fn on_ready(&mut self, seq: u64) {
        let Some(d) = self.deps.get(&seq) else { return }; // removed while starting
        let c = d.chute;
        let is_job = d.job.is_some();
        let deployment_id = d.deployment_id.clone();
        let at = self.at(self.now);
        if let Some(snap) = self.fleet.deployments.iter_mut().find(|x| x.deployment_id == deployment_id) {
            snap.active = true;
            snap.activated_at = Some(at);
            snap.verified_at = Some(at);
        }
        if is_job {
            let duration = self.deps.get(&seq).and_then(|d| d.job.as_ref()).map_or(0, |j| j.duration_s);
            if let Some(d) = self.deps.get_mut(&seq) {
                d.active_since = Some(self.now);
            }
            self.push(self.now + duration, Internal::JobDone(seq));
            return;
        }
        self.accrue(c);
        let multiplier = self.effective_multiplier(c);
        let first_anywhere = self.active_total(c) == 0;
        let base = self.trace.chutes[c].compute_multiplier;
        let lifetime = self.vm.scoring == Scoring::Lifetime;
        let now = self.now;
        if let Some(d) = self.deps.get_mut(&seq) {
            d.active_since = Some(now);
            d.multiplier = multiplier;
            if lifetime {
                // the start-up, paid at 0.3x once the instance activates
                let startup = (now - d.launched) as f64 * STARTUP_RATE;
                d.earned = startup * multiplier;
                d.earned_base = startup * base;
                self.stats.value_compute += d.earned;
                self.stats.value_compute_at_base += d.earned_base;
            }
        }
        let rt = &mut self.chutes[c];
        rt.launching = rt.launching.saturating_sub(1);
        rt.ours.push((seq, multiplier));
        if first_anywhere && let Some((amount, _)) = rt.bounty.take() {
            self.stats.value_bounties += amount;
            self.stats.bounties_claimed += 1;
        }
        self.dirty[c] = true;
        self.sync_instances(c);
    }

    /// Undeploys and returns the removed deployment. `cut_short`: the miner's side ended
    /// it (a preemption, a node failure, a server leaving) rather than the validator or
    /// a finished job; a job's GPUs count as busy until now, and under lifetime scoring
    /// an instance younger than an hour is not paid.
    fn remove(&mut self, seq: u64, cut_short: bool) -> Option<Dep> {
        let instance =
            self.deps.get(&seq).filter(|d| d.job.is_none()).and_then(|d| Some((d.chute, d.active_since?)));
        if let Some((c, since)) = instance {
            self.accrue(c); // book its time up to now before it leaves
            if cut_short && self.vm.scoring == Scoring::Lifetime && self.now - since < LIFETIME_MIN_S {
                // not paid at all: deleted within an hour of activation, not by the validator
                if let Some(d) = self.deps.get(&seq) {
                    self.stats.value_compute -= d.earned;
                    self.stats.value_compute_at_base -= d.earned_base;
                    // each window gives back what was earned in it
                    self.stats.value_before_last_day -= d.earned_before_last_day;
                }
            }
        }
        let d = self.deps.remove(&seq)?;
        self.dep_index.remove(&d.deployment_id);
        let c = d.chute;
        for &g in &d.gpus {
            self.fleet.servers[d.server].gpus[g].deployment_id = None;
        }
        self.stats.allocated_gpus -= d.gpus.len();
        self.servers[d.server].disk_free += d.disk_gb;
        self.fleet.servers[d.server].disk_available_gb = Some(self.servers[d.server].disk_free);
        if let Some(i) = self.fleet.deployments.iter().position(|x| x.deployment_id == d.deployment_id) {
            self.fleet.deployments.remove(i);
        }
        if d.job.is_some() {
            if cut_short && let Some(since) = d.active_since {
                self.stats.busy_gpu_s += ((self.now - since) * d.gpus.len() as u64) as f64;
            }
        } else if d.active_since.is_some() {
            // booked up to now above, before it left `deps`
            self.chutes[c].ours.retain(|(s, _)| *s != seq);
            self.dirty[c] = true;
            self.sync_instances(c);
        } else {
            let rt = &mut self.chutes[c];
            rt.launching = rt.launching.saturating_sub(1);
        }
        Some(d)
    }

    fn last_invocations(&self) -> LastInvocations {
        // A chute with traffic was invoked just now; one without, a day ago.
        self.chutes
            .iter()
            .enumerate()
            .filter(|(_, rt)| rt.created)
            .map(|(c, rt)| {
                let t = if rt.load > 0.0 { self.now } else { self.now.saturating_sub(86_400) };
                (self.trace.chutes[c].chute_id.clone(), self.at(t))
            })
            .collect()
    }

    /// Gepetto's preempting deploy: the launch config first (a job's race or a 423
    /// means nothing is removed), then the victims, then the deploy.
    fn preempt_and_launch(&mut self, c: usize, job: Option<JobRun>) {
        let Some(snap) = self.chute_snap(c) else { return };
        for c in 0..self.chutes.len() {
            if self.dirty[c] {
                self.refresh(c);
            }
        }
        let disk = self.vm.default_disk_gb;
        let now = self.at(self.now);
        let last = self.last_invocations();
        let Some(plan) = self.strategy.preempt(&snap, &self.fleet, &self.view, &last, now, disk) else {
            return;
        };
        self.carry_out(c, plan, job);
    }

    /// A preempting deploy as the controller runs it: the launch config first (a 423
    /// removes nothing), then the victims, then the deploy.
    fn carry_out(&mut self, c: usize, plan: miner_gepetto::strategy::Preemption, job: Option<JobRun>) {
        if job.is_none() && self.refused(c) {
            self.stats.refusals += 1;
            return;
        }
        for victim in &plan.victims {
            let Some(&seq) = self.dep_index.get(victim) else { continue };
            let Some(d) = self.deps.get(&seq) else { continue };
            let (vc, since, launched, gpus, multiplier, server) =
                (d.chute, d.active_since, d.launched, d.gpus.len(), d.multiplier, d.server);
            if let Some(since) = since {
                let rt = &self.chutes[vc];
                let n = (rt.others as usize + rt.ours.len()).max(1) as f64;
                // paid for its busy time, or (lifetime scoring) for being there
                let paid = match self.vm.scoring {
                    Scoring::BusyTime => (rt.load / n).min(1.0),
                    Scoring::Lifetime => 1.0,
                };
                // what the victim would have earned in the next hour at its current rate
                let multiplier = rt.ours.iter().find(|(s, _)| *s == seq).map_or(multiplier, |(_, m)| *m);
                self.stats.preemption_value_lost += paid * multiplier * 3600.0;
                // the warm-up it had cost, now thrown away
                self.stats.preemption_sunk_usd +=
                    (since - launched) as f64 / 3600.0 * gpus as f64 * self.trace.servers[server].hourly_cost;
            }
            self.stats.preemptions += 1;
            self.remove(seq, true);
        }
        let Some(&server) = self.server_index.get(&plan.server_id) else { return };
        let free = self.free_gpus(server, c);
        if free.len() < self.trace.chutes[c].gpu_count {
            self.stats.failed_launches += 1;
            return;
        }
        self.place(c, server, free, job);
    }

    /// The server leaves for good: its deployments end, its GPUs are never usable again.
    fn on_removed(&mut self, s: usize) {
        if self.servers[s].removed_at.is_some() {
            return;
        }
        self.servers[s].removed_at = Some(self.now);
        self.take_down(s, u64::MAX);
    }

    fn on_failure(&mut self, s: usize, down_s: u64) {
        let until = self.now + down_s;
        self.stats.lost_to_failures += self.take_down(s, until);
        self.push(until, Internal::Recover(s));
    }

    /// The server is unusable until `until`: every deployment on it ends and its GPUs
    /// are unverified. Returns how many deployments ended.
    fn take_down(&mut self, s: usize, until: u64) -> u64 {
        self.servers[s].down_until = self.servers[s].down_until.max(until);
        let ended: Vec<u64> = self.deps.iter().filter(|(_, d)| d.server == s).map(|(k, _)| *k).collect();
        for &seq in &ended {
            self.remove(seq, true);
        }
        for g in &mut self.fleet.servers[s].gpus {
            g.verified = false;
        }
        ended.len() as u64
    }

    fn on_tick(&mut self) {
        if self.now % DRIFT_S < self.vm.autoscale_s.max(1) {
            for c in 0..self.chutes.len() {
                self.drift(c);
            }
        }
        // The validator's own scale-down of under-used chutes (instance_deleted).
        for c in 0..self.chutes.len() {
            let rt = &self.chutes[c];
            if rt.ours.is_empty() || self.now < rt.last_scale_down + self.vm.scale_down_interval_s {
                continue;
            }
            let n = self.active_total(c);
            if n <= 1 || rt.load / n as f64 >= self.vm.min_utilisation {
                continue;
            }
            self.chutes[c].last_scale_down = self.now;
            let pick = hash_unit(self.trace.header.seed, &[key(&self.trace.chutes[c].chute_id), self.now, 3]);
            let k = (pick * n as f64) as usize;
            if let Some(&(seq, _)) = self.chutes[c].ours.get(k) {
                self.stats.validator_removals += 1;
                self.remove(seq, false);
            }
        }
        let window_moved = self.now % WINDOW_BUCKET_S < self.vm.autoscale_s.max(1);
        for c in 0..self.chutes.len() {
            if window_moved || self.dirty[c] || self.chutes[c].bounty.is_some() {
                self.refresh(c);
            }
        }
        let any_free = self
            .fleet
            .servers
            .iter()
            .any(|s| !s.locked && s.gpus.iter().any(|g| g.verified && g.deployment_id.is_none()));
        if !(any_free && self.autoscale()) {
            self.rebalance();
        }
    }

    /// Gepetto's rebalance after an autoscaler tick that placed nothing.
    fn rebalance(&mut self) {
        let now = self.at(self.now);
        let Some(r) = self.strategy.rebalance(&self.fleet, &self.view, now, self.vm.default_disk_gb) else {
            return;
        };
        let Some(&c) = self.chute_index.get(&r.chute_id) else { return };
        self.stats.rebalances += 1;
        self.carry_out(c, r.plan, None);
    }

    /// One autoscaler tick; true when it placed (or tried to place) an instance.
    fn autoscale(&mut self) -> bool {
        self.stats.autoscale_calls += 1;
        let candidates = self.strategy.autoscale(&self.fleet, &self.view, self.vm.default_disk_gb);
        let mode = self.strategy.autoscale_mode();
        for cand in candidates {
            let Some(&c) = self.chute_index.get(&cand.chute_id) else { continue };
            // the controller's scale_up: the hinted server if it still fits, else the strategy's choice
            let Some(snap) = self.chute_snap(c) else { continue };
            let disk = self.vm.default_disk_gb;
            let server = self
                .fleet
                .server(&cand.server_id)
                .filter(|s| {
                    !s.locked && s.free_gpus(&snap.supported_gpus) >= snap.gpu_count && s.has_disk(disk)
                })
                .map(|s| s.server_id.clone())
                .or_else(|| self.strategy.scale_up_server(&snap, &self.fleet, disk));
            if let Some(server) = server
                && self.launch(c, &server, None)
            {
                return true; // one scale-up per tick
            }
            if mode == miner_gepetto::strategy::AutoscaleMode::BestOnly {
                return false;
            }
        }
        false
    }

    /// Value earned up to now (compute booked to this second), in CU-seconds.
    fn value_so_far(&mut self) -> f64 {
        for c in 0..self.chutes.len() {
            self.accrue(c);
        }
        self.stats.value_compute + self.stats.value_bounties + self.stats.value_jobs
    }

    fn finish(self) -> StrategyResult {
        let st = self.stats;
        let end = self.trace.header.duration_s;
        // A server costs, and offers GPU-hours, from when it joined until it left.
        let hours_from = |from: u64| -> Vec<f64> {
            self.trace
                .servers
                .iter()
                .zip(&self.servers)
                .map(|(s, rt)| {
                    let left = rt.removed_at.unwrap_or(end).min(end);
                    left.saturating_sub(s.added_s.max(from)) as f64 / 3600.0
                })
                .collect()
        };
        let cost_of = |hours: &[f64]| -> f64 {
            self.trace.servers.iter().zip(hours).map(|(s, h)| s.gpus as f64 * s.hourly_cost * h).sum()
        };
        let hours = hours_from(0);
        let cost = cost_of(&hours);
        let value = (st.value_compute + st.value_bounties + st.value_jobs) / 3600.0;
        // The last day: what was earned in it over what the servers there cost in it.
        let last_day_cost = cost_of(&hours_from(end.saturating_sub(LAST_DAY_S)));
        let last_day_value = value - st.value_before_last_day / 3600.0;
        let gpu_hours: f64 = self.trace.servers.iter().zip(&hours).map(|(s, h)| s.gpus as f64 * h).sum();
        let busy = st.busy_gpu_s / 3600.0;
        StrategyResult {
            strategy: self.strategy.name().to_owned(),
            value,
            value_compute: st.value_compute / 3600.0,
            value_bounties: st.value_bounties / 3600.0,
            value_jobs: st.value_jobs / 3600.0,
            multiplier_bonus: if st.value_compute_at_base > 0.0 {
                st.value_compute / st.value_compute_at_base
            } else {
                0.0
            },
            cost_usd: cost,
            value_per_dollar: if cost > 0.0 { value / cost } else { 0.0 },
            last_day_value_per_dollar: if last_day_cost > 0.0 { last_day_value / last_day_cost } else { 0.0 },
            gpu_hours,
            busy_gpu_hours: busy,
            allocated_gpu_hours: st.allocated_gpu_s / 3600.0,
            idle_gpu_hours: gpu_hours - busy,
            utilisation: if gpu_hours > 0.0 { busy / gpu_hours } else { 0.0 },
            launches: st.launches,
            refusals_423: st.refusals,
            failed_launches: st.failed_launches,
            validator_removals: st.validator_removals,
            lost_to_node_failures: st.lost_to_failures,
            preemptions: st.preemptions,
            preemption_value_lost: st.preemption_value_lost / 3600.0,
            preemption_sunk_usd: st.preemption_sunk_usd,
            jobs_completed: st.jobs_completed,
            jobs_refused: st.jobs_refused,
            jobs_lost_race: st.jobs_lost_race,
            bounties_claimed: st.bounties_claimed,
            autoscale_calls: st.autoscale_calls,
            rebalances: st.rebalances,
            series: st.series.iter().map(|(t, v)| (*t as f64 / 3600.0, v / 3600.0)).collect(),
        }
    }
}
