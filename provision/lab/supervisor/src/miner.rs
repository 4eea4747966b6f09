//! The miner's runtime in the lab: the API (with the add-node flow) and Gepetto, run
//! in the supervisor's process on the lab's Postgres, Redis, Kubernetes emulator and
//! validator emulator, exactly as `chutes-miner api` and `chutes-miner gepetto` wire them.
//!
//! With images (`lab up`'s default), the GraVal bootstrap and chute pods are real
//! containers at node address + NodePort ([`crate::containers`]): [`GravalAddress::node_port`]
//! and no stand-in. With `--no-images` (the fast path) the lab stands in for them, here and
//! nowhere else: one GraVal bootstrap server (CPU backend) per GPU host, reached through
//! [`GravalAddress`], and [`ChuteStandIn`], which plays a chute's launch-config handshake
//! for a deployment whose pod runs and, for a job, completes the pod.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chutes_protocol::Hotkey;
use miner_api::bootstrap::{BootstrapTimings, KubeBootstrap};
use miner_db::Db;
use miner_events::{Producer, StreamConfig};
use miner_gepetto::CancellationToken;
use miner_validator::ValidatorTarget;
use miner_validator::rest::ValidatorClient;

use crate::{LabError, step_err};

/// The lab's miner hotkey seed. A lab key: it signs only for the lab's own emulated validator.
pub const MINER_SEED: &str = "0x1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1";
/// The emulated validator's hotkey seed.
pub const VALIDATOR_SEED: &str = "0x7a17a17a17a17a17a17a17a17a17a17a17a17a17a17a17a17a17a17a17a17a17";

/// Test-sized GraVal proofs: a 1 MiB CPU "GPU" of 32 x 32 states, 2 iterations, so a
/// proof and its real check take well under a second on a busy core.
pub const PROOF_BYTES: u64 = 1 << 20;
pub const MATRIX_SIZE: usize = 32;
pub const ITERATIONS: u64 = 2;

pub const NAMESPACE: &str = "chutes";

pub fn hotkey(seed: &str, what: &str) -> Result<Hotkey, LabError> {
    Hotkey::from_seed_hex(seed, what).map_err(|e| step_err("lab hotkey", e))
}

/// Where the miner and the validator reach a node's GraVal bootstrap server, from the
/// node's external IP and the Service's NodePort.
#[derive(Clone, Default)]
pub struct GravalAddress {
    /// External IP → base URL of the stand-in server; empty: node address + NodePort.
    by_ip: Arc<Mutex<HashMap<String, String>>>,
}

impl GravalAddress {
    /// Real bootstrap pods (the workload runner): `http://IP:NODEPORT`.
    pub fn node_port() -> GravalAddress {
        GravalAddress::default()
    }

    pub fn url(&self, ip: &str, port: u16) -> String {
        match self.by_ip.lock().unwrap_or_else(|p| p.into_inner()).get(ip) {
            Some(url) => url.clone(),
            None => format!("http://{ip}:{port}"),
        }
    }

    /// Starts a GraVal bootstrap server (CPU backend, `gpus` test-sized devices) for the
    /// host at `ip`; its GPUs' uuids are unique to `host_index`.
    pub async fn start_stand_in(
        &self,
        ip: &str,
        host_index: usize,
        gpus: usize,
        miner: &str,
        validator: &str,
    ) -> Result<String, LabError> {
        let engines: Vec<Box<dyn graval::Engine>> = (0..gpus)
            .map(|g| {
                let mut info = graval::cpu::host_device_info(PROOF_BYTES, 1);
                info.uuid = format!("{host_index:08x}1ab040008000{g:012x}");
                Box::new(graval::CpuEngine::with_device(info, 1)) as Box<dyn graval::Engine>
            })
            .collect();
        let node = graval::Node::new(engines, Some(MATRIX_SIZE));
        let state = graval_bootstrap::AppState::new(node, miner, &[validator.to_owned()])
            .map_err(|e| step_err("graval bootstrap server", e))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| step_err("graval bootstrap server", e))?;
        let addr = listener.local_addr().map_err(|e| step_err("graval bootstrap server", e))?;
        tokio::spawn(async move { axum::serve(listener, graval_bootstrap::router(Arc::new(state))).await });
        let url = format!("http://{addr}");
        self.by_ip.lock().unwrap_or_else(|p| p.into_inner()).insert(ip.to_owned(), url.clone());
        Ok(addr.to_string())
    }
}

