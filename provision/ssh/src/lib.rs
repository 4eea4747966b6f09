//! SSH transport for minerctl, on russh. This is the only crate that opens SSH connections.
//!
//! Invariants:
//! - A host key is accepted only if it matches the pinned key, or known_hosts (matched as
//!   OpenSSH does: lowercase names, `[host]:port`, `*`/`?`/`!` patterns, hashed `|1|` names;
//!   `@revoked` keys are always refused; a host named only by `@cert-authority` lines is
//!   refused), or — with [`HostKeyPolicy::AcceptNew`] — the host is absent from known_hosts in
//!   every form (it is then recorded; read, decision and append under one lock). A mismatch is
//!   [`SshError::HostKeyMismatch`] with both fingerprints, raised during the handshake, before
//!   authentication: nothing runs.
//! - One [`Session`] is one TCP connection (plus one to the jump host), reused for every
//!   command; commands are independent channels, so several may run at once.
//! - [`Session::exec`] returns only after the channel closes: output that arrives after the
//!   exit status is kept (russh#222).
//! - An `exec` that ends without the channel's Close (connection lost) is
//!   [`SshError::Disconnected`], even after an exit status: cut-short output is never a result.
//! - A command past its timeout is stopped (SIGTERM, then SIGKILL, to its process group) and
//!   its channel closed before [`SshError::CommandTimeout`] is returned, so it neither runs on
//!   nor holds one of sshd's MaxSessions.
//! - Commands run as root: directly when the login user is root, otherwise through
//!   `sudo -n`. A sudo that wants a password is found at connect time
//!   ([`SshError::SudoNeedsPassword`]), not half-way through a run. A jump host only
//!   authenticates and forwards: no root, no sudo probe there.

mod client;
mod hostkey;

use std::path::PathBuf;
use std::time::Duration;

pub use client::{Output, Session};
pub use hostkey::{HostKeyPolicy, fingerprint};

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Target {
    /// Inventory name, used in messages only.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Private key file; `None` means: keys from ssh-agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
    pub key: Option<PathBuf>,
    /// `<algorithm> <base64>`; when set, known_hosts is not consulted.
    pub pinned_host_key: Option<String>,
    /// ProxyJump host, reached first; the target is then reached through a direct-tcpip channel.
    pub jump: Option<Box<Target>>,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub known_hosts: PathBuf,
    pub policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    /// Interval of SSH keepalives; the connection is dropped after 3 unanswered ones.
    pub keepalive: Duration,
}

impl Options {
    /// `~/.ssh/known_hosts`, strict checking, 15 s connect timeout, 10 s keepalives.
    pub fn new() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        Options {
            known_hosts: home.join(".ssh/known_hosts"),
            policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(15),
            keepalive: Duration::from_secs(10),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("{host}: cannot connect to {addr}: {reason}")]
    Connect { host: String, addr: String, reason: String },
    #[error("{host}: connection to {addr} timed out after {secs} s")]
    ConnectTimeout { host: String, addr: String, secs: u64 },
    #[error(
        "{host}: HOST KEY MISMATCH for {addr}: expected {expected} ({source_of_expected}), the server offered {offered}. \
         Refusing to connect; nothing was run. If the host was reinstalled, remove the old entry \
         (ssh-keygen -R '{addr}') or update the pinned key."
    )]
    HostKeyMismatch {
        host: String,
        addr: String,
        expected: String,
        source_of_expected: String,
        offered: String,
    },
    #[error(
        "{host}: host key for {addr} is not in {known_hosts} (offered {offered}). Add it with ssh-keyscan, \
         pin it in the inventory (ssh.host_key), or run with --accept-new to trust it on first use."
    )]
    HostKeyUnknown { host: String, addr: String, known_hosts: String, offered: String },
    #[error(
        "{host}: the host key {offered} offered by {addr} is REVOKED ({recorded_at}). Refusing to connect; \
         nothing was run. Someone may be impersonating the host: check it out of band before touching known_hosts."
    )]
    HostKeyRevoked { host: String, addr: String, offered: String, recorded_at: String },
    #[error(
        "{host}: {addr} is known only through a @cert-authority line ({recorded_at}), which minerctl cannot check \
         (it does not verify host certificates); the server offered {offered}, which is not trusted on first use. \
         Check that fingerprint out of band, then pin the key in the inventory (ssh.host_key) or add a plain \
         known_hosts line for {addr}."
    )]
    HostKeyCertAuthority { host: String, addr: String, recorded_at: String, offered: String },
    #[error(
        "{host}: {addr} is recorded in known_hosts only with another key type ({known}); the server offered \
         {offered}, which is not trusted on first use (--accept-new does not apply to a known host). Check that \
         fingerprint out of band (on the host: ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then add it \
         (`{scan} >> ~/.ssh/known_hosts`) or pin it in the inventory (ssh.host_key)."
    )]
    HostKeyOtherType {
        host: String,
        addr: String,
        /// The recorded key types and where, e.g. `ecdsa-sha2-nistp256 at ~/.ssh/known_hosts:3`.
        known: String,
        offered: String,
        /// The ssh-keyscan command that fetches the offered type.
        scan: String,
    },
    #[error("{host}: cannot record host key in {path}: {reason}")]
    KnownHosts { host: String, path: String, reason: String },
    #[error("{host}: the pinned host key is not a valid public key: {reason}")]
    BadPinnedKey { host: String, reason: String },
    #[error("{host}: cannot load private key {path}: {reason}")]
    Key { host: String, path: String, reason: String },
    #[error("{host}: authentication as `{user}` failed (tried: {tried})")]
    Auth { host: String, user: String, tried: String },
    #[error(
        "{host}: `sudo -n` as `{user}` needs a password. minerctl never types passwords: give `{user}` \
         passwordless sudo (`{user} ALL=(ALL) NOPASSWD:ALL`) or log in as root"
    )]
    SudoNeedsPassword { host: String, user: String },
    #[error("{host}: another minerctl run holds the host lock (/run/minerctl.lock): {holder}")]
    Locked { host: String, holder: String },
    #[error("{host}: command timed out after {secs} s: {command}")]
    CommandTimeout { host: String, command: String, secs: u64 },
    #[error("{host}: connection lost: {reason}")]
    Disconnected { host: String, reason: String },
    #[error("{host}: jump host {jump}: {source}")]
    Jump { host: String, jump: String, source: Box<SshError> },
}

impl SshError {
    /// True when the host could not be reached or the connection dropped (the recap's
    /// "unreachable"), as opposed to a host that answered and refused or failed.
    pub fn is_unreachable(&self) -> bool {
        match self {
            SshError::Connect { .. }
            | SshError::ConnectTimeout { .. }
            | SshError::Disconnected { .. }
            | SshError::CommandTimeout { .. } => true,
            SshError::Jump { source, .. } => source.is_unreachable(),
            _ => false,
        }
    }
}

/// Quotes a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}
