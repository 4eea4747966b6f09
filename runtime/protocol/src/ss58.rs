//! SS58 addresses: `base58(prefix || pubkey || checksum[0..2])` where
//! `checksum = blake2b_512("SS58PRE" || prefix || pubkey)`.
//!
//! Only the generic substrate prefix 42 (one byte) is accepted: it is what every
//! chutes hotkey uses, and refusing other networks catches keys pasted from the
//! wrong wallet.

use blake2::{Blake2b512, Digest};

/// The substrate generic address format, used by Bittensor hotkeys.
pub const PREFIX: u8 = 42;

const CHECKSUM_LEN: usize = 2;
const ADDRESS_LEN: usize = 1 + 32 + CHECKSUM_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Ss58Error {
    #[error("SS58 address {address:?} is not valid base58")]
    Base58 { address: String },
    #[error(
        "SS58 address {address:?} decodes to {len} bytes, expected {ADDRESS_LEN} (prefix, 32-byte key, checksum)"
    )]
    Length { address: String, len: usize },
    #[error("SS58 address {address:?} has network prefix {prefix}, expected {PREFIX}")]
    Prefix { address: String, prefix: u8 },
    #[error("SS58 address {address:?} has a bad checksum (mistyped or truncated?)")]
    Checksum { address: String },
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(body);
    let digest = h.finalize();
    [digest[0], digest[1]]
}

/// Encodes a 32-byte public key as an SS58 address with prefix 42.
pub fn encode(public: &[u8; 32]) -> String {
    let mut raw = Vec::with_capacity(ADDRESS_LEN);
    raw.push(PREFIX);
    raw.extend_from_slice(public);
    let sum = checksum(&raw);
    raw.extend_from_slice(&sum);
    bs58::encode(raw).into_string()
}

/// Decodes an SS58 address with prefix 42 into its 32-byte public key.
pub fn decode(address: &str) -> Result<[u8; 32], Ss58Error> {
    let raw =
        bs58::decode(address).into_vec().map_err(|_| Ss58Error::Base58 { address: address.to_owned() })?;
    if raw.len() != ADDRESS_LEN {
        return Err(Ss58Error::Length { address: address.to_owned(), len: raw.len() });
    }
    if raw[0] != PREFIX {
        return Err(Ss58Error::Prefix { address: address.to_owned(), prefix: raw[0] });
    }
    let (body, sum) = raw.split_at(1 + 32);
    if checksum(body) != sum {
        return Err(Ss58Error::Checksum { address: address.to_owned() });
    }
    let mut public = [0u8; 32];
    public.copy_from_slice(&body[1..]);
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

    #[test]
    fn round_trips_a_known_address() {
        let key = decode(ALICE).unwrap();
        assert_eq!(hex::encode(key), "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d");
        assert_eq!(encode(&key), ALICE);
    }

    #[test]
    fn a_changed_character_fails_the_checksum() {
        let bad = ALICE.replace("NoHGKutQY", "NoHGKutQZ");
        assert!(matches!(decode(&bad), Err(Ss58Error::Checksum { .. })));
    }

    #[test]
    fn truncated_and_non_base58_addresses_are_refused() {
        assert!(matches!(decode(&ALICE[..40]), Err(Ss58Error::Length { .. })));
        assert!(matches!(decode("0OIl"), Err(Ss58Error::Base58 { .. })));
    }

    #[test]
    fn other_network_prefix_is_refused() {
        // Polkadot (prefix 0) address of the same key.
        let key = decode(ALICE).unwrap();
        let mut raw = vec![0u8];
        raw.extend_from_slice(&key);
        let mut h = Blake2b512::new();
        h.update(b"SS58PRE");
        h.update(&raw);
        let d = h.finalize();
        raw.extend_from_slice(&d[..2]);
        let polkadot = bs58::encode(raw).into_string();
        assert_eq!(decode(&polkadot), Err(Ss58Error::Prefix { address: polkadot.clone(), prefix: 0 }));
    }
}
