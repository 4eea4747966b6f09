//! The Kubernetes objects the miner creates at runtime, and the arithmetic behind
//! their resource requests (reference sections 12 and 13).
//!
//! One home for what the API (the GraVal bootstrap of add-node) and Gepetto (chute
//! deployments) both need: [`chute`] builds the chute Job `chute-<id>`, Service
//! `chute-service-<id>` and code ConfigMap `chute-code-<uuid5>`; [`graval`] the GraVal
//! bootstrap Job and Service; [`quantity`] parses Kubernetes quantities and derives
//! per-GPU CPU/memory and per-node disk. Builders are pure: no client, no I/O, so the
//! exact objects are snapshot-tested.

pub mod chute;
pub mod graval;
pub mod ids;
pub mod quantity;

pub use chute::{ChuteJob, ExtraPort, LaunchToken, ServicePorts};
pub use ids::{canonical_gpu_uuid, code_configmap_name, uuid4, uuid5_oid};
pub use quantity::{DiskUsage, parse_cpu, parse_gib, per_gpu_resources};

/// What a builder refuses. Messages name the object and the field.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("GPU id {gpu_id:?} is not a UUID (NVIDIA_VISIBLE_DEVICES needs GPU-<uuid>)")]
    GpuId { gpu_id: String },
    #[error("{object}: {reason}")]
    Invalid { object: String, reason: String },
}

/// Labels every chute object carries (`chutes/…`), as constants so selectors and
/// builders cannot drift apart.
pub mod labels {
    pub const DEPLOYMENT_ID: &str = "chutes/deployment-id";
    pub const CHUTE: &str = "chutes/chute";
    pub const CHUTE_ID: &str = "chutes/chute-id";
    pub const VERSION: &str = "chutes/version";
    pub const CONFIG_ID: &str = "chutes/config-id";
    pub const JOB_ID: &str = "chutes/job-id";
    pub const JOB: &str = "chutes/job";
    /// Selector for every chute Job/pod.
    pub const CHUTE_SELECTOR: &str = "chutes/chute=true";
}

/// Typed object from the JSON literal a builder wrote; a failure is a bug in the
/// builder, reported rather than panicking.
pub(crate) fn typed<T: k8s_openapi::serde::de::DeserializeOwned>(
    object: &str,
    value: serde_json::Value,
) -> Result<T, ObjectError> {
    serde_json::from_value(value)
        .map_err(|e| ObjectError::Invalid { object: object.to_owned(), reason: e.to_string() })
}
