//! The host roles that replace the chutes-miner Ansible playbooks (`wireguard.yml`, `site.yml`,
//! `join-cluster.yml`, `fix-containerd.yml`, the driver part of `upgrade-nvidia.yml`), as
//! ordered phases of steps. Pure planning: no I/O; the engine probes and applies.
//!
//! Invariants:
//! - Every step is idempotent: a converged host plans only "ok" steps.
//! - Phases are ordered and separated by a barrier across hosts; later phases read values
//!   captured earlier on other hosts (WireGuard public keys, the join token, joined state).
//! - Secrets stay on hosts: the WireGuard private key is never read; the join token is a
//!   secret capture, redacted from output and logs.

pub mod render;

use std::sync::Arc;
use std::time::Duration;

use provision_engine::{
    Action, Meta, PackageState, Phase, PhasePlan, PlanCtx, SecretInput, Step, WaitTarget,
};
use provision_inventory::{Host, Inventory};
use provision_ssh::shell_quote as q;

/// Phase tags, in run order (`--tags` takes these).
pub const TAGS: &[&str] = &["wireguard", "base", "nvidia", "microk8s", "primary", "join", "gpu"];

fn phase(name: &str, tag: &str, f: impl Fn(&PlanCtx) -> PhasePlan + Send + Sync + 'static) -> Phase {
    Phase::new(name, tag, Arc::new(f))
}

fn only(cond: bool, f: impl FnOnce() -> PhasePlan) -> PhasePlan {
    if cond { f() } else { PhasePlan::default() }
}

fn apt(packages: &[String]) -> Action {
    Action::Apt { packages: packages.to_vec(), state: PackageState::Present, update_cache: true }
}

fn cmd(run: impl Into<String>, unless: impl Into<String>) -> Action {
    Action::Command { run: run.into(), creates: None, unless: Some(unless.into()) }
}

fn creates(run: impl Into<String>, path: impl Into<String>) -> Action {
    Action::Command { run: run.into(), creates: Some(path.into()), unless: None }
}

fn file(path: impl Into<String>, content: String, meta: Meta) -> Action {
    Action::File { path: path.into(), content, meta, secret: false }
}

fn line(path: &str, line: &str, matches: Option<&str>) -> Action {
    Action::Line {
        path: path.into(),
        line: line.into(),
        matches: matches.map(str::to_string),
        absent: false,
        create: Some(Meta::root(0o644)),
    }
}

fn service(unit: &str) -> Action {
    Action::Service { unit: unit.into(), enabled: Some(true), started: Some(true) }
}

fn restart(name: &str, unit: &str) -> Step {
    Step::new(name, Action::Command { run: format!("systemctl restart {unit}"), creates: None, unless: None })
}

fn var<'a>(c: &'a PlanCtx, host: &str, key: &str) -> Option<&'a String> {
    c.vars.get(host).and_then(|v| v.get(key))
}

fn home(user: &str) -> String {
    if user == "root" { "/root".into() } else { format!("/home/{user}") }
}

/// Packages with `{cuda_version}` and `{nvidia_version}` filled in.
fn cuda_packages(inv: &Inventory) -> Vec<String> {
    inv.vars
        .cuda_packages
        .iter()
        .map(|p| {
            p.replace("{cuda_version}", &inv.vars.cuda_version)
                .replace("{nvidia_version}", &inv.vars.nvidia_version)
        })
        .collect()
}

const KUBELET_ARGS: &str = "/var/snap/microk8s/current/args/kubelet";
const APISERVER_ARGS: &str = "/var/snap/microk8s/current/args/kube-apiserver";
const JOINED: &str = "microk8s status 2>/dev/null | grep -q 'acting as a node in a cluster'";

/// All phases in order.
pub fn phases() -> Vec<Phase> {
    vec![
        phase("wireguard keys", "wireguard", wireguard_keys),
        phase("wireguard config", "wireguard", wireguard_config),
        // Changes to what already runs, one host at a time (the original's `serial: 1`): a
        // new microk8s channel, then new driver/CUDA versions. Empty on converged and new hosts.
        phase("microk8s channel", "microk8s", microk8s_channel).one_host_at_a_time(),
        phase("nvidia upgrade", "nvidia", nvidia_upgrade).one_host_at_a_time(),
        // One phase, several roles: nothing here needs results that other hosts produce in
        // this phase, so their probes share one round trip per host. Steps keep their role as
        // `--tags` name.
        phase("host setup", "base", host_setup),
        // Its own phase, right before the join: the token lives 600 s, and a fresh GPU
        // worker's host setup (CUDA, microk8s, a reboot) takes longer than that after the
        // primary's own has ended.
        phase("join token", "join", join_token),
        phase("join", "join", join),
        phase("label nodes", "join", label_nodes),
        phase("gpu layer", "gpu", gpu_layer),
        phase("verify gpu layer", "gpu", verify_gpu_layer),
    ]
}

/// wireguard check, base, nvidia, microk8s and primary, in that order, as one phase (one
/// probe round trip per host); the reboot handler (if any) runs last.
///
/// The WireGuard check can open it because the config phase before ended at a barrier (the
/// primary's wg0 is up).
fn host_setup(c: &PlanCtx) -> PhasePlan {
    let mut steps = vec![];
    let mut handlers = vec![];
    let mut reboot = vec![];
    let sections = [
        ("wireguard", wireguard_check(c)),
        ("base", base(c)),
        ("nvidia", nvidia(c)),
        ("microk8s", microk8s(c)),
        ("primary", primary(c)),
    ];
    for (tag, plan) in sections {
        steps.extend(plan.steps.into_iter().map(|st| st.tag(tag)));
        for h in plan.handlers {
            if matches!(h.action, Action::Reboot { .. }) { reboot.push(h) } else { handlers.push(h) }
        }
    }
    handlers.extend(reboot);
    PhasePlan { steps, handlers }
}

