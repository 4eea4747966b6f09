//! Which provision phases `add-node` and `remove-node` run, and where.
//!
//! The WireGuard mesh is a star: workers list only the primary as peer, the primary lists
//! every worker. So adding or removing a worker changes exactly two hosts: the worker and
//! the primary. Other workers are connected and only *observed* (the engine's read-only
//! captures), because the primary's peer list needs every worker's public key.

use std::sync::Arc;

use provision_engine::{Action, Phase, PhasePlan, Step};
use provision_inventory::{Host, Inventory};

/// Tags of the roles the primary runs when a worker is added: its peer list, the join
/// token and node labels, and the GPU layer (cluster-wide, on the primary: the nvidia
/// addon, enabled here when the first GPU worker joins, the operator's pods, which then
/// include the new node's, and the check that the new node offers its GPUs to chutes).
const PRIMARY_TAGS: &[&str] = &["wireguard", "join", "gpu"];

/// Why a host cannot be added or removed as a worker.
pub fn check_worker<'a>(inv: &'a Inventory, name: &str) -> Result<&'a Host, String> {
    let host = inv.host(name).ok_or_else(|| {
        let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        format!("host `{name}` is not in {} (hosts: {})", inv.file.display(), names.join(", "))
    })?;
    if host.is_primary {
        return Err(format!(
            "host `{name}` is the primary; add-node/remove-node handle workers (use `minerctl provision` for the primary)"
        ));
    }
    Ok(host)
}

/// Every provision phase for `node`; on the primary only the steps tagged WireGuard or join
/// (its base system, drivers and microk8s are not touched by adding a worker). Run with
/// `limit = [node, primary]`.
///
/// Selection is by each step's own tag, the rule `--tags` uses: one phase can hold several
/// roles (the roles crate runs the wireguard check, base, nvidia, microk8s and primary as one
/// "host setup" phase), so filtering whole phases would drop the primary's WireGuard check.
pub fn add_node(node: &str) -> Vec<Phase> {
    provision_roles::phases()
        .into_iter()
        .map(|p| {
            let plan = p.plan.clone();
            let phase_tag = p.tag.clone();
            let node = node.to_string();
            Phase {
                name: p.name,
                tag: p.tag,
                serial: p.serial,
                plan: Arc::new(move |c| {
                    let mut full = plan(c);
                    if c.host.is_primary && c.host.name != node {
                        full.steps.retain(|st| {
                            PRIMARY_TAGS.contains(&st.tag.as_deref().unwrap_or(phase_tag.as_str()))
                        });
                    }
                    full
                }),
            }
        })
        .collect()
}

/// The hosts `add_node`'s phases change.
pub fn add_node_limit(inv: &Inventory, node: &str) -> Vec<String> {
    vec![node.to_string(), inv.primary().name.clone()]
}

const JOINED: &str = "microk8s status 2>/dev/null | grep -q 'acting as a node in a cluster'";

/// On the removed host (run with `limit = [node]`): leave the cluster, so its kubelet does
/// not register the Node again after it is deleted, and take the mesh interface down.
pub fn leave(node: &str) -> Vec<Phase> {
    let node = node.to_string();
    vec![Phase {
        name: "leave cluster".into(),
        tag: "join".into(),
        serial: false,
        plan: Arc::new(move |c| {
            if c.host.name != node {
                return PhasePlan::default();
            }
            PhasePlan {
                steps: vec![
                    Step::new(
                        "microk8s leave",
                        Action::Command {
                            run: "microk8s leave".into(),
                            creates: None,
                            unless: Some(format!("! {JOINED}")),
                        },
                    ),
                    Step::new(
                        "wg-quick@wg0 stopped",
                        Action::Service {
                            unit: "wg-quick@wg0".into(),
                            enabled: Some(false),
                            started: Some(false),
                        },
                    ),
                ],
                handlers: vec![],
            }
        }),
    }]
}

/// The inventory as it is once `node` is gone: the primary's peer list is rendered from it.
pub fn without(inv: &Inventory, node: &str) -> Inventory {
    let mut rest = inv.clone();
    rest.hosts.retain(|h| h.name != node);
    for (_, members) in &mut rest.groups {
        members.retain(|m| m != node);
    }
    rest
}

/// The primary's WireGuard phases (run on [`without`] with `limit = [primary]` and the
/// `wireguard` tag): its `wg0.conf` loses the removed peer and wg0 restarts.
pub fn mesh() -> Vec<Phase> {
    provision_roles::phases().into_iter().filter(|p| p.tag == "wireguard").collect()
}
