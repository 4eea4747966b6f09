//! The seeded scenario driver: a reproducible sequence of catalogue changes and
//! validator events, generated from a `u64` seed, that tests, `minerctl lab` and a
//! simulator's recorded traces can share.
//!
//! A [`Scenario`] is plain data (serde): [`Scenario::to_jsonl`] is a trace that
//! [`Scenario::from_jsonl`] reads back, and [`Scenario::play`] (or
//! [`crate::Emulator::apply`] per step) performs each step on a running emulator:
//! the catalogue change first, then the `miner_broadcast` the real validator sends
//! for it, with the same reason names and data fields (reference section 9).
//!
//! The generator uses its own SplitMix64 rather than the `rand` crate so that a
//! seed gives the same steps byte for byte across dependency upgrades: recorded
//! traces and seeds quoted in bug reports must keep meaning the same thing.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::catalogue::{ChuteJob, ChuteSpec, ImageSpec, JobPort, JobSpec, Traffic};
use crate::state::{Event, Instance, RollingUpdate, State};

/// One thing that happens on the validator side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// `image_created`.
    ImageCreated { image: ImageSpec },
    /// `image_deleted {image_id}`; only for an image no chute uses.
    ImageDeleted { image_id: String },
    /// `chute_created {chute_id, version, job_only}`.
    ChuteCreated { chute: ChuteSpec },
    /// `chute_updated {chute_id, version, job_only}`: the chute is replaced.
    ChuteUpdated { chute: ChuteSpec },
    /// `chute_deleted {chute_id, version}`; its jobs and instances go with it.
    ChuteDeleted { chute_id: String },
    /// `bounty_change {chute_id, bounty}`.
    BountyChange { chute_id: String, bounty: u64 },
    /// `image_updated {image_id, short_tag, patch_version, chutes_version, chute_ids, image}`.
    ImageUpdated { image: ImageSpec },
    /// `job_created {job_id, method, chute_id, image_id, gpu_count, compute_multiplier, exclude, disk_gb}`.
    JobCreated { job: JobSpec },
    /// `job_deleted {instance_id, job_id}`.
    JobDeleted { job_id: String },
    /// Another miner's instance appears, verified and active
    /// (`instance_created`, `instance_activated`).
    RemoteInstance { miner_hotkey: String, chute_id: String, instance_id: String },
    /// `instance_deleted` for another miner's instance.
    RemoteInstanceDeleted { instance_id: String },
    /// The validator drops one of the instances not made by `RemoteInstance` (the
    /// miner's own): the `ordinal`-th by id, modulo their number; none: nothing.
    EvictInstance { ordinal: u32 },
    /// A new chute version: one `rolling_update` per instance, to its miner.
    RollingUpdate { chute_id: String, new_version: String },
    /// The rolling update of a chute is over (`/chutes/rolling_updates` drops it).
    RollingUpdateFinished { chute_id: String },
    /// Last-hour traffic of a chute (`/miner/metrics/`); no event.
    Traffic { chute_id: String, traffic: Traffic },
    /// A chute's target instance count (423 beyond it); no event.
    Capacity { chute_id: String, capacity: Option<u32> },
}

/// Shape of a generated scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioParams {
    /// Steps after the initial catalogue.
    pub steps: usize,
    pub initial_chutes: usize,
    /// GPU short refs chutes draw `supported_gpus` from.
    pub gpus: Vec<String>,
    /// Largest `node_selector.gpu_count` (powers of two up to it).
    pub max_gpu_count: u32,
    /// Hotkeys of the other miners whose instances appear.
    pub other_miners: Vec<String>,
}

impl Default for ScenarioParams {
    fn default() -> Self {
        ScenarioParams {
            steps: 60,
            initial_chutes: 4,
            gpus: vec!["h100".into(), "a100".into()],
            max_gpu_count: 8,
            other_miners: vec!["5OtherMinerA".into(), "5OtherMinerB".into()],
        }
    }
}

