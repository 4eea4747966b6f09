//! The miner's side: size the slots to the device, run the chain, produce the
//! work product and the first step's hash that keys the challenge.
//!
//! Chain (GraVal v2): every slot `S_c` starts as PRNG matrix `c`. Iteration `i` has
//! one step per slot; step `p` advances the slot `c` that the consume rule draws from
//! the previous hash among those not yet advanced in this iteration:
//! `R = fill(fresh_key(i, p, h_prev))`, `S_c <- mix(S_c . R^T)` (exact i8 x i8 -> i32),
//! `h[i * num_matrices + p] = step_hash(i, p, c, digest(S_c), rows(i, p) of S_c)`.
//! Why this shape: `README.md` ("GraVal v2: design").

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::device::DeviceInfo;
use crate::engine::Engine;
use crate::error::{BackendError, ProofError};
use crate::schedule::{Consume, Nonce, ProofParams, SeedKey};

/// The version this crate proves and verifies.
pub const WORK_PRODUCT_VERSION: u32 = 2;

/// Highest iteration count a miner accepts (a v2 proof runs 16..=64, per model).
pub const MAX_ITERATIONS: u64 = 64;

/// The work product: the original's fields plus `version` and the matrix size.
/// Parsed version first (`RawWorkProduct`): a product of another version parses with
/// whatever of its fields it has, so the verifier refuses it by its version rather
/// than the parser by a v2 field it never had.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawWorkProduct")]
pub struct WorkProduct {
    /// 2 for this chain. A product without the field is GraVal v1's (the original and
    /// this crate's first chain) and is refused by the verifier, not misread.
    pub version: u32,
    /// Hex SHA-256 per step, `intermediate_hashes[i * num_matrices + p]` for step `p`
    /// of iteration `i`.
    pub intermediate_hashes: Vec<String>,
    /// Slots (i8 states of `matrix_size^2` bytes).
    pub num_matrices: u64,
    pub total_iterations: u64,
    pub matrix_size: usize,
}

fn v1() -> u32 {
    1
}

#[derive(Deserialize)]
struct RawWorkProduct {
    #[serde(default = "v1")]
    version: u32,
    intermediate_hashes: Option<Vec<String>>,
    num_matrices: Option<u64>,
    total_iterations: Option<u64>,
    matrix_size: Option<usize>,
}

impl TryFrom<RawWorkProduct> for WorkProduct {
    type Error = String;

    fn try_from(r: RawWorkProduct) -> Result<Self, String> {
        let v2 = r.version == WORK_PRODUCT_VERSION;
        // Only a v2 product must have every field; another version's missing ones are
        // placeholders that `Verifier::check_structure` never reads past the version.
        fn field<T: Default>(v2: bool, value: Option<T>, name: &str) -> Result<T, String> {
            match value {
                Some(v) => Ok(v),
                None if v2 => Err(format!("missing field `{name}`")),
                None => Ok(T::default()),
            }
        }
        Ok(Self {
            version: r.version,
            intermediate_hashes: field(v2, r.intermediate_hashes, "intermediate_hashes")?,
            num_matrices: field(v2, r.num_matrices, "num_matrices")?,
            total_iterations: field(v2, r.total_iterations, "total_iterations")?,
            matrix_size: field(v2, r.matrix_size, "matrix_size")?,
        })
    }
}

/// One device's finished run.
#[derive(Clone, Debug)]
pub struct ProofRun {
    pub device: DeviceInfo,
    pub seed: u64,
    pub nonce: Nonce,
    pub work_product: WorkProduct,
    /// Hash of step (0, 0)'s hashed rows; input to the challenge key (see `crypto`).
    pub first_hash: [u8; 32],
    /// Bytes held by slots and step scratch, and free bytes at sizing time.
    pub filled_bytes: u64,
    pub free_bytes: u64,
    pub fill_seconds: f64,
    pub chain_seconds: f64,
}

impl ProofRun {
    /// Integer operations of the chain's products (2 n^3 multiply-adds per step).
    pub fn chain_ops(&self) -> f64 {
        let n = self.work_product.matrix_size as f64;
        2.0 * n * n * n * (self.work_product.num_matrices * self.work_product.total_iterations) as f64
    }
}

