//! Stand-in executables for what cannot run in a lab host (TEST SUPPORT ONLY).
//!
//! The scripts live in `provision/lab/hosts/standins/` and are embedded here. Installed into
//! a lab host's own root, at `/usr/local/sbin` (the first directory of root's PATH and of
//! sudo's `secure_path`) and linked from `/usr/local/bin` (the first of a user's PATH), so
//! they come before the real programs that a provisioning run may install (`iputils-ping`
//! puts a real `ping` in /usr/bin), they keep their state in files under
//! `/var/lib/lab-standins` inside that root and record every call in
//! `/var/lib/lab-standins/calls.log`, which [`LabHost::calls`] reads back.

use std::net::IpAddr;

use super::error::LabError;
use super::host::LabHost;

/// Where the stand-ins go inside a lab host: first in root's PATH and sudo's secure_path.
pub const STANDIN_BIN_DIR: &str = "/usr/local/sbin";
/// Where they are linked from: first in a non-root user's PATH.
pub const STANDIN_USER_BIN_DIR: &str = "/usr/local/bin";
/// Where they keep their state inside a lab host.
pub const STANDIN_STATE_DIR: &str = "/var/lib/lab-standins";
const LIB_PATH: &str = "/usr/local/lib/lab-standins/lib.sh";
const LIB: &str = include_str!("../../standins/lib.sh");
/// The Kubernetes objects behind `microk8s kubectl` (see the script's header).
const KUBE_PATH: &str = "/usr/local/lib/lab-standins/kube.py";
const KUBE: &str = include_str!("../../standins/kube.py");
/// State folders, made at install time so that read-only calls never create anything (a
/// `--check` run must leave a host as it was).
const STATE_DIRS: &[&str] = &[
    "",
    "systemd",
    "snaps",
    "microk8s",
    "kube/nodes",
    "kube/runtimeclasses",
    "iptables/v4",
    "iptables/v6",
    "sysctl",
    "wireguard",
    "nvidia",
    "ping",
    "reboot",
];
/// One script behind every iptables name; it dispatches on the name it was called by.
const IPTABLES: &str = include_str!("../../standins/iptables");

/// A command (or family of commands) modelled by a stand-in script.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Standin {
    /// `systemctl`: unit state in files; `ssh`/`sshd` act on the lab's real sshd.
    Systemctl,
    /// `snap install/remove/refresh/list`; installing microk8s lays out its files.
    Snap,
    /// `microk8s status/start/stop/config/add-node/join/leave/enable`; `kubectl` on Nodes
    /// (labels, annotations, GPU capacity) and RuntimeClasses, in an API emulator
    /// ([`LabHost::set_kube_api`]) or in the host's own store ([`LabHost::set_kube_node`]);
    /// `enable nvidia` models the GPU operator.
    Microk8s,
    /// `nvidia-smi` reporting the GPUs set by [`LabHost::set_gpus`].
    NvidiaSmi,
    /// `nvidia-ctk runtime configure` / `cdi generate`.
    NvidiaCtk,
    /// `wg` (genkey/pubkey/show) and `wg-quick` (up/down/strip/save).
    WireGuard,
    /// `reboot` and `shutdown -r`: a modelled reboot (processes killed, sshd restarted; or
    /// nothing restarted, see [`LabHost::set_reboot_returns`]). A host that can reboot is a
    /// machine of its own: `systemd-detect-virt` says "none" and `/.dockerenv` is removed.
    Reboot,
    /// `sysctl`: writes stored in the lab root, reads fall back to the kernel.
    Sysctl,
    /// `modprobe`: recorded, with a list of "loaded" modules.
    Modprobe,
    /// `iptables`, `ip6tables`, their `-save`/`-restore`, `netfilter-persistent`: rules kept
    /// in the lab root (the real ones would change the machine's firewall).
    Iptables,
    /// `ping`: answers for loopback, the lab address, WireGuard subnets of interfaces that
    /// are up, and addresses a test lists in `/var/lib/lab-standins/ping/reachable`.
    Ping,
}

