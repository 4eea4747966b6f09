//! Test support that runs real services on this machine.
//!
//! * [`postgres`]: a throwaway PostgreSQL server (initdb into a temp dir, random port).
//! * [`redis`]: a throwaway Redis server, restartable on the same port and data.
//! * `lab`: lab hosts, isolated namespaced hosts with their own sshd.
//! * [`registry`]: a throwaway OCI registry (TLS, htpasswd credentials).
//! * [`cargo_build`]: builds the binaries a test makes images of.
//!
//! Every server is owned by a guard value: dropping it (also while a test panics)
//! stops the server and removes its files. Servers are started from a process-wide
//! spawner thread that never exits and marks each child to die with the test
//! process, so a test binary killed outright leaves no server running; temp dirs
//! of such dead runs are swept the next time a server starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod lab;
pub mod postgres;
mod process;
pub mod redis;
pub mod registry;

pub use postgres::Postgres;
pub use redis::Redis;
pub use registry::Registry;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: String },
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("{what} did not become ready within {secs} s; its log ({log}) ends with:\n{tail}")]
    NotReady { what: String, secs: u64, log: PathBuf, tail: String },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
}

/// `cargo build -p P..` in `dir` (a test's `CARGO_MANIFEST_DIR`), for the binaries a test
/// makes images of; panics when the build fails. The variables cargo sets for the test
/// (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, `OUT_DIR`, ...) are left out: build scripts that
/// watch them (ring's) would rerun and rebuild half the tree.
pub fn cargo_build(dir: &std::path::Path, packages: &[&str]) {
    let mut build = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().to_string();
        if (name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR")
            || name == "OUT_DIR"
        {
            build.env_remove(name);
        }
    }
    build.arg("build");
    for p in packages {
        build.args(["-p", p]);
    }
    let status = build.current_dir(dir).status().unwrap();
    assert!(status.success(), "cargo build -p {}: {status}", packages.join(" -p "));
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let context = context.into();
    move |source| HarnessError::Io { context, source }
}
