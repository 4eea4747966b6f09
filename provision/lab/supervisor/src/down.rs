//! `lab down`: stops the supervisor (which stops everything it owns, in order) and then
//! makes sure, from the record alone, that nothing is left: every recorded process gone
//! (killed if it outlived a crashed supervisor), every container of the lab's podman store
//! removed with the store, every recorded address free, stale slot locks of the lab hosts
//! removed, the state directory deleted.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::state::{ProcessRecord, StateDir};
use crate::{LabError, control, io};

/// What `lab down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// There was a lab at the state directory.
    pub found: bool,
    /// The supervisor was running and stopped the lab itself.
    pub orderly: bool,
    /// Processes that outlived the supervisor and were killed.
    pub killed: Vec<String>,
    /// What is still there (empty on success).
    pub leftovers: Vec<String>,
}

/// How long the supervisor may take to stop everything (lab hosts, servers, the miner).
const ORDERLY: Duration = Duration::from_secs(300);

pub fn down(dir: &StateDir, progress: &mut dyn FnMut(&str)) -> Result<DownReport, LabError> {
    let mut report = DownReport::default();
    let Some(record) = dir.read()? else {
        if dir.exists() {
            // A lab that died before its first record: nothing ran, only files.
            remove_dir(dir)?;
            report.found = true;
        }
        return Ok(report);
    };
    report.found = true;
    if let Some(sup) = record.supervisor.as_ref().filter(|s| s.alive()) {
        progress(&format!("asking the supervisor (pid {}) to stop the lab", sup.pid));
        match control::request(&dir.socket(), "down", Some(ORDERLY)) {
            Ok(v) if v["ok"] == Value::Bool(true) => report.orderly = true,
            Ok(v) => progress(&format!("the supervisor answered: {}", v["error"])),
            Err(e) => progress(&format!("{e}; killing what is left")),
        }
        if !ProcessRecord::wait_gone(std::slice::from_ref(sup), Duration::from_secs(30)) {
            kill(sup);
            report.killed.push(format!("supervisor (pid {})", sup.pid));
        }
    } else {
        progress("the supervisor is not running: cleaning up from the record");
    }
    for p in record.processes.iter().filter(|p| p.alive()) {
        kill(p);
        report.killed.push(format!("{} (pid {})", p.what, p.pid));
    }
    if !ProcessRecord::wait_gone(&record.processes, Duration::from_secs(30)) {
        for p in record.processes.iter().filter(|p| p.alive()) {
            report.leftovers.push(format!("process {} (pid {}) still runs", p.what, p.pid));
        }
    }
    if let Some(store) = &record.podman {
        report.leftovers.extend(store.remove());
    }
    // Lab hosts' sshd and every server went with their processes; their addresses free up
    // as the kernel closes the sockets.
    let deadline = Instant::now() + Duration::from_secs(30);
    for l in &record.listeners {
        while listening(l) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if listening(l) {
            report.leftovers.push(format!("something still listens on {l}"));
        }
    }
    lab_hosts::lab::sweep_stale_slots()?;
    remove_dir(dir)?;
    Ok(report)
}

fn remove_dir(dir: &StateDir) -> Result<(), LabError> {
    match std::fs::remove_dir_all(dir.root()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("remove {}", dir.root().display()))(e)),
    }
}

fn kill(p: &ProcessRecord) {
    if p.alive() {
        // SAFETY: kill(2) on a pid whose start time matches the recorded process.
        unsafe {
            libc::kill(p.pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Whether a TCP listener holds `addr:port` (on loopback addresses, nothing else of
/// ours or the machine's uses the lab's ports).
pub fn listening(addr: &str) -> bool {
    let Ok(addr) = addr.parse::<std::net::SocketAddr>() else { return false };
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}
