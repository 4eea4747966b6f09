//! Lab hosts behave like separate machines reachable over SSH, and leave nothing
//! behind. These tests need root (namespaces, mounts, port 22).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;

use test_harness::lab::{Lab, LabError, LabHost};

/// An `ssh` command from this machine to `host`, pinning `known_hosts_line` as its
/// host key (kept in the returned temp dir).
fn ssh_command(
    host: &LabHost,
    known_hosts_line: &str,
    extra: &[&str],
    command: &str,
) -> (tempfile::TempDir, Command) {
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("{known_hosts_line}\n")).unwrap();
    let mut cmd = Command::new("ssh");
    cmd.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "IdentitiesOnly=yes",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
    .arg("-i")
    .arg(host.client_key_path())
    .args(extra)
    .arg(format!("{}@{}", host.ssh_user(), host.addr()))
    .arg(command);
    (dir, cmd)
}

/// Runs `command` on `host` over SSH.
fn ssh(host: &LabHost, known_hosts_line: &str, extra: &[&str], command: &str) -> std::process::Output {
    let (_dir, mut cmd) = ssh_command(host, known_hosts_line, extra, command);
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn hosts_have_their_own_names_addresses_and_files() {
    let lab = Lab::start(3).unwrap();
    let [a, b, c] = [&lab[0], &lab[1], &lab[2]];

    let names: HashSet<String> =
        lab.hosts().iter().map(|h| h.sh("hostname").unwrap().trim().to_string()).collect();
    assert_eq!(names, HashSet::from(["lab-1".to_string(), "lab-2".into(), "lab-3".into()]));
    for h in lab.hosts() {
        assert_eq!(h.sh("hostname").unwrap().trim(), h.name());
        assert_eq!(h.read_to_string("/etc/hostname").unwrap().trim(), h.name());
    }
    let addrs: HashSet<_> = lab.hosts().iter().map(|h| h.addr()).collect();
    assert_eq!(addrs.len(), 3);
    let machine_hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(!names.contains(machine_hostname.trim()), "the machine kept its own host name");

    // A file written on one host is seen neither on the others nor on the machine.
    let path = format!("/root/lab-isolation-{}", std::process::id());
    a.sh(&format!("echo written-on-a > {path}")).unwrap();
    assert_eq!(a.read_to_string(&path).unwrap(), "written-on-a\n");
    for other in [b, c] {
        let err = other.read_file(&path).unwrap_err();
        assert!(matches!(err, LabError::Command { .. }), "{err}");
    }
    assert!(!Path::new(&path).exists(), "the machine must not see {path}");

    // Changing a file the machine has (copy-on-write) leaves the machine's copy alone.
    let machine_motd = std::fs::read("/etc/debian_version").unwrap();
    b.write_file("/etc/debian_version", "changed on b\n").unwrap();
    assert_eq!(b.read_to_string("/etc/debian_version").unwrap(), "changed on b\n");
    assert_eq!(c.read_file("/etc/debian_version").unwrap(), machine_motd);
    assert_eq!(std::fs::read("/etc/debian_version").unwrap(), machine_motd);

    // Processes of one host are invisible to the others.
    a.sh("setsid sleep 600 </dev/null >/dev/null 2>&1 &").unwrap();
    assert!(a.sh("pgrep -x sleep").is_ok());
    assert!(b.sh("pgrep -x sleep").is_err(), "b sees a's process");
}

#[test]
fn root_logs_in_over_ssh_with_the_client_key_only() {
    let lab = Lab::start_named(&["ssh-a", "ssh-b"]).unwrap();
    let (a, b) = (&lab[0], &lab[1]);

    let out = ssh(a, &a.known_hosts_line(), &[], "hostname; id -u");
    assert!(out.status.success(), "ssh failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ssh-a\n0\n");

    // Password (and keyboard-interactive) login is not even offered.
    let out = ssh(
        a,
        &a.known_hosts_line(),
        &["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"],
        "true",
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Permission denied (publickey)"), "{}", text(&out.stderr));

    // Each host has a fresh host key: b's key does not verify a.
    assert_ne!(a.host_public_key(), b.host_public_key());
    let wrong_pin = format!("{} {}", a.addr(), b.host_public_key());
    let out = ssh(a, &wrong_pin, &[], "true");
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("Host key verification failed"), "{}", text(&out.stderr));
}

#[test]
fn sshd_can_be_killed_and_restarted() {
    let host = LabHost::start("sshd-restart").unwrap();
    host.kill_sshd().unwrap();
    let out = ssh(&host, &host.known_hosts_line(), &["-o", "ConnectTimeout=2"], "true");
    assert!(!out.status.success(), "ssh worked with sshd killed");
    host.start_sshd().unwrap();
    let out = ssh(&host, &host.known_hosts_line(), &[], "hostname");
    assert_eq!(text(&out.stdout), "sshd-restart\n", "{}", text(&out.stderr));
}

#[test]
fn apt_get_installs_a_package_inside_one_host_only() {
    let lab = Lab::start_named(&["apt-a", "apt-b"]).unwrap();
    let (a, b) = (&lab[0], &lab[1]);
    assert!(b.sh("dpkg -s hello").is_err(), "hello is already installed on this machine");
    let install = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends hello";
    let out = a.exec(install).unwrap();
    if !out.status.success() {
        // Package lists may be missing on a fresh machine.
        a.sh("apt-get update -q").unwrap();
        a.sh(install).unwrap();
    }
    assert_eq!(a.sh("hello").unwrap(), "Hello, world!\n");
    assert!(b.sh("command -v hello").is_err(), "b sees a's package");
    assert!(!Path::new("/usr/bin/hello").exists(), "the machine sees a's package");
}

/// Everything that identifies a running lab host on this machine.
struct Traces {
    init_pid: u32,
    pid_ns: std::path::PathBuf,
    mnt_ns: std::path::PathBuf,
    ssh_addr: SocketAddr,
    slot_lock: std::path::PathBuf,
}

impl Traces {
    fn of(host: &LabHost) -> Traces {
        let ns = |kind: &str| std::fs::read_link(format!("/proc/{}/ns/{kind}", host.init_pid())).unwrap();
        let last_octet = match host.addr() {
            std::net::IpAddr::V4(v4) => v4.octets()[3],
            std::net::IpAddr::V6(_) => unreachable!(),
        };
        Traces {
            init_pid: host.init_pid(),
            pid_ns: ns("pid"),
            mnt_ns: ns("mnt"),
            ssh_addr: host.ssh_addr(),
            slot_lock: test_harness::lab::state_dir().unwrap().join(format!("slot-{last_octet}.lock")),
        }
    }

    fn assert_live(&self) {
        assert!(processes_in(&self.pid_ns) >= 2, "init and sshd run in the host");
        assert!(self.slot_lock.exists());
    }

    fn assert_gone(&self) {
        assert_eq!(processes_in(&self.pid_ns), 0, "processes of the lab host survive");
        assert_eq!(processes_with_ns("mnt", &self.mnt_ns), 0, "its mount namespace survives");
        assert!(!Path::new(&format!("/proc/{}", self.init_pid)).exists(), "its init survives");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mountinfo.contains("lab-root") && !mountinfo.contains("lab-layers"), "{mountinfo}");
        assert!(TcpListener::bind(self.ssh_addr).is_ok(), "something still listens on {}", self.ssh_addr);
        assert!(!self.slot_lock.exists(), "{} is left behind", self.slot_lock.display());
    }
}