fn wireguard_keys(c: &PlanCtx) -> PhasePlan {
    let mut steps = vec![
        Step::new("wireguard packages", apt(&["wireguard-tools".into(), "iputils-ping".into()])),
        Step::new(
            "ufw off",
            cmd("ufw disable", "! command -v ufw >/dev/null || ufw status | grep -q inactive"),
        ),
        Step::new(
            "/etc/wireguard",
            Action::Directory { path: "/etc/wireguard".into(), meta: Meta::root(0o700) },
        ),
        // Generated once, on the host; the private key never leaves it.
        Step::new(
            "key pair",
            creates(
                "set -e; umask 077; wg genkey > /etc/wireguard/private.key.new; \
                 wg pubkey < /etc/wireguard/private.key.new > /etc/wireguard/public.key; \
                 mv /etc/wireguard/private.key.new /etc/wireguard/private.key",
                "/etc/wireguard/private.key",
            ),
        ),
        Step::new(
            "read public key",
            Action::Capture {
                var: "wg_public_key".into(),
                run: "cat /etc/wireguard/public.key".into(),
                secret: false,
                read_only: true,
                pick: None,
            },
        ),
    ];
    // What the later phases compare with the inventory, read with everything else: the
    // microk8s channel, the versioned driver/CUDA packages, the primary's current peers.
    steps.push(
        Step::new(
            "microk8s channel installed",
            Action::Capture {
                var: MICROK8S_TRACKING.into(),
                run: "echo snap:; [ ! -e /snap/microk8s/current ] || snap list microk8s 2>/dev/null; true"
                    .into(),
                secret: false,
                read_only: true,
                pick: None,
            },
        )
        .tag("microk8s"),
    );
    if c.host.gpu_enabled && !c.inventory.vars.skip_cuda {
        let globs: Vec<String> = versioned_packages(c.inventory).iter().map(Versioned::glob).collect();
        steps.push(
            Step::new(
                "driver packages installed",
                Action::Capture {
                    var: NVIDIA_STACK.into(),
                    run: format!(
                        "echo packages:; dpkg-query -W -f='${{db:Status-Abbrev}} ${{Package}}\\n' {} 2>/dev/null; true",
                        globs.iter().map(|g| q(g)).collect::<Vec<_>>().join(" ")
                    ),
                    secret: false,
                    read_only: true,
                    pick: None,
                },
            )
            .tag("nvidia"),
        );
    }
    if c.host.is_primary {
        // Shell built-ins only; the file holds no private key (PostUp loads it from its own file).
        steps.push(Step::new(
            "current peers",
            Action::Capture {
                var: WG0_PEERS.into(),
                run: "echo peers:; [ ! -f /etc/wireguard/wg0.conf ] || while IFS= read -r l; do \
                      case $l in PublicKey*|AllowedIPs*) echo \"$l\" ;; esac; done </etc/wireguard/wg0.conf"
                    .into(),
                secret: false,
                read_only: true,
                pick: None,
            },
        ));
    }
    if !c.host.is_primary {
        // Whether this worker already joined the cluster (read by the join phases).
        steps.push(Step::new(
            "cluster membership",
            Action::Capture {
                var: "joined".into(),
                run: format!("if {JOINED}; then echo yes; else echo no; fi"),
                secret: false,
                read_only: true,
                pick: None,
            },
        ));
    }
    PhasePlan { steps, handlers: vec![] }
}

/// Public keys by WireGuard address in the primary's current wg0.conf (as captured).
fn current_peer_keys(c: &PlanCtx) -> Vec<(std::net::Ipv4Addr, String)> {
    let text = var(c, &c.inventory.primary().name, WG0_PEERS).map(String::as_str).unwrap_or("");
    let value = |l: &str| l.split_once('=').map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let mut keys = vec![];
    let mut key: Option<String> = None;
    for l in text.lines() {
        if l.starts_with("PublicKey") {
            let v = value(l);
            // A real key (44 base64 characters), never a check run's placeholder.
            key = (v.len() == 44 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)))
                .then_some(v);
        } else if l.starts_with("AllowedIPs") {
            let v = value(l);
            let first = v.split(',').next().unwrap_or("").trim().trim_end_matches("/32");
            if let (Some(k), Ok(ip)) = (key.take(), first.parse()) {
                keys.push((ip, k));
            }
        }
    }
    keys
}

fn wireguard_config(c: &PlanCtx) -> PhasePlan {
    // A peer's key as read from it in this run; for a worker that could not be read (down,
    // unreachable), the key the primary's current wg0.conf has for its address, so that one
    // unreachable worker neither blocks the mesh nor loses its place in it.
    let kept = if c.host.is_primary { current_peer_keys(c) } else { vec![] };
    let key = |name: &str| {
        var(c, name, "wg_public_key").cloned().or_else(|| {
            let ip = c.inventory.host(name)?.wireguard_ip;
            kept.iter().find(|(a, _)| *a == ip).map(|(_, k)| k.clone())
        })
    };
    let peers: Vec<&Host> = if c.host.is_primary {
        c.inventory.hosts.iter().filter(|h| !h.is_primary).collect()
    } else {
        vec![c.inventory.primary()]
    };
    let missing: Vec<&str> =
        peers.iter().filter(|h| key(&h.name).is_none()).map(|h| h.name.as_str()).collect();
    PhasePlan {
        steps: vec![
            // Never write a config with a placeholder key (e.g. a peer outside --limit that was
            // never provisioned or is down); check mode shows the placeholder instead.
            Step::new(
                "peer keys known",
                Action::Assert {
                    ok: missing.is_empty() || c.check,
                    message: format!(
                        "WireGuard public key unknown for {}: provision those hosts first (or include them in --limit)",
                        missing.join(", ")
                    ),
                },
            ),
            Step::new(
                "wg0.conf",
                Action::File {
                    path: "/etc/wireguard/wg0.conf".into(),
                    content: render::wg0_conf(c.inventory, c.host, &key),
                    meta: Meta::root(0o600),
                    secret: false,
                },
            )
            .notify("restart wg0"),
            Step::new("wg-quick@wg0", service("wg-quick@wg0")),
        ],
        handlers: vec![restart("restart wg0", "wg-quick@wg0")],
    }
}

fn wireguard_check(c: &PlanCtx) -> PhasePlan {
    let primary_ip = c.inventory.primary().wireguard_ip;
    only(!c.host.is_primary, || PhasePlan {
        steps: vec![Step::new(
            "ping primary over wireguard",
            Action::WaitFor {
                target: WaitTarget::Command(format!("ping -c 1 -W 2 {primary_ip}")),
                timeout: Duration::from_secs(15),
                interval: Duration::from_secs(5),
            },
        )],
        handlers: vec![],
    })
}

