//! From the positioned YAML tree to a validated [`Inventory`], collecting every problem.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::Problem;
use crate::model::{Host, Inventory, Ipv4Net, JumpHost, SshSettings, Vars};
use crate::yaml::{Node, Pos};

const TOP_KEYS: &[&str] = &["vars", "groups", "hosts"];
const VAR_KEYS: &[&str] = &[
    "ssh_keys",
    "user",
    "login_user",
    "validator",
    "registry_port",
    "cuda_version",
    "nvidia_version",
    "skip_cuda",
    "ipv6_enabled",
    "wireguard_mtu",
    "wireguard_port",
    "wireguard_subnet",
    "infiniband",
    "microk8s_channel",
    "reboot_timeout",
    "packages",
    "cuda_packages",
    "container_toolkit_packages",
    "primary_packages",
    "cuda_keyring_url",
    "ntp",
    "ssh",
];
const HOST_KEYS: &[&str] = &[
    "address",
    "external_ip",
    "wireguard_ip",
    "gpu_enabled",
    "is_primary",
    "hourly_cost",
    "gpu_short_ref",
    "ssh",
];
const SSH_KEYS: &[&str] = &["user", "port", "key", "jump", "host_key"];

/// The package list of the original `site.yml`, installed on every host by default.
pub const DEFAULT_PACKAGES: &[&str] = &[
    "socat",
    "vim",
    "jq",
    "bc",
    "libclang-dev",
    "npm",
    "clang",
    "libssl-dev",
    "llvm",
    "libudev1",
    "protobuf-compiler",
    "python3",
    "python3-pip",
    "python3-venv",
    "docker.io",
    "docker-compose",
    "build-essential",
    "nginx",
    "redis",
    "net-tools",
    "ffmpeg",
    "rsyslog",
    "libpq-dev",
    "snapd",
    "iputils-ping",
    "systemd-timesyncd",
    "wireguard",
    "wireguard-tools",
];

struct Ctx {
    problems: Vec<Problem>,
    host: Option<String>,
}

impl Ctx {
    fn err(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem { pos, host: self.host.clone(), message: message.into() });
    }

    /// The entries of a mapping, reporting unknown and repeated keys.
    fn fields(&mut self, node: &Node, allowed: &[&str], what: &str) -> BTreeMap<String, Node> {
        let mut out = BTreeMap::new();
        match node {
            Node::Map { entries, .. } => {
                for (key, kpos, value) in entries {
                    if !allowed.contains(&key.as_str()) {
                        let hint = suggest(key, allowed)
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                        self.err(
                            *kpos,
                            format!("unknown key `{key}` in {what}{hint}; allowed: {}", allowed.join(", ")),
                        );
                    } else if out.contains_key(key) {
                        self.err(*kpos, format!("key `{key}` appears twice in {what}"));
                    } else {
                        out.insert(key.clone(), value.clone());
                    }
                }
            }
            n if n.is_null() => {}
            n => self.err(n.pos(), format!("{what} must be a mapping, found {}", n.kind())),
        }
        out
    }

    fn string(&mut self, n: &Node, key: &str) -> Option<String> {
        match n {
            Node::Scalar { value, .. } if !n.is_null() => Some(value.clone()),
            n => {
                self.err(n.pos(), format!("`{key}` must be a string, found {}", n.kind()));
                None
            }
        }
    }

    fn bool(&mut self, n: &Node, key: &str) -> Option<bool> {
        match n {
            Node::Scalar { value, quoted: false, .. } => match value.as_str() {
                "true" | "True" | "TRUE" => Some(true),
                "false" | "False" | "FALSE" => Some(false),
                _ => {
                    self.err(n.pos(), format!("`{key}` must be true or false, found `{value}`"));
                    None
                }
            },
            n => {
                self.err(n.pos(), format!("`{key}` must be true or false (unquoted), found {}", n.kind()));
                None
            }
        }
    }

    fn number<T: std::str::FromStr>(&mut self, n: &Node, key: &str, range: &str) -> Option<T> {
        match n {
            Node::Scalar { value, .. } => match value.trim().parse::<T>() {
                Ok(v) => Some(v),
                Err(_) => {
                    self.err(n.pos(), format!("`{key}` must be {range}, found `{value}`"));
                    None
                }
            },
            n => {
                self.err(n.pos(), format!("`{key}` must be {range}, found {}", n.kind()));
                None
            }
        }
    }

    fn strings(&mut self, n: &Node, key: &str) -> Option<Vec<String>> {
        match n {
            Node::Seq { items, .. } => {
                let mut out = vec![];
                for item in items {
                    out.push(self.string(item, key)?);
                }
                Some(out)
            }
            n if n.is_null() => Some(vec![]),
            n => {
                self.err(n.pos(), format!("`{key}` must be a list of strings, found {}", n.kind()));
                None
            }
        }
    }
}

