//! Images for tests that need a lock but not real binaries: `minerctl images build` of
//! `/usr/bin/true` as both binaries (a second, tiny archive each; no cargo build).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the stand-in images under `dir`; returns the lock file's path.
pub fn stand_in_lock(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["chutes-miner", "graval-bootstrap"] {
        std::fs::copy("/usr/bin/true", bin.join(name)).unwrap();
    }
    let out = dir.join("images");
    let o = Command::new(env!("CARGO_BIN_EXE_minerctl"))
        .args(["images", "build", "--binary-dir"])
        .arg(&bin)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out.join(minerctl_images::LOCK_FILE)
}
