//! Add-node verification: the task `POST /nodes/` opens and the status
//! `GET /nodes/verification_status` answers.
//!
//! Two modes:
//! - **Real** ([`crate::Emulator::verify_with_graval`]): as chutes-api's
//!   `validate_gpus` (reference `graval.md` §8), a task runs beside the REST handler.
//!   It reaches the node's GraVal bootstrap server at the posted
//!   `verification_host`/`verification_port`, asks device-info challenges
//!   (`GET /info`), sends one signed `POST /prove` with a ciphertext per GPU, checks the
//!   plaintexts, the timing window (model plans only) and every GPU's work product with
//!   graval's verifier (spot checks replayed on the CPU). The status is `pending`
//!   until then, `verified` or `failed` after; on success `gpu_verified` goes out per
//!   GPU, to that miner only, as the real validator publishes it; on failure the
//!   node seed rotates.
//! - **Scripted**: per task ([`crate::Emulator::set_verification_status`]) or a default
//!   for all tasks ([`crate::Emulator::set_default_verification`], which also leaves
//!   the real mode). `gpu_verified` follows the first poll that reads a passing status.
//!
//! A per-task scripted status wins over a real outcome. A GPU counts as verified (for
//! the instance checks) while its task's status is one that add-node treats as done.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chutes_protocol::Hotkey;
use chutes_protocol::auth::Payload;
use graval::{DeviceInfo, ProofParams, SpotCheck, TimingWindow, Verifier, WorkProduct};
use serde_json::{Value, json};
use socketioxide::SocketIo;

use crate::Shared;
use crate::state::{Event, State};

/// Where the validator reaches a node's bootstrap server, from the node's
/// `(verification_host, verification_port)`: a base URL without a trailing slash.
pub type GravalAddress = Arc<dyn Fn(&str, u16) -> String + Send + Sync>;

/// What the validator asks of a node and how it sizes the check.
#[derive(Clone, Debug, PartialEq)]
pub enum GravalPlan {
    /// The real validator's: `graval::models::V2Plan` for the GPU's model (iterations,
    /// estimate, time window), matrix size by the device's memory. Unknown models fail.
    Model,
    /// Fixed sizes for CPU test nodes (their bootstrap is started with the same
    /// `matrix_size`). No time window: a busy test machine keeps none.
    Fixed { matrix_size: usize, iterations: u64 },
}

/// The real verifier's settings ([`crate::Emulator::verify_with_graval`]).
#[derive(Clone)]
pub struct GravalVerifier {
    /// The validator's key: signs `/info` and `/prove`. The bootstrap server must
    /// have its address in its whitelist.
    pub hotkey: Arc<Hotkey>,
    pub address: GravalAddress,
    pub plan: GravalPlan,
    /// Which work-product positions are replayed (default: graval's 90 uniform).
    pub spot_checks: SpotCheck,
    /// Device-info challenge rounds before the proof (chutes-api asks 20).
    pub device_challenges: usize,
    /// HTTP timeout of `/prove` (chutes-api: 2.5 x the estimate).
    pub prove_timeout: Duration,
}

impl std::fmt::Debug for GravalVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GravalVerifier")
            .field("validator", &self.hotkey.ss58())
            .field("plan", &self.plan)
            .field("spot_checks", &self.spot_checks)
            .field("device_challenges", &self.device_challenges)
            .finish()
    }
}

impl GravalVerifier {
    /// The real validator's plan, `http://host:port` addresses.
    pub fn new(hotkey: Arc<Hotkey>) -> Self {
        GravalVerifier {
            hotkey,
            address: Arc::new(|host, port| format!("http://{host}:{port}")),
            plan: GravalPlan::Model,
            spot_checks: SpotCheck::default(),
            device_challenges: 20,
            prove_timeout: Duration::from_secs(900),
        }
    }

    /// Fixed proof sizes (CPU test nodes; no time window).
    pub fn fixed(mut self, matrix_size: usize, iterations: u64) -> Self {
        self.plan = GravalPlan::Fixed { matrix_size, iterations };
        self
    }

    /// Bootstrap servers are reached through `address` (tests map the node port).
    pub fn address(mut self, address: impl Fn(&str, u16) -> String + Send + Sync + 'static) -> Self {
        self.address = Arc::new(address);
        self
    }
}

/// One task's work, queued by `POST /nodes/` and run once the state lock is released.
#[derive(Debug)]
pub(crate) struct Job {
    task_id: String,
    verifier: GravalVerifier,
}

/// Opens a verification task for one `POST /nodes/` and returns its id and the seed
/// the validator hands out (the same for every GPU of the request). In the real
/// mode the task is queued for [`spawn_jobs`] and reads `pending` until it ends.
pub(crate) fn open_task(state: &mut State) -> (String, u64) {
    state.tasks += 1;
    let task_id = task_id(state.tasks);
    if let Some(verifier) = state.graval.clone() {
        state.real_status.insert(task_id.clone(), "pending".into());
        state.verification_jobs.push(Job { task_id: task_id.clone(), verifier });
    }
    (task_id, state.node_seed)
}

