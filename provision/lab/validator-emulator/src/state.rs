//! The validator's state and the instance lifecycle: launch configs, the
//! chute-side claim and activation, legacy announce/activate, deletion, job claims.
//!
//! Every operation takes the caller (a verified hotkey, or a launch token) and
//! returns the HTTP answer plus the `miner_broadcast` events it causes; the REST
//! layer sends those after releasing the lock, before it answers, so a client that
//! got the HTTP reply can already wait for the event.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use chutes_protocol::auth::{now_unix, sha256_hex};
use serde_json::{Value, json};

use crate::catalogue::{Catalogue, ChuteSpec};
use crate::{AuthAttempt, Listing, RecordedRequest};

/// `00000000-0000-4000-8000-<n>`: deterministic, uuid-shaped ids.
pub(crate) fn uuid_like(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

/// One answer: status and JSON body.
pub(crate) type Reply = (u16, Value);

fn refuse(status: u16, detail: impl Into<String>) -> Reply {
    (status, json!({"detail": detail.into()}))
}

/// A `miner_broadcast` the validator sends.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub reason: String,
    pub data: Value,
    /// The miner whose instance this is: only its socket gets `config_id`.
    pub owner: Option<String>,
    /// `filter_recipients`: only these hotkeys get the event.
    pub recipients: Option<Vec<String>>,
}

impl Event {
    pub fn new(reason: &str, data: Value) -> Event {
        Event { reason: reason.to_owned(), data, owner: None, recipients: None }
    }

    pub fn payload(&self) -> Value {
        let mut p = json!({"reason": self.reason, "data": self.data});
        if let Some(r) = &self.recipients {
            p["filter_recipients"] = json!(r);
        }
        p
    }

    /// The payload for sockets other than the owner's: no `config_id`.
    pub fn public_payload(&self) -> Value {
        let mut p = self.payload();
        if let Some(d) = p.get_mut("data").and_then(Value::as_object_mut) {
            d.remove("config_id");
        }
        p
    }
}

/// A GPU the miner registered with `POST /nodes/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub uuid: String,
    pub miner_hotkey: String,
    pub server_id: String,
    pub gpu_identifier: String,
    pub verification_host: String,
    pub task_id: String,
    /// The node object as posted, plus `seed`.
    pub posted: Value,
}

/// One instance of a chute, the miner's or another miner's.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub instance_id: String,
    pub chute_id: String,
    pub version: String,
    pub miner_hotkey: String,
    pub config_id: Option<String>,
    pub job_id: Option<String>,
    pub host: String,
    pub port: u16,
    pub gpus: Vec<String>,
    pub active: bool,
    pub verified: bool,
    pub created_at: u64,
    pub activated_at: Option<u64>,
    pub compute_multiplier: f64,
}

/// A bounty the validator paid out: the first instance of the chute activated
/// while the bounty stood takes it, and the bounty is gone from then on (chutes-api
/// claims it when an instance is activated).
#[derive(Debug, Clone, PartialEq)]
pub struct BountyClaim {
    pub chute_id: String,
    pub miner_hotkey: String,
    pub instance_id: String,
    pub bounty: u64,
}

impl Instance {
    pub fn to_wire(&self, chutes_version: Option<String>) -> Value {
        json!({
            "instance_id": self.instance_id,
            "chute_id": self.chute_id,
            "version": self.version,
            "miner_hotkey": self.miner_hotkey,
            "host": self.host,
            "port": self.port,
            "region": "n/a",
            "active": self.active,
            "verified": self.verified,
            "config_id": self.config_id,
            "job_id": self.job_id,
            "chutes_version": chutes_version,
            "nodes": self.gpus,
            "created_at": iso8601(self.created_at),
            "activated_at": self.activated_at.map(iso8601),
            "last_verified_at": if self.verified { Some(iso8601(self.created_at)) } else { None },
            "compute_multiplier": self.compute_multiplier,
        })
    }
}