/// How many slots fit: `free - reserve` holds the step scratch (5 n^2 bytes) and
/// `count` slots of n^2 bytes, and slots plus scratch must reach
/// `params.fill_fraction` of `free`.
pub fn plan_matrices(free: u64, reserve: u64, params: &ProofParams) -> Result<usize, BackendError> {
    let n = params.matrix_size;
    if !(16..=65536).contains(&n) || !n.is_multiple_of(16) {
        return Err(BackendError::MatrixSize(n));
    }
    let matrix_bytes = params.matrix_bytes();
    let fit = free.saturating_sub(reserve).saturating_sub(params.scratch_bytes()) / matrix_bytes;
    let too_little = || BackendError::TooLittleMemory {
        free,
        reserve,
        matrix_bytes,
        fit,
        wanted_fraction: params.fill_fraction * 100.0,
    };
    if fit < 2 || (params.filled_bytes(fit) as f64) + 0.5 < params.fill_fraction * free as f64 {
        return Err(too_little());
    }
    Ok(fit as usize)
}

pub fn check_iterations(iterations: u64) -> Result<(), ProofError> {
    if (1..=MAX_ITERATIONS).contains(&iterations) { Ok(()) } else { Err(ProofError::Iterations(iterations)) }
}

/// Runs the whole proof on one engine. Slots are released before returning.
pub fn prove<E: Engine + ?Sized>(
    engine: &mut E,
    seed: u64,
    nonce: &Nonce,
    iterations: u64,
    params: &ProofParams,
) -> Result<ProofRun, ProofError> {
    check_iterations(iterations)?;
    let device = engine.device_info().clone();
    device.validate()?;
    // A run that panicked (caught by `prove_all`) never released its slots; on a GPU
    // they would hold ~95% of memory and fail every later proof at sizing.
    engine.release();
    let free = engine.free_memory()?;
    let count = plan_matrices(free, engine.reserve_bytes(), params)?;
    engine.allocate(params.matrix_size, count)?;
    let result = run_chain(engine, &SeedKey::derive(seed, nonce, &device), iterations, params, count);
    engine.release();
    let (hashes, first_hash, fill_seconds, chain_seconds) = result?;
    Ok(ProofRun {
        device,
        seed,
        nonce: *nonce,
        work_product: WorkProduct {
            version: WORK_PRODUCT_VERSION,
            intermediate_hashes: hashes.iter().map(hex::encode).collect(),
            num_matrices: count as u64,
            total_iterations: iterations,
            matrix_size: params.matrix_size,
        },
        first_hash,
        filled_bytes: params.filled_bytes(count as u64),
        free_bytes: free,
        fill_seconds,
        chain_seconds,
    })
}

/// Hashes, first hash, fill seconds, chain seconds.
type Chain = (Vec<[u8; 32]>, [u8; 32], f64, f64);

fn run_chain<E: Engine + ?Sized>(
    engine: &mut E,
    key: &SeedKey,
    iterations: u64,
    params: &ProofParams,
    count: usize,
) -> Result<Chain, BackendError> {
    let t0 = Instant::now();
    engine.fill_all(key.philox_key())?;
    let fill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let n = params.matrix_size;
    let mut rows_out = vec![0i8; params.rows_per_hash * n];
    let mut hashes = Vec::with_capacity(count * iterations as usize);
    let mut prev = key.start_hash();
    let mut first = [0u8; 32];
    for i in 0..iterations {
        let mut consume = Consume::new(count as u64);
        for p in 0..count as u64 {
            let Some(slot) = consume.next(key, i, p, &prev) else { break };
            let rows = key.hash_rows(i, p, params);
            let fresh = key.fresh_key(i, p, &prev);
            let digest = engine.step(slot as usize, fresh, key.mix_salt(i, p), &rows, &mut rows_out)?;
            if i == 0 && p == 0 {
                first = key.first_rows_hash(&rows_out);
            }
            prev = key.step_hash(i, p, slot, digest, &rows_out);
            hashes.push(prev);
        }
    }
    Ok((hashes, first, fill_seconds, t1.elapsed().as_secs_f64()))
}

/// Runs [`prove`] on every engine at once, one host thread per device (as the
/// original's pthread per GPU), engine i with `params[i]`, and returns the results in
/// engine order.
pub fn prove_all(
    engines: &mut [Box<dyn Engine>],
    seed: u64,
    nonce: &Nonce,
    iterations: u64,
    params: &[ProofParams],
) -> Vec<Result<ProofRun, ProofError>> {
    assert_eq!(engines.len(), params.len(), "one ProofParams per engine");
    std::thread::scope(|s| {
        let handles: Vec<_> = engines
            .iter_mut()
            .zip(params)
            .map(|(e, p)| s.spawn(move || prove(e.as_mut(), seed, nonce, iterations, p)))
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(idx, h)| h.join().unwrap_or(Err(ProofError::Panicked(idx))))
            .collect()
    })
}
