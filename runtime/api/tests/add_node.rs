#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `POST /servers/` end to end: the real kube client against the Kubernetes API
//! emulator, GraVal's real bootstrap server (CPU backend) checked by the validator
//! emulator's real GraVal verifier, real Postgres and Redis (`add_node_world`).

mod add_node_world;
mod common;

use add_node_world::*;
use common::*;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use serde_json::{Value, json};

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

#[tokio::test]
async fn an_api_shutting_down_stops_an_add_node_and_undoes_it() {
    let mut w = world(gpu_node("gpu-s")).await;
    // The validator never finishes verifying: the bootstrap waits for it.
    w.validator.set_default_verification("pending");
    let resp = w.api.post("/servers/", &args(&w, "gpu-s", "a6000")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let advertised =
        || w.validator.requests().iter().any(|r| r.method == "POST" && r.path.starts_with("/nodes"));
    for _ in 0..600 {
        if advertised() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(advertised(), "the GPUs were never advertised");
    assert_eq!(w.api.db.list_servers().await.unwrap().len(), 1);

    // SIGTERM (a rollout of the API, a drained node) while the validator verifies.
    w.api.shutdown.take().unwrap().send(()).unwrap();
    let lines = stream(resp).await;
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("error: bootstrap of gpu-s failed") && last.contains("shutting down"),
        "{lines:#?}"
    );
    assert!(w.api.db.list_servers().await.unwrap().is_empty(), "server row removed");
    assert_eq!(w.validator.deleted_nodes().len(), 1, "the validator was told to drop the GPU");
    assert_eq!(graval_objects(&w.client).await, 0, "no GraVal Job left holding the node's GPUs");
}

/// An undo removes the GPUs from the validator before it drops the server row: while
/// that runs (a slow validator takes minutes), a new add of the same node is refused,
/// so it cannot advertise the GPUs again only to have the undo remove them behind it.
#[tokio::test]
async fn an_undo_keeps_the_server_row_until_the_validator_has_dropped_its_gpus() {
    let w = world(gpu_node("gpu-u")).await;
    w.validator.set_default_verification("pending");
    let resp = w.api.post("/servers/", &args(&w, "gpu-u", "a6000")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let gpu = loop {
        if let Some(s) = w.api.db.list_servers().await.unwrap().first()
            && let Some(g) = s.gpus.first()
            && w.validator.requests().iter().any(|r| r.method == "POST" && r.path.starts_with("/nodes"))
        {
            break g.gpu_id.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the GPUs were never advertised");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let hold = w.validator.hold_next(&format!("/nodes/{gpu}"));
    w.validator.set_default_verification("failed");
    tokio::time::timeout(std::time::Duration::from_secs(60), hold.made())
        .await
        .expect("the undo never asked");

    assert_eq!(w.api.db.list_servers().await.unwrap().len(), 1, "the row outlives the validator's delete");
    let (status, body) =
        json_of(w.api.post("/servers/", &args(&w, "gpu-u", "a6000")).send().await.unwrap()).await;
    assert_eq!(status, 409, "{body}");
    hold.release();
    let lines = stream(resp).await;
    assert!(lines.last().unwrap().starts_with("error: bootstrap of gpu-u failed"), "{lines:#?}");
    assert!(w.api.db.list_servers().await.unwrap().is_empty(), "then the row goes");
    assert_eq!(w.validator.deleted_nodes(), [gpu]);
}
