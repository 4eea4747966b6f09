//! The secrets deploy creates from the operator's inputs (never rendered, never printed):
//! `miner-credentials` (hotkey ss58 + seed, as the original chart's pods expect) and
//! `regcred` (a docker-registry pull secret); plus the random passwords of create-once
//! Secrets.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use minerctl_manifests::{MANAGED_BY, MANAGED_BY_LABEL, PART_OF, PART_OF_LABEL};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::error::DeployError;

pub const MINER_SECRET: &str = "miner-credentials";
pub const REGISTRY_SECRET: &str = "regcred";

/// The miner hotkey as the pods read it: `ss58` and `seed` (hex, no `0x`).
pub struct MinerCredentials {
    ss58: String,
    seed_hex: Zeroizing<String>,
}

impl MinerCredentials {
    /// `seed_hex` with or without `0x` (what `Hotkey::expose_seed_hex` gives).
    pub fn new(ss58: &str, seed_hex: &str) -> MinerCredentials {
        let seed = seed_hex.strip_prefix("0x").unwrap_or(seed_hex);
        MinerCredentials { ss58: ss58.to_string(), seed_hex: Zeroizing::new(seed.to_string()) }
    }
    pub fn ss58(&self) -> &str {
        &self.ss58
    }
}

impl fmt::Debug for MinerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MinerCredentials").field("ss58", &self.ss58).field("seed", &"<redacted>").finish()
    }
}

/// Login for a private image registry.
pub struct RegistryCredentials {
    pub server: String,
    pub username: String,
    password: Zeroizing<String>,
}

impl RegistryCredentials {
    pub fn new(server: &str, username: &str, password: &str) -> RegistryCredentials {
        RegistryCredentials {
            server: server.to_string(),
            username: username.to_string(),
            password: Zeroizing::new(password.to_string()),
        }
    }
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What the operator passed. `None` means: keep the Secret already in the cluster.
#[derive(Debug, Default)]
pub struct Credentials {
    pub miner: Option<MinerCredentials>,
    pub registry: Option<RegistryCredentials>,
}

fn secret(ns: &str, name: &str, ty: &str, data: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": {
            MANAGED_BY_LABEL: MANAGED_BY, PART_OF_LABEL: PART_OF,
        }},
        "type": ty,
        "data": data,
    })
}

fn b64(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

impl Credentials {
    /// The Secret objects to apply, in the manifest's namespace.
    pub(crate) fn secrets(&self, ns: &str) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(m) = &self.miner {
            out.push(secret(
                ns,
                MINER_SECRET,
                "Opaque",
                json!({"ss58": b64(&m.ss58), "seed": b64(&m.seed_hex)}),
            ));
        }
        if let Some(r) = &self.registry {
            let auth = Zeroizing::new(format!("{}:{}", r.username, r.password.as_str()));
            let config = Zeroizing::new(
                json!({"auths": {r.server.clone(): {
                    "username": r.username, "password": r.password.as_str(), "auth": b64(&auth),
                }}})
                .to_string(),
            );
            out.push(secret(
                ns,
                REGISTRY_SECRET,
                "kubernetes.io/dockerconfigjson",
                json!({".dockerconfigjson": b64(&config)}),
            ));
        }
        out
    }
}

/// 32 random letters and digits (the original's `randAlphaNum 32`): safe inside URLs.
pub(crate) fn random_password() -> Result<String, DeployError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(32);
    while out.len() < 32 {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf)
            .map_err(|e| DeployError::Preflight(format!("no randomness for a password: {e}")))?;
        // Rejection sampling keeps every character equally likely (248 = 4 * 62).
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() < 32 {
                out.push(ALPHABET[(*b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// base64 for Secret `data`.
pub(crate) fn encode(s: &str) -> String {
    b64(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials {
            miner: Some(MinerCredentials::new("5Abc", "0xdeadbeef")),
            registry: Some(RegistryCredentials::new("r.example", "u", "hunter2")),
        };
        let d = format!("{c:?}");
        assert!(!d.contains("deadbeef") && !d.contains("hunter2"), "{d}");
        assert!(d.contains("5Abc") && d.contains("r.example"));
    }

    #[test]
    fn secrets_have_the_keys_pods_read() {
        let c = Credentials {
            miner: Some(MinerCredentials::new("5Abc", "0xdeadbeef")),
            registry: Some(RegistryCredentials::new("r.example", "u", "p")),
        };
        let s = c.secrets("chutes");
        assert_eq!(s[0]["data"]["ss58"], b64("5Abc"));
        // The original chart's secret held the seed without 0x.
        assert_eq!(s[0]["data"]["seed"], b64("deadbeef"));
        let cfg = STANDARD.decode(s[1]["data"][".dockerconfigjson"].as_str().unwrap()).unwrap();
        let cfg: Value = serde_json::from_slice(&cfg).unwrap();
        assert_eq!(cfg["auths"]["r.example"]["auth"], b64("u:p"));
    }

    #[test]
    fn passwords_are_32_alphanumerics_and_differ() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
