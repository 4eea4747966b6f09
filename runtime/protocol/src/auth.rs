//! Signed requests, in the three formats of the chutes protocol.
//!
//! 1. Miner to validator: headers `X-Chutes-Hotkey`, `X-Chutes-Nonce`,
//!    `X-Chutes-Signature` over `hotkey:nonce:X`, where `X` is the sha256 hex of the
//!    body, or the endpoint's purpose string when it declares one.
//! 2. Management (operator or validator to this miner): headers `X-Chutes-Miner`,
//!    `X-Chutes-Validator`, `X-Chutes-Nonce`, `X-Chutes-Signature` over
//!    `miner:validator:nonce:X`, signed by the `validator` key.
//! 3. The inbound verifier ([`InboundVerifier`]) that checks format 2 on this
//!    miner's own servers. Unlike the original it bounds nonces from the future
//!    too, and refuses a nonce+signature pair it has already accepted.
//!
//! The nonce is the unix time in seconds, as decimal digits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::keys::{Hotkey, KeyError, PublicKey, SignatureError};

/// Header names, exactly as the validator spells them.
pub mod headers {
    pub const HOTKEY: &str = "X-Chutes-Hotkey";
    pub const MINER: &str = "X-Chutes-Miner";
    pub const VALIDATOR: &str = "X-Chutes-Validator";
    pub const NONCE: &str = "X-Chutes-Nonce";
    pub const SIGNATURE: &str = "X-Chutes-Signature";
    pub const BLOCK: &str = "X-Chutes-Block";
}

/// What a signature covers besides identities and nonce.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The request body, signed by its sha256 hex (POST, PUT and PATCH).
    Body(&'a [u8]),
    /// A purpose string such as `management`, `sockets` or `graval`.
    Purpose(&'a str),
}

impl Payload<'_> {
    fn message_part(&self) -> String {
        match self {
            Payload::Body(body) => sha256_hex(body),
            Payload::Purpose(purpose) => (*purpose).to_owned(),
        }
    }
}

/// Lowercase hex sha256, as Python's `hashlib.sha256(b).hexdigest()`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Unix time in whole seconds; the protocol's nonce.
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `hotkey:nonce:(sha256(body)|purpose)`: what a miner signs for a validator.
pub fn miner_message(hotkey: &str, nonce: u64, payload: Payload<'_>) -> String {
    format!("{hotkey}:{nonce}:{}", payload.message_part())
}

/// `miner:validator:nonce:(sha256(body)|purpose)`: what a management caller signs.
pub fn management_message(miner: &str, validator: &str, nonce: u64, payload: Payload<'_>) -> String {
    format!("{miner}:{validator}:{nonce}:{}", payload.message_part())
}

/// The purpose a management client signs for a request without a body to bind
/// the signature to the request: `management:<METHOD> <path>` (path without the
/// query). The original's plain `management` binds neither, so a signed
/// `GET /servers/` seen on the wire could be sent as `DELETE /deployments/purge`
/// within the nonce window. `minerctl` signs this form; the miner API accepts both
/// unless it runs bound-only.
pub fn bound_management_purpose(method: &str, path: &str) -> String {
    format!("management:{} {path}", method.to_ascii_uppercase())
}

/// The headers of one signed request, in the order they were built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders(Vec<(&'static str, String)>);

impl SignedHeaders {
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// As an `http::HeaderMap`. Every value is an SS58 address, digits or hex, all
    /// valid header characters, so nothing is dropped.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in self.iter() {
            if let Ok(v) = HeaderValue::from_str(value) {
                map.insert(HeaderName::from_static(lowercase(name)), v);
            }
        }
        map
    }
}

