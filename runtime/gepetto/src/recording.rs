//! Recording this miner's week as a trace `minerctl simulate --trace` replays
//! (`GEPETTO_RECORD_TRACE`; format in the `miner-trace` crate, rules in the
//! simulator README's "Recording from Gepetto").
//!
//! The controller and the loops tell [`Recording`] what they saw; it decides what is
//! new enough to write. Writing never fails an event or a tick: a recording that
//! cannot be written says so once and stops, because a trace with holes would score
//! strategies on a week that did not happen.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;
use miner_events::payloads as ev;
use miner_k8s::DiskUsage;
use miner_trace::{Chute, Record, Recorder, Server, TraceError, ValidatorModel, others_from_active};
use miner_validator::rest::{RemoteChute, RemoteMetrics};

use crate::snapshot::{FleetSnapshot, ValidatorView};

/// What the validator's listings do not say, written as these guesses (the
/// simulator README lists them): a node's download speed, Gbit/s ...
pub const ASSUMED_BANDWIDTH_GBPS: f64 = 5.0;
/// ... a chute's image and model sizes (the generator's means) ...
pub const ASSUMED_IMAGE_GB: f64 = 15.0;
pub const ASSUMED_MODEL_GB_PER_GPU: f64 = 25.0;
/// ... and the compute time of one invocation before any ran.
pub const ASSUMED_INVOCATION_S: f64 = 5.0;

/// A server or chute first seen this soon after the recording started was there from
/// the start (the first listing and tick come seconds in), and is written at 0: a
/// replay gives chutes there at 0 the metrics history they had, and a later time would
/// make them new chutes with none. Later ones appeared then.
const FROM_THE_START_S: u64 = 60;

/// Demand is written again when it moves by more than this share (or 0.01
/// instances): the validator's figures cover the last hour and drift every tick.
const DEMAND_STEP: f64 = 0.05;

/// `now`, or 0 within the recording's first minute. The validator's figures seen then
/// are the state at the start: a replay must have them before it creates the chutes
/// there at 0 (their metrics history is built from them).
fn at_start(now: u64) -> u64 {
    if now <= FROM_THE_START_S { 0 } else { now }
}

/// A `bounty_change` repeating the last amount this soon is a redelivery.
const BOUNTY_REPEAT_S: u64 = 3600;

/// A job offer waiting for its end: the trace's job line carries the duration.
struct PendingJob {
    t: u64,
    chute_id: String,
    compute_multiplier: f64,
    disk_gb: f64,
    excluded: bool,
}

struct State<W: Write> {
    rec: Recorder<W>,
    stopped: bool,
    servers: HashSet<String>,
    /// Servers whose removal is written.
    removed: HashSet<String>,
    /// Chutes written, with the base multiplier a job on them defaults to.
    chutes: HashMap<String, f64>,
    /// Chutes seen but not written yet: their line waits for the next tick's metrics,
    /// which carry the multiplier and compute time the chute record lacks.
    pending: HashMap<String, Chute>,
    demand: HashMap<String, f64>,
    others: HashMap<String, (u32, f64)>,
    jobs: HashMap<String, PendingJob>,
    /// The last bounty written per chute, and when.
    bounties: HashMap<String, (f64, u64)>,
    /// Since when a chute has been mid-update / a server's node not Ready.
    updating: HashMap<String, u64>,
    down: HashMap<String, u64>,
}

impl<W: Write> State<W> {
    fn knows(&self, chute_id: &str) -> bool {
        self.chutes.contains_key(chute_id) || self.pending.contains_key(chute_id)
    }
}

/// An open recording (one per process), into a file (or, in tests, any writer).
pub struct Recording<W: Write = File> {
    path: PathBuf,
    state: Mutex<State<W>>,
}

impl Recording<File> {
    /// Opens (or continues, after a restart) the recording at `path` for `miner`.
    pub fn open(path: &Path, miner: &str, settings: &ValidatorModel) -> Result<Recording, TraceError> {
        let (rec, existing) = Recorder::open(path, Utc::now().timestamp(), miner, settings)?;
        Ok(Recording::resume(path, rec, existing))
    }
}