/// Closest allowed key by edit distance, for typos such as `wireguard_Ip`.
fn suggest<'a>(key: &str, allowed: &[&'a str]) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                let sub = prev[j] + usize::from(ca != *cb);
                cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let key = key.to_lowercase();
    allowed.iter().map(|a| (distance(&key, a), *a)).filter(|(d, _)| *d <= 3).min().map(|(_, a)| a)
}

fn valid_hostname(name: &str) -> bool {
    // The name becomes the hostname and the Kubernetes node name: an RFC 1123 label.
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn valid_username(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase() || b == b'_')
        && name.len() <= 32
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_address(addr: &str) -> bool {
    if addr.parse::<IpAddr>().is_ok() {
        return true;
    }
    // Anything made only of digits and dots must have been meant as an IPv4 address.
    if addr.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    !addr.is_empty()
        && addr.len() <= 253
        && addr.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn looks_like_public_key(key: &str) -> bool {
    let mut parts = key.split_whitespace();
    let algo = parts.next().unwrap_or("");
    let blob = parts.next().unwrap_or("");
    (algo.starts_with("ssh-") || algo.starts_with("ecdsa-") || algo.starts_with("sk-"))
        && blob.len() >= 16
        && blob.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

fn parse_jump(s: &str) -> Option<JumpHost> {
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, s),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()?),
        _ => (rest, 22),
    };
    if !valid_address(host) || user.as_deref().is_some_and(|u| u.is_empty()) {
        return None;
    }
    Some(JumpHost { user, host: host.to_string(), port })
}

fn ssh_settings(ctx: &mut Ctx, node: &Node, what: &str, base_dir: &Path) -> SshSettings {
    let mut f = ctx.fields(node, SSH_KEYS, what);
    let mut s = SshSettings::default();
    if let Some(n) = f.remove("user") {
        s.user = ctx.string(&n, "ssh.user");
        if let Some(u) = &s.user
            && !valid_username(u)
        {
            ctx.err(n.pos(), format!("ssh.user `{u}` is not a valid user name"));
        }
    }
    if let Some(n) = f.remove("port") {
        s.port = ctx.number::<u16>(&n, "ssh.port", "a port number (1-65535)");
        if s.port == Some(0) {
            ctx.err(n.pos(), "ssh.port must be between 1 and 65535");
        }
    }
    if let Some(n) = f.remove("key") {
        s.key = ctx.string(&n, "ssh.key").map(|k| expand_path(&k, base_dir));
    }
    if let Some(n) = f.remove("jump")
        && let Some(j) = ctx.string(&n, "ssh.jump")
    {
        s.jump = parse_jump(&j);
        if s.jump.is_none() {
            ctx.err(n.pos(), format!("ssh.jump `{j}` is not of the form [user@]host[:port]"));
        }
    }
    if let Some(n) = f.remove("host_key")
        && let Some(k) = ctx.string(&n, "ssh.host_key")
    {
        if !looks_like_public_key(&k) {
            ctx.err(
                n.pos(),
                "ssh.host_key must be `<algorithm> <base64 key>`, as in known_hosts or a .pub file",
            );
        } else if let Err(e) = ssh_key::PublicKey::from_openssh(k.trim()) {
            // The same parser the SSH transport uses: a key that passes here connects.
            ctx.err(n.pos(), format!("ssh.host_key is not a valid public key ({e})"));
        } else {
            s.host_key = Some(k);
        }
    }
    s
}

