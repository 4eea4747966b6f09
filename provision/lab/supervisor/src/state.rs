//! The state directory: the record of everything a lab made (written before and after
//! each thing is made, atomically), the control socket, progress and logs, and the
//! working files (inventory, known_hosts, kubeconfig, hotkeys, temp dirs of the servers).
//! `lab down` needs nothing but this directory to clean up, even after the supervisor died.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{LabError, io};

/// Where `minerctl lab` keeps its state unless told otherwise (`--state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/minerctl-lab";

/// A process the lab started (directly or as a server's owner), to be killed by `lab down`
/// if it outlives the supervisor. `start_time` (from `/proc/PID/stat`) tells a recycled pid apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub what: String,
    pub pid: u32,
    pub start_time: u64,
}

/// A lab host: its name, SSH address and the host-side pid of its PID 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub name: String,
    pub addr: String,
    pub ssh_port: u16,
    pub gpus: usize,
}

/// Everything the lab made, as `record.json` in the state directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    /// `starting`, `up`, `failed`, `stopping`.
    pub phase: String,
    pub error: Option<String>,
    pub supervisor: Option<ProcessRecord>,
    pub started_unix: u64,
    /// Seconds `lab up` took, once it is up.
    pub up_seconds: Option<f64>,
    pub hosts: Vec<HostRecord>,
    pub processes: Vec<ProcessRecord>,
    /// `addr:port` the lab listens on (SSH of the hosts, servers, emulators): free after `lab down`.
    pub listeners: Vec<String>,
    /// Named endpoints: `api`, `kube`, `validator`, `postgres`, `redis`.
    pub endpoints: BTreeMap<String, String>,
    /// Steps done, in order, with their durations.
    pub steps: Vec<(String, f64)>,
    /// Steps skipped, with why.
    pub skipped: Vec<(String, String)>,
    /// Verification tasks the validator passed after checking a real GraVal proof.
    pub proofs_verified: Vec<String>,
    /// The validator's scenario after `up`: `playing`, `done`, `failed: why`.
    pub scenario: String,
    /// Passes of the GPU double-booking monitor, and what it found (empty: none).
    pub gpu_checks: u64,
    pub double_booked: Vec<String>,
    /// The lab's podman store, named before it is made: `lab down` removes its containers,
    /// mounts and files. None: no images, the pods run in-process stand-ins.
    pub podman: Option<crate::containers::LabStore>,
    /// Job ids whose chute ran to its end (its pod succeeded).
    pub ran_jobs: Vec<String>,
}

/// The state directory's layout.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn record_path(&self) -> PathBuf {
        self.root.join("record.json")
    }
    pub fn socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }
    pub fn progress(&self) -> PathBuf {
        self.root.join("progress.log")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }
    /// TMPDIR of the supervisor: the Postgres and Redis guards make their dirs here.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    /// The lab miner's hotkey (hex seed, mode 0600): what `minerctl status --hotkey` takes.
    pub fn miner_hotkey(&self) -> PathBuf {
        self.root.join("miner.hotkey")
    }

    /// Creates the directory (and its `tmp`), traversable by the `postgres` user the
    /// Postgres guard runs the server as.
    pub fn create(&self) -> Result<(), LabError> {
        for d in [self.root.clone(), self.tmp()] {
            std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))
                .map_err(io(format!("chmod {}", d.display())))?;
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    /// The record, if there is one.
    pub fn read(&self) -> Result<Option<Record>, LabError> {
        let path = self.record_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| LabError::Record { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    /// Writes the record atomically (temp file, then rename): a crash leaves the old or the new one.
    pub fn write(&self, record: &Record) -> Result<(), LabError> {
        let path = self.record_path();
        let tmp = self.root.join(".record.json.tmp");
        let text = serde_json::to_vec_pretty(record)
            .map_err(|e| LabError::Record { path: path.clone(), reason: e.to_string() })?;
        std::fs::write(&tmp, text).map_err(io(format!("write {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("rename {} to {}", tmp.display(), path.display())))
    }
}

/// The start time of `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl ProcessRecord {
    /// A record of the running process `pid`.
    pub fn of(what: &str, pid: u32) -> Option<ProcessRecord> {
        Some(ProcessRecord { what: what.to_owned(), pid, start_time: start_time(pid)? })
    }

    /// Whether the recorded process still runs (the same process, not a recycled pid).
    /// A zombie counts as gone.
    pub fn alive(&self) -> bool {
        if start_time(self.pid) != Some(self.start_time) {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
        !matches!(state, Some("Z") | Some("X") | None)
    }

    /// Waits until none of `ps` runs, at most `timeout`; whether they are all gone.
    pub fn wait_gone(ps: &[ProcessRecord], timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if ps.iter().all(|p| !p.alive()) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
