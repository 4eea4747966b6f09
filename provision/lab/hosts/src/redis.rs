//! A throwaway Redis server on a free port of 127.0.0.1.
//!
//! It persists with an fsync'd append-only file, so a test can [`Redis::kill`] it
//! mid-stream and [`Redis::restart`] it on the same port with the same data, the way
//! a pod restart looks to the runtime.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{self, free_port, tail, wait_until};
use crate::{HarnessError, io};

pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.url()).field("running", &self.child.is_some()).finish()
    }
}

fn binary() -> Result<&'static str, HarnessError> {
    for candidate in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if Path::new(candidate).exists() {
            return Ok(candidate);
        }
    }
    Err(HarnessError::Missing { what: "redis-server".into(), hint: "apt-get install redis-server".into() })
}

impl Redis {
    pub fn start() -> Result<Self, HarnessError> {
        let dir = process::temp_dir("redis")?;
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match launch(dir.path(), port) {
                Ok(child) => return Ok(Redis { child: Some(child), port, dir }),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Failed {
            what: "redis-server".into(),
            detail: "no attempt to start it was made".into(),
        }))
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server abruptly (SIGKILL), as a crashed pod would die.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop(&mut child, libc::SIGKILL, Duration::from_secs(5));
        }
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        // The old socket can linger briefly; launch retries until the port is free.
        let mut last_err = None;
        for _ in 0..20 {
            match launch(self.dir.path(), self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => last_err = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Failed {
            what: "redis-server restart".into(),
            detail: "no attempt was made".into(),
        }))
    }

    /// The server process while it runs, for records of what a lab runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

fn launch(dir: &Path, port: u16) -> Result<Child, HarnessError> {
    let log = dir.join(format!("redis-{port}.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io("create the redis log"))?;
    let mut cmd = Command::new(binary()?);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no", "--protected-mode", "no"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(io("dup the redis log"))?)
        .stderr(log_file);
    let mut child = process::spawn(cmd, "redis-server")?;
    let pid = child.id();
    let ready = wait_until(Duration::from_secs(15), || {
        matches!(child.try_wait(), Ok(Some(_))) || serves_as(port, pid)
    });
    if ready && matches!(child.try_wait(), Ok(None)) {
        return Ok(child);
    }
    process::stop(&mut child, libc::SIGKILL, Duration::from_secs(1));
    Err(HarnessError::NotReady { what: "redis-server".into(), secs: 15, tail: tail(&log), log })
}

/// Whether the Redis answering on `port` is process `pid`: a free port can be taken by
/// another test's server between `free_port` and the bind, and then a bare PING would
/// be answered by that one while this child fails to bind.
fn serves_as(port: u16, pid: u32) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    let want = format!("\r\nprocess_id:{pid}\r\n");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while reply.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&reply).contains(&want) {
            return true;
        }
    }
    false
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