/// Apt source files kept by the clean-up (the original list, plus the distribution's own
/// deb822 sources and the current NVIDIA container toolkit list, which it would have deleted).
/// As shell `case` patterns: the guard and the clean-up use only shell built-ins, so a
/// converged host starts no process for them.
const KEEP_SOURCES: &str = "ubuntu.sources|debian.sources|cuda-*.list|deadsnakes*.list|docker.list|nvidia-docker-container.list|nvidia-container-toolkit.list";

/// A loop over the files in /etc/apt/sources.list.d that are not kept, running `then` on each (`$f`).
fn stray_sources(then: &str) -> String {
    format!(
        "for f in /etc/apt/sources.list.d/*; do [ -f \"$f\" ] || continue; case \"${{f##*/}}\" in {KEEP_SOURCES}) ;; *) {then} ;; esac; done"
    )
}

fn base(c: &PlanCtx) -> PhasePlan {
    let v = &c.inventory.vars;
    let name = &c.host.name;
    let mut steps = vec![
        Step::new(
            "unattended-upgrades off",
            Action::Service {
                unit: "unattended-upgrades".into(),
                enabled: Some(false),
                started: Some(false),
            },
        ),
        Step::new(
            "containerd.io absent",
            Action::Apt {
                packages: vec!["containerd.io".into()],
                state: PackageState::Absent,
                update_cache: false,
            },
        ),
        Step::new(
            "stray apt sources",
            cmd(format!("set -e; {}", stray_sources("rm -f -- \"$f\"")), stray_sources("exit 1")),
        ),
        Step::new(
            "apt proxy files",
            cmd(
                "rm -f /etc/apt/apt.conf.d/*proxy*",
                "for f in /etc/apt/apt.conf.d/*proxy*; do [ ! -e \"$f\" ] || exit 1; done",
            ),
        ),
        Step::new(
            "apt.conf http proxy",
            Action::Line {
                path: "/etc/apt/apt.conf".into(),
                line: String::new(),
                matches: Some("Acquire::http::Proxy".into()),
                absent: true,
                create: None,
            },
        ),
        Step::new(
            "apt.conf https proxy",
            Action::Line {
                path: "/etc/apt/apt.conf".into(),
                line: String::new(),
                matches: Some("Acquire::https::Proxy".into()),
                absent: true,
                create: None,
            },
        ),
        Step::new(
            "snap proxy",
            cmd(
                "snap unset system proxy.http proxy.https proxy.no-proxy",
                "! command -v snap >/dev/null 2>&1 || ! snap get system proxy >/dev/null 2>&1",
            ),
        ),
        Step::new("packages", apt(&v.packages)),
        Step::new(
            "lambda images: purge lambda packages",
            cmd(
                "dpkg-query -W -f='${Package}\\n' | grep lambda | xargs -r env DEBIAN_FRONTEND=noninteractive apt-get purge -y",
                "! { [ -e /etc/lambda-version ] || [ -e /etc/systemd/system/lambda-jupyter.service ]; } || ! dpkg-query -W -f='${Package}\\n' | grep -q lambda",
            ),
        ),
        Step::new("/root/.ssh", Action::Directory { path: "/root/.ssh".into(), meta: Meta::root(0o700) }),
        Step::new(
            format!("user {}", v.user),
            Action::User {
                name: v.user.clone(),
                shell: "/bin/bash".into(),
                groups: vec![],
                authorized_keys: v.ssh_keys.clone(),
            },
        ),
        Step::new("sudo", apt(&["sudo".into()])),
        Step::new(
            format!("sudoers {}", v.user),
            Action::Sudoers {
                name: format!("90-minerctl-{}", v.user),
                content: format!("{} ALL=(ALL) NOPASSWD:ALL\n", v.user),
            },
        ),
        Step::new(
            "vim as editor",
            cmd(
                "update-alternatives --set editor /usr/bin/vim.basic",
                "! [ -x /usr/bin/vim.basic ] || [ \"$(readlink -f /etc/alternatives/editor)\" = /usr/bin/vim.basic ]",
            ),
        ),
        Step::new(
            "nofile soft",
            line("/etc/security/limits.conf", "* soft nofile 40000", Some("* soft nofile")),
        ),
        Step::new(
            "nofile hard",
            line("/etc/security/limits.conf", "* hard nofile 40001", Some("* hard nofile")),
        ),
        Step::new(
            "pam_limits session",
            line("/etc/pam.d/common-session", "session required pam_limits.so", None),
        ),
        Step::new(
            "pam_limits noninteractive",
            line("/etc/pam.d/common-session-noninteractive", "session required pam_limits.so", None),
        ),
        Step::new("/etc/hostname", file("/etc/hostname", format!("{name}\n"), Meta::root(0o644))),
        Step::new(
            "hostname",
            cmd(
                format!("hostname {name}"),
                format!("read -r h </proc/sys/kernel/hostname && [ \"$h\" = {name} ]"),
            ),
        ),
        Step::new(
            "cloud-init keeps hostname",
            Action::Line {
                path: "/etc/cloud/cloud.cfg".into(),
                line: "preserve_hostname: true".into(),
                matches: Some("preserve_hostname:".into()),
                absent: false,
                create: None,
            },
        ),
        Step::new(
            "set-hostname.sh",
            file("/usr/local/bin/set-hostname.sh", render::set_hostname_script(name), Meta::root(0o755)),
        ),
        Step::new(
            "set-hostname.service",
            file("/etc/systemd/system/set-hostname.service", render::set_hostname_unit(), Meta::root(0o644)),
        )
        .notify("daemon-reload"),
        Step::new(
            "set-hostname enabled",
            Action::Service { unit: "set-hostname.service".into(), enabled: Some(true), started: None },
        ),
        Step::new(
            "timesyncd servers",
            file(
                "/etc/systemd/timesyncd.conf.d/minerctl.conf",
                render::timesyncd_conf(&v.ntp),
                Meta::root(0o644),
            ),
        )
        .notify("restart timesyncd"),
        Step::new("timesyncd", service("systemd-timesyncd")),
    ];
    if !v.ipv6_enabled {
        // Applied live with sysctl -w: no reboot needed for this (the original rebooted).
        steps.push(Step::new(
            "ipv6 off",
            Action::Sysctl {
                file: "99-disable-ipv6.conf".into(),
                settings: ["all", "default", "lo"]
                    .iter()
                    .map(|i| (format!("net.ipv6.conf.{i}.disable_ipv6"), "1".into()))
                    .collect(),
            },
        ));
    }
    PhasePlan {
        steps,
        handlers: vec![
            Step::new(
                "daemon-reload",
                Action::Command { run: "systemctl daemon-reload".into(), creates: None, unless: None },
            ),
            restart("restart timesyncd", "systemd-timesyncd"),
        ],
    }
}

