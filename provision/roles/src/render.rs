//! Rendered configuration files (the Ansible `templates/*.j2`). Pure functions of the
//! inventory, so they are snapshot-tested.

use provision_inventory::{Host, Inventory};

/// `/etc/wireguard/wg0.conf`. The private key is not in the file: `PostUp` loads it from
/// `/etc/wireguard/private.key`, so it never leaves the host (the original slurped it into facts).
pub fn wg0_conf(inv: &Inventory, host: &Host, public_key: &dyn Fn(&str) -> Option<String>) -> String {
    let v = &inv.vars;
    let subnet = v.wireguard_subnet;
    let mut s = format!(
        "# Managed by minerctl; edits are reverted on the next `minerctl provision`.\n\
         [Interface]\nAddress = {ip}/{prefix}\nListenPort = {port}\nMTU = {mtu}\n\
         PostUp = wg set %i private-key /etc/wireguard/private.key\n",
        ip = host.wireguard_ip,
        prefix = subnet.prefix,
        port = v.wireguard_port,
        mtu = v.wireguard_mtu
    );
    let key =
        |h: &Host| public_key(&h.name).unwrap_or_else(|| format!("<public key of {} not known yet>", h.name));
    if host.is_primary {
        for peer in inv.hosts.iter().filter(|h| !h.is_primary) {
            // 10.0.0.0/8 routes pod and service traffic through the tunnel.
            s.push_str(&format!(
                "\n# {name}\n[Peer]\nPublicKey = {key}\nAllowedIPs = {ip}/32, 10.0.0.0/8\nEndpoint = {ext}\n",
                name = peer.name,
                key = key(peer),
                ip = peer.wireguard_ip,
                ext = endpoint(peer, v.wireguard_port),
            ));
        }
    } else {
        let p = inv.primary();
        s.push_str(&format!(
            "\n# {name} (primary)\n[Peer]\nPublicKey = {key}\nAllowedIPs = {net}, 10.0.0.0/8\nEndpoint = {ext}\nPersistentKeepalive = 25\n",
            name = p.name,
            key = key(p),
            net = format_args!("{}/{}", subnet.network(), subnet.prefix),
            ext = endpoint(p, v.wireguard_port),
        ));
    }
    s
}

fn endpoint(h: &Host, port: u16) -> String {
    match h.external_ip {
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        std::net::IpAddr::V4(ip) => format!("{ip}:{port}"),
    }
}

/// containerd `hosts.toml` for the validator registry: plain HTTP to the local NodePort.
pub fn registry_hosts_toml(inv: &Inventory) -> String {
    let host = inv.registry_hostname();
    let port = inv.vars.registry_port;
    format!(
        "# Managed by minerctl.\nserver = \"http://{host}:{port}\"\n\n[host.\"http://{host}:{port}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// systemd-resolved drop-in: cluster DNS first, public resolvers as fallback.
pub fn resolved_conf() -> String {
    "# Managed by minerctl.\n[Resolve]\nDNS=10.152.183.10\nFallbackDNS=1.1.1.1 1.0.0.1 8.8.8.8 8.8.4.4\nDomains=~chutes.svc.cluster.local\nDNSSEC=no\nDNSOverTLS=no\n".into()
}

pub fn timesyncd_conf(ntp: &[String]) -> String {
    format!("# Managed by minerctl.\n[Time]\nNTP={}\n", ntp.join(" "))
}

pub fn set_hostname_unit() -> String {
    "# Managed by minerctl: re-applies the inventory hostname at boot (cloud images reset it).\n\
     [Unit]\nDescription=Set hostname from minerctl inventory\nAfter=network.target\n\n\
     [Service]\nType=oneshot\nExecStart=/usr/local/bin/set-hostname.sh\n\n[Install]\nWantedBy=multi-user.target\n"
        .into()
}

pub fn set_hostname_script(name: &str) -> String {
    format!("#!/bin/sh\n# Managed by minerctl.\nhostname {name}\n")
}

/// Creates `/dev/char/<major>:<minor>` links for every NVIDIA device node (containerd and
/// the device plugin look devices up there) and opens the nodes to containers. With
/// `--check` it only reports (exit 1) whether anything is missing.
pub fn nvidia_dev_links_script() -> String {
    r#"#!/bin/sh
# Managed by minerctl.
missing=0
for dev in /dev/nvidia*; do
  [ -c "$dev" ] || continue
  link="/dev/char/$(stat -c '%Hr:%Lr' "$dev")"
  mode=$(stat -c '%a' "$dev")
  if [ "$1" = "--check" ]; then
    [ "$(readlink "$link")" = "$dev" ] && [ "$mode" = 666 ] || missing=1
  else
    chmod 0666 "$dev"
    mkdir -p /dev/char
    ln -sfn "$dev" "$link"
  fi
done
exit $missing
"#
    .into()
}
