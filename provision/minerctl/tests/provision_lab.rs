#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! `minerctl provision` (the real binary) against lab hosts: real sshd, apt-get, files,
//! users and sudoers; the harness's stand-ins (`lab_hosts::lab::Standin`) only for what a
//! lab host cannot run: systemd, snap/microk8s, nvidia tools, iptables, ping.

use std::process::Command;

use lab_hosts::lab::LabHost;

#[path = "support/lab.rs"]
mod lab;
use lab::{Run, Setup};

fn file(h: &LabHost, path: &str) -> String {
    h.read_to_string(path).unwrap_or_else(|e| panic!("{}: {path}: {e}", h.name()))
}

use lab::{assert_same_trace, trace};

const MIRROR: &str = "/var/snap/microk8s/current/args/certs.d/5dt7hz7zpw4dpppxfm7ke3cm7sdawhszxmm5zame7dsvjbcq.localregistry.chutes.ai:30500/hosts.toml";

#[test]
fn converges_then_noop_then_check_shows_drift_then_repairs() {
    let s = Setup::start(3);
    let hosts = s.lab.hosts();
    // A containerd config as docker.io ships it: CRI disabled.
    for h in &hosts[1..] {
        h.write_file("/lib/systemd/system/containerd.service", lab::UNIT).unwrap();
        h.write_file(
            "/etc/containerd/config.toml",
            "disabled_plugins = [\"cri\"]\nroot = \"/var/lib/containerd\"\n",
        )
        .unwrap();
    }

    let first = s.run(&[]);
    first.assert_ok();
    for h in hosts {
        let r = first.recap(h.name());
        assert_eq!((r["failed"].as_u64(), r["unreachable"].as_bool()), (Some(0), Some(false)), "{r}");
        assert!(r["changed"].as_u64().unwrap() > 10, "{r}");
        // Real effects: package, user with key, sudoers, hostname, wireguard keys.
        h.sh("dpkg-query -W -f='${Status}' hello | grep -q 'install ok installed'").unwrap();
        assert!(file(h, "/home/chutes/.ssh/authorized_keys").contains(h.client_public_key()));
        h.sh("visudo -cf /etc/sudoers.d/90-minerctl-chutes").unwrap();
        assert_eq!(h.sh("hostname").unwrap().trim(), h.name());
        assert!(h.sh("stat -c %a /etc/wireguard/private.key").unwrap().trim() == "600");
    }
    // The primary's wg0.conf has each worker's real public key, and no private key.
    let wg = file(&hosts[0], "/etc/wireguard/wg0.conf");
    for h in &hosts[1..] {
        let key = file(h, "/etc/wireguard/public.key");
        assert!(wg.contains(&format!("PublicKey = {}", key.trim())), "{wg}");
    }
    assert!(!wg.contains(file(&hosts[0], "/etc/wireguard/private.key").trim()));
    // The containerd fix really edits the file; nvidia-ctk's runtime stanza stays.
    let containerd = file(&hosts[1], "/etc/containerd/config.toml");
    assert!(
        !containerd.contains("disabled_plugins") && containerd.contains("runtimes.nvidia"),
        "{containerd}"
    );
    // Workers joined with the primary's token; every node is labelled with its external IP.
    assert!(lab::joined(&hosts[2]).unwrap().starts_with("target=192.168.0.1:25000/"));
    assert_eq!(lab::node_label(&hosts[0], "gpu-3", "chutes/external-ip"), "203.0.113.4");
    assert!(file(&hosts[1], "/var/snap/microk8s/current/args/kubelet").contains("--node-ip=192.168.0.2\n"));
    // The control plane's claims have a default StorageClass to bind to.
    assert_eq!(hosts[0].sh("microk8s status -a hostpath-storage").unwrap(), "enabled\n");
    assert_eq!(hosts[1].sh("microk8s status -a hostpath-storage").unwrap(), "disabled\n", "primary only");
    let class = file(&hosts[0], "/var/lib/lab-standins/kube/storageclasses/microk8s-hostpath.json");
    assert!(class.contains(r#""storageclass.kubernetes.io/is-default-class": "true""#), "{class}");
    // The join token never reaches output or the log.
    let log = std::fs::read_to_string(s.dir.path().join("provision.log")).unwrap();
    let tokens = file(&hosts[0], "/var/lib/lab-standins/microk8s/tokens");
    let token = tokens.split_whitespace().next().unwrap();
    assert!(token.len() >= 32 && !log.contains(token) && !first.stdout.contains(token), "{token}");
    // The real iputils-ping that the wireguard role installed never runs: the stand-in comes
    // first for root, for the user, and through sudo's secure_path.
    for h in hosts {
        h.sh("test -x /usr/bin/ping").unwrap();
        assert_eq!(h.sh("command -v ping").unwrap(), "/usr/local/sbin/ping\n");
        assert_eq!(
            h.sh("su -l chutes -c 'sudo -n sh -c \"command -v ping\"'").unwrap(),
            "/usr/local/sbin/ping\n"
        );
        assert_eq!(h.sh("su -l chutes -c 'command -v ping'").unwrap(), "/usr/local/bin/ping\n");
    }
    assert!(!hosts[1].calls("ping").unwrap().is_empty(), "workers ping the primary (through the stand-in)");

    let second = s.run(&[]);
    second.assert_ok();
    assert_eq!(second.changed_steps(), vec![], "a converged cluster must report nothing changed");

    // Someone edits a managed file on one host.
    let edited = "server = \"http://example.invalid\"\n";
    hosts[2].write_file(MIRROR, edited).unwrap();
    let before: Vec<String> = hosts.iter().map(trace).collect();
    let check = s.run(&["--check"]);
    check.assert_ok();
    assert_same_trace(hosts, &before);
    assert_eq!(check.changed_steps(), vec![("gpu-2".to_string(), "registry mirror hosts.toml".to_string())]);
    let ev = check.events.iter().find(|e| e["status"] == "changed").unwrap();
    let diff = ev["diff"].as_str().unwrap();
    assert!(
        diff.contains("-server = \"http://example.invalid\"") && diff.contains("+server = \"http://5dt7"),
        "{diff}"
    );
    assert_eq!(file(&hosts[2], MIRROR), edited, "--check changed the file");

    let repair = s.run(&[]);
    repair.assert_ok();
    assert_eq!(repair.changed_steps(), vec![("gpu-2".to_string(), "registry mirror hosts.toml".to_string())]);
    assert!(file(&hosts[2], MIRROR).contains("capabilities = [\"pull\", \"resolve\"]"));
}

#[test]
fn host_lost_mid_run_is_unreachable_others_finish_and_rerun_completes() {
    let s = Setup::start(3);
    let victim = &s.lab.hosts()[2];
    // The victim's `snap install` blocks until released, so sshd dies while a step runs.
    lab::hold(victim, "snap-install");
    let child = s.spawn(&[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while !victim.calls("snap").unwrap().iter().any(|c| c.first().map(String::as_str) == Some("install")) {
        assert!(std::time::Instant::now() < deadline, "the victim never reached snap install");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A second operator meanwhile: the victim is locked by the first run; the run says by whom.
    let second = s.run(&["--limit", victim.name(), "--tags", "base"]);
    assert_eq!(second.code, Some(2), "{}", second.stdout);
    let err = second.recap(victim.name())["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("another minerctl run holds the host lock") && err.contains("minerctl run by"),
        "{err}"
    );

    victim.kill_sshd().unwrap();
    let run = Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    let r = run.recap(victim.name());
    assert_eq!(r["unreachable"], true, "{r}");
    for h in ["cpu-0", "gpu-1", "gpu-3"] {
        let r = run.recap(h);
        assert_eq!((r["failed"].as_u64(), r["unreachable"].as_bool()), (Some(0), Some(false)), "{h}: {r}");
    }

    lab::release(victim, "snap-install");
    victim.start_sshd().unwrap();
    let rerun = s.run(&[]);
    rerun.assert_ok();
    assert!(lab::joined(victim).is_some());
}

#[test]
fn wrong_host_key_is_refused_before_any_command() {
    let s = Setup::start(1);
    let other = Setup::start(0);
    // known_hosts claims cpu-0 has the key of another host.
    let wrong = format!("{} {}", s.lab.hosts()[0].addr(), other.lab.hosts()[0].host_public_key());
    s.write_known_hosts(|h| if h.name() == "cpu-0" { wrong.clone() } else { h.known_hosts_line() });
    let run = s.run(&["--accept-new", "--limit", "cpu-0"]);
    assert_eq!(run.code, Some(2));
    let r = run.recap("cpu-0");
    let err = r["error"].as_str().unwrap();
    assert!(err.contains("HOST KEY MISMATCH"), "{err}");
    let fp = |k: &str| {
        let f = s.dir.path().join("key.pub");
        std::fs::write(&f, k).unwrap();
        let out = Command::new("ssh-keygen").arg("-l").arg("-f").arg(&f).output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().nth(1).unwrap().to_string()
    };
    assert!(
        err.contains(&fp(s.lab.hosts()[0].host_public_key()))
            && err.contains(&fp(other.lab.hosts()[0].host_public_key())),
        "{err}"
    );
    // Nothing ran there: no stand-in was called, no file was written.
    assert_eq!(s.lab.hosts()[0].all_calls().unwrap(), vec![]);
    assert!(s.lab.hosts()[0].sh("test -e /etc/wireguard && echo yes || echo no").unwrap().trim() == "no");
}

#[test]
fn bad_inventory_is_rejected_before_connecting_with_every_place_named() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.yml");
    std::fs::write(
        &inv,
        "hosts:\n  a:\n    address: 127.0.1.250\n    external_ip: 1.1.1.1\n    wireguard_ip: 192.168.0.1\n  \
         b:\n    address: 127.0.1.251\n    external_ip: 1.1.1.1\n    wireguard_ip: 192.168.99.1\n    is_primary: yes\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_minerctl")).args(["provision", "-i"]).arg(&inv).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let f = inv.display();
    assert!(
        err.contains(&format!("{f}:8:18: host `b`: external_ip 1.1.1.1 is also used by host `a` (line 4)")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:9:19: host `b`: wireguard_ip 192.168.99.1 is outside the mesh subnet")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:10:17: host `b`: `is_primary` must be true or false, found `yes`")),
        "{err}"
    );
    assert!(err.contains("no host has `is_primary: true`"), "{err}");

    // `minerctl provision FILE`, as the README writes it, reads the same file.
    let positional =
        Command::new(env!("CARGO_BIN_EXE_minerctl")).arg("provision").arg(&inv).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&positional.stderr), err);
}

