//! What a new user sees on their first commands: a missing inventory says what to do,
//! and no error line repeats its cause.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn minerctl_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minerctl")).current_dir(dir).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No cause may appear twice on the error line (anyhow's chain repeats a source that
/// the message already printed).
fn assert_no_repeated_cause(text: &str) {
    let parts: Vec<&str> = text.trim().split(": ").collect();
    for pair in parts.windows(2) {
        assert_ne!(pair[0], pair[1], "repeated cause in: {text}");
    }
    assert!(text.matches("(os error").count() <= 1, "repeated OS error in: {text}");
}

#[test]
fn provision_without_an_inventory_points_to_the_example_once() {
    let dir = tempfile::tempdir().unwrap();
    for args in
        [&["provision"][..], &["provision", "inventory.yml", "--check"][..], &["provision", "mine.yml"][..]]
    {
        let out = minerctl_in(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        let text = stderr(&out);
        assert!(text.contains("inventory.example.yml"), "{args:?}: {text}");
        assert!(text.starts_with("error: no inventory at "), "{args:?}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "{args:?}: {text}");
        assert_no_repeated_cause(&text);
    }
}

#[test]
fn file_errors_name_the_file_and_say_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [&[&str]; 4] = [
        &["keys", "inspect", "missing-hotkey.json"],
        &["keys", "headers", "--hotkey", "missing-hotkey.json", "--purpose", "management"],
        &["render", "-f", "missing-values.yaml"],
        &["provision", "/nonexistent-dir/inventory.yml"],
    ];
    for args in cases {
        let out = minerctl_in(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        let text = stderr(&out);
        assert!(text.starts_with("error: "), "{args:?}: {text}");
        assert!(text.contains("missing-") || text.contains("/nonexistent-dir/"), "{args:?}: {text}");
        assert_no_repeated_cause(&text);
    }
}