fn lowercase(name: &'static str) -> &'static str {
    // HeaderName::from_static wants lowercase; our constants are mixed case.
    match name {
        headers::HOTKEY => "x-chutes-hotkey",
        headers::MINER => "x-chutes-miner",
        headers::VALIDATOR => "x-chutes-validator",
        headers::NONCE => "x-chutes-nonce",
        headers::SIGNATURE => "x-chutes-signature",
        _ => "x-chutes-block",
    }
}

impl Hotkey {
    /// Signs a miner-to-validator request (format 1) with the current time as nonce.
    pub fn sign_request(&self, payload: Payload<'_>) -> SignedHeaders {
        self.sign_request_at(payload, now_unix())
    }

    pub fn sign_request_at(&self, payload: Payload<'_>, nonce: u64) -> SignedHeaders {
        let signature = self.sign(miner_message(self.ss58(), nonce, payload).as_bytes());
        SignedHeaders(vec![
            (headers::HOTKEY, self.ss58().to_owned()),
            (headers::NONCE, nonce.to_string()),
            (headers::SIGNATURE, signature),
        ])
    }

    /// Signs a management request (format 2) to the miner `miner`. The operator's
    /// own tools pass the miner's address for both, as the original CLI did.
    pub fn sign_management(&self, miner: &str, payload: Payload<'_>) -> SignedHeaders {
        self.sign_management_at(miner, payload, now_unix())
    }

    pub fn sign_management_at(&self, miner: &str, payload: Payload<'_>, nonce: u64) -> SignedHeaders {
        let message = management_message(miner, self.ss58(), nonce, payload);
        SignedHeaders(vec![
            (headers::MINER, miner.to_owned()),
            (headers::VALIDATOR, self.ss58().to_owned()),
            (headers::NONCE, nonce.to_string()),
            (headers::SIGNATURE, self.sign(message.as_bytes())),
        ])
    }
}

/// Why a signed request was refused. Messages say what to fix; none echoes a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {0} is not valid text")]
    BadHeader(&'static str),
    #[error("X-Chutes-Miner is {got}, but this is miner {expected}")]
    WrongMiner { got: String, expected: String },
    #[error("{got} is not allowed to sign requests here")]
    UnknownSigner { got: String },
    #[error("X-Chutes-Nonce must be unix seconds as decimal digits")]
    BadNonce,
    #[error("nonce is {age} s old; at most {max} s is accepted (check the caller's clock)")]
    StaleNonce { age: u64, max: u64 },
    #[error("nonce is {ahead} s in the future; at most {max} s is accepted (check the caller's clock)")]
    FutureNonce { ahead: u64, max: u64 },
    #[error("bad signature: {0}")]
    Signature(#[from] SignatureError),
    #[error("this nonce and signature were already used (replay)")]
    Replayed,
}

/// The one spelling of a signature the replay cache keys on: its 64 bytes in lowercase
/// hex. Any other spelling that decodes to the same bytes (`0X`, upper-case digits) would
/// otherwise pass as a new signature.
fn canonical_signature(text: &str) -> Result<String, AuthError> {
    Ok(hex::encode(crate::keys::signature_bytes(text)?))
}

fn header<'h>(map: &'h HeaderMap, name: &'static str) -> Result<&'h str, AuthError> {
    map.get(name).ok_or(AuthError::MissingHeader(name))?.to_str().map_err(|_| AuthError::BadHeader(name))
}

fn check_nonce(text: &str, now: u64, max_age: u64, max_ahead: u64) -> Result<u64, AuthError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::BadNonce);
    }
    let nonce: u64 = text.parse().map_err(|_| AuthError::BadNonce)?;
    check_window(nonce, now, max_age, max_ahead)
}

fn check_window(nonce: u64, now: u64, max_age: u64, max_ahead: u64) -> Result<u64, AuthError> {
    if nonce <= now {
        let age = now - nonce;
        if age >= max_age {
            return Err(AuthError::StaleNonce { age, max: max_age });
        }
    } else if nonce - now > max_ahead {
        return Err(AuthError::FutureNonce { ahead: nonce - now, max: max_ahead });
    }
    Ok(nonce)
}

/// Verifies a miner-to-validator request (format 1), as the validator does:
/// returns the signing hotkey. The validator allows 600 s of skew either way.
pub fn verify_miner_request(
    headers: &HeaderMap,
    payload: Payload<'_>,
    now: u64,
    max_skew: u64,
) -> Result<String, AuthError> {
    let hotkey = header(headers, headers::HOTKEY)?;
    let nonce_text = header(headers, headers::NONCE)?;
    let signature = header(headers, headers::SIGNATURE)?;
    let nonce = check_nonce(nonce_text, now, max_skew, max_skew)?;
    let key =
        PublicKey::from_ss58(hotkey).map_err(|_| AuthError::UnknownSigner { got: hotkey.to_owned() })?;
    key.verify(miner_message(hotkey, nonce, payload).as_bytes(), signature)?;
    Ok(hotkey.to_owned())
}

/// Checks management requests (format 2) arriving at this miner.
///
/// Accepts a request when the miner header is this miner, the signer is allowed,
/// the nonce is within the window either way (the original accepted any future
/// nonce, so a captured request stayed valid forever), the signature verifies, and
/// the same nonce+signature was not accepted before.
pub struct InboundVerifier {
    miner: String,
    signers: HashMap<String, PublicKey>,
    max_age: u64,
    max_ahead: u64,
    /// Also accept signatures over `<Bytes>message</Bytes>` (polkadot-js wrapping).
    accept_wrapped: bool,
    /// Signatures accepted while their nonce is still inside the window, by nonce.
    /// Only verified signatures enter, so a flood of forged requests cannot grow it.
    seen: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for InboundVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut signers: Vec<_> = self.signers.keys().collect();
        signers.sort();
        f.debug_struct("InboundVerifier")
            .field("miner", &self.miner)
            .field("signers", &signers)
            .field("max_age", &self.max_age)
            .field("max_ahead", &self.max_ahead)
            .field("accept_wrapped", &self.accept_wrapped)
            .finish()
    }
}

/// The original miner API's window: a nonce older than 30 s is refused.
pub const DEFAULT_WINDOW_SECS: u64 = 30;