#[test]
fn sudo_that_wants_a_password_fails_fast_with_a_clear_message() {
    let s = Setup::start(0);
    let h = &s.lab.hosts()[0];
    // A login user whose sudo asks for a password (real sudo, real sudoers).
    h.sh(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q sudo >/dev/null && useradd -m -s /bin/sh ops && usermod -p '*' ops \
         && install -d -m 700 -o ops -g ops /home/ops/.ssh && echo '{}' > /home/ops/.ssh/authorized_keys \
         && chown ops:ops /home/ops/.ssh/authorized_keys && echo 'ops ALL=(ALL) ALL' > /etc/sudoers.d/ops && chmod 440 /etc/sudoers.d/ops",
        h.client_public_key()
    ))
    .unwrap();
    let inv = std::fs::read_to_string(s.inventory()).unwrap().replace("login_user: root", "login_user: ops");
    std::fs::write(s.inventory(), inv).unwrap();
    let run = s.run(&[]);
    assert_eq!(run.code, Some(2), "{}", run.stdout);
    let err = run.recap("cpu-0")["error"].as_str().unwrap().to_string();
    assert!(err.contains("`sudo -n` as `ops` needs a password") && err.contains("NOPASSWD"), "{err}");
    assert_eq!(h.sh("test -e /etc/wireguard && echo yes || echo no").unwrap().trim(), "no");
}

