//! Lab hosts: real SSH targets on this machine for provisioning tests.
//!
//! A [`LabHost`] is an isolated, copy-on-write view of this machine: private mount,
//! UTS and PID namespaces, an overlay of `/` as its root (writes land in memory and
//! vanish with the host), its own host name, and its own `sshd` on 127.0.1.N:22 (another port when the machine listens on *:22) with a
//! fresh host key that lets root in with one shared client key only. apt-get, files,
//! users and sudoers inside are real; what cannot run here (systemd, snap, microk8s,
//! nvidia-smi, reboot, sysctl -w, ...) gets [`Standin`] executables on request.
//!
//! ```no_run
//! let lab = lab_hosts::lab::Lab::start(3)?;
//! let host = &lab.hosts()[0];
//! assert_eq!(host.sh("hostname")?.trim(), host.name());
//! # Ok::<(), lab_hosts::lab::LabError>(())
//! ```
//!
//! See `provision/lab/hosts/ARCHITECTURE-lab.md` for how it works and what it does not model.

mod client_key;
mod error;
mod host;
mod setup;
mod slot;
mod standins;

pub use error::LabError;
pub use host::LabHost;
pub use standins::{Call, Gpu, STANDIN_BIN_DIR, STANDIN_STATE_DIR, Standin};

/// A set of lab hosts started together. Dropping it tears all of them down.
#[derive(Debug)]
pub struct Lab {
    hosts: Vec<LabHost>,
}

impl Lab {
    /// Starts `n` lab hosts named `lab-1` ... `lab-n`, in parallel.
    pub fn start(n: usize) -> Result<Lab, LabError> {
        let names: Vec<String> = (1..=n).map(|i| format!("lab-{i}")).collect();
        Lab::start_named(&names)
    }

    /// Starts one lab host per name, in parallel; `hosts()` keeps the order of `names`.
    pub fn start_named<S: AsRef<str> + Sync>(names: &[S]) -> Result<Lab, LabError> {
        for name in names {
            host::validate_name(name.as_ref())?;
        }
        let mut slots = Vec::with_capacity(names.len());
        for _ in names {
            slots.push(slot::Slot::acquire()?);
        }
        let results: Vec<Result<LabHost, LabError>> = std::thread::scope(|s| {
            let handles: Vec<_> = slots
                .into_iter()
                .zip(names)
                .map(|(slot, name)| s.spawn(move || LabHost::start_in(slot, name.as_ref())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        // On any failure the hosts that did start are dropped, i.e. torn down.
        let hosts = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Lab { hosts })
    }

    pub fn hosts(&self) -> &[LabHost] {
        &self.hosts
    }

    /// The host named `name`, if any.
    pub fn host(&self, name: &str) -> Option<&LabHost> {
        self.hosts.iter().find(|h| h.name() == name)
    }

    /// Takes the hosts out, e.g. to drop one of them early.
    pub fn into_hosts(mut self) -> Vec<LabHost> {
        std::mem::take(&mut self.hosts)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Let every host start going down before waiting for any of them.
        for host in &mut self.hosts {
            host.begin_teardown();
        }
    }
}

impl std::ops::Index<usize> for Lab {
    type Output = LabHost;
    fn index(&self, i: usize) -> &LabHost {
        &self.hosts[i]
    }
}

/// Where slot locks (`slot-N.lock`, one per lab host alive) and the shared client key
/// live: `/run/lab-hosts`, or `<temp dir>/lab-hosts` where /run is not writable.
pub fn state_dir() -> Result<std::path::PathBuf, LabError> {
    slot::state_dir()
}

/// Removes the slot lock files of processes that died without dropping their lab hosts
/// (`minerctl lab down` after a supervisor crash); live owners' files stay.
pub fn sweep_stale_slots() -> Result<(), LabError> {
    slot::sweep_stale(&slot::state_dir()?);
    Ok(())
}