/// A generated (or recorded) sequence of steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub seed: u64,
    pub steps: Vec<Step>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario trace line {line}: {reason}")]
    Trace { line: usize, reason: String },
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fixed forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() { None } else { items.get(self.below(items.len())) }
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// What the generator knows of the validator so far, to only emit valid steps.
#[derive(Default)]
struct Model {
    images: BTreeMap<String, ImageSpec>,
    chutes: BTreeMap<String, ChuteSpec>,
    jobs: BTreeSet<String>,
    remote: BTreeSet<String>,
    rolling: BTreeSet<String>,
}

#[derive(Clone, Copy)]
enum Kind {
    ImageCreated,
    ImageDeleted,
    ChuteCreated,
    ChuteUpdated,
    ChuteDeleted,
    Bounty,
    ImageUpdated,
    JobCreated,
    JobDeleted,
    Remote,
    RemoteDeleted,
    Evict,
    Rolling,
    RollingFinished,
    Traffic,
    Capacity,
}

impl Scenario {
    /// The scenario of `seed`: the same seed and params give the same steps.
    pub fn generate(seed: u64, params: &ScenarioParams) -> Scenario {
        let mut rng = Rng(seed);
        let mut model = Model::default();
        let mut steps = Vec::new();
        let image_count = 1 + params.initial_chutes / 3;
        for _ in 0..image_count {
            let image = new_image(&mut rng);
            model.images.insert(image.image_id.clone(), image.clone());
            steps.push(Step::ImageCreated { image });
        }
        for _ in 0..params.initial_chutes {
            steps.push(new_chute(&mut rng, &mut model, params));
        }
        for _ in 0..params.steps {
            let kinds = possible(&model, params);
            let Some(kind) = rng.pick(&kinds).copied() else { break };
            steps.push(next_step(kind, &mut rng, &mut model, params));
        }
        Scenario { seed, steps }
    }

    /// One JSON object per line: the trace format.
    pub fn to_jsonl(&self) -> String {
        let mut out = serde_json::to_string(&json!({"seed": self.seed})).unwrap_or_default();
        out.push('\n');
        for step in &self.steps {
            out.push_str(&serde_json::to_string(step).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// Reads a trace written by [`Scenario::to_jsonl`] (or recorded by a simulator).
    pub fn from_jsonl(text: &str) -> Result<Scenario, ScenarioError> {
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(ScenarioError::Trace {
                line: 1,
                reason: "empty trace, expected {\"seed\": N}".into(),
            });
        };
        let seed = serde_json::from_str::<serde_json::Value>(header)
            .ok()
            .and_then(|v| v.get("seed").and_then(serde_json::Value::as_u64))
            .ok_or_else(|| ScenarioError::Trace {
                line: 1,
                reason: format!("expected {{\"seed\": N}}, got {header}"),
            })?;
        let steps = lines
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| ScenarioError::Trace { line: i + 1, reason: e.to_string() })
            })
            .collect::<Result<_, _>>()?;
        Ok(Scenario { seed, steps })
    }

    /// Performs every step on the emulator, in order; returns, per step, how many
    /// sockets its events reached.
    pub async fn play(&self, emulator: &crate::Emulator) -> Vec<usize> {
        let mut reached = Vec::with_capacity(self.steps.len());
        for step in &self.steps {
            reached.push(emulator.apply(step).await);
        }
        reached
    }
}

fn new_image(rng: &mut Rng) -> ImageSpec {
    let n = rng.next() % 1000;
    ImageSpec {
        image_id: rng.uuid(),
        username: "chutes".into(),
        name: format!("image{n}"),
        tag: format!("0.{}.{}", rng.below(10), rng.below(10)),
        patch_version: None,
        chutes_version: format!("0.3.{}", 30 + rng.below(30)),
    }
}