#[test]
fn check_on_fresh_hosts_reports_the_plan_and_changes_nothing() {
    let s = Setup::start(1);
    let before: Vec<String> = s.lab.hosts().iter().map(trace).collect();
    let run = s.run(&["--check"]);
    run.assert_ok();
    let changed = run.changed_steps();
    for step in ["packages", "user chutes", "key pair", "wg0.conf", "microk8s snap", "join cluster"] {
        assert!(changed.iter().any(|(_, st)| st == step), "{step} missing from the plan: {changed:?}");
    }
    // The public key a fresh host does not have yet is reported, not a failure.
    assert!(run.events.iter().any(|e| e["step"] == "read public key" && e["status"] == "skipped"));
    assert_same_trace(s.lab.hosts(), &before);
    for h in s.lab.hosts() {
        assert!(
            h.exec("dpkg-query -W -f='${Status}' hello 2>/dev/null | grep -q installed")
                .unwrap()
                .status
                .code()
                != Some(0)
        );
        // Only read-only stand-in calls (probes): nothing enabled, installed, joined or labelled.
        for c in h.all_calls().unwrap() {
            let l = format!("{} {}", c.program, c.args.join(" "));
            assert!(
                l.starts_with("systemctl is-")
                    || l.starts_with("systemctl show")
                    || l.starts_with("snap list")
                    || l.starts_with("snap get")
                    || l.starts_with("microk8s status")
                    || l.starts_with("ping")
                    || l.starts_with("nvidia-smi")
                    || l.starts_with("systemd-detect-virt")
                    || l.starts_with("iptables -C")
                    || l.starts_with("microk8s kubectl get"),
                "{}: --check ran a changing command: {l}",
                h.name()
            );
        }
    }
}

