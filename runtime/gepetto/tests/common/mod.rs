#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]
//! A miner for Gepetto to run on: real Postgres, the Kubernetes emulator with GPU
//! nodes (driven by the real kube client), the validator emulator.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chutes_protocol::Hotkey;
use lab_hosts::Postgres;
use miner_db::{Db, NewGpu, NewServer};
use miner_events::Event;
use miner_events::payloads::*;
use miner_gepetto::cluster::Cluster;
use miner_gepetto::{CancellationToken, Config, Gepetto, Heuristic, Strategy, ValidatorLink};
use miner_validator::ValidatorTarget;
use miner_validator::rest::{RestOptions, ValidatorClient};
use serde_json::{Value, json};
use validator_emulator::ImageSpec;

pub const NS: &str = "chutes";
pub const MINER_SEED: &str = "0x3333333333333333333333333333333333333333333333333333333333333333";
pub const VALIDATOR_SEED: &str = "0x4444444444444444444444444444444444444444444444444444444444444444";

pub fn pg() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start().expect("postgres"))
}

pub fn hotkey(seed: &str) -> Hotkey {
    Hotkey::from_seed_hex(seed, "test").unwrap()
}

pub fn gpu_uuid(server: usize, gpu: usize) -> String {
    format!("{server:08x}-0000-4000-8000-{gpu:012x}")
}

pub struct World {
    pub db: Db,
    pub db_url: String,
    pub kube: kube_emulator::Emulator,
    pub validator: validator_emulator::Emulator,
    pub client: kube::Client,
    pub gepetto: Gepetto,
    pub shutdown: CancellationToken,
    pub miner: String,
    pub vhot: String,
    /// (node name, server id = node uid)
    pub servers: Vec<(String, String)>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct Shape {
    pub servers: usize,
    pub gpus: usize,
    pub stub_grace: Duration,
    pub strategy: Arc<dyn Strategy>,
    /// `GEPETTO_DEFAULT_DISK_GB`.
    pub default_disk_gb: u32,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            servers: 1,
            gpus: 8,
            stub_grace: Duration::from_secs(600),
            strategy: Arc::new(Heuristic),
            default_disk_gb: 10,
        }
    }
}

pub async fn database() -> (Db, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("gepetto_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let url = pg().create_database(&name).unwrap();
    let db = Db::connect(&url).await.unwrap();
    db.migrate().await.unwrap();
    (db, url)
}

/// A kube client on the emulator (one per tokio runtime).
pub async fn kube_client(kube: &kube_emulator::Emulator) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&kube.kubeconfig_yaml()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// Emulators and a database with `shape.servers` servers of `shape.gpus` verified h100s.
pub async fn world(shape: Shape) -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (db, db_url) = database().await;
    let kube = kube_emulator::Emulator::start().unwrap();
    kube.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})).unwrap();
    let validator = validator_emulator::Emulator::start();
    let miner = hotkey(MINER_SEED);
    let vhot = hotkey(VALIDATOR_SEED).ss58().to_owned();
    validator.register_hotkeys([miner.ss58()]);
    let mut servers = Vec::new();
    for s in 0..shape.servers {
        let name = format!("gpu-{s}");
        let ip = format!("192.0.2.{}", s + 1);
        kube.add_node(
            kube_emulator::Node::new(&name)
                .gpus(shape.gpus as u32)
                .label("chutes/worker", "true")
                .label("chutes/external-ip", &ip)
                .capacity("ephemeral-storage", "2000Gi")
                .capacity("cpu", "128")
                .capacity("memory", "2048Gi")
                .address(&ip),
        );
        let node = kube.get("v1", "Node", None, &name).unwrap().unwrap();
        let uid = node["metadata"]["uid"].as_str().unwrap().to_owned();
        db.insert_server(&NewServer {
            server_id: uid.clone(),
            validator: vhot.clone(),
            name: name.clone(),
            ip_address: Some(ip),
            labels: json!({}),
            gpu_count: shape.gpus as i32,
            cpu_per_gpu: 4,
            memory_per_gpu: 80,
            hourly_cost: 1.0 + s as f64 * 0.1,
        })
        .await
        .unwrap();
        let gpus: Vec<NewGpu> = (0..shape.gpus)
            .map(|g| NewGpu {
                gpu_id: gpu_uuid(s, g),
                device_info: json!({}),
                model_short_ref: "h100".into(),
            })
            .collect();
        db.insert_gpus(&uid, &vhot, &gpus).await.unwrap();
        db.verify_server_gpus(&uid).await.unwrap();
        servers.push((name, uid));
    }
    let client = kube_client(&kube).await;
    let shutdown = CancellationToken::new();
    let gepetto = gepetto_on(&db, &client, &validator, &vhot, &shape, &shutdown).await;
    World {
        db,
        db_url,
        kube,
        validator,
        client,
        gepetto,
        shutdown,
        miner: miner.ss58().to_owned(),
        vhot,
        servers,
    }
}

