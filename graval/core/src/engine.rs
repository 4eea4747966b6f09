//! The backend interface: what the proof driver and the verifier's replay need from a
//! device. The driver (`proof::prove`) and the replay (`verify`) own the order of steps
//! and all hashing; an engine only holds i8 states and runs fill, fresh operand,
//! INT8 product, mix and digest, and the row gather. CPU and CUDA implement it; the
//! cheating provers in `tests/cheaters.rs` do too.

use crate::device::DeviceInfo;
use crate::error::BackendError;

pub trait Engine: Send {
    /// The device as reported to the validator.
    fn device_info(&self) -> &DeviceInfo;

    /// Free memory the proof sizes itself against, in bytes.
    fn free_memory(&mut self) -> Result<u64, BackendError>;

    /// Bytes to keep free beside the slots and the step scratch (library workspaces,
    /// module code).
    fn reserve_bytes(&self) -> u64 {
        0
    }

    /// Allocates `count` slots of `n x n` i8 plus the step scratch (fresh operand, n^2
    /// i8, and product, n^2 i32). Fails fast (nothing computed yet) if any allocation fails.
    fn allocate(&mut self, n: usize, count: usize) -> Result<(), BackendError>;

    /// Fills slot `slot` with PRNG matrix `id` (`prng::fill_matrix(key, id, ..)`).
    fn fill(&mut self, slot: usize, key: [u32; 2], id: u32) -> Result<(), BackendError>;

    /// Fills every slot `k` with PRNG matrix `k` (the miner's start).
    fn fill_all(&mut self, key: [u32; 2]) -> Result<(), BackendError> {
        for k in 0..self.slots() {
            self.fill(k, key, k as u32)?;
        }
        Ok(())
    }

    /// Slots allocated.
    fn slots(&self) -> usize;

    /// `S_c <- mix_salt(S_c . R^T)` with `R = prng::fill_matrix(fresh, FRESH_MATRIX)`
    /// (i8 x i8 -> exact i32, then the mix's top bytes), then copies rows `rows` of the
    /// new `S_c`, in order, into `out` (`rows.len() * n` bytes) and returns the digest
    /// of the whole new state (`prng::mix_matrix`).
    fn step(
        &mut self,
        slot: usize,
        fresh: [u32; 2],
        salt: u32,
        rows: &[u32],
        out: &mut [i8],
    ) -> Result<u64, BackendError>;

    /// Copies slot `slot` to the host (tests and debugging).
    fn read_slot(&mut self, slot: usize) -> Result<Vec<i8>, BackendError>;

    /// Frees all slots and the scratch.
    fn release(&mut self);
}