fn new_chute(rng: &mut Rng, model: &mut Model, params: &ScenarioParams) -> Step {
    let image_ids: Vec<String> = model.images.keys().cloned().collect();
    let image_id = rng.pick(&image_ids).cloned().unwrap_or_default();
    let chute_id = rng.uuid();
    let mut counts = vec![1u32];
    while counts.last().is_some_and(|c| c * 2 <= params.max_gpu_count) {
        counts.push(counts.last().copied().unwrap_or(1) * 2);
    }
    let mut gpus: Vec<String> = params.gpus.iter().filter(|_| rng.below(3) > 0).cloned().collect();
    if gpus.is_empty() {
        gpus = rng.pick(&params.gpus).cloned().into_iter().collect();
    }
    let job_only = rng.below(6) == 0;
    let mut chute = ChuteSpec::simple(&chute_id, &image_id, &[]);
    chute.name = format!("chute{}", rng.next() % 10_000);
    chute.supported_gpus = gpus;
    chute.gpu_count = rng.pick(&counts).copied().unwrap_or(1);
    chute.code = format!("# {}\nVERSION = {}\n", chute.name, rng.next() % 100);
    chute.compute_multiplier = 0.5 + rng.below(16) as f64 * 0.25;
    if job_only {
        chute.cords.clear();
    }
    if job_only || rng.below(4) == 0 {
        let ports =
            (0..rng.below(3)).map(|i| JobPort { port: 8000 + i as u16, proto: "tcp".into() }).collect();
        chute.jobs = vec![ChuteJob { name: "run".into(), ports }];
    }
    model.chutes.insert(chute_id, chute.clone());
    Step::ChuteCreated { chute }
}

fn possible(model: &Model, params: &ScenarioParams) -> Vec<Kind> {
    // Repeats weight the choice towards the common events.
    let mut kinds = vec![Kind::ChuteCreated, Kind::Traffic, Kind::Traffic, Kind::ImageCreated];
    if model.images.keys().any(|i| !model.chutes.values().any(|c| &c.image_id == i)) {
        kinds.push(Kind::ImageDeleted);
    }
    if !model.chutes.is_empty() {
        kinds.extend([Kind::ChuteUpdated, Kind::Bounty, Kind::Bounty, Kind::JobCreated, Kind::JobCreated]);
        kinds.extend([Kind::Capacity, Kind::Evict, Kind::Rolling]);
        if !params.other_miners.is_empty() {
            kinds.extend([Kind::Remote, Kind::Remote]);
        }
    }
    if model.chutes.len() > 1 {
        kinds.push(Kind::ChuteDeleted);
    }
    if !model.images.is_empty() {
        kinds.push(Kind::ImageUpdated);
    }
    if !model.jobs.is_empty() {
        kinds.push(Kind::JobDeleted);
    }
    if !model.remote.is_empty() {
        kinds.push(Kind::RemoteDeleted);
    }
    if !model.rolling.is_empty() {
        kinds.push(Kind::RollingFinished);
    }
    kinds
}

