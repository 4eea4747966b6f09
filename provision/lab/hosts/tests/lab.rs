//! Lab hosts behave like separate machines reachable over SSH, and leave nothing
//! behind. These tests need root (namespaces, mounts, the SSH port).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;

use lab_hosts::lab::{Gpu, Lab, LabError, LabHost, Standin};

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
    // The host's port unless the caller names one (ssh keeps the first -p).
    .args(if extra.contains(&"-p") { vec![] } else { vec!["-p".to_owned(), host.port().to_string()] })
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

/// Starts a detached process named `test-daemon` (a copy of sleep) inside `host`.
fn start_daemon(host: &LabHost) {
    host.sh(
        "cp /bin/sleep /usr/local/bin/test-daemon && setsid test-daemon 600 </dev/null >/dev/null 2>&1 &",
    )
    .unwrap();
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
    start_daemon(a);
    assert!(a.sh("pgrep -x test-daemon").is_ok());
    assert!(b.sh("pgrep -x test-daemon").is_err(), "b sees a's process");
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
    let wrong_pin = a.known_hosts_line().replace(a.host_public_key(), b.host_public_key());
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
            slot_lock: lab_hosts::lab::state_dir().unwrap().join(format!("slot-{last_octet}.lock")),
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
    start_daemon(&host);
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

// ---- stand-ins -------------------------------------------------------------------

/// Runs `command` expecting failure; returns (exit code, stdout, stderr).
fn fails(host: &LabHost, command: &str) -> (i32, String, String) {
    let out = host.exec(command).unwrap();
    assert!(!out.status.success(), "`{command}` succeeded: {}", text(&out.stdout));
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

const DEMO_UNIT: &str = "[Unit]\nDescription=demo\n[Service]\nExecStart=/bin/true\n";

#[test]
fn standins_live_in_one_host_record_calls_and_keep_unit_state() {
    let lab = Lab::start_named(&["units-a", "units-b"]).unwrap();
    let (a, b) = (&lab[0], &lab[1]);
    a.install_standins(&Standin::ALL).unwrap();
    a.write_file("/etc/systemd/system/demo.service", DEMO_UNIT).unwrap();
    a.write_file("/etc/systemd/system/other.service", DEMO_UNIT).unwrap();

    assert_eq!(a.sh("command -v systemctl").unwrap(), "/usr/local/sbin/systemctl\n");
    assert_ne!(b.sh("command -v systemctl || true").unwrap(), "/usr/local/sbin/systemctl\n");
    assert!(!Path::new("/usr/local/sbin/systemctl").exists(), "installed on the machine");

    a.sh("systemctl daemon-reload && systemctl enable --now demo").unwrap();
    assert_eq!(a.sh("systemctl is-active demo.service").unwrap(), "active\n");
    assert_eq!(a.sh("systemctl is-enabled demo").unwrap(), "enabled\n");
    a.sh("systemctl start other").unwrap();
    assert_eq!(fails(a, "systemctl is-enabled other"), (1, "disabled\n".into(), String::new()));
    a.sh("systemctl stop demo").unwrap();
    assert_eq!(fails(a, "systemctl is-active demo"), (3, "inactive\n".into(), String::new()));
    assert_eq!(a.sh("systemctl is-enabled demo").unwrap(), "enabled\n", "stop keeps it enabled");

    // Units that do not exist fail as on a real host.
    let (code, _, err) = fails(a, "systemctl enable nosuch");
    assert_eq!(code, 1);
    assert!(err.contains("Unit file nosuch.service does not exist"), "{err}");
    assert_eq!(fails(a, "systemctl start nosuch").0, 5);
    a.sh("systemctl mask demo").unwrap();
    assert!(fails(a, "systemctl start demo").2.contains("masked"));

    assert_eq!(
        a.calls("systemctl").unwrap()[..3],
        [
            vec!["daemon-reload".to_string()],
            vec!["enable".into(), "--now".into(), "demo".into()],
            vec!["is-active".into(), "demo.service".into()]
        ]
    );
    // Arguments survive any characters.
    a.sh("modprobe 'two words' \"$(printf 'tab\\there')\" 'back\\slash'").unwrap();
    assert_eq!(
        a.calls("modprobe").unwrap(),
        [vec!["two words".to_string(), "tab\there".into(), "back\\slash".into()]]
    );
    assert!(b.all_calls().unwrap().is_empty(), "b recorded a's calls");
}

#[test]
fn systemctl_restart_ssh_applies_a_new_sshd_config() {
    let host = LabHost::start("ssh-config").unwrap();
    host.install_standins(&[Standin::Systemctl]).unwrap();
    let line = host.known_hosts_line();
    host.write_file(
        "/etc/ssh/sshd_config.d/10-port.conf",
        format!("Port 2222\nListenAddress {}:2222\n", host.addr()),
    )
    .unwrap();
    assert!(ssh(&host, &line, &["-p", "2222", "-o", "ConnectTimeout=2"], "true").status.code() == Some(255));
    host.sh("systemctl restart ssh").unwrap();
    let pinned = format!("[{}]:2222 {}", host.addr(), host.host_public_key());
    let out = ssh(&host, &pinned, &["-p", "2222"], "hostname");
    assert_eq!(text(&out.stdout), "ssh-config\n", "{}", text(&out.stderr));
    assert_eq!(host.sh("systemctl is-active ssh").unwrap(), "active\n");
}

#[test]
fn microk8s_cluster_forms_across_lab_hosts() {
    let lab = Lab::start_named(&["k8s-primary", "k8s-worker"]).unwrap();
    let (primary, worker) = (&lab[0], &lab[1]);
    for h in lab.hosts() {
        h.install_standins(&Standin::ALL).unwrap();
    }
    assert_eq!(fails(primary, "microk8s status").0, 127, "microk8s exists before its snap");
    assert!(primary.sh("snap list").unwrap().contains("No snaps are installed yet"));

    for h in lab.hosts() {
        let out = h.sh("snap install microk8s --classic --channel=1.31/stable").unwrap();
        assert!(out.contains("microk8s (1.31/stable) v1.31.0"), "{out}");
    }
    let list = primary.sh("snap list microk8s").unwrap();
    assert!(list.contains("1.31/stable") && list.contains("classic"), "{list}");
    assert!(primary.sh("snap install microk8s --classic").unwrap().contains("already installed"));
    assert!(primary.sh("microk8s status --wait-ready").unwrap().starts_with("microk8s is running\n"));
    primary.sh("systemctl restart snap.microk8s.daemon-kubelite").unwrap();
    assert!(primary.sh("getent group microk8s").is_ok(), "the snap creates the microk8s group");
    assert!(primary.sh("test -f /var/snap/microk8s/current/args/kubelet").is_ok());

    let kubeconfig = primary.sh("microk8s config").unwrap();
    assert!(kubeconfig.contains(&format!("server: https://{}:16443", primary.addr())), "{kubeconfig}");

    let add_node = primary.sh("microk8s add-node --token-ttl 600").unwrap();
    let join = add_node
        .lines()
        .find(|l| l.starts_with(&format!("microk8s join {}:25000/", primary.addr())))
        .unwrap_or_else(|| panic!("no join line in {add_node}"));
    worker.sh(&format!("{join} --worker --skip-verify")).unwrap();
    assert!(worker.sh("microk8s status").unwrap().contains("acting as a node in a cluster"));
    let (_, _, err) = fails(worker, &format!("{join} --worker"));
    assert!(err.contains("already joined"), "{err}");
    let token = join.rsplit('/').nth(1).unwrap();
    assert!(
        primary
            .read_to_string("/var/lib/lab-standins/microk8s/tokens")
            .unwrap()
            .contains(&format!("{token} 600"))
    );

    // The primary's API: its own node, plus the worker's as a test registers it (no emulator
    // here, so the worker's kubelet cannot reach the primary's store).
    let (_, _, err) = fails(primary, "microk8s kubectl label node k8s-worker chutes/external-ip=1.2.3.4");
    assert_eq!(err, "Error from server (NotFound): nodes \"k8s-worker\" not found\n");
    primary.set_kube_node("k8s-worker", &[Gpu::h100(), Gpu::h100()], true).unwrap();
    primary.sh("microk8s kubectl label node k8s-worker chutes/external-ip=1.2.3.4").unwrap();
    assert_eq!(primary.calls("microk8s").unwrap().last().unwrap()[..3], ["kubectl", "label", "node"]);
    let (_, _, err) = fails(primary, "microk8s kubectl label node k8s-worker chutes/external-ip=5.6.7.8");
    assert!(
        err.contains("'chutes/external-ip' already has a value (1.2.3.4), and --overwrite is false"),
        "{err}"
    );
    primary.sh("microk8s kubectl label node k8s-worker chutes/external-ip=5.6.7.8 --overwrite").unwrap();
    let states = primary
        .sh(r#"microk8s kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.metadata.labels.chutes/external-ip}{"\n"}{end}'"#)
        .unwrap();
    assert_eq!(states, "k8s-primary True \nk8s-worker True 5.6.7.8\n");

    // The GPU operator: labels and capacity appear once the nvidia addon is enabled, and the
    // RuntimeClass it was told to create exists.
    let gpu_fields = r#"{.status.capacity.nvidia\.com/gpu} {.metadata.labels.nvidia\.com/gpu\.present} {.metadata.labels.nvidia\.com/gpu\.count} {.metadata.labels.nvidia\.com/gpu\.memory}"#;
    assert_eq!(primary.kube_node_field("k8s-worker", gpu_fields).unwrap().unwrap(), "   ");
    assert_eq!(primary.sh("microk8s status -a nvidia").unwrap(), "disabled\n");
    assert_eq!(fails(primary, "microk8s kubectl get runtimeclass nvidia-container-runtime").0, 1);
    primary
        .sh("microk8s enable nvidia --gpu-operator-driver host --gpu-operator-set operator.runtimeClass=nvidia-container-runtime")
        .unwrap();
    assert_eq!(primary.sh("microk8s status -a nvidia").unwrap(), "enabled\n");
    assert_eq!(primary.kube_node_field("k8s-worker", gpu_fields).unwrap().unwrap(), "2 true 2 81559");
    assert_eq!(primary.kube_node_field("k8s-primary", gpu_fields).unwrap().unwrap(), "   ", "no GPU there");
    assert_eq!(
        primary.sh("microk8s kubectl get runtimeclass nvidia-container-runtime -o name").unwrap(),
        "runtimeclass.node.k8s.io/nvidia-container-runtime\n"
    );
    assert_eq!(primary.kube_node_field("nobody", "{.metadata.name}").unwrap(), None);
}

/// The stand-ins come first in every PATH, so a real program that a provisioning run
/// installs (iputils-ping's /usr/bin/ping) is never the one that runs: not for root's
/// login, nor for a user's, nor through su.
#[test]
fn standins_come_before_real_programs_in_every_path() {
    let host = LabHost::start("paths").unwrap();
    host.install_standins(&[Standin::Ping]).unwrap();
    // A "real" ping in every system directory, which would say so if it ran.
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        host.sh(&format!(
            "[ -L {dir} ] || {{ printf '#!/bin/sh\\necho REAL PING\\n' > {dir}/ping; chmod 755 {dir}/ping; }}"
        ))
        .unwrap();
    }
    let out = ssh(
        &host,
        &host.known_hosts_line(),
        &[],
        "command -v ping; ping -c 1 192.168.0.9; su -l -s /bin/sh nobody -c 'echo PATH=$PATH; command -v ping; ping -c 1 192.168.0.9'",
    );
    let stdout = text(&out.stdout);
    assert!(!stdout.contains("REAL PING"), "{stdout}");
    assert!(stdout.starts_with("/usr/local/sbin/ping\n"), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("\nPATH=/usr/local/bin:") && stdout.contains("\n/usr/local/bin/ping\n"),
        "{stdout}"
    );
    assert_eq!(host.calls("ping").unwrap().len(), 2, "both pings reached the stand-in");
    assert!(stdout.contains("100% packet loss"), "{stdout}");
}

#[test]
fn nvidia_smi_reports_the_gpus_the_test_sets() {
    let host = LabHost::start("gpu").unwrap();
    host.install_standins(&[Standin::NvidiaSmi, Standin::NvidiaCtk]).unwrap();
    assert_eq!(fails(&host, "nvidia-smi").0, 9, "no driver before set_gpus");

    host.set_gpus(&vec![Gpu::h100(); 8]).unwrap();
    let csv = host.sh("nvidia-smi --query-gpu=name,uuid,memory.total --format=csv,noheader").unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(", ").collect()).collect();
    assert_eq!(rows.len(), 8, "{csv}");
    assert!(rows.iter().all(|r| r[0] == "NVIDIA H100 80GB HBM3" && r[2] == "81559 MiB"), "{csv}");
    assert_eq!(rows.iter().map(|r| r[1]).collect::<HashSet<_>>().len(), 8, "uuids repeat: {csv}");
    assert!(rows[0][1].starts_with("GPU-"));
    let header = host.sh("nvidia-smi --query-gpu=index,memory.total --format=csv,nounits -i 3").unwrap();
    assert_eq!(header, "index, memory.total\n3, 81559\n");
    assert!(host.sh("nvidia-smi -L").unwrap().starts_with("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-"));
    assert!(host.sh("nvidia-smi").unwrap().contains("NVIDIA H100 80GB HBM3"));
    assert!(
        fails(&host, "nvidia-smi --query-gpu=bogus --format=csv")
            .2
            .contains("\"bogus\" is not a valid field")
    );

    host.set_gpus(&[]).unwrap();
    assert_eq!(fails(&host, "nvidia-smi -L"), (6, String::new(), "No devices were found\n".into()));

    // nvidia-ctk changes the runtime's config once; running it again changes nothing.
    let configure = "nvidia-ctk runtime configure --runtime=containerd --set-as-default";
    host.sh(configure).unwrap();
    let first = host.read_to_string("/etc/containerd/config.toml").unwrap();
    assert!(
        first.contains("runtimes.nvidia") && first.contains("default_runtime_name = \"nvidia\""),
        "{first}"
    );
    host.sh(configure).unwrap();
    assert_eq!(host.read_to_string("/etc/containerd/config.toml").unwrap(), first);
    assert_eq!(host.calls("nvidia-smi").unwrap().len(), 7);
}

#[test]
fn reboot_over_ssh_ends_sessions_and_brings_the_host_back_as_enabled() {
    let host = LabHost::start("reboot").unwrap();
    host.install_standins(&Standin::ALL).unwrap();
    host.write_file("/etc/systemd/system/enabled.service", DEMO_UNIT).unwrap();
    host.write_file("/etc/systemd/system/started.service", DEMO_UNIT).unwrap();
    host.sh("systemctl enable enabled && systemctl start started").unwrap();
    start_daemon(&host);
    let boot_id = host.read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let line = host.known_hosts_line();

    let out = ssh(&host, &line, &[], "reboot");
    assert!(out.status.code() == Some(0) || out.status.code() == Some(255), "{}", text(&out.stderr));
    // As long as `engine/tests/lab_reboot.rs` allows: the stand-in waits for the old sshd
    // to go before it writes the new boot id, seconds on a busy machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // A command running at the moment of the reboot is killed with the rest: retry.
    while host.read_to_string("/proc/sys/kernel/random/boot_id").map_or(true, |id| id == boot_id) {
        assert!(std::time::Instant::now() < deadline, "no reboot within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    host.wait_for_sshd(std::time::Duration::from_secs(30)).unwrap();

    assert_eq!(host.boot_count().unwrap(), 1);
    assert_eq!(host.calls("reboot").unwrap(), [Vec::<String>::new()]);
    assert!(host.sh("pgrep -x test-daemon").is_err(), "a process survived the reboot");
    assert_eq!(host.sh("systemctl is-active enabled").unwrap(), "active\n");
    assert_eq!(fails(&host, "systemctl is-active started").0, 3);
    let out = ssh(&host, &line, &[], "hostname");
    assert_eq!(text(&out.stdout), "reboot\n", "same host key after reboot: {}", text(&out.stderr));
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap(),
        host.read_to_string("/proc/sys/kernel/random/boot_id").unwrap()
    );
}

/// An sshd that dies before it listens (it forks first, so its exit status says nothing;
/// a port still held, say) is started again, as a service manager would: the host comes
/// back, and its boot log says how.
#[test]
fn a_boot_whose_sshd_fails_to_listen_starts_it_again() {
    let host = LabHost::start("reboot-retry").unwrap();
    host.install_standins(&[Standin::Reboot]).unwrap();
    // The first sshd of the next boot returns at once and never listens. (Swapped in only
    // now, from outside: the running sshd re-executes its own path for each connection.)
    host.write_file(
        "/usr/local/lib/sshd-fails-once",
        "#!/bin/sh\nif [ -e /var/lib/lab-standins/sshd-failed ]; then exec /usr/sbin/sshd.real \"$@\"; fi\ntouch /var/lib/lab-standins/sshd-failed\nexit 0\n",
    )
    .unwrap();
    host.sh("chmod 755 /usr/local/lib/sshd-fails-once && mv /usr/sbin/sshd /usr/sbin/sshd.real && \
         cp /usr/local/lib/sshd-fails-once /usr/sbin/sshd && reboot")
        .unwrap();
    let log = || host.read_to_string("/var/lib/lab-standins/boot.log").unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !log().contains("sshd up") {
        assert!(std::time::Instant::now() < deadline, "sshd not back within 30 s: {}", log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = log();
    assert!(log.starts_with("boot 1: try 1: no sshd"), "{log}");
    // Up on a later try: the second, unless a slow machine kept it from listening in time.
    let last = log.lines().last().unwrap_or_default();
    assert!(last.starts_with("boot 1: sshd up (try ") && !last.ends_with("(try 1)"), "{log}");
    let out = ssh(&host, &host.known_hosts_line(), &[], "hostname");
    assert_eq!(text(&out.stdout), "reboot-retry\n", "{}", text(&out.stderr));
}

#[test]
fn sysctl_and_modprobe_are_recorded_and_never_reach_the_machine() {
    let host = LabHost::start("kernel").unwrap();
    host.install_standins(&[Standin::Sysctl, Standin::Modprobe]).unwrap();
    let machine_value = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let wanted = if machine_value.trim() == "1" { "0" } else { "1" };

    assert_eq!(
        host.sh(&format!("sysctl -w net.ipv4.ip_forward={wanted}")).unwrap(),
        format!("net.ipv4.ip_forward = {wanted}\n")
    );
    assert_eq!(host.sh("sysctl -n net.ipv4.ip_forward").unwrap().trim(), wanted);
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(), machine_value);
    // The real sysctl (by absolute path) cannot write: /proc/sys is read-only inside.
    assert!(
        host.exec(&format!("/usr/sbin/sysctl -w net.ipv4.ip_forward={wanted}")).unwrap().status.code()
            != Some(0)
    );
    assert_eq!(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(), machine_value);

    host.write_file("/etc/sysctl.d/99-disable-ipv6.conf", "net.ipv6.conf.all.disable_ipv6 = 1\n# comment\n")
        .unwrap();
    let out = host.sh("sysctl --system").unwrap();
    assert!(out.contains("* Applying /etc/sysctl.d/99-disable-ipv6.conf ..."), "{out}");
    assert_eq!(
        host.sh("sysctl net.ipv6.conf.all.disable_ipv6").unwrap(),
        "net.ipv6.conf.all.disable_ipv6 = 1\n"
    );
    assert_eq!(host.calls("sysctl").unwrap()[0], ["-w", &format!("net.ipv4.ip_forward={wanted}")]);

    host.sh("modprobe ib_umad && modprobe wireguard && modprobe -r wireguard").unwrap();
    assert_eq!(host.read_to_string("/var/lib/lab-standins/modules").unwrap(), "ib_umad\n");
    assert_eq!(host.calls("modprobe").unwrap().len(), 3);
}

#[test]
fn wireguard_keys_and_interfaces_behave_like_the_real_tools() {
    let host = LabHost::start("wireguard").unwrap();
    host.install_standins(&[Standin::WireGuard, Standin::Systemctl]).unwrap();
    let private = host.sh("wg genkey").unwrap();
    let private = private.trim();
    assert_eq!(private.len(), 44, "{private}");
    let public = host.sh(&format!("echo {private} | wg pubkey")).unwrap();
    assert_eq!(public.trim().len(), 44);
    assert_ne!(public.trim(), private);
    assert_eq!(
        host.sh(&format!("echo {private} | wg pubkey")).unwrap(),
        public,
        "pubkey is a function of the key"
    );

    assert!(fails(&host, "wg-quick up wg0").2.contains("/etc/wireguard/wg0.conf' does not exist"));
    host.write_file(
        "/etc/wireguard/wg0.conf",
        format!("[Interface]\nAddress = 192.168.0.1/20\nPrivateKey = {private}\nListenPort = 51820\n"),
    )
    .unwrap();
    host.sh("wg-quick up wg0").unwrap();
    assert!(fails(&host, "wg-quick up wg0").2.contains("`wg0' already exists"));
    host.sh("wg-quick down wg0 && wg-quick up wg0").unwrap();
    assert!(host.sh("wg show").unwrap().contains("interface: wg0"));
    assert!(!host.sh("wg-quick strip wg0").unwrap().contains("Address"));

    // The unit needs its unit file, which the wireguard-tools package would install.
    assert_eq!(fails(&host, "systemctl enable --now wg-quick@wg0").0, 1);
    host.write_file("/lib/systemd/system/wg-quick@.service", DEMO_UNIT).unwrap();
    host.sh("wg-quick down wg0 && systemctl enable --now wg-quick@wg0").unwrap();
    assert!(host.sh("wg show").unwrap().contains("interface: wg0"));
    assert_eq!(host.calls("wg-quick").unwrap()[0], ["up", "wg0"]);
}

#[test]
fn firewall_rules_and_ping_stay_inside_the_host() {
    let host = LabHost::start("firewall").unwrap();
    host.install_standins(&Standin::ALL).unwrap();
    let rule = "FORWARD -i wg0 -j ACCEPT";
    assert_eq!(fails(&host, &format!("iptables -C {rule}")).0, 1);
    host.sh(&format!("iptables -A {rule} && iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE")).unwrap();
    host.sh(&format!("iptables -C {rule}")).unwrap();
    assert_eq!(host.sh("iptables -S FORWARD").unwrap(), "-P FORWARD ACCEPT\n-A FORWARD -i wg0 -j ACCEPT\n");
    host.sh("netfilter-persistent save").unwrap();
    let saved = host.read_to_string("/etc/iptables/rules.v4").unwrap();
    assert!(saved.contains("*nat\n") && saved.contains("-A POSTROUTING -o eth0 -j MASQUERADE\n"), "{saved}");
    host.sh(&format!("iptables -D {rule} && iptables -t nat -F")).unwrap();
    assert_eq!(fails(&host, &format!("iptables -C {rule}")).0, 1);
    host.sh("netfilter-persistent start").unwrap();
    host.sh(&format!("iptables -C {rule}")).unwrap();
    assert!(host.sh("iptables -t nat -S").unwrap().contains("-A POSTROUTING -o eth0 -j MASQUERADE"));
    assert_eq!(host.calls("iptables").unwrap()[0], ["-C", "FORWARD", "-i", "wg0", "-j", "ACCEPT"]);

    // Ping reaches a WireGuard peer only once the interface covering it is up.
    assert_eq!(fails(&host, "ping -c 1 192.168.0.1").0, 1);
    host.write_file(
        "/etc/wireguard/wg0.conf",
        "[Interface]\nAddress = 192.168.0.3/20\n[Peer]\nAllowedIPs = 192.168.0.0/20, 10.0.0.0/8\n",
    )
    .unwrap();
    host.sh("wg-quick up wg0").unwrap();
    assert!(host.sh("ping -c 1 192.168.0.1").unwrap().contains("1 received"));
    assert!(host.sh("ping -c 2 10.1.2.3").unwrap().contains("2 received"));
    assert_eq!(fails(&host, "ping -c 1 192.168.16.1").0, 1);
    host.write_file("/var/lib/lab-standins/ping/reachable", "203.0.113.7\n").unwrap();
    host.sh("ping -c 1 203.0.113.7").unwrap();
}

/// Run only as the child of `a_killed_test_process_leaves_no_host_behind`: starts a host,
/// reports it, and waits to be killed.
#[test]
#[ignore = "helper: run by a_killed_test_process_leaves_no_host_behind"]
fn helper_child_holding_a_host() {
    let host = LabHost::start("orphan").unwrap();
    println!("\nHOST {}", host.init_pid());
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_killed_test_process_leaves_no_host_behind() {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_child_holding_a_host", "--ignored", "--nocapture", "--test-threads=1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let pid: u32 = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.split_once("HOST ").map(|(_, p)| p.trim().parse().unwrap()))
        .expect("the child started no host");
    let pid_ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    assert!(processes_in(&pid_ns) >= 2);

    child.kill().unwrap(); // SIGKILL: no Drop runs
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while processes_in(&pid_ns) > 0 {
        assert!(std::time::Instant::now() < deadline, "the host outlived its test process");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
