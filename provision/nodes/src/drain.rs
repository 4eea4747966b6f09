//! `kubectl drain` + `kubectl delete node` for one node, through the kube API.
//!
//! Cordon first (nothing new lands there), then evict every pod bound to the node except
//! DaemonSet pods (their controller would put them straight back; they go with the Node)
//! and mirror pods (owned by the kubelet). Evictions refused by a disruption budget (429)
//! are retried until the deadline; the error then names the pods still there.

use std::io::Write;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::error::NodesError;

#[derive(Clone, Debug)]
pub struct DrainOptions {
    pub timeout: Duration,
    pub poll: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions { timeout: Duration::from_secs(300), poll: Duration::from_secs(2) }
    }
}

fn skipped(pod: &Pod) -> bool {
    let daemon = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" && o.controller == Some(true));
    let mirror =
        pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
    daemon || mirror
}

fn pod_name(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or("default"),
        p.metadata.name.as_deref().unwrap_or("?")
    )
}

async fn evictable(pods: &Api<Pod>, node: &str) -> Result<Vec<Pod>, NodesError> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let list = pods.list(&lp).await.map_err(|e| NodesError::kube(node, e))?;
    Ok(list.items.into_iter().filter(|p| !skipped(p)).collect())
}

/// Cordons the node and evicts its pods. Returns false (and changes nothing) when the
/// cluster has no such node.
pub async fn drain(
    client: &kube::Client,
    node: &str,
    opts: &DrainOptions,
    out: &mut dyn Write,
) -> Result<bool, NodesError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(n) = nodes.get_opt(node).await.map_err(|e| NodesError::kube(node, e))? else {
        writeln!(out, "node {node}: not in the cluster, nothing to drain")?;
        return Ok(false);
    };
    if n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true) {
        nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(json!({"spec": {"unschedulable": true}})))
            .await
            .map_err(|e| NodesError::kube(node, e))?;
    }
    writeln!(out, "node {node}: cordoned")?;

    let all: Api<Pod> = Api::all(client.clone());
    let deadline = Instant::now() + opts.timeout;
    let mut evicted = std::collections::BTreeSet::new();
    loop {
        let left = evictable(&all, node).await?;
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let pods: Vec<String> = left.iter().map(pod_name).collect();
            return Err(NodesError::DrainTimeout {
                node: node.into(),
                seconds: opts.timeout.as_secs(),
                pods: pods.join(", "),
            });
        }
        for p in &left {
            let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref()) else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            match api.evict(name, &EvictParams::default()).await {
                Ok(_) => {
                    if evicted.insert(pod_name(p)) {
                        writeln!(out, "node {node}: evicted pod {}", pod_name(p))?;
                    }
                }
                // Gone already, or a disruption budget says not yet: look again next round.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 429 => {}
                Err(e) => return Err(NodesError::kube(node, e)),
            }
        }
        tokio::time::sleep(opts.poll).await;
    }
    writeln!(out, "node {node}: drained ({} pods evicted)", evicted.len())?;
    Ok(true)
}

/// Deletes the Node object. Returns false when it was already gone.
pub async fn delete_node(client: &kube::Client, node: &str, out: &mut dyn Write) -> Result<bool, NodesError> {
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(node, &DeleteParams::default()).await {
        Ok(_) => {
            writeln!(out, "node {node}: deleted from the cluster")?;
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(NodesError::kube(node, e)),
    }
}
