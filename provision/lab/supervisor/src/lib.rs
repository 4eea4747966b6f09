//! `minerctl lab`: the whole miner on one machine.
//!
//! * [`supervisor`]: the process that makes the lab step by step (lab hosts, the
//!   Kubernetes and validator emulators, Postgres and Redis, `minerctl provision`,
//!   `images`, `deploy`, `add-node`, the miner's API and Gepetto) and owns every
//!   guard until `lab down`.
//! * [`state`]: the state directory and its record of everything made.
//! * [`control`]: the control socket `lab status` and `lab down` talk to.
//! * [`down`]: the cleanup, from the record alone (also after the supervisor crashed).
//! * [`containers`]: the lab's podman store, where the GraVal bootstrap and chute pods
//!   run as containers when `lab up` built or reused images.
//! * [`hosts`], [`miner`], [`scenario`]: the lab's assembly, shared with the tests.

pub mod containers;
pub mod control;
pub mod down;
pub mod hosts;
pub mod miner;
pub mod scenario;
pub mod state;
pub mod supervisor;

pub use state::{DEFAULT_STATE_DIR, Record, StateDir};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("lab state record {path}: {reason}")]
    Record { path: PathBuf, reason: String },
    #[error("{0}")]
    Hosts(#[from] lab_hosts::lab::LabError),
    #[error("{0}")]
    Harness(#[from] lab_hosts::HarnessError),
    #[error("{step}: {detail}")]
    Step { step: String, detail: String },
    #[error("the lab's supervisor at {socket} did not answer: {detail}")]
    Control { socket: PathBuf, detail: String },
    #[error("lab down was asked for while the lab was starting")]
    Interrupted,
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let context = context.into();
    move |source| LabError::Io { context, source }
}

pub(crate) fn step_err(step: &str, detail: impl std::fmt::Display) -> LabError {
    LabError::Step { step: step.to_owned(), detail: detail.to_string() }
}