impl<W: Write> Recording<W> {
    /// A recording into `rec`, which already holds `existing` (what not to write again).
    fn resume(path: &Path, rec: Recorder<W>, existing: Option<miner_trace::Trace>) -> Recording<W> {
        let mut st = State {
            rec,
            stopped: false,
            servers: HashSet::new(),
            removed: HashSet::new(),
            chutes: HashMap::new(),
            pending: HashMap::new(),
            demand: HashMap::new(),
            others: HashMap::new(),
            jobs: HashMap::new(),
            bounties: HashMap::new(),
            updating: HashMap::new(),
            down: HashMap::new(),
        };
        if let Some(trace) = existing {
            st.servers.extend(trace.servers.into_iter().map(|s| s.server_id));
            st.chutes.extend(trace.chutes.into_iter().map(|c| (c.chute_id, c.compute_multiplier)));
            for e in trace.events {
                match e {
                    Record::Demand { chute_id, load, .. } => {
                        st.demand.insert(chute_id, load);
                    }
                    Record::Others { chute_id, instances, compute_multiplier, .. } => {
                        st.others.insert(chute_id, (instances, compute_multiplier));
                    }
                    Record::ServerRemoved { server_id, .. } => {
                        st.removed.insert(server_id);
                    }
                    Record::Bounty { t, chute_id, bounty } => {
                        st.bounties.insert(chute_id, (bounty, t));
                    }
                    _ => {}
                }
            }
        }
        Recording { path: path.to_owned(), state: Mutex::new(st) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the state unless the recording stopped; `f` returns the lines to write.
    fn with(&self, f: impl FnOnce(&mut State<W>, u64) -> Vec<Record>) {
        let Ok(mut st) = self.state.lock() else { return };
        if st.stopped {
            return;
        }
        let now = st.rec.t(Utc::now().timestamp());
        for line in f(&mut st, now) {
            if let Err(e) = st.rec.record(&line) {
                tracing::error!(path = %self.path.display(), error = %e, "trace recording stopped");
                st.stopped = true;
                return;
            }
        }
    }

    /// Servers not written yet, once their node and GPUs are known.
    /// `disk` is asked only when there is a server not written yet (it walks every pod).
    pub(crate) fn servers(&self, fleet: &FleetSnapshot, disk: impl FnOnce() -> HashMap<String, DiskUsage>) {
        self.with(|st, now| {
            let mut lines = Vec::new();
            if fleet.servers.iter().all(|s| st.servers.contains(&s.server_id)) {
                return lines;
            }
            let disk = disk();
            for s in &fleet.servers {
                let Some(usage) = disk.get(&s.name) else { continue };
                let Some(model) = most_common(s.gpus.iter().map(|g| g.model.as_str())) else { continue };
                if !st.servers.insert(s.server_id.clone()) {
                    continue;
                }
                lines.push(Record::Server(Server {
                    server_id: s.server_id.clone(),
                    gpu_model: model.to_owned(),
                    gpus: s.gpus.len(),
                    hourly_cost: s.hourly_cost,
                    disk_gb: usage.total_gib,
                    bandwidth_gbps: ASSUMED_BANDWIDTH_GBPS,
                    added_s: at_start(now),
                }));
            }
            lines
        });
    }

    /// A chute from the validator's record, the first time it is seen (written at
    /// the next [`Recording::observe`], with the validator's figures).
    pub(crate) fn chute(&self, remote: &RemoteChute) {
        let Ok(gpu_count) = usize::try_from(remote.gpu_count()) else { return };
        if gpu_count == 0 {
            return;
        }
        self.with(|st, now| {
            if !st.knows(&remote.chute_id) {
                let chute = Chute {
                    chute_id: remote.chute_id.clone(),
                    supported_gpus: remote.supported_gpus.clone(),
                    gpu_count,
                    image_gb: ASSUMED_IMAGE_GB,
                    model_gb: gpu_count as f64 * ASSUMED_MODEL_GB_PER_GPU,
                    compute_multiplier: remote.compute_multiplier.unwrap_or(gpu_count as f64),
                    invocation_s: ASSUMED_INVOCATION_S,
                    preemptible: remote.preemptible.unwrap_or(true),
                    job_only: !remote.has_cords(),
                    created_s: at_start(now),
                };
                st.pending.insert(remote.chute_id.clone(), chute);
            }
            Vec::new()
        });
    }

    /// After an autoscaler refresh: demand and other miners' instances that moved,
    /// rolling updates that ended (`updating`: chutes mid-update now) and node
    /// outages that ended (`down`: server ids whose node is not Ready now).
    pub(crate) fn observe(
        &self,
        view: &ValidatorView,
        fleet: &FleetSnapshot,
        updating: &HashSet<String>,
        down: &HashSet<String>,
    ) {
        let ours: HashSet<String> = fleet.deployments.iter().filter_map(|d| d.instance_id.clone()).collect();
        self.with(|st, now| {
            let mut lines = Vec::new();
            let mut pending: Vec<Chute> = st.pending.drain().map(|(_, c)| c).collect();
            pending.sort_by(|a, b| a.created_s.cmp(&b.created_s).then_with(|| a.chute_id.cmp(&b.chute_id)));
            for mut c in pending {
                if let Some(m) = view.metrics.get(&c.chute_id) {
                    c.compute_multiplier = m.compute_multiplier.unwrap_or(c.compute_multiplier);
                    if m.total_invocations > 0.0 {
                        c.invocation_s = m.mean_compute_s();
                    }
                }
                st.chutes.insert(c.chute_id.clone(), c.compute_multiplier);
                lines.push(Record::Chute(c));
            }
            let mut chutes: Vec<&String> = st.chutes.keys().collect();
            chutes.sort();
            let mut demand = Vec::new();
            let mut others = Vec::new();
            for id in chutes {
                // A chute the validator's metrics no longer list had no traffic in the last
                // hour: its demand is 0 from now on, not the last figure recorded.
                let load = view.metrics.get(id).map_or(0.0, RemoteMetrics::demand_instances);
                let moved = match st.demand.get(id) {
                    Some(old) => (load - old).abs() > (old * DEMAND_STEP).max(0.01),
                    None => view.metrics.contains_key(id),
                };
                if moved {
                    demand.push((id.clone(), load));
                }
                // An empty listing means an older validator without it, not a quiet network.
                if !view.active_instances.is_empty() {
                    let list = view.active_instances.get(id).map_or(&[][..], Vec::as_slice);
                    let (n, mult) = others_from_active(list, &ours);
                    let moved =
                        st.others.get(id).is_none_or(|(on, om)| *on != n || (mult - om).abs() > om * 0.01);
                    if moved {
                        others.push((id.clone(), n, mult));
                    }
                }
            }
            for (chute_id, load) in demand {
                st.demand.insert(chute_id.clone(), load);
                lines.push(Record::Demand { t: at_start(now), chute_id, load });
            }
            for (chute_id, instances, compute_multiplier) in others {
                st.others.insert(chute_id.clone(), (instances, compute_multiplier));
                lines.push(Record::Others { t: at_start(now), chute_id, instances, compute_multiplier });
            }
            for id in updating.iter().filter(|id| st.chutes.contains_key(*id)) {
                st.updating.entry(id.clone()).or_insert(now);
            }
            let ended: Vec<String> =
                st.updating.keys().filter(|id| !updating.contains(*id)).cloned().collect();
            for chute_id in ended {
                if let Some(t) = st.updating.remove(&chute_id) {
                    lines.push(Record::Updating { t, chute_id, until: now });
                }
            }
            for id in down.iter().filter(|id| st.servers.contains(*id)) {
                st.down.entry(id.clone()).or_insert(now);
            }
            let back: Vec<String> = st.down.keys().filter(|id| !down.contains(*id)).cloned().collect();
            for server_id in back {
                if let Some(t) = st.down.remove(&server_id) {
                    lines.push(Record::NodeFailure { t, server_id, down_s: now.saturating_sub(t) });
                }
            }
            lines
        });
    }

    /// `server_deleted` of a server the recording holds (once, however often delivered).
    pub(crate) fn server_removed(&self, server_id: &str) {
        self.with(|st, now| {
            if !st.servers.contains(server_id) || !st.removed.insert(server_id.to_owned()) {
                return Vec::new();
            }
            vec![Record::ServerRemoved { t: now, server_id: server_id.to_owned() }]
        });
    }

    /// `bounty_change` on a chute the recording knows. The same amount again within
    /// `BOUNTY_REPEAT_S` is the bus delivering the event again, not a new bounty (which
    /// would restart the bounty's age in a replay).
    pub(crate) fn bounty(&self, chute_id: &str, bounty: Option<f64>) {
        let bounty = bounty.unwrap_or(0.0);
        self.with(|st, now| {
            if !st.knows(chute_id) {
                return Vec::new();
            }
            if st
                .bounties
                .get(chute_id)
                .is_some_and(|(b, t)| *b == bounty && now.saturating_sub(*t) < BOUNTY_REPEAT_S)
            {
                return Vec::new();
            }
            st.bounties.insert(chute_id.to_owned(), (bounty, now));
            vec![Record::Bounty { t: now, chute_id: chute_id.to_owned(), bounty }]
        });
    }

    /// `job_created`: kept until `job_deleted` tells how long the job ran.
    pub(crate) fn job_created(&self, e: &ev::JobCreated, excluded: bool, default_disk_gb: f64) {
        self.with(|st, now| {
            let base = st.chutes.get(&e.chute_id).copied();
            if let Some(base) = base.or_else(|| st.pending.get(&e.chute_id).map(|c| c.compute_multiplier)) {
                let job = PendingJob {
                    t: now,
                    chute_id: e.chute_id.clone(),
                    compute_multiplier: e.compute_multiplier.unwrap_or(base),
                    disk_gb: e.disk_gb.map_or(default_disk_gb, f64::from),
                    excluded,
                };
                st.jobs.entry(e.job_id.clone()).or_insert(job);
            }
            Vec::new()
        });
    }

    /// `job_deleted`: the job line, with the duration the job ran.
    pub(crate) fn job_deleted(&self, job_id: &str) {
        self.with(|st, now| {
            let Some(j) = st.jobs.remove(job_id) else { return Vec::new() };
            vec![Record::Job {
                t: j.t,
                job_id: job_id.to_owned(),
                chute_id: j.chute_id,
                duration_s: now.saturating_sub(j.t),
                compute_multiplier: j.compute_multiplier,
                disk_gb: j.disk_gb,
                excluded: j.excluded,
            }]
        });
    }
}

/// The most frequent item (the first of equals in sorted order, for a stable answer).
fn most_common<'a>(items: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for i in items {
        *counts.entry(i).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts.first().map(|(m, _)| *m)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A disk that fills up after the header line: every later write fails.
    struct Full {
        header_done: bool,
        failed: Arc<AtomicUsize>,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.header_done {
                self.header_done = buf.contains(&b'\n');
                return Ok(buf.len());
            }
            self.failed.fetch_add(1, Ordering::SeqCst);
            Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device"))
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn remote(id: &str) -> RemoteChute {
        serde_json::from_value(serde_json::json!({
            "chute_id": id, "image": "u/i:1", "version": "v1", "node_selector": {"gpu_count": 1},
            "cords": [{"path": "/"}],
        }))
        .unwrap()
    }

    #[test]
    fn a_chute_the_metrics_stop_listing_is_recorded_with_no_demand() {
        let out = test_support::Captured::default();
        let rec = Recorder::start(out.clone(), 0, 0, "5Miner", &ValidatorModel::default()).unwrap();
        let r = Recording::resume(Path::new("/trace.jsonl"), rec, None);
        r.chute(&remote("a"));
        let busy: RemoteMetrics = serde_json::from_value(serde_json::json!({
            "chute_id": "a", "total_compute_time": 3600.0, "total_invocations": 10.0,
            "rate_limit_count": 0.0, "instance_count": 1,
        }))
        .unwrap();
        let mut view = ValidatorView::default();
        view.metrics.insert("a".into(), busy);
        let tick = |view: &ValidatorView| {
            r.observe(view, &FleetSnapshot::default(), &HashSet::new(), &HashSet::new());
        };
        tick(&view);
        // No traffic in the last hour: the validator's metrics no longer list the chute.
        tick(&ValidatorView::default());
        tick(&ValidatorView::default());
        let trace = miner_trace::Trace::read(out.text().as_bytes()).unwrap();
        let loads: Vec<f64> = trace
            .events
            .iter()
            .filter_map(|e| match e {
                Record::Demand { load, .. } => Some(*load),
                _ => None,
            })
            .collect();
        assert_eq!(loads.len(), 2, "{loads:?}");
        assert!(loads[0] > 0.0 && loads[1] == 0.0, "{loads:?}");
    }

    #[test]
    fn a_recording_that_cannot_write_stops_quietly_and_tries_no_more() {
        let failed = Arc::new(AtomicUsize::new(0));
        let rec = Recorder::start(
            Full { header_done: false, failed: failed.clone() },
            0,
            0,
            "5Miner",
            &ValidatorModel::default(),
        )
        .unwrap();
        let r = Recording::resume(Path::new("/full/trace.jsonl"), rec, None);
        r.chute(&remote("a"));
        r.chute(&remote("b"));
        // the next tick writes both chute lines: the first fails and stops the recording
        r.observe(&ValidatorView::default(), &FleetSnapshot::default(), &HashSet::new(), &HashSet::new());
        assert_eq!(failed.load(Ordering::SeqCst), 1, "one failed write, not one per line");
        assert!(r.state.lock().unwrap().stopped);
        r.chute(&remote("c"));
        r.bounty("a", Some(1.0));
        r.observe(&ValidatorView::default(), &FleetSnapshot::default(), &HashSet::new(), &HashSet::new());
        assert_eq!(failed.load(Ordering::SeqCst), 1, "nothing more is tried once stopped");
    }
}
