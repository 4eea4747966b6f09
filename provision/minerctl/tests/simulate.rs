//! `minerctl simulate` end to end: the binary generates a small trace, compares the
//! strategies, and writes JSON, the SVG plot and the trace; a replay of that trace
//! prints the same JSON.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn minerctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_minerctl")).args(args).output().unwrap()
}

#[test]
fn simulate_prints_json_writes_the_plot_and_replays_its_trace() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("value.svg");
    let trace = dir.path().join("trace.jsonl");
    let small = ["simulate", "--seed", "3", "--days", "0.5", "--servers", "4", "--output", "json"];
    let out = minerctl(
        &[&small[..], &["--svg", svg.to_str().unwrap(), "--write-trace", trace.to_str().unwrap()]].concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> =
        json["results"].as_array().unwrap().iter().map(|r| r["strategy"].as_str().unwrap()).collect();
    assert_eq!(names, ["heuristic", "multiplier"]);
    assert!(json["results"][0]["value_per_dollar"].as_f64().unwrap() >= 0.0);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.matches("<polyline").count() == 2, "{plot}");

    let replay = minerctl(&["simulate", "--trace", trace.to_str().unwrap(), "--output", "json"]);
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert_eq!(replay.stdout, out.stdout, "a replay of the written trace gives the same figures");

    let table = minerctl(&["simulate", "--days", "0.25", "--servers", "2"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("value/$") && text.contains("multiplier"), "{text}");

    // the current validator's multiplier drift changes what the same decisions earn
    let drifting = minerctl(&[&small[..], &["--multiplier-drift", "7200,28800"]].concat());
    assert!(drifting.status.success(), "{}", String::from_utf8_lossy(&drifting.stderr));
    let drifted: serde_json::Value = serde_json::from_slice(&drifting.stdout).unwrap();
    let bonus = |v: &serde_json::Value| v["results"][0]["multiplier_bonus"].as_f64().unwrap();
    assert!(bonus(&drifted) < bonus(&json), "drift {} vs locked {}", bonus(&drifted), bonus(&json));
    // paid for being there rather than for busy time: same decisions, other value
    let lifetime = minerctl(&[&small[..], &["--scoring", "lifetime"]].concat());
    assert!(lifetime.status.success(), "{}", String::from_utf8_lossy(&lifetime.stderr));
    let lifetime: serde_json::Value = serde_json::from_slice(&lifetime.stdout).unwrap();
    let field = |v: &serde_json::Value, f: &str| v["results"][0][f].as_f64().unwrap();
    assert_eq!(field(&lifetime, "utilisation"), field(&json, "utilisation"));
    assert_ne!(field(&lifetime, "value_compute"), field(&json, "value_compute"));
    let half = minerctl(&["simulate", "--days", "0.25", "--servers", "2", "--multiplier-drift", "7200"]);
    assert!(!half.status.success());
    assert!(String::from_utf8_lossy(&half.stderr).contains("--multiplier-drift"));
    let backwards =
        minerctl(&["simulate", "--days", "0.25", "--servers", "2", "--multiplier-drift", "28800,7200"]);
    assert!(!backwards.status.success());
    assert!(String::from_utf8_lossy(&backwards.stderr).contains("multiplier_drift_s"));

    let bad = minerctl(&["simulate", "--days", "0.25", "--servers", "2", "--strategy", "greedy"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no strategy named \"greedy\""));
}
