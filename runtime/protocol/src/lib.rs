//! The chutes protocol as the miner speaks it, in one place.
//!
//! Every other crate (minerctl, the runtime services, GraVal's bootstrap server)
//! depends on this crate for the miner's identity and for request signing, so the
//! byte-exact formats the validator checks are written exactly once:
//!
//! * [`ss58`]: SS58 addresses (prefix 42, blake2b-512 checksum).
//! * [`keys`]: the sr25519 hotkey ([`Hotkey`]) and verifying keys ([`PublicKey`]).
//! * [`auth`]: the three signed-message formats and the inbound verifier.
//! * [`netaddr`]: which source addresses count as private (Python `ipaddress` semantics).
//! * [`redact`]: masking passwords in URLs before they reach errors and logs.
//!
//! This crate does no I/O beyond reading a key file; it never logs.

pub mod auth;
pub mod keys;
pub mod netaddr;
pub mod redact;
pub mod ss58;

pub use auth::{AuthError, InboundVerifier, Payload, Prechecked, SignedHeaders};
pub use keys::{Hotkey, KeyError, PublicKey, SignatureError};
pub use ss58::Ss58Error;