/// A request that passed [`InboundVerifier::precheck`]: the headers are present,
/// name this miner and an allowed signer, the nonce is inside the window and the
/// signature was not accepted before. Only the signature itself is left to check.
#[derive(Debug, Clone)]
pub struct Prechecked {
    validator: String,
    nonce: u64,
    signature: String,
}

impl Prechecked {
    /// The claimed signer (not yet proven).
    pub fn signer(&self) -> &str {
        &self.validator
    }
}

impl InboundVerifier {
    /// `signers` are the SS58 addresses allowed to sign (the miner itself for
    /// operator calls, the validators' hotkeys for validator calls).
    pub fn new<'a>(miner_ss58: &str, signers: impl IntoIterator<Item = &'a str>) -> Result<Self, KeyError> {
        PublicKey::from_ss58(miner_ss58)?;
        let signers = signers
            .into_iter()
            .map(|s| PublicKey::from_ss58(s).map(|k| (s.to_owned(), k)))
            .collect::<Result<HashMap<_, _>, _>>()?;
        Ok(InboundVerifier {
            miner: miner_ss58.to_owned(),
            signers,
            max_age: DEFAULT_WINDOW_SECS,
            max_ahead: DEFAULT_WINDOW_SECS,
            accept_wrapped: true,
            seen: Mutex::new(HashMap::new()),
        })
    }

    /// Changes the accepted nonce window (seconds into the past and into the future).
    pub fn with_window(mut self, max_age: u64, max_ahead: u64) -> Self {
        self.max_age = max_age;
        self.max_ahead = max_ahead;
        self
    }

    /// Accept only signatures over the exact message, not the polkadot-js
    /// `<Bytes>` wrapping. Halves the cost of a forgery for servers whose callers
    /// sign raw messages (substrate-interface's `Keypair.sign`, this crate).
    pub fn exact_messages_only(mut self) -> Self {
        self.accept_wrapped = false;
        self
    }

    pub fn miner(&self) -> &str {
        &self.miner
    }

    pub fn is_signer(&self, ss58: &str) -> bool {
        self.signers.contains_key(ss58)
    }

    /// Verifies one request; returns the signer's address.
    pub fn verify(&self, headers: &HeaderMap, payload: Payload<'_>, now: u64) -> Result<String, AuthError> {
        let pre = self.precheck(headers, now)?;
        self.finish(&pre, payload, now)
    }

    /// Every check that needs neither the body nor curve arithmetic: headers
    /// present, this miner, an allowed signer, the nonce inside the window, a
    /// signature not accepted before. Servers run it before they read a body or
    /// spend CPU on the signature.
    pub fn precheck(&self, headers: &HeaderMap, now: u64) -> Result<Prechecked, AuthError> {
        let miner = header(headers, headers::MINER)?;
        let validator = header(headers, headers::VALIDATOR)?;
        let nonce_text = header(headers, headers::NONCE)?;
        let signature = header(headers, headers::SIGNATURE)?;
        if miner != self.miner {
            return Err(AuthError::WrongMiner { got: miner.to_owned(), expected: self.miner.clone() });
        }
        if !self.signers.contains_key(validator) {
            return Err(AuthError::UnknownSigner { got: validator.to_owned() });
        }
        let nonce = check_nonce(nonce_text, now, self.max_age, self.max_ahead)?;
        let signature = canonical_signature(signature)?;
        if self.lock_seen().contains_key(&signature) {
            return Err(AuthError::Replayed);
        }
        Ok(Prechecked { validator: validator.to_owned(), nonce, signature })
    }

    /// The signature check of a prechecked request; on success the signature is
    /// remembered so it is accepted once. Returns the signer's address.
    ///
    /// `now` is the time of this call, not of the precheck: the nonce is checked against
    /// the window again, so a request whose body was held back (or that queued for the
    /// curve check) past the window is refused, as it would be once its signature has
    /// been forgotten by the replay cache.
    pub fn finish(&self, pre: &Prechecked, payload: Payload<'_>, now: u64) -> Result<String, AuthError> {
        check_window(pre.nonce, now, self.max_age, self.max_ahead)?;
        let key = self
            .signers
            .get(&pre.validator)
            .ok_or_else(|| AuthError::UnknownSigner { got: pre.validator.clone() })?;
        let message = management_message(&self.miner, &pre.validator, pre.nonce, payload);
        if self.accept_wrapped {
            key.verify(message.as_bytes(), &pre.signature)?;
        } else {
            key.verify_exact(message.as_bytes(), &pre.signature)?;
        }
        let mut seen = self.lock_seen();
        // Forget what the window refuses anyway; this bounds the map by the request rate.
        let oldest = now.saturating_sub(self.max_age);
        seen.retain(|_, n| *n >= oldest);
        if seen.insert(pre.signature.clone(), pre.nonce).is_some() {
            return Err(AuthError::Replayed);
        }
        Ok(pre.validator.clone())
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
