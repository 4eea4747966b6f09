//! The backend interface: what the proof driver needs from a device. The driver
//! (`proof::prove`) owns the order of steps and all hashing; an engine only holds
//! matrices and runs fill / fresh operand, multiply, mix and digest / row-slice. CPU and
//! CUDA implement it.

use crate::device::DeviceInfo;
use crate::error::BackendError;

pub trait Engine: Send {
    /// The device as reported to the validator.
    fn device_info(&self) -> &DeviceInfo;

    /// Free memory the proof sizes itself against, in bytes.
    fn free_memory(&mut self) -> Result<u64, BackendError>;

    /// Bytes to keep free beside the matrices (library workspaces, module code).
    fn reserve_bytes(&self) -> u64 {
        0
    }

    /// Allocates `count` resident `n x n` matrices plus one scratch matrix.
    /// Fails fast (nothing computed yet) if any allocation fails.
    fn allocate(&mut self, n: usize, count: usize) -> Result<(), BackendError>;

    /// Fills every resident matrix `k` from the PRNG (`prng::fill_matrix(key, k, ..)`).
    fn fill_all(&mut self, key: [u32; 2]) -> Result<(), BackendError>;

    /// `M_k <- mix_salt(R . M_j)` with `R = prng::fill_matrix(fresh, FRESH_MATRIX)`
    /// (`j != k`; the old `M_k` is overwritten, not read), then copies rows `rows` of
    /// the new `M_k`, in order, into `out` (`rows.len() * n` floats) and returns the
    /// digest of the whole new `M_k` (`prng::mix_matrix`).
    fn step(
        &mut self,
        k: usize,
        j: usize,
        fresh: [u32; 2],
        salt: u32,
        rows: &[u32],
        out: &mut [f32],
    ) -> Result<u64, BackendError>;

    /// Copies matrix `k` to the host (tests and debugging).
    fn read_matrix(&mut self, k: usize) -> Result<Vec<f32>, BackendError>;

    /// Frees all matrices.
    fn release(&mut self);
}