#[test]
fn adding_a_node_is_one_more_run_without_limit() {
    let s = Setup::start(2);
    let full = std::fs::read_to_string(s.inventory()).unwrap();
    let cut = full.find("  gpu-2:\n").unwrap();
    std::fs::write(s.inventory(), &full[..cut]).unwrap();
    s.run(&[]).assert_ok();

    // The operator adds gpu-2 to the inventory and runs again, without --limit.
    std::fs::write(s.inventory(), &full).unwrap();
    let run = s.run(&[]);
    run.assert_ok();
    let changed = run.changed_steps();
    assert!(
        changed.iter().all(|(h, _)| h == "gpu-2" || h == "cpu-0"),
        "gpu-1 must stay untouched: {changed:?}"
    );
    assert!(changed.contains(&("cpu-0".into(), "wg0.conf".into())), "{changed:?}");
    assert!(changed.contains(&("cpu-0".into(), "restart wg0".into())), "{changed:?}");
    assert!(changed.contains(&("cpu-0".into(), "gpu-2 external-ip label".into())), "{changed:?}");
    assert!(changed.contains(&("gpu-2".into(), "join cluster".into())), "{changed:?}");
    let hosts = s.lab.hosts();
    let wg = file(&hosts[0], "/etc/wireguard/wg0.conf");
    assert!(wg.contains(file(&hosts[2], "/etc/wireguard/public.key").trim()), "{wg}");
    // A new join token was minted only because a worker had not joined yet.
    assert!(run.events.iter().any(|e| e["step"] == "join token" && e["status"] == "ok"));
}

/// The GPU layer (microk8s' nvidia addon with the host's driver, metrics-server) on the
/// primary, and its verification: a GPU node that the operator found no GPU on fails the
/// run naming it and what it lacks; once it has its GPU, the run passes, and a rerun enables
/// nothing again.
#[test]
fn gpu_layer_is_installed_on_the_primary_and_a_node_without_gpus_fails_by_name() {
    let s = Setup::start(1);
    let (primary, gpu) = (&s.lab.hosts()[0], &s.lab.hosts()[1]);
    // The operator will find no GPU on gpu-1 (its Node carries none).
    primary.set_kube_node("gpu-1", &[], true).unwrap();

    let check = s.run(&["--check"]);
    check.assert_ok();
    let planned = check.changed_steps();
    for step in ["nvidia addon", "metrics-server addon"] {
        assert!(planned.contains(&("cpu-0".to_string(), step.to_string())), "{planned:?}");
    }
    assert_eq!(primary.sh("microk8s status -a nvidia 2>/dev/null || echo absent").unwrap(), "absent\n");

    let run = s.run(&[]);
    assert_eq!(run.code, Some(2), "{}", run.stdout);
    let err = run.recap("cpu-0")["error"].as_str().unwrap().to_string();
    assert!(
        err.contains(
            "the GPU layer is incomplete: gpu-1 lacks nvidia.com/gpu capacity and labels nvidia.com/gpu.present, \
             nvidia.com/gpu.count, nvidia.com/gpu.memory"
        ) && !err.contains("RuntimeClass"),
        "{err}"
    );
    assert_eq!(primary.sh("microk8s status -a nvidia").unwrap(), "enabled\n");
    assert_eq!(primary.sh("microk8s status -a metrics-server").unwrap(), "enabled\n");
    assert!(lab::joined(gpu).is_some(), "everything before the verify was done");

    // The node's GPU is found: the verify passes, the addons are not enabled again.
    primary.set_kube_node("gpu-1", &[lab_hosts::lab::Gpu::h100()], true).unwrap();
    let run = s.run(&[]);
    run.assert_ok();
    // (Registering the node again dropped its external-ip label, which is set again.)
    assert_eq!(run.changed_steps(), vec![("cpu-0".to_string(), "gpu-1 external-ip label".to_string())]);
    assert_eq!(lab::node_label(primary, "gpu-1", "nvidia.com/gpu.memory"), "81559");
    let enables: Vec<Vec<String>> =
        primary.calls("microk8s").unwrap().into_iter().filter(|c| c[0] == "enable").collect();
    assert_eq!(
        enables,
        vec![
            ["enable", "hostpath-storage"].map(String::from).to_vec(),
            [
                "enable",
                "nvidia",
                "--gpu-operator-driver",
                "host",
                "--gpu-operator-set",
                "operator.runtimeClass=nvidia-container-runtime"
            ]
            .map(String::from)
            .to_vec(),
            ["enable", "metrics-server"].map(String::from).to_vec(),
        ]
    );
}