/// Host setup's nvidia section: the whole stack on a host that has none of its versioned
/// packages yet (a first install, in parallel with the other hosts); on a host that has
/// other versions, only what the upgrade phase before left out (it did the driver part).
fn nvidia(c: &PlanCtx) -> PhasePlan {
    only(c.host.gpu_enabled, || {
        let mut plan = if upgrading(c).is_empty() { nvidia_driver(c, false) } else { PhasePlan::default() };
        plan.steps.extend(nvidia_devices(c));
        plan
    })
}

/// Host variable: the versioned driver/CUDA packages installed (`ii NAME` lines).
const NVIDIA_STACK: &str = "nvidia_stack";
/// Host variable: `snap list microk8s` as read before the run.
const MICROK8S_TRACKING: &str = "microk8s_tracking";
/// Host variable on the primary: the PublicKey/AllowedIPs lines of its current wg0.conf.
const WG0_PEERS: &str = "wg0_peers";

/// A package of `cuda_packages` whose name carries `{cuda_version}` or `{nvidia_version}`.
struct Versioned {
    prefix: String,
    suffix: String,
    /// The version the inventory asks for.
    want: String,
}

impl Versioned {
    /// dpkg-query's pattern for every version of it.
    fn glob(&self) -> String {
        format!("{}*{}", self.prefix, self.suffix)
    }

    /// Whether `name` is this package at some version (the version shaped like the wanted one,
    /// so `cuda-toolkit-12-6` is, and its dependency `cuda-toolkit-12-6-config-common` is not).
    fn version_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        let v = name.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)?;
        let (a, b): (Vec<&str>, Vec<&str>) = (v.split('-').collect(), self.want.split('-').collect());
        let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
        (a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| if digits(y) { digits(x) } else { x == y }))
            .then_some(v)
    }
}

fn versioned_packages(inv: &Inventory) -> Vec<Versioned> {
    let v = &inv.vars;
    inv.vars
        .cuda_packages
        .iter()
        .filter_map(|t| {
            let (key, want) = [("{cuda_version}", &v.cuda_version), ("{nvidia_version}", &v.nvidia_version)]
                .into_iter()
                .find(|(k, _)| t.contains(k))?;
            let (prefix, suffix) = t.split_once(key)?;
            let fill = |s: &str| {
                s.replace("{cuda_version}", &v.cuda_version).replace("{nvidia_version}", &v.nvidia_version)
            };
            Some(Versioned { prefix: fill(prefix), suffix: fill(suffix), want: want.clone() })
        })
        .collect()
}

/// Installed driver/CUDA packages at a version other than the inventory's (as read before the
/// run), e.g. `cuda-toolkit-12-6` when `cuda_version` is now 13-0. Non-empty: this GPU host
/// gets the upgrade flow.
pub fn other_driver_versions(inv: &Inventory, installed: &str) -> Vec<String> {
    let versioned = versioned_packages(inv);
    installed
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "ii").then_some(())?;
            let name = f.next()?;
            versioned
                .iter()
                .any(|p| p.version_of(name).is_some_and(|v| v != p.want))
                .then(|| name.to_string())
        })
        .collect()
}

fn upgrading(c: &PlanCtx) -> Vec<String> {
    if !c.host.gpu_enabled || c.inventory.vars.skip_cuda {
        return vec![];
    }
    var(c, &c.host.name, NVIDIA_STACK).map(|s| other_driver_versions(c.inventory, s)).unwrap_or_default()
}

