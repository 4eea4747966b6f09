//! An emulator of the validator side the miner talks to, for tests.
//!
//! It runs in-process on its own tokio runtime, on a free port of 127.0.0.1:
//!
//! * socket.io (socketioxide) at `/socket.io`: the `authenticate` handshake with
//!   real sr25519 checks of the signed headers (purpose `sockets`, 600 s skew, and
//!   optionally a set of registered hotkeys), `auth_success` / `auth_failed`, and
//!   `miner_broadcast` events to authenticated sockets (`config_id` only to the
//!   miner that owns the instance, `filter_recipients` honoured).
//! * the REST endpoints of the validator API (reference section 10), each checking
//!   the signature the way the validator does: purpose string where the endpoint
//!   declares one, sha256 of the body otherwise, none on the public ones, the
//!   launch token on the chute-side launch-config endpoints.
//! * state behind them: one [`catalogue`] (chutes, images, jobs) every listing
//!   derives from; the instance lifecycle (launch configs, chute-side claim and
//!   activation, legacy announce/activate, deletion); job claims; bounties paid to
//!   the first instance activated while one stands; registered GPUs;
//!   metrics, utilization and `active_instances` that follow the instances.
//! * a seeded [`scenario`] driver of catalogue changes and events.
//!
//! Everything the miner sends is recorded ([`Emulator::requests`],
//! [`Emulator::auth_attempts`]). [`Emulator::stop`] kills the runtime, dropping
//! every connection without a goodbye, as a crashed validator would;
//! [`Emulator::restart`] comes back on the same port with the state kept.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a poisoned lock or a failed bind is the failure report

pub mod catalogue;
mod rest;
pub mod scenario;
mod sockets;
mod state;
mod verification;
mod views;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use tokio::runtime::Runtime;

pub use catalogue::{ChuteJob, ChuteSpec, ImageSpec, JobPort, JobSpec, Traffic};
pub use scenario::{Scenario, ScenarioError, ScenarioParams, Step};
pub use state::{BountyClaim, Instance, LaunchConfig, Node};
use state::{Event, State};
pub use verification::{GravalAddress, GravalPlan, GravalVerifier};

/// One HTTP request as the emulator received it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header names lowercased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The verified signer, or why verification failed; `Ok("")` on public endpoints.
    pub auth: Result<String, String>,
    pub status: u16,
}

impl RecordedRequest {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One `authenticate` event and what the emulator made of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthAttempt {
    pub payload: Value,
    pub result: Result<String, String>,
}

/// The `/miner/*` listings. Kept apart from the client's `miner_validator::rest::Listing`
/// on purpose: the emulator is the tests' independent account of the validator's paths,
/// so a wrong path in the client fails them instead of being served back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listing {
    Chutes,
    Images,
    Nodes,
    Instances,
    Metrics,
}

impl Listing {
    fn from_segment(s: &str) -> Option<Listing> {
        Some(match s {
            "chutes" => Listing::Chutes,
            "images" => Listing::Images,
            "nodes" => Listing::Nodes,
            "instances" => Listing::Instances,
            "metrics" => Listing::Metrics,
            _ => return None,
        })
    }
}

pub(crate) type Shared = Arc<Mutex<State>>;

struct Running {
    rt: Runtime,
    io: SocketIo,
}

/// Knobs fixed at start.
/// An answer held back by [`Emulator::hold_next`].
#[derive(Debug, Clone, Default)]
pub struct Hold {
    inner: std::sync::Arc<HoldInner>,
}

#[derive(Debug)]
struct HoldInner {
    /// One permit once the held answer is made.
    made: tokio::sync::Semaphore,
    /// One permit once the test lets it go.
    gate: tokio::sync::Semaphore,
}

impl Default for HoldInner {
    fn default() -> Self {
        HoldInner { made: tokio::sync::Semaphore::new(0), gate: tokio::sync::Semaphore::new(0) }
    }
}

impl Hold {
    /// Waits until the held request has come in and its answer is made.
    pub async fn made(&self) {
        if let Ok(p) = self.inner.made.acquire().await {
            p.forget();
        }
        self.inner.made.add_permits(1);
    }

    /// Lets the held answer go.
    pub fn release(&self) {
        if self.inner.gate.available_permits() == 0 {
            self.inner.gate.add_permits(1);
        }
    }

    /// The server's side: the answer is made; wait for the release.
    pub(crate) async fn wait(&self) {
        self.inner.made.add_permits(1);
        let _ = self.inner.gate.acquire().await;
    }
}

