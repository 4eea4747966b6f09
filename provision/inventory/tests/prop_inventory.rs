//! Bad input at scale for the inventory: random text and random edits of the example
//! inventory end in a located error or an inventory, never a panic or a hang.
//! Cases: 1,500 random texts, 2,500 mutated examples (`PROPTEST_CASES` overrides).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../../inventory.example.yml");

use test_support::proptest_config as cases;

fn check(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = provision_inventory::parse_str(text, Path::new("inv.yml")) {
        let msg = e.to_string();
        prop_assert!(msg.contains("inv.yml"), "error does not name the file: {msg}");
        for p in e.problems() {
            prop_assert!(!p.message.is_empty());
        }
    }
    Ok(())
}

/// An edit of the example: replace a byte range with YAML-ish junk.
fn mutation() -> impl Strategy<Value = String> {
    let junk = prop_oneof![
        Just(String::new()),
        Just(": ".to_owned()),
        Just("\n  - ".to_owned()),
        Just("{".to_owned()),
        Just("&a *a".to_owned()),
        Just("!!binary".to_owned()),
        Just("'".to_owned()),
        Just("\t".to_owned()),
        "[ -~\\n]{0,20}",
        any::<String>(),
    ];
    (0..EXAMPLE.len(), 0usize..40, junk).prop_map(|(at, len, junk)| {
        let mut start = at;
        while !EXAMPLE.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (start + len).min(EXAMPLE.len());
        while !EXAMPLE.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{junk}{}", &EXAMPLE[..start], &EXAMPLE[end..])
    })
}

proptest! {
    #![proptest_config(cases(1500))]

    #[test]
    fn random_text_is_refused_with_a_located_error(text in prop_oneof![any::<String>(), "[a-z: \\-\\n{}\\[\\]'\"&*!|>]{0,200}"]) {
        check(&text)?;
    }
}

proptest! {
    #![proptest_config(cases(2500))]

    #[test]
    fn edits_of_the_example_never_panic(text in mutation()) {
        check(&text)?;
    }
}
