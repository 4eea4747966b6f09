//! A throwaway PostgreSQL server: `initdb` into a temp dir, `postgres` on a free
//! port of 127.0.0.1, one database created; stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI does) the
//! server runs as the `postgres` user that Debian's package creates.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{self, free_port, tail, wait_until};
use crate::{HarnessError, io};

pub struct Postgres {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    database: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("url", &self.url()).finish()
    }
}

/// Debian installs the server binaries outside PATH, per major version.
fn bin_dir() -> Result<PathBuf, HarnessError> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| HarnessError::Missing {
        what: "PostgreSQL server binaries".into(),
        hint: "apt-get install postgresql (or set PG_BIN_DIR)".into(),
    })
}

/// The uid/gid to run the server as: ourselves, or `postgres` when we are root.
fn server_user() -> Result<Option<(u32, u32)>, HarnessError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(io("read /etc/passwd"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"postgres") && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .map(Some)
        .ok_or_else(|| HarnessError::Missing {
            what: "user postgres (PostgreSQL refuses to run as root)".into(),
            hint: "apt-get install postgresql creates it".into(),
        })
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
}

fn chown_tree(path: &Path, user: Option<(u32, u32)>) -> Result<(), HarnessError> {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

impl Postgres {
    /// Starts a server with one database named `test`.
    pub fn start() -> Result<Self, HarnessError> {
        let bin = bin_dir()?;
        let user = server_user()?;
        let dir = process::temp_dir("postgres")?;
        // The root of all harness dirs must be traversable by the postgres user.
        if let Some(parent) = dir.path().parent() {
            let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755));
        }
        chown_tree(dir.path(), user)?;
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        as_user(&mut initdb, user);
        let out = initdb.output().map_err(io("run initdb"))?;
        if !out.status.success() {
            return Err(HarnessError::Failed {
                what: "initdb".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }

        // A free port can be taken by someone else before we bind it: try a few.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            match Self::launch(&bin, user, dir.path(), &data, port) {
                Ok(child) => {
                    let pg = Postgres { child, port, dir, database: "test".into() };
                    pg.create_database_named("test")?;
                    return Ok(pg);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| HarnessError::Failed {
            what: "postgres".into(),
            detail: "no attempt to start it was made".into(),
        }))
    }

    fn launch(
        bin: &Path,
        user: Option<(u32, u32)>,
        dir: &Path,
        data: &Path,
        port: u16,
    ) -> Result<Child, HarnessError> {
        let log = dir.join("postgres.log");
        let log_file = std::fs::File::create(&log).map_err(io("create the postgres log"))?;
        chown_tree(&log, user)?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir)
            // Durability is pointless for a database that is deleted after the test.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(io("dup the postgres log"))?)
            .stderr(log_file);
        as_user(&mut cmd, user);
        let mut child = process::spawn(cmd, "postgres")?;
        let ready = wait_until(Duration::from_secs(30), || {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return true;
            }
            pg_isready(bin, dir, port)
        });
        if ready && matches!(child.try_wait(), Ok(None)) {
            return Ok(child);
        }
        process::stop(&mut child, libc::SIGKILL, Duration::from_secs(1));
        Err(HarnessError::NotReady { what: "postgres".into(), secs: 30, tail: tail(&log), log })
    }

    /// `postgres://postgres@127.0.0.1:PORT/test`
    pub fn url(&self) -> String {
        self.url_for(&self.database)
    }

    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates another empty database on this server and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, HarnessError> {
        self.create_database_named(name)?;
        Ok(self.url_for(name))
    }

    fn create_database_named(&self, name: &str) -> Result<(), HarnessError> {
        let bin = bin_dir()?;
        let createdb = bin.parent().map(|p| p.join("bin/createdb")).unwrap_or_else(|| "createdb".into());
        let out = Command::new(createdb)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .stdin(Stdio::null())
            .output()
            .map_err(io("run createdb"))?;
        if !out.status.success() {
            return Err(HarnessError::Failed {
                what: format!("createdb {name}"),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// The server process (the postmaster), for records of what a lab runs.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's data and log directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn pg_isready(bin: &Path, dir: &Path, port: u16) -> bool {
    Command::new(bin.join("pg_isready"))
        .arg("-h")
        .arg(dir)
        .args(["-p", &port.to_string(), "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it ends sessions and exits cleanly.
        process::stop(&mut self.child, libc::SIGINT, Duration::from_secs(10));
    }
}
