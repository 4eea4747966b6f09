//! The miner's sr25519 hotkey and the keys it verifies others with.
//!
//! A seed is expanded exactly as `py-sr25519-bindings.pair_from_seed` does
//! (schnorrkel `MiniSecretKey::expand_to_keypair(ExpansionMode::Ed25519)`) and
//! messages are signed in the `substrate` signing context, so signatures made
//! here verify on the validator and vice versa.
//!
//! The seed never leaves this module except through
//! [`Hotkey::expose_seed_hex`], whose name says what it does; `Debug` redacts it,
//! and no error carries it.

use std::fmt;
use std::path::{Path, PathBuf};

use schnorrkel::{ExpansionMode, MiniSecretKey, signing_context};
use zeroize::Zeroizing;

use crate::ss58::{self, Ss58Error};

const SIGNING_CONTEXT: &[u8] = b"substrate";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read hotkey file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin}: the seed must be 32 bytes as 64 hex characters (an optional 0x prefix is allowed)")]
    BadSeed { origin: String },
    #[error("{origin}: not a Bittensor hotkey file (JSON with \"secretSeed\"): {reason}")]
    BadHotkeyFile { origin: String, reason: String },
    #[error(
        "{origin}: the file says its address is {file_address} but its seed yields {derived}; the file is corrupt or was edited"
    )]
    FileAddressMismatch { origin: String, file_address: String, derived: String },
    #[error(
        "the configured miner address {configured} does not match the hotkey seed, which yields {derived}; fix MINER_SS58 or the seed"
    )]
    AddressMismatch { configured: String, derived: String },
    #[error("SS58 address {address:?} does not hold a valid sr25519 public key")]
    NotAPublicKey { address: String },
    #[error("environment variable {var} is not set")]
    EnvMissing { var: String },
    #[error("{0}")]
    Ss58(#[from] Ss58Error),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("signature must be 64 bytes as 128 hex characters")]
    Encoding,
    #[error("signature is not a valid sr25519 signature")]
    Malformed,
    #[error("signature does not match the message and key")]
    Mismatch,
}

/// The miner's signing identity: an sr25519 keypair from a 32-byte seed.
pub struct Hotkey {
    seed: MiniSecretKey,
    pair: schnorrkel::Keypair,
    ss58: String,
}

impl fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hotkey").field("ss58", &self.ss58).field("seed", &"<redacted>").finish()
    }
}

impl Hotkey {
    /// Builds the hotkey from a raw 32-byte seed. `origin` names where it came from.
    pub fn from_seed(seed: &[u8; 32], origin: &str) -> Result<Self, KeyError> {
        // schnorrkel only refuses a slice of the wrong length, which the type rules out.
        let mini =
            MiniSecretKey::from_bytes(seed).map_err(|_| KeyError::BadSeed { origin: origin.to_owned() })?;
        let pair = mini.expand_to_keypair(ExpansionMode::Ed25519);
        let ss58 = ss58::encode(&pair.public.to_bytes());
        Ok(Hotkey { seed: mini, pair, ss58 })
    }