/// `~/x` is the user's home; a relative path is relative to the inventory file.
fn expand_path(p: &str, base_dir: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    let path = PathBuf::from(p);
    if path.is_relative() { base_dir.join(path) } else { path }
}

fn vars(ctx: &mut Ctx, node: Option<&Node>, base_dir: &Path) -> Vars {
    let mut v = Vars {
        ssh_keys: vec![],
        user: "billybob".into(),
        login_user: "ubuntu".into(),
        validator: "5Dt7HZ7Zpw4DppPxFM7Ke3Cm7sDAWhsZXmM5ZAmE7dSVJbcQ".into(),
        registry_port: 30500,
        cuda_version: "13-0".into(),
        nvidia_version: "580".into(),
        skip_cuda: false,
        ipv6_enabled: true,
        wireguard_mtu: 1380,
        wireguard_port: 51820,
        wireguard_subnet: Ipv4Net { addr: Ipv4Addr::new(192, 168, 0, 0), prefix: 20 },
        infiniband: false,
        microk8s_channel: "1.31/stable".into(),
        reboot_timeout: 900,
        packages: DEFAULT_PACKAGES.iter().map(|s| s.to_string()).collect(),
        cuda_packages: vec![
            "cuda-toolkit-{cuda_version}".into(),
            "nvidia-open".into(),
            "nvidia-fabricmanager-{nvidia_version}".into(),
        ],
        container_toolkit_packages: vec!["nvidia-container-toolkit".into()],
        primary_packages: vec!["iptables-persistent".into()],
        cuda_keyring_url:
            "https://developer.download.nvidia.com/compute/cuda/repos/{distro}/x86_64/cuda-keyring_1.1-1_all.deb".into(),
        ntp: vec!["pool.ntp.org".into()],
        ssh: SshSettings::default(),
    };
    let Some(node) = node else { return v };
    let mut f = ctx.fields(node, VAR_KEYS, "`vars`");
    macro_rules! take {
        ($key:literal, $field:expr, $conv:expr) => {
            if let Some(n) = f.remove($key)
                && let Some(val) = $conv(ctx, &n)
            {
                $field = val;
            }
        };
    }
    take!("ssh_keys", v.ssh_keys, |c: &mut Ctx, n: &Node| c.strings(n, "ssh_keys"));
    take!("user", v.user, |c: &mut Ctx, n: &Node| c.string(n, "user"));
    take!("login_user", v.login_user, |c: &mut Ctx, n: &Node| c.string(n, "login_user"));
    take!("validator", v.validator, |c: &mut Ctx, n: &Node| c.string(n, "validator"));
    take!("registry_port", v.registry_port, |c: &mut Ctx, n: &Node| c.number(
        n,
        "registry_port",
        "a port number"
    ));
    take!("cuda_version", v.cuda_version, |c: &mut Ctx, n: &Node| c.string(n, "cuda_version"));
    take!("nvidia_version", v.nvidia_version, |c: &mut Ctx, n: &Node| c.string(n, "nvidia_version"));
    take!("skip_cuda", v.skip_cuda, |c: &mut Ctx, n: &Node| c.bool(n, "skip_cuda"));
    take!("ipv6_enabled", v.ipv6_enabled, |c: &mut Ctx, n: &Node| c.bool(n, "ipv6_enabled"));
    take!("wireguard_mtu", v.wireguard_mtu, |c: &mut Ctx, n: &Node| c.number(
        n,
        "wireguard_mtu",
        "an MTU (1280-9000)"
    ));
    take!("wireguard_port", v.wireguard_port, |c: &mut Ctx, n: &Node| c.number(
        n,
        "wireguard_port",
        "a port number"
    ));
    take!("infiniband", v.infiniband, |c: &mut Ctx, n: &Node| c.bool(n, "infiniband"));
    take!("microk8s_channel", v.microk8s_channel, |c: &mut Ctx, n: &Node| c.string(n, "microk8s_channel"));
    take!("reboot_timeout", v.reboot_timeout, |c: &mut Ctx, n: &Node| c.number(
        n,
        "reboot_timeout",
        "a number of seconds"
    ));
    take!("packages", v.packages, |c: &mut Ctx, n: &Node| c.strings(n, "packages"));
    take!("cuda_packages", v.cuda_packages, |c: &mut Ctx, n: &Node| c.strings(n, "cuda_packages"));
    take!("container_toolkit_packages", v.container_toolkit_packages, |c: &mut Ctx, n: &Node| c
        .strings(n, "container_toolkit_packages"));
    take!("primary_packages", v.primary_packages, |c: &mut Ctx, n: &Node| c.strings(n, "primary_packages"));
    take!("cuda_keyring_url", v.cuda_keyring_url, |c: &mut Ctx, n: &Node| c.string(n, "cuda_keyring_url"));
    take!("ntp", v.ntp, |c: &mut Ctx, n: &Node| c.strings(n, "ntp"));
    if let Some(n) = f.remove("wireguard_subnet")
        && let Some(s) = ctx.string(&n, "wireguard_subnet")
    {
        match parse_net(&s) {
            Some(net) => v.wireguard_subnet = net,
            None => {
                ctx.err(n.pos(), format!("wireguard_subnet `{s}` is not an IPv4 network like 192.168.0.0/20"))
            }
        }
    }
    if let Some(n) = f.remove("ssh") {
        v.ssh = ssh_settings(ctx, &n, "`vars.ssh`", base_dir);
    }
    // Value checks that need the position of the value: re-walk the mapping for positions.
    let pos_of = |key: &str| match node {
        Node::Map { entries, .. } => entries.iter().find(|(k, _, _)| k == key).map(|(_, _, n)| n.pos()),
        _ => None,
    };
    let at = |key: &str| pos_of(key).unwrap_or(node.pos());
    let key_nodes: Vec<Pos> = match node {
        Node::Map { entries, .. } => entries
            .iter()
            .filter(|(k, _, _)| k == "ssh_keys")
            .flat_map(|(_, _, n)| match n {
                Node::Seq { items, .. } => items.iter().map(Node::pos).collect(),
                _ => vec![],
            })
            .collect(),
        _ => vec![],
    };
    for (i, key) in v.ssh_keys.iter().enumerate() {
        if !looks_like_public_key(key) {
            let pos = key_nodes.get(i).copied().unwrap_or(at("ssh_keys"));
            ctx.err(pos, format!("ssh_keys[{i}] is not an SSH public key (`ssh-ed25519 AAAA...`)"));
        }
    }
    if !valid_username(&v.user) {
        ctx.err(at("user"), format!("user `{}` is not a valid user name", v.user));
    }
    if !valid_username(&v.login_user) {
        ctx.err(at("login_user"), format!("login_user `{}` is not a valid user name", v.login_user));
    }
    if v.validator.is_empty() || !v.validator.bytes().all(|b| b.is_ascii_alphanumeric()) {
        ctx.err(at("validator"), format!("validator `{}` is not an SS58 address", v.validator));
    }
    if !(30000..=32767).contains(&v.registry_port) {
        ctx.err(
            at("registry_port"),
            format!("registry_port {} is outside the NodePort range 30000-32767", v.registry_port),
        );
    }
    if !(1280..=9000).contains(&v.wireguard_mtu) {
        ctx.err(at("wireguard_mtu"), format!("wireguard_mtu {} is outside 1280-9000", v.wireguard_mtu));
    }
    if v.reboot_timeout == 0 {
        ctx.err(at("reboot_timeout"), "reboot_timeout must be at least 1 second".to_string());
    }
    // It becomes part of a command line: a snap channel is track/risk[/branch], nothing else.
    if !v.microk8s_channel.contains('/')
        || !v.microk8s_channel.bytes().all(|b| b.is_ascii_alphanumeric() || b"./_-".contains(&b))
    {
        ctx.err(
            at("microk8s_channel"),
            format!("microk8s_channel `{}` should look like 1.31/stable", v.microk8s_channel),
        );
    }
    // Filled into package names that root shell commands use (`cuda-toolkit-{cuda_version}`).
    for (key, val) in [("cuda_version", &v.cuda_version), ("nvidia_version", &v.nvidia_version)] {
        if val.is_empty() || !val.bytes().all(|b| b.is_ascii_alphanumeric() || b".+~-".contains(&b)) {
            ctx.err(
                at(key),
                format!("{key} `{val}` may only contain letters, digits and `.+~-` (it becomes part of package names)"),
            );
        }
    }
    for (key, list) in [("packages", &v.packages), ("cuda_packages", &v.cuda_packages)] {
        for p in list.iter() {
            if p.is_empty() || p.starts_with('-') || p.contains(char::is_whitespace) {
                ctx.err(at(key), format!("{key}: `{p}` is not a package name"));
            }
        }
    }
    v
}