/// The id of the `n`th task (from 1).
pub(crate) fn task_id(n: u64) -> String {
    crate::state::uuid_like(0xa000_0000 + n)
}

/// The status string of a task, as `verification_status` sends it.
pub(crate) fn status(state: &State, task_id: &str) -> String {
    state
        .verification
        .get(task_id)
        .or_else(|| state.real_status.get(task_id))
        .cloned()
        .unwrap_or_else(|| state.default_verification.clone())
}

/// Whether a status means the GPUs passed (add-node's `Verification::Done`).
pub(crate) fn passed(status: &str) -> bool {
    !matches!(status, "pending" | "error" | "failed")
}

/// `GET /nodes/verification_status?task_id=`: the status, and `gpu_verified` per
/// GPU of the task the first time it reads as passed (scripted tasks; real ones
/// announce when their verifier finishes).
pub(crate) fn poll(state: &mut State, task_id: &str, events: &mut Vec<Event>) -> String {
    let status = status(state, task_id);
    if passed(&status) {
        announce(state, task_id, events);
    }
    status
}

fn announce(state: &mut State, task_id: &str, events: &mut Vec<Event>) {
    if state.announced_tasks.insert(task_id.to_owned()) {
        for node in state.nodes.values().filter(|n| n.task_id == task_id) {
            events.push(Event {
                recipients: Some(vec![node.miner_hotkey.clone()]),
                ..Event::new("gpu_verified", json!({"gpu_id": node.uuid, "miner_hotkey": node.miner_hotkey}))
            });
        }
    }
}

/// Starts the queued real verifications on the current (the emulator's) runtime.
pub(crate) fn spawn_jobs(jobs: Vec<Job>, shared: &Shared, io: &SocketIo) {
    for job in jobs {
        let (shared, io) = (shared.clone(), io.clone());
        tokio::spawn(async move {
            let outcome = verify_task(&job, &shared).await;
            // `gpu_verified` goes out before the status reads `verified`, so whoever
            // sees the status can also see the event.
            let mut events = Vec::new();
            if outcome.is_ok() {
                announce(&mut shared.lock().unwrap(), &job.task_id, &mut events);
            }
            crate::sockets::emit(&io, &shared, events).await;
            let mut state = shared.lock().unwrap();
            let status = match &outcome {
                Ok(()) => "verified",
                Err(e) => {
                    tracing::info!(task = %job.task_id, error = %e, "GraVal verification failed");
                    // chutes-api rotates the node seed after any failure.
                    state.node_seed = state.node_seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
                    "failed"
                }
            };
            state.real_status.insert(job.task_id.clone(), status.into());
            state.verification_results.insert(job.task_id.clone(), outcome);
        });
    }
}

/// One GPU of the task, as posted.
struct Gpu {
    index: u64,
    device: DeviceInfo,
    seed: u64,
}

