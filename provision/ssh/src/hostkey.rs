//! Host-key verification: pinned key, known_hosts, or trust-on-first-use.

use std::path::Path;
use std::sync::{Arc, Mutex};

use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};

use crate::SshError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Unknown hosts are refused (the default).
    Strict,
    /// Unknown hosts are trusted and recorded; known hosts must still match.
    AcceptNew,
}

/// `SHA256:...` fingerprint, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm().as_str(), key.fingerprint(HashAlg::Sha256))
}

/// Serialises appends to known_hosts across concurrently connecting hosts.
static KNOWN_HOSTS_LOCK: Mutex<()> = Mutex::new(());

pub(crate) struct Verifier {
    pub host: String,
    pub address: String,
    pub port: u16,
    pub pinned: Option<PublicKey>,
    pub known_hosts: std::path::PathBuf,
    pub policy: HostKeyPolicy,
    /// Why the key was refused, read by `connect` to return a precise error instead of
    /// russh's generic "unknown key".
    pub verdict: Arc<Mutex<Option<SshError>>>,
}

impl Verifier {
    fn addr(&self) -> String {
        if self.port == 22 { self.address.clone() } else { format!("[{}]:{}", self.address, self.port) }
    }

    pub fn check(&self, offered: &PublicKeyOrCertificate) -> bool {
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            // Host certificates are not trusted through a CA here; compare the embedded key.
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::new(cert.public_key().clone(), ""),
        };
        match self.decide(&key) {
            Ok(()) => true,
            Err(e) => {
                if let Ok(mut v) = self.verdict.lock() {
                    *v = Some(e);
                }
                false
            }
        }
    }

    fn decide(&self, key: &PublicKey) -> Result<(), SshError> {
        if let Some(pinned) = &self.pinned {
            if pinned.key_data() == key.key_data() {
                return Ok(());
            }
            return Err(SshError::HostKeyMismatch {
                host: self.host.clone(),
                addr: self.addr(),
                expected: fingerprint(pinned),
                source_of_expected: "pinned in the inventory".into(),
                offered: fingerprint(key),
            });
        }
        let path: &Path = &self.known_hosts;
        let known = if path.exists() {
            russh::keys::known_hosts::known_host_keys_path(&self.address, self.port, path).map_err(|e| {
                SshError::KnownHosts {
                    host: self.host.clone(),
                    path: path.display().to_string(),
                    reason: e.to_string(),
                }
            })?
        } else {
            vec![]
        };
        if known.iter().any(|(_, k)| k.key_data() == key.key_data()) {
            return Ok(());
        }
        // A recorded key of the same algorithm that differs is a changed host key. Keys of
        // other algorithms alone do not prove a change (the server may offer several).
        if let Some((line, recorded)) = known.iter().find(|(_, k)| k.algorithm() == key.algorithm()) {
            return Err(SshError::HostKeyMismatch {
                host: self.host.clone(),
                addr: self.addr(),
                expected: fingerprint(recorded),
                source_of_expected: format!("{}:{line}", path.display()),
                offered: fingerprint(key),
            });
        }
        match self.policy {
            HostKeyPolicy::AcceptNew if known.is_empty() => {
                let _guard = KNOWN_HOSTS_LOCK.lock();
                russh::keys::known_hosts::learn_known_hosts_path(&self.address, self.port, key, path)
                    .map_err(|e| SshError::KnownHosts {
                        host: self.host.clone(),
                        path: path.display().to_string(),
                        reason: e.to_string(),
                    })?;
                tracing::info!(host = %self.host, fingerprint = %fingerprint(key), "recorded new host key");
                Ok(())
            }
            _ => Err(SshError::HostKeyUnknown {
                host: self.host.clone(),
                addr: self.addr(),
                known_hosts: path.display().to_string(),
                offered: fingerprint(key),
            }),
        }
    }
}
