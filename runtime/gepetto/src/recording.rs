//! Recording this miner's week as a trace `minerctl simulate --trace` replays
//! (`GEPETTO_RECORD_TRACE`; format in the `miner-trace` crate, rules in the
//! simulator README's "Recording from Gepetto").
//!
//! The controller and the loops tell [`Recording`] what they saw; it decides what is
//! new enough to write. Writing never fails an event or a tick: a recording that
//! cannot be written says so once and stops, because a trace with holes would score
//! strategies on a week that did not happen.
//!
//! Outages, rolling updates and jobs are written when they end, dated from when they
//! began; what is in progress is kept next to the trace in `<trace path>.open.json`
//! (see [`open_path`]) so that a restarted Gepetto continues them instead of losing
//! their start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::Utc;
use miner_events::payloads as ev;
use miner_k8s::DiskUsage;
use miner_trace::{Chute, Record, Recorder, Server, TraceError, ValidatorModel, others_from_active};
use miner_validator::rest::{RemoteChute, RemoteMetrics};
use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PendingJob {
    t: u64,
    chute_id: String,
    compute_multiplier: f64,
    disk_gb: f64,
    excluded: bool,
}

/// What has begun and is written only when it ends, with when it began (seconds on the
/// recording's clock, the `t` of the trace's lines). Kept in the file [`open_path`]
/// names so a restart continues it; sorted maps so that file reads in a stable order.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct InProgress {
    /// Since when a chute has been mid-update.
    #[serde(default)]
    updating: BTreeMap<String, u64>,
    /// Since when a server's node has not been Ready.
    #[serde(default)]
    down: BTreeMap<String, u64>,
    /// `job_created` offers waiting for their `job_deleted`.
    #[serde(default)]
    jobs: BTreeMap<String, PendingJob>,
}

/// The file next to the trace at `trace` that holds what is in progress (outages,
/// rolling updates, jobs): `<trace path>.open.json`, e.g. `week.jsonl.open.json`.
pub fn open_path(trace: &Path) -> PathBuf {
    let mut name = trace.as_os_str().to_owned();
    name.push(".open.json");
    PathBuf::from(name)
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
    /// The last bounty written per chute, and when.
    bounties: HashMap<String, (f64, u64)>,
    open: InProgress,
    /// `open` changed since it was last saved.
    open_changed: bool,
    /// The last save of `open` failed and said so (said once, not at every change).
    open_failed: bool,
}

impl<W: Write> State<W> {
    fn knows(&self, chute_id: &str) -> bool {
        self.chutes.contains_key(chute_id) || self.pending.contains_key(chute_id)
    }

    /// Saves what is in progress into `path`, if it changed. Best-effort: the trace is
    /// what the recording is for and goes on without it (a restart then cuts what was in
    /// progress short), so a failed save is said once, until a save works again.
    fn save_open(&mut self, path: Option<&Path>) {
        if !std::mem::take(&mut self.open_changed) {
            return;
        }
        let Some(path) = path else { return };
        match write_replacing(path, &self.open) {
            Ok(()) => self.open_failed = false,
            Err(e) => {
                if !std::mem::replace(&mut self.open_failed, true) {
                    tracing::error!(
                        path = %path.display(),
                        error = %e,
                        "cannot save the outages, rolling updates and jobs in progress next to the trace; \
                         the trace goes on, but a restart will cut them short"
                    );
                }
            }
        }
    }
}

/// An open recording (one per process), into a file (or, in tests, any writer).
pub struct Recording<W: Write = File> {
    path: PathBuf,
    /// Where what is in progress is kept ([`open_path`]); `None` keeps it in memory
    /// only (tests that record into memory).
    open_path: Option<PathBuf>,
    state: Mutex<State<W>>,
}

impl Recording<File> {
    /// Opens (or continues, after a restart) the recording at `path` for `miner`, with
    /// what is in progress kept in [`open_path`]`(path)`.
    pub fn open(path: &Path, miner: &str, settings: &ValidatorModel) -> Result<Recording, TraceError> {
        let (rec, existing) = Recorder::open(path, Utc::now().timestamp(), miner, settings)?;
        Ok(Recording::resume(path, rec, existing, Some(open_path(path))))
    }
}

