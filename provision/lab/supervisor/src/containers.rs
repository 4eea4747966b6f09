//! The lab's own podman store: where `lab up` loads the graval-bootstrap and chute-standin
//! images it built, so the emulated cluster runs GraVal bootstrap and chute pods as real
//! containers (the kube emulator's podman runner). The record names the store (root,
//! runroot, the lab's container label) before it exists, so `lab down` removes every
//! container, mount and file of it, also after the supervisor was killed.

use std::path::{Path, PathBuf};

use kube_emulator::{ImageAlias, PodmanRunner};
use minerctl_images::Lock;
use serde::{Deserialize, Serialize};

use crate::miner::{MATRIX_SIZE, PROOF_BYTES};
use crate::state::StateDir;
use crate::{LabError, io, step_err};

/// The images of the lock the lab runs in containers.
pub const GRAVAL_IMAGE: &str = "graval-bootstrap";
pub const STANDIN_IMAGE: &str = "chute-standin";

/// A lab's podman store and the label of its containers (`minerctl-lab=<lab_id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabStore {
    pub lab_id: String,
    pub root: PathBuf,
    pub runroot: PathBuf,
}

/// The tags `podman load` put in the store.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub graval: String,
    pub standin: String,
}

impl LabStore {
    /// The store of the lab at `dir` (nothing is made yet).
    pub fn new(dir: &StateDir, lab_id: &str) -> LabStore {
        LabStore {
            lab_id: lab_id.to_owned(),
            root: dir.file("podman/storage"),
            runroot: dir.file("podman/run"),
        }
    }

    /// podman with this store's options (vfs, `--runtime runc`), containers labelled with the lab.
    pub fn runner(&self) -> PodmanRunner {
        PodmanRunner::new(&self.lab_id).storage(self.root.clone(), self.runroot.clone())
    }

    /// Loads the GraVal bootstrap and chute stand-in archives of the lock at `lock`.
    pub fn load(&self, lock: &Path) -> Result<Loaded, LabError> {
        let step = "loading the images into the lab's podman store";
        let parsed = Lock::read(lock).map_err(|e| step_err(step, e))?;
        let mut tags = Vec::new();
        for name in [GRAVAL_IMAGE, STANDIN_IMAGE] {
            let Some(image) = parsed.images.get(name) else {
                return Err(step_err(
                    step,
                    format!(
                        "{} has no {name} image (build with `minerctl images build --lab`, or pass --no-images)",
                        lock.display()
                    ),
                ));
            };
            let archive = Lock::archive_path(lock, image);
            let out = self
                .runner()
                .command()
                .arg("load")
                .arg("-i")
                .arg(&archive)
                .output()
                .map_err(io(format!("run podman load -i {}", archive.display())))?;
            if !out.status.success() {
                return Err(step_err(
                    step,
                    format!(
                        "podman load -i {}: {}",
                        archive.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ));
            }
            tags.push(image.tag.clone());
        }
        Ok(Loaded { graval: tags[0].clone(), standin: tags[1].clone() })
    }

    /// The runner the lab's cluster starts: GraVal bootstrap Jobs run the bootstrap server on
    /// the CPU backend (`gpus` test-sized devices, as the validator's check expects), chute
    /// pods run the stand-in chute, which reaches the validator at `validator` (host address).
    pub fn cluster_runner(
        &self,
        images: &Loaded,
        gpus: usize,
        validator: std::net::SocketAddr,
    ) -> PodmanRunner {
        let (devices, memory, matrix) =
            (gpus.to_string(), (PROOF_BYTES >> 20).max(1).to_string(), MATRIX_SIZE.to_string());
        let graval_args = [
            "--backend",
            "cpu",
            "--port",
            "8000",
            "--cpu-devices",
            &devices,
            "--cpu-memory-mib",
            &memory,
            "--matrix-size",
            &matrix,
        ];
        self.runner()
            .alias(ImageAlias::new(GRAVAL_IMAGE, &images.graval).args(&graval_args))
            .alias(
                ImageAlias::new(".localregistry.chutes.ai", &images.standin)
                    .env("CHUTES_API_URL", &format!("http://{validator}")),
            )
            .host_service(validator)
    }

    /// Removes every container of the lab, any mount left under the store, and the store.
    /// Returns what could not be removed.
    pub fn remove(&self) -> Vec<String> {
        let mut left = Vec::new();
        // Asking podman about a store that was never made would make it.
        if self.root.exists()
            && let Err(e) = self.runner().remove_containers()
        {
            left.push(format!("the lab's containers ({}): {e}", self.lab_id));
        }
        // A container podman lost track of (its store damaged) still has a conmon that
        // names the store: it goes with the container's processes.
        let strays = self.stray_processes();
        for pid in &strays {
            // SAFETY: kill(2) on a process of the lab's store, found just now.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        if !strays.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        for pid in strays.iter().filter(|p| alive(**p)) {
            left.push(format!("process {pid} of the lab's containers still runs"));
        }
        for m in mounts_under(&[&self.root, &self.runroot]) {
            let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else { continue };
            // SAFETY: umount2 on a path of ours; MNT_DETACH never blocks.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                left.push(format!(
                    "mount {} (umount failed: {})",
                    m.display(),
                    std::io::Error::last_os_error()
                ));
            }
        }
        for d in [&self.root, &self.runroot] {
            match std::fs::remove_dir_all(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => left.push(format!("{}: {e}", d.display())),
            }
        }
        left
    }
}

impl LabStore {
    /// Processes whose command line names the store (conmon names its root), and their
    /// descendants (the container's processes).
    fn stray_processes(&self) -> Vec<u32> {
        let (root, runroot) = (self.root.to_string_lossy(), self.runroot.to_string_lossy());
        let mut parent = Vec::new();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent.push((pid, ppid));
            }
            let cmdline =
                String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
                    .into_owned();
            if pid != std::process::id() && (cmdline.contains(&*root) || cmdline.contains(&*runroot)) {
                found.push(pid);
            }
        }
        let mut i = 0;
        while i < found.len() {
            let p = found[i];
            let children: Vec<u32> =
                parent.iter().filter(|(c, pp)| *pp == p && !found.contains(c)).map(|(c, _)| *c).collect();
            found.extend(children);
            i += 1;
        }
        found
    }
}

/// Whether `pid` runs (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Mount points at or under any of `dirs`, deepest first.
pub fn mounts_under(dirs: &[&Path]) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| dirs.iter().any(|d| p.starts_with(d)))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}
