//! Connection, authentication, command execution and uploads.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect};

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

fn addr_of(t: &Target) -> String {
    format!("{}:{}", t.address, t.port)
}

impl Session {
    /// Connects, verifies the host key, authenticates and checks that commands can run as root.
    pub async fn connect(target: &Target, options: &Options) -> Result<Session, SshError> {
        let secs = options.connect_timeout.as_secs();
        match tokio::time::timeout(options.connect_timeout, Self::connect_inner(target, options)).await {
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
                    let jump = Session::connect_inner(j, options).await.map_err(|e| SshError::Jump {
                        host: host.clone(),
                        jump: addr_of(j),
                        source: Box::new(e),
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
            if target.user != "root" {
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

        let key_files: Vec<PathBuf> = match &target.key {
            Some(k) => vec![k.clone()],
            None => {
                // Agent first: keys with passphrases live there.
                if let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await
                    && let Ok(ids) = agent.request_identities().await
                {
                    for id in ids {
                        let key = id.public_key().into_owned();
                        tried.push(format!("agent key {}", crate::fingerprint(&key)));
                        let res = self
                            .handle
                            .authenticate_publickey_with(user.clone(), key, hash, &mut agent)
                            .await;
                        if matches!(res, Ok(r) if r.success()) {
                            return Ok(());
                        }
                    }
                }
                let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
                ["id_ed25519", "id_ecdsa", "id_rsa"]
                    .iter()
                    .map(|n| home.join(".ssh").join(n))
                    .filter(|p| p.exists())
                    .collect()
            }
        };
        for path in key_files {
            let key = russh::keys::load_secret_key(&path, None).map_err(|e| SshError::Key {
                host: target.name.clone(),
                path: path.display().to_string(),
                reason: format!("{e} (keys with a passphrase must be loaded into ssh-agent)"),
            })?;
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

    /// Runs `command` through `sh -c` as root, with optional stdin, within `timeout`.
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
        let run = async {
            let mut ch = self.handle.channel_open_session().await.map_err(lost)?;
            ch.exec(true, command.as_bytes()).await.map_err(lost)?;
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
                    ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        out.signal = Some(format!("{signal_name:?}"))
                    }
                    ChannelMsg::Close => closed = true,
                    _ => {}
                }
            }
            if out.status.is_none() && out.signal.is_none() && (!closed || self.handle.is_closed()) {
                return Err(SshError::Disconnected {
                    host: host.clone(),
                    reason: "the channel ended without an exit status".into(),
                });
            }
            Ok(out)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(SshError::CommandTimeout {
                host: self.name.clone(),
                command: command.chars().take(120).collect(),
                secs: timeout.as_secs(),
            }),
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