fn parse_net(s: &str) -> Option<Ipv4Net> {
    let (addr, prefix) = s.split_once('/')?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 30).then_some(())?;
    Some(Ipv4Net { addr: addr.parse().ok()?, prefix })
}

struct RawHost {
    host: Host,
    address_pos: Pos,
    external_pos: Pos,
    wireguard_pos: Pos,
}

/// The machine SSH reaches: address (an IP in canonical form, a DNS name in lower case), port,
/// and the jump host's, whose user does not change where it forwards to.
type SshTarget = (String, u16, Option<(String, u16)>);

fn ssh_target(h: &Host) -> Option<SshTarget> {
    let norm = |a: &str| match a.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => a.trim_end_matches('.').to_ascii_lowercase(),
    };
    // Empty: the address did not parse (reported already).
    (!h.address.is_empty())
        .then(|| (norm(&h.address), h.ssh_port(), h.ssh.jump.as_ref().map(|j| (norm(&j.host), j.port))))
}

fn describe_target(h: &Host) -> String {
    let hostport =
        |a: &str, port: u16| if a.contains(':') { format!("[{a}]:{port}") } else { format!("{a}:{port}") };
    let mut s = hostport(&h.address, h.ssh_port());
    if let Some(j) = &h.ssh.jump {
        s.push_str(&format!(" via {}", hostport(&j.host, j.port)));
    }
    s
}

