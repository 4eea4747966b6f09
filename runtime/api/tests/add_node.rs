#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `POST /servers/` end to end: the real kube client against the Kubernetes API
//! emulator, GraVal's real bootstrap server (CPU backend), the validator emulator,
//! real Postgres and Redis.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ListParams};
use miner_api::bootstrap::{BootstrapTimings, KubeBootstrap};
use miner_validator::ValidatorTarget;
use miner_validator::rest::{RestOptions, ValidatorClient};
use serde_json::{Value, json};

struct World {
    api: Api_,
    kube: kube_emulator::Emulator,
    client: kube::Client,
    validator: validator_emulator::Emulator,
    validator_hotkey: String,
}

type Api_ = common::Api;

async fn graval_server(miner: &str, validator: &str) -> String {
    let engine: Box<dyn graval::Engine> = Box::new(graval::CpuEngine::host(64 << 20));
    let node = graval::Node::new(vec![engine], Some(64));
    let state = graval_bootstrap::AppState::new(node, miner, &[validator.to_owned()]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, graval_bootstrap::router(Arc::new(state))).await });
    base
}

async fn world(node: kube_emulator::Node) -> World {
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
    validator.set_default_verification("success");
    let validator_hotkey = validators().supported[0].hotkey.clone();
    let miner = Arc::new(hotkey(MINER_SEED));
    let graval = graval_server(miner.ss58(), &validator_hotkey).await;

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
            // No kube-proxy here: the node port leads to the GraVal server started above.
            graval_address: Arc::new(move |_ip, _port| graval.clone()),
            timings: BootstrapTimings {
                timeout: Duration::from_secs(20),
                poll: Duration::from_millis(100),
                devices_attempts: 3,
                devices_retry: Duration::from_millis(100),
                cleanup_wait: Duration::from_secs(5),
            },
            http: reqwest::Client::new(),
        })
    };
    let api =
        common::Api::start_with(Options { make_bootstrap: Some(Box::new(make)), ..Options::default() }).await;
    World { api, kube, client, validator, validator_hotkey }
}

fn gpu_node(name: &str) -> kube_emulator::Node {
    kube_emulator::Node::new(name)
        .gpus(1)
        .label("chutes/external-ip", "127.0.0.1")
        .label("nvidia.com/gpu.memory", "49152")
        .capacity("cpu", "32")
        .capacity("memory", "128Gi")
}

fn args(w: &World, name: &str, short_ref: &str) -> Value {
    json!({"name": name, "validator": w.validator_hotkey, "hourly_cost": 0.8, "gpu_short_ref": short_ref})
}

async fn stream(resp: reqwest::Response) -> Vec<String> {
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

async fn graval_objects(client: &kube::Client) -> usize {
    let jobs: Api<Job> = Api::namespaced(client.clone(), "chutes");
    let services: Api<Service> = Api::namespaced(client.clone(), "chutes");
    let lp = ListParams::default().labels("app=graval");
    jobs.list(&lp).await.unwrap().items.len() + services.list(&lp).await.unwrap().items.len()
}

#[tokio::test]
async fn a_node_is_tracked_verified_and_graval_is_removed() {
    let w = world(gpu_node("gpu-a.lab")).await;
    let lines = stream(w.api.post("/servers/", &args(&w, "gpu-a.lab", "a6000")).send().await.unwrap()).await;
    assert!(lines.last().unwrap().starts_with("completed server bootstrapping in"), "{lines:#?}");

    let servers = w.api.db.list_servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    let s = &servers[0].server;
    assert_eq!((s.gpu_count, s.cpu_per_gpu, s.memory_per_gpu), (1, 4, 48));
    assert_eq!(s.seed, Some(42));
    assert_eq!(s.ip_address.as_deref(), Some("127.0.0.1"));
    let port = s.verification_port.unwrap();
    assert!((30000..=32767).contains(&port));
    assert_eq!(servers[0].gpus.len(), 1);
    assert!(servers[0].gpus.iter().all(|g| g.verified && g.model_short_ref == "a6000"));

    // The node carries the miner's labels; GraVal is gone.
    let node = Api::<Node>::all(w.client.clone()).get("gpu-a.lab").await.unwrap();
    let labels = node.metadata.labels.unwrap();
    assert_eq!(labels["gpu-short-ref"], "a6000");
    assert_eq!(labels["chutes/validator"], w.validator_hotkey);
    assert_eq!(labels["chutes/worker"], "true");
    assert_eq!(graval_objects(&w.client).await, 0);

    // What the validator saw: a body-signed POST /nodes/ describing the GPU.
    let posts: Vec<_> = w
        .validator
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/nodes"))
        .collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].auth.as_deref(), Ok(hotkey(MINER_SEED).ss58()));
    let body: Value = serde_json::from_slice(&posts[0].body).unwrap();
    assert_eq!(body["server_id"], s.server_id);
    let n = &body["nodes"][0];
    assert_eq!((n["device_index"].clone(), n["gpu_identifier"].clone()), (json!(0), json!("a6000")));
    assert_eq!(
        (n["verification_host"].clone(), n["verification_port"].clone()),
        (json!("127.0.0.1"), json!(port))
    );
    assert_eq!(n["uuid"], json!(servers[0].gpus[0].gpu_id));
}

#[tokio::test]
async fn a_failed_verification_undoes_everything() {
    let w = world(gpu_node("gpu-b")).await;
    w.validator.set_default_verification("failed");
    let lines = stream(w.api.post("/servers/", &args(&w, "gpu-b", "a6000")).send().await.unwrap()).await;
    let last = lines.last().unwrap();
    assert!(last.starts_with("error: bootstrap of gpu-b failed") && last.contains("failed"), "{lines:#?}");
    assert!(w.api.db.list_servers().await.unwrap().is_empty(), "server row removed");
    assert_eq!(w.validator.deleted_nodes().len(), 1, "the validator was told to drop the GPU");
    assert_eq!(graval_objects(&w.client).await, 0);
    drop(w.kube);
}

#[tokio::test]
async fn a_node_that_is_not_ready_is_refused_before_anything_is_stored() {
    let w = world(gpu_node("gpu-c").not_ready()).await;
    let lines = stream(w.api.post("/servers/", &args(&w, "gpu-c", "a6000")).send().await.unwrap()).await;
    assert!(lines.last().unwrap().contains("node gpu-c is not Ready"), "{lines:#?}");
    assert!(w.api.db.list_servers().await.unwrap().is_empty());
    assert_eq!(graval_objects(&w.client).await, 0);
    assert!(w.validator.requests().iter().all(|r| r.method != "POST"));
}

#[tokio::test]
async fn preflight_refusals_name_the_problem() {
    let w = world(gpu_node("gpu-d")).await;
    let (status, body) =
        json_of(w.api.post("/servers/", &args(&w, "nope", "a6000")).send().await.unwrap()).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("No kubernetes node named nope"));

    let (status, body) =
        json_of(w.api.post("/servers/", &args(&w, "gpu-d", "h999")).send().await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("h999 is not supported"), "{body}");

    let mut validator = w.validator;
    validator.stop();
    let (status, body) =
        json_of(w.api.post("/servers/", &args_for(&w.validator_hotkey, "gpu-d")).send().await.unwrap()).await;
    assert_eq!(status, 502, "{body}");
    assert!(w.api.db.list_servers().await.unwrap().is_empty());
}

fn args_for(validator: &str, name: &str) -> Value {
    json!({"name": name, "validator": validator, "hourly_cost": 0.8, "gpu_short_ref": "a6000"})
}
