//! Bad input at scale for what the validator sends us: Engine.IO / Socket.IO frames
//! and `/miner/*` listing bodies. Each must end in a clear error or a value, never a
//! panic or a hang. Cases: 4,000 frames, 1,500 listing bodies (`PROPTEST_CASES`
//! overrides both).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use miner_validator::rest::{ListingParser, ListingReply};
use miner_validator::socket::protocol::{Inbound, decode};
use proptest::prelude::*;

use test_support::proptest_config as cases;

/// Frames that start like real ones (every packet type we know) and go on with
/// anything: JSON fragments, digits, unicode.
fn frame() -> impl Strategy<Value = String> {
    let head = prop::sample::select(vec![
        "", "0", "1", "2", "3", "4", "40", "41", "42", "43", "44", "45", "451-", "46", "4/chat,", "42/x,",
        "6", "9",
    ]);
    let tail = prop_oneof![
        any::<String>(),
        "[a-z0-9\\[\\]{}\",:\\-]{0,80}",
        Just(r#"["miner_broadcast",{"reason":"gpu_deleted","data":{"gpu_id":"x"}}]"#.to_owned()),
        Just(r#"{"sid":"a","pingInterval":25000,"pingTimeout":20000}"#.to_owned()),
        "[0-9]{0,30}\\[.{0,40}",
    ];
    (head, tail).prop_map(|(h, t)| format!("{h}{t}"))
}

proptest! {
    #![proptest_config(cases(4000))]

    #[test]
    fn frames_decode_or_fail_with_a_short_clear_error(f in frame()) {
        match decode(&f) {
            Ok(Inbound::Event { .. }) => prop_assert!(f.starts_with('4'), "an event from {f:?}"),
            Ok(_) => {}
            Err(e) => {
                let text = e.to_string();
                prop_assert!(text.starts_with("malformed socket.io frame ("), "{text}");
                // The echoed frame is cut, so a huge frame cannot flood the log.
                prop_assert!(e.frame.chars().count() <= 200);
            }
        }
    }
}

/// Listing bodies: SSE-style `data:` lines with JSON, `NO_ITEMS`, junk, CRs, split
/// into arbitrary chunks.
fn listing_body() -> impl Strategy<Value = (Vec<u8>, Vec<usize>)> {
    let line = prop_oneof![
        Just(b"data: NO_ITEMS".to_vec()),
        Just(b"data: {\"chute_id\":\"c\",\"gpu_count\":1}".to_vec()),
        Just(b"".to_vec()),
        Just(b": comment".to_vec()),
        "data: [ -~]{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..60),
    ];
    (prop::collection::vec(line, 0..12), prop::collection::vec(1usize..64, 0..8)).prop_map(|(lines, cuts)| {
        let mut body = Vec::new();
        for l in lines {
            body.extend_from_slice(&l);
            body.push(b'\n');
        }
        (body, cuts)
    })
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn listing_bodies_parse_or_fail_whole_without_panicking((body, cuts) in listing_body()) {
        let mut parser = ListingParser::new(4096);
        let mut rest = &body[..];
        let mut failed = None;
        for cut in cuts.into_iter().chain(std::iter::repeat(usize::MAX)) {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(cut.min(rest.len()));
            rest = tail;
            if let Err(e) = parser.feed(chunk) {
                failed = Some(e);
                break;
            }
        }
        match failed {
            Some(e) => prop_assert!(!e.is_empty()),
            None => match parser.finish() {
                Ok(ListingReply::Items(items)) => prop_assert!(!items.is_empty()),
                Ok(_) => {}
                Err(e) => prop_assert!(!e.is_empty()),
            },
        }
    }
}
