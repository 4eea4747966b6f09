//! Lab setup shared by the lab tests and the benchmark: lab hosts with stand-ins, an
//! inventory and known_hosts for them, and running the real `minerctl provision`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use lab_hosts::lab::{Gpu, Lab, LabHost};

pub struct Setup {
    pub lab: Lab,
    pub dir: tempfile::TempDir,
}

impl Setup {
    /// One primary CPU host and `gpus` GPU hosts, with stand-ins installed, and the tests'
    /// trimmed inventory (one package).
    pub fn start(gpus: usize) -> Setup {
        Setup::start_with(gpus, TRIMMED)
    }

    /// As [`Setup::start`], with an inventory as a miner would write it: every role and the
    /// default step set (ipv6 off, ntp, ...), only the package lists shortened (six packages,
    /// five of which the lab hosts already have; CUDA skipped: no GPU driver in a lab).
    pub fn start_realistic(gpus: usize) -> Setup {
        Setup::start_with(gpus, REALISTIC)
    }

    fn start_with(gpus: usize, vars: &str) -> Setup {
        let mut names = vec!["cpu-0".to_string()];
        names.extend((1..=gpus).map(|i| format!("gpu-{i}")));
        let lab = Lab::start_named(&names).unwrap();
        for h in lab.hosts() {
            prepare(h);
        }
        // The cluster as the primary's API will see it: every worker's Node, registered by its
        // kubelet once it joins (without an API emulator, the lab hosts' stores are separate).
        let (primary, workers) = lab.hosts().split_first().unwrap();
        for w in workers {
            primary.set_kube_node(w.name(), &[Gpu::h100()], true).unwrap();
        }
        let s = Setup { lab, dir: tempfile::tempdir().unwrap() };
        s.write_inventory(vars);
        s.write_known_hosts(|h| h.known_hosts_line());
        s
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.path().join("inventory.yml")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    fn write_inventory(&self, vars: &str) {
        std::fs::write(self.inventory(), inventory_yaml_with(self.lab.hosts(), vars)).unwrap();
    }

    pub fn write_known_hosts(&self, line: impl Fn(&LabHost) -> String) {
        let lines: Vec<String> = self.lab.hosts().iter().map(line).collect();
        std::fs::write(self.known_hosts(), lines.join("\n") + "\n").unwrap();
    }

    pub fn command(&self, extra: &[&str]) -> Command {
        // MINERCTL_WRAPPER (e.g. "/usr/bin/time -f %e,%U,%S") runs minerctl under a profiler.
        let mut c = match std::env::var("MINERCTL_WRAPPER") {
            Ok(w) if !w.trim().is_empty() => {
                let mut parts = w.split_whitespace();
                let mut c = Command::new(parts.next().unwrap_or_default());
                c.args(parts).arg(env!("CARGO_BIN_EXE_minerctl"));
                c
            }
            _ => Command::new(env!("CARGO_BIN_EXE_minerctl")),
        };
        c.arg("provision")
            .arg("-i")
            .arg(self.inventory())
            .arg("--known-hosts")
            .arg(self.known_hosts())
            .arg("--log-file")
            .arg(self.dir.path().join("provision.log"))
            .args(["--output", "json"])
            .args(extra);
        c
    }

    pub fn run(&self, extra: &[&str]) -> Run {
        Run::from(self.command(extra).output().unwrap())
    }

    /// A run in the background (collect it with `Run::from(child.wait_with_output()?)`).
    pub fn spawn(&self, extra: &[&str]) -> std::process::Child {
        self.command(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

const TRIMMED: &str = "  packages: [hello]\n  primary_packages: []\n  container_toolkit_packages: []\n";
const REALISTIC: &str = "  packages: [hello, curl, ca-certificates, git, jq, wget]\n  primary_packages: [jq]\n  \
                         container_toolkit_packages: [gnupg]\n";

/// The inventory of `hosts`: the first is the primary (CPU), the others GPU workers.
pub fn inventory_yaml(hosts: &[LabHost]) -> String {
    inventory_yaml_with(hosts, TRIMMED)
}

/// [`inventory_yaml`] with `vars` (indented YAML lines) in place of the trimmed package lists.
pub fn inventory_yaml_with(hosts: &[LabHost], vars: &str) -> String {
    let refs: Vec<&LabHost> = hosts.iter().collect();
    let spec = minerctl_lab::hosts::InventorySpec {
        vars,
        validator: None,
        external_ip_is_address: false,
        gpu_short_ref: None,
    };
    minerctl_lab::hosts::inventory_yaml(&refs, &spec)
}

/// Every harness stand-in (`lab_hosts::lab::Standin`), one H100 on GPU hosts, and two
/// speed-ups of this shared machine's image that a real server does not need (the lab's own
/// preparation, `minerctl_lab::hosts::prepare`).
pub fn prepare(h: &LabHost) {
    let gpus = if h.name().starts_with("gpu-") { vec![Gpu::h100()] } else { Vec::new() };
    minerctl_lab::hosts::prepare(h, &gpus).unwrap();
}

#[allow(unused_imports)] // some tests write unit files, others not
pub use minerctl_lab::hosts::UNIT;

/// Whether `h`'s microk8s stand-in joined a cluster.
pub fn joined(h: &LabHost) -> Option<String> {
    h.read_to_string("/var/lib/lab-standins/microk8s/joined").ok()
}

/// A label of node `node` as `h`'s cluster API reports it ("" when unset).
pub fn node_label(h: &LabHost, node: &str, key: &str) -> String {
    let path = key.replace('.', "\\.");
    h.kube_node_field(node, &format!("{{.metadata.labels.{path}}}")).unwrap().unwrap_or_default()
}

/// A finished run: exit code and the JSON events it printed.
pub struct Run {
    pub code: Option<i32>,
    pub events: Vec<serde_json::Value>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let events = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        Run { code: o.status.code(), events, stdout, stderr: String::from_utf8_lossy(&o.stderr).into_owned() }
    }
}

impl Run {
    pub fn recap(&self, host: &str) -> serde_json::Value {
        let recap = self
            .events
            .iter()
            .rev()
            .find(|e| e["event"] == "recap")
            .unwrap_or_else(|| panic!("no recap:\n{}\n{}", self.stdout, self.stderr));
        recap["hosts"].as_array().unwrap().iter().find(|h| h["host"] == host).unwrap().clone()
    }
    pub fn changed_steps(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter(|e| e["event"] == "step" && e["status"] == "changed")
            .map(|e| (e["host"].as_str().unwrap().to_string(), e["step"].as_str().unwrap().to_string()))
            .collect()
    }
    pub fn assert_ok(&self) {
        assert_eq!(self.code, Some(0), "run failed:\n{}\n{}", self.stdout, self.stderr);
    }
}

/// A local apt repository (`/opt/lab-cuda`, listed in `/etc/apt/sources.list.d/cuda-lab.list`,
/// a name the base role keeps) of empty stand-in packages for the NVIDIA stack: the CUDA
/// toolkits and fabric managers of `versions` (cuda, nvidia), `nvidia-open`, and a
/// `cuda-keyring` whose .deb the inventory's `cuda_keyring_url` fetches from a file: URL. The
/// fabric manager packages ship the unit file, as NVIDIA's do. Real apt and dpkg install,
/// purge and upgrade them; nothing leaves the machine for them.
pub fn cuda_repo(h: &LabHost, versions: &[(&str, &str)]) {
    let mut pkgs = vec!["nvidia-open".to_string(), "cuda-keyring".to_string()];
    for (cuda, nvidia) in versions {
        pkgs.push(format!("cuda-toolkit-{cuda}"));
        pkgs.push(format!("nvidia-fabricmanager-{nvidia}"));
    }
    let script = format!(
        r#"set -e; r=/opt/lab-cuda; b=$(mktemp -d); mkdir -p $r
for p in {pkgs}; do
  d=$b/$p; mkdir -p $d/DEBIAN $d/usr/share/doc/$p
  printf 'Package: %s\nVersion: 1.0\nArchitecture: all\nMaintainer: lab <lab@localhost>\nDescription: lab stand-in for %s\n' $p $p >$d/DEBIAN/control
  echo "stand-in for $p" >$d/usr/share/doc/$p/README
  case $p in
  cuda-keyring) mkdir -p $d/usr/share/keyrings; echo lab-keyring >$d/usr/share/keyrings/cuda-archive-keyring.gpg ;;
  nvidia-fabricmanager-*) mkdir -p $d/lib/systemd/system; printf '[Unit]\nDescription=fm\n[Service]\nExecStart=/bin/true\n' >$d/lib/systemd/system/nvidia-fabricmanager.service ;;
  esac
  dpkg-deb -Zgzip --build $d $r/$p.deb >/dev/null
done
cd $r; : >Packages
for f in *.deb; do
  dpkg-deb -f $f >>Packages; printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' $f $(stat -c %s $f) $(sha256sum $f | cut -d' ' -f1) >>Packages
done
rm -rf $b
echo 'deb [trusted=yes] file:/opt/lab-cuda ./' >/etc/apt/sources.list.d/cuda-lab.list"#,
        pkgs = pkgs.join(" ")
    );
    h.sh(&script).unwrap();
}

/// Whether dpkg has `package` installed on `h`.
pub fn installed(h: &LabHost, package: &str) -> bool {
    h.sh(&format!("dpkg-query -W -f='${{db:Status-Abbrev}}' {package} 2>/dev/null | grep -q '^ii' && echo yes || echo no"))
        .unwrap()
        .trim()
        == "yes"
}

/// Sets (or adds) `key: value` among the inventory's `vars`.
pub fn set_var(s: &Setup, key: &str, value: &str) {
    let inv = std::fs::read_to_string(s.inventory()).unwrap();
    let mut lines: Vec<String> =
        inv.lines().filter(|l| !l.starts_with(&format!("  {key}:"))).map(str::to_string).collect();
    let at = lines.iter().position(|l| l == "vars:").unwrap() + 1;
    lines.insert(at, format!("  {key}: {value}"));
    std::fs::write(s.inventory(), lines.join("\n") + "\n").unwrap();
}

/// Everything a host wrote: its overlay's upper layer (every file, directory, whiteout and
/// metadata change to its root) plus /run and /tmp (tmpfs of their own, outside the overlay),
/// with contents hashed. Left out: the lab sshd's own log and the stand-ins' call log (test
/// instruments; the calls are checked on their own).
pub fn trace(h: &LabHost) -> String {
    let upper = LabHost::UPPER_DIR;
    let skip = "! -path ./var/log/lab-sshd.log ! -path ./var/lib/lab-standins/calls.log";
    h.sh(&format!(
        "set -e; cd {upper}; find . {skip} -printf '%p %y %m %u:%g %s %T@ %l\\n' | sort; \
         find . -type f {skip} -exec sha256sum {{}} + | sort; \
         find /run /tmp -printf '%p %y %m %u:%g %s %T@ %l\\n' | sort; find /run /tmp -type f -exec sha256sum {{}} + | sort"
    ))
    .unwrap()
}

pub fn assert_same_trace(hosts: &[LabHost], before: &[String]) {
    for (h, b) in hosts.iter().zip(before) {
        let after = trace(h);
        if &after != b {
            let diff = similar::TextDiff::from_lines(b.as_str(), after.as_str())
                .unified_diff()
                .header("before", "after")
                .to_string();
            panic!("{}: --check left a trace on the host:\n{diff}", h.name());
        }
    }
}

/// Makes `h`'s stand-in call `name` (e.g. `snap-refresh`) wait until [`release`].
pub fn hold(h: &LabHost, name: &str) {
    h.sh(&format!("mkdir -p /var/lib/lab-standins/hold && touch /var/lib/lab-standins/hold/{name}")).unwrap();
}

pub fn release(h: &LabHost, name: &str) {
    h.sh(&format!("rm -f /var/lib/lab-standins/hold/{name}")).unwrap();
}