/// The driver, CUDA, fabric manager and container runtime configuration. `upgrade`: the
/// original's `upgrade-nvidia.yml` (purge whatever versions are there, reinstall, configure
/// every runtime again, reboot); otherwise a first install, guarded step by step.
fn nvidia_driver(c: &PlanCtx, upgrade: bool) -> PhasePlan {
    let v = &c.inventory.vars;
    let mut steps = vec![];
    let reboots = !c.facts.container;
    if !v.skip_cuda {
        let pkgs = cuda_packages(c.inventory);
        let toolkit = pkgs.first().cloned().unwrap_or_default();
        let url = v.cuda_keyring_url.replace("{distro}", &c.facts.distro_tag());
        let purge = "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' | awk '$2==\"ii\" {print $1}' | grep -E 'cuda|nvidia' \
                     | grep -vE 'nvidia-kernel|linux-(nvidia|modules|headers|image)' | xargs -r env DEBIAN_FRONTEND=noninteractive apt-get purge -y";
        let others = upgrading(c);
        let (name, unless) = if upgrade {
            (
                format!("purge cuda/nvidia packages ({} installed)", others.join(", ")),
                format!(
                    "! dpkg-query -W -f='${{db:Status-Abbrev}}\\n' {} 2>/dev/null | grep -q '^ii'",
                    others.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ")
                ),
            )
        } else {
            (
                "purge other cuda/nvidia packages".to_string(),
                // Done once the wanted toolkit is installed, held (`hi`) or not: a held
                // toolkit would otherwise purge and reboot on every run.
                format!(
                    "dpkg-query -W -f='${{db:Status-Abbrev}}' {} 2>/dev/null | grep -qE '^[ih]i'",
                    q(&toolkit)
                ),
            )
        };
        steps.push(Step::new(name, cmd(purge, unless)).notify("reboot"));
        steps.push(Step::new("curl", apt(&["curl".into(), "ca-certificates".into()])));
        steps.push(Step::new(
            "cuda keyring",
            creates(
                format!(
                    "set -e; t=$(mktemp); curl -fsSL -o \"$t\" {}; dpkg -i \"$t\"; rm -f \"$t\"",
                    q(&url)
                ),
                "/usr/share/keyrings/cuda-archive-keyring.gpg",
            ),
        ));
        steps.push(Step::new("driver and cuda", apt(&pkgs)).notify("reboot"));
        steps.push(Step::new(
            "fabricmanager",
            Action::Service { unit: "nvidia-fabricmanager".into(), enabled: Some(true), started: None },
        ));
    }
    steps.push(Step::new("container toolkit", apt(&v.container_toolkit_packages)));
    for (rt, check) in [
        ("docker", "grep -qs nvidia /etc/docker/daemon.json"),
        ("containerd", "grep -qs nvidia /etc/containerd/config.toml"),
        ("crio", "grep -qs nvidia /etc/crio/crio.conf.d/99-nvidia.conf"),
    ] {
        let extra = if rt == "crio" { " --config=/etc/crio/crio.conf.d/99-nvidia.conf" } else { "" };
        let run = format!("nvidia-ctk runtime configure --runtime={rt} --set-as-default{extra}");
        // An upgrade configures every runtime again for the reinstalled toolkit, as the original.
        let action =
            if upgrade { Action::Command { run, creates: None, unless: None } } else { cmd(run, check) };
        steps.push(Step::new(format!("nvidia runtime for {rt}"), action).notify("restart microk8s"));
    }
    // The containerd fix the original meant to make (its shell tested $PKGS, never set):
    // a `disabled_plugins` line (usually ["cri"]) would keep the CRI plugin off.
    steps.push(
        Step::new(
            "containerd: cri plugin enabled",
            Action::Line {
                path: "/etc/containerd/config.toml".into(),
                line: String::new(),
                matches: Some("disabled_plugins".into()),
                absent: true,
                create: None,
            },
        )
        .notify("restart containerd"),
    );
    let reboot = Duration::from_secs(v.reboot_timeout);
    if upgrade && reboots {
        // Always, as the original: the new kernel modules load on the next boot. Every
        // service starts again with it, so no restart handler is needed.
        steps.push(Step::new("reboot", Action::Reboot { timeout: reboot }));
        steps.push(Step::new(
            "microk8s back",
            Action::WaitFor {
                target: WaitTarget::Command(
                    "[ ! -e /snap/microk8s/current ] || microk8s status --wait-ready --timeout 30 >/dev/null 2>&1".into(),
                ),
                timeout: Duration::from_secs(300),
                interval: Duration::from_secs(5),
            },
        ));
        return PhasePlan { steps, handlers: vec![] };
    }
    let mut handlers = vec![
        restart("restart containerd", "containerd"),
        Step::new(
            "restart microk8s",
            Action::Command {
                run: "systemctl list-units --plain --no-legend 'snap.microk8s.*' | awk '{print $1}' | xargs -r systemctl restart".into(),
                creates: None,
                unless: None,
            },
        ),
    ];
    // A container has no kernel of its own to reboot into.
    if reboots {
        handlers.push(Step::new("reboot", Action::Reboot { timeout: reboot }));
    }
    PhasePlan { steps, handlers }
}

/// The device links and InfiniBand: not part of the driver upgrade.
fn nvidia_devices(c: &PlanCtx) -> Vec<Step> {
    let v = &c.inventory.vars;
    let mut steps = vec![
        Step::new(
            "/dev/char links script",
            file(
                "/usr/local/sbin/minerctl-nvidia-dev-links",
                render::nvidia_dev_links_script(),
                Meta::root(0o755),
            ),
        ),
        Step::new(
            "/dev/char links",
            cmd(
                "/usr/local/sbin/minerctl-nvidia-dev-links",
                "/usr/local/sbin/minerctl-nvidia-dev-links --check",
            ),
        ),
    ];
    if v.infiniband {
        steps.push(Step::new("infiniband packages", apt(&["infiniband-diags".into(), "nvlsm".into()])));
        steps.push(Step::new("ib_umad loaded", cmd("modprobe ib_umad", "grep -q '^ib_umad ' /proc/modules")));
        steps.push(Step::new("ib_umad at boot", line("/etc/modules", "ib_umad", None)));
        steps.push(Step::new(
            "nvlsm.conf",
            creates(
                "mkdir -p /usr/share/nvidia/nvlsm && touch /usr/share/nvidia/nvlsm/nvlsm.conf",
                "/usr/share/nvidia/nvlsm/nvlsm.conf",
            ),
        ));
    }
    steps
}

/// `upgrade-nvidia.yml`, one host at a time: on a GPU host that has other driver/CUDA versions
/// than the inventory's, purge them, reinstall, configure the container runtimes and reboot.
/// A host that does not come back stops the rollout (the engine's serial phase).
fn nvidia_upgrade(c: &PlanCtx) -> PhasePlan {
    only(!upgrading(c).is_empty(), || nvidia_driver(c, true))
}

/// The channel `snap list microk8s` shows as tracked (as read before the run), if installed.
pub fn tracked_channel(snap_list: &str) -> Option<&str> {
    snap_list.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&"microk8s")).then(|| f.get(3).copied()).flatten()
    })
}

/// A new `microk8s_channel` on a host that runs microk8s already: `snap refresh`, then wait
/// until it is ready again, before the next host (the primary first: Kubernetes' version
/// skew policy wants the control plane no older than any kubelet).
fn microk8s_channel(c: &PlanCtx) -> PhasePlan {
    let want = &c.inventory.vars.microk8s_channel;
    let now = var(c, &c.host.name, MICROK8S_TRACKING).and_then(|s| tracked_channel(s));
    let Some(now) = now.filter(|now| now != want) else { return PhasePlan::default() };
    PhasePlan {
        steps: vec![
            Step::new(
                format!("snap refresh microk8s {now} -> {want}"),
                cmd(
                    format!("snap refresh microk8s --channel={}", q(want)),
                    format!(
                        "snap list microk8s 2>/dev/null | awk '$1==\"microk8s\" {{print $4}}' | grep -qxF {}",
                        q(want)
                    ),
                ),
            ),
            Step::new(
                "microk8s ready after refresh",
                Action::WaitFor {
                    target: WaitTarget::Command(
                        "microk8s status --wait-ready --timeout 30 >/dev/null 2>&1".into(),
                    ),
                    timeout: Duration::from_secs(300),
                    interval: Duration::from_secs(5),
                },
            ),
        ],
        handlers: vec![],
    }
}

