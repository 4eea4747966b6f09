//! Device info: the dict GraVal's `gather_device_info` produced, with the same field
//! names and units, so validators and orchestration written for the original read it.

use serde::{Deserialize, Serialize};

use crate::error::DeviceError;

/// One GPU (or the host, for the CPU backend) as the miner reports it.
///
/// Units follow the original: `memory` in bytes, `clock_rate` in kHz (the validator
/// divides by 1000 to get MHz), `uuid` as 32 lowercase hex characters without the
/// `GPU-` prefix or dashes. `major`, `minor`, `ecc` and `concurrent_kernels` are the
/// v0 fields the validator still sends; they default when a v0.2-style dict omits them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    pub uuid: String,
    pub memory: u64,
    pub processors: u64,
    pub clock_rate: f64,
    pub max_threads_per_processor: u32,
    #[serde(default)]
    pub major: u32,
    #[serde(default)]
    pub minor: u32,
    #[serde(default)]
    pub ecc: bool,
    #[serde(default)]
    pub concurrent_kernels: bool,
}

/// The longest device name the protocol takes ([`DeviceInfo::validate`]).
pub const MAX_NAME_BYTES: usize = 63;

/// `name` cut to [`MAX_NAME_BYTES`] at a character boundary (`String::truncate` at a
/// byte inside a multi-byte character panics; a CPU model or a driver may report one).
pub fn clip_name(mut name: String) -> String {
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

impl DeviceInfo {
    /// Checks the fields the proof and the challenge depend on, naming the bad one.
    pub fn validate(&self) -> Result<(), DeviceError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_BYTES {
            return Err(DeviceError::Name(self.name.len()));
        }
        if !is_uuid_hex(&self.uuid) {
            return Err(DeviceError::Uuid(self.uuid.clone()));
        }
        if self.memory == 0 {
            return Err(DeviceError::Memory);
        }
        if self.processors == 0 {
            return Err(DeviceError::Processors);
        }
        Ok(())
    }

    /// The identity bytes that key the PRNG and the challenge key (§11.4 of the design):
    /// everything that names the device except `clock_rate`, which drivers report
    /// differently from one call to the next.
    pub(crate) fn identity_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.name.len() + 64);
        out.extend_from_slice(self.uuid.as_bytes());
        out.push(0);
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.memory.to_le_bytes());
        out.extend_from_slice(&self.processors.to_le_bytes());
        out
    }
}

/// 32 lowercase hex characters, as `cudaDeviceProp.uuid` rendered by the original.
pub fn is_uuid_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Renders a 16-byte UUID the way the original does (lowercase hex, no dashes).
pub fn uuid_hex(bytes: &[u8; 16]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_clipped_at_a_character_boundary() {
        let ascii = "x".repeat(80);
        assert_eq!(clip_name(ascii).len(), 63);
        // 62 ASCII bytes, then a 3-byte character straddling byte 63.
        let straddling = format!("{}€tail", "a".repeat(62));
        assert_eq!(clip_name(straddling), "a".repeat(62));
        assert_eq!(clip_name("NVIDIA H100 80GB HBM3".into()), "NVIDIA H100 80GB HBM3");
    }

    pub(crate) fn h100() -> DeviceInfo {
        DeviceInfo {
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: "0123456789abcdef0123456789abcdef".into(),
            memory: 85_029_158_912,
            processors: 132,
            clock_rate: 1_980_000.0,
            max_threads_per_processor: 2048,
            major: 9,
            minor: 0,
            ecc: true,
            concurrent_kernels: true,
        }
    }

    #[test]
    fn parses_the_original_v02_dict_without_v0_fields() {
        let json = r#"{"name":"NVIDIA H100 80GB HBM3","uuid":"0123456789abcdef0123456789abcdef",
            "memory":85029158912,"processors":132,"clock_rate":1980000.0,"max_threads_per_processor":2048}"#;
        let d: DeviceInfo = serde_json::from_str(json).unwrap();
        assert_eq!(d.memory, 85_029_158_912);
        assert_eq!(d.major, 0);
        d.validate().unwrap();
    }

    #[test]
    fn rejects_uuid_with_dashes_or_uppercase() {
        let mut d = h100();
        d.uuid = "GPU-01234567-89ab-cdef-0123-456789abcdef".into();
        assert!(matches!(d.validate(), Err(DeviceError::Uuid(_))));
        d.uuid = "0123456789ABCDEF0123456789ABCDEF".into();
        assert!(matches!(d.validate(), Err(DeviceError::Uuid(_))));
    }

    #[test]
    fn clock_rate_does_not_change_identity() {
        let a = h100();
        let mut b = h100();
        b.clock_rate = 1_755_000.0;
        assert_eq!(a.identity_bytes(), b.identity_bytes());
        b.uuid = "f123456789abcdef0123456789abcdef".into();
        assert_ne!(a.identity_bytes(), b.identity_bytes());
    }
}
