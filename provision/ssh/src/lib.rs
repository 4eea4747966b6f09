//! SSH transport for minerctl, on russh. This is the only crate that opens SSH connections.
//!
//! Invariants:
//! - A host key is accepted only if it matches the pinned key, or known_hosts (hashed entries
//!   and `[host]:port` included), or — with [`HostKeyPolicy::AcceptNew`] — the host is absent
//!   from known_hosts (it is then recorded). A mismatch is [`SshError::HostKeyMismatch`] with
//!   both fingerprints, raised during the handshake, before authentication: nothing runs.
//! - One [`Session`] is one TCP connection (plus one to the jump host), reused for every
//!   command; commands are independent channels, so several may run at once.
//! - [`Session::exec`] returns only after the channel closes: output that arrives after the
//!   exit status is kept (russh#222).
//! - Commands run as root: directly when the login user is root, otherwise through
//!   `sudo -n`. A sudo that wants a password is found at connect time
//!   ([`SshError::SudoNeedsPassword`]), not half-way through a run.

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
