#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Drain and delete against the Kubernetes API emulator with the real kube client.

use std::time::Duration;

use kube_emulator::{Emulator, Node};
use minerctl_nodes::{DrainOptions, delete_node, drain};
use serde_json::json;

async fn client(emu: &Emulator) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::from_yaml(&emu.kubeconfig_yaml()).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn pod(name: &str, node: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "chutes"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
}

fn pods_on(emu: &Emulator, node: &str) -> Vec<String> {
    let mut names: Vec<String> = emu
        .list("v1", "Pod", None)
        .unwrap()
        .into_iter()
        .filter(|p| p["spec"]["nodeName"] == node)
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_evicts_workloads_keeps_daemonset_pods_then_the_node_is_deleted() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-1").gpus(1));
    emu.add_node(Node::new("gpu-2").gpus(1));
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}})).unwrap();
    emu.create(pod("chute-a", "gpu-1")).unwrap();
    emu.create(pod("chute-b", "gpu-1")).unwrap();
    emu.create(pod("other", "gpu-2")).unwrap();
    emu.create(json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "namespace": "chutes"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": {"metadata": {"labels": {"app": "agent"}},
        "spec": {"containers": [{"name": "a", "image": "agent"}]}}}}))
    .unwrap();
    let c = client(&emu).await;
    let opts = DrainOptions { timeout: Duration::from_secs(10), poll: Duration::from_millis(50) };

    let mut out = vec![];
    assert!(drain(&c, "gpu-1", &opts, &mut out).await.unwrap());
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("node gpu-1: cordoned"), "{text}");
    assert!(
        text.contains("evicted pod chutes/chute-a") && text.contains("evicted pod chutes/chute-b"),
        "{text}"
    );
    assert!(text.contains("drained (2 pods evicted)"), "{text}");
    let left = pods_on(&emu, "gpu-1");
    assert_eq!(left.len(), 1, "only the DaemonSet pod stays: {left:?}");
    assert!(left[0].starts_with("agent"), "{left:?}");
    assert_eq!(pods_on(&emu, "gpu-2").len(), 2, "the other node is untouched");
    let node = emu.get("v1", "Node", None, "gpu-1").unwrap().unwrap();
    assert_eq!(node["spec"]["unschedulable"], true);
    assert!(
        emu.requests().iter().any(|r| r.starts_with("POST /api/v1/namespaces/chutes/pods/chute-a/eviction"))
    );

    // Draining again changes nothing.
    let rv = emu.resource_version();
    assert!(drain(&c, "gpu-1", &opts, &mut vec![]).await.unwrap());
    assert_eq!(emu.resource_version(), rv);

    let mut out = vec![];
    assert!(delete_node(&c, "gpu-1", &mut out).await.unwrap());
    assert!(emu.get("v1", "Node", None, "gpu-1").unwrap().is_none());
    assert!(emu.get("v1", "Node", None, "gpu-2").unwrap().is_some());
    // Gone already: nothing to do, no error.
    assert!(!delete_node(&c, "gpu-1", &mut vec![]).await.unwrap());
    let mut out = vec![];
    assert!(!drain(&c, "gpu-1", &opts, &mut out).await.unwrap());
    assert!(String::from_utf8(out).unwrap().contains("not in the cluster"));
}