fn processes_with_ns(kind: &str, ns: &Path) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter(|e| std::fs::read_link(e.path().join("ns").join(kind)).is_ok_and(|l| l == ns))
        .count()
}

fn processes_in(pid_ns: &Path) -> usize {
    processes_with_ns("pid", pid_ns)
}

#[test]
fn dropping_a_host_leaves_no_processes_mounts_or_files() {
    let host = LabHost::start("teardown").unwrap();
    // A daemon, a long command in flight and an SSH session, all inside.
    host.sh("setsid sleep 600 </dev/null >/dev/null 2>&1 &").unwrap();
    let (_dir, mut session) = ssh_command(&host, &host.known_hosts_line(), &[], "sleep 600");
    let mut session = session.stderr(std::process::Stdio::null()).spawn().unwrap();
    let traces = Traces::of(&host);
    traces.assert_live();
    drop(host);
    traces.assert_gone();
    // The SSH session ended with its host.
    let status = session.wait().unwrap();
    assert!(!status.success());
}

#[test]
fn a_panicking_test_tears_its_hosts_down_too() {
    let traces = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::start_named(&["panic-a", "panic-b", "panic-c"]).unwrap();
        traces.lock().unwrap().extend(lab.hosts().iter().map(Traces::of));
        panic!("test failed while the lab was up");
    });
    assert!(result.is_err());
    let traces = traces.into_inner().unwrap();
    assert_eq!(traces.len(), 3);
    for t in &traces {
        t.assert_gone();
    }
}

#[test]
fn bad_host_names_are_refused_before_anything_starts() {
    for name in ["", "-lead", "has space", "under_score", &"x".repeat(64)] {
        let err = LabHost::start(name).unwrap_err();
        assert!(matches!(err, LabError::BadName { .. }), "{name:?}: {err}");
        assert!(err.to_string().contains("bad host name"), "{err}");
    }
    let err = Lab::start_named(&["ok", "not ok"]).unwrap_err();
    assert!(err.to_string().contains("\"not ok\""), "{err}");
}

#[test]
fn relative_paths_are_refused() {
    let host = LabHost::start("paths").unwrap();
    let err = host.write_file("etc/motd", "x").unwrap_err();
    assert!(err.to_string().contains("must be absolute"), "{err}");
}