impl Standin {
    pub const ALL: [Standin; 11] = [
        Standin::Systemctl,
        Standin::Snap,
        Standin::Microk8s,
        Standin::NvidiaSmi,
        Standin::NvidiaCtk,
        Standin::WireGuard,
        Standin::Reboot,
        Standin::Sysctl,
        Standin::Modprobe,
        Standin::Iptables,
        Standin::Ping,
    ];

    /// The programs this stand-in provides, with their scripts.
    fn scripts(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Standin::Systemctl => &[("systemctl", include_str!("../../standins/systemctl"))],
            Standin::Snap => &[("snap", include_str!("../../standins/snap"))],
            Standin::Microk8s => &[("microk8s", include_str!("../../standins/microk8s"))],
            Standin::NvidiaSmi => &[("nvidia-smi", include_str!("../../standins/nvidia-smi"))],
            Standin::NvidiaCtk => &[("nvidia-ctk", include_str!("../../standins/nvidia-ctk"))],
            Standin::WireGuard => &[
                ("wg", include_str!("../../standins/wg")),
                ("wg-quick", include_str!("../../standins/wg-quick")),
            ],
            Standin::Reboot => &[
                ("reboot", include_str!("../../standins/reboot")),
                ("shutdown", include_str!("../../standins/shutdown")),
                ("systemd-detect-virt", include_str!("../../standins/systemd-detect-virt")),
            ],
            Standin::Sysctl => &[("sysctl", include_str!("../../standins/sysctl"))],
            Standin::Modprobe => &[("modprobe", include_str!("../../standins/modprobe"))],
            Standin::Iptables => &[
                ("iptables", IPTABLES),
                ("ip6tables", IPTABLES),
                ("iptables-save", IPTABLES),
                ("ip6tables-save", IPTABLES),
                ("iptables-restore", IPTABLES),
                ("ip6tables-restore", IPTABLES),
                ("netfilter-persistent", include_str!("../../standins/netfilter-persistent")),
            ],
            Standin::Ping => &[("ping", include_str!("../../standins/ping"))],
        }
    }

    /// Names of the programs this stand-in installs.
    pub fn programs(self) -> Vec<&'static str> {
        self.scripts().iter().map(|(name, _)| *name).collect()
    }
}

/// One recorded call of a stand-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub program: String,
    pub args: Vec<String>,
}

/// A GPU that the `nvidia-smi` stand-in reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// Model name as nvidia-smi prints it, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// `GPU-...`; left empty, [`LabHost::set_gpus`] derives one unique to host and index.
    pub uuid: String,
    pub memory_mib: u64,
}

impl Gpu {
    pub fn new(name: impl Into<String>, memory_mib: u64) -> Gpu {
        Gpu { name: name.into(), uuid: String::new(), memory_mib }
    }

    pub fn h100() -> Gpu {
        Gpu::new("NVIDIA H100 80GB HBM3", 81559)
    }

    pub fn h200() -> Gpu {
        Gpu::new("NVIDIA H200", 143771)
    }

    pub fn a100_80gb() -> Gpu {
        Gpu::new("NVIDIA A100-SXM4-80GB", 81920)
    }
}

