//! What the engine's lab tests share: one run over real SSH against one lab host.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report

use std::path::Path;
use std::sync::Arc;

use lab_hosts::lab::LabHost;
use provision_engine::*;

/// Runs `phases` on the lab host alone (the primary of a one-host inventory), over SSH with
/// its pinned host key, as `minerctl provision` would; the live report (verbose) goes to `out`.
pub async fn run_on(
    h: &LabHost,
    phases: Vec<Phase>,
    check: bool,
    out: Box<dyn std::io::Write + Send>,
) -> RunResult {
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("known_hosts");
    std::fs::write(&kh, h.known_hosts_line() + "\n").unwrap();
    let inv = format!(
        "vars:\n  login_user: root\n  ssh:\n    key: {}\nhosts:\n  {}:\n    address: {}\n    external_ip: 10.9.9.9\n    wireguard_ip: 192.168.0.1\n    is_primary: true\n",
        h.client_key_path().display(),
        h.name(),
        h.addr()
    );
    let inv = Arc::new(provision_inventory::parse_str(&inv, Path::new("lab.yml")).unwrap());
    let mut ssh = provision_ssh::Options::new();
    ssh.known_hosts = kh;
    let opts = RunOptions {
        forks: 1,
        check,
        fail_fast: false,
        limit: None,
        tags: vec![],
        ssh,
        local: false,
        connect_attempts: 1,
        profile: false,
    };
    let red = Redactor::default();
    let reporter = Reporter::new(OutputFormat::Human, red.clone(), true, out);
    run(inv, phases, opts, reporter, Log::none(red)).await
}
