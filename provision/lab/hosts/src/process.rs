//! Starting and stopping server processes for tests.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{HarnessError, io};

type Request = (Command, mpsc::Sender<std::io::Result<Child>>);

/// A thread that lives as long as the process. Linux's parent-death signal fires when
/// the *thread* that forked exits, so children are forked from here rather than from
/// a test's thread, which ends before the process does.
fn spawner() -> &'static Mutex<mpsc::Sender<Request>> {
    static SPAWNER: std::sync::OnceLock<Mutex<mpsc::Sender<Request>>> = std::sync::OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so the loop never ends while the process runs.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the harness spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` so that it is killed when the test process dies.
pub(crate) fn spawn(mut cmd: Command, what: &str) -> Result<Child, HarnessError> {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, tx))
        .map_err(|_| HarnessError::Failed { what: what.into(), detail: "spawner thread is gone".into() })?;
    rx.recv()
        .map_err(|_| HarnessError::Failed { what: what.into(), detail: "spawner thread is gone".into() })?
        .map_err(io(format!("start {what}")))
}

/// Sends `signal`, waits up to `grace` for the child to exit, then kills it.
pub(crate) fn stop(child: &mut Child, signal: i32, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A free TCP port on 127.0.0.1. Another process may take it before the server binds;
/// callers retry start-up on a bind failure.
pub(crate) fn free_port() -> Result<u16, HarnessError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("find a free port"))?;
    Ok(listener.local_addr().map_err(io("find a free port"))?.port())
}

/// Root of all harness temp dirs: `<tmp>/chutes-harness/<pid>-<name>-<random>`.
fn root() -> PathBuf {
    std::env::temp_dir().join("chutes-harness")
}

/// A fresh temp dir for one server, named after the owning process so that dirs of
/// processes that died without cleaning up can be found and removed.
pub(crate) fn temp_dir(name: &str) -> Result<tempfile::TempDir, HarnessError> {
    let root = root();
    std::fs::create_dir_all(&root).map_err(io(format!("create {}", root.display())))?;
    sweep_dead(&root);
    tempfile::Builder::new()
        .prefix(&format!("{}-{name}-", std::process::id()))
        .tempdir_in(&root)
        .map_err(io(format!("create a temp dir in {}", root.display())))
}

fn sweep_dead(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.split('-').next()).and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Polls `ready` every 25 ms until it returns true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