/// A launch config handed out by `GET /instances/launch_config`.
#[derive(Clone, PartialEq)]
pub struct LaunchConfig {
    pub config_id: String,
    /// The launch token (a bearer credential: `Debug` leaves it out).
    pub token: String,
    pub chute_id: String,
    pub miner_hotkey: String,
    pub server_id: Option<String>,
    pub job_id: Option<String>,
    pub instance_id: Option<String>,
    /// The job was released: the config can no longer be claimed.
    pub released: bool,
}

impl std::fmt::Debug for LaunchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchConfig")
            .field("config_id", &self.config_id)
            .field("chute_id", &self.chute_id)
            .field("miner_hotkey", &self.miner_hotkey)
            .field("server_id", &self.server_id)
            .field("job_id", &self.job_id)
            .field("instance_id", &self.instance_id)
            .field("released", &self.released)
            .finish_non_exhaustive()
    }
}

/// Who holds a job, and who tried it.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobClaim {
    /// (hotkey, config_id) of the holder.
    pub holder: Option<(String, String)>,
    pub history: Vec<String>,
}

/// A rolling update in progress.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RollingUpdate {
    pub old_version: String,
    pub new_version: String,
    pub started_at: u64,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub requests: Vec<RecordedRequest>,
    pub auth_attempts: Vec<AuthAttempt>,
    /// `None`: any hotkey with a valid signature is "registered".
    pub registered: Option<HashSet<String>>,
    pub supported_gpus: Vec<String>,
    pub catalogue: Catalogue,
    /// Raw listing items that replace the derived ones (wire-level tests).
    pub listing_overrides: HashMap<Listing, Vec<Value>>,
    pub utilization_override: Option<Vec<Value>>,
    pub rolling_override: Option<Vec<Value>>,
    pub rolling: BTreeMap<String, RollingUpdate>,
    pub default_verification: String,
    pub verification: HashMap<String, String>,
    /// Real GraVal verification (`None`: scripted outcomes).
    pub graval: Option<crate::verification::GravalVerifier>,
    /// Status of each task the real verifier runs (`pending` until it ends).
    pub real_status: HashMap<String, String>,
    /// And why it ended as it did.
    pub verification_results: HashMap<String, Result<(), String>>,
    /// Real verifications queued by `POST /nodes/`, started by the REST handler.
    pub verification_jobs: Vec<crate::verification::Job>,
    /// Tasks whose `gpu_verified` events went out.
    pub announced_tasks: HashSet<String>,
    pub tasks: u64,
    pub node_seed: u64,
    pub nodes: BTreeMap<String, Node>,
    pub deleted_nodes: Vec<String>,
    /// Launch tokens still available over all chutes; `None` = unlimited.
    pub launch_capacity: Option<usize>,
    pub launch_configs: BTreeMap<String, LaunchConfig>,
    pub job_claims: BTreeMap<String, JobClaim>,
    pub instances: BTreeMap<String, Instance>,
    /// Hotkeys of other miners whose instances scenarios made.
    pub remote_miners: HashSet<String>,
    /// Ids handed out so far (configs, instances).
    pub counter: u64,
    pub released_jobs: Vec<String>,
    /// Bounties instances claimed, in order.
    pub bounty_claims: Vec<BountyClaim>,
    /// Injected failures: (path prefix, status, times left).
    pub faults: VecDeque<(String, u16, usize)>,
    /// Answers to hold back once made: (path prefix, the hold), each used once.
    pub holds: VecDeque<(String, crate::Hold)>,
    /// Payloads that reached at least one authenticated socket.
    pub broadcasts: Vec<Value>,
    /// Every event the validator emitted, listened to or not.
    pub events: Vec<Value>,
}

impl State {
    pub fn next_id(&mut self) -> String {
        self.counter += 1;
        uuid_like(self.counter)
    }

