//! Allocation of lab addresses (127.0.1.N) between concurrent test processes.
//!
//! Slot N is owned by whoever holds an exclusive `flock` on `<state dir>/slot-N.lock`.
//! The kernel drops the lock when its holder dies, so a crashed test process never
//! leaves a slot taken. The owner unlinks the file while still holding the lock; a
//! process that opened the old file before the unlink notices that the path now names
//! another inode (or none) and moves on, so no two processes can own one slot.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::error::{LabError, io};

/// Lowest and highest N of 127.0.1.N. 127.0.1.1 is left out: Debian maps the machine's
/// own host name to it in /etc/hosts.
const FIRST: u8 = 2;
const LAST: u8 = 254;

/// How long to wait for the sshd of a lab host whose owner just died to go away.
const STALE_GRACE: Duration = Duration::from_secs(2);

/// Where slot locks and the shared client key live: `/run/lab-hosts`, or
/// `<temp dir>/lab-hosts` where /run is not writable.
pub(crate) fn state_dir() -> Result<PathBuf, LabError> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir.clone());
    }
    let mut last_err = None;
    for base in [PathBuf::from("/run"), std::env::temp_dir()] {
        let dir = base.join("lab-hosts");
        match std::fs::create_dir_all(&dir) {
            Ok(()) => return Ok(DIR.get_or_init(|| dir).clone()),
            Err(e) => last_err = Some((dir, e)),
        }
    }
    let (dir, e) =
        last_err.unwrap_or_else(|| (PathBuf::from("/run/lab-hosts"), std::io::ErrorKind::NotFound.into()));
    Err(io(format!("create the lab state dir {}", dir.display()))(e))
}

/// An owned lab address. Dropping it frees the address.
#[derive(Debug)]
pub(crate) struct Slot {
    n: u8,
    path: PathBuf,
    _lock: File,
}

impl Slot {
    pub(crate) fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 1, self.n)
    }

    /// Takes a free slot. The search starts where this process's last one ended (and at
    /// a PID-dependent place in a new process), so a slot just freed is not handed out
    /// again at once: whatever still refers to its address (a test checking that the old
    /// host is gone, a known_hosts entry, TIME_WAIT sockets) does not meet a new host.
    pub(crate) fn acquire() -> Result<Slot, LabError> {
        static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
        let dir = state_dir()?;
        if let Some(listener) = wildcard_ssh_listener() {
            return Err(LabError::Start {
                host: "(any)".into(),
                addr: "127.0.1.0/24".into(),
                detail: format!(
                    "something on this machine listens on {listener}, which covers every lab address; \
                     stop the machine's own sshd (lab hosts bind 127.0.1.N:22 each)"
                ),
            });
        }
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| sweep_stale(&dir));
        let count = usize::from(LAST - FIRST) + 1;
        let _ = NEXT.compare_exchange(
            usize::MAX,
            std::process::id() as usize * 37,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let start = NEXT.fetch_add(1, Ordering::Relaxed);
        for i in 0..count {
            let n = FIRST + ((start + i) % count) as u8;
            if let Some(slot) = try_take(&dir, n)? {
                NEXT.store(start + i + 1, Ordering::Relaxed);
                return Ok(slot);
            }
        }
        Err(LabError::NoFreeSlot { dir })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Unlink while the lock is held (see the module docs), then close.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn try_take(dir: &Path, n: u8) -> Result<Option<Slot>, LabError> {
    let path = dir.join(format!("slot-{n}.lock"));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("open {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(io(format!("lock {}", path.display()))(e)),
    }
    if !names_same_file(&path, &file) {
        return Ok(None);
    }
    // The lab host of an owner that died a moment ago may still be going down.
    if !wait_port_free(Ipv4Addr::new(127, 0, 1, n), STALE_GRACE) {
        let _ = std::fs::remove_file(&path); // still under our lock, see the module docs
        return Ok(None);
    }
    // For people reading the state dir: who owns the slot.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(Some(Slot { n, path, _lock: file }))
}

/// Removes lock files left by processes that died without dropping their slots (the
/// lock itself died with them): those we can lock and that still name the file we hold.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with("slot-") && name.ends_with(".lock")) {
            continue;
        }
        let path = entry.path();
        let Ok(file) = OpenOptions::new().write(true).open(&path) else { continue };
        if file.try_lock().is_ok() && names_same_file(&path, &file) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn names_same_file(path: &Path, file: &File) -> bool {
    match (std::fs::metadata(path), file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// True once nothing listens on `addr`:22 (checked by binding it ourselves).
fn wait_port_free(addr: Ipv4Addr, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        if TcpListener::bind(SocketAddr::from((addr, 22))).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A socket listening on port 22 of every address (`0.0.0.0:22` or `[::]:22`), such as
/// the machine's own sshd: no lab host can bind its address while one exists.
fn wildcard_ssh_listener() -> Option<&'static str> {
    const LISTEN: &str = "0A";
    let tables = [
        ("/proc/net/tcp", "00000000:0016", "0.0.0.0:22"),
        ("/proc/net/tcp6", "00000000000000000000000000000000:0016", "[::]:22"),
    ];
    for (table, local, shown) in tables {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) == Some(&local) && fields.get(3) == Some(&LISTEN) {
                return Some(shown);
            }
        }
    }
    None
}
