//! One lab host: namespaces, overlay root, sshd, and running commands inside.

use std::io::{BufRead, BufReader, PipeReader, PipeWriter, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::client_key::{ClientKey, client_key};
use super::error::{LabError, io};
use super::setup::Setup;
use super::slot::Slot;

/// The script that runs as PID 1 of every lab host (see its header for the protocol).
const INIT: &str = include_str!("init.sh");
/// Generous: 32 hosts starting at once on a 2-core machine share the CPU.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SSHD_TIMEOUT: Duration = Duration::from_secs(15);
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// sshd's PATH for root on Debian; commands run through [`LabHost::exec`] see the same.
pub(crate) const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the lab's sshd logs (inside the lab root).
const SSHD_LOG: &str = "/var/log/lab-sshd.log";

/// An isolated host on this machine: private mount, UTS and PID namespaces, a
/// copy-on-write overlay of `/` as its root, its own host name and its own sshd on
/// 127.0.1.N:[`LabHost::port`] (22 unless the machine listens on *:22) that lets root in with [`LabHost::client_key_path`] only.
///
/// Dropping it (also during a panic) kills every process of the host and discards its
/// file system; so does the death of the test process that owns it.
#[derive(Debug)]
pub struct LabHost {
    name: String,
    addr: Ipv4Addr,
    port: u16,
    init_pid: u32,
    host_key: String,
    client_key: &'static ClientKey,
    /// The spawned child: parent of the lab's PID 1, outside its PID namespace.
    spawned: Child,
    /// Write end of the lifeline pipe; the lab's PID 1 exits when it reads EOF.
    lifeline: Option<PipeWriter>,
    slot: Option<Slot>,
}

impl LabHost {
    /// Starts a lab host named `name` on a free lab address.
    pub fn start(name: &str) -> Result<LabHost, LabError> {
        validate_name(name)?;
        LabHost::start_in(Slot::acquire()?, name)
    }

    pub(crate) fn start_in(slot: Slot, name: &str) -> Result<LabHost, LabError> {
        validate_name(name)?;
        let client_key = client_key()?;
        let addr = slot.addr();
        let port = slot.port();
        let (lifeline_r, lifeline_w) = std::io::pipe().map_err(io("create a lifeline pipe"))?;
        let (out_r, out_w) = std::io::pipe().map_err(io("create an output pipe"))?;
        let err_w = out_w.try_clone().map_err(io("duplicate an output pipe"))?;
        let setup = Setup::new(name).map_err(io(format!("prepare lab host {name}")))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", INIT, "lab-init", name])
            .arg(addr.to_string())
            .arg(&client_key.public_key)
            .arg(port.to_string())
            .env_clear()
            .env("PATH", ROOT_PATH)
            .stdin(lifeline_r)
            .stdout(out_w)
            .stderr(err_w);
        // SAFETY: `enter` makes only async-signal-safe system calls (see setup.rs).
        unsafe {
            cmd.pre_exec(move || setup.enter());
        }
        let spawned = cmd.spawn();
        // Closes our copies of the child's pipe ends, so EOF on `out_r` means it is done.
        drop(cmd);
        let spawned = match spawned {
            Ok(child) => child,
            Err(e) => {
                // The step that failed is on the output pipe.
                let output = read_ready(out_r, Duration::from_secs(2)).err().unwrap_or_default();
                return Err(LabError::Start {
                    host: name.to_string(),
                    addr: addr.to_string(),
                    detail: format!("{e} ({})", output.trim()),
                });
            }
        };
        let mut host = LabHost {
            name: name.to_string(),
            addr,
            port,
            init_pid: 0,
            host_key: String::new(),
            client_key,
            spawned,
            lifeline: Some(lifeline_w),
            slot: Some(slot),
        };
        // From here on, an early return drops `host`, which tears down what started.
        let (pid, key) = read_ready(out_r, READY_TIMEOUT).map_err(|detail| host.start_error(detail))?;
        host.init_pid = pid;
        host.host_key = key;
        host.wait_for_sshd(SSHD_TIMEOUT)?;
        Ok(host)
    }

    fn start_error(&self, detail: String) -> LabError {
        LabError::Start { host: self.name.clone(), addr: self.addr.to_string(), detail }
    }

    /// The host name, as `hostname` prints it inside.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 127.0.1.N: where its sshd listens. The lab shares the machine's network namespace.
    pub fn addr(&self) -> IpAddr {
        IpAddr::V4(self.addr)
    }

    /// The SSH port: 22, as on a real host, unless something on this machine listens
    /// on the wildcard address of 22 (then 2222 or the next free of a few; or
    /// `LAB_SSH_PORT`). Inventories and clients must use it.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `addr():port()`.
    pub fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr, self.port))
    }

    /// The user whose login the client key opens.
    pub fn ssh_user(&self) -> &str {
        "root"
    }

    /// Private key (OpenSSH format, ed25519, no passphrase) that root of every lab host
    /// accepts. Shared by all lab hosts; do not modify or delete it.
    pub fn client_key_path(&self) -> &Path {
        &self.client_key.private_key
    }

    /// The public half of [`LabHost::client_key_path`], as in `authorized_keys`.
    pub fn client_public_key(&self) -> &str {
        &self.client_key.public_key
    }

    /// Public host key of this host's sshd (`ssh-ed25519 AAAA...`), fresh per host.
    pub fn host_public_key(&self) -> &str {
        &self.host_key
    }

    /// A `known_hosts` line pinning this host's key: `127.0.1.N ssh-ed25519 AAAA...`
    /// (`[127.0.1.N]:PORT ...` when the port is not 22, as OpenSSH writes it).
    pub fn known_hosts_line(&self) -> String {
        if self.port == 22 {
            format!("{} {}", self.addr, self.host_key)
        } else {
            format!("[{}]:{} {}", self.addr, self.port, self.host_key)
        }
    }

    /// PID (as this machine sees it) of the host's PID 1; its `/proc/PID/ns/*` are the
    /// host's namespaces.
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// Inside the host: a read-only view of its overlay's upper layer, i.e. every file,
    /// directory and metadata change the host made to its root file system (/run, /tmp and
    /// /dev are tmpfs of their own and not in it). Compare it before and after to prove that
    /// something changed nothing.
    pub const UPPER_DIR: &'static str = "/dev/.lab-upper";

    /// The host's root directory as seen from this machine (`/proc/PID/root`).
    /// Beware: absolute symlinks inside resolve against the machine's root when
    /// followed from here; [`LabHost::read_file`] and [`LabHost::write_file`] do not
    /// have that problem.
    pub fn root_dir(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.init_pid))
    }

    /// Runs `command` with `/bin/sh -c` inside the host (its namespaces and root) as
    /// root, without SSH: for setting up and checking tests. The environment is a
    /// root login's: PATH, HOME, USER, LOGNAME.
    pub fn exec(&self, command: &str) -> Result<Output, LabError> {
        self.run(command, &[], &[], None)
    }

    /// Like [`LabHost::exec`], feeding `stdin` to the command.
    pub fn exec_with_stdin(&self, command: &str, stdin: &[u8]) -> Result<Output, LabError> {
        self.run(command, &[], &[], Some(stdin))
    }

    /// Runs `command` like [`LabHost::exec`] and returns its stdout; a non-zero exit is
    /// an error carrying stderr.
    pub fn sh(&self, command: &str) -> Result<String, LabError> {
        let out = self.check(command, self.exec(command)?)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Reads a file of the host.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, LabError> {
        self.check_path(path)?;
        let command = r#"exec cat -- "$1""#;
        let out = self.run(command, &[path], &[], None)?;
        Ok(self.check(&format!("cat {path}"), out)?.stdout)
    }

    /// Reads a UTF-8 file of the host.
    pub fn read_to_string(&self, path: &str) -> Result<String, LabError> {
        let bytes = self.read_file(path)?;
        String::from_utf8(bytes).map_err(|e| LabError::Malformed {
            host: self.name.clone(),
            what: path.to_string(),
            detail: format!("not UTF-8: {e}"),
        })
    }

    /// Writes a file of the host (creating missing parent directories), replacing what
    /// was there.
    pub fn write_file(&self, path: &str, contents: impl AsRef<[u8]>) -> Result<(), LabError> {
        self.check_path(path)?;
        let command = r#"mkdir -p -- "$(dirname -- "$1")" && exec cat >"$1""#;
        let out = self.run(command, &[path], &[], Some(contents.as_ref()))?;
        self.check(&format!("write {path}"), out).map(drop)
    }

    /// Writes several text files in one go (used to install stand-ins): `(path, mode,
    /// contents)`.
    pub(crate) fn write_text_files(&self, files: &[(String, u32, &str)]) -> Result<(), LabError> {
        let mut env = Vec::with_capacity(files.len() * 3);
        for (i, (path, mode, contents)) in files.iter().enumerate() {
            self.check_path(path)?;
            env.push((format!("LAB_P{i}"), path.clone()));
            env.push((format!("LAB_M{i}"), format!("{mode:o}")));
            env.push((format!("LAB_F{i}"), contents.to_string()));
        }
        let command = r#"set -e; i=0
            while eval "p=\${LAB_P$i-}"; [ -n "$p" ]; do
                eval "m=\$LAB_M$i"
                mkdir -p -- "$(dirname -- "$p")"
                eval "printf '%s' \"\$LAB_F$i\"" >"$p"
                chmod "$m" "$p"
                i=$((i + 1))
            done"#;
        let out = self.run(command, &[], &env, None)?;
        self.check("install files", out).map(drop)
    }

    /// Kills the host's sshd and every SSH session, as when a host goes down. New
    /// connections are refused until [`LabHost::start_sshd`].
    pub fn kill_sshd(&self) -> Result<(), LabError> {
        self.sh("pkill -KILL -x sshd || true")?;
        let deadline = Instant::now() + SSHD_TIMEOUT;
        while self.sshd_accepts() {
            if Instant::now() >= deadline {
                return Err(LabError::SshdStillUp {
                    host: self.name.clone(),
                    addr: self.ssh_addr().to_string(),
                    secs: SSHD_TIMEOUT.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Starts the host's sshd (after [`LabHost::kill_sshd`]) and waits until it listens.
    pub fn start_sshd(&self) -> Result<(), LabError> {
        self.sh(&format!("/usr/sbin/sshd -E {SSHD_LOG}"))?;
        self.wait_for_sshd(SSHD_TIMEOUT)
    }

    /// Waits until the host's sshd accepts connections, e.g. after a modelled reboot.
    pub fn wait_for_sshd(&self, timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sshd_accepts() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = self.read_to_string(SSHD_LOG).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let log_tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
                return Err(LabError::SshdNotReady {
                    host: self.name.clone(),
                    addr: self.ssh_addr().to_string(),
                    secs: timeout.as_secs(),
                    log_tail,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn sshd_accepts(&self) -> bool {
        TcpStream::connect_timeout(&self.ssh_addr(), Duration::from_millis(500)).is_ok()
    }

    fn check_path(&self, path: &str) -> Result<(), LabError> {
        let reason = if !path.starts_with('/') {
            "must be absolute"
        } else if path.contains('\0') {
            "contains a NUL byte"
        } else {
            return Ok(());
        };
        Err(LabError::BadPath { host: self.name.clone(), path: path.to_string(), reason: reason.into() })
    }

    /// `out` if the command succeeded, else an error naming it and carrying its stderr.
    fn check(&self, command: &str, out: Output) -> Result<Output, LabError> {
        if out.status.success() {
            return Ok(out);
        }
        Err(LabError::Command {
            host: self.name.clone(),
            command: command.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// `nsenter` into the host's namespaces and root, running `sh -c script sh args...`.
    fn run(
        &self,
        script: &str,
        args: &[&str],
        env: &[(String, String)],
        stdin: Option<&[u8]>,
    ) -> Result<Output, LabError> {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.init_pid.to_string())
            .args(["-m", "-u", "-p", "-r", "-w", "--", "/bin/sh", "-c", script, "sh"])
            .args(args)
            .env_clear()
            .envs([("PATH", ROOT_PATH), ("HOME", "/root"), ("USER", "root"), ("LOGNAME", "root")])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let context = || format!("run a command on lab host {}", self.name);
        let mut child = cmd.spawn().map_err(io(context()))?;
        let input = child.stdin.take();
        std::thread::scope(|s| {
            if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
                // A command that does not read its input just closes the pipe early.
                s.spawn(move || {
                    let _ = pipe.write_all(bytes);
                });
            }
            child.wait_with_output().map_err(io(context()))
        })
    }
}

impl LabHost {
    /// Closes the lifeline: the host starts going down; `Drop` waits for it.
    pub(crate) fn begin_teardown(&mut self) {
        self.lifeline.take();
    }
}

impl Drop for LabHost {
    fn drop(&mut self) {
        // EOF on the lifeline: PID 1 exits and the kernel kills everything else in the
        // PID namespace; with the last process the mount namespace and its mounts go.
        self.begin_teardown();
        if !wait_exit(&mut self.spawned, TEARDOWN_TIMEOUT) {
            // Stuck before it reads the lifeline (still setting up): PID 1 dies with
            // its parent, the spawned child (see setup.rs).
            let _ = self.spawned.kill();
            let _ = self.spawned.wait();
        }
        self.slot.take();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// Reads the lab's start-up output: `pid HOST_PID` (from setup.rs), diagnostics, and the
/// init script's `ready KEYTYPE KEY`.
fn read_ready(out: PipeReader, timeout: Duration) -> Result<(u32, String), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        let mut pid = None;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(p) = line.strip_prefix("pid ") {
                pid = p.trim().parse::<u32>().ok();
                continue;
            }
            if let Some(key) = line.strip_prefix("ready ") {
                let _ = tx.send(match pid {
                    Some(pid) if pid > 1 && !key.is_empty() => Ok((pid, key.to_string())),
                    _ => Err(format!("malformed start-up output {seen:?} then {line:?}")),
                });
                return;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = tx.send(Err(format!("its init exited during set-up; output:\n{seen}")));
    });
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(format!("not set up after {} s", timeout.as_secs())),
    }
}

/// Host names must be valid DNS labels: they become the host's `hostname`.
pub(crate) fn validate_name(name: &str) -> Result<(), LabError> {
    let bad = |reason: &str| Err(LabError::BadName { name: name.to_string(), reason: reason.to_string() });
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters long");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return bad("may contain only ASCII letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return bad("must not start or end with '-'");
    }
    Ok(())
}