impl<W: Write> Recording<W> {
    /// A recording into `rec`, which already holds `existing` (what not to write again),
    /// keeping what is in progress in `open_path` (continued from there when `existing`
    /// is a trace being continued).
    fn resume(
        path: &Path,
        rec: Recorder<W>,
        existing: Option<miner_trace::Trace>,
        open_path: Option<PathBuf>,
    ) -> Recording<W> {
        let mut st = State {
            rec,
            stopped: false,
            servers: HashSet::new(),
            removed: HashSet::new(),
            chutes: HashMap::new(),
            pending: HashMap::new(),
            demand: HashMap::new(),
            others: HashMap::new(),
            bounties: HashMap::new(),
            open: InProgress::default(),
            open_changed: false,
            open_failed: false,
        };
        let continued = existing.is_some();
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
        if let Some(open) = &open_path {
            if continued {
                let mut o = load_in_progress(open);
                // What the trace does not hold could not be written when it ends (a chute
                // whose line never made it to the file before the restart, another trace's).
                o.updating.retain(|id, _| st.chutes.contains_key(id));
                o.down.retain(|id, _| st.servers.contains(id));
                o.jobs.retain(|_, j| st.chutes.contains_key(&j.chute_id));
                st.open = o;
            } else {
                // A new recording: a file left by an earlier one is on another clock.
                st.open_changed = true;
                st.save_open(Some(open));
            }
        }
        Recording { path: path.to_owned(), open_path, state: Mutex::new(st) }
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
        let lines = f(&mut st, now);
        // Saved before the lines are written: a crash between the two then loses a line
        // (as a crash mid-line does) rather than have the restart write it again.
        st.save_open(self.open_path.as_deref());
        for line in lines {
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
    /// rolling updates that ended (`updating`: chutes mid-update now; `None` when the
    /// validator's utilization listing has not answered yet, which starts and ends no
    /// update) and node outages that ended (`down`: server ids whose node is not Ready now).
    pub(crate) fn observe(
        &self,
        view: &ValidatorView,
        fleet: &FleetSnapshot,
        updating: Option<&HashSet<String>>,
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
            if let Some(updating) = updating {
                for id in updating.iter().filter(|id| st.chutes.contains_key(*id)) {
                    if !st.open.updating.contains_key(id) {
                        st.open.updating.insert(id.clone(), now);
                        st.open_changed = true;
                    }
                }
                let ended: Vec<String> =
                    st.open.updating.keys().filter(|id| !updating.contains(*id)).cloned().collect();
                for chute_id in ended {
                    if let Some(t) = st.open.updating.remove(&chute_id) {
                        st.open_changed = true;
                        lines.push(Record::Updating { t, chute_id, until: now });
                    }
                }
            }
            for id in down.iter().filter(|id| st.servers.contains(*id)) {
                if !st.open.down.contains_key(id) {
                    st.open.down.insert(id.clone(), now);
                    st.open_changed = true;
                }
            }
            let back: Vec<String> = st.open.down.keys().filter(|id| !down.contains(*id)).cloned().collect();
            for server_id in back {
                if let Some(t) = st.open.down.remove(&server_id) {
                    st.open_changed = true;
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
                if !st.open.jobs.contains_key(&e.job_id) {
                    st.open.jobs.insert(e.job_id.clone(), job);
                    st.open_changed = true;
                }
            }
            Vec::new()
        });
    }

    /// `job_deleted`: the job line, with the duration the job ran.
    pub(crate) fn job_deleted(&self, job_id: &str) {
        self.with(|st, now| {
            let Some(j) = st.open.jobs.remove(job_id) else { return Vec::new() };
            st.open_changed = true;
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

/// What is in progress, from `path` as an earlier run of this recording left it:
/// nothing when there is no such file (a recording from before it was kept), and
/// nothing, with a warning, when it cannot be read (the recording goes on without it).
fn load_in_progress(path: &Path) -> InProgress {
    let loaded = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return InProgress::default(),
        read => read
            .map_err(|e| e.to_string())
            .and_then(|text| serde_json::from_slice::<InProgress>(&text).map_err(|e| e.to_string())),
    };
    loaded.unwrap_or_else(|error| {
        tracing::warn!(
            path = %path.display(),
            %error,
            "cannot read what was in progress when the recording stopped; starting with nothing in progress"
        );
        InProgress::default()
    })
}

/// Replaces `path` with `open` as a whole: written to a file beside it, synced, then
/// renamed over it, so a crash leaves the old file or the new one, never half of one.
fn write_replacing(path: &Path, open: &InProgress) -> std::io::Result<()> {
    let json = serde_json::to_vec(open).map_err(std::io::Error::other)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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
    use crate::snapshot::{GpuSnap, ServerSnap};

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

    /// The warnings and errors logged on this thread while `f` runs, a line each
    /// (level, message, fields).
    fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
        let out = test_support::Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .without_time()
            .with_target(false)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        (result, out.text().lines().map(|l| l.trim().to_owned()).collect())
    }

    fn fleet() -> FleetSnapshot {
        let gpu = |i| GpuSnap {
            gpu_id: format!("g{i}"),
            model: "h100".into(),
            verified: true,
            deployment_id: None,
        };
        let server = ServerSnap {
            server_id: "s1".into(),
            name: "gpu-1".into(),
            validator: "5V".into(),
            hourly_cost: 1.0,
            locked: false,
            gpus: (0..8).map(gpu).collect(),
            disk_available_gb: None,
        };
        FleetSnapshot { servers: vec![server], ..FleetSnapshot::default() }
    }

    fn disk() -> HashMap<String, DiskUsage> {
        HashMap::from([(
            "gpu-1".into(),
            DiskUsage { total_gib: 2000.0, used_gib: 0.0, available_gib: 2000.0 },
        )])
    }

    /// An autoscaler tick that sees `updating` chutes mid-update and `down` servers' nodes not Ready.
    fn tick<W: Write>(r: &Recording<W>, updating: &[&str], down: &[&str]) {
        let set = |ids: &[&str]| ids.iter().map(|id| (*id).to_owned()).collect::<HashSet<String>>();
        r.observe(&ValidatorView::default(), &fleet(), Some(&set(updating)), &set(down));
    }

    /// An autoscaler tick whose utilization listing has not answered (mid-update
    /// unknown) and that sees `down` servers' nodes not Ready.
    fn tick_without_utilization<W: Write>(r: &Recording<W>, down: &[&str]) {
        let down = down.iter().map(|id| (*id).to_owned()).collect::<HashSet<String>>();
        r.observe(&ValidatorView::default(), &fleet(), None, &down);
    }

    fn job_created(job_id: &str) -> ev::JobCreated {
        serde_json::from_value(serde_json::json!({
            "job_id": job_id, "chute_id": "llm", "compute_multiplier": 4.0, "disk_gb": 50, "validator": "5V",
        }))
        .unwrap()
    }

    /// A recording of server s1 and chute llm (both written at a first tick that sees
    /// `updating` and `down`), continued from `path` if it exists.
    fn recording(path: &Path, updating: &[&str], down: &[&str]) -> Recording {
        let r = Recording::open(path, "5Miner", &ValidatorModel::default()).unwrap();
        r.servers(&fleet(), disk);
        r.chute(&remote("llm"));
        tick(&r, updating, down);
        r
    }

    /// The process restarts an hour later. The recording's clock is the wall time since
    /// the trace's `start_unix`, so moving that an hour back is the same, without waiting.
    fn an_hour_passes(path: &Path) {
        let text = std::fs::read_to_string(path).unwrap();
        let (header, rest) = text.split_once('\n').unwrap();
        let mut header: serde_json::Value = serde_json::from_str(header).unwrap();
        header["start_unix"] = (header["start_unix"].as_i64().unwrap() - 3600).into();
        std::fs::write(path, format!("{header}\n{rest}")).unwrap();
    }

    /// The trace's rolling updates: (start, chute, end).
    fn updates(trace: &miner_trace::Trace) -> Vec<(u64, &str, u64)> {
        trace
            .events
            .iter()
            .filter_map(|e| match e {
                Record::Updating { t, chute_id, until } => Some((*t, chute_id.as_str(), *until)),
                _ => None,
            })
            .collect()
    }

    fn read(path: &Path) -> miner_trace::Trace {
        miner_trace::Trace::read(std::io::BufReader::new(File::open(path).unwrap())).unwrap()
    }

    #[test]
    fn a_restarted_recording_continues_the_outage_update_and_job_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("week.jsonl");
        let r = recording(&path, &[], &[]);
        tick(&r, &["llm"], &["s1"]);
        r.job_created(&job_created("job-1"), true, 20.0);
        drop(r);
        assert!(dir.path().join("week.jsonl.open.json").exists());

        an_hour_passes(&path);
        // still down and mid-update after the restart: nothing ends, nothing starts again
        let (r, logs) = logged(|| recording(&path, &["llm"], &["s1"]));
        assert_eq!(logs, Vec::<String>::new());
        tick(&r, &["llm"], &["s1"]);
        tick(&r, &[], &[]);
        r.job_deleted("job-1");
        drop(r);

        // Times before the restart are under 3600 on the recording's clock, after it over.
        let trace = read(&path);
        let failures: Vec<_> = trace
            .events
            .iter()
            .filter_map(|e| match e {
                Record::NodeFailure { t, server_id, down_s } => Some((*t, server_id.as_str(), *down_s)),
                _ => None,
            })
            .collect();
        assert!(
            matches!(failures[..], [(t, "s1", down_s)] if t < 3600 && down_s >= 3600),
            "dated from before the restart, down the whole time: {failures:?}"
        );
        let updates = updates(&trace);
        assert!(matches!(updates[..], [(t, "llm", until)] if t < 3600 && until >= 3600), "{updates:?}");
        let jobs: Vec<_> = trace
            .events
            .iter()
            .filter_map(|e| match e {
                Record::Job { t, job_id, chute_id, duration_s, compute_multiplier, disk_gb, excluded } => {
                    Some((
                        *t,
                        job_id.as_str(),
                        chute_id.as_str(),
                        *duration_s,
                        *compute_multiplier,
                        *disk_gb,
                        *excluded,
                    ))
                }
                _ => None,
            })
            .collect();
        assert!(
            matches!(jobs[..], [(t, "job-1", "llm", d, 4.0, 50.0, true)] if t < 3600 && d >= 3600),
            "the job offered before the restart, with its whole duration: {jobs:?}"
        );
    }

    #[test]
    fn an_update_in_progress_at_a_restart_outlives_a_tick_whose_utilization_listing_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("week.jsonl");
        drop(recording(&path, &["llm"], &[]));
        an_hour_passes(&path);

        let r = Recording::open(&path, "5Miner", &ValidatorModel::default()).unwrap();
        // the first listing after the restart fails: whether llm is still updating is unknown
        tick_without_utilization(&r, &[]);
        assert_eq!(updates(&read(&path)), vec![], "the update is not cut short");
        assert!(r.state.lock().unwrap().open.updating.contains_key("llm"));
        // the listing answers: llm is no longer updating
        tick(&r, &[], &[]);
        drop(r);
        let trace = read(&path);
        let ended = updates(&trace);
        assert!(matches!(ended[..], [(t, "llm", until)] if t < 3600 && until >= 3600), "{ended:?}");
    }

    #[test]
    fn a_garbled_in_progress_file_is_warned_about_and_the_recording_starts_with_nothing_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("week.jsonl");
        let r = recording(&path, &["llm"], &["s1"]);
        drop(r);
        let open = dir.path().join("week.jsonl.open.json");
        std::fs::write(&open, b"{\"down\": {\"s1\": ").unwrap();

        let (r, logs) = logged(|| recording(&path, &[], &[]));
        assert!(
            matches!(&logs[..], [w] if w.starts_with("WARN") && w.contains("week.jsonl.open.json")),
            "one warning naming the file: {logs:?}"
        );
        assert_eq!(r.state.lock().unwrap().open, InProgress::default());
        // The recording goes on: an outage from now on is recorded.
        tick(&r, &[], &["s1"]);
        tick(&r, &[], &[]);
        drop(r);
        assert!(read(&path).events.iter().any(|e| matches!(e, Record::NodeFailure { .. })));
    }

