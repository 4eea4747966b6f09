//! Connection, authentication, command execution and uploads.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, Disconnect, Sig};

use crate::hostkey::Verifier;
use crate::{Options, SshError, Target, shell_quote};

pub(crate) struct Client {
    verifier: Verifier,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(self.verifier.check(key))
    }
}

/// Everything a command produced. `status` is `None` when the process was killed by a signal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub status: Option<u32>,
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// An authenticated connection to one host, reused for every command.
pub struct Session {
    name: String,
    handle: Handle<Client>,
    /// Kept alive for as long as the target connection runs through it.
    _jump: Option<Box<Session>>,
    /// Prefix that makes a command run as root (`sudo -n`), empty for root logins.
    become_prefix: &'static str,
    target: Target,
    options: Options,
    /// Open while this session holds the host lock (see [`Session::lock`]).
    lock: Option<russh::Channel<client::Msg>>,
    lock_owner: Option<String>,
}

/// What a connection is for. A jump host only authenticates and forwards: it runs nothing,
/// so it needs no root and is not probed for `sudo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Target,
    Jump,
}

impl Role {
    fn runs_commands(self) -> bool {
        self == Role::Target
    }
}

fn addr_of(t: &Target) -> String {
    format!("{}:{}", t.address, t.port)
}