impl LabHost {
    /// Installs stand-ins into this host's root (only there), replacing earlier copies;
    /// their state and call log are kept.
    pub fn install_standins(&self, standins: &[Standin]) -> Result<(), LabError> {
        let env = format!("LAB_NAME={}\nLAB_ADDR={}\n", self.name(), self.addr());
        let mut files = vec![
            (LIB_PATH.to_string(), 0o644, LIB),
            (KUBE_PATH.to_string(), 0o644, KUBE),
            (format!("{STANDIN_STATE_DIR}/host.env"), 0o644, env.as_str()),
        ];
        let mut links = vec![];
        for standin in standins {
            for (program, script) in standin.scripts() {
                files.push((format!("{STANDIN_BIN_DIR}/{program}"), 0o755, script));
                links.push(format!("ln -sf {STANDIN_BIN_DIR}/{program} {STANDIN_USER_BIN_DIR}/{program}"));
            }
        }
        self.write_text_files(&files)?;
        let dirs: Vec<String> = STATE_DIRS.iter().map(|d| format!("{STANDIN_STATE_DIR}/{d}")).collect();
        // A host that reboots has a kernel of its own: not a container (this machine may be one).
        let machine =
            if standins.contains(&Standin::Reboot) { "rm -f /.dockerenv /run/.containerenv" } else { "true" };
        self.sh(&format!(
            "mkdir -p {} {STANDIN_USER_BIN_DIR} && touch {STANDIN_STATE_DIR}/calls.log && chmod 666 {STANDIN_STATE_DIR}/calls.log && {machine} && {}",
            dirs.join(" "),
            if links.is_empty() { "true".to_string() } else { links.join(" && ") }
        ))?;
        Ok(())
    }

    /// Points this host's `microk8s` at a Kubernetes API emulator (`http://...`): `microk8s
    /// config` names it as server, `microk8s kubectl` reads and writes Nodes there, and a
    /// `microk8s join` registers this host's Node there (see [`LabHost::set_kube_node_json`]).
    pub fn set_kube_api(&self, url: &str) -> Result<(), LabError> {
        self.write_file(&format!("{STANDIN_STATE_DIR}/microk8s/api-server"), url)
    }

    /// The Node this host's kubelet registers in the API emulator when it joins (JSON);
    /// without it, a Node named after the host with its [`LabHost::set_gpus`] GPUs.
    pub fn set_kube_node_json(&self, node_json: &str) -> Result<(), LabError> {
        self.write_file(&format!("{STANDIN_STATE_DIR}/microk8s/node.json"), node_json)
    }

