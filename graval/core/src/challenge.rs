//! The device-info challenge (`GET /info?challenge=`): 32 random bytes as 64 hex
//! characters; byte 0 selects a device (`b0 % device_count`); the answer is
//! `hex(SHA-256("graval-rs/v1/device-info" || challenge bytes || canonical(device)))`.
//! It proves only that the responder holds a consistent inventory, not hardware.

use aes_gcm::aead::{OsRng, rand_core::RngCore};
use sha2::{Digest, Sha256};

use crate::device::DeviceInfo;
use crate::error::ChallengeError;

/// A fresh challenge whose selector byte is below `device_count`.
pub fn generate(device_count: usize) -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    if device_count > 0 {
        b[0] = (usize::from(b[0]) % device_count.min(256)) as u8;
    }
    hex::encode(b)
}

/// The 64-hex answer for `challenge` over `devices` (in device-index order).
pub fn respond(challenge: &str, devices: &[DeviceInfo]) -> Result<String, ChallengeError> {
    let mut bytes = [0u8; 32];
    if challenge.len() != 64 || hex::decode_to_slice(challenge, &mut bytes).is_err() {
        return Err(ChallengeError::Format);
    }
    if devices.is_empty() {
        return Err(ChallengeError::NoDevices);
    }
    let dev = &devices[usize::from(bytes[0]) % devices.len()];
    let mut d = Sha256::new();
    d.update(b"graval-rs/v1/device-info");
    d.update(bytes);
    for field in [dev.name.as_bytes(), dev.uuid.as_bytes()] {
        d.update((field.len() as u64).to_le_bytes());
        d.update(field);
    }
    d.update(dev.memory.to_le_bytes());
    d.update(dev.processors.to_le_bytes());
    d.update(dev.max_threads_per_processor.to_le_bytes());
    Ok(hex::encode(d.finalize()))
}

/// The validator's check: recompute from the registered device dicts.
pub fn verify(challenge: &str, response: &str, devices: &[DeviceInfo]) -> bool {
    respond(challenge, devices).is_ok_and(|want| want.eq_ignore_ascii_case(response.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devs() -> Vec<DeviceInfo> {
        (0..3)
            .map(|i| DeviceInfo {
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: format!("{i:032x}"),
                memory: 85_029_158_912,
                processors: 132,
                clock_rate: 1_980_000.0,
                max_threads_per_processor: 2048,
                major: 9,
                minor: 0,
                ecc: true,
                concurrent_kernels: true,
            })
            .collect()
    }

    #[test]
    fn answer_verifies_and_depends_on_the_selected_device() {
        let d = devs();
        let c = generate(d.len());
        assert!(usize::from_str_radix(&c[..2], 16).unwrap() < 3);
        let r = respond(&c, &d).unwrap();
        assert_eq!(r.len(), 64);
        assert!(verify(&c, &r, &d));
        let sel = usize::from_str_radix(&c[..2], 16).unwrap();
        let mut wrong = d.clone();
        wrong[sel].uuid = "f".repeat(32);
        assert!(!verify(&c, &r, &wrong));
        let mut other = d.clone();
        other[(sel + 1) % 3].uuid = "f".repeat(32);
        assert!(verify(&c, &r, &other), "only the selected device is hashed");
    }

    #[test]
    fn bad_challenges_are_refused() {
        assert_eq!(respond("zz", &devs()), Err(ChallengeError::Format));
        assert_eq!(respond(&"g".repeat(64), &devs()), Err(ChallengeError::Format));
        assert_eq!(respond(&"0".repeat(64), &[]), Err(ChallengeError::NoDevices));
        assert!(!verify(&"0".repeat(64), "", &devs()));
    }
}