fn next_step(kind: Kind, rng: &mut Rng, model: &mut Model, params: &ScenarioParams) -> Step {
    let chute_ids: Vec<String> = model.chutes.keys().cloned().collect();
    let any_chute = |rng: &mut Rng| rng.pick(&chute_ids).cloned().unwrap_or_default();
    match kind {
        Kind::ImageCreated => {
            let image = new_image(rng);
            model.images.insert(image.image_id.clone(), image.clone());
            Step::ImageCreated { image }
        }
        Kind::ImageDeleted => {
            let unused: Vec<String> = model
                .images
                .keys()
                .filter(|i| !model.chutes.values().any(|c| &c.image_id == *i))
                .cloned()
                .collect();
            let id = rng.pick(&unused).cloned().unwrap_or_default();
            model.images.remove(&id);
            Step::ImageDeleted { image_id: id }
        }
        Kind::ChuteCreated => new_chute(rng, model, params),
        Kind::ChuteUpdated => {
            let id = any_chute(rng);
            let chute = model.chutes.get_mut(&id).map(|c| {
                c.code.push_str(&format!("# change {}\n", rng.next() % 1000));
                c.clone()
            });
            Step::ChuteUpdated { chute: chute.unwrap_or_else(|| ChuteSpec::simple(&id, "", &[])) }
        }
        Kind::ChuteDeleted => {
            let id = any_chute(rng);
            model.chutes.remove(&id);
            model.rolling.remove(&id);
            Step::ChuteDeleted { chute_id: id }
        }
        Kind::Bounty => Step::BountyChange { chute_id: any_chute(rng), bounty: 100 + rng.next() % 10_000 },
        Kind::ImageUpdated => {
            let ids: Vec<String> = model.images.keys().cloned().collect();
            let id = rng.pick(&ids).cloned().unwrap_or_default();
            let patch = format!("p{}", rng.next() % 100);
            let image = model.images.get_mut(&id).map(|i| {
                i.patch_version = Some(patch);
                i.chutes_version = format!("0.3.{}", 30 + rng.below(30));
                i.clone()
            });
            Step::ImageUpdated { image: image.unwrap_or_else(|| new_image(rng)) }
        }
        Kind::JobCreated => {
            let id = any_chute(rng);
            let job_id = rng.uuid();
            model.jobs.insert(job_id.clone());
            let method =
                model.chutes.get(&id).and_then(|c| c.jobs.first()).map_or("run".into(), |j| j.name.clone());
            let disk_gb = 10 * (1 + rng.below(10) as u32);
            Step::JobCreated {
                job: JobSpec { job_id, chute_id: Some(id), method, disk_gb, exclude: Vec::new() },
            }
        }
        Kind::JobDeleted => {
            let ids: Vec<String> = model.jobs.iter().cloned().collect();
            let id = rng.pick(&ids).cloned().unwrap_or_default();
            model.jobs.remove(&id);
            Step::JobDeleted { job_id: id }
        }
        Kind::Remote => {
            let miner = rng.pick(&params.other_miners).cloned().unwrap_or_default();
            let instance_id = rng.uuid();
            model.remote.insert(instance_id.clone());
            Step::RemoteInstance { miner_hotkey: miner, chute_id: any_chute(rng), instance_id }
        }
        Kind::RemoteDeleted => {
            let ids: Vec<String> = model.remote.iter().cloned().collect();
            let id = rng.pick(&ids).cloned().unwrap_or_default();
            model.remote.remove(&id);
            Step::RemoteInstanceDeleted { instance_id: id }
        }
        Kind::Evict => Step::EvictInstance { ordinal: rng.below(16) as u32 },
        Kind::Rolling => {
            let id = any_chute(rng);
            let new_version = format!("v{}", 2 + rng.below(1000));
            if let Some(c) = model.chutes.get_mut(&id) {
                c.version = new_version.clone();
            }
            model.rolling.insert(id.clone());
            Step::RollingUpdate { chute_id: id, new_version }
        }
        Kind::RollingFinished => {
            let ids: Vec<String> = model.rolling.iter().cloned().collect();
            let id = rng.pick(&ids).cloned().unwrap_or_default();
            model.rolling.remove(&id);
            Step::RollingUpdateFinished { chute_id: id }
        }
        Kind::Traffic => {
            let id = any_chute(rng);
            let invocations = rng.next() % 5_000;
            let traffic = Traffic {
                total_invocations: invocations,
                total_compute_time: invocations as f64 * (0.5 + rng.below(20) as f64 * 0.25),
                error_count: rng.next() % 10,
                rate_limit_count: if rng.below(3) == 0 { rng.next() % 200 } else { 0 },
                // Divisions give the double nearest each decimal, which prints and reads
                // back exactly, so traces round-trip byte for byte.
                per_second_price_usd: (1 + rng.below(50)) as f64 / 10_000.0,
                total_usage_usd: (rng.next() % 10_000) as f64 / 100.0,
            };
            Step::Traffic { chute_id: id, traffic }
        }
        Kind::Capacity => {
            let capacity = if rng.below(4) == 0 { None } else { Some(rng.below(6) as u32) };
            Step::Capacity { chute_id: any_chute(rng), capacity }
        }
    }
}