    #[test]
    fn a_new_recording_ignores_an_old_in_progress_file_and_a_continued_one_what_its_trace_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("week.jsonl");
        let open = dir.path().join("week.jsonl.open.json");
        // left by a recording whose trace was since removed
        std::fs::write(&open, br#"{"updating": {"llm": 5}, "down": {"s1": 5}, "jobs": {}}"#).unwrap();
        let r = recording(&path, &[], &[]);
        assert_eq!(r.state.lock().unwrap().open, InProgress::default());
        drop(r);
        let saved: InProgress = serde_json::from_slice(&std::fs::read(&open).unwrap()).unwrap();
        assert_eq!(saved, InProgress::default(), "overwritten, so a restart does not load it either");

        // servers and chutes this trace does not hold are dropped when it is continued
        std::fs::write(
            &open,
            br#"{"updating": {"llm": 5, "gone": 5}, "down": {"s1": 5, "s9": 5},
                 "jobs": {"j": {"t": 5, "chute_id": "gone", "compute_multiplier": 1.0, "disk_gb": 10.0, "excluded": false}}}"#,
        )
        .unwrap();
        let r = recording(&path, &["llm"], &["s1"]);
        let st = r.state.lock().unwrap();
        assert_eq!(st.open.updating, BTreeMap::from([("llm".to_owned(), 5)]));
        assert_eq!(st.open.down, BTreeMap::from([("s1".to_owned(), 5)]));
        assert!(st.open.jobs.is_empty());
    }

    #[test]
    fn an_in_progress_file_that_cannot_be_written_is_said_once_and_the_trace_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let out = test_support::Captured::default();
        let rec = Recorder::start(out.clone(), 0, 0, "5Miner", &ValidatorModel::default()).unwrap();
        let nowhere = dir.path().join("missing-dir").join("week.jsonl.open.json");
        let ((), logs) = logged(|| {
            let r = Recording::resume(Path::new("/week.jsonl"), rec, None, Some(nowhere));
            r.servers(&fleet(), disk);
            r.chute(&remote("llm"));
            for _ in 0..3 {
                tick(&r, &["llm"], &["s1"]);
                tick(&r, &[], &[]);
            }
        });
        assert!(matches!(&logs[..], [e] if e.starts_with("ERROR") && e.contains("missing-dir")), "{logs:?}");
        let trace = miner_trace::Trace::read(out.text().as_bytes()).unwrap();
        let failures = trace.events.iter().filter(|e| matches!(e, Record::NodeFailure { .. })).count();
        assert_eq!(failures, 3, "every outage is still recorded");
    }

    #[test]
    fn a_chute_the_metrics_stop_listing_is_recorded_with_no_demand() {
        let out = test_support::Captured::default();
        let rec = Recorder::start(out.clone(), 0, 0, "5Miner", &ValidatorModel::default()).unwrap();
        let r = Recording::resume(Path::new("/trace.jsonl"), rec, None, None);
        r.chute(&remote("a"));
        let busy: RemoteMetrics = serde_json::from_value(serde_json::json!({
            "chute_id": "a", "total_compute_time": 3600.0, "total_invocations": 10.0,
            "rate_limit_count": 0.0, "instance_count": 1,
        }))
        .unwrap();
        let mut view = ValidatorView::default();
        view.metrics.insert("a".into(), busy);
        let tick = |view: &ValidatorView| {
            r.observe(view, &FleetSnapshot::default(), Some(&HashSet::new()), &HashSet::new());
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
        let r = Recording::resume(Path::new("/full/trace.jsonl"), rec, None, None);
        r.chute(&remote("a"));
        r.chute(&remote("b"));
        // the next tick writes both chute lines: the first fails and stops the recording
        r.observe(
            &ValidatorView::default(),
            &FleetSnapshot::default(),
            Some(&HashSet::new()),
            &HashSet::new(),
        );
        assert_eq!(failed.load(Ordering::SeqCst), 1, "one failed write, not one per line");
        assert!(r.state.lock().unwrap().stopped);
        r.chute(&remote("c"));
        r.bounty("a", Some(1.0));
        r.observe(
            &ValidatorView::default(),
            &FleetSnapshot::default(),
            Some(&HashSet::new()),
            &HashSet::new(),
        );
        assert_eq!(failed.load(Ordering::SeqCst), 1, "nothing more is tried once stopped");
    }
}