#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// Engine.IO ping schedule (the server pings in v4).
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions { ping_interval: Duration::from_secs(25), ping_timeout: Duration::from_secs(20) }
    }
}

pub struct Emulator {
    port: u16,
    shared: Shared,
    options: EmulatorOptions,
    running: Option<Running>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("port", &self.port)
            .field("running", &self.running.is_some())
            .finish()
    }
}

impl Emulator {
    /// Starts on a free port with default timings.
    pub fn start() -> Emulator {
        Emulator::start_with(EmulatorOptions::default())
    }

    pub fn start_with(options: EmulatorOptions) -> Emulator {
        let state = State {
            default_verification: "pending".into(),
            node_seed: 42,
            supported_gpus: vec!["h100".into(), "a100".into()],
            ..State::default()
        };
        let mut emulator = Emulator { port: 0, shared: Arc::new(Mutex::new(state)), options, running: None };
        emulator.launch();
        emulator
    }

    fn launch(&mut self) {
        // Binding can race a just-closed listener of the previous life; retry briefly.
        let mut listener = None;
        for _ in 0..50 {
            match std::net::TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let listener = listener.expect("bind the validator emulator's port");
        listener.set_nonblocking(true).unwrap();
        self.port = listener.local_addr().unwrap().port();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("validator-emulator")
            .enable_all()
            .build()
            .unwrap();
        let (layer, io) = SocketIo::builder()
            .ping_interval(self.options.ping_interval)
            .ping_timeout(self.options.ping_timeout)
            .build_layer();
        sockets::install(&io, self.shared.clone());
        let app = rest::router(self.shared.clone(), io.clone()).layer(layer);
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
        });
        self.running = Some(Running { rt, io });
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// REST base URL, `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// socket.io URL as `VALIDATORS` lists it, `ws://127.0.0.1:PORT`.
    pub fn socket_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Kills the server: every connection drops without a close frame.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.rt.shutdown_background();
        }
    }

    /// Starts again on the same port; recordings and settings are kept, sessions are not.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Sends `miner_broadcast` `{reason, data}` to every authenticated socket and
    /// returns how many sockets it went to (0 while stopped).
    pub async fn broadcast(&self, reason: &str, data: Value) -> usize {
        self.broadcast_raw(json!({"reason": reason, "data": data})).await
    }

    /// Sends any `miner_broadcast` payload (for malformed or unknown-reason cases).
    pub async fn broadcast_raw(&self, payload: Value) -> usize {
        let Some(running) = &self.running else { return 0 };
        let io = running.io.clone();
        let shared = self.shared.clone();
        running
            .rt
            .spawn(async move {
                let n = io.to(sockets::AUTHENTICATED).sockets().len();
                if n > 0 && io.to(sockets::AUTHENTICATED).emit("miner_broadcast", &payload).await.is_ok() {
                    shared.lock().unwrap().broadcasts.push(payload);
                    n
                } else {
                    0
                }
            })
            .await
            .unwrap_or(0)
    }

    /// Server-side disconnect of every socket (`41`), the polite way.
    pub async fn disconnect_all(&self) {
        if let Some(running) = &self.running {
            let io = running.io.clone();
            let _ = running.rt.spawn(async move { io.disconnect().await }).await;
        }
    }

    /// Sockets that passed `authenticate` and are still connected.
    pub async fn authenticated_sockets(&self) -> usize {
        let Some(running) = &self.running else { return 0 };
        let io = running.io.clone();
        running.rt.spawn(async move { io.to(sockets::AUTHENTICATED).sockets().len() }).await.unwrap_or(0)
    }

    /// Waits until at least `n` sockets are authenticated; false on timeout.
    pub async fn wait_authenticated(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.authenticated_sockets().await >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Only these hotkeys pass the "registered on the subnet" check (default: any).
    pub fn register_hotkeys<'a>(&self, hotkeys: impl IntoIterator<Item = &'a str>) {
        self.state().registered = Some(hotkeys.into_iter().map(str::to_owned).collect());
    }

    pub fn set_supported_gpus(&self, gpus: &[&str]) {
        self.state().supported_gpus = gpus.iter().map(|g| (*g).to_owned()).collect();
    }

    /// Replaces a derived `/miner/*` listing with raw items, for wire-level tests
    /// (huge or malformed items); an empty list is sent as `data: NO_ITEMS`.
    /// Everything else should go through the catalogue.
    pub fn set_listing(&self, listing: Listing, items: Vec<Value>) {
        self.state().listing_overrides.insert(listing, items);
    }

    /// Puts a chute given as wire JSON into the catalogue at `version` (known
    /// fields are read, the rest is sent back as is). No event.
    pub fn set_chute(&self, chute_id: &str, version: &str, chute: Value) {
        self.add_chute(ChuteSpec::from_json(chute_id, version, &chute));
    }

    /// Puts a chute into the catalogue (replacing one with the same id). No event:
    /// use [`Emulator::apply`] with [`Step::ChuteCreated`] to also broadcast.
    pub fn add_chute(&self, chute: ChuteSpec) {
        self.state().catalogue.chutes.insert(chute.chute_id.clone(), chute);
    }

    /// Puts an image into the catalogue. No event.
    pub fn add_image(&self, image: ImageSpec) {
        self.state().catalogue.images.insert(image.image_id.clone(), image);
    }

    /// A chute's target instance count (423 once that many are active); `None`: no cap.
    pub fn set_capacity(&self, chute_id: &str, capacity: Option<u32>) {
        if let Some(c) = self.state().catalogue.chutes.get_mut(chute_id) {
            c.capacity = capacity;
        }
    }

    /// Last-hour traffic of a chute, as `/miner/metrics/` reports it.
    pub fn set_traffic(&self, chute_id: &str, traffic: Traffic) {
        self.state().catalogue.traffic.insert(chute_id.to_owned(), traffic);
    }

    /// The catalogue as it stands.
    pub fn catalogue(&self) -> catalogue::Catalogue {
        self.state().catalogue.clone()
    }

    /// Replaces `/chutes/utilization` with raw items (default: derived per chute).
    pub fn set_utilization(&self, items: Vec<Value>) {
        self.state().utilization_override = Some(items);
    }

    /// Replaces `/chutes/rolling_updates` with raw items (default: derived).
    pub fn set_rolling_updates(&self, items: Vec<Value>) {
        self.state().rolling_override = Some(items);
    }

    /// Verification outcome of one task (`pending`, `error`, `failed`, `success`…).
    pub fn set_verification_status(&self, task_id: &str, status: &str) {
        self.state().verification.insert(task_id.to_owned(), status.to_owned());
    }

    /// Scripted outcome for tasks without their own (initially `pending`). Leaves
    /// the real mode ([`Emulator::verify_with_graval`]) for tasks opened from now on.
    pub fn set_default_verification(&self, status: &str) {
        let mut state = self.state();
        state.default_verification = status.to_owned();
        state.graval = None;
    }

    /// Verifies add-node for real from now on: each `POST /nodes/` runs GraVal
    /// against the node's bootstrap server (`/info`, `/prove`, graval's verifier) and
    /// its status reads `pending`, then `verified` or `failed`
    /// (`src/verification.rs`).
    pub fn verify_with_graval(&self, verifier: GravalVerifier) {
        self.state().graval = Some(verifier);
    }

    /// How a real verification ended: `None` while it runs (or for scripted tasks),
    /// `Some(Err(why))` when it failed.
    pub fn verification_result(&self, task_id: &str) -> Option<Result<(), String>> {
        self.state().verification_results.get(task_id).cloned()
    }

    /// Task ids opened by `POST /nodes/`, in order.
    pub fn verification_tasks(&self) -> Vec<String> {
        (1..=self.state().tasks).map(verification::task_id).collect()
    }

    /// Launch tokens to hand out over all chutes before answering 423, on top of
    /// each chute's capacity; `None` = unlimited.
    pub fn set_launch_capacity(&self, capacity: Option<usize>) {
        self.state().launch_capacity = capacity;
    }

    /// A job any chute id may claim, without an event (launch_config with an
    /// unknown job_id is 404). Prefer [`Step::JobCreated`], which names its chute.
    pub fn add_job(&self, job_id: &str) {
        let job = JobSpec {
            job_id: job_id.to_owned(),
            chute_id: None,
            method: "run".into(),
            disk_gb: 10,
            exclude: vec![],
        };
        self.state().catalogue.jobs.insert(job_id.to_owned(), job);
    }

    /// The hotkey holding a job through a launch config, if any.
    pub fn job_holder(&self, job_id: &str) -> Option<String> {
        self.state().job_claims.get(job_id).and_then(|c| c.holder.as_ref()).map(|(h, _)| h.clone())
    }

    /// The launch token of a config, as the chute gets it from `CHUTES_LAUNCH_JWT`.
    pub fn launch_token(&self, config_id: &str) -> Option<String> {
        self.state().launch_configs.get(config_id).map(|c| c.token.clone())
    }

    /// Launch configs handed out, in order.
    pub fn launch_configs(&self) -> Vec<LaunchConfig> {
        let mut all: Vec<LaunchConfig> = self.state().launch_configs.values().cloned().collect();
        all.sort_by(|a, b| a.config_id.cmp(&b.config_id));
        all
    }

    /// What a chute process does on start, for stand-ins that run no chute: claims
    /// the launch config with its token (`POST /instances/launch_config/{id}`, same
    /// checks), then activates it. Returns the instance id, or the refusal as
    /// `(status, detail)`. Events go out as for the HTTP calls.
    pub async fn start_chute(
        &self,
        config_id: &str,
        host: &str,
        port: u16,
        gpus: &[&str],
    ) -> Result<String, (u16, String)> {
        let mut events = Vec::new();
        let result = {
            let mut state = self.state();
            let bearer = state.launch_configs.get(config_id).map(|c| format!("Bearer {}", c.token));
            let body = json!({
                "host": host,
                "port_mappings": [{"proto": "tcp", "internal_port": port, "external_port": port}],
                "gpus": gpus.iter().map(|g| json!({"uuid": g})).collect::<Vec<_>>(),
            });
            let claimed = state.claim(config_id, bearer.as_deref(), body.to_string().as_bytes(), &mut events);
            let activated = match claimed.0 {
                200 => state.activate(config_id, bearer.as_deref(), &mut events),
                _ => claimed,
            };
            match activated {
                (200, v) => Ok(v["instance_id"].as_str().unwrap_or_default().to_owned()),
                (status, v) => Err((status, v["detail"].as_str().unwrap_or_default().to_owned())),
            }
        };
        self.emit(events).await;
        result
    }

    /// Every instance, every miner's.
    pub fn instances(&self) -> Vec<Instance> {
        self.state().instances.values().cloned().collect()
    }

    /// GPUs registered through `POST /nodes/`.
    pub fn nodes(&self) -> Vec<Node> {
        self.state().nodes.values().cloned().collect()
    }

    /// Performs one scenario step: the catalogue change, then the events the real
    /// validator sends for it. Returns how many of its events reached at least one
    /// socket (the change applies while stopped too; its events then reach none).
    pub async fn apply(&self, step: &Step) -> usize {
        let events = self.state().apply(step);
        self.emit(events).await
    }

    /// The validator drops an instance (consecutive failures, say): it is gone from
    /// every listing and `instance_deleted` is broadcast. False if there was none.
    pub async fn evict_instance(&self, instance_id: &str) -> bool {
        let mut events = Vec::new();
        let found = self.state().remove_instance(instance_id, &mut events).is_some();
        self.emit(events).await;
        found
    }

    async fn emit(&self, events: Vec<Event>) -> usize {
        let before = self.state().broadcasts.len();
        match &self.running {
            Some(running) => {
                let io = running.io.clone();
                let shared = self.shared.clone();
                let _ = running.rt.spawn(async move { sockets::emit(&io, &shared, events).await }).await;
            }
            None => self.state().events.extend(events.iter().map(Event::payload)),
        }
        let state = self.state();
        state.broadcasts[before.min(state.broadcasts.len())..].len()
    }

    /// Every event the validator emitted (REST-caused and applied steps), whether
    /// or not a socket was there to get it.
    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }

    /// The next `times` requests whose path starts with `path_prefix` get `status`.
    pub fn fail_next(&self, path_prefix: &str, status: u16, times: usize) {
        self.state().faults.push_back((path_prefix.to_owned(), status, times));
    }

    /// The next request whose path starts with `path_prefix` is answered from the
    /// state as it is then (as the validator reads its database), but the answer is
    /// held back until [`Hold::release`]: a slow listing stream, for tests of what
    /// changes while one is in flight.
    pub fn hold_next(&self, path_prefix: &str) -> Hold {
        let hold = Hold::default();
        self.state().holds.push_back((path_prefix.to_owned(), hold.clone()));
        hold
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    pub fn auth_attempts(&self) -> Vec<AuthAttempt> {
        self.state().auth_attempts.clone()
    }

    /// Payloads broadcast to at least one authenticated socket.
    pub fn broadcasts(&self) -> Vec<Value> {
        self.state().broadcasts.clone()
    }

    pub fn deleted_nodes(&self) -> Vec<String> {
        self.state().deleted_nodes.clone()
    }

    pub fn released_jobs(&self) -> Vec<String> {
        self.state().released_jobs.clone()
    }

    /// Bounties paid out to activated instances, in order.
    pub fn bounty_claims(&self) -> Vec<BountyClaim> {
        self.state().bounty_claims.clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.lock().unwrap()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}
