//! minerctl's provisioning engine.
//!
//! Flow (after k0sctl): typed inventory -> connect -> facts -> ordered phases of idempotent
//! steps. Roles (crate `provision-roles`) only describe steps; this crate decides and applies.
//!
//! Invariants:
//! - Every change to a host goes through [`apply::apply_change`]; in check mode it returns
//!   before touching the host, so `--check` prints exactly what a run would change (with
//!   unified diffs for file contents) and changes nothing.
//! - Reads are read-only. Facts and the state every phase looks at are read in one command
//!   per host (`state.rs`: dpkg status, one tar of managed files, one stat, one
//!   `systemctl show`, the remaining shell guards) and decided on here; a converged host
//!   therefore costs one round trip and starts processes only for guards that need them.
//! - A step reports ok / changed / failed / skipped; a failed or unreachable host stops
//!   itself only (unless fail-fast); handlers run once per phase however many steps notify,
//!   and a notified handler is remembered on the host until it has run (`pending.rs`).
//! - Captured secrets are redacted from output and the log file.

pub mod apply;
pub mod conn;
pub mod facts;
pub mod pending;
pub mod plan;
pub mod report;
pub mod runner;
pub mod state;
pub mod step;

pub use facts::Facts;
pub use report::{HostRecap, Log, OutputFormat, Redactor, Reporter, StepEvent};
pub use runner::{
    HostVars, Phase, PhasePlan, PlanCtx, Planner, ProfileRow, RunOptions, RunResult, run, target_for,
};
pub use step::{Action, Meta, PackageState, SecretInput, Status, Step, WaitTarget};
