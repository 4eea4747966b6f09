//! `minerctl images`: OCI image archives of this workspace's own binaries.
//!
//! Each image is one layer holding the binary, the shared libraries `ldd` lists (and
//! the loader), CA certificates, `/etc/passwd` with the non-root user `chutes` (65532)
//! and a world-writable `/tmp`. The layout is written here byte for byte (`tar`, `oci`),
//! so the same inputs give the same digest on any machine, with no Docker, buildah or
//! registry involved. `build` writes the archives and `images.lock.json` (`lock`), which
//! `render` reads to reference the images by digest.

pub mod build;
pub mod lock;
pub mod oci;
pub mod push;
pub mod registry;
pub mod tar;
pub mod wheel;

use std::path::{Path, PathBuf};

pub use build::{BuildInput, REGISTRY, Report, build_all};
pub use lock::{LOCK_FILE, Lock, LockedImage};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Tar { path: String, reason: String },
    #[error("compressing a layer: {0}")]
    Compress(String),
    #[error("ldd {binary}: {reason}")]
    Ldd { binary: PathBuf, reason: String },
    #[error("wheel {path}: {reason}")]
    Wheel { path: PathBuf, reason: String },
    #[error(
        "{dir}: no wheel provides {library}; download it with `pip download --no-deps --only-binary=:all: \
         --dest {dir} {wheel}`"
    )]
    MissingWheel { dir: PathBuf, library: String, wheel: String },
    #[error(
        "{path}: no such binary; build it first (`cargo build --release -p chutes-miner -p graval-bootstrap`) or pass --binary-dir"
    )]
    MissingBinary { path: PathBuf },
    #[error("the CUDA image needs both --cuda-binary and --cuda-wheels")]
    CudaInputs,
    #[error("lock file {path}: {reason}")]
    Lock { path: PathBuf, reason: String },
}

impl ImageError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> ImageError {
        ImageError::Io { path: path.to_path_buf(), reason: e.to_string() }
    }
}
