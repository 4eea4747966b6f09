//! CPU backend: host memory stands in for VRAM, bounded by a byte budget given at
//! construction (the proof fills 95% of it). Always built; the verifier and the
//! tests use it, and it is the reference the CUDA backend is compared with.

use sha2::{Digest, Sha256};

use crate::device::{DeviceInfo, uuid_hex};
use crate::engine::Engine;
use crate::error::BackendError;
use crate::gemm::{MatRef, igemm_nt};
use crate::prng::{FRESH_MATRIX, fill_matrix, mix_matrix};

pub struct CpuEngine {
    info: DeviceInfo,
    /// Memory budget if not `info.memory` (to mirror another device's sizing).
    limit: Option<u64>,
    threads: usize,
    n: usize,
    slots: Vec<Vec<i8>>,
    /// The fresh operand `R_t`.
    fresh: Vec<i8>,
    /// The exact product `S_c . R_t^T`.
    product: Vec<i32>,
}

impl CpuEngine {
    /// An engine reporting `info`; `info.memory` is the memory budget.
    pub fn with_device(info: DeviceInfo, threads: usize) -> Self {
        Self {
            info,
            limit: None,
            threads: threads.max(1),
            n: 0,
            slots: Vec::new(),
            fresh: Vec::new(),
            product: Vec::new(),
        }
    }

    /// Sizes proofs to `bytes` instead of `info.memory`, keeping the reported identity
    /// (e.g. to replay a GPU's proof with that GPU's device info on the CPU).
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// An engine for this host with a memory budget of `budget` bytes and all cores.
    pub fn host(budget: u64) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self::with_device(host_device_info(budget, threads), threads)
    }

    /// `count` engines for this host (testing several "GPUs" on one CPU, e.g. a lab node
    /// that stands in for a multi-GPU server): the first is [`CpuEngine::host`]; device
    /// `i > 0` has a uuid of its own, derived from the host's and `i`.
    pub fn host_devices(budget: u64, count: usize) -> Vec<Self> {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let first = host_device_info(budget, threads);
        (0..count)
            .map(|i| {
                let mut info = first.clone();
                if i > 0 {
                    let digest = Sha256::digest(format!("{}/{i}", first.uuid).as_bytes());
                    let mut uuid = [0u8; 16];
                    uuid.copy_from_slice(&digest[..16]);
                    info.uuid = uuid_hex(&uuid);
                }
                Self::with_device(info, threads)
            })
            .collect()
    }
}

/// Device info for the host CPU: name from /proc/cpuinfo, uuid from the machine id (in a
/// container without one, from the host name: each pod of a lab has its own).
pub fn host_device_info(budget: u64, threads: usize) -> DeviceInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let name =
        crate::device::clip_name(format!("CPU {}", field("model name").unwrap_or_else(|| "unknown".into())));
    let mhz: f64 = field("cpu MHz").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let machine_id = ["/etc/machine-id", "/proc/sys/kernel/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find(|id| !id.trim().is_empty())
        .unwrap_or_else(|| name.clone());
    let digest = Sha256::digest(machine_id.trim().as_bytes());
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    DeviceInfo {
        name,
        uuid: uuid_hex(&uuid),
        memory: budget,
        processors: threads as u64,
        clock_rate: (mhz * 1000.0).round(),
        max_threads_per_processor: 1,
        major: 0,
        minor: 0,
        ecc: false,
        concurrent_kernels: false,
    }
}

impl Engine for CpuEngine {
    fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    fn free_memory(&mut self) -> Result<u64, BackendError> {
        Ok(self.limit.unwrap_or(self.info.memory))
    }

    fn allocate(&mut self, n: usize, count: usize) -> Result<(), BackendError> {
        self.release();
        let elems = n * n;
        let matrix_bytes = elems as u64;
        let free = self.limit.unwrap_or(self.info.memory);
        let err = |index: usize| {
            move |e: std::collections::TryReserveError| BackendError::Alloc {
                index,
                count,
                matrix_bytes,
                free,
                source: Box::new(e),
            }
        };
        let mut slots = Vec::with_capacity(count);
        for index in 0..count {
            let mut v = Vec::new();
            v.try_reserve_exact(elems).map_err(err(index))?;
            v.resize(elems, 0i8);
            slots.push(v);
        }
        self.fresh.try_reserve_exact(elems).map_err(err(count))?;
        self.fresh.resize(elems, 0);
        self.product.try_reserve_exact(elems).map_err(err(count))?;
        self.product.resize(elems, 0);
        self.slots = slots;
        self.n = n;
        Ok(())
    }

    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn fill(&mut self, slot: usize, key: [u32; 2], id: u32) -> Result<(), BackendError> {
        let count = self.slots.len();
        let s = self.slots.get_mut(slot).ok_or(BackendError::Slot { slot, count })?;
        fill_matrix(key, id, s, self.threads);
        Ok(())
    }

    fn fill_all(&mut self, key: [u32; 2]) -> Result<(), BackendError> {
        let threads = self.threads;
        let per = self.slots.len().div_ceil(threads).max(1);
        std::thread::scope(|s| {
            for (c, chunk) in self.slots.chunks_mut(per).enumerate() {
                s.spawn(move || {
                    for (i, m) in chunk.iter_mut().enumerate() {
                        fill_matrix(key, (c * per + i) as u32, m, 1);
                    }
                });
            }
        });
        Ok(())
    }

    fn step(
        &mut self,
        slot: usize,
        fresh: [u32; 2],
        salt: u32,
        rows: &[u32],
        out: &mut [i8],
    ) -> Result<u64, BackendError> {
        let n = self.n;
        let count = self.slots.len();
        let state = self.slots.get_mut(slot).ok_or(BackendError::Slot { slot, count })?;
        fill_matrix(fresh, FRESH_MATRIX, &mut self.fresh, self.threads);
        // P = S . R^T: each element a dot product of a row of S and a row of R (the
        // "TN" layout cuBLAS runs INT8 in).
        igemm_nt(MatRef::new(state, n, n), MatRef::new(&self.fresh, n, n), &mut self.product, self.threads);
        // The state is consumed: its only child replaces it.
        let digest = mix_matrix(&self.product, state, salt, self.threads);
        for (o, &r) in out.chunks_exact_mut(n).zip(rows) {
            let r = r as usize;
            o.copy_from_slice(&state[r * n..(r + 1) * n]);
        }
        Ok(digest)
    }

    fn read_slot(&mut self, slot: usize) -> Result<Vec<i8>, BackendError> {
        let count = self.slots.len();
        self.slots.get(slot).cloned().ok_or(BackendError::Slot { slot, count })
    }

    fn release(&mut self) {
        self.slots = Vec::new();
        self.fresh = Vec::new();
        self.product = Vec::new();
    }
}
