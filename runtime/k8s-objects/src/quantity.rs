//! Kubernetes quantities and the resource math of reference section 13.

use k8s_openapi::api::core::v1::{Node, Pod};

const GI: f64 = 1024.0 * 1024.0 * 1024.0;

/// CPU cores from a quantity (`16`, `15500m`).
pub fn parse_cpu(q: &str) -> Option<f64> {
    match q.trim().strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok().map(|m| m / 1000.0),
        None => q.trim().parse().ok(),
    }
}

/// GiB from a memory or storage quantity (`64Gi`, `65536Mi`, `67108864Ki`, bytes,
/// decimal `G`/`M`/`K`/`T`, or `1e9`).
///
/// The original counted `G` as `Gi` for disk; here every unit is converted exactly.
pub fn parse_gib(q: &str) -> Option<f64> {
    let q = q.trim();
    let units: [(&str, f64); 10] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", GI),
        ("Ti", GI * 1024.0),
        ("Pi", GI * 1024.0 * 1024.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().ok().filter(|n| n.is_finite()).map(|n| n * factor / GI);
        }
    }
    q.parse::<f64>().ok().filter(|n| n.is_finite()).map(|b| b / GI)
}

/// Per-GPU CPU and memory (GiB) for a node, as section 13, with the missing
/// `nvidia.com/gpu.memory` fix (the original then gave `memory_per_gpu = 0`).
///
/// `cpu`: capacity cores; 2 are reserved. `memory_gib`: capacity; 6 GiB reserved.
pub fn per_gpu_resources(
    gpu_count: i64,
    cpu: f64,
    memory_gib: f64,
    gpu_memory_mib: Option<i64>,
) -> (i32, i32) {
    let gpus = gpu_count.max(1) as f64;
    let cpu = cpu.floor() - 2.0;
    let cpu_per_gpu = if cpu <= gpus { 1.0 } else { (cpu / gpus).floor().min(4.0) };
    let total = memory_gib.floor() - 6.0;
    let memory_per_gpu = if total <= gpus {
        1.0
    } else {
        let share = (total * 0.8 / gpus).floor();
        match gpu_memory_mib {
            // The original capped by the GPU's own memory; without the label it capped at 0.
            Some(mib) if mib >= 1024 => share.min((mib / 1024) as f64),
            _ => share,
        }
    };
    (cpu_per_gpu as i32, memory_per_gpu.max(1.0) as i32)
}

/// Ephemeral storage one pod asks for, in GiB: the requests of every container and
/// init container (what the original summed).
pub fn pod_ephemeral_gib(pod: &Pod) -> f64 {
    let Some(spec) = &pod.spec else { return 0.0 };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get("ephemeral-storage"))
        .filter_map(|q| parse_gib(&q.0))
        .sum()
}

/// Whether a pod holds its node's disk: Running or Pending (section 13).
pub fn pod_holds_disk(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running") | Some("Pending") | None)
}

/// A node's ephemeral-storage capacity in GiB, when it reports one.
pub fn node_disk_gib(node: &Node) -> Option<f64> {
    let q = node.status.as_ref()?.capacity.as_ref()?.get("ephemeral-storage")?;
    parse_gib(&q.0)
}

/// Disk of one node as Gepetto accounts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskUsage {
    /// Capacity in GiB (100 when the node reports none, as the original).
    pub total_gib: f64,
    /// Requests of the node's Running/Pending pods.
    pub used_gib: f64,
    /// `max(0, total - used - reserve)`.
    pub available_gib: f64,
}

impl DiskUsage {
    pub fn new(total_gib: Option<f64>, used_gib: f64, reserve_gib: f64) -> DiskUsage {
        let total_gib = total_gib.unwrap_or(100.0);
        DiskUsage { total_gib, used_gib, available_gib: (total_gib - used_gib - reserve_gib).max(0.0) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_cpu("16"), Some(16.0));
        assert_eq!(parse_cpu("15500m"), Some(15.5));
        assert_eq!(parse_gib("64Gi"), Some(64.0));
        assert_eq!(parse_gib("65536Mi"), Some(64.0));
        assert_eq!(parse_gib("67108864Ki"), Some(64.0));
        assert_eq!(parse_gib("68719476736"), Some(64.0));
        assert!((parse_gib("1000G").unwrap() - 931.32).abs() < 0.01);
        assert!(parse_gib("lots").is_none());
        assert!(parse_gib("").is_none());
    }

    #[test]
    fn per_gpu_resources_follow_section_13() {
        // 8 GPUs, 128 CPUs, 2 TiB, 80 GiB GPUs: cpu (126/8=15) capped at 4; memory min(80, 2042*0.8/8=204).
        assert_eq!(per_gpu_resources(8, 128.0, 2048.0, Some(81920)), (4, 80));
        // Few CPUs: 1 per GPU.
        assert_eq!(per_gpu_resources(8, 8.0, 2048.0, Some(81920)), (1, 80));
        // Without the GPU memory label the original gave 0; now the RAM share applies.
        assert_eq!(per_gpu_resources(1, 32.0, 128.0, None), (4, 97));
        // Tiny memory: 1 GiB per GPU.
        assert_eq!(per_gpu_resources(4, 32.0, 8.0, Some(81920)), (4, 1));
    }

    #[test]
    fn disk_keeps_the_reserve_and_never_goes_negative() {
        assert_eq!(DiskUsage::new(Some(500.0), 100.0, 20.0).available_gib, 380.0);
        assert_eq!(DiskUsage::new(Some(50.0), 100.0, 20.0).available_gib, 0.0);
        assert_eq!(DiskUsage::new(None, 0.0, 20.0).available_gib, 80.0);
    }
}
