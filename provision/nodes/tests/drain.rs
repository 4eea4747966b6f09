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

fn deleting(emu: &Emulator, name: &str) -> bool {
    emu.get("v1", "Pod", Some("chutes"), name)
        .unwrap()
        .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())
}

/// A dead host (its Node NotReady): no kubelet confirms a deletion there, so its pods stay
/// Terminating, as on a real API server. Drain evicts them and does not wait for them; the
/// Node is then deleted and the pods go with it. A timeout of zero: the outcome comes from
/// the node's state, not from how long anything takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_a_not_ready_node_does_not_wait_for_pods_no_kubelet_can_stop() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-2").gpus(1));
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}})).unwrap();
    emu.create(pod("chute-job", "gpu-2")).unwrap();
    emu.create(pod("chute-old", "gpu-2")).unwrap();
    // The host dies; Gepetto had already deleted one pod (its Job undeployed).
    assert!(emu.set_node_ready("gpu-2", false));
    let c = client(&emu).await;
    let chutes: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(c.clone(), "chutes");
    chutes.delete("chute-old", &Default::default()).await.unwrap();
    assert!(deleting(&emu, "chute-old"), "a deleted pod on a NotReady node stays Terminating");
    let opts = DrainOptions { timeout: Duration::ZERO, poll: Duration::from_millis(50) };

    let mut out = vec![];
    let drained = drain(&c, "gpu-2", &opts, &mut out).await;
    let text = String::from_utf8(out).unwrap();
    assert!(drained.unwrap(), "{text}");
    assert!(text.contains("evicted pod chutes/chute-job"), "{text}");
    assert!(
        text.contains("not Ready: not waiting for pod chutes/chute-job")
            && text.contains("not Ready: not waiting for pod chutes/chute-old"),
        "{text}"
    );
    assert!(text.contains("drained (1 pods evicted; 2 left terminating"), "{text}");
    // Evicted, not force-deleted: both stay Terminating until their Node goes.
    assert!(deleting(&emu, "chute-job") && deleting(&emu, "chute-old"));

    assert!(delete_node(&c, "gpu-2", &mut vec![]).await.unwrap());
    assert!(emu.get("v1", "Node", None, "gpu-2").unwrap().is_none());
    assert!(pods_on(&emu, "gpu-2").is_empty(), "the pod GC removed the Node's pods");
}

/// A Ready node whose pod does not go (a long grace period) still holds the drain until
/// its timeout: only a NotReady node's terminating pods are not waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_of_a_ready_node_waits_for_its_terminating_pods() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-1").gpus(1));
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}})).unwrap();
    let mut slow = pod("chute-slow", "gpu-1");
    slow["spec"]["terminationGracePeriodSeconds"] = json!(3600);
    emu.create(slow).unwrap();
    emu.hold_pod_terminations(true);
    let c = client(&emu).await;
    let opts = DrainOptions { timeout: Duration::ZERO, poll: Duration::from_millis(50) };

    let mut out = vec![];
    let err = drain(&c, "gpu-1", &opts, &mut out).await.unwrap_err();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("evicted pod chutes/chute-slow"), "{text}");
    assert!(!text.contains("not waiting"), "{text}");
    assert!(
        matches!(&err, minerctl_nodes::NodesError::DrainTimeout { pods, .. } if pods == "chutes/chute-slow"),
        "{err}"
    );
    assert!(deleting(&emu, "chute-slow"));
    assert!(emu.get("v1", "Node", None, "gpu-1").unwrap().is_some());
}