    /// The chute a request names. With an empty catalogue nothing is modelled and
    /// any id stands for a one-GPU chute on the supported GPUs (so wire-level tests
    /// need no setup); once a chute is declared, unknown ids are 404 as on the real
    /// validator.
    pub fn chute(&self, chute_id: &str) -> Option<ChuteSpec> {
        if let Some(c) = self.catalogue.chutes.get(chute_id) {
            return Some(c.clone());
        }
        if self.catalogue.chutes.is_empty() {
            let gpus: Vec<&str> = self.supported_gpus.iter().map(String::as_str).collect();
            return Some(ChuteSpec::simple(chute_id, "", &gpus));
        }
        None
    }

    fn chutes_version(&self, chute_id: &str) -> Option<String> {
        let chute = self.catalogue.chutes.get(chute_id)?;
        self.catalogue.images.get(&chute.image_id).map(|i| i.chutes_version.clone())
    }

    pub fn instance_wire(&self, instance: &Instance) -> Value {
        instance.to_wire(self.chutes_version(&instance.chute_id))
    }

    /// Instances that count against capacity and appear in `active_instances`.
    pub fn live_count(&self, chute_id: &str) -> usize {
        self.instances.values().filter(|i| i.chute_id == chute_id && i.active && i.verified).count()
    }

    /// `_check_scalable`: 423 once the chute's target count is reached.
    fn check_scalable(&self, chute: &ChuteSpec) -> Result<(), Reply> {
        if let Some(cap) = chute.capacity
            && self.live_count(&chute.chute_id) >= cap as usize
        {
            return Err(refuse(
                423,
                format!("Chute {} has reached its target capacity of {cap} instances.", chute.chute_id),
            ));
        }
        Ok(())
    }

    /// `GET /instances/launch_config?chute_id=&server_id=&job_id=`.
    pub fn launch_config(
        &mut self,
        hotkey: &str,
        chute_id: &str,
        server_id: Option<String>,
        job_id: Option<String>,
    ) -> Reply {
        let Some(chute) = self.chute(chute_id) else {
            return refuse(404, format!("Chute {chute_id} not found"));
        };
        if job_id.is_none()
            && let Err(r) = self.check_scalable(&chute)
        {
            return r;
        }
        if let Some(job) = &job_id {
            let for_chute = self
                .catalogue
                .jobs
                .get(job)
                .is_some_and(|j| j.chute_id.as_deref().is_none_or(|c| c == chute_id));
            if !for_chute {
                return refuse(404, format!("Job {job} for chute {chute_id} not found"));
            }
            let claim = self.job_claims.entry(job.clone()).or_default();
            if claim.history.iter().any(|h| h == hotkey) {
                return refuse(403, format!("Your hotkey has already attempted to claim job_id='{job}'"));
            }
            if let Some((holder, _)) = &claim.holder {
                // The real validator lets up to 15 miners race and answers 423 after
                // that; here the first launch config holds the job until released.
                return refuse(423, format!("Job {job} for chute {chute_id} is already held by {holder}"));
            }
        }
        match &mut self.launch_capacity {
            Some(0) => return refuse(423, format!("Chute {chute_id} is at capacity")),
            Some(n) => *n -= 1,
            None => {}
        }
        let config_id = self.next_id();
        let token =
            format!("emulator.{}.{}", config_id, &sha256_hex(format!("launch:{config_id}").as_bytes())[..32]);
        if let Some(job) = &job_id {
            let claim = self.job_claims.entry(job.clone()).or_default();
            claim.history.push(hotkey.to_owned());
            claim.holder = Some((hotkey.to_owned(), config_id.clone()));
        }
        self.launch_configs.insert(
            config_id.clone(),
            LaunchConfig {
                config_id: config_id.clone(),
                token: token.clone(),
                chute_id: chute_id.to_owned(),
                miner_hotkey: hotkey.to_owned(),
                server_id,
                job_id,
                instance_id: None,
                released: false,
            },
        );
        (200, json!({"token": token, "config_id": config_id}))
    }