fn host(ctx: &mut Ctx, name: &str, name_pos: Pos, node: &Node, v: &Vars, base_dir: &Path) -> RawHost {
    ctx.host = Some(name.to_string());
    if !valid_hostname(name) {
        ctx.err(name_pos, "host names become hostnames and Kubernetes node names: use lowercase letters, digits and `-` (at most 63)");
    }
    let mut f = ctx.fields(node, HOST_KEYS, "this host");
    let mut required = |ctx: &mut Ctx, key: &str| {
        let n = f.remove(key);
        if n.is_none() {
            ctx.err(name_pos, format!("missing `{key}`"));
        }
        n
    };
    let address = required(ctx, "address");
    let external = required(ctx, "external_ip");
    let wireguard = required(ctx, "wireguard_ip");
    let mut h = Host {
        name: name.to_string(),
        pos: name_pos,
        address: String::new(),
        external_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        wireguard_ip: Ipv4Addr::UNSPECIFIED,
        gpu_enabled: true,
        is_primary: false,
        hourly_cost: None,
        gpu_short_ref: None,
        ssh: v.ssh.clone(),
    };
    let mut address_pos = name_pos;
    let mut external_pos = name_pos;
    let mut wireguard_pos = name_pos;
    if let Some(n) = address
        && let Some(a) = ctx.string(&n, "address")
    {
        address_pos = n.pos();
        if valid_address(&a) {
            h.address = a;
        } else {
            ctx.err(n.pos(), format!("address `{a}` is neither an IP address nor a DNS name"));
        }
    }
    if let Some(n) = external
        && let Some(s) = ctx.string(&n, "external_ip")
    {
        external_pos = n.pos();
        match s.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                ctx.err(n.pos(), format!("external_ip {ip} cannot be a host's public address"))
            }
            // A Kubernetes label value (chutes/external-ip) cannot hold ':', and the validator
            // builds http://<external_ip>:<port> without brackets.
            Ok(IpAddr::V6(ip)) => ctx.err(
                n.pos(),
                format!("external_ip {ip} is not an IPv4 address; the node label chutes/external-ip and the validator need one"),
            ),
            Ok(ip) => h.external_ip = ip,
            Err(_) => ctx.err(n.pos(), format!("external_ip `{s}` is not an IP address")),
        }
    }
    if let Some(n) = wireguard
        && let Some(s) = ctx.string(&n, "wireguard_ip")
    {
        wireguard_pos = n.pos();
        match s.parse::<Ipv4Addr>() {
            Ok(ip) if !v.wireguard_subnet.contains(ip) => ctx.err(
                n.pos(),
                format!(
                    "wireguard_ip {ip} is outside the mesh subnet {} (vars.wireguard_subnet)",
                    v.wireguard_subnet
                ),
            ),
            Ok(ip) if ip == v.wireguard_subnet.network() || ip == v.wireguard_subnet.broadcast() => ctx.err(
                n.pos(),
                format!("wireguard_ip {ip} is the network or broadcast address of {}", v.wireguard_subnet),
            ),
            Ok(ip) => h.wireguard_ip = ip,
            Err(_) => ctx.err(n.pos(), format!("wireguard_ip `{s}` is not an IPv4 address")),
        }
    }
    if let Some(n) = f.remove("gpu_enabled")
        && let Some(b) = ctx.bool(&n, "gpu_enabled")
    {
        h.gpu_enabled = b;
    }
    if let Some(n) = f.remove("is_primary")
        && let Some(b) = ctx.bool(&n, "is_primary")
    {
        h.is_primary = b;
    }
    if let Some(n) = f.remove("hourly_cost") {
        h.hourly_cost = ctx.number::<f64>(&n, "hourly_cost", "a positive number (USD per hour)");
        if let Some(c) = h.hourly_cost
            && !(c.is_finite() && c > 0.0)
        {
            // The original autoscaler divides by it (ZeroDivision on 0).
            ctx.err(n.pos(), format!("hourly_cost must be greater than 0, found {c}"));
        }
    }
    if let Some(n) = f.remove("gpu_short_ref") {
        h.gpu_short_ref = ctx.string(&n, "gpu_short_ref");
    }
    if let Some(n) = f.remove("ssh") {
        let own = ssh_settings(ctx, &n, "`ssh`", base_dir);
        h.ssh = SshSettings {
            user: own.user.or(h.ssh.user),
            port: own.port.or(h.ssh.port),
            key: own.key.or(h.ssh.key),
            jump: own.jump.or(h.ssh.jump),
            host_key: own.host_key.or(h.ssh.host_key),
        };
    }
    ctx.host = None;
    RawHost { host: h, address_pos, external_pos, wireguard_pos }
}