/// The validator's real GraVal check (test-sized proofs) through `address`.
pub fn verifier(address: &GravalAddress) -> Result<validator_emulator::GravalVerifier, LabError> {
    let address = address.clone();
    Ok(validator_emulator::GravalVerifier::new(Arc::new(hotkey(VALIDATOR_SEED, "lab validator")?))
        .fixed(MATRIX_SIZE, ITERATIONS)
        .address(move |ip, port| address.url(ip, port)))
}

/// What the runtime runs on.
pub struct Setup<'a> {
    pub postgres_url: String,
    pub redis_url: String,
    pub kubeconfig_yaml: String,
    pub validator: &'a validator_emulator::Emulator,
    pub graval: GravalAddress,
}

/// The running API and Gepetto; dropping it stops them.
pub struct Runtime {
    pub api_url: String,
    pub api_addr: String,
    pub db: Db,
    pub client: kube::Client,
    shutdown: CancellationToken,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn err(what: &'static str) -> impl Fn(String) -> LabError {
    move |e| step_err(what, e)
}

/// Starts the API (with sockets to the validator and the add-node flow) and Gepetto.
pub async fn start(setup: Setup<'_>) -> Result<Runtime, LabError> {
    let e = err("miner runtime");
    let miner = Arc::new(hotkey(MINER_SEED, "lab miner")?);
    let validator_hotkey = hotkey(VALIDATOR_SEED, "lab validator")?.ss58().to_owned();
    let db = Db::connect(&setup.postgres_url).await.map_err(|x| e(x.to_string()))?;
    db.migrate().await.map_err(|x| e(x.to_string()))?;
    let producer =
        Producer::connect(&setup.redis_url, StreamConfig::default()).map_err(|x| e(x.to_string()))?;
    let validators = miner_config::Validators::parse(&format!(
        r#"{{"supported":[{{"hotkey":"{validator_hotkey}","registry":"registry.lab","api":"{}","socket":"{}"}}]}}"#,
        setup.validator.api_url(),
        setup.validator.socket_url()
    ))
    .map_err(|x| e(x.to_string()))?;
    let kc = kube::config::Kubeconfig::from_yaml(&setup.kubeconfig_yaml).map_err(|x| e(x.to_string()))?;
    let cfg =
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|x| e(x.to_string()))?;
    let client = kube::Client::try_from(cfg).map_err(|x| e(x.to_string()))?;
    let target = ValidatorTarget {
        hotkey: validator_hotkey.clone(),
        api: setup.validator.api_url(),
        socket: setup.validator.socket_url(),
    };
    let rest = ValidatorClient::new(&target, miner.clone()).map_err(|x| e(x.to_string()))?;
    let shutdown = CancellationToken::new();

