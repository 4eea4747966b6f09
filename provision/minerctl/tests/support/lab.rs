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
