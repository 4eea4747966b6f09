//! Adding and removing one GPU node (`minerctl add-node` / `remove-node`), and the miner's
//! inventory as `minerctl status` shows it.
//!
//! Three parts, each with one job:
//! - [`phases`]: which provision phases run where. Adding a node runs every role on the new
//!   host and, on the primary, only the WireGuard peer list and the join/label phases (the
//!   mesh is a star: the primary is the only host that lists every peer). Removing a node
//!   makes it leave the cluster and rewrites the primary's peer list without it.
//! - [`api`]: the miner API's add/delete flow and inventory listing, signed with the miner's hotkey: `POST /servers/`
//!   with its server-sent progress followed line by line, `delete_preflight`, `DELETE`.
//! - [`drain`]: cordon, evict, wait and delete the Kubernetes Node.
//! - [`status`]: `GET /servers/` as typed servers, GPUs and deployments, and the table
//!   `minerctl status` prints from them (a pure function of the answer and the time).
//!
//! Invariants:
//! - Nothing here opens SSH: host changes go through `provision-engine` (one place that
//!   changes hosts), so `--check` and the lock hold for these commands too.
//! - The add flow succeeds only on the API's own completion line; an `error:` line, a
//!   refused request or a stream that ends early is an error carrying the API's reason.
//! - The hotkey seed never leaves `chutes-protocol`: requests carry signatures only.

pub mod api;
pub mod drain;
mod error;
pub mod phases;
pub mod sse;
pub mod status;

pub use api::{AddOutcome, MinerApi, ServerArgs};
pub use drain::{DrainOptions, delete_node, drain};
pub use error::NodesError;
