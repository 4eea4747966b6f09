//! Requests as a validator and as attackers make them, shared by the flood test
//! and the flood bench so both measure the same paths.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use chutes_protocol::Hotkey;
use chutes_protocol::auth::{Payload, management_message, now_unix};

pub fn key(seed: u8) -> Hotkey {
    Hotkey::from_seed(&[seed; 32], "test").unwrap()
}

/// Header name/value pairs of one request.
pub type Headers = Vec<(&'static str, String)>;

/// `signer` signs `purpose` for `miner`, naming itself as the validator. Order:
/// miner, validator, nonce, signature.
pub fn genuine(miner: &str, signer: &Hotkey, purpose: &str) -> Headers {
    signer.sign_management(miner, Payload::Purpose(purpose)).iter().map(|(k, v)| (k, v.to_owned())).collect()
}

/// The ways an attacker forges a porter request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Forgery {
    /// A well-formed signature by a key that is not whitelisted, naming itself.
    Stranger,
    /// The whitelisted validator's name with a well-formed signature by another key:
    /// reaches the curve arithmetic.
    Impostor,
    /// The whitelisted key's own signature over the wrong message (another purpose).
    WrongMessage,
    /// A genuine request sent again after porter accepted it.
    Replay,
    /// A signature that is not a valid sr25519 encoding (the cheapest refusal).
    Malformed,
}

impl Forgery {
    pub const ALL: [Forgery; 5] =
        [Forgery::Stranger, Forgery::Impostor, Forgery::WrongMessage, Forgery::Replay, Forgery::Malformed];

    /// Headers of this forgery against `miner` whose whitelist holds `validator`.
    /// For [`Forgery::Replay`] the caller must first get the same headers accepted
    /// (see [`genuine`]); here they are built fresh and returned for that purpose.
    pub fn headers(self, miner: &str, validator: &Hotkey) -> Headers {
        let other = key(0x33);
        match self {
            Forgery::Stranger => genuine(miner, &other, "porter"),
            Forgery::Impostor => {
                let nonce = now_unix();
                let sig = other.sign(
                    management_message(miner, validator.ss58(), nonce, Payload::Purpose("porter")).as_bytes(),
                );
                vec![
                    ("X-Chutes-Miner", miner.to_owned()),
                    ("X-Chutes-Validator", validator.ss58().to_owned()),
                    ("X-Chutes-Nonce", nonce.to_string()),
                    ("X-Chutes-Signature", sig),
                ]
            }
            Forgery::WrongMessage => genuine(miner, validator, "management"),
            Forgery::Replay => genuine(miner, validator, "porter"),
            Forgery::Malformed => {
                let mut h = genuine(miner, validator, "porter");
                h[3].1 = "ab".repeat(64);
                h
            }
        }
    }
}

pub fn apply(mut req: reqwest::RequestBuilder, headers: &Headers) -> reqwest::RequestBuilder {
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req
}