    /// The GPU checks of `_validate_nodes`: applied once any GPU is registered
    /// (with none, registration is not modelled, for wire-level tests).
    fn check_gpus(&self, hotkey: &str, chute: &ChuteSpec, gpus: &[String], host: &str) -> Result<(), Reply> {
        if self.nodes.is_empty() {
            return Ok(());
        }
        let unique: HashSet<&String> = gpus.iter().collect();
        if unique.len() != chute.gpu_count as usize {
            return Err(refuse(
                400,
                format!(
                    "chute {} requires exactly {} GPUs, got {}",
                    chute.chute_id,
                    chute.gpu_count,
                    unique.len()
                ),
            ));
        }
        for gpu in gpus {
            let Some(node) = self.nodes.get(gpu).filter(|n| n.miner_hotkey == hotkey) else {
                return Err(refuse(404, format!("Node {gpu} not found")));
            };
            if !crate::verification::passed(&crate::verification::status(self, &node.task_id)) {
                return Err(refuse(
                    400,
                    format!("GPU {gpu} is not yet verified, and cannot be associated with an instance"),
                ));
            }
            if let Some(other) = self.instances.values().find(|i| i.gpus.contains(gpu)) {
                return Err(refuse(
                    409,
                    format!("GPU {gpu} is already assigned to instance: {}", other.instance_id),
                ));
            }
            if !chute.supported_gpus.is_empty() && !chute.supported_gpus.contains(&node.gpu_identifier) {
                return Err(refuse(400, format!("Node {gpu} is not compatible with chute node selector!")));
            }
            if !node.verification_host.eq_ignore_ascii_case(host) {
                return Err(refuse(
                    400,
                    format!(
                        "Instance hostname does not match the node verification hostname: host={host} vs {}",
                        node.verification_host
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_host_port(&self, host: &str, port: u16) -> Result<(), Reply> {
        if self.instances.values().any(|i| i.host == host && i.port == port) {
            return Err(refuse(
                409,
                format!("Host/port {host}:{port} is already in use by another instance."),
            ));
        }
        Ok(())
    }

    pub(crate) fn instance_created_event(&self, instance: &Instance, chute: &ChuteSpec) -> Event {
        let model = instance.gpus.first().and_then(|g| self.nodes.get(g)).map(|n| n.gpu_identifier.clone());
        let mut data = json!({
            "chute_id": instance.chute_id,
            "gpu_count": chute.gpu_count,
            "gpu_model_name": model,
            "miner_hotkey": instance.miner_hotkey,
            "instance_id": instance.instance_id,
        });
        if let Some(c) = &instance.config_id {
            data["config_id"] = json!(c);
        }
        Event { owner: Some(instance.miner_hotkey.clone()), ..Event::new("instance_created", data) }
    }

    pub(crate) fn instance_event(reason: &str, instance: &Instance) -> Event {
        let mut data = json!({
            "chute_id": instance.chute_id,
            "miner_hotkey": instance.miner_hotkey,
            "instance_id": instance.instance_id,
        });
        if reason != "instance_verified"
            && let Some(c) = &instance.config_id
        {
            data["config_id"] = json!(c);
        }
        if reason == "instance_verified" {
            data = json!({"instance_id": instance.instance_id, "miner_hotkey": instance.miner_hotkey});
        }
        Event { owner: Some(instance.miner_hotkey.clone()), ..Event::new(reason, data) }
    }

    fn bearer_config(&self, config_id: &str, authorization: Option<&str>) -> Result<LaunchConfig, Reply> {
        let Some(config) = self.launch_configs.get(config_id) else {
            return Err(refuse(404, format!("Launch config {config_id} not found")));
        };
        let token = authorization.unwrap_or("").trim().rsplit(' ').next().unwrap_or("");
        if token != config.token {
            return Err(refuse(401, "Invalid or missing token, expected launch JWT"));
        }
        Ok(config.clone())
    }

    /// `POST /instances/launch_config/{config_id}` from the chute (Bearer launch
    /// token): creates the instance. The envdump, filesystem and GraVal challenges
    /// are not modelled; a claim that passes the GPU checks counts as verified.
    pub fn claim(
        &mut self,
        config_id: &str,
        authorization: Option<&str>,
        body: &[u8],
        events: &mut Vec<Event>,
    ) -> Reply {
        let config = match self.bearer_config(config_id, authorization) {
            Ok(c) => c,
            Err(r) => return r,
        };
        if config.released {
            return refuse(403, format!("Launch config {config_id} was released with its job"));
        }
        if config.instance_id.is_some() {
            return refuse(400, format!("Launch config {config_id} has already been claimed"));
        }
        let Ok(args) = serde_json::from_slice::<Value>(body) else {
            return refuse(422, "body is not JSON");
        };
        let host = args.get("host").and_then(Value::as_str).unwrap_or("").to_owned();
        let port = args
            .pointer("/port_mappings/0/external_port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        let gpus: Option<Vec<String>> = args.get("gpus").and_then(Value::as_array).map(|a| {
            a.iter().filter_map(|g| g.get("uuid").and_then(Value::as_str).map(str::to_owned)).collect()
        });
        let (Some(port), Some(gpus), false) = (port, gpus, host.is_empty()) else {
            return refuse(422, "expected host, port_mappings[0].external_port and gpus[].uuid");
        };
        let Some(chute) = self.chute(&config.chute_id) else {
            return refuse(404, format!("Chute {} not found", config.chute_id));
        };
        if let Some(job) = &config.job_id
            && !self.catalogue.jobs.contains_key(job)
        {
            return refuse(404, format!("Job {job} no longer exists!"));
        }
        if let Err(r) = self
            .check_host_port(&host, port)
            .and_then(|_| self.check_gpus(&config.miner_hotkey, &chute, &gpus, &host))
        {
            return r;
        }
        let instance = Instance {
            instance_id: self.next_id(),
            chute_id: chute.chute_id.clone(),
            version: chute.version.clone(),
            miner_hotkey: config.miner_hotkey.clone(),
            config_id: Some(config_id.to_owned()),
            job_id: config.job_id.clone(),
            host,
            port,
            gpus,
            active: false,
            verified: true,
            created_at: now_unix(),
            activated_at: None,
            compute_multiplier: chute.compute_multiplier,
        };
        if let Some(c) = self.launch_configs.get_mut(config_id) {
            c.instance_id = Some(instance.instance_id.clone());
        }
        events.push(self.instance_created_event(&instance, &chute));
        events.push(Self::instance_event("instance_verified", &instance));
        let reply = json!({
            "seed": self.node_seed,
            "iterations": 1,
            "job_id": config.job_id,
            "symmetric_key": {
                "ciphertext": "",
                "uuid": instance.gpus.first(),
                "response_plaintext": format!("secret is {config_id} {}", self.node_seed),
            },
        });
        self.instances.insert(instance.instance_id.clone(), instance);
        (200, reply)
    }

    /// `GET /instances/launch_config/{config_id}/activate` from the chute.
    pub fn activate(
        &mut self,
        config_id: &str,
        authorization: Option<&str>,
        events: &mut Vec<Event>,
    ) -> Reply {
        let config = match self.bearer_config(config_id, authorization) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(instance_id) = config.instance_id else {
            return refuse(403, "Launch config has not been verified.");
        };
        let Some(instance) = self.instances.get_mut(&instance_id) else {
            return refuse(404, format!("Instance has disappeared for launch_config_id={config_id}"));
        };
        if !instance.active {
            instance.active = true;
            instance.activated_at = Some(now_unix());
            events.push(Self::instance_event("instance_activated", instance));
            let instance = instance.clone();
            self.claim_bounty(&instance);
        }
        (200, json!({"instance_id": instance_id, "chute_id": config.chute_id, "active": true}))
    }

    /// Legacy `POST /instances/{chute_id}/` `{node_ids, host, port}` (202).
    pub fn announce(&mut self, hotkey: &str, chute_id: &str, body: &[u8], events: &mut Vec<Event>) -> Reply {
        let Some(chute) = self.chute(chute_id) else {
            return refuse(404, format!("Chute {chute_id} not found"));
        };
        let Ok(args) = serde_json::from_slice::<Value>(body) else {
            return refuse(422, "body is not JSON");
        };
        let host = args.get("host").and_then(Value::as_str).unwrap_or("").to_owned();
        let port = args.get("port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok());
        let gpus: Option<Vec<String>> = args
            .get("node_ids")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect());
        let (Some(port), Some(gpus), false) = (port, gpus, host.is_empty()) else {
            return refuse(422, "expected node_ids, host and port");
        };
        if let Err(r) = self
            .check_host_port(&host, port)
            .and_then(|_| self.check_scalable(&chute))
            .and_then(|_| self.check_gpus(hotkey, &chute, &gpus, &host))
        {
            return r;
        }
        let instance = Instance {
            instance_id: self.next_id(),
            chute_id: chute_id.to_owned(),
            version: chute.version.clone(),
            miner_hotkey: hotkey.to_owned(),
            config_id: None,
            job_id: None,
            host,
            port,
            gpus,
            active: false,
            verified: false,
            created_at: now_unix(),
            activated_at: None,
            compute_multiplier: chute.compute_multiplier,
        };
        events.push(self.instance_created_event(&instance, &chute));
        let reply = self.instance_wire(&instance);
        self.instances.insert(instance.instance_id.clone(), instance);
        (202, reply)
    }

    /// Legacy `PATCH /instances/{chute_id}/{instance_id}` `{"active": true}`; the
    /// validator's verification is immediate here.
    pub fn patch_activate(
        &mut self,
        hotkey: &str,
        chute_id: &str,
        instance_id: &str,
        body: &[u8],
        events: &mut Vec<Event>,
    ) -> Reply {
        let active =
            serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("active").and_then(Value::as_bool));
        if active != Some(true) {
            return refuse(400, r#"Patch endpoint only supports {"active": true} as request body."#);
        }
        let Some(instance) = self
            .instances
            .get_mut(instance_id)
            .filter(|i| i.chute_id == chute_id && i.miner_hotkey == hotkey)
        else {
            return refuse(404, "Instance not found.");
        };
        let newly_active = !instance.active;
        if newly_active {
            instance.active = true;
            instance.activated_at = Some(now_unix());
            events.push(Self::instance_event("instance_activated", instance));
        }
        if !instance.verified {
            instance.verified = true;
            events.push(Self::instance_event("instance_verified", instance));
        }
        let instance = instance.clone();
        if newly_active {
            self.claim_bounty(&instance);
        }
        (200, self.instance_wire(&instance))
    }

    /// The chute's standing bounty, if any, goes to this newly active instance.
    fn claim_bounty(&mut self, instance: &Instance) {
        if let Some(bounty) = self.catalogue.bounties.remove(&instance.chute_id)
            && bounty > 0
        {
            self.bounty_claims.push(BountyClaim {
                chute_id: instance.chute_id.clone(),
                miner_hotkey: instance.miner_hotkey.clone(),
                instance_id: instance.instance_id.clone(),
                bounty,
            });
        }
    }

    /// Removes an instance and says so (`instance_deleted`), whoever asked.
    pub fn remove_instance(&mut self, instance_id: &str, events: &mut Vec<Event>) -> Option<Instance> {
        let instance = self.instances.remove(instance_id)?;
        events.push(Self::instance_event("instance_deleted", &instance));
        Some(instance)
    }

    /// `DELETE /instances/{chute_id}/{instance_id}` by the miner that owns it.
    pub fn delete_instance(
        &mut self,
        hotkey: &str,
        chute_id: &str,
        instance_id: &str,
        events: &mut Vec<Event>,
    ) -> Reply {
        let owned = self
            .instances
            .get(instance_id)
            .is_some_and(|i| i.chute_id == chute_id && i.miner_hotkey == hotkey);
        if !owned {
            return refuse(
                404,
                format!(
                    "Instance with chute_id='{chute_id}' {instance_id} associated with hotkey='{hotkey}' not found"
                ),
            );
        }
        self.remove_instance(instance_id, events);
        (200, json!({"instance_id": instance_id, "deleted": true}))
    }

    /// `DELETE /miner/jobs/{job_id}`: the holder gives the job back; its launch
    /// config can no longer be claimed and an instance made from it is removed.
    /// Releasing a job one does not hold is a no-op (200, `released: false`), like
    /// deleting an instance that is already gone; another miner's hold is 403.
    pub fn release_job(&mut self, hotkey: &str, job_id: &str, events: &mut Vec<Event>) -> Reply {
        self.released_jobs.push(job_id.to_owned());
        let Some(claim) = self.job_claims.get_mut(job_id) else {
            return (200, json!({"job_id": job_id, "released": false}));
        };
        match claim.holder.clone() {
            Some((holder, config_id)) if holder == hotkey => {
                claim.holder = None;
                let instance = self.launch_configs.get_mut(&config_id).and_then(|c| {
                    c.released = true;
                    c.instance_id.clone()
                });
                if let Some(instance) = instance {
                    self.remove_instance(&instance, events);
                }
                (200, json!({"job_id": job_id, "released": true}))
            }
            Some((holder, _)) => refuse(403, format!("Job {job_id} is held by {holder}, not by {hotkey}")),
            None => (200, json!({"job_id": job_id, "released": false})),
        }
    }

    /// `POST /nodes/`: registers the GPUs under the caller, opens a verification task.
    pub fn post_nodes(&mut self, hotkey: &str, body: &[u8]) -> Reply {
        let Ok(request) = serde_json::from_slice::<Value>(body) else {
            return refuse(400, "body is not JSON");
        };
        let Some(nodes) = request.get("nodes").and_then(Value::as_array) else {
            return refuse(400, "missing nodes");
        };
        let server_id = request.get("server_id").and_then(Value::as_str).unwrap_or("").to_owned();
        for (i, n) in nodes.iter().enumerate() {
            let Some(uuid) = n.get("uuid").and_then(Value::as_str) else {
                return refuse(400, format!("nodes[{i}] has no uuid"));
            };
            let gpu = n.get("gpu_identifier").and_then(Value::as_str).unwrap_or("");
            if !self.supported_gpus.iter().any(|g| g == gpu) {
                return refuse(400, format!("nodes[{i}] ({uuid}): unsupported gpu_identifier {gpu:?}"));
            }
            if let Some(other) = self.nodes.get(uuid).filter(|o| o.miner_hotkey != hotkey) {
                return refuse(409, format!("nodes[{i}] ({uuid}) is registered by {}", other.miner_hotkey));
            }
        }
        let (task_id, seed) = crate::verification::open_task(self);
        let mut posted = Vec::new();
        for n in nodes {
            let mut n = n.clone();
            n["seed"] = json!(seed);
            let text = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let node = Node {
                uuid: text("uuid"),
                miner_hotkey: hotkey.to_owned(),
                server_id: server_id.clone(),
                gpu_identifier: text("gpu_identifier"),
                verification_host: text("verification_host"),
                task_id: task_id.clone(),
                posted: n.clone(),
            };
            self.nodes.insert(node.uuid.clone(), node);
            posted.push(n);
        }
        (202, json!({"nodes": posted, "task_id": task_id}))
    }

    /// `DELETE /nodes/{gpu_id}` by the miner that registered it.
    pub fn delete_node(&mut self, hotkey: &str, gpu: &str) -> Reply {
        self.deleted_nodes.push(gpu.to_owned());
        match self.nodes.get(gpu) {
            Some(n) if n.miner_hotkey == hotkey => {
                self.nodes.remove(gpu);
                (200, json!({"node_id": gpu, "deleted": true}))
            }
            _ => refuse(404, format!("Node {gpu} not found")),
        }
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS+00:00`, the form Python's `isoformat` gives.
pub(crate) fn iso8601(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::iso8601;

    #[test]
    fn timestamps_are_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00+00:00");
        assert_eq!(iso8601(1_798_761_599), "2026-12-31T23:59:59+00:00");
    }
}