pub(crate) fn inventory(root: Option<Node>, file: &Path) -> Result<Inventory, Vec<Problem>> {
    let mut ctx = Ctx { problems: vec![], host: None };
    let base_dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let Some(root) = root else {
        return Err(vec![Problem {
            pos: Pos { line: 1, col: 1 },
            host: None,
            message: "the inventory is empty".into(),
        }]);
    };
    let mut top = ctx.fields(&root, TOP_KEYS, "the inventory");
    let v = vars(&mut ctx, top.get("vars"), &base_dir);

    let mut raw: Vec<RawHost> = vec![];
    match top.remove("hosts") {
        None => ctx.err(root.pos(), "missing `hosts`"),
        Some(Node::Map { entries, pos }) => {
            if entries.is_empty() {
                ctx.err(pos, "`hosts` is empty");
            }
            for (name, name_pos, node) in &entries {
                if let Some(first) = raw.iter().find(|r| &r.host.name == name) {
                    let line = first.host.pos.line;
                    ctx.host = Some(name.clone());
                    ctx.err(*name_pos, format!("host name is used twice (first at line {line})"));
                    ctx.host = None;
                    continue;
                }
                raw.push(host(&mut ctx, name, *name_pos, node, &v, &base_dir));
            }
        }
        Some(n) => ctx
            .err(n.pos(), format!("`hosts` must be a mapping of host name to settings, found {}", n.kind())),
    }

    // Cross-host rules, over every host whose field in question parsed (an unparsed field
    // keeps its placeholder, the unspecified address).
    let good: Vec<&RawHost> = raw.iter().collect();
    let primaries: Vec<&RawHost> = raw.iter().filter(|r| r.host.is_primary).collect();
    match primaries.len() {
        1 => {}
        0 if !raw.is_empty() => ctx.err(
            raw[0].host.pos,
            "no host has `is_primary: true`; exactly one (the CPU control-plane node) must",
        ),
        0 => {}
        _ => {
            let names: Vec<String> =
                primaries.iter().map(|p| format!("{} (line {})", p.host.name, p.host.pos.line)).collect();
            for p in &primaries[1..] {
                ctx.host = Some(p.host.name.clone());
                ctx.err(
                    p.host.pos,
                    format!("more than one primary: {}; exactly one must be", names.join(", ")),
                );
            }
            ctx.host = None;
        }
    }
    for (i, a) in good.iter().enumerate() {
        for b in &good[..i] {
            ctx.host = Some(a.host.name.clone());
            if a.host.wireguard_ip == b.host.wireguard_ip && !a.host.wireguard_ip.is_unspecified() {
                ctx.err(
                    a.wireguard_pos,
                    format!(
                        "wireguard_ip {} is also used by host `{}` (line {})",
                        a.host.wireguard_ip, b.host.name, b.wireguard_pos.line
                    ),
                );
            }
            if a.host.external_ip == b.host.external_ip && !a.host.external_ip.is_unspecified() {
                ctx.err(a.external_pos, format!(
                    "external_ip {} is also used by host `{}` (line {}); each node needs its own public IP",
                    a.host.external_ip, b.host.name, b.external_pos.line
                ));
            }
            // One machine in two lanes: the second would reconfigure the first one's host.
            if let Some(t) = ssh_target(&a.host)
                && ssh_target(&b.host).as_ref() == Some(&t)
            {
                ctx.err(
                    a.address_pos,
                    format!(
                        "SSH target {} is also used by host `{}` (line {}); each host must be its own machine",
                        describe_target(&a.host),
                        b.host.name,
                        b.address_pos.line
                    ),
                );
            }
            ctx.host = None;
        }
    }

    let mut groups = vec![];
    if let Some(node) = top.remove("groups") {
        if let Node::Map { entries, .. } = &node {
            for (g, gpos, members) in entries {
                if ["all", "primary", "workers", "gpu", "cpu"].contains(&g.as_str())
                    || raw.iter().any(|r| &r.host.name == g)
                {
                    ctx.err(*gpos, format!("group `{g}` clashes with a built-in group or a host name"));
                    continue;
                }
                let Some(list) = ctx.strings(members, &format!("groups.{g}")) else { continue };
                for m in &list {
                    if !raw.iter().any(|r| &r.host.name == m) {
                        ctx.err(members.pos(), format!("group `{g}` names unknown host `{m}`"));
                    }
                }
                groups.push((g.clone(), list));
            }
        } else if !node.is_null() {
            ctx.err(
                node.pos(),
                format!("`groups` must be a mapping of group name to host names, found {}", node.kind()),
            );
        }
    }

    if ctx.problems.is_empty() {
        Ok(Inventory {
            file: file.to_path_buf(),
            vars: v,
            hosts: raw.into_iter().map(|r| r.host).collect(),
            groups,
        })
    } else {
        Err(ctx.problems)
    }
}
