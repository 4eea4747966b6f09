//! What the emulator itself costs per write, at the scale of Gepetto's event-to-Job
//! benchmark: 50 nodes of 8 GPUs, 200 chute Jobs (more GPUs asked for than exist, so
//! pods stay Pending and the scheduler has work on every change), then half of them
//! deleted so the pending ones get bound.
//!
//! `cargo run -p kube-emulator --example write_cost [--release]`
//!
//! Prints medians, never asserts on time.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube_emulator::{Emulator, Node};
use serde_json::json;

fn median(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[v.len() * 9 / 10]
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let emu = Emulator::start().unwrap();
    for i in 0..50 {
        emu.add_node(Node::new(&format!("gpu-{i:02}")).gpus(8));
    }
    let kc = kube::config::Kubeconfig::from_yaml(&emu.kubeconfig_yaml()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}}),
    )
    .unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client, "chutes");

    let before = emu.write_costs().len();
    let mut round_trips = Vec::new();
    for i in 0..200 {
        let gpus = 1 + i % 4;
        let job: Job = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": format!("chute-{i:03}"), "labels": {"chutes/chute": "true"}},
            "spec": {"backoffLimit": 0, "template": {"metadata": {"labels": {"chutes/chute-id": format!("c{i}")}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "chute", "image": "parachutes/chute:1",
                    "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]}}},
        }))
        .unwrap();
        let t = Instant::now();
        jobs.create(&PostParams::default(), &job).await.unwrap();
        round_trips.push(t.elapsed());
    }
    let create_costs = emu.write_costs()[before..].to_vec();

    let before = emu.write_costs().len();
    let mut delete_trips = Vec::new();
    for i in (0..200).step_by(2) {
        let t = Instant::now();
        jobs.delete(&format!("chute-{i:03}"), &DeleteParams::background()).await.unwrap();
        delete_trips.push(t.elapsed());
    }
    let delete_costs = emu.write_costs()[before..].to_vec();

    let pods = emu.list("v1", "Pod", Some("chutes")).unwrap();
    let bound = pods.iter().filter(|p| p["spec"]["nodeName"].is_string()).count();
    println!("50 nodes x 8 GPUs, 200 Jobs asking 1-4 GPUs each; then 100 deleted");
    println!(
        "create Job: emulator cost median {:?} (p90 {:?}) over {} writes; client round trip median {:?}",
        median(create_costs.clone()),
        p90(create_costs.clone()),
        create_costs.len(),
        median(round_trips)
    );
    println!(
        "delete Job: emulator cost median {:?} (p90 {:?}) over {} writes; client round trip median {:?}",
        median(delete_costs.clone()),
        p90(delete_costs.clone()),
        delete_costs.len(),
        median(delete_trips)
    );
    println!("pods left: {} ({bound} bound to a node)", pods.len());
}
