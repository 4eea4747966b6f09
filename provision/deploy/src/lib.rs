//! `minerctl deploy` as a library: applies a rendered [`Manifest`] to a cluster.
//!
//! Invariants:
//! - Every write is a server-side apply with field manager `minerctl`, in dependency order
//!   (namespace, RBAC, secrets, config, services, workloads); a field someone else changed
//!   is a conflict unless `force_conflicts`.
//! - A second deploy with the same inputs changes nothing (no resourceVersion moves).
//! - Create-once Secrets (database passwords) are created with random values when missing
//!   and never updated or deleted; operator credentials (`miner-credentials`, `regcred`)
//!   are applied when given and never pruned.
//! - Prune deletes only objects that the previous deploy recorded (ConfigMap
//!   `minerctl-applied`), that are no longer rendered, and that carry
//!   `app.kubernetes.io/managed-by=minerctl`.
//! - Secret values never reach output, errors or Debug: dry-run diffs show markers.
//!
//! [`Manifest`]: minerctl_manifests::Manifest

mod credentials;
mod deploy;
mod diff;
mod error;
mod kubeconfig;
mod record;
mod resources;
mod rollout;

pub use credentials::{Credentials, MINER_SECRET, MinerCredentials, REGISTRY_SECRET, RegistryCredentials};
pub use deploy::{FIELD_MANAGER, Options, Report, deploy};
pub use error::DeployError;
pub use kubeconfig::client_from_kubeconfig;
pub use record::RECORD_NAME;

/// A pod whose Ready condition is True.
pub(crate) fn is_pod_ready(pod: &serde_json::Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}
