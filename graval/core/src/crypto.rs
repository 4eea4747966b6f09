//! The challenge cipher: AES-256-GCM under a key derived with HKDF-SHA256 from the
//! run, carried as `"<seed>|" + base64(iv16 || ciphertext+tag)` like GraVal v0.2.
//!
//! Key: `HKDF-SHA256(salt = "graval-rs/v1/challenge", ikm = seed_key || r(0,0),
//! info = "aes-256-gcm" || iterations_le)`, where `seed_key` binds seed and device
//! identity and `r(0,0)` is `SeedKey::first_rows_hash` of the chain's first product's
//! hashed rows (`mix(fill_0 . R_0^T)`, both PRNG matrices). The validator computes it from
//! a few row products (cheap), and so can anyone with the seed and device identity:
//! decrypting proves liveness, not work or memory (spot checks and timing do that). See
//! README.md (design difference 3) for why the key cannot depend on a later step: the
//! ciphertext goes out before the run.
//!
//! IV: 16 random bytes as in the original's transport; the first 12 are the GCM nonce
//! and all 16 are authenticated as associated data, so no byte of it can be altered.

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hkdf::Hkdf;
use sha2::Sha256;

use crate::error::CryptoError;
use crate::schedule::SeedKey;

const IV_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// The 32-byte AES key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ChallengeKey([u8; 32]);

impl std::fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChallengeKey(..)")
    }
}

impl ChallengeKey {
    pub fn derive(seed_key: &SeedKey, first_hash: &[u8; 32], iterations: u64) -> Self {
        let mut ikm = [0u8; 64];
        ikm[..32].copy_from_slice(seed_key.as_bytes());
        ikm[32..].copy_from_slice(first_hash);
        let hk = Hkdf::<Sha256>::new(Some(b"graval-rs/v1/challenge"), &ikm);
        let mut info = b"aes-256-gcm".to_vec();
        info.extend_from_slice(&iterations.to_le_bytes());
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
        if hk.expand(&info, &mut okm).is_err() {
            unreachable!("HKDF output length 32 is valid");
        }
        Self(okm)
    }

    /// Encrypts `plaintext` (UTF-8 without NUL, as the original's C strings) and
    /// returns `iv || ciphertext || tag`.
    pub fn encrypt(&self, plaintext: &str) -> Result<Vec<u8>, CryptoError> {
        if plaintext.contains('\0') {
            return Err(CryptoError::Plaintext);
        }
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let cipher = Aes256Gcm::new((&self.0).into());
        let ct = cipher
            .encrypt(Nonce::from_slice(&iv[..12]), Payload { msg: plaintext.as_bytes(), aad: &iv })
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = iv.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts `iv || ciphertext || tag`.
    pub fn decrypt(&self, blob: &[u8]) -> Result<String, CryptoError> {
        if blob.len() < IV_LEN + TAG_LEN {
            return Err(CryptoError::TooShort(blob.len()));
        }
        let (iv, ct) = blob.split_at(IV_LEN);
        let cipher = Aes256Gcm::new((&self.0).into());
        let pt = cipher
            .decrypt(Nonce::from_slice(&iv[..12]), Payload { msg: ct, aad: iv })
            .map_err(|_| CryptoError::Decrypt)?;
        let s = String::from_utf8(pt).map_err(|_| CryptoError::Plaintext)?;
        if s.contains('\0') {
            return Err(CryptoError::Plaintext);
        }
        Ok(s)
    }
}

/// `"<seed>|" + base64(blob)`, the v0.2 `/encrypt` response body.
pub fn format_transport(seed: u64, blob: &[u8]) -> String {
    format!("{seed}|{}", STANDARD.encode(blob))
}

/// Parses either `"<seed>|<base64>"` or a bare `"<base64>"` (the form `/prove` carries
/// per device, with the seed in the request body). Returns the seed if present.
pub fn parse_transport(text: &str) -> Result<(Option<u64>, Vec<u8>), CryptoError> {
    let (seed, b64) = match text.split_once('|') {
        Some((s, rest)) => {
            let seed: u64 =
                s.trim().parse().map_err(|_| CryptoError::Transport("seed is not an unsigned integer"))?;
            (Some(seed), rest)
        }
        None => (None, text),
    };
    let blob = STANDARD.decode(b64.trim()).map_err(|e| CryptoError::Base64(e.to_string()))?;
    Ok((seed, blob))
}

/// Base64 of a blob, for the per-device values of a `/prove` request.
pub fn encode_blob(blob: &[u8]) -> String {
    STANDARD.encode(blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceInfo;

    fn key() -> ChallengeKey {
        let dev = DeviceInfo {
            name: "x".into(),
            uuid: "00000000000000000000000000000000".into(),
            memory: 1,
            processors: 1,
            clock_rate: 0.0,
            max_threads_per_processor: 1,
            major: 0,
            minor: 0,
            ecc: false,
            concurrent_kernels: false,
        };
        ChallengeKey::derive(&SeedKey::derive(5, &crate::schedule::Nonce([3; 32]), &dev), &[7u8; 32], 1)
    }

    #[test]
    fn round_trip_and_every_byte_is_authenticated() {
        let k = key();
        let blob = k.encrypt("decrypt me please: 42").unwrap();
        assert_eq!(k.decrypt(&blob).unwrap(), "decrypt me please: 42");
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert_eq!(k.decrypt(&bad), Err(CryptoError::Decrypt), "byte {i}");
        }
    }

    #[test]
    fn transport_format_matches_original_shape() {
        let t = format_transport(1_234_567_890_123, &[1, 2, 3]);
        assert_eq!(t, "1234567890123|AQID");
        assert_eq!(parse_transport(&t).unwrap(), (Some(1_234_567_890_123), vec![1, 2, 3]));
        assert_eq!(parse_transport("AQID").unwrap(), (None, vec![1, 2, 3]));
        assert!(matches!(parse_transport("x|AQID"), Err(CryptoError::Transport(_))));
        assert!(matches!(parse_transport("1|***"), Err(CryptoError::Base64(_))));
    }

    #[test]
    fn nul_in_plaintext_is_refused() {
        assert_eq!(key().encrypt("a\0b"), Err(CryptoError::Plaintext));
    }

    #[test]
    fn debug_does_not_print_key() {
        assert_eq!(format!("{:?}", key()), "ChallengeKey(..)");
    }
}
