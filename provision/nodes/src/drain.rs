//! `kubectl drain` + `kubectl delete node` for one node, through the kube API.
//!
//! Cordon first (nothing new lands there), then evict every pod bound to the node except
//! DaemonSet pods (their controller would put them straight back; they go with the Node)
//! and mirror pods (owned by the kubelet). Evictions refused by a disruption budget (429)
//! are retried until the deadline; the error then names the pods still there.
//!
//! On a node that is not Ready (a dead or unreachable host, the usual reason to remove
//! one) a deleted pod stays Terminating for good: only its kubelet can confirm that it
//! stopped. Such pods are evicted but not waited for (see [`drain`]).

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

fn being_deleted(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// Whether the node's kubelet reports Ready. `False` (NotReady) and `Unknown` (the node
/// controller has lost contact: unreachable) are not, and neither is a node without the
/// condition.
fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn evictable(pods: &Api<Pod>, node: &str) -> Result<Vec<Pod>, NodesError> {
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let list = pods.list(&lp).await.map_err(|e| NodesError::kube(node, e))?;
    Ok(list.items.into_iter().filter(|p| !skipped(p)).collect())
}

/// Cordons the node and evicts its pods. Returns false (and changes nothing) when the
/// cluster has no such node.
///
/// Each round lists the node's pods, evicts those not yet being deleted and, when it
/// evicted one for the first time, looks again at once; otherwise it waits `poll`, or fails
/// once `timeout` has passed. So even a zero timeout evicts everything once.
///
/// While the node is not Ready, pods that already carry a `deletionTimestamp` are not waited
/// for (kubectl drain's `--skip-wait-for-delete-timeout` idea): no kubelet is there to
/// confirm their end, so they would stay Terminating past any timeout, and `remove-node`
/// could never reach `delete_node`. They are not force-deleted (grace period 0) either: a
/// force delete claims the containers stopped, and on a host that is only cut off (not dead)
/// they may still run while their controller starts replacements elsewhere. Left alone they
/// stay visible as Terminating until the Node object is deleted, right after the drain (and
/// after `microk8s leave` when the host answers), and the pod garbage collector removes the
/// pods of a Node that no longer exists. A Ready node is waited for as before: its kubelet
/// does confirm.
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
    let mut not_waited = std::collections::BTreeSet::new();
    loop {
        let pods = evictable(&all, node).await?;
        // Read every round: a node that comes back is waited for again. A node deleted
        // meanwhile has no kubelet either.
        let ready =
            nodes.get_opt(node).await.map_err(|e| NodesError::kube(node, e))?.is_some_and(|n| node_ready(&n));
        let mut left = Vec::new();
        for p in pods {
            if !ready && being_deleted(&p) {
                if not_waited.insert(pod_name(&p)) {
                    writeln!(
                        out,
                        "node {node}: not Ready: not waiting for pod {}, which is being deleted (no kubelet confirms it; it goes with the Node)",
                        pod_name(&p)
                    )?;
                }
            } else {
                left.push(p);
            }
        }
        if left.is_empty() {
            break;
        }
        let mut first_evictions = false;
        for p in left.iter().filter(|p| !being_deleted(p)) {
            let (Some(ns), Some(name)) = (p.metadata.namespace.as_deref(), p.metadata.name.as_deref()) else {
                continue;
            };
            let api: Api<Pod> = Api::namespaced(client.clone(), ns);
            match api.evict(name, &EvictParams::default()).await {
                Ok(_) => {
                    if evicted.insert(pod_name(p)) {
                        first_evictions = true;
                        writeln!(out, "node {node}: evicted pod {}", pod_name(p))?;
                    }
                }
                // Gone already, or a disruption budget says not yet: look again next round.
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 429 => {}
                Err(e) => return Err(NodesError::kube(node, e)),
            }
        }
        if first_evictions {
            // Bounded: each pod name counts once.
            continue;
        }
        if Instant::now() >= deadline {
            let pods: Vec<String> = left.iter().map(pod_name).collect();
            return Err(NodesError::DrainTimeout {
                node: node.into(),
                seconds: opts.timeout.as_secs(),
                pods: pods.join(", "),
            });
        }
        tokio::time::sleep(opts.poll).await;
    }
    if not_waited.is_empty() {
        writeln!(out, "node {node}: drained ({} pods evicted)", evicted.len())?;
    } else {
        writeln!(
            out,
            "node {node}: drained ({} pods evicted; {} left terminating: the node is not Ready, they go with it)",
            evicted.len(),
            not_waited.len()
        )?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ready(status: Option<&str>) -> Node {
        let conditions = status.map(|s| {
            vec![k8s_openapi::api::core::v1::NodeCondition {
                type_: "Ready".into(),
                status: s.into(),
                ..Default::default()
            }]
        });
        Node {
            status: Some(k8s_openapi::api::core::v1::NodeStatus { conditions, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_ready_condition_of_true_is_ready() {
        assert!(node_ready(&with_ready(Some("True"))));
        assert!(!node_ready(&with_ready(Some("False"))), "NotReady");
        assert!(!node_ready(&with_ready(Some("Unknown"))), "unreachable: the node controller lost contact");
        assert!(!node_ready(&with_ready(None)));
        assert!(!node_ready(&Node::default()));
    }
}