fn microk8s(c: &PlanCtx) -> PhasePlan {
    let v = &c.inventory.vars;
    let wg = c.host.wireguard_ip;
    let user = &v.user;
    let h = home(user);
    let mut members = vec![user.clone()];
    if v.login_user != "root" && &v.login_user != user {
        members.push(v.login_user.clone());
    }
    let reg_dir = format!(
        "/var/snap/microk8s/current/args/certs.d/{}:{}",
        c.inventory.registry_hostname(),
        v.registry_port
    );
    let mut steps = vec![
        // snapd mounts an installed snap at /snap/NAME/current: a path test, no snapd call.
        Step::new(
            "microk8s snap",
            creates(
                format!("snap install microk8s --classic --channel={}", q(&v.microk8s_channel)),
                "/snap/microk8s/current",
            ),
        ),
        Step::new(
            "microk8s ready",
            Action::WaitFor {
                target: WaitTarget::Command(
                    "microk8s status --wait-ready --timeout 30 >/dev/null 2>&1".into(),
                ),
                timeout: Duration::from_secs(300),
                interval: Duration::from_secs(5),
            },
        ),
        // Replaced, not only appended when absent: a changed wireguard_ip is picked up.
        Step::new("kubelet --node-ip", line(KUBELET_ARGS, &format!("--node-ip={wg}"), Some("--node-ip=")))
            .notify("restart kubelite"),
        Step::new(
            "apiserver --advertise-address",
            line(APISERVER_ARGS, &format!("--advertise-address={wg}"), Some("--advertise-address=")),
        )
        .notify("restart kubelite"),
    ];
    for m in &members {
        steps.push(Step::new(
            format!("{m} in group microk8s"),
            Action::GroupMember { user: m.clone(), group: "microk8s".into() },
        ));
    }
    steps.extend([
        Step::new(
            format!("{h}/.kube"),
            Action::Directory { path: format!("{h}/.kube"), meta: Meta::owned(0o700, user) },
        ),
        // `creates` skips the step once the file exists, so it appears only complete: a failed
        // `microk8s config` leaves no empty file (a redirect would create it first).
        Step::new(
            "kubeconfig",
            creates(
                format!(
                    "set -e; umask 077; t=$(mktemp {h}/.kube/config.XXXXXX); trap 'rm -f \"$t\"' EXIT; \
                     microk8s config > \"$t\"; chown {user}:{user} \"$t\"; mv \"$t\" {h}/.kube/config"
                ),
                format!("{h}/.kube/config"),
            ),
        ),
        Step::new(
            "registry mirror dir",
            Action::Directory { path: reg_dir.clone(), meta: Meta::root(0o755) },
        ),
        Step::new(
            "registry mirror hosts.toml",
            file(
                format!("{reg_dir}/hosts.toml"),
                render::registry_hosts_toml(c.inventory),
                Meta::root(0o644),
            ),
        ),
        Step::new(
            "resolved DNS",
            file("/etc/systemd/resolved.conf.d/minerctl.conf", render::resolved_conf(), Meta::root(0o644)),
        )
        .notify("restart resolved"),
    ]);
    PhasePlan {
        steps,
        handlers: vec![
            restart("restart kubelite", "snap.microk8s.daemon-kubelite"),
            restart("restart resolved", "systemd-resolved"),
        ],
    }
}

fn primary(c: &PlanCtx) -> PhasePlan {
    only(c.host.is_primary, || {
        PhasePlan {
        steps: vec![
            Step::new("primary packages", apt(&c.inventory.vars.primary_packages)),
            Step::new("ip forwarding", Action::Sysctl { file: "99-minerctl-forward.conf".into(), settings: vec![("net.ipv4.ip_forward".into(), "1".into())] }),
            Step::new("forward wg0", cmd("iptables -A FORWARD -i wg0 -j ACCEPT", "iptables -C FORWARD -i wg0 -j ACCEPT")).notify("save iptables"),
            Step::new(
                "NAT on en* interfaces",
                cmd(
                    "for i in $(ls /sys/class/net | grep '^en'); do iptables -t nat -C POSTROUTING -o \"$i\" -j MASQUERADE 2>/dev/null || iptables -t nat -A POSTROUTING -o \"$i\" -j MASQUERADE; done",
                    "for i in $(ls /sys/class/net | grep '^en'); do iptables -t nat -C POSTROUTING -o \"$i\" -j MASQUERADE || exit 1; done",
                ),
            )
            .notify("save iptables"),
            // Postgres, Redis (and Prometheus, when persistent) claim volumes of the default
            // StorageClass (values: `storageClass: ""`), and a bare microk8s has none: their
            // claims would stay Pending and the miner never start. microk8s' own addon makes
            // `microk8s-hostpath` the default. (microk8s runs: its section came first.)
            Step::new("hostpath-storage addon", cmd("microk8s enable hostpath-storage", addon_enabled("hostpath-storage"))),
        ],
        handlers: vec![Step::new("save iptables", Action::Command { run: "netfilter-persistent save".into(), creates: None, unless: None })],
    }
    })
}

/// Workers that have not joined yet (as captured in the wireguard-keys phase).
fn unjoined<'a>(c: &'a PlanCtx) -> Vec<&'a Host> {
    c.inventory
        .hosts
        .iter()
        .filter(|h| !h.is_primary && var(c, &h.name, "joined").map(String::as_str) != Some("yes"))
        .collect()
}

