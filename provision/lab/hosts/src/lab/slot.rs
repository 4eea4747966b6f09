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

/// SSH ports a lab host may use, in order of preference. 22 is a real host's port;
/// the others serve when something (the machine's own sshd, normally) listens on the
/// wildcard address of 22, which covers every 127.0.1.N. The machine's sshd is never
/// stopped or reconfigured: it may carry the session of whoever runs the tests.
const PORTS: [u16; 4] = [22, 2222, 22222, 2022];

/// `LAB_SSH_PORT` forces a port (for testing the fallback, or a site's own choice).
const PORT_VAR: &str = "LAB_SSH_PORT";

/// The SSH port of every lab host this process starts, chosen once.
pub(crate) fn lab_ssh_port() -> Result<u16, LabError> {
    static PORT: std::sync::OnceLock<Result<u16, String>> = std::sync::OnceLock::new();
    let chosen = PORT.get_or_init(|| {
        if let Ok(text) = std::env::var(PORT_VAR) {
            return text.trim().parse().map_err(|_| format!("{PORT_VAR}={text:?} is not a port number"));
        }
        let tables =
            ["/proc/net/tcp", "/proc/net/tcp6"].map(|t| std::fs::read_to_string(t).unwrap_or_default());
        choose_port(&tables).ok_or_else(|| {
            format!(
                "something listens on the wildcard address of every port lab hosts can use ({PORTS:?}); \
                 set {PORT_VAR} to a free port"
            )
        })
    });
    chosen.clone().map_err(|detail| LabError::Start {
        host: "(any)".into(),
        addr: "127.0.1.0/24".into(),
        detail,
    })
}

/// The first of [`PORTS`] that no wildcard listener in `tables` (the text of
/// /proc/net/tcp and tcp6) takes.
pub(crate) fn choose_port(tables: &[String]) -> Option<u16> {
    PORTS.into_iter().find(|port| tables.iter().all(|t| wildcard_listener(t, *port).is_none()))
}

/// An owned lab address. Dropping it frees the address.
#[derive(Debug)]
pub(crate) struct Slot {
    n: u8,
    port: u16,
    path: PathBuf,
    _lock: File,
}

impl Slot {
    pub(crate) fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, 1, self.n)
    }

    /// The port the host's sshd listens on (see [`lab_ssh_port`]).
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Takes a free slot. The search starts where this process's last one ended (and at
    /// a PID-dependent place in a new process), so a slot just freed is not handed out
    /// again at once: whatever still refers to its address (a test checking that the old
    /// host is gone, a known_hosts entry, TIME_WAIT sockets) does not meet a new host.
    pub(crate) fn acquire() -> Result<Slot, LabError> {
        static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
        let dir = state_dir()?;
        let port = lab_ssh_port()?;
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
            if let Some(slot) = try_take(&dir, n, port)? {
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

fn try_take(dir: &Path, n: u8, port: u16) -> Result<Option<Slot>, LabError> {
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
    if !wait_port_free(SocketAddr::from((Ipv4Addr::new(127, 0, 1, n), port)), STALE_GRACE) {
        let _ = std::fs::remove_file(&path); // still under our lock, see the module docs
        return Ok(None);
    }
    // For people reading the state dir: who owns the slot.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(Some(Slot { n, port, path, _lock: file }))
}

/// Removes lock files left by processes that died without dropping their slots (the
/// lock itself died with them): those we can lock and that still name the file we hold.
pub(crate) fn sweep_stale(dir: &Path) {
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

/// True once nothing listens on `addr` (checked by binding it ourselves).
fn wait_port_free(addr: SocketAddr, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        if TcpListener::bind(addr).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A socket in `table` (the text of /proc/net/tcp or tcp6) listening on `port` of
/// every address (`0.0.0.0` or `[::]`): no lab host can bind that port then.
fn wildcard_listener(table: &str, port: u16) -> Option<String> {
    const LISTEN: &str = "0A";
    let v4 = format!("00000000:{port:04X}");
    let v6 = format!("{}:{port:04X}", "0".repeat(32));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = *fields.get(1)?;
        (fields.get(3) == Some(&LISTEN) && (local == v4 || local == v6)).then(|| format!("*:{port}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    fn table(rows: &[&str]) -> String {
        let mut t = HEAD.to_owned();
        for r in rows {
            t.push_str(&format!(
                "   0: {r} 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
            ));
        }
        t
    }

    #[test]
    fn a_wildcard_listener_on_22_moves_lab_hosts_to_another_port() {
        // Nothing on 22, or only on specific addresses (another lab host, 127.0.0.1):
        // lab hosts use 22.
        assert_eq!(choose_port(&[table(&[]), table(&[])]), Some(22));
        assert_eq!(choose_port(&[table(&["0100007F:0016", "0201007F:0016"]), table(&[])]), Some(22));
        // The machine's sshd on 0.0.0.0:22 or [::]:22: the next port.
        assert_eq!(choose_port(&[table(&["00000000:0016"]), table(&[])]), Some(2222));
        let v6 = format!("{}:0016", "0".repeat(32));
        assert_eq!(choose_port(&[table(&[]), table(&[&v6])]), Some(2222));
        // ... and past any other taken one.
        assert_eq!(choose_port(&[table(&["00000000:0016", "00000000:08AE"]), table(&[])]), Some(22222));
        // A connection (not LISTEN) from port 22 does not count.
        let established = HEAD.to_owned()
            + "   0: 00000000:0016 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1\n";
        assert_eq!(choose_port(&[established]), Some(22));
    }
}
