//! Typed inventory. Every value here has passed validation (see `validate.rs`).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::yaml::Pos;

#[derive(Debug, Clone)]
pub struct Inventory {
    /// The file it was read from (for messages).
    pub file: PathBuf,
    pub vars: Vars,
    /// In file order; exactly one has `is_primary`.
    pub hosts: Vec<Host>,
    /// User-defined groups (`groups:`), on top of the built-in ones (see [`Inventory::group`]).
    pub groups: Vec<(String, Vec<String>)>,
}

/// Cluster-wide variables (`vars:`), named as in the original Ansible inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Vars {
    /// Public keys authorised for `user`.
    pub ssh_keys: Vec<String>,
    /// Account created on every host with passwordless sudo.
    pub user: String,
    /// Account used for the first login (Ansible's `ansible_user`).
    pub login_user: String,
    /// Default validator hotkey (SS58); names the registry mirror host.
    pub validator: String,
    pub registry_port: u16,
    pub cuda_version: String,
    pub nvidia_version: String,
    pub skip_cuda: bool,
    pub ipv6_enabled: bool,
    pub wireguard_mtu: u16,
    pub wireguard_port: u16,
    /// The mesh subnet; every `wireguard_ip` must be inside it.
    pub wireguard_subnet: Ipv4Net,
    pub infiniband: bool,
    /// The snap channel microk8s tracks; changing it refreshes every host, one at a time.
    pub microk8s_channel: String,
    /// Seconds a host may take to come back from a reboot (driver install or upgrade).
    pub reboot_timeout: u64,
    /// Packages installed on every host (the base role).
    pub packages: Vec<String>,
    /// Driver and CUDA packages on GPU hosts (unless `skip_cuda`).
    pub cuda_packages: Vec<String>,
    /// NVIDIA container toolkit packages on GPU hosts.
    pub container_toolkit_packages: Vec<String>,
    /// Packages on the primary only (iptables persistence for the NAT rules).
    pub primary_packages: Vec<String>,
    /// URL of the CUDA keyring .deb; `{distro}` is replaced by e.g. `ubuntu2204`.
    pub cuda_keyring_url: String,
    /// NTP servers for systemd-timesyncd.
    pub ntp: Vec<String>,
    /// Default SSH settings; hosts override them field by field.
    pub ssh: SshSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    pub fn mask(&self) -> u32 {
        if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) }
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How to reach a host. Unset fields fall back to `vars.ssh`, then to built-in defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SshSettings {
    pub user: Option<String>,
    pub port: Option<u16>,
    /// Private key file; when unset, keys from ssh-agent are tried.
    pub key: Option<PathBuf>,
    /// ProxyJump host, `[user@]host[:port]`.
    pub jump: Option<JumpHost>,
    /// Pinned host key, `<algorithm> <base64>` as in known_hosts; overrides known_hosts.
    pub host_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub name: String,
    /// Where the host's entry starts in the file.
    pub pos: Pos,
    /// Address used for SSH (IP or DNS name).
    pub address: String,
    /// Always IPv4 (validated): it becomes the node label `chutes/external-ip`.
    pub external_ip: IpAddr,
    pub wireguard_ip: Ipv4Addr,
    pub gpu_enabled: bool,
    pub is_primary: bool,
    pub hourly_cost: Option<f64>,
    pub gpu_short_ref: Option<String>,
    /// Effective SSH settings (host values merged over `vars.ssh`).
    pub ssh: SshSettings,
}

impl Host {
    pub fn ssh_user<'a>(&'a self, vars: &'a Vars) -> &'a str {
        self.ssh.user.as_deref().unwrap_or(&vars.login_user)
    }
    pub fn ssh_port(&self) -> u16 {
        self.ssh.port.unwrap_or(22)
    }
}

impl Inventory {
    pub fn primary(&self) -> &Host {
        // Validation guarantees exactly one primary.
        self.hosts.iter().find(|h| h.is_primary).unwrap_or(&self.hosts[0])
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Members of a group: built-in `all`, `primary`, `workers`, `gpu`, `cpu`, or a user group.
    pub fn group(&self, name: &str) -> Option<Vec<&Host>> {
        let pick = |f: &dyn Fn(&Host) -> bool| Some(self.hosts.iter().filter(|h| f(h)).collect());
        match name {
            "all" => pick(&|_| true),
            "primary" => pick(&|h| h.is_primary),
            "workers" => pick(&|h| !h.is_primary),
            "gpu" => pick(&|h| h.gpu_enabled),
            "cpu" => pick(&|h| !h.gpu_enabled),
            _ => self
                .groups
                .iter()
                .find(|(g, _)| g == name)
                .map(|(_, members)| self.hosts.iter().filter(|h| members.contains(&h.name)).collect()),
        }
    }

    /// Resolves a comma-separated `--limit` (hosts or groups) to host names, in inventory order.
    pub fn limit(&self, spec: &str) -> Result<Vec<String>, String> {
        let mut keep = std::collections::BTreeSet::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(h) = self.host(part) {
                keep.insert(h.name.clone());
            } else if let Some(members) = self.group(part) {
                keep.extend(members.into_iter().map(|h| h.name.clone()));
            } else {
                return Err(format!(
                    "--limit: `{part}` is neither a host nor a group in {}",
                    self.file.display()
                ));
            }
        }
        Ok(self.hosts.iter().filter(|h| keep.contains(&h.name)).map(|h| h.name.clone()).collect())
    }

    /// `<validator>.localregistry.chutes.ai`, the name containerd pulls through.
    pub fn registry_hostname(&self) -> String {
        format!("{}.localregistry.chutes.ai", self.vars.validator.to_lowercase())
    }
}
