//! The protocol crate's contract with the validator: known vectors made by other
//! implementations, and every refusal of the inbound verifier.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chutes_protocol::auth::{self, Payload, headers};
use chutes_protocol::{AuthError, Hotkey, InboundVerifier, KeyError, PublicKey, SignatureError};

const SEED: &str = "e5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";
const ADDRESS: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
const BODY: &str = r#"{"name":"gpu-0","validator":"5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY","hourly_cost":1.5,"gpu_short_ref":"h100_sxm"}"#;
/// Made by another sr25519 implementation (py-sr25519-bindings) with SEED over MESSAGE.
const FOREIGN_SIGNATURE: &str = "ea16e919fb834322589598572c6d914b7801ed661c459002bb4d32578e6e4a603f9c25b5f6c885b176b81b7f13bf6b6fe72cbdd030589a66bbfe16e50749908b";
const NONCE: u64 = 1_764_160_000;

fn message() -> String {
    format!("{ADDRESS}:{ADDRESS}:{NONCE}:844c6fe8f8c248b501a4ad951c5a300965cd47b2edf76ccba6b32b441cc862f8")
}

fn hotkey() -> Hotkey {
    Hotkey::from_seed_hex(SEED, "test").unwrap()
}

#[test]
fn known_seed_yields_known_address_with_and_without_0x() {
    assert_eq!(hotkey().ss58(), ADDRESS);
    assert_eq!(Hotkey::from_seed_hex(&format!("0x{SEED}\n"), "t").unwrap().ss58(), ADDRESS);
}

#[test]
fn body_hash_and_management_message_match_the_vector() {
    assert_eq!(auth::management_message(ADDRESS, ADDRESS, NONCE, Payload::Body(BODY.as_bytes())), message());
}

#[test]
fn foreign_signature_verifies_and_any_changed_byte_fails() {
    let key = PublicKey::from_ss58(ADDRESS).unwrap();
    let msg = message();
    key.verify(msg.as_bytes(), FOREIGN_SIGNATURE).unwrap();

    for i in 0..msg.len() {
        let mut changed = msg.clone().into_bytes();
        changed[i] ^= 0x01;
        assert_eq!(
            key.verify(&changed, FOREIGN_SIGNATURE),
            Err(SignatureError::Mismatch),
            "message byte {i} changed but the signature still verified"
        );
    }
    let sig = hex::decode(FOREIGN_SIGNATURE).unwrap();
    for i in 0..sig.len() {
        let mut changed = sig.clone();
        changed[i] ^= 0x01;
        assert!(
            key.verify(msg.as_bytes(), &hex::encode(&changed)).is_err(),
            "signature byte {i} changed but it still verified"
        );
    }
}

#[test]
fn own_signatures_verify_raw_and_polkadot_wrapped() {
    let key = hotkey();
    let sig = key.sign(b"hello");
    assert_eq!(sig.len(), 128);
    assert!(sig.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    key.public().verify(b"hello", &sig).unwrap();
    let wrapped = key.sign(b"<Bytes>hello</Bytes>");
    key.public().verify(b"hello", &wrapped).unwrap();
    assert_eq!(key.public().verify(b"hullo", &sig), Err(SignatureError::Mismatch));
    assert_eq!(key.public().verify(b"hello", "abc"), Err(SignatureError::Encoding));
}

#[test]
fn debug_output_never_shows_the_seed() {
    let key = hotkey();
    let shown = format!("{key:?} {key:#?}");
    assert!(shown.contains(ADDRESS));
    assert!(shown.contains("redacted"));
    assert!(!shown.to_lowercase().contains(&SEED[..16]));
}

#[test]
fn loads_bittensor_hotkey_files_and_hex_seed_files() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("hotkey");
    std::fs::write(
        &json,
        format!(
            r#"{{"accountId":"0xd435","publicKey":"0xd435","secretPhrase":"x","secretSeed":"0x{SEED}","ss58Address":"{ADDRESS}"}}"#
        ),
    )
    .unwrap();
    assert_eq!(Hotkey::load(&json).unwrap().ss58(), ADDRESS);

    let plain = dir.path().join("seed.hex");
    std::fs::write(&plain, format!("{SEED}\n")).unwrap();
    assert_eq!(Hotkey::load(&plain).unwrap().ss58(), ADDRESS);
}