/// Waits (a hang guard, not a timed assertion) until `h`'s stand-ins recorded a call of
/// `program` whose arguments start with `args`.
fn wait_for_call(h: &LabHost, program: &str, args: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !h
        .calls(program)
        .unwrap()
        .iter()
        .any(|c| c.starts_with(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>()))
    {
        assert!(std::time::Instant::now() < deadline, "{}: no `{program} {}` call", h.name(), args.join(" "));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn refreshed(h: &LabHost) -> bool {
    h.calls("snap").unwrap().iter().any(|c| c.first().map(String::as_str) == Some("refresh"))
}

/// A new `microk8s_channel`: `--check` shows the refresh of every host and changes nothing;
/// the next run refreshes microk8s one host at a time, the primary first, each ready again
/// before the next starts; a third run changes nothing.
#[test]
fn a_new_microk8s_channel_refreshes_one_host_at_a_time() {
    let s = Setup::start(2);
    s.run(&[]).assert_ok();
    let hosts = s.lab.hosts();
    lab::set_var(&s, "microk8s_channel", "1.32/stable");

    let before: Vec<String> = hosts.iter().map(trace).collect();
    let check = s.run(&["--check"]);
    check.assert_ok();
    assert_same_trace(hosts, &before);
    assert_eq!(
        check.changed_steps(),
        ["cpu-0", "gpu-1", "gpu-2"]
            .map(|h| (h.to_string(), "snap refresh microk8s 1.31/stable -> 1.32/stable".to_string()))
            .to_vec()
    );
    assert!(hosts.iter().all(|h| !refreshed(h)));

    // Every host's refresh waits on its stand-in until the test lets it go: while one host is
    // in the middle of its refresh, the hosts after it have not started, the ones before it
    // are refreshed and were waited for.
    for h in hosts {
        lab::hold(h, "snap-refresh");
    }
    let child = s.spawn(&[]);
    for (i, h) in hosts.iter().enumerate() {
        wait_for_call(h, "snap", &["refresh", "microk8s", "--channel=1.32/stable"]);
        for later in &hosts[i + 1..] {
            assert!(!refreshed(later), "{} started while {} was refreshing", later.name(), h.name());
        }
        for done in &hosts[..i] {
            let calls = done.calls("microk8s").unwrap();
            assert!(
                calls
                    .last()
                    .is_some_and(|c| c.starts_with(&["status".to_string(), "--wait-ready".to_string()])),
                "{} was not waited for: {calls:?}",
                done.name()
            );
        }
        lab::release(h, "snap-refresh");
    }
    let run = Run::from(child.wait_with_output().unwrap());
    run.assert_ok();
    for h in hosts {
        assert!(file(h, "/var/lib/lab-standins/snaps/microk8s").contains("channel=1.32/stable\n"));
        assert_eq!(h.calls("snap").unwrap().iter().filter(|c| c[0] == "refresh").count(), 1);
    }
    let third = s.run(&[]);
    third.assert_ok();
    assert_eq!(third.changed_steps(), vec![], "a refreshed cluster must report nothing changed");
}

/// New driver and CUDA versions on 3 GPU hosts whose second host does not come back from its
/// reboot: `--check` (with a new microk8s channel too) shows both changes and changes nothing;
/// the run upgrades gpu-1 (purge, reinstall, runtimes, reboot), fails gpu-2 naming it, and
/// leaves gpu-3 as it was, saying why.
#[test]
fn a_rolling_driver_upgrade_stops_at_a_host_that_does_not_come_back() {
    let s = Setup::start(3);
    let hosts = s.lab.hosts();
    let gpus = &hosts[1..];
    for h in gpus {
        lab::cuda_repo(h, &[("12-6", "570"), ("13-0", "580")]);
    }
    lab::set_var(&s, "skip_cuda", "false");
    lab::set_var(&s, "cuda_version", "'12-6'");
    lab::set_var(&s, "nvidia_version", "'570'");
    lab::set_var(&s, "cuda_keyring_url", "file:///opt/lab-cuda/cuda-keyring.deb");
    // Hosts that come back get all the time a busy machine needs; only the run in which
    // gpu-2 stays down waits out a short timeout (below).
    lab::set_var(&s, "reboot_timeout", "120");
    let first = s.run(&[]);
    first.assert_ok();
    for h in gpus {
        assert!(lab::installed(h, "cuda-toolkit-12-6") && lab::installed(h, "nvidia-fabricmanager-570"));
        assert_eq!(h.boot_count().unwrap(), 1, "{}: a first install reboots once", h.name());
    }

    lab::set_var(&s, "cuda_version", "'13-0'");
    lab::set_var(&s, "nvidia_version", "'580'");
    lab::set_var(&s, "microk8s_channel", "1.32/stable");
    let before: Vec<String> = hosts.iter().map(trace).collect();
    let check = s.run(&["--check"]);
    check.assert_ok();
    assert_same_trace(hosts, &before);
    let planned = check.changed_steps();
    for h in hosts {
        let refresh = (h.name().to_string(), "snap refresh microk8s 1.31/stable -> 1.32/stable".to_string());
        assert!(planned.contains(&refresh), "{planned:?}");
    }
    for h in gpus {
        for step in [
            "purge cuda/nvidia packages (cuda-toolkit-12-6, nvidia-fabricmanager-570 installed)",
            "driver and cuda",
            "nvidia runtime for containerd",
            "reboot",
        ] {
            assert!(planned.contains(&(h.name().to_string(), step.to_string())), "{step}: {planned:?}");
        }
    }
    assert!(gpus.iter().all(|h| lab::installed(h, "cuda-toolkit-12-6") && h.boot_count().unwrap() == 1));

    // The upgrade alone (the channel back as it was); gpu-2 will not come back.
    lab::set_var(&s, "microk8s_channel", "1.31/stable");
    gpus[1].set_reboot_returns(false).unwrap();
    lab::set_var(&s, "reboot_timeout", "30");
    let ctk_calls = gpus[2].calls("nvidia-ctk").unwrap().len();
    let run = s.run(&[]);
    assert_eq!(run.code, Some(2), "{}", run.stdout);
    let g1 = &gpus[0];
    assert!(lab::installed(g1, "cuda-toolkit-13-0") && lab::installed(g1, "nvidia-fabricmanager-580"));
    assert!(!lab::installed(g1, "cuda-toolkit-12-6") && !lab::installed(g1, "nvidia-fabricmanager-570"));
    assert_eq!(g1.boot_count().unwrap(), 2);
    assert!(
        g1.calls("nvidia-ctk").unwrap().iter().filter(|c| c[..2] == ["runtime", "configure"]).count() >= 6
    );
    let r1 = run.recap("gpu-1");
    assert_eq!((r1["failed"].as_u64(), r1["unreachable"].as_bool()), (Some(0), Some(false)), "{r1}");

    let e2 = run.recap("gpu-2")["error"].as_str().unwrap().to_string();
    assert!(e2.contains("nvidia upgrade / reboot") && e2.contains("did not come back within 30 s"), "{e2}");
    // Why: SSH itself refused, not a login or a lock.
    assert!(e2.contains("last attempt: gpu-2: cannot connect to"), "{e2}");
    assert_eq!(gpus[1].boot_count().unwrap(), 2, "it went down for the reboot");

    let g3 = &gpus[2];
    let e3 = run.recap("gpu-3")["error"].as_str().unwrap().to_string();
    assert!(e3.contains("nvidia upgrade: not started here") && e3.contains("stopped at gpu-2"), "{e3}");
    assert!(lab::installed(g3, "cuda-toolkit-12-6") && lab::installed(g3, "nvidia-fabricmanager-570"));
    assert!(!lab::installed(g3, "cuda-toolkit-13-0"));
    assert_eq!(g3.boot_count().unwrap(), 1);
    assert_eq!(g3.calls("nvidia-ctk").unwrap().len(), ctk_calls, "gpu-3's runtimes were not touched");
    let r0 = run.recap("cpu-0");
    assert_eq!(r0["failed"].as_u64(), Some(0), "the primary went on: {r0}");
}