    // The API, as `chutes-miner api` wires it, with the lab's way to the bootstrap servers.
    let _socket =
        miner_validator::socket::spawn(target.clone(), miner.clone(), producer.clone(), shutdown.clone());
    let graval = setup.graval.clone();
    let bootstrap = Arc::new(KubeBootstrap {
        client: client.clone(),
        namespace: NAMESPACE.into(),
        db: db.clone(),
        hotkey: miner.clone(),
        validators: HashMap::from([(validator_hotkey.clone(), rest.clone())]),
        graval_image: "parachutes/graval-bootstrap:lab".into(),
        image_pull_secrets: Vec::new(),
        graval_address: Arc::new(move |ip, port| graval.url(ip, port)),
        timings: BootstrapTimings {
            timeout: Duration::from_secs(300),
            poll: Duration::from_millis(200),
            ..BootstrapTimings::default()
        },
        http: reqwest::Client::new(),
    });
    let state = miner_api::AppState::new(db.clone(), miner.clone(), producer, validators)
        .map_err(|x| e(x.to_string()))?
        .with_bootstrap(bootstrap);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|x| e(x.to_string()))?;
    let addr = listener.local_addr().map_err(|x| e(x.to_string()))?;
    let stop = shutdown.clone();
    tokio::spawn(miner_api::serve(listener, state, async move { stop.cancelled().await }));

    // Gepetto, as `chutes-miner gepetto` wires it; loops a little faster than production's
    // so the lab's scenario plays out in seconds.
    let mut gcfg = miner_gepetto::Config::new(NAMESPACE, miner.ss58());
    gcfg.autoscaler_interval = Duration::from_secs(5);
    gcfg.reconcile_interval = Duration::from_secs(10);
    gcfg.pod_exit_wait = Duration::from_secs(2);
    let cluster = miner_gepetto::cluster::Cluster::start(client.clone(), NAMESPACE, shutdown.clone());
    let link = miner_gepetto::ValidatorLink { hotkey: validator_hotkey, client: rest, registry_port: 30500 };
    let gepetto = miner_gepetto::Gepetto::new(
        db.clone(),
        client.clone(),
        cluster,
        gcfg,
        Arc::new(miner_gepetto::Heuristic),
        vec![link],
    );
    let consumer =
        miner_events::Consumer::new(&setup.redis_url, "gepetto", "gepetto-lab", StreamConfig::default())
            .map_err(|x| e(x.to_string()))?;
    tokio::spawn(gepetto.run(consumer, shutdown.clone()));

    Ok(Runtime { api_url: format!("http://{addr}"), api_addr: addr.to_string(), db, client, shutdown })
}

/// Plays the chute side for deployments whose pod runs (without images; with them the
/// chute-standin container does): claims and activates the launch config with the
/// validator, as the chute's handshake does; a job's pod then completes, as a finished
/// job's chute exits.
#[derive(Default)]
pub struct ChuteStandIn {
    done: Mutex<BTreeSet<String>>,
}

impl ChuteStandIn {
    /// One pass over the deployments; call it every second or so.
    pub async fn tick(
        &self,
        db: &Db,
        kube: &kube_emulator::Emulator,
        validator: &validator_emulator::Emulator,
    ) {
        let Ok(deployments) = db.all_deployments().await else { return };
        for d in deployments {
            let dep = &d.deployment;
            let (Some(config_id), Some(host), Some(port)) = (&dep.config_id, &dep.host, dep.port) else {
                continue;
            };
            if self.done.lock().unwrap_or_else(|p| p.into_inner()).contains(&dep.deployment_id) {
                continue;
            }
            let pods = kube.list("v1", "Pod", Some(NAMESPACE)).unwrap_or_default();
            let pod = pods.iter().find(|p| {
                p["metadata"]["labels"]["chutes/deployment-id"] == dep.deployment_id.as_str()
                    && p["status"]["phase"] == "Running"
            });
            let Some(pod) = pod else { continue };
            let gpus: Vec<&str> = d.gpus.iter().map(|g| g.gpu_id.as_str()).collect();
            match validator.start_chute(config_id, host, port as u16, &gpus).await {
                Ok(instance) => {
                    tracing::info!(deployment = %dep.deployment_id, %instance, "chute stand-in: instance active");
                    if dep.job_id.is_some()
                        && let Some(name) = pod["metadata"]["name"].as_str()
                    {
                        kube.succeed_pod(NAMESPACE, name);
                    }
                }
                Err((status, detail)) => {
                    tracing::warn!(deployment = %dep.deployment_id, status, %detail, "chute stand-in: claim refused");
                }
            }
            self.done.lock().unwrap_or_else(|p| p.into_inner()).insert(dep.deployment_id.clone());
        }
    }
}