impl Session {
    /// Connects, verifies the host key, authenticates and checks that commands can run as root.
    pub async fn connect(target: &Target, options: &Options) -> Result<Session, SshError> {
        let secs = options.connect_timeout.as_secs();
        match tokio::time::timeout(
            options.connect_timeout,
            Self::connect_inner(target, options, Role::Target),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                Err(SshError::ConnectTimeout { host: target.name.clone(), addr: addr_of(target), secs })
            }
        }
    }

    /// Connects again with the same target and options (after a reboot, say), taking the
    /// host lock again if this session held it.
    pub async fn reconnect(&self) -> Result<Session, SshError> {
        let mut s = Session::connect(&self.target, &self.options).await?;
        if let Some(owner) = &self.lock_owner {
            s.lock(owner).await?;
        }
        Ok(s)
    }

    fn connect_inner<'a>(
        target: &'a Target,
        options: &'a Options,
        role: Role,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Session, SshError>> + Send + 'a>> {
        Box::pin(async move {
            let host = target.name.clone();
            let pinned = match &target.pinned_host_key {
                Some(k) => Some(
                    russh::keys::PublicKey::from_openssh(k.trim())
                        .map_err(|e| SshError::BadPinnedKey { host: host.clone(), reason: e.to_string() })?,
                ),
                None => None,
            };
            let verdict = Arc::new(Mutex::new(None));
            let handler = Client {
                verifier: Verifier {
                    host: host.clone(),
                    address: target.address.clone(),
                    port: target.port,
                    pinned,
                    known_hosts: options.known_hosts.clone(),
                    policy: options.policy,
                    verdict: verdict.clone(),
                },
            };
            let config = Arc::new(client::Config {
                keepalive_interval: Some(options.keepalive),
                keepalive_max: 3,
                // Without keepalives answered, the session ends; no separate inactivity limit, so
                // long silent commands (apt, driver builds) are not cut off (russh#211).
                inactivity_timeout: None,
                nodelay: true,
                ..Default::default()
            });
            let refused = |e: russh::Error| -> SshError {
                if let Some(v) = verdict.lock().ok().and_then(|mut v| v.take()) {
                    return v;
                }
                SshError::Connect { host: host.clone(), addr: addr_of(target), reason: e.to_string() }
            };
            let (handle, jump) = match &target.jump {
                None => (
                    client::connect(config, (target.address.as_str(), target.port), handler)
                        .await
                        .map_err(refused)?,
                    None,
                ),
                Some(j) => {
                    let jump = Session::connect_inner(j, options, Role::Jump).await.map_err(|e| {
                        SshError::Jump { host: host.clone(), jump: addr_of(j), source: Box::new(e) }
                    })?;
                    let channel = jump
                        .handle
                        .channel_open_direct_tcpip(
                            target.address.clone(),
                            u32::from(target.port),
                            "127.0.0.1",
                            0,
                        )
                        .await
                        .map_err(|e| SshError::Jump {
                            host: host.clone(),
                            jump: addr_of(j),
                            source: Box::new(SshError::Connect {
                                host: j.name.clone(),
                                addr: addr_of(target),
                                reason: format!("direct-tcpip channel refused: {e}"),
                            }),
                        })?;
                    let h = client::connect_stream(config, channel.into_stream(), handler)
                        .await
                        .map_err(refused)?;
                    (h, Some(Box::new(jump)))
                }
            };
            let mut session = Session {
                name: host.clone(),
                handle,
                _jump: jump,
                become_prefix: "",
                target: target.clone(),
                options: options.clone(),
                lock: None,
                lock_owner: None,
            };
            session.authenticate(target).await?;
            if role.runs_commands() && target.user != "root" {
                session.become_prefix = "sudo -n -- ";
                let out = session.exec_raw("sudo -n true", None, Duration::from_secs(30)).await?;
                if !out.success() {
                    let err = out.stderr_str();
                    if err.contains("password") || err.contains("terminal") {
                        return Err(SshError::SudoNeedsPassword { host, user: target.user.clone() });
                    }
                    return Err(SshError::Connect {
                        host,
                        addr: addr_of(target),
                        reason: format!("`sudo -n true` failed: {}", err.trim()),
                    });
                }
            }
            Ok(session)
        })
    }

    async fn authenticate(&mut self, target: &Target) -> Result<(), SshError> {
        let user = target.user.clone();
        let mut tried = vec![];
        let hash = self.handle.best_supported_rsa_hash().await.ok().flatten().flatten();
        let auth_err =
            |e: russh::Error| SshError::Disconnected { host: target.name.clone(), reason: e.to_string() };

        let keys: Vec<(PathBuf, PrivateKey)> = match &target.key {
            Some(path) => {
                let key_err = |reason: String| SshError::Key {
                    host: target.name.clone(),
                    path: path.display().to_string(),
                    reason,
                };
                match read_key_file(path).map_err(key_err)? {
                    KeyFile::Usable(key) => vec![(path.clone(), *key)],
                    // minerctl never asks for passphrases: the agent may hold the key unlocked.
                    KeyFile::Encrypted(public) => {
                        let add = format!("run `ssh-add {}` where minerctl runs", path.display());
                        return match self.try_agent(&user, hash, public.as_ref(), &mut tried).await {
                            Ok(Agent::Accepted) => Ok(()),
                            Ok(Agent::Refused) => Err(SshError::Auth {
                                host: target.name.clone(),
                                user,
                                tried: tried.join(", "),
                            }),
                            Ok(Agent::NotHeld) => Err(key_err(format!(
                                "it has a passphrase and ssh-agent does not hold it; minerctl never asks for \
                                 passphrases: {add}"
                            ))),
                            Err(why) => Err(key_err(format!(
                                "it has a passphrase and ssh-agent cannot be used ({why}); minerctl never asks \
                                 for passphrases: start ssh-agent and {add}"
                            ))),
                        };
                    }
                }
            }
            None => {
                // Agent first: keys with passphrases live there.
                match self.try_agent(&user, hash, None, &mut tried).await {
                    Ok(Agent::Accepted) => return Ok(()),
                    Ok(_) => {}
                    Err(why) => tracing::debug!(host = %target.name, "ssh-agent not used: {why}"),
                }
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
                let defaults: Vec<PathBuf> =
                    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|n| home.join(".ssh").join(n)).collect();
                usable_default_keys(&defaults, &mut tried)
            }
        };
        for (path, key) in keys {
            tried.push(format!("key file {}", path.display()));
            let res = self
                .handle
                .authenticate_publickey(user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
                .map_err(auth_err)?;
            if res.success() {
                return Ok(());
            }
        }
        if tried.is_empty() {
            tried.push("no key: set ssh.key or start ssh-agent".into());
        }
        Err(SshError::Auth { host: target.name.clone(), user, tried: tried.join(", ") })
    }

    /// Offers ssh-agent's identities (only `only`, when given); notes each in `tried`.
    /// `Err` says why the agent cannot be used at all.
    async fn try_agent(
        &mut self,
        user: &str,
        hash: Option<HashAlg>,
        only: Option<&PublicKey>,
        tried: &mut Vec<String>,
    ) -> Result<Agent, String> {
        if std::env::var_os("SSH_AUTH_SOCK").is_none() {
            return Err("SSH_AUTH_SOCK is not set".into());
        }
        let mut agent = AgentClient::connect_env()
            .await
            .map_err(|e| format!("cannot reach the agent at SSH_AUTH_SOCK: {e}"))?;
        let ids =
            agent.request_identities().await.map_err(|e| format!("the agent did not list its keys: {e}"))?;
        let mut offered = false;
        for id in ids {
            let key = id.public_key().into_owned();
            if only.is_some_and(|o| o.key_data() != key.key_data()) {
                continue;
            }
            offered = true;
            tried.push(format!("agent key {}", crate::fingerprint(&key)));
            let res = self.handle.authenticate_publickey_with(user.to_string(), key, hash, &mut agent).await;
            if matches!(res, Ok(r) if r.success()) {
                return Ok(Agent::Accepted);
            }
        }
        Ok(if offered { Agent::Refused } else { Agent::NotHeld })
    }

    /// Takes the host's provisioning lock (`/run/minerctl.lock`, flock) for as long as this
    /// session lives, so that two operators cannot run on one host at once. The lock is held
    /// by a command whose stdin is this connection: when the connection ends, for whatever
    /// reason, the lock is released by the host itself.
    pub async fn lock(&mut self, owner: &str) -> Result<(), SshError> {
        let host = self.name.clone();
        let lost = |e: russh::Error| SshError::Disconnected { host: host.clone(), reason: e.to_string() };
        let script = format!(
            "exec 9>>/run/minerctl.lock; if ! flock -n 9; then echo \"BUSY $(cat /run/minerctl.lock.owner 2>/dev/null)\"; exit 75; fi; \
             echo {o} > /run/minerctl.lock.owner; echo LOCKED; exec cat >/dev/null",
            o = shell_quote(owner)
        );
        let wrapped = if self.become_prefix.is_empty() {
            script
        } else {
            format!("{}sh -c {}", self.become_prefix, shell_quote(&script))
        };
        let mut ch = self.handle.channel_open_session().await.map_err(lost)?;
        ch.exec(true, wrapped.as_bytes()).await.map_err(lost)?;
        let mut seen = Vec::new();
        let wait = async {
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        seen.extend_from_slice(&data);
                        if seen.ends_with(b"\n") {
                            break;
                        }
                    }
                    ChannelMsg::ExitStatus { .. } | ChannelMsg::Close => break,
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(Duration::from_secs(30), wait).await.is_err() {
            return Err(SshError::CommandTimeout {
                host,
                command: "take /run/minerctl.lock".into(),
                secs: 30,
            });
        }
        let line = String::from_utf8_lossy(&seen).trim().to_string();
        if line == "LOCKED" {
            self.lock = Some(ch);
            self.lock_owner = Some(owner.to_string());
            return Ok(());
        }
        match line.strip_prefix("BUSY") {
            Some(holder) => Err(SshError::Locked { host, holder: holder.trim().to_string() }),
            None => Err(SshError::Connect {
                host,
                addr: addr_of(&self.target),
                reason: format!("cannot take /run/minerctl.lock: {line}"),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `command` through `sh -c` as root, with optional stdin, within `timeout`. A command
    /// past its timeout is stopped (SIGTERM, then SIGKILL) before the error returns, which takes
    /// a few seconds more.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let wrapped = if self.become_prefix.is_empty() {
            command.to_string()
        } else {
            format!("{}sh -c {}", self.become_prefix, shell_quote(command))
        };
        self.exec_raw(&wrapped, stdin, timeout).await
    }

    async fn exec_raw(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, SshError> {
        let host = self.name.clone();
        let lost = |e: russh::Error| SshError::Disconnected { host: host.clone(), reason: e.to_string() };
        let timed_out = || SshError::CommandTimeout {
            host: self.name.clone(),
            command: command.chars().take(120).collect(),
            secs: timeout.as_secs(),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // Opening the channel is not cut short at the deadline: an open dropped half-way
        // leaves a session on the server that nobody can close. A server that does not answer
        // within 30 s is dead (keepalives end the connection soon after).
        let mut ch = match tokio::time::timeout(
            timeout.max(Duration::from_secs(30)),
            self.handle.channel_open_session(),
        )
        .await
        {
            Ok(r) => r.map_err(lost)?,
            Err(_) => return Err(timed_out()),
        };
        // The command's process group is the login shell sshd started (a session leader, so
        // `$$`), reported as the first line on stderr. It, the channel and the stderr parser
        // outlive a timed-out `run`, so that the command can be stopped.
        let mut pgid: Option<u32> = None;
        let mut head = StderrHead::default();
        let marked = format!("printf '{PGID_MARK}%s\\n' \"$$\" >&2; {command}");
        let run = async {
            ch.exec(true, marked.as_bytes()).await.map_err(lost)?;
            if let Some(input) = stdin {
                ch.data_bytes(input.to_vec()).await.map_err(lost)?;
            }
            ch.eof().await.map_err(lost)?;
            let mut out = Output::default();
            let mut closed = false;
            // Keep reading after ExitStatus: servers send data after it (russh#222).
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        if let Some(p) = head.push(&data, &mut out.stderr) {
                            pgid = Some(p);
                        }
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        out.signal = Some(format!("{signal_name:?}"))
                    }
                    ChannelMsg::Close => closed = true,
                    _ => {}
                }
            }
            head.finish(&mut out.stderr);
            finish(&host, out, closed, self.handle.is_closed())
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(r) => r,
            Err(_) => {
                self.stop(ch, pgid, &mut head).await;
                Err(timed_out())
            }
        }
    }

    /// Stops the command of a channel given up on (timed out). Dropping a russh channel sends
    /// nothing, and sshd keeps a session whose command still runs (holding one of its
    /// MaxSessions, 10 by default) even after the channel is closed. So: SIGTERM, then SIGKILL
    /// if the command is still there 2 s later, each both as an SSH `signal` request and as
    /// `kill` of its process group over a second channel (sshd refuses `signal` requests for
    /// root logins: "session signalling requires privilege separation"); then wait for sshd's
    /// Close (russh answers it), or close the channel ourselves after 3 s more. A final round
    /// trip makes sure sshd has handled our Close, and freed the session, before the next
    /// command opens one. Takes at most about 9 s more than the timeout itself.
    async fn stop(&self, mut ch: Channel<client::Msg>, mut pgid: Option<u32>, head: &mut StderrHead) {
        async fn closed_within(ch: &mut Channel<client::Msg>, limit: Duration) -> bool {
            let wait = async {
                while let Some(msg) = ch.wait().await {
                    if matches!(msg, ChannelMsg::Close) {
                        return;
                    }
                }
            };
            tokio::time::timeout(limit, wait).await.is_ok()
        }
        let _ = ch.signal(Sig::TERM).await;
        if pgid.is_none() {
            // A slow start: the command may not have reported its process group yet.
            let wait = async {
                let mut ignored = Vec::new();
                while let Some(msg) = ch.wait().await {
                    match msg {
                        ChannelMsg::ExtendedData { data, ext: 1 } => {
                            if let Some(p) = head.push(&data, &mut ignored) {
                                return Some(Some(p));
                            }
                        }
                        ChannelMsg::Close => return None,
                        _ => {}
                    }
                }
                None
            };
            match tokio::time::timeout(Duration::from_secs(2), wait).await {
                Ok(Some(p)) => pgid = p,
                // Closed: nothing left to stop.
                Ok(None) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.handle.send_ping()).await;
                    return;
                }
                Err(_) => {}
            }
        }
        self.kill_group(pgid, "TERM").await;
        if !closed_within(&mut ch, Duration::from_secs(2)).await {
            let _ = ch.signal(Sig::KILL).await;
            self.kill_group(pgid, "KILL").await;
            if !closed_within(&mut ch, Duration::from_secs(3)).await {
                tracing::warn!(host = %self.name, "a timed-out command did not stop; closing its channel");
                let _ = ch.close().await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.handle.send_ping()).await;
    }

    /// `kill -SIG -- -PGID` as root, over a channel of its own; best effort, at most 2 s.
    async fn kill_group(&self, pgid: Option<u32>, signal: &str) {
        // Never `kill -- -1` (every process) or `-0` (the killer's own group).
        let Some(pgid) = pgid.filter(|p| *p > 1) else { return };
        let command = format!("{}kill -{signal} -- -{pgid}", self.become_prefix);
        let run = async {
            let mut ch = self.handle.channel_open_session().await.ok()?;
            ch.exec(true, command.as_bytes()).await.ok()?;
            ch.eof().await.ok()?;
            while ch.wait().await.is_some() {}
            Some(())
        };
        if tokio::time::timeout(Duration::from_secs(2), run).await.is_err() {
            tracing::warn!(host = %self.name, %command, "could not stop a timed-out command");
        }
    }

    /// Writes `content` to `path` atomically (temp file + rename) with `mode` (octal, e.g. 0o644)
    /// and `owner` (`user:group`). Returns the command's output; fails if it did not succeed.
    pub async fn upload(
        &self,
        path: &str,
        content: &[u8],
        mode: u32,
        owner: &str,
    ) -> Result<Output, SshError> {
        let p = shell_quote(path);
        let tmp = shell_quote(&format!("{path}.minerctl-tmp"));
        let script = format!(
            "set -e; umask 077; cat > {tmp}; chmod {mode:o} {tmp}; chown {owner} {tmp}; mv -f {tmp} {p}",
            owner = shell_quote(owner)
        );
        self.exec(&script, Some(content), Duration::from_secs(120)).await
    }

    /// Politely closes the connection (and the jump connection, when dropped).
    pub async fn close(self) {
        let _ = self.handle.disconnect(Disconnect::ByApplication, "done", "en").await;
    }
}

