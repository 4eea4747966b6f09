//! Typed payloads of the validator's REST answers that Gepetto decides on: the
//! chute (with `node_selector`, `cords`, `jobs[].ports`, `image_id` and the compute
//! multipliers), instances, metrics, active instances and utilization.
//!
//! Every field the validator may omit or send as `null` has a default, so a
//! validator that adds or drops an optional field does not stop the miner; the
//! fields a deployment cannot do without (`chute_id`, `version`, `image`,
//! `node_selector.gpu_count`) are required and a reply without them is an error.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `null` or absent → `T::default()`.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `GET /miner/chutes/{id}/{version}` and the items of `/miner/chutes/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteChute {
    pub chute_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// `user/name:tag[-patch]`.
    pub image: String,
    #[serde(default, deserialize_with = "nullable")]
    pub code: String,
    #[serde(default, deserialize_with = "nullable")]
    pub filename: String,
    #[serde(default, deserialize_with = "nullable")]
    pub ref_str: String,
    pub version: String,
    #[serde(default, deserialize_with = "nullable")]
    pub supported_gpus: Vec<String>,
    pub node_selector: NodeSelector,
    #[serde(default)]
    pub chutes_version: Option<String>,
    /// Public endpoints; a chute without cords only runs jobs.
    #[serde(default, deserialize_with = "nullable")]
    pub cords: Vec<Value>,
    #[serde(default, deserialize_with = "nullable")]
    pub jobs: Vec<RemoteJobSpec>,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub ban_reason: Option<String>,
    /// [successor] private chutes are not preemptible.
    #[serde(default)]
    pub preemptible: Option<bool>,
    #[serde(default)]
    pub tee: Option<bool>,
    /// [successor] bounty age, urgency, TEE and private bonuses folded into one number.
    #[serde(default)]
    pub effective_compute_multiplier: Option<f64>,
    #[serde(default)]
    pub compute_multiplier: Option<f64>,
}

impl RemoteChute {
    pub fn gpu_count(&self) -> i64 {
        self.node_selector.gpu_count
    }

    pub fn has_cords(&self) -> bool {
        !self.cords.is_empty()
    }

    /// The extra ports of its jobs, `(port, proto)` in listing order.
    pub fn job_ports(&self) -> Vec<(u16, String)> {
        self.jobs.iter().flat_map(|j| j.ports.iter().map(|p| (p.port, p.proto.clone()))).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSelector {
    pub gpu_count: i64,
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RemoteJobSpec {
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<RemoteJobPort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteJobPort {
    pub port: u16,
    #[serde(default = "tcp")]
    pub proto: String,
}

fn tcp() -> String {
    "tcp".to_owned()
}

/// An item of `/miner/instances/`: one of this miner's instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteInstance {
    pub instance_id: String,
    #[serde(default)]
    pub chute_id: Option<String>,
    #[serde(default)]
    pub config_id: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub verified: Option<bool>,
    #[serde(default)]
    pub last_verified_at: Option<String>,
}

/// An item of `/miner/metrics/` (last hour, per chute).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RemoteMetrics {
    pub chute_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub total_invocations: f64,
    #[serde(default, deserialize_with = "nullable")]
    pub total_compute_time: f64,
    #[serde(default)]
    pub compute_multiplier: Option<f64>,
    #[serde(default, deserialize_with = "nullable")]
    pub error_count: f64,
    #[serde(default, deserialize_with = "nullable")]
    pub rate_limit_count: f64,
    #[serde(default, deserialize_with = "nullable")]
    pub instance_count: i64,
    #[serde(default)]
    pub total_usage_usd: Option<f64>,
    #[serde(default)]
    pub per_second_price_usd: Option<f64>,
}

impl RemoteMetrics {
    /// The mean compute seconds of one invocation in the last hour (0 when none ran).
    pub fn mean_compute_s(&self) -> f64 {
        if self.total_invocations > 0.0 { self.total_compute_time / self.total_invocations } else { 0.0 }
    }

    /// Instances' worth of demand in the last hour: compute served plus rate-limited
    /// invocations at the mean compute time, over an hour. A chute no miner served
    /// shows refused invocations but no compute time to size them by: nothing counted.
    pub fn demand_instances(&self) -> f64 {
        (self.total_compute_time + self.rate_limit_count * self.mean_compute_s()) / 3600.0
    }

    /// Instances' worth of demand nobody served in the last hour.
    pub fn unmet_instances(&self) -> f64 {
        self.rate_limit_count * self.mean_compute_s() / 3600.0
    }
}

/// An item of `/miner/active_instances/` (every miner's active instances).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveInstance {
    pub chute_id: String,
    pub instance_id: String,
    #[serde(default)]
    pub compute_multiplier: Option<f64>,
}

/// An item of `GET /chutes/utilization`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Utilization {
    pub chute_id: String,
    #[serde(default)]
    pub scalable: Option<bool>,
    #[serde(default)]
    pub update_in_progress: Option<bool>,
}

impl Utilization {
    /// The autoscaler leaves a chute alone when the validator says so.
    pub fn capped(&self) -> bool {
        self.scalable == Some(false) || self.update_in_progress == Some(true)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn a_chute_with_nulls_and_extra_fields_parses() {
        let c: RemoteChute = serde_json::from_value(json!({
            "chute_id": "c", "image": "u/n:t", "version": "v", "node_selector": {"gpu_count": 2, "min_vram": 40},
            "cords": null, "jobs": [{"ports": [{"port": 9000, "proto": "udp"}, {"port": 9001}]}],
            "supported_gpus": ["h100"], "effective_compute_multiplier": 2.5, "surprise": true
        }))
        .unwrap();
        assert_eq!(c.gpu_count(), 2);
        assert!(!c.has_cords());
        assert_eq!(c.job_ports(), vec![(9000, "udp".to_owned()), (9001, "tcp".to_owned())]);
        assert_eq!(c.node_selector.other["min_vram"], 40);
    }

    #[test]
    fn a_chute_without_gpu_count_is_refused() {
        let e = serde_json::from_value::<RemoteChute>(json!({"chute_id": "c", "image": "i", "version": "v",
            "node_selector": {}}))
        .unwrap_err();
        assert!(e.to_string().contains("gpu_count"), "{e}");
    }

    #[test]
    fn metrics_tolerate_nulls() {
        let m: RemoteMetrics =
            serde_json::from_value(json!({"chute_id": "c", "total_invocations": null, "instance_count": 3}))
                .unwrap();
        assert_eq!((m.total_invocations, m.instance_count), (0.0, 3));
    }
}