    /// A Node in this host's own cluster store (no emulator): how a primary sees the node
    /// `name`, e.g. a worker that will join. With `gpus`, the node carries what the GPU
    /// operator reads (count and memory of `gpus`); the labels and `nvidia.com/gpu` capacity
    /// appear once the `nvidia` addon is enabled. `ready`: its Ready condition.
    pub fn set_kube_node(&self, name: &str, gpus: &[Gpu], ready: bool) -> Result<(), LabError> {
        let annotation = match gpus.first() {
            Some(g) => format!("\"lab-standins/gpus\": \"{} {}\"", gpus.len(), g.memory_mib),
            None => String::new(),
        };
        let ready = if ready { "True" } else { "False" };
        let json = format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"Node\", \"metadata\": {{\"name\": \"{name}\", \"labels\": \
             {{\"kubernetes.io/hostname\": \"{name}\"}}, \"annotations\": {{{annotation}}}}}, \"spec\": {{}}, \"status\": \
             {{\"capacity\": {{\"cpu\": \"8\", \"memory\": \"32Gi\", \"pods\": \"110\"}}, \"allocatable\": {{\"cpu\": \"8\", \
             \"memory\": \"32Gi\", \"pods\": \"110\"}}, \"conditions\": [{{\"type\": \"Ready\", \"status\": \"{ready}\"}}]}}}}\n"
        );
        self.write_file(&format!("{STANDIN_STATE_DIR}/kube/nodes/{name}.json"), json)
    }

    /// What `microk8s kubectl get node NAME -o jsonpath=TEMPLATE` prints on this host, read
    /// without recording a call. `Ok(None)`: no such node.
    pub fn kube_node_field(&self, name: &str, template: &str) -> Result<Option<String>, LabError> {
        let out = self.exec(&format!(
            "python3 -B {KUBE_PATH} kubectl get node '{name}' -o 'jsonpath={}'",
            template.replace('\'', "'\\''")
        ))?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Sets the GPUs that the `nvidia-smi` stand-in reports (an empty list: "No devices
    /// were found"). Before any call, nvidia-smi fails as without a driver.
    pub fn set_gpus(&self, gpus: &[Gpu]) -> Result<(), LabError> {
        let octet = match self.addr() {
            IpAddr::V4(v4) => v4.octets()[3],
            IpAddr::V6(_) => 0,
        };
        let mut table = String::new();
        for (i, gpu) in gpus.iter().enumerate() {
            let bad = |detail: &str| LabError::Malformed {
                host: self.name().to_string(),
                what: format!("GPU {i} for set_gpus"),
                detail: detail.to_string(),
            };
            if gpu.name.is_empty() || gpu.name.contains(['\t', '\n']) {
                return Err(bad("the name must be non-empty, without tabs or newlines"));
            }
            if gpu.uuid.contains(['\t', '\n', ' ']) {
                return Err(bad("the uuid must not contain whitespace"));
            }
            let uuid = if gpu.uuid.is_empty() {
                format!("GPU-{octet:08x}-{i:04x}-4000-8000-{:012x}", gpu.memory_mib)
            } else {
                gpu.uuid.clone()
            };
            table.push_str(&format!("{i}\t{}\t{uuid}\t{}\n", gpu.name, gpu.memory_mib));
        }
        self.write_file(&format!("{STANDIN_STATE_DIR}/nvidia/gpus"), table)
    }

    /// Arguments of every recorded call of `program`, oldest first (the program name
    /// itself left out).
    pub fn calls(&self, program: &str) -> Result<Vec<Vec<String>>, LabError> {
        Ok(self.all_calls()?.into_iter().filter(|c| c.program == program).map(|c| c.args).collect())
    }

    /// Every recorded stand-in call, oldest first.
    pub fn all_calls(&self) -> Result<Vec<Call>, LabError> {
        let log = self.sh(&format!("cat {STANDIN_STATE_DIR}/calls.log 2>/dev/null || true"))?;
        Ok(parse_calls(&log))
    }

    /// Whether this host comes back from its next modelled reboots (default: yes). `false`:
    /// the reboot kills every process as usual and starts nothing again, so SSH never answers
    /// (a machine that does not come back), until a test sets it back and calls
    /// [`LabHost::start_sshd`].
    pub fn set_reboot_returns(&self, returns: bool) -> Result<(), LabError> {
        let flag = format!("{STANDIN_STATE_DIR}/reboot/stay-down");
        if returns { self.sh(&format!("rm -f {flag}")).map(drop) } else { self.write_file(&flag, "") }
    }

    /// How many reboots the stand-ins have modelled on this host.
    pub fn boot_count(&self) -> Result<u32, LabError> {
        let text = self.sh(&format!("cat {STANDIN_STATE_DIR}/boot_count 2>/dev/null || echo 0"))?;
        text.trim().parse().map_err(|e| LabError::Malformed {
            host: self.name().to_string(),
            what: format!("{STANDIN_STATE_DIR}/boot_count"),
            detail: format!("{e}: {text:?}"),
        })
    }
}

/// Decodes calls.log: one call per line, tab-separated fields with `\\`, `\t`, `\n`
/// escaped (see `lab_record` in standins/lib.sh).
fn parse_calls(log: &str) -> Vec<Call> {
    log.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut fields = line.split('\t').map(unescape);
            let program = fields.next().unwrap_or_default();
            Call { program, args: fields.collect() }
        })
        .collect()
}

fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_lines_decode_escapes() {
        let log = "systemctl\tenable\t--now\tx.service\nsh\ta\\\\b\tc\\td\te\\nf\t\n";
        assert_eq!(
            parse_calls(log),
            vec![
                Call {
                    program: "systemctl".into(),
                    args: vec!["enable".into(), "--now".into(), "x.service".into()]
                },
                Call {
                    program: "sh".into(),
                    args: vec!["a\\b".into(), "c\td".into(), "e\nf".into(), String::new()]
                },
            ]
        );
    }
}