fn join_token(c: &PlanCtx) -> PhasePlan {
    let wg = c.host.wireguard_ip;
    let name = &c.host.name;
    only(c.host.is_primary, || {
        let mut steps = vec![Step::new(
            "internal-ip annotation",
            cmd(
                format!(
                    "microk8s kubectl annotate node {name} kubeadm.alpha.kubernetes.io/internal-ip={wg} --overwrite"
                ),
                format!(
                    "microk8s kubectl get node {name} -o jsonpath='{{.metadata.annotations.kubeadm\\.alpha\\.kubernetes\\.io/internal-ip}}' | grep -qx {wg}"
                ),
            ),
        )];
        // Every node's Ready status and external-ip label in one read, so that the label phase
        // asks the API once per run instead of twice per node. The first line makes the output
        // never empty (a fresh primary has no API yet: the label phase then asks per node).
        steps.push(Step::new(
            "node states",
            Action::Capture {
                var: NODE_STATES.into(),
                run: "echo nodes:; microk8s kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{\" \"}{.status.conditions[?(@.type==\"Ready\")].status}{\" \"}{.metadata.labels.chutes/external-ip}{\"\\n\"}{end}' 2>/dev/null; true".into(),
                secret: false,
                read_only: true,
                pick: None,
            },
        ));
        if !unjoined(c).is_empty() {
            // Matched on the primary's own wireguard IP, not a hard-coded 192.168 prefix, and
            // by the engine rather than `| grep | head`: when wg0 is not up, add-node offers no
            // such line, and the step must fail saying so instead of capturing "".
            steps.push(Step::new(
                "join token",
                Action::Capture {
                    var: "join_command".into(),
                    run: "microk8s add-node --token-ttl 600".into(),
                    secret: true,
                    read_only: false,
                    pick: Some(format!("microk8s join {wg}:")),
                },
            ));
        }
        PhasePlan { steps, handlers: vec![] }
    })
}

fn join(c: &PlanCtx) -> PhasePlan {
    let primary = c.inventory.primary();
    only(!c.host.is_primary, || {
        let token = var(c, &primary.name, "join_command").cloned();
        let joined = var(c, &c.host.name, "joined").map(String::as_str) == Some("yes");
        let join = token.clone().unwrap_or_else(|| "microk8s join <token from the primary>".into());
        let mut steps = vec![
            // A joined node needs no token; an unjoined one must never run the placeholder
            // (check mode shows it instead).
            Step::new(
                "join token known",
                Action::Assert {
                    ok: token.is_some() || joined || c.check,
                    message: format!(
                        "no join token from the primary {}: it must run in the same invocation (not excluded by --limit or --tags)",
                        primary.name
                    ),
                },
            ),
        ];
        if !joined {
            // A host that rebooted at the end of its setup is back on SSH before microk8s
            // serves again (the original waited up to 300 s too).
            steps.push(Step::new(
                "microk8s ready to join",
                Action::WaitFor {
                    target: WaitTarget::Command(
                        "microk8s status --wait-ready --timeout 30 >/dev/null 2>&1".into(),
                    ),
                    timeout: Duration::from_secs(300),
                    interval: Duration::from_secs(5),
                },
            ));
        }
        // The join string carries the cluster's token: on stdin, so that neither `ps` nor
        // sudo's log shows it (microk8s' own argv still holds it while it joins).
        steps.push(Step::new(
            "join cluster",
            Action::CommandWithInput {
                run: "set -f; IFS=' ' read -r join; $join --worker --skip-verify".into(),
                input: SecretInput::new(format!("{join}\n")),
                unless: JOINED.into(),
            },
        ));
        PhasePlan { steps, handlers: vec![] }
    })
}

/// Host variable on the primary: `NAME READY EXTERNAL_IP` per node, as read in "join token".
const NODE_STATES: &str = "node_states";

/// Nodes that were Ready and carried their external-ip label when the primary was read.
fn labelled_nodes<'a>(c: &'a PlanCtx) -> Vec<&'a Host> {
    let states = var(c, &c.inventory.primary().name, NODE_STATES).map(String::as_str).unwrap_or("");
    c.inventory
        .hosts
        .iter()
        .filter(|h| {
            states.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() == 3 && f[0] == h.name && f[1] == "True" && f[2] == h.external_ip.to_string()
            })
        })
        .collect()
}

fn label_nodes(c: &PlanCtx) -> PhasePlan {
    // Before the run, node states are not read yet: asking per node now would cost the
    // 2N reads that the "node states" capture exists to save.
    only(c.host.is_primary && !c.before_run, || {
        let mut steps = vec![];
        let done = labelled_nodes(c);
        // Only the nodes of hosts this run changes: adding one node (`--limit`) neither waits
        // for nor touches the others, so one NotReady node does not block another's label.
        for h in c.inventory.hosts.iter().filter(|h| c.changes(&h.name)) {
            let n = &h.name;
            if done.iter().any(|d| d.name == h.name) {
                // Already Ready and labelled, as read once for all nodes: nothing to ask again.
                for what in ["Ready", "external-ip label"] {
                    steps.push(Step::new(
                        format!("{n} {what}"),
                        Action::Assert { ok: true, message: String::new() },
                    ));
                }
                continue;
            }
            steps.push(Step::new(
                format!("{n} Ready"),
                Action::WaitFor {
                    target: WaitTarget::Command(format!(
                        "microk8s kubectl get node {n} -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}' | grep -qx True"
                    )),
                    timeout: Duration::from_secs(300),
                    interval: Duration::from_secs(10),
                },
            ));
            // The miner API reads the public IP from this label, on every node.
            steps.push(Step::new(
                format!("{n} external-ip label"),
                cmd(
                    format!("microk8s kubectl label node {n} chutes/external-ip={} --overwrite", h.external_ip),
                    format!("microk8s kubectl get node {n} -o jsonpath='{{.metadata.labels.chutes/external-ip}}' | grep -qx {}", h.external_ip),
                ),
            ));
        }
        PhasePlan { steps, handlers: vec![] }
    })
}

/// The RuntimeClass chute pods name (`runtimeClassName`), as the original's GPU operator
/// (`operator.runtimeClass`) created it.
pub const RUNTIME_CLASS: &str = "nvidia-container-runtime";
/// Where microk8s' nvidia addon runs the GPU operator.
const OPERATOR_NAMESPACE: &str = "gpu-operator-resources";
/// The node labels the miner API and Gepetto read (GPU feature discovery sets them).
pub const GPU_LABELS: [&str; 3] = ["nvidia.com/gpu.present", "nvidia.com/gpu.count", "nvidia.com/gpu.memory"];
/// Host variable on the primary: the GPU layer as read after it was installed.
const GPU_STATE: &str = "gpu_layer";

