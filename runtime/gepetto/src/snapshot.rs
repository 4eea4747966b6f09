//! The plain data a [`crate::Strategy`] decides from: the fleet (servers, GPUs,
//! deployments, local chutes, disk) and the validator's view (remote chutes,
//! metrics, utilization caps, every miner's active instances). Built from the
//! database, the cluster watches and the validator listings by the controller, or
//! by hand by a simulator; a strategy never reaches past it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use miner_validator::rest::{ActiveInstance, RemoteMetrics};

#[derive(Debug, Clone, PartialEq)]
pub struct GpuSnap {
    pub gpu_id: String,
    pub model: String,
    pub verified: bool,
    pub deployment_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSnap {
    pub deployment_id: String,
    pub chute_id: String,
    pub version: String,
    pub validator: String,
    pub server_id: String,
    pub gpu_count: usize,
    pub job_id: Option<String>,
    pub instance_id: Option<String>,
    pub active: bool,
    pub stub: bool,
    pub verified_at: Option<DateTime<Utc>>,
    pub activated_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub preemptible: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerSnap {
    pub server_id: String,
    pub name: String,
    pub validator: String,
    pub hourly_cost: f64,
    pub locked: bool,
    pub gpus: Vec<GpuSnap>,
    /// Free ephemeral disk in GB (Kubernetes' view); `None` when unknown.
    pub disk_available_gb: Option<f64>,
}

impl ServerSnap {
    /// Verified GPUs of one of `models` that no deployment holds.
    pub fn free_gpus(&self, models: &[String]) -> usize {
        self.gpus
            .iter()
            .filter(|g| g.verified && g.deployment_id.is_none() && models.contains(&g.model))
            .count()
    }

    /// Verified GPUs of one of `models`, held or not.
    pub fn total_gpus(&self, models: &[String]) -> usize {
        self.gpus.iter().filter(|g| g.verified && models.contains(&g.model)).count()
    }

    pub fn used_gpus(&self) -> usize {
        self.gpus.iter().filter(|g| g.deployment_id.is_some()).count()
    }

    /// Whether `gb` of disk fits (an unknown disk is not held against the server:
    /// the Job's ephemeral-storage request still makes Kubernetes refuse a full node).
    pub fn has_disk(&self, gb: f64) -> bool {
        self.disk_available_gb.is_none_or(|free| free >= gb)
    }

    /// The model of its first GPU (servers hold one GPU type).
    pub fn gpu_model(&self) -> Option<&str> {
        self.gpus.first().map(|g| g.model.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChuteSnap {
    pub chute_id: String,
    pub validator: String,
    pub version: String,
    pub supported_gpus: Vec<String>,
    pub gpu_count: usize,
    pub banned: bool,
    pub preemptible: bool,
    pub chutes_version: Option<String>,
}

/// The miner's side: what it owns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    pub servers: Vec<ServerSnap>,
    pub deployments: Vec<DeploymentSnap>,
    /// Local chute rows by chute_id.
    pub chutes: HashMap<String, ChuteSnap>,
}

impl FleetSnapshot {
    pub fn server(&self, server_id: &str) -> Option<&ServerSnap> {
        self.servers.iter().find(|s| s.server_id == server_id)
    }

    pub fn deployments_of<'a>(&'a self, chute_id: &'a str) -> impl Iterator<Item = &'a DeploymentSnap> + 'a {
        self.deployments.iter().filter(move |d| d.chute_id == chute_id)
    }

    /// The fleet as it will be once `ids` are undeployed: their GPUs free, their rows
    /// gone, and the disk each holds (`disk_gb`) back on its server.
    pub fn without_deployments(&mut self, ids: &[String], disk_gb: impl Fn(&str) -> f64) {
        for d in self.deployments.iter().filter(|d| ids.contains(&d.deployment_id)) {
            if let Some(s) = self.servers.iter_mut().find(|s| s.server_id == d.server_id)
                && let Some(free) = &mut s.disk_available_gb
            {
                *free += disk_gb(&d.deployment_id);
            }
        }
        self.deployments.retain(|d| !ids.contains(&d.deployment_id));
        for g in self.servers.iter_mut().flat_map(|s| s.gpus.iter_mut()) {
            if g.deployment_id.as_ref().is_some_and(|d| ids.contains(d)) {
                g.deployment_id = None;
            }
        }
    }

    /// Non-job deployments of a chute at its local version.
    pub fn non_job_count(&self, chute: &ChuteSnap) -> usize {
        self.deployments_of(&chute.chute_id)
            .filter(|d| d.job_id.is_none() && d.version == chute.version && d.validator == chute.validator)
            .count()
    }
}

/// What the autoscaler knows of a remote chute.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteChuteInfo {
    pub version: String,
    pub has_cords: bool,
    pub effective_compute_multiplier: Option<f64>,
}

/// The validators' side, merged over every validator this miner serves (chute ids
/// are global).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidatorView {
    pub chutes: HashMap<String, RemoteChuteInfo>,
    pub metrics: HashMap<String, RemoteMetrics>,
    /// Chutes the validator marks not scalable or mid-update.
    pub capped: HashSet<String>,
    /// Every miner's active instances by chute (the successor's global counts).
    pub active_instances: HashMap<String, Vec<ActiveInstance>>,
}

impl ValidatorView {
    /// Global instance count of a chute: active instances when known, else the
    /// metrics' `instance_count`.
    pub fn instance_count(&self, chute_id: &str) -> Option<usize> {
        let active = self.active_instances.get(chute_id);
        Self::count_instances(active, active.is_none().then(|| self.metrics.get(chute_id)).flatten())
    }

    /// [`ValidatorView::instance_count`] from a chute's entries already looked up (a
    /// caller that needs them anyway hashes the chute id once per map).
    pub(crate) fn count_instances(
        active: Option<&Vec<ActiveInstance>>,
        metrics: Option<&RemoteMetrics>,
    ) -> Option<usize> {
        match active {
            Some(list) => Some(list.len()),
            None => metrics.map(|m| m.instance_count.max(0) as usize),
        }
    }

    /// The compute multiplier the validator pays an instance.
    pub fn instance_multiplier(&self, chute_id: &str, instance_id: &str) -> Option<f64> {
        self.active_instances
            .get(chute_id)?
            .iter()
            .find(|i| i.instance_id == instance_id)
            .and_then(|i| i.compute_multiplier)
    }
}

/// Last invocation time per chute, from Prometheus. A chute missing here is
/// "unknown", which preemption treats as recently used (it is not preempted).
pub type LastInvocations = HashMap<String, DateTime<Utc>>;
