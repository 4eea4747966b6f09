#![allow(clippy::unwrap_used, clippy::expect_used)]
//! What add-node and remove-node plan on which host (planning is pure: no hosts needed).

use std::collections::BTreeMap;

use provision_engine::{Facts, HostVars, PlanCtx};
use provision_inventory::Inventory;

fn inventory(dir: &std::path::Path) -> Inventory {
    let path = dir.join("inventory.yml");
    std::fs::write(
        &path,
        "vars:\n  ssh_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4dL7mY6kO1jvq3b2sXyZt9Vv3mZ1rW0m8uJ8Q3hKx9 t']\n\
         groups:\n  rack1: [gpu-1, gpu-2]\nhosts:\n  \
         cpu-0:\n    address: 10.0.0.1\n    external_ip: 203.0.113.1\n    wireguard_ip: 192.168.0.1\n    is_primary: true\n  \
         gpu-1:\n    address: 10.0.0.2\n    external_ip: 203.0.113.2\n    wireguard_ip: 192.168.0.2\n    gpu_enabled: true\n  \
         gpu-2:\n    address: 10.0.0.3\n    external_ip: 203.0.113.3\n    wireguard_ip: 192.168.0.3\n    gpu_enabled: true\n",
    )
    .unwrap();
    provision_inventory::load(&path).unwrap()
}

fn vars(inv: &Inventory) -> HostVars {
    inv.hosts
        .iter()
        .map(|h| {
            let v: BTreeMap<String, String> =
                [("wg_public_key".to_string(), format!("KEY-{}", h.name))].into_iter().collect();
            (h.name.clone(), v)
        })
        .collect()
}

/// Phase name -> step names, for one host.
fn planned(phases: &[provision_engine::Phase], inv: &Inventory, host: &str) -> Vec<(String, Vec<String>)> {
    let facts = Facts::default();
    let vars = vars(inv);
    let host = inv.host(host).unwrap();
    phases
        .iter()
        .map(|p| {
            let plan = (p.plan)(&PlanCtx {
                inventory: inv,
                host,
                facts: &facts,
                vars: &vars,
                check: false,
                before_run: false,
                limit: None,
            });
            (p.name.clone(), plan.steps.iter().map(|s| s.name.clone()).collect())
        })
        .filter(|(_, s): &(String, Vec<String>)| !s.is_empty())
        .collect()
}

/// The `--tags` name of every step planned for one host (a step's own tag, else its phase's).
fn planned_tags(phases: &[provision_engine::Phase], inv: &Inventory, host: &str) -> Vec<(String, String)> {
    let facts = Facts::default();
    let vars = vars(inv);
    let host = inv.host(host).unwrap();
    phases
        .iter()
        .flat_map(|p| {
            let plan = (p.plan)(&PlanCtx {
                inventory: inv,
                host,
                facts: &facts,
                vars: &vars,
                check: false,
                before_run: false,
                limit: None,
            });
            plan.steps
                .into_iter()
                .map(|s| (s.tag.clone().unwrap_or_else(|| p.tag.clone()), s.name))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn add_node_runs_every_role_on_the_node_and_only_mesh_join_and_gpu_layer_on_the_primary() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(dir.path());
    let phases = minerctl_nodes::phases::add_node("gpu-2");
    let on_node = planned_tags(&phases, &inv, "gpu-2");
    for role in ["wireguard", "base", "nvidia", "microk8s", "join"] {
        assert!(on_node.iter().any(|(t, _)| t == role), "no {role} step on the node: {on_node:?}");
    }
    assert!(on_node.iter().any(|(_, s)| s == "join cluster"), "{on_node:?}");

    let on_primary = planned_tags(&phases, &inv, "cpu-0");
    assert!(
        on_primary.iter().all(|(t, _)| ["wireguard", "join", "gpu"].contains(&t.as_str())),
        "{on_primary:?}"
    );
    assert!(!on_primary.iter().any(|(t, _)| t == "base" || t == "nvidia"), "{on_primary:?}");
    // The join token must survive the filter, or the node would be told to join with no token.
    // Nor may the GPU layer's check: a GPU worker whose GPUs chutes cannot use is not added.
    for step in ["join token", "gpu-2 external-ip label", "gpu nodes ready for chutes"] {
        assert!(on_primary.iter().any(|(_, s)| s == step), "{step} missing on the primary: {on_primary:?}");
    }
    assert_eq!(minerctl_nodes::phases::add_node_limit(&inv, "gpu-2"), ["gpu-2", "cpu-0"]);
}

#[test]
fn workers_only_and_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(dir.path());
    assert!(minerctl_nodes::phases::check_worker(&inv, "gpu-1").is_ok());
    let e = minerctl_nodes::phases::check_worker(&inv, "gpu-7").unwrap_err();
    assert!(e.contains("host `gpu-7` is not in") && e.contains("cpu-0, gpu-1, gpu-2"), "{e}");
    let e = minerctl_nodes::phases::check_worker(&inv, "cpu-0").unwrap_err();
    assert!(e.contains("is the primary"), "{e}");
}

#[test]
fn after_removal_the_primary_lists_only_the_remaining_peers() {
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(dir.path());
    let rest = minerctl_nodes::phases::without(&inv, "gpu-1");
    assert_eq!(rest.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["cpu-0", "gpu-2"]);
    assert_eq!(rest.group("rack1").unwrap().len(), 1);
    let facts = Facts::default();
    let vars = vars(&inv);
    let mesh = minerctl_nodes::phases::mesh();
    let config = mesh.iter().find(|p| p.name == "wireguard config").unwrap();
    let plan = (config.plan)(&PlanCtx {
        inventory: &rest,
        host: rest.primary(),
        facts: &facts,
        vars: &vars,
        check: false,
        before_run: false,
        limit: None,
    });
    let wg0 = plan
        .steps
        .iter()
        .find_map(|s| match &s.action {
            provision_engine::Action::File { path, content, .. } if path == "/etc/wireguard/wg0.conf" => {
                Some(content.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(wg0.contains("KEY-gpu-2") && !wg0.contains("KEY-gpu-1"), "{wg0}");
    assert!(mesh.iter().all(|p| p.tag == "wireguard"));

    // The leave phase plans only on the removed host.
    let leave = minerctl_nodes::phases::leave("gpu-1");
    assert!(planned(&leave, &inv, "cpu-0").is_empty());
    assert_eq!(planned(&leave, &inv, "gpu-1")[0].1, ["microk8s leave", "wg-quick@wg0 stopped"]);
}
