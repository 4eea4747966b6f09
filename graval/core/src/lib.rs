//! GraVal-compatible proof of VRAM and work, re-implemented in the open (v2: exact
//! INT8 chains where every state is consumed once per iteration; `README.md`).
//!
//! Map of the crate (miner side first, then the validator's):
//! - [`device`]: the device-info dict (original field names and units).
//! - [`schedule`]: everything derived from (seed, device): seed key, PRNG key, mix
//!   salts, fresh-operand keys, hashed rows, the consume rule's slot draws, step hashes.
//! - [`prng`]: Philox4x32-10 i8 fills, the exact integer mix and the step digest
//!   (shared with the CUDA kernels).
//! - [`gemm`]: the CPU INT8 GEMM (i8 x i8 -> i32; blocked, packed, AVX-512 VNNI and
//!   AVX2 microkernels with a portable fallback).
//! - [`engine`]: the backend interface; [`cpu`] and `cuda` (feature `cuda`) implement it.
//! - [`proof`]: sizing to free memory, the chain, the work product.
//! - [`node`]: all devices of a host, proving in parallel and decrypting challenges.
//! - [`crypto`]: HKDF-SHA256 key, AES-256-GCM, the `"<seed>|" + base64(iv||ct)` transport.
//! - [`verify`]: structure, version, spot checks by chain replay on any engine, timing window.
//! - [`challenge`]: the device-info challenge.
//! - [`models`]: the per-model table (registration specs, INT8 rates, v2 iterations
//!   and time estimates).

pub mod challenge;
pub mod cpu;
pub mod crypto;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod engine;
pub mod error;
pub mod gemm;
pub mod models;
pub mod node;
pub mod prng;
pub mod proof;
pub mod schedule;
pub mod verify;

pub use cpu::CpuEngine;
pub use crypto::ChallengeKey;
pub use device::DeviceInfo;
pub use engine::Engine;
pub use error::{BackendError, ChallengeError, CryptoError, DeviceError, ProofError, VerifyError};
pub use node::Node;
pub use proof::{ProofRun, WORK_PRODUCT_VERSION, WorkProduct, prove};
pub use schedule::{Nonce, ProofParams, SeedKey};
pub use verify::{CheckReport, SpotCheck, TimingWindow, Verifier};