/// A Gepetto over existing stores (as a restarted process would be).
pub async fn gepetto_on(
    db: &Db,
    client: &kube::Client,
    validator: &validator_emulator::Emulator,
    vhot: &str,
    shape: &Shape,
    shutdown: &CancellationToken,
) -> Gepetto {
    let cluster = Cluster::start(client.clone(), NS, shutdown.clone());
    assert!(cluster.ready().await);
    let miner = hotkey(MINER_SEED);
    let mut cfg = Config::new(NS, miner.ss58());
    cfg.stub_grace = shape.stub_grace;
    cfg.default_disk_gb = shape.default_disk_gb;
    let target =
        ValidatorTarget { hotkey: vhot.to_owned(), api: validator.api_url(), socket: validator.socket_url() };
    let options = RestOptions {
        backoff_initial: Duration::from_millis(200),
        backoff_cap: Duration::from_millis(400),
        ..RestOptions::default()
    };
    let rest = ValidatorClient::with_options(&target, Arc::new(miner), options).unwrap();
    let link = ValidatorLink { hotkey: vhot.to_owned(), client: rest, registry_port: 30501 };
    Gepetto::new(db.clone(), client.clone(), cluster, cfg, shape.strategy.clone(), vec![link])
}

/// The validator's chute record.
pub fn remote_chute(id: &str, version: &str, gpus: u32) -> Value {
    json!({
        "chute_id": id, "name": format!("chute {id}"), "image": "user/llm:1", "code": "print('hi')\n",
        "filename": "llm.py", "ref_str": "llm:chute", "version": version, "supported_gpus": ["h100"],
        "node_selector": {"gpu_count": gpus}, "chutes_version": "0.3.40", "cords": [{"path": "/chat"}],
        "jobs": [{"name": "run", "ports": [{"port": 9000, "proto": "tcp"}]}],
    })
}

/// The catalogue image every test chute runs (`patch`, `chutes_version` vary).
pub fn image(patch: Option<&str>, chutes_version: &str) -> ImageSpec {
    ImageSpec {
        image_id: "img-1".into(),
        username: "chutes".into(),
        name: "vllm".into(),
        tag: "0.9".into(),
        patch_version: patch.map(str::to_owned),
        chutes_version: chutes_version.into(),
    }
}

impl World {
    /// Another miner claims a launch config of `chute_id` and starts an instance
    /// (active and verified at the validator). Returns that miner's client.
    pub async fn other_miner_runs(&self, chute_id: &str) -> ValidatorClient {
        let other = hotkey("0x5555555555555555555555555555555555555555555555555555555555555555");
        self.validator.register_hotkeys([self.miner.as_str(), other.ss58()]);
        let target = ValidatorTarget {
            hotkey: self.vhot.clone(),
            api: self.validator.api_url(),
            socket: self.validator.socket_url(),
        };
        let rest = ValidatorClient::with_options(&target, Arc::new(other), RestOptions::default()).unwrap();
        let theirs = rest.launch_config(chute_id, None).await.unwrap();
        self.validator
            .start_chute(&theirs.config_id, "198.51.100.9", 32000, &["ffffffff-0000-4000-8000-000000000001"])
            .await
            .unwrap();
        rest
    }

    pub fn chute(&self, id: &str, version: &str, gpus: u32) {
        self.validator.set_chute(id, version, remote_chute(id, version, gpus));
    }

    pub fn created(&self, id: &str, version: &str, job_only: bool) -> Event {
        Event::ChuteCreated(ChuteChanged {
            chute_id: id.into(),
            version: version.into(),
            job_only,
            validator: self.vhot.clone(),
        })
    }

    /// Names of the pods of one deployment in the chute namespace.
    pub fn pods_of(&self, deployment_id: &str) -> Vec<String> {
        self.kube
            .list("v1", "Pod", Some(NS))
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["labels"]["chutes/deployment-id"] == deployment_id)
            .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn instance(&self, kind: &str, instance_id: &str, config_id: Option<&str>) -> Event {
        let e = InstanceEvent {
            instance_id: instance_id.into(),
            chute_id: None,
            miner_hotkey: Some(self.miner.clone()),
            config_id: config_id.map(str::to_owned),
            gpu_count: None,
            gpu_model_name: None,
            validator: self.vhot.clone(),
        };
        match kind {
            "created" => Event::InstanceCreated(e),
            "verified" => Event::InstanceVerified(e),
            "activated" => Event::InstanceActivated(e),
            _ => Event::InstanceDeleted(e),
        }
    }

    /// Handles an event twice, as an at-least-once bus may deliver it, and waits
    /// for the deploys it started.
    pub async fn twice(&self, e: &Event) {
        self.gepetto.handle(e).await.unwrap();
        self.gepetto.handle(e).await.unwrap();
        self.gepetto.wait_idle().await;
    }

    pub fn jobs(&self) -> Vec<Value> {
        self.kube.list("batch/v1", "Job", Some(NS)).unwrap()
    }

    pub fn services(&self) -> Vec<Value> {
        self.kube.list("v1", "Service", Some(NS)).unwrap()
    }

    pub fn job(&self, deployment_id: &str) -> Option<Value> {
        self.kube.get("batch/v1", "Job", Some(NS), &format!("chute-{deployment_id}")).unwrap()
    }
}

/// Polls `f` until it holds, for at most a generous deadline (CI is slow).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The GPUs pinned by a Job's NVIDIA_VISIBLE_DEVICES.
pub fn pinned(job: &Value) -> Vec<String> {
    let env = job["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    let v = env.iter().find(|e| e["name"] == "NVIDIA_VISIBLE_DEVICES").unwrap()["value"].as_str().unwrap();
    v.split(',').map(|g| g.trim_start_matches("GPU-").to_owned()).collect()
}
