//! Bad input at scale for signed headers and addresses: the inbound verifier, the
//! validator-side check and the SS58 decoder refuse with an error, never panic.
//! Cases: 1,000 header sets per verifier, 1,000 addresses (`PROPTEST_CASES` overrides).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chutes_protocol::auth::{Payload, headers, now_unix, verify_miner_request};
use chutes_protocol::{Hotkey, InboundVerifier};
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use test_support::proptest_config as cases;

fn key(seed: u8) -> Hotkey {
    Hotkey::from_seed(&[seed; 32], "prop").unwrap()
}

/// A header value: absent, or near-valid (real addresses, digits, hex) or anything.
fn value(real: Vec<String>) -> impl Strategy<Value = Option<Vec<u8>>> {
    let real = prop::sample::select(real).prop_map(String::into_bytes);
    prop::option::weighted(
        0.9,
        prop_oneof![
            real,
            "[0-9]{0,25}".prop_map(String::into_bytes),
            "(0x)?[0-9a-fA-F]{0,140}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..80),
        ],
    )
}

fn header_map(values: [(&'static str, Option<Vec<u8>>); 5]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, v) in values {
        if let Some(bytes) = v
            && let Ok(v) = HeaderValue::from_bytes(&bytes)
        {
            map.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), v);
        }
    }
    map
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn forged_management_headers_are_refused_with_an_error(
        miner in value(vec![key(1).ss58().to_owned(), key(9).ss58().to_owned()]),
        validator in value(vec![key(2).ss58().to_owned(), key(3).ss58().to_owned()]),
        nonce in value(vec![now_unix().to_string(), (now_unix() - 29).to_string(), u64::MAX.to_string()]),
        signature in value(vec![key(2).sign(b"x"), "ab".repeat(64)]),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let verifier = InboundVerifier::new(key(1).ss58(), [key(2).ss58()]).unwrap();
        let map = header_map([
            (headers::MINER, miner), (headers::VALIDATOR, validator), (headers::NONCE, nonce),
            (headers::SIGNATURE, signature), (headers::HOTKEY, None),
        ]);
        let e = verifier.verify(&map, Payload::Body(&body), now_unix()).unwrap_err();
        prop_assert!(!e.to_string().is_empty());
    }

    #[test]
    fn forged_miner_headers_are_refused_with_an_error(
        hotkey in value(vec![key(1).ss58().to_owned()]),
        nonce in value(vec![now_unix().to_string()]),
        signature in value(vec![key(1).sign(b"y")]),
    ) {
        let map = header_map([
            (headers::HOTKEY, hotkey), (headers::NONCE, nonce), (headers::SIGNATURE, signature),
            (headers::MINER, None), (headers::VALIDATOR, None),
        ]);
        let e = verify_miner_request(&map, Payload::Purpose("sockets"), now_unix(), 600).unwrap_err();
        prop_assert!(!e.to_string().is_empty());
    }

    #[test]
    fn ss58_addresses_decode_or_fail(text in prop_oneof![any::<String>(), "[1-9A-HJ-NP-Za-km-z]{40,56}"]) {
        if let Err(e) = chutes_protocol::ss58::decode(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