impl State {
    /// Performs one step on the state and returns the events the validator sends
    /// for it. Steps naming something that no longer exists change nothing.
    pub(crate) fn apply(&mut self, step: &Step) -> Vec<Event> {
        let mut events = Vec::new();
        let chute_event = |reason: &str, c: &ChuteSpec| {
            Event::new(
                reason,
                json!({"chute_id": c.chute_id, "version": c.version, "job_only": c.job_only()}),
            )
        };
        match step {
            Step::ImageCreated { image } => {
                self.catalogue.images.insert(image.image_id.clone(), image.clone());
                events.push(Event::new("image_created", image.to_wire()));
            }
            Step::ImageDeleted { image_id } => {
                let used = self.catalogue.chutes.values().any(|c| &c.image_id == image_id);
                if !used && self.catalogue.images.remove(image_id).is_some() {
                    events.push(Event::new("image_deleted", json!({"image_id": image_id})));
                }
            }
            Step::ChuteCreated { chute } => {
                self.catalogue.chutes.insert(chute.chute_id.clone(), chute.clone());
                events.push(chute_event("chute_created", chute));
            }
            Step::ChuteUpdated { chute } => {
                if self.catalogue.chutes.contains_key(&chute.chute_id) {
                    self.catalogue.chutes.insert(chute.chute_id.clone(), chute.clone());
                    events.push(chute_event("chute_updated", chute));
                }
            }
            Step::ChuteDeleted { chute_id } => {
                if let Some(c) = self.catalogue.chutes.remove(chute_id) {
                    self.catalogue.jobs.retain(|_, j| j.chute_id.as_deref() != Some(chute_id.as_str()));
                    self.catalogue.traffic.remove(chute_id);
                    self.catalogue.bounties.remove(chute_id);
                    self.rolling.remove(chute_id);
                    self.instances.retain(|_, i| &i.chute_id != chute_id);
                    events.push(Event::new(
                        "chute_deleted",
                        json!({"chute_id": chute_id, "version": c.version}),
                    ));
                }
            }
            Step::BountyChange { chute_id, bounty } => {
                if self.catalogue.chutes.contains_key(chute_id) {
                    self.catalogue.bounties.insert(chute_id.clone(), *bounty);
                    events.push(Event::new("bounty_change", json!({"chute_id": chute_id, "bounty": bounty})));
                }
            }
            Step::ImageUpdated { image } => {
                self.catalogue.images.insert(image.image_id.clone(), image.clone());
                let chute_ids: Vec<&String> = self
                    .catalogue
                    .chutes
                    .values()
                    .filter(|c| c.image_id == image.image_id)
                    .map(|c| &c.chute_id)
                    .collect();
                events.push(Event::new(
                    "image_updated",
                    json!({
                        "image_id": image.image_id,
                        "short_tag": image.tag,
                        "patch_version": image.patch_version.clone().unwrap_or_else(|| "initial".into()),
                        "chutes_version": image.chutes_version,
                        "chute_ids": chute_ids,
                        "image": image.reference(),
                    }),
                ));
            }
            Step::JobCreated { job } => {
                let chute = job.chute_id.as_deref().and_then(|c| self.catalogue.chutes.get(c)).cloned();
                if job.chute_id.is_none() || chute.is_some() {
                    self.catalogue.jobs.insert(job.job_id.clone(), job.clone());
                    events.push(Event::new(
                        "job_created",
                        json!({
                            "job_id": job.job_id,
                            "method": job.method,
                            "chute_id": job.chute_id,
                            "image_id": chute.as_ref().map(|c| c.image_id.clone()),
                            "gpu_count": chute.as_ref().map_or(1, |c| c.gpu_count),
                            "compute_multiplier": chute.as_ref().map_or(1.0, |c| c.compute_multiplier),
                            "exclude": job.exclude,
                            "disk_gb": job.disk_gb,
                        }),
                    ));
                }
            }
            Step::JobDeleted { job_id } => {
                if self.catalogue.jobs.remove(job_id).is_some() {
                    let instance_id = self
                        .instances
                        .values()
                        .find(|i| i.job_id.as_ref() == Some(job_id))
                        .map(|i| i.instance_id.clone());
                    self.job_claims.remove(job_id);
                    events.push(Event::new(
                        "job_deleted",
                        json!({"instance_id": instance_id, "job_id": job_id}),
                    ));
                }
            }
            Step::RemoteInstance { miner_hotkey, chute_id, instance_id } => {
                if let Some(chute) = self.catalogue.chutes.get(chute_id).cloned() {
                    let now = chutes_protocol::auth::now_unix();
                    let instance = Instance {
                        instance_id: instance_id.clone(),
                        chute_id: chute_id.clone(),
                        version: chute.version.clone(),
                        miner_hotkey: miner_hotkey.clone(),
                        config_id: None,
                        job_id: None,
                        host: format!("remote-{instance_id}"),
                        port: 8000,
                        gpus: Vec::new(),
                        active: true,
                        verified: true,
                        created_at: now,
                        activated_at: Some(now),
                        compute_multiplier: chute.compute_multiplier,
                    };
                    self.remote_miners.insert(miner_hotkey.clone());
                    events.push(self.instance_created_event(&instance, &chute));
                    events.push(Self::instance_event("instance_activated", &instance));
                    self.instances.insert(instance_id.clone(), instance);
                }
            }
            Step::RemoteInstanceDeleted { instance_id } => {
                self.remove_instance(instance_id, &mut events);
            }
            Step::EvictInstance { ordinal } => {
                let own: Vec<String> = self
                    .instances
                    .values()
                    .filter(|i| !self.remote_miners.contains(&i.miner_hotkey))
                    .map(|i| i.instance_id.clone())
                    .collect();
                if !own.is_empty() {
                    let id = own[*ordinal as usize % own.len()].clone();
                    self.remove_instance(&id, &mut events);
                }
            }
            Step::RollingUpdate { chute_id, new_version } => {
                if let Some(chute) = self.catalogue.chutes.get_mut(chute_id) {
                    let old_version = std::mem::replace(&mut chute.version, new_version.clone());
                    let image = self.catalogue.images.get(&chute.image_id).map(|i| i.reference());
                    self.rolling.insert(
                        chute_id.clone(),
                        RollingUpdate {
                            old_version: old_version.clone(),
                            new_version: new_version.clone(),
                            started_at: chutes_protocol::auth::now_unix(),
                        },
                    );
                    for i in self.instances.values().filter(|i| &i.chute_id == chute_id) {
                        let mut data = json!({
                            "chute_id": chute_id,
                            "instance_id": i.instance_id,
                            "miner_hotkey": i.miner_hotkey,
                            "old_version": old_version,
                            "new_version": new_version,
                            "reason": "code change",
                        });
                        if let Some(image) = &image {
                            data["image"] = json!(image);
                        }
                        events.push(Event {
                            recipients: Some(vec![i.miner_hotkey.clone()]),
                            ..Event::new("rolling_update", data)
                        });
                    }
                }
            }
            Step::RollingUpdateFinished { chute_id } => {
                self.rolling.remove(chute_id);
            }
            Step::Traffic { chute_id, traffic } => {
                if self.catalogue.chutes.contains_key(chute_id) {
                    self.catalogue.traffic.insert(chute_id.clone(), traffic.clone());
                }
            }
            Step::Capacity { chute_id, capacity } => {
                if let Some(c) = self.catalogue.chutes.get_mut(chute_id) {
                    c.capacity = *capacity;
                }
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_splitmix64() {
        // Published SplitMix64 outputs for seed 0: traces stay tied to this algorithm.
        let mut rng = Rng(0);
        assert_eq!(
            [rng.next(), rng.next(), rng.next()],
            [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f]
        );
    }

    #[test]
    fn a_seed_gives_the_same_steps_byte_for_byte() {
        let params = ScenarioParams::default();
        let a = Scenario::generate(7, &params).to_jsonl();
        assert_eq!(a, Scenario::generate(7, &params).to_jsonl());
        assert_ne!(a, Scenario::generate(8, &params).to_jsonl());
        assert_eq!(Scenario::from_jsonl(&a).unwrap().steps.len(), 2 + params.initial_chutes + params.steps);
        for seed in 0..50 {
            let trace = Scenario::generate(seed, &params).to_jsonl();
            assert_eq!(
                Scenario::from_jsonl(&trace).unwrap().to_jsonl(),
                trace,
                "seed {seed} reads back the same"
            );
        }
    }

    #[test]
    fn every_kind_of_step_turns_up() {
        let scenario = Scenario::generate(1, &ScenarioParams { steps: 400, ..ScenarioParams::default() });
        let mut kinds = BTreeSet::new();
        for step in &scenario.steps {
            let v = serde_json::to_value(step).unwrap_or_default();
            kinds.insert(v["step"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(kinds.len(), 16, "{kinds:?}");
    }

    #[test]
    fn a_bad_trace_names_its_line() {
        let err = Scenario::from_jsonl("{\"seed\": 3}\n{\"step\": \"bounty_change\"}\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(Scenario::from_jsonl("").unwrap_err().to_string().contains("line 1"));
    }
}
