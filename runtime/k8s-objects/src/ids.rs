//! Identifiers: uuid5 for code ConfigMap names, uuid4 for deployment ids, and the
//! canonical GPU uuid NVIDIA_VISIBLE_DEVICES needs.
//!
//! Written here instead of pulling the `uuid` crate: two 10-line functions over the
//! sha1 and rand crates already in the lock file.

use sha1::{Digest, Sha1};

use crate::ObjectError;

/// RFC 4122 NAMESPACE_OID (`6ba7b812-9dad-11d1-80b4-00c04fd430c8`), as Python's `uuid.NAMESPACE_OID`.
const NAMESPACE_OID: [u8; 16] =
    [0x6b, 0xa7, 0xb8, 0x12, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4, 0x30, 0xc8];

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// `uuid.uuid5(uuid.NAMESPACE_OID, name)`.
pub fn uuid5_oid(name: &str) -> String {
    let mut h = Sha1::new();
    h.update(NAMESPACE_OID);
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

/// A random (version 4) uuid from 16 random bytes.
pub fn uuid4(random: [u8; 16]) -> String {
    let mut b = random;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

/// `chute-code-<uuid5(NAMESPACE_OID, "<chute_id>::<version>")>`.
pub fn code_configmap_name(chute_id: &str, version: &str) -> String {
    format!("chute-code-{}", uuid5_oid(&format!("{chute_id}::{version}")))
}

/// `str(uuid.UUID(gpu_id))`: lower-case dashed form of a GPU id given with or
/// without dashes, braces, `urn:uuid:` or a `GPU-` prefix.
pub fn canonical_gpu_uuid(gpu_id: &str) -> Result<String, ObjectError> {
    let bad = || ObjectError::GpuId { gpu_id: gpu_id.to_owned() };
    let s = gpu_id.trim();
    let s = s.strip_prefix("GPU-").or_else(|| s.strip_prefix("urn:uuid:")).unwrap_or(s);
    let s = s.trim_start_matches('{').trim_end_matches('}');
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(format_uuid(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn uuid5_matches_python() {
        // python3 -c 'import uuid; print(uuid.uuid5(uuid.NAMESPACE_OID, "abc::1"))'
        assert_eq!(uuid5_oid("abc::1"), "dc43a417-a3af-5007-8f04-be193d8dcfd4");
        assert_eq!(code_configmap_name("abc", "1"), "chute-code-dc43a417-a3af-5007-8f04-be193d8dcfd4");
    }

    #[test]
    fn uuid4_sets_version_and_variant() {
        let u = uuid4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }

    #[test]
    fn gpu_ids_canonicalise_like_python_uuid() {
        let want = "8f0a0f3c-1b2d-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(canonical_gpu_uuid("8F0A0F3C1B2D4E5F8A9B0C1D2E3F4A5B").unwrap(), want);
        assert_eq!(canonical_gpu_uuid("GPU-8f0a0f3c-1b2d-4e5f-8a9b-0c1d2e3f4a5b").unwrap(), want);
        assert_eq!(canonical_gpu_uuid("{8f0a0f3c-1b2d-4e5f-8a9b-0c1d2e3f4a5b}").unwrap(), want);
        let e = canonical_gpu_uuid("gpu-0").unwrap_err().to_string();
        assert!(e.contains("\"gpu-0\""), "{e}");
    }
}
