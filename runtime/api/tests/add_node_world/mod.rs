//! The add-node world shared by `add_node.rs` and `add_node_graval.rs`: the real
//! kube client against the Kubernetes API emulator, a GraVal bootstrap server on the
//! CPU backend (or a cheating engine), the validator emulator verifying for real
//! (`/info`, `/prove`, graval's verifier), real Postgres and Redis.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use miner_api::bootstrap::{BootstrapTimings, KubeBootstrap};
use miner_validator::ValidatorTarget;
use miner_validator::rest::{RestOptions, ValidatorClient};
use serde_json::{Value, json};

use crate::common::{self, MINER_SEED, VALIDATOR_SEED, hotkey, validators};

/// Test proofs: a 1 MiB CPU "GPU" of 32 x 32 states (about 1,000 slots), 2
/// iterations, so a proof and its check take well under a second on a busy core.
pub const PROOF_BYTES: u64 = 1 << 20;
pub const MATRIX_SIZE: usize = 32;
pub const ITERATIONS: u64 = 2;

pub struct World {
    pub api: common::Api,
    pub kube: kube_emulator::Emulator,
    pub client: kube::Client,
    pub validator: validator_emulator::Emulator,
    pub validator_hotkey: String,
}

/// The honest engine: the CPU backend with a [`PROOF_BYTES`] budget.
pub fn cpu_engine() -> Box<dyn graval::Engine> {
    Box::new(graval::CpuEngine::host(PROOF_BYTES))
}

/// A GraVal bootstrap server for `engine`, whitelisting `validator`; its base URL.
pub async fn graval_server(miner: &str, validator: &str, engine: Box<dyn graval::Engine>) -> String {
    let node = graval::Node::new(vec![engine], Some(MATRIX_SIZE));
    let state = graval_bootstrap::AppState::new(node, miner, &[validator.to_owned()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, graval_bootstrap::router(Arc::new(state))).await });
    base
}

/// A world whose node runs an honest bootstrap server.
pub async fn world(node: kube_emulator::Node) -> World {
    world_with(node, cpu_engine()).await
}

/// A world whose node's bootstrap server proves on `engine`.
pub async fn world_with(node: kube_emulator::Node, engine: Box<dyn graval::Engine>) -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kube = kube_emulator::Emulator::start().unwrap();
    kube.add_node(node);
    // The chart creates the namespace in a real cluster.
    kube.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}})).unwrap();
    let kc = kube::config::Kubeconfig::from_yaml(&kube.kubeconfig_yaml()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let bootstrap_client = client.clone();

    let validator = validator_emulator::Emulator::start();
    validator.set_supported_gpus(&["a6000"]);
    let validator_hotkey = validators().supported[0].hotkey.clone();
    let miner = Arc::new(hotkey(MINER_SEED));
    let graval = graval_server(miner.ss58(), &validator_hotkey, engine).await;
    // No kube-proxy here: the node port leads to the GraVal server started above,
    // for the miner and the validator alike.
    let graval_for_validator = graval.clone();
    validator.verify_with_graval(
        validator_emulator::GravalVerifier::new(Arc::new(hotkey(VALIDATOR_SEED)))
            .fixed(MATRIX_SIZE, ITERATIONS)
            .address(move |_host, _port| graval_for_validator.clone()),
    );

    let target = ValidatorTarget {
        hotkey: validator_hotkey.clone(),
        api: validator.api_url(),
        socket: validator.socket_url(),
    };
    let rest =
        RestOptions { attempts: 2, backoff_initial: Duration::from_millis(50), ..RestOptions::default() };
    let mut clients = HashMap::new();
    clients.insert(
        validator_hotkey.clone(),
        ValidatorClient::with_options(&target, miner.clone(), rest).unwrap(),
    );

    let make = move |db: miner_db::Db| -> Arc<dyn miner_api::NodeBootstrap> {
        Arc::new(KubeBootstrap {
            client: bootstrap_client,
            namespace: "chutes".into(),
            db,
            hotkey: miner,
            validators: clients,
            graval_image: "parachutes/graval-bootstrap:test".into(),
            image_pull_secrets: Vec::new(),
            graval_address: Arc::new(move |_ip, _port| graval.clone()),
            timings: BootstrapTimings {
                // A deadline, not a pace: the proof and its check run on a busy CPU.
                timeout: Duration::from_secs(120),
                poll: Duration::from_millis(100),
                devices_attempts: 3,
                devices_retry: Duration::from_millis(100),
                cleanup_wait: Duration::from_secs(5),
            },
            http: reqwest::Client::new(),
        })
    };
    let api = common::Api::start_with(common::Options {
        make_bootstrap: Some(Box::new(make)),
        ..common::Options::default()
    })
    .await;
    World { api, kube, client, validator, validator_hotkey }
}

pub fn gpu_node(name: &str) -> kube_emulator::Node {
    kube_emulator::Node::new(name)
        .gpus(1)
        .label("chutes/external-ip", "127.0.0.1")
        .label("nvidia.com/gpu.memory", "49152")
        .capacity("cpu", "32")
        .capacity("memory", "128Gi")
}

pub fn args(w: &World, name: &str, short_ref: &str) -> Value {
    json!({"name": name, "validator": w.validator_hotkey, "hourly_cost": 0.8, "gpu_short_ref": short_ref})
}

/// The progress messages of a `POST /servers/` stream.
pub async fn stream(resp: reqwest::Response) -> Vec<String> {
    assert_eq!(resp.status(), 200, "not a stream");
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter(|c| !c.is_empty())
        .map(|c| {
            let v: Value = serde_json::from_str(c.strip_prefix("data: ").unwrap()).unwrap();
            v["message"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// GraVal Jobs and Services left in the namespace.
pub async fn graval_objects(client: &kube::Client) -> usize {
    let jobs: Api<Job> = Api::namespaced(client.clone(), "chutes");
    let services: Api<Service> = Api::namespaced(client.clone(), "chutes");
    let lp = ListParams::default().labels("app=graval");
    jobs.list(&lp).await.unwrap().items.len() + services.list(&lp).await.unwrap().items.len()
}