fn addon_enabled(name: &str) -> String {
    format!("microk8s status -a {name} 2>/dev/null | grep -qx enabled")
}

/// The original's `extras.yml` without Helm: microk8s' own `nvidia` addon (the GPU operator
/// with the host's driver, which the nvidia role installs) and `metrics-server`, on the
/// primary. Then every GPU node's capacity and labels and the RuntimeClass are read once the
/// operator's pods run; the next phase checks them.
fn gpu_layer(c: &PlanCtx) -> PhasePlan {
    let gpus = c.inventory.hosts.iter().any(|h| h.gpu_enabled);
    only(c.host.is_primary && gpus, || PhasePlan {
        steps: vec![
            Step::new(
                "nvidia addon",
                cmd(
                    format!(
                        "microk8s enable nvidia --gpu-operator-driver host --gpu-operator-set operator.runtimeClass={RUNTIME_CLASS}"
                    ),
                    addon_enabled("nvidia"),
                ),
            ),
            Step::new(
                "metrics-server addon",
                cmd("microk8s enable metrics-server", addon_enabled("metrics-server")),
            ),
            Step::new(
                "gpu operator running",
                Action::WaitFor {
                    target: WaitTarget::Command(format!(
                        "p=$(microk8s kubectl get pods -n {OPERATOR_NAMESPACE} -o jsonpath='{{range .items[*]}}{{.status.phase}}{{\"\\n\"}}{{end}}') \
                         && [ -n \"$p\" ] && ! printf '%s\\n' \"$p\" | grep -vqxE 'Running|Succeeded'"
                    )),
                    timeout: Duration::from_secs(900),
                    interval: Duration::from_secs(10),
                },
            ),
            Step::new(
                "gpu layer state",
                Action::Capture {
                    var: GPU_STATE.into(),
                    run: format!(
                        "echo \"addon=$(microk8s status -a nvidia 2>/dev/null)\"; \
                         echo \"runtimeclass=$(microk8s kubectl get runtimeclass {RUNTIME_CLASS} -o name 2>/dev/null)\"; \
                         microk8s kubectl get nodes -o jsonpath='{{range .items[*]}}node={{.metadata.name}}{{\"\\t\"}}{{.status.capacity.nvidia\\.com/gpu}}{{\"\\t\"}}{{.metadata.labels.nvidia\\.com/gpu\\.present}}{{\"\\t\"}}{{.metadata.labels.nvidia\\.com/gpu\\.count}}{{\"\\t\"}}{{.metadata.labels.nvidia\\.com/gpu\\.memory}}{{\"\\n\"}}{{end}}' 2>/dev/null; true"
                    ),
                    secret: false,
                    read_only: true,
                    pick: None,
                },
            ),
        ],
        handlers: vec![],
    })
}

/// What the GPU layer lacks, per GPU host of the inventory that `judged` accepts, as read
/// by "gpu layer state": one line per problem, naming the node. Empty: complete.
pub fn gpu_layer_lacks(inv: &Inventory, state: &str, judged: impl Fn(&str) -> bool) -> Vec<String> {
    let mut lacks = vec![];
    let field = |key: &str| state.lines().find_map(|l| l.strip_prefix(key)).unwrap_or("").trim();
    if field("runtimeclass=").is_empty() {
        lacks.push(format!("RuntimeClass {RUNTIME_CLASS} does not exist"));
    }
    for h in inv.hosts.iter().filter(|h| h.gpu_enabled && judged(&h.name)) {
        let row = state.lines().find_map(|l| {
            let rest = l.strip_prefix("node=")?;
            let f: Vec<&str> = rest.split('\t').collect();
            (f.first() == Some(&h.name.as_str())).then_some(f)
        });
        let Some(f) = row else {
            lacks.push(format!("{}: no such node in the cluster", h.name));
            continue;
        };
        let get = |i: usize| f.get(i).map(|v| v.trim()).unwrap_or("");
        let mut missing = vec![];
        if get(1).parse::<u32>().map_or(true, |n| n == 0) {
            missing.push("nvidia.com/gpu capacity".to_string());
        }
        let labels: Vec<&str> =
            GPU_LABELS.iter().enumerate().filter(|(i, _)| get(i + 2).is_empty()).map(|(_, l)| *l).collect();
        if !labels.is_empty() {
            missing.push(format!("label{} {}", if labels.len() > 1 { "s" } else { "" }, labels.join(", ")));
        }
        if !missing.is_empty() {
            lacks.push(format!("{} lacks {}", h.name, missing.join(" and ")));
        }
    }
    lacks
}

/// Fails naming each node and what it lacks, instead of leaving it to the first chute. In
/// check mode, a cluster whose nvidia addon is not enabled yet is not judged: the run would
/// enable it first, and a node not in the cluster yet is not judged: the run would join it.
/// Only the nodes this run may change are judged (`--limit`, `add-node`'s worker): another
/// node's trouble is not this run's to fix, and must not stop it.
fn verify_gpu_layer(c: &PlanCtx) -> PhasePlan {
    let gpus = c.inventory.hosts.iter().any(|h| h.gpu_enabled);
    only(c.host.is_primary && gpus && !c.before_run, || {
        let state = var(c, &c.host.name, GPU_STATE).map(String::as_str);
        // --check: a node the run would join is not in the cluster yet, nothing to judge.
        let in_cluster = |s: &str, h: &str| {
            s.lines().any(|l| l.strip_prefix("node=").is_some_and(|r| r.split('\t').next() == Some(h)))
        };
        let lacks = state
            .map(|s| gpu_layer_lacks(c.inventory, s, |h| c.changes(h) && (!c.check || in_cluster(s, h))))
            .unwrap_or_default();
        let pending = c.check && !state.is_some_and(|s| s.lines().any(|l| l == "addon=enabled"));
        PhasePlan {
            steps: vec![Step::new(
                "gpu nodes ready for chutes",
                Action::Assert {
                    ok: lacks.is_empty() || pending,
                    message: format!("the GPU layer is incomplete: {}", lacks.join("; ")),
                },
            )],
            handlers: vec![],
        }
    })
}