/// What ssh-agent achieved.
enum Agent {
    Accepted,
    /// Keys were offered, the server took none.
    Refused,
    /// The agent holds no (matching) key.
    NotHeld,
}

/// A private key file as found on disk.
enum KeyFile {
    Usable(Box<PrivateKey>),
    /// Has a passphrase. Its public half, where the file (OpenSSH format) or a `.pub` beside
    /// it shows it without decrypting.
    Encrypted(Option<PublicKey>),
}

/// Reads a private key file without a passphrase. `Err` is why it cannot be used (never the
/// key's content).
fn read_key_file(path: &Path) -> Result<KeyFile, String> {
    match russh::keys::load_secret_key(path, None) {
        Ok(key) => Ok(KeyFile::Usable(Box::new(key))),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let public = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| PrivateKey::from_openssh(text.trim()).ok())
                .map(|k| k.public_key().clone())
                .or_else(|| {
                    let mut pub_path = path.as_os_str().to_owned();
                    pub_path.push(".pub");
                    PublicKey::read_openssh_file(Path::new(&pub_path)).ok()
                });
            Ok(KeyFile::Encrypted(public))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The default key files that exist and load without a passphrase, in order; the others are
/// skipped with a note in `tried` (an encrypted id_ed25519 does not stop id_ecdsa or id_rsa).
fn usable_default_keys(paths: &[PathBuf], tried: &mut Vec<String>) -> Vec<(PathBuf, PrivateKey)> {
    let mut keys = vec![];
    for path in paths.iter().filter(|p| p.exists()) {
        match read_key_file(path) {
            Ok(KeyFile::Usable(key)) => keys.push((path.clone(), *key)),
            Ok(KeyFile::Encrypted(_)) => tried.push(format!(
                "key file {} skipped: it has a passphrase (load it with `ssh-add {}`)",
                path.display(),
                path.display()
            )),
            Err(why) => tried.push(format!("key file {} skipped: {why}", path.display())),
        }
    }
    keys
}

/// Start of the first stderr line of every command: `minerctl-pgid <process group>`.
const PGID_MARK: &str = "minerctl-pgid ";

/// Takes the [`PGID_MARK`] line off the start of a command's stderr, whatever the chunks.
#[derive(Default)]
struct StderrHead {
    /// Bytes held back while they may still be the mark line; `None` once decided.
    pending: Option<Vec<u8>>,
    done: bool,
}

impl StderrHead {
    /// Appends `data` to `stderr`, minus the mark line; returns the process group once read.
    fn push(&mut self, data: &[u8], stderr: &mut Vec<u8>) -> Option<u32> {
        if self.done {
            stderr.extend_from_slice(data);
            return None;
        }
        let buf = self.pending.get_or_insert_with(Vec::new);
        buf.extend_from_slice(data);
        let mark = PGID_MARK.as_bytes();
        let n = buf.len().min(mark.len());
        if buf[..n] != mark[..n] {
            // Not ours (a shell that printed something first): keep everything.
            self.finish(stderr);
            return None;
        }
        let nl = buf.iter().position(|b| *b == b'\n')?;
        let pgid = std::str::from_utf8(&buf[mark.len().min(nl)..nl]).ok().and_then(|p| p.trim().parse().ok());
        stderr.extend_from_slice(&buf[nl + 1..]);
        self.pending = None;
        self.done = true;
        pgid
    }

    /// Gives back what was held (a stderr that ended inside what looked like the mark).
    fn finish(&mut self, stderr: &mut Vec<u8>) {
        if let Some(buf) = self.pending.take() {
            stderr.extend_from_slice(&buf);
        }
        self.done = true;
    }
}

/// The result of a command from how its channel ended: `closed` when the server closed the
/// channel, `connection_closed` when the whole connection is gone.
fn finish(host: &str, out: Output, closed: bool, connection_closed: bool) -> Result<Output, SshError> {
    // Without Close, data may still have been on its way, even after the exit status: never
    // report a cut-short output as the command's result.
    if !closed {
        return Err(SshError::Disconnected {
            host: host.to_string(),
            reason: "the connection ended before the command's channel closed; its output may be incomplete"
                .into(),
        });
    }
    if out.status.is_none() && out.signal.is_none() && connection_closed {
        return Err(SshError::Disconnected {
            host: host.to_string(),
            reason: "the channel ended without an exit status".into(),
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn keygen(path: &Path, passphrase: &str) {
        let st = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", passphrase, "-f"])
            .arg(path)
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn an_encrypted_default_key_is_skipped_for_the_next_one() {
        let d = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> =
            ["id_ed25519", "id_ecdsa", "id_rsa"].iter().map(|n| d.path().join(n)).collect();
        keygen(&paths[0], "s3cret-passphrase");
        keygen(&paths[1], "");
        std::fs::write(&paths[2], "not a key").unwrap();
        let mut tried = vec![];
        let keys = usable_default_keys(&paths, &mut tried);
        assert_eq!(keys.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), vec![paths[1].clone()]);
        let notes = tried.join(", ");
        assert!(
            notes.contains("id_ed25519 skipped: it has a passphrase") && notes.contains("ssh-add"),
            "{notes}"
        );
        assert!(notes.contains("id_rsa skipped"), "{notes}");
        assert!(!notes.contains("s3cret"), "{notes}");
        // The public half of an encrypted key is known without its passphrase.
        let expected = PublicKey::read_openssh_file(d.path().join("id_ed25519.pub")).unwrap();
        match read_key_file(&paths[0]).unwrap() {
            KeyFile::Encrypted(Some(public)) => assert_eq!(public.key_data(), expected.key_data()),
            _ => panic!("expected an encrypted key with a known public half"),
        }
    }

    #[test]
    fn the_process_group_line_is_taken_off_stderr_whatever_the_chunks() {
        let all = b"minerctl-pgid 4242\nerr 1\nerr 2\n";
        for split in 0..all.len() {
            let (mut head, mut stderr) = (StderrHead::default(), vec![]);
            let mut pgid = head.push(&all[..split], &mut stderr);
            pgid = pgid.or(head.push(&all[split..], &mut stderr));
            head.finish(&mut stderr);
            assert_eq!((pgid, stderr.as_slice()), (Some(4242), &b"err 1\nerr 2\n"[..]), "split at {split}");
        }
        // Something else first: nothing is lost, no group.
        let (mut head, mut stderr) = (StderrHead::default(), vec![]);
        assert_eq!(head.push(b"mine", &mut stderr), None);
        assert_eq!(head.push(b": warning\n", &mut stderr), None);
        head.finish(&mut stderr);
        assert_eq!(stderr, b"mine: warning\n");
        // Ended inside the mark: given back.
        let (mut head, mut stderr) = (StderrHead::default(), vec![]);
        head.push(b"minerctl-pg", &mut stderr);
        head.finish(&mut stderr);
        assert_eq!(stderr, b"minerctl-pg");
    }

    #[test]
    fn a_channel_that_ends_without_close_is_a_lost_connection_even_after_exit_status() {
        let partial = Output { status: Some(0), stdout: b"half of the out".to_vec(), ..Output::default() };
        // Exit status seen, then the connection dropped before Close: output may be cut short.
        for connection_closed in [true, false] {
            let err = finish("gpu1", partial.clone(), false, connection_closed).unwrap_err();
            assert!(matches!(err, SshError::Disconnected { .. }), "{err}");
            assert!(err.is_unreachable());
        }
        let signalled = Output { signal: Some("KILL".into()), ..Output::default() };
        assert!(matches!(finish("gpu1", signalled, false, true), Err(SshError::Disconnected { .. })));
        // Closed properly: whatever came is all there is.
        assert_eq!(finish("gpu1", partial.clone(), true, false).unwrap(), partial);
        assert_eq!(finish("gpu1", partial.clone(), true, true).unwrap(), partial);
        // Closed without a status: the connection's end explains it, or the server sent none.
        assert!(finish("gpu1", Output::default(), true, true).is_err());
        assert_eq!(finish("gpu1", Output::default(), true, false).unwrap().status, None);
    }
}
