//! The lab's hosts as a miner's servers: stand-ins installed, simulated GPUs, the
//! inventory and known_hosts `minerctl` reads, and the Node each kubelet registers.
//! One home for what `minerctl lab` and the lab tests both assemble.

use std::path::Path;

use lab_hosts::lab::{Gpu, LabHost, Standin};
use serde_json::{Value, json};

use crate::{LabError, io};

/// Package lists of the lab's inventory: nothing to download (no packet leaves the machine).
pub const LAB_VARS: &str = "  packages: []\n  primary_packages: []\n  container_toolkit_packages: []\n";

/// The GPU model the lab's hosts simulate, and its short reference (validator and inventory).
pub fn lab_gpu() -> Gpu {
    Gpu::h100()
}
pub const LAB_GPU_SHORT_REF: &str = "h100";

/// Host names: `cpu-0` (the primary) and `gpu-1` .. `gpu-N`.
pub fn names(gpu_hosts: usize) -> Vec<String> {
    let mut names = vec!["cpu-0".to_string()];
    names.extend((1..=gpu_hosts).map(|i| format!("gpu-{i}")));
    names
}

/// Every stand-in, `gpus` simulated GPUs on GPU hosts, and two speed-ups of a shared
/// machine's image that a real server does not need.
pub fn prepare(h: &LabHost, gpus: &[Gpu]) -> Result<(), LabError> {
    // A lab host inherits this machine's /root/.bashrc, which may run slow tools (pyenv
    // init) for every SSH command; a stock server .bashrc returns at once when not interactive.
    h.sh("[ ! -f /root/.bashrc ] || sed -i '1i case $- in *i*) ;; *) return;; esac' /root/.bashrc")?;
    // man-db's dpkg trigger rebuilds the manual index after every install.
    h.sh("echo 'man-db man-db/auto-update boolean false' | debconf-set-selections; rm -f /var/lib/man-db/auto-update")?;
    h.install_standins(&Standin::ALL)?;
    // A stock Ubuntu server has systemd-resolved (the systemctl stand-in knows a unit by its file).
    h.write_file("/lib/systemd/system/systemd-resolved.service", UNIT)?;
    if !gpus.is_empty() {
        h.set_gpus(gpus)?;
    }
    Ok(())
}

/// A unit file for a service that a real server has installed.
pub const UNIT: &str = "[Unit]\nDescription=lab unit\n[Service]\nExecStart=/bin/true\n";

/// How the inventory describes the hosts.
pub struct InventorySpec<'a> {
    /// Variable lines (two-space indented YAML) besides user, keys and SSH.
    pub vars: &'a str,
    /// `validator:` (the validator hotkey add-node registers GPU hosts with).
    pub validator: Option<&'a str>,
    /// External IPs: the lab host's own address (reachable, as the lab's NodePorts need), or
    /// documentation addresses `203.0.113.N` (tests that never connect to them).
    pub external_ip_is_address: bool,
    /// `gpu_short_ref` and `hourly_cost` of GPU hosts (add-node needs them).
    pub gpu_short_ref: Option<&'a str>,
}

/// The inventory of `hosts`: the first is the primary (CPU), the others GPU workers.
/// Addresses follow from a host's position, `N` = index + 1.
pub fn inventory_yaml(hosts: &[&LabHost], spec: &InventorySpec<'_>) -> String {
    let h0 = hosts[0];
    let mut y = format!(
        "vars:\n  user: chutes\n  login_user: root\n  ssh_keys: ['{key}']\n{vars}  skip_cuda: true\n  ssh:\n    key: {path}\n",
        key = h0.client_public_key(),
        vars = spec.vars,
        path = h0.client_key_path().display()
    );
    if let Some(v) = spec.validator {
        y.push_str(&format!("  validator: {v}\n"));
    }
    y.push_str("hosts:\n");
    for (i, h) in hosts.iter().enumerate() {
        let n = i + 1;
        let external =
            if spec.external_ip_is_address { h.addr().to_string() } else { format!("203.0.113.{n}") };
        y.push_str(&format!(
            "  {name}:\n    address: {addr}\n    external_ip: {external}\n    wireguard_ip: 192.168.0.{n}\n    \
             is_primary: {p}\n    gpu_enabled: {g}\n",
            name = h.name(),
            addr = h.addr(),
            p = i == 0,
            g = i != 0,
        ));
        if i != 0
            && let Some(short) = spec.gpu_short_ref
        {
            y.push_str(&format!("    hourly_cost: 0.8\n    gpu_short_ref: {short}\n"));
        }
    }
    y
}

/// known_hosts lines for `hosts` (their fresh host keys, at their SSH port).
pub fn write_known_hosts(path: &Path, hosts: &[&LabHost]) -> Result<(), LabError> {
    let lines: Vec<String> = hosts.iter().map(|h| h.known_hosts_line()).collect();
    std::fs::write(path, lines.join("\n") + "\n").map_err(io(format!("write {}", path.display())))
}

/// The Node a GPU host's kubelet registers once it joins (`gpus` GPUs, as the GPU operator
/// labels them), at `address` (its external IP).
pub fn gpu_node_json(name: &str, gpus: &[Gpu], address: &str) -> Value {
    let count = gpus.len().to_string();
    let memory = gpus.first().map(|g| g.memory_mib).unwrap_or(0).to_string();
    let capacity = json!({"cpu": (8 * gpus.len().max(1)).to_string(), "memory": format!("{}Gi", 64 * gpus.len().max(1)),
                          "pods": "110", "nvidia.com/gpu": count, "ephemeral-storage": "2000Gi"});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.count": count, "nvidia.com/gpu.memory": memory}},
        "spec": {},
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        },
    })
}