    /// Builds the hotkey from 64 hex characters, with or without `0x`.
    /// `origin` names where the text came from, for the error message.
    pub fn from_seed_hex(text: &str, origin: &str) -> Result<Self, KeyError> {
        let trimmed = text.trim();
        let digits = trimmed.strip_prefix("0x").unwrap_or(trimmed);
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits, seed.as_mut_slice())
            .map_err(|_| KeyError::BadSeed { origin: origin.to_owned() })?;
        Self::from_seed(&seed, origin)
    }

    /// Parses a Bittensor hotkey file (`{"secretSeed": "0x..", "ss58Address": "..", ..}`).
    /// When the file names an address, it must be the one its seed yields.
    pub fn from_hotkey_json(text: &str, origin: &str) -> Result<Self, KeyError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct HotkeyFile {
            secret_seed: Option<String>,
            ss58_address: Option<String>,
        }
        let bad = |reason: String| KeyError::BadHotkeyFile { origin: origin.to_owned(), reason };
        // serde_json's own errors quote no input, so they are safe to show.
        let mut file: HotkeyFile = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let seed =
            Zeroizing::new(file.secret_seed.take().ok_or_else(|| bad("missing \"secretSeed\"".to_owned()))?);
        let key = Self::from_seed_hex(&seed, &format!("{origin} field secretSeed"))?;
        if let Some(file_address) = file.ss58_address
            && file_address != key.ss58
        {
            return Err(KeyError::FileAddressMismatch {
                origin: origin.to_owned(),
                file_address,
                derived: key.ss58.clone(),
            });
        }
        Ok(key)
    }

    /// Loads a hotkey file: either Bittensor's JSON hotkey file or a file holding the hex seed.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?,
        );
        let origin = path.display().to_string();
        if text.trim_start().starts_with('{') {
            Self::from_hotkey_json(&text, &origin)
        } else {
            Self::from_seed_hex(&text, &origin)
        }
    }

    /// Reads the hex seed from an environment variable (the original's `MINER_SEED`).
    pub fn from_env(var: &str) -> Result<Self, KeyError> {
        let value =
            Zeroizing::new(std::env::var(var).map_err(|_| KeyError::EnvMissing { var: var.to_owned() })?);
        Self::from_seed_hex(&value, &format!("environment variable {var}"))
    }

    /// The SS58 address (prefix 42) of this hotkey.
    pub fn ss58(&self) -> &str {
        &self.ss58
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.pair.public)
    }

    /// Refuses to run with a configured address that is not this key's: the original
    /// trusted `MINER_SS58` blindly and then failed every validator handshake.
    pub fn check_address(&self, configured: &str) -> Result<(), KeyError> {
        ss58::decode(configured)?;
        if configured != self.ss58 {
            return Err(KeyError::AddressMismatch {
                configured: configured.to_owned(),
                derived: self.ss58.clone(),
            });
        }
        Ok(())
    }

    /// Signs `message` in the `substrate` context; returns 128 lowercase hex characters.
    /// sr25519 signatures are randomized: two calls give different, equally valid signatures.
    pub fn sign(&self, message: &[u8]) -> String {
        let sig = self.pair.sign(signing_context(SIGNING_CONTEXT).bytes(message));
        hex::encode(sig.to_bytes())
    }

    /// The seed as `0x`-prefixed hex, for the one place that must hand it on
    /// (the `miner-credentials` Kubernetes secret). Never log the result.
    pub fn expose_seed_hex(&self) -> Zeroizing<String> {
        let bytes = Zeroizing::new(self.seed.to_bytes());
        Zeroizing::new(format!("0x{}", hex::encode(bytes.as_slice())))
    }
}

/// An sr25519 public key, used to verify signatures.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(schnorrkel::PublicKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_ss58())
    }
}

impl PublicKey {
    pub fn from_ss58(address: &str) -> Result<Self, KeyError> {
        let bytes = ss58::decode(address)?;
        Self::from_bytes(&bytes).ok_or_else(|| KeyError::NotAPublicKey { address: address.to_owned() })
    }

    /// `None` when the bytes are not a valid Ristretto point.
    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        schnorrkel::PublicKey::from_bytes(bytes).ok().map(PublicKey)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_ss58(&self) -> String {
        ss58::encode(&self.0.to_bytes())
    }

    /// Verifies a hex signature over `message`, also accepting a signature over the
    /// polkadot-js wrapped form `<Bytes>message</Bytes>` as substrate-interface does.
    /// A forgery costs two curve verifications here; see [`PublicKey::verify_exact`].
    pub fn verify(&self, message: &[u8], signature_hex: &str) -> Result<(), SignatureError> {
        let sig = parse_signature(signature_hex)?;
        let ctx = signing_context(SIGNING_CONTEXT);
        if self.0.verify(ctx.bytes(message), &sig).is_ok() {
            return Ok(());
        }
        let mut wrapped = Vec::with_capacity(message.len() + 15);
        wrapped.extend_from_slice(b"<Bytes>");
        wrapped.extend_from_slice(message);
        wrapped.extend_from_slice(b"</Bytes>");
        self.0.verify(ctx.bytes(&wrapped), &sig).map_err(|_| SignatureError::Mismatch)
    }

    /// Verifies a hex signature over exactly `message` (no `<Bytes>` retry): one
    /// curve verification per forgery. For servers whose callers sign with
    /// substrate-interface or this crate, which sign the raw message.
    pub fn verify_exact(&self, message: &[u8], signature_hex: &str) -> Result<(), SignatureError> {
        let sig = parse_signature(signature_hex)?;
        self.0
            .verify(signing_context(SIGNING_CONTEXT).bytes(message), &sig)
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// A hex signature's 64 bytes (an optional `0x`/`0X` prefix, digits in either case).
pub(crate) fn signature_bytes(signature_hex: &str) -> Result<[u8; 64], SignatureError> {
    let digits = signature_hex
        .strip_prefix("0x")
        .or_else(|| signature_hex.strip_prefix("0X"))
        .unwrap_or(signature_hex);
    let mut raw = [0u8; 64];
    hex::decode_to_slice(digits, &mut raw).map_err(|_| SignatureError::Encoding)?;
    Ok(raw)
}

fn parse_signature(signature_hex: &str) -> Result<schnorrkel::Signature, SignatureError> {
    schnorrkel::Signature::from_bytes(&signature_bytes(signature_hex)?).map_err(|_| SignatureError::Malformed)
}
