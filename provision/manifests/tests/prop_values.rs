//! Bad input at scale for values: `--set` / `--set-string` arguments and values
//! files end in an error naming the argument, file or key, or in values; never a panic.
//! Cases: 2,500 `--set` arguments, 1,000 values files (`PROPTEST_CASES` overrides).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use minerctl_manifests::{Layer, Values};
use proptest::prelude::*;

use test_support::proptest_config as cases;

/// Keys that exist, keys that almost do, and junk; values of every YAML type.
fn set_arg() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("porter.enabled".to_owned()),
        Just("minerApi.nodePort".to_owned()),
        Just("validators.supported[0].registryNodePort".to_owned()),
        Just("registry.resolvers".to_owned()),
        "[a-zA-Z]{1,8}(\\.[a-zA-Z0-9\\[\\]]{1,8}){0,3}",
        "[ -~]{0,20}",
    ];
    let value = prop_oneof![
        Just("true".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("{a: 1}".to_owned()),
        Just("[1,2".to_owned()),
        Just("null".to_owned()),
        "[ -~]{0,20}",
    ];
    (key, prop::option::of(value), prop::bool::ANY).prop_map(|(k, v, two)| match (v, two) {
        (Some(v), true) => format!("{k}={v},{k}\\,x={v}"),
        (Some(v), false) => format!("{k}={v}"),
        (None, _) => k,
    })
}

proptest! {
    #![proptest_config(cases(2500))]

    #[test]
    fn set_arguments_are_applied_or_refused_naming_the_argument(arg in set_arg(), string in prop::bool::ANY) {
        let layer = if string { Layer::SetString(arg.clone()) } else { Layer::Set(arg.clone()) };
        if let Err(e) = Values::load(&[layer]) {
            let msg = e.to_string();
            prop_assert!(!msg.is_empty());
            prop_assert!(msg.contains("--set") || msg.contains("KEY=VALUE") || msg.contains(arg.trim()),
                "error does not say which argument: {msg}");
        }
    }
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn values_files_are_loaded_or_refused_naming_the_file(
        text in prop_oneof![
            any::<String>(),
            "(porter|minerApi|registry|validators|namespace):( [ -~]{0,12}|\\n  [a-zA-Z]{1,10}: [ -~]{0,10})",
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.yaml");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = Values::load(&[Layer::File(path)]) {
            let msg = e.to_string();
            // Syntax and type errors name the file; checks that run after the layers
            // are merged name the key (they do not know which layer set it).
            prop_assert!(msg.contains("values.yaml") || msg.contains("key `"), "error says neither file nor key: {msg}");
        }
    }
}
