//! `minerctl keys` as an operator uses it: the printed headers are accepted by the
//! miner's own verifier, and the seed never appears in any output.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

use chutes_protocol::auth::now_unix;
use chutes_protocol::{InboundVerifier, Payload};

const SEED: &str = "e5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";
const ADDRESS: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

fn minerctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minerctl")).args(args).output().unwrap()
}

fn hotkey_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("hotkey.json");
    std::fs::write(&path, format!(r#"{{"secretSeed":"0x{SEED}","ss58Address":"{ADDRESS}"}}"#)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn no_seed(out: &Output) {
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains(&SEED[..12]), "seed leaked: {all}");
}

#[test]
fn inspect_prints_address_and_public_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = minerctl(&["keys", "inspect", &hotkey_file(&dir)]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(text.contains(&format!("ss58_address: {ADDRESS}")), "{text}");
    assert!(text.contains("public_key: 0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"));
    no_seed(&out);
}

#[test]
fn output_to_a_reader_that_went_away_is_dropped_without_a_panic() {
    // `minerctl keys inspect KEY | head -0`: the reader is gone before the first line
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_minerctl"))
        .args(["keys", "inspect", &hotkey_file(&dir)])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "a closed pipe is not an error to report: {stderr}");
}

fn parse_headers(out: &Output) -> http::HeaderMap {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut map = http::HeaderMap::new();
    for line in String::from_utf8(out.stdout.clone()).unwrap().lines() {
        let (name, value) = line.split_once(": ").unwrap();
        map.insert(http::HeaderName::try_from(name).unwrap(), value.parse().unwrap());
    }
    map
}

#[test]
fn printed_headers_pass_the_miner_verifier_for_purpose_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let hk = hotkey_file(&dir);
    let verifier = InboundVerifier::new(ADDRESS, [ADDRESS]).unwrap();

    let out = minerctl(&["keys", "headers", "--hotkey", &hk, "--purpose", "management"]);
    no_seed(&out);
    let map = parse_headers(&out);
    assert_eq!(map.len(), 4);
    verifier.verify(&map, Payload::Purpose("management"), now_unix()).unwrap();

    let body = br#"{"name":"gpu-0","validator":"x","hourly_cost":1.5,"gpu_short_ref":"h100_sxm"}"#;
    let body_file = dir.path().join("body.json");
    std::fs::write(&body_file, body).unwrap();
    let out = minerctl(&["keys", "headers", "--hotkey", &hk, "--body", body_file.to_str().unwrap()]);
    let map = parse_headers(&out);
    verifier.verify(&map, Payload::Body(body), now_unix()).unwrap();
    assert!(verifier.verify(&map, Payload::Body(b"{}"), now_unix()).is_err());
}

#[test]
fn a_validator_that_is_not_the_signer_is_refused_with_both_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let other = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
    let out = minerctl(&[
        "keys",
        "headers",
        "--hotkey",
        &hotkey_file(&dir),
        "--purpose",
        "x",
        "--validator",
        other,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(err.contains(other) && err.contains(ADDRESS), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_hotkey_files_fail_with_the_path_and_without_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.hex");
    std::fs::write(&bad, &SEED[..40]).unwrap();
    let out = minerctl(&["keys", "inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken.hex"));
    no_seed(&out);
}
