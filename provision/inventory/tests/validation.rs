#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! One test per class of inventory mistake: each asserts the message names the file, the
//! line and column, and the host; and that every problem is listed, not just the first.

use std::path::Path;

use provision_inventory::{InventoryError, parse_str};

const GOOD: &str = r#"vars:
  user: chutes
  login_user: root
  ssh_keys:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBexampleexampleexampleexampleexample ops@laptop
  validator: 5Dt7HZ7Zpw4DppPxFM7Ke3Cm7sDAWhsZXmM5ZAmE7dSVJbcQ
hosts:
  cpu-0:
    address: 10.0.0.1
    external_ip: 1.2.3.4
    wireguard_ip: 192.168.0.1
    is_primary: true
    gpu_enabled: false
  gpu-0:
    address: gpu0.example.com
    external_ip: 1.2.3.5
    wireguard_ip: 192.168.0.3
    hourly_cost: 2.5
    gpu_short_ref: h100
    ssh:
      port: 2222
      jump: admin@bastion.example.com:22
"#;

fn errors(text: &str) -> String {
    match parse_str(text, Path::new("inv.yml")) {
        Ok(_) => panic!("inventory was accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn good_inventory_parses_with_defaults_and_overrides() {
    let inv = parse_str(GOOD, Path::new("inv.yml")).unwrap();
    assert_eq!(inv.hosts.len(), 2);
    assert_eq!(inv.primary().name, "cpu-0");
    let gpu = inv.host("gpu-0").unwrap();
    assert!(gpu.gpu_enabled);
    assert_eq!(gpu.ssh_port(), 2222);
    assert_eq!(gpu.ssh_user(&inv.vars), "root");
    let jump = gpu.ssh.jump.as_ref().unwrap();
    assert_eq!(
        (jump.user.as_deref(), jump.host.as_str(), jump.port),
        (Some("admin"), "bastion.example.com", 22)
    );
    assert_eq!(inv.vars.registry_port, 30500);
    assert_eq!(inv.vars.microk8s_channel, "1.31/stable");
    assert_eq!(inv.limit("gpu").unwrap(), vec!["gpu-0"]);
    assert_eq!(inv.limit("cpu-0,gpu").unwrap(), vec!["cpu-0", "gpu-0"]);
    assert!(inv.limit("nope").unwrap_err().contains("`nope`"));
}

#[test]
fn example_inventory_in_repo_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../inventory.example.yml");
    let inv = provision_inventory::load(&path).unwrap();
    assert_eq!(inv.hosts.iter().filter(|h| h.is_primary).count(), 1);
}

#[test]
fn yaml_syntax_error_names_line_and_column() {
    let msg = errors("hosts:\n  a: [1, 2\n");
    assert!(msg.starts_with("inv.yml:3:1: YAML syntax error"), "{msg}");
}

#[test]
fn unknown_key_is_rejected_with_suggestion_and_position() {
    let text =
        GOOD.replace("    gpu_short_ref: h100\n", "    gpu_short_ref: h100\n    wireguard_Ip: 192.168.0.9\n");
    let msg = errors(&text);
    assert!(msg.contains("inv.yml:20:5: host `gpu-0`: unknown key `wireguard_Ip` in this host"), "{msg}");
    assert!(msg.contains("did you mean `wireguard_ip`?"), "{msg}");
    // Unknown keys in vars and in ssh blocks too.
    let msg = errors(&GOOD.replace("  user: chutes\n", "  usr: chutes\n"));
    assert!(msg.contains("inv.yml:2:3: unknown key `usr` in `vars` (did you mean `user`?)"), "{msg}");
    let msg = errors(&GOOD.replace("      port: 2222\n", "      prot: 2222\n"));
    assert!(msg.contains("inv.yml:21:7: host `gpu-0`: unknown key `prot`"), "{msg}");
}

#[test]
fn no_primary_and_two_primaries_are_rejected() {
    let msg = errors(&GOOD.replace("    is_primary: true\n", ""));
    assert!(
        msg.contains("inv.yml:8:3: host `cpu-0`: no host has `is_primary: true`")
            || msg.contains("inv.yml:8:3: no host"),
        "{msg}"
    );
    let msg = errors(&GOOD.replace("    hourly_cost: 2.5\n", "    hourly_cost: 2.5\n    is_primary: true\n"));
    assert!(
        msg.contains("inv.yml:14:3: host `gpu-0`: more than one primary: cpu-0 (line 8), gpu-0 (line 14)"),
        "{msg}"
    );
}

#[test]
fn duplicate_host_names_wireguard_and_external_ips_are_rejected() {
    let dup_name = format!(
        "{GOOD}  cpu-0:\n    address: 10.0.0.9\n    external_ip: 1.2.3.9\n    wireguard_ip: 192.168.0.9\n"
    );
    let msg = errors(&dup_name);
    assert!(msg.contains("inv.yml:23:3: host `cpu-0`: host name is used twice (first at line 8)"), "{msg}");

    let text = GOOD
        .replace("wireguard_ip: 192.168.0.3", "wireguard_ip: 192.168.0.1")
        .replace("external_ip: 1.2.3.5", "external_ip: 1.2.3.4");
    let msg = errors(&text);
    // Both problems at once, each with its own place.
    assert!(msg.contains("has 2 problem(s)"), "{msg}");
    assert!(
        msg.contains(
            "inv.yml:16:18: host `gpu-0`: external_ip 1.2.3.4 is also used by host `cpu-0` (line 10)"
        ),
        "{msg}"
    );
    assert!(
        msg.contains(
            "inv.yml:17:19: host `gpu-0`: wireguard_ip 192.168.0.1 is also used by host `cpu-0` (line 11)"
        ),
        "{msg}"
    );
}

#[test]
fn malformed_ips_and_wireguard_ip_outside_subnet_are_rejected() {
    let text = GOOD
        .replace("external_ip: 1.2.3.5", "external_ip: 1.2.3.500")
        .replace("wireguard_ip: 192.168.0.3", "wireguard_ip: 10.9.0.3")
        .replace("address: 10.0.0.1", "address: 10.0.0.256");
    let msg = errors(&text);
    assert!(msg.contains("has 3 problem(s)"), "{msg}");
    assert!(
        msg.contains(
            "inv.yml:9:14: host `cpu-0`: address `10.0.0.256` is neither an IP address nor a DNS name"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("inv.yml:16:18: host `gpu-0`: external_ip `1.2.3.500` is not an IP address"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "inv.yml:17:19: host `gpu-0`: wireguard_ip 10.9.0.3 is outside the mesh subnet 192.168.0.0/20"
        ),
        "{msg}"
    );
    // A custom subnet moves the rule with it.
    let custom = GOOD.replace("hosts:\n", "  wireguard_subnet: 10.200.0.0/24\nhosts:\n");
    let msg = errors(&custom);
    assert!(msg.contains("wireguard_ip 192.168.0.1 is outside the mesh subnet 10.200.0.0/24"), "{msg}");
}

#[test]
fn missing_required_fields_and_wrong_types_are_all_listed() {
    let text = GOOD
        .replace("    external_ip: 1.2.3.5\n", "")
        .replace("gpu_enabled: false", "gpu_enabled: nope")
        .replace("registry_port: 30500", "")
        .replace("  user: chutes\n", "  user: chutes\n  registry_port: 80\n");
    let msg = errors(&text);
    assert!(
        msg.contains("inv.yml:3:18: registry_port 80 is outside the NodePort range 30000-32767"),
        "{msg}"
    );
    assert!(
        msg.contains("inv.yml:14:18: host `cpu-0`: `gpu_enabled` must be true or false, found `nope`"),
        "{msg}"
    );
    assert!(msg.contains("inv.yml:15:3: host `gpu-0`: missing `external_ip`"), "{msg}");
}

#[test]
fn bad_ssh_settings_are_rejected() {
    let text = GOOD
        .replace("jump: admin@bastion.example.com:22", "jump: admin@:x")
        .replace("      port: 2222\n", "      port: 70000\n      host_key: not-a-key\n");
    let msg = errors(&text);
    assert!(
        msg.contains(
            "inv.yml:21:13: host `gpu-0`: `ssh.port` must be a port number (1-65535), found `70000`"
        ),
        "{msg}"
    );
    assert!(msg.contains("inv.yml:22:17: host `gpu-0`: ssh.host_key must be"), "{msg}");
    assert!(msg.contains("inv.yml:23:13: host `gpu-0`: ssh.jump `admin@:x` is not of the form"), "{msg}");
}

#[test]
fn pinned_host_key_that_is_not_a_public_key_is_reported_with_its_place() {
    // Shaped like a key (algorithm, base64), but the blob is not an ed25519 key: before, only
    // connecting found out, and no line or column was named.
    let text = GOOD.replace(
        "      port: 2222\n",
        "      port: 2222\n      host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBexampleexample\n",
    );
    let msg = errors(&text);
    assert!(msg.contains("inv.yml:22:17: host `gpu-0`: ssh.host_key is not a valid public key"), "{msg}");
    // A real key passes.
    let good = GOOD.replace(
        "      port: 2222\n",
        "      port: 2222\n      host_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti\n",
    );
    let inv = parse_str(&good, Path::new("inv.yml")).unwrap();
    assert!(inv.host("gpu-0").unwrap().ssh.host_key.is_some());
}

#[test]
fn bad_host_name_and_bad_ssh_key_and_hourly_cost_zero() {
    let text = GOOD
        .replace("  gpu-0:\n", "  GPU_0:\n")
        .replace("ssh-ed25519 AAAAC3", "ssh-rsa")
        .replace("hourly_cost: 2.5", "hourly_cost: 0");
    let msg = errors(&text);
    assert!(msg.contains("inv.yml:5:7: ssh_keys[0] is not an SSH public key"), "{msg}");
    assert!(msg.contains("inv.yml:14:3: host `GPU_0`: host names become hostnames"), "{msg}");
    assert!(msg.contains("inv.yml:18:18: host `GPU_0`: hourly_cost must be greater than 0"), "{msg}");
}

#[test]
fn groups_must_name_known_hosts() {
    let msg = errors(&format!("groups:\n  rack1: [cpu-0, gpu-9]\n  gpu: [gpu-0]\n{GOOD}"));
    assert!(msg.contains("inv.yml:2:10: group `rack1` names unknown host `gpu-9`"), "{msg}");
    assert!(msg.contains("inv.yml:3:3: group `gpu` clashes with a built-in group"), "{msg}");
}

#[test]
fn problems_in_one_host_do_not_hide_cross_host_problems() {
    let text = GOOD
        .replace("external_ip: 1.2.3.5", "external_ip: 1.2.3.4")
        .replace("    gpu_short_ref: h100\n", "    gpu_short_ref: h100\n    is_primray: true\n");
    let msg = errors(&text);
    assert!(msg.contains("has 2 problem(s)"), "{msg}");
    assert!(
        msg.contains("unknown key `is_primray`") && msg.contains("external_ip 1.2.3.4 is also used"),
        "{msg}"
    );
}

#[test]
fn error_value_exposes_structured_problems() {
    let err = parse_str("hosts: {}\n", Path::new("x.yml")).unwrap_err();
    assert!(matches!(err, InventoryError::Invalid { .. }));
    let problems = err.problems();
    assert_eq!(problems.len(), 1);
    assert_eq!((problems[0].pos.line, problems[0].pos.col), (1, 8));
}

#[test]
fn two_hosts_with_the_same_ssh_target_are_rejected() {
    let third = |address: &str, ssh: &str| {
        format!(
            "{GOOD}  gpu-1:\n    address: {address}\n    external_ip: 1.2.3.6\n    wireguard_ip: 192.168.0.4\n{ssh}"
        )
    };
    // Same address and (default) port as cpu-0: gpu-1's lane would reconfigure cpu-0's machine.
    let msg = errors(&third("10.0.0.1", ""));
    assert!(
        msg.contains(
            "inv.yml:24:14: host `gpu-1`: SSH target 10.0.0.1:22 is also used by host `cpu-0` (line 9)"
        ),
        "{msg}"
    );
    // Behind the same jump host (whoever logs in there), a DNS name in other letter case.
    let msg = errors(&third(
        "GPU0.example.com",
        "    ssh:\n      port: 2222\n      jump: ops@bastion.example.com\n",
    ));
    assert!(
        msg.contains(
            "inv.yml:24:14: host `gpu-1`: SSH target GPU0.example.com:2222 via bastion.example.com:22 \
             is also used by host `gpu-0` (line 15)"
        ),
        "{msg}"
    );
    // Another port, or the same address behind another jump host, is another machine.
    parse_str(&third("10.0.0.1", "    ssh:\n      port: 2200\n"), Path::new("inv.yml")).unwrap();
    parse_str(
        &third("gpu0.example.com", "    ssh:\n      port: 2222\n      jump: bastion2.example.com\n"),
        Path::new("inv.yml"),
    )
    .unwrap();
}

#[test]
fn an_ipv6_external_ip_is_rejected() {
    // It becomes the label value chutes/external-ip (no ':' allowed) and the validator's URL.
    let msg = errors(&GOOD.replace("external_ip: 1.2.3.5", "external_ip: 2001:db8::5"));
    assert!(
        msg.contains("inv.yml:16:18: host `gpu-0`: external_ip 2001:db8::5 is not an IPv4 address"),
        "{msg}"
    );
}

#[test]
fn versions_with_shell_metacharacters_are_rejected() {
    // They become package names in root shell commands.
    let text = GOOD.replace(
        "  user: chutes\n",
        "  user: chutes\n  cuda_version: \"13-0;id\"\n  nvidia_version: 580 $(id)\n",
    );
    let msg = errors(&text);
    assert!(msg.contains("has 2 problem(s)"), "{msg}");
    assert!(msg.contains("inv.yml:3:17: cuda_version `13-0;id` may only contain"), "{msg}");
    assert!(msg.contains("inv.yml:4:19: nvidia_version `580 $(id)` may only contain"), "{msg}");
    // Versions as NVIDIA's packages spell them pass.
    let good = GOOD.replace(
        "  user: chutes\n",
        "  user: chutes\n  cuda_version: \"12-6\"\n  nvidia_version: 575.57.08\n",
    );
    let inv = parse_str(&good, Path::new("inv.yml")).unwrap();
    assert_eq!((inv.vars.cuda_version.as_str(), inv.vars.nvidia_version.as_str()), ("12-6", "575.57.08"));
}