#[test]
fn hotkey_file_errors_name_the_file_and_never_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let other = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, format!(r#"{{"secretSeed":"0x{SEED}","ss58Address":"{other}"}}"#)).unwrap();
    let err = Hotkey::load(&tampered).unwrap_err();
    assert!(matches!(err, KeyError::FileAddressMismatch { .. }));
    let text = err.to_string();
    assert!(text.contains("tampered.json") && text.contains(other) && text.contains(ADDRESS), "{text}");

    let short = dir.path().join("short");
    std::fs::write(&short, &SEED[..60]).unwrap();
    let text = Hotkey::load(&short).unwrap_err().to_string();
    assert!(text.contains("short") && text.contains("64 hex"), "{text}");
    assert!(!text.contains(&SEED[..20]));

    let no_seed = dir.path().join("noseed.json");
    std::fs::write(&no_seed, r#"{"ss58Address":"x"}"#).unwrap();
    assert!(Hotkey::load(&no_seed).unwrap_err().to_string().contains("secretSeed"));

    let missing = dir.path().join("absent");
    assert!(Hotkey::load(&missing).unwrap_err().to_string().contains("absent"));
}

#[test]
fn configured_address_must_match_the_seed() {
    let key = hotkey();
    key.check_address(ADDRESS).unwrap();
    let other = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
    assert!(matches!(key.check_address(other), Err(KeyError::AddressMismatch { .. })));
    assert!(matches!(key.check_address("5Grw"), Err(KeyError::Ss58(_))));
}

#[test]
fn expose_seed_returns_the_seed_it_was_built_from() {
    assert_eq!(hotkey().expose_seed_hex().as_str(), format!("0x{SEED}"));
}

fn validator() -> Hotkey {
    Hotkey::from_seed(&[7u8; 32], "validator").unwrap()
}

fn verifier() -> InboundVerifier {
    InboundVerifier::new(ADDRESS, [ADDRESS, validator().ss58()]).unwrap()
}

#[test]
fn management_request_from_an_allowed_signer_is_accepted_once() {
    let v = verifier();
    let now = 1_800_000_000;
    let signed = validator().sign_management_at(ADDRESS, Payload::Purpose("management"), now - 3);
    let map = signed.to_header_map();
    assert_eq!(v.verify(&map, Payload::Purpose("management"), now), Ok(validator().ss58().to_owned()));
    assert_eq!(v.verify(&map, Payload::Purpose("management"), now), Err(AuthError::Replayed));

    // The operator signs as both miner and validator, as the original CLI does.
    let own = hotkey().sign_management_at(ADDRESS, Payload::Body(BODY.as_bytes()), now);
    assert_eq!(own.get(headers::MINER), own.get(headers::VALIDATOR));
    assert_eq!(v.verify(&own.to_header_map(), Payload::Body(BODY.as_bytes()), now), Ok(ADDRESS.to_owned()));
}

#[test]
fn every_kind_of_bad_management_request_is_refused_with_its_reason() {
    let v = verifier();
    let now = 1_800_000_000;
    let purpose = Payload::Purpose("management");
    let good = || validator().sign_management_at(ADDRESS, purpose, now).to_header_map();

    for name in ["x-chutes-miner", "x-chutes-validator", "x-chutes-nonce", "x-chutes-signature"] {
        let mut map = good();
        map.remove(name);
        assert!(matches!(v.verify(&map, purpose, now), Err(AuthError::MissingHeader(_))), "{name}");
    }

    let stranger = Hotkey::from_seed(&[9u8; 32], "stranger").unwrap();
    let map = stranger.sign_management_at(ADDRESS, purpose, now).to_header_map();
    assert!(matches!(v.verify(&map, purpose, now), Err(AuthError::UnknownSigner { .. })));

    let map = validator().sign_management_at(validator().ss58(), purpose, now).to_header_map();
    assert!(matches!(v.verify(&map, purpose, now), Err(AuthError::WrongMiner { .. })));

    let map = validator().sign_management_at(ADDRESS, purpose, now - 30).to_header_map();
    assert_eq!(v.verify(&map, purpose, now), Err(AuthError::StaleNonce { age: 30, max: 30 }));

    let map = validator().sign_management_at(ADDRESS, purpose, now + 31).to_header_map();
    assert_eq!(v.verify(&map, purpose, now), Err(AuthError::FutureNonce { ahead: 31, max: 30 }));

    let mut map = good();
    map.insert("x-chutes-nonce", "17e8".parse().unwrap());
    assert_eq!(v.verify(&map, purpose, now), Err(AuthError::BadNonce));

    // Signed over one purpose, presented for another: the signature does not match.
    let map = good();
    assert_eq!(
        v.verify(&map, Payload::Purpose("graval"), now),
        Err(AuthError::Signature(SignatureError::Mismatch))
    );
    // A body that changed after signing.
    let map = validator().sign_management_at(ADDRESS, Payload::Body(b"{}"), now).to_header_map();
    assert_eq!(
        v.verify(&map, Payload::Body(b"{ }"), now),
        Err(AuthError::Signature(SignatureError::Mismatch))
    );
}

#[test]
fn miner_requests_verify_as_the_validator_checks_them() {
    let now = 1_800_000_000;
    let key = hotkey();
    let signed = key.sign_request_at(Payload::Body(BODY.as_bytes()), now);
    assert_eq!(signed.get(headers::HOTKEY), Some(ADDRESS));
    let map = signed.to_header_map();
    assert_eq!(
        auth::verify_miner_request(&map, Payload::Body(BODY.as_bytes()), now + 599, 600),
        Ok(ADDRESS.to_owned())
    );
    assert!(matches!(
        auth::verify_miner_request(&map, Payload::Body(BODY.as_bytes()), now + 600, 600),
        Err(AuthError::StaleNonce { .. })
    ));
    assert!(auth::verify_miner_request(&map, Payload::Purpose("miner"), now, 600).is_err());
}

#[test]
fn verifier_refuses_a_malformed_configuration() {
    assert!(InboundVerifier::new("not-an-address", [ADDRESS]).is_err());
    assert!(InboundVerifier::new(ADDRESS, ["5Grw"]).is_err());
}

#[test]
fn exact_only_verifiers_refuse_the_wrapped_form_and_accept_the_raw_one() {
    let key = hotkey();
    let wrapped = key.sign(b"<Bytes>hello</Bytes>");
    assert_eq!(key.public().verify_exact(b"hello", &wrapped), Err(SignatureError::Mismatch));
    key.public().verify_exact(b"hello", &key.sign(b"hello")).unwrap();

    let now = 1_800_000_000;
    let v = verifier().exact_messages_only();
    let message = chutes_protocol::auth::management_message(
        ADDRESS,
        validator().ss58(),
        now,
        Payload::Purpose("porter"),
    );
    let wrapped_msg = format!("<Bytes>{message}</Bytes>");
    let mut map = validator().sign_management_at(ADDRESS, Payload::Purpose("porter"), now).to_header_map();
    map.insert(
        http::HeaderName::from_bytes(headers::SIGNATURE.as_bytes()).unwrap(),
        validator().sign(wrapped_msg.as_bytes()).parse().unwrap(),
    );
    assert!(matches!(v.verify(&map, Payload::Purpose("porter"), now), Err(AuthError::Signature(_))));
    // The default verifier keeps accepting it (substrate-interface compatibility).
    assert!(verifier().verify(&map, Payload::Purpose("porter"), now).is_ok());
}

#[test]
fn precheck_refuses_without_the_body_and_catches_replays_before_the_signature() {
    let v = verifier();
    let now = 1_800_000_000;
    let signed = validator().sign_management_at(ADDRESS, Payload::Body(BODY.as_bytes()), now);
    let map = signed.to_header_map();
    // Stale nonce: refused before any body is needed.
    assert!(matches!(v.precheck(&map, now + 31), Err(AuthError::StaleNonce { .. })));
    let pre = v.precheck(&map, now).unwrap();
    assert_eq!(pre.signer(), validator().ss58());
    assert!(matches!(v.finish(&pre, Payload::Body(b"other"), now), Err(AuthError::Signature(_))));
    assert_eq!(v.finish(&pre, Payload::Body(BODY.as_bytes()), now), Ok(validator().ss58().to_owned()));
    // Once accepted, the same signature is refused by the cheap check.
    assert_eq!(v.precheck(&map, now).unwrap_err(), AuthError::Replayed);
}

/// A replay spelled differently (`0X` prefix, upper-case digits) is the same signature:
/// refused, including for a different route's purpose (before the fix `0X<hex>` missed
/// the replay cache and verified after the prefix was stripped).
#[test]
fn a_replayed_signature_in_another_spelling_is_still_a_replay() {
    let v = verifier();
    let now = 1_800_000_000;
    let signed = validator().sign_management_at(ADDRESS, Payload::Purpose("management"), now);
    let map = signed.to_header_map();
    assert!(v.verify(&map, Payload::Purpose("management"), now).is_ok());
    let original = map.get(headers::SIGNATURE).unwrap().to_str().unwrap().trim_start_matches("0x").to_owned();
    for spelling in [format!("0X{original}"), format!("0x{original}"), original.to_ascii_uppercase()] {
        let mut again = map.clone();
        again.insert(
            http::HeaderName::from_bytes(headers::SIGNATURE.as_bytes()).unwrap(),
            spelling.parse().unwrap(),
        );
        assert_eq!(v.precheck(&again, now + 1).unwrap_err(), AuthError::Replayed, "{spelling}");
        assert_eq!(
            v.verify(&again, Payload::Purpose("management"), now + 1).unwrap_err(),
            AuthError::Replayed,
            "{spelling}"
        );
    }
}

/// The nonce window is checked again when the signature is: a request whose body (or
/// turn at the curve check) came after the window is refused, even once the replay
/// cache has forgotten its signature.
#[test]
fn finish_refuses_a_prechecked_request_whose_nonce_left_the_window() {
    let v = verifier();
    let now = 1_800_000_000;
    let signed = validator().sign_management_at(ADDRESS, Payload::Body(BODY.as_bytes()), now);
    let pre = v.precheck(&signed.to_header_map(), now).unwrap();
    assert!(matches!(
        v.finish(&pre, Payload::Body(BODY.as_bytes()), now + 31),
        Err(AuthError::StaleNonce { age: 31, .. })
    ));
    // Inside the window it is accepted, once.
    assert_eq!(v.finish(&pre, Payload::Body(BODY.as_bytes()), now + 29), Ok(validator().ss58().to_owned()));
}