/// `validate_gpus` for one task; `Err` says why it failed.
async fn verify_task(job: &Job, shared: &Shared) -> Result<(), String> {
    let (miner, host, port, mut gpus) = {
        let state = shared.lock().unwrap();
        let nodes: Vec<_> = state.nodes.values().filter(|n| n.task_id == job.task_id).collect();
        let first = nodes.first().ok_or("the task has no GPUs left")?;
        let host = first.verification_host.clone();
        let port = first.posted.get("verification_port").and_then(Value::as_u64).unwrap_or(0);
        let miner = first.miner_hotkey.clone();
        let mut gpus = Vec::new();
        for n in &nodes {
            let device: DeviceInfo = serde_json::from_value(n.posted.clone())
                .map_err(|e| format!("GPU {}: the posted device info does not parse: {e}", n.uuid))?;
            device.validate().map_err(|e| format!("GPU {}: {e}", n.uuid))?;
            let same_host = n.verification_host == host
                && n.posted.get("verification_port").and_then(Value::as_u64) == Some(port);
            if !same_host {
                return Err(format!("GPU {} names another verification host than {host}:{port}", n.uuid));
            }
            let index = n.posted.get("device_index").and_then(Value::as_u64).unwrap_or(0);
            let seed = n.posted.get("seed").and_then(Value::as_u64).unwrap_or(0);
            gpus.push(Gpu { index, device, seed });
        }
        (miner, host, port, gpus)
    };
    gpus.sort_by_key(|g| g.index);
    let port = u16::try_from(port).map_err(|_| format!("verification_port {port} is out of range"))?;
    let base = (job.verifier.address)(&host, port).trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    let v = &job.verifier;

    // Device-info challenges over the devices in device-index order.
    let devices: Vec<DeviceInfo> = gpus.iter().map(|g| g.device.clone()).collect();
    for round in 0..v.device_challenges {
        let challenge = graval::challenge::generate(devices.len());
        let signed = v.hotkey.sign_management(&miner, Payload::Purpose("graval"));
        let resp =
            send(http.get(format!("{base}/info?challenge={challenge}")), &signed, Duration::from_secs(12))
                .await
                .map_err(|e| format!("device challenge {round}: {e}"))?;
        if !graval::challenge::verify(&challenge, &resp, &devices) {
            return Err(format!("device challenge {round}: wrong answer"));
        }
    }

    // The proof of work: one seed for all GPUs (the miner asserted it), a ciphertext each.
    let seed = gpus[0].seed;
    if gpus.iter().any(|g| g.seed != seed) {
        return Err("the GPUs of one task carry different seeds".into());
    }
    let mut plans = Vec::new();
    for g in &gpus {
        plans.push(plan_for(&v.plan, &g.device)?);
    }
    let iterations = plans[0].1;
    if plans.iter().any(|p| p.1 != iterations) {
        return Err("the GPUs of one server need different iteration counts".into());
    }
    // Fresh for this request: the seed is the node's, known to the miner in advance.
    let nonce = graval::Nonce::random();
    let mut ciphertext = BTreeMap::new();
    let mut expected = Vec::new();
    for (g, (params, _, _)) in gpus.iter().zip(&plans) {
        let plaintext = format!("decrypt me please: {}", graval::challenge::generate(1));
        let transport = Verifier::new(*params)
            .encrypt_challenge(&g.device, seed, &nonce, iterations, &plaintext)
            .map_err(|e| format!("encrypting the challenge for {}: {e}", g.device.uuid))?;
        let blob = transport.split_once('|').map_or(transport.as_str(), |(_, b)| b).to_owned();
        ciphertext.insert(g.device.uuid.clone(), blob);
        expected.push((g.device.uuid.clone(), plaintext));
    }
    let body = serde_json::to_vec(
        &json!({"seed": seed, "nonce": nonce.to_hex(), "iterations": iterations, "ciphertext": ciphertext}),
    )
    .map_err(|e| e.to_string())?;
    let signed = v.hotkey.sign_management(&miner, Payload::Body(&body));
    let started = Instant::now();
    let answer = send(
        http.post(format!("{base}/prove")).header("content-type", "application/json").body(body),
        &signed,
        v.prove_timeout,
    )
    .await
    .map_err(|e| format!("/prove: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let answer: Value = serde_json::from_str(&answer).map_err(|e| format!("/prove answered no JSON: {e}"))?;

    let got: std::collections::HashMap<String, String> = answer
        .get("plaintext")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    graval::verify::check_plaintexts(expected.iter().map(|(u, p)| (u.as_str(), p.as_str())), &got)
        .map_err(|e| format!("challenge: {e}"))?;
    if let Some(estimate) = plans[0].2 {
        TimingWindow::default().check(elapsed, estimate).map_err(|e| format!("timing: {e}"))?;
    }
    for (g, (params, _, _)) in gpus.into_iter().zip(plans) {
        let uuid = g.device.uuid.clone();
        let wp: WorkProduct = answer
            .get("proof")
            .and_then(|p| p.get(&uuid))
            .and_then(|p| p.get("work_product"))
            .cloned()
            .ok_or_else(|| format!("/prove sent no work product for {uuid}"))
            .and_then(|w| serde_json::from_value(w).map_err(|e| format!("work product of {uuid}: {e}")))?;
        let spots = v.spot_checks.clone();
        // The replay is CPU work: off the emulator's only runtime worker.
        tokio::task::spawn_blocking(move || {
            Verifier::new(params).check_proof(&g.device, seed, &nonce, iterations, &wp, &spots)
        })
        .await
        .map_err(|e| format!("verifier task: {e}"))?
        .map_err(|e| format!("proof of {uuid}: {e}"))?;
    }
    Ok(())
}

/// (proof parameters, iterations, time estimate) for one device.
fn plan_for(plan: &GravalPlan, device: &DeviceInfo) -> Result<(ProofParams, u64, Option<f64>), String> {
    match plan {
        GravalPlan::Fixed { matrix_size, iterations } => {
            Ok((ProofParams::with_matrix_size(*matrix_size), *iterations, None))
        }
        GravalPlan::Model => {
            let p = graval::models::V2Plan::for_device_name(&device.name)
                .ok_or_else(|| format!("no GraVal plan for GPU model {:?}", device.name))?;
            Ok((ProofParams::for_device(device), p.iterations, Some(p.estimate_s)))
        }
    }
}

/// Sends a signed request; the body as text on 2xx, else the status and body.
async fn send(
    req: reqwest::RequestBuilder,
    signed: &chutes_protocol::auth::SignedHeaders,
    timeout: Duration,
) -> Result<String, String> {
    let mut req = req.timeout(timeout);
    for (k, v) in signed.iter() {
        req = req.header(k, v);
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status.is_success() { Ok(text) } else { Err(format!("HTTP {status}: {text}")) }
}
