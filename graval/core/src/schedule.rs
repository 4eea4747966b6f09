//! Everything derived from (seed, device identity): the seed key, the PRNG key, the
//! per-step mix salt and fresh-operand key, the rows each step hashes, the seed- and
//! hash-dependent partner order, and the step hash itself. Miner and verifier call the same functions.

use sha2::{Digest, Sha256};

use crate::device::DeviceInfo;

const DOMAIN: &[u8] = b"graval-rs/v1";

/// Protocol parameters both sides must agree on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProofParams {
    /// Matrices are `matrix_size x matrix_size` f32 (16384: 1 GiB each).
    pub matrix_size: usize,
    /// Rows of each new matrix that are hashed into its intermediate hash.
    pub rows_per_hash: usize,
    /// Fraction of free device memory the resident matrices must fill.
    pub fill_fraction: f64,
}

impl Default for ProofParams {
    fn default() -> Self {
        Self { matrix_size: DEFAULT_MATRIX_SIZE, rows_per_hash: 8, fill_fraction: 0.95 }
    }
}

/// At a fixed VRAM fill, one iteration costs `0.95 * VRAM / (4 n^2)` products of
/// `2 n^3` flops: time per iteration grows linearly with n. 16384 puts an H100 SXM at
/// about 12 s per iteration (measured: 74 matrices, 12.1 s, 53.6 TFLOP/s), so the
/// table's 5 iterations take about 61 s, inside the original's (0.55, 1.7) x 70 s.
/// Sums stay exact: 16384 * 64 < 2^24.
pub const DEFAULT_MATRIX_SIZE: usize = 16384;

/// Matrix size for a device with `memory` bytes in total. Whole matrices must fill 95%
/// of free memory after a 512 MiB reserve, so a matrix must stay small beside the
/// card: 1 GiB matrices from 40 GB up (the H100 class the default is calibrated on),
/// 256 MiB from 8 GB, 64 MiB below.
pub fn auto_matrix_size(memory: u64) -> usize {
    match memory {
        m if m >= 40_000_000_000 => DEFAULT_MATRIX_SIZE,
        m if m >= 8_000_000_000 => 8192,
        _ => 4096,
    }
}

impl ProofParams {
    pub fn with_matrix_size(matrix_size: usize) -> Self {
        Self { matrix_size, ..Self::default() }
    }

    /// The parameters both sides use for a device: the matrix size follows from the
    /// declared `memory`, so miner and validator agree without negotiating it.
    pub fn for_device(device: &DeviceInfo) -> Self {
        Self::with_matrix_size(auto_matrix_size(device.memory))
    }

    pub fn matrix_bytes(&self) -> u64 {
        (self.matrix_size * self.matrix_size * 4) as u64
    }
}

/// SHA-256 of the seed and the device identity: the root of every derived value.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SeedKey([u8; 32]);

impl std::fmt::Debug for SeedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeedKey(..)")
    }
}

fn h(parts: &[&[u8]]) -> [u8; 32] {
    let mut d = Sha256::new();
    d.update(DOMAIN);
    for p in parts {
        d.update((p.len() as u64).to_le_bytes());
        d.update(p);
    }
    d.finalize().into()
}

impl SeedKey {
    pub fn derive(seed: u64, device: &DeviceInfo) -> Self {
        Self(h(&[b"seed", &seed.to_le_bytes(), &device.identity_bytes()]))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Philox key for matrix fills.
    pub fn philox_key(&self) -> [u32; 2] {
        let b = h(&[b"philox", &self.0]);
        [u32::from_le_bytes([b[0], b[1], b[2], b[3]]), u32::from_le_bytes([b[4], b[5], b[6], b[7]])]
    }

    /// Salt of the mix applied after step (iteration, index).
    pub fn mix_salt(&self, iteration: u64, index: u64) -> u32 {
        let b = h(&[b"mix", &self.0, &iteration.to_le_bytes(), &index.to_le_bytes()]);
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The rows of the new matrix hashed at step (iteration, index), in hash order.
    /// Rows, not the diagonal: a row of `R . M` needs only that row of the PRNG matrix
    /// `R`, so the validator derives step (0, 0)'s rows (the challenge key) in a few
    /// row products. The step's digest covers the rest of the matrix.
    pub fn hash_rows(&self, iteration: u64, index: u64, params: &ProofParams) -> Vec<u32> {
        let n = params.matrix_size as u64;
        let mut rows = Vec::with_capacity(params.rows_per_hash);
        let mut block = 0u64;
        while rows.len() < params.rows_per_hash {
            let b =
                h(&[b"rows", &self.0, &iteration.to_le_bytes(), &index.to_le_bytes(), &block.to_le_bytes()]);
            for c in b.chunks_exact(8) {
                if rows.len() < params.rows_per_hash {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(c);
                    rows.push((u64::from_le_bytes(w) % n) as u32);
                }
            }
            block += 1;
        }
        rows
    }

    /// The hash that precedes the first step.
    pub fn start_hash(&self) -> [u8; 32] {
        h(&[b"start", &self.0])
    }

    /// The order in which iteration `iteration` rewrites the matrices: index order in
    /// iteration 0 (so step (0, 0) writes matrix 0, whatever `num_matrices` is), then a
    /// permutation drawn from `prev`, the hash of the previous iteration's last step.
    /// A matrix's position in the next iteration, and so how likely its state is to be
    /// read, is unknown while that state is being written and must be kept.
    pub fn order(&self, iteration: u64, num_matrices: u64, prev: &[u8; 32]) -> Vec<u64> {
        let mut order: Vec<u64> = (0..num_matrices).collect();
        if iteration == 0 {
            return order;
        }
        let mut words = Vec::new();
        let mut block = 0u64;
        for i in (1..order.len()).rev() {
            if words.is_empty() {
                let b = h(&[b"order", &self.0, &iteration.to_le_bytes(), prev, &block.to_le_bytes()]);
                words.extend(b.chunks_exact(8).map(|c| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(c);
                    u64::from_le_bytes(w)
                }));
                block += 1;
            }
            let r = words.pop().unwrap_or_default();
            order.swap(i, (r % (i as u64 + 1)) as usize);
        }
        order
    }

    /// The resident operand of step `position` of `iteration` (which rewrites matrix
    /// `order[position]`), chosen by the previous step's hash, so it is unknown until
    /// that step has finished.
    /// - Iteration 0: any other matrix as it is now (rewritten earlier in the
    ///   iteration, or still its fill), so products written in iteration 0 must be
    ///   kept for the rest of it; this is all the residency a 1-iteration proof has.
    /// - Later iterations: a matrix not yet rewritten in this iteration (a later
    ///   position), i.e. as the previous iteration left it; the last position, which
    ///   has none, takes any other matrix. Every state written in one iteration may be
    ///   read in the next, and a lineage spends at most two steps per later iteration.
    ///
    /// The very first step always reads matrix 1, so the challenge key (which depends
    /// on it) can be derived by a validator that does not yet know `num_matrices`.
    pub fn partner(&self, iteration: u64, position: u64, order: &[u64], prev: &[u8; 32]) -> u64 {
        if iteration == 0 && position == 0 {
            return 1;
        }
        let num = order.len() as u64;
        let b = h(&[b"partner", &self.0, &iteration.to_le_bytes(), &position.to_le_bytes(), prev]);
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        let r = u64::from_le_bytes(w);
        if iteration > 0 && position + 1 < num {
            order[(position + 1 + r % (num - 1 - position)) as usize]
        } else {
            let m = order[position as usize];
            let j = r % (num - 1);
            if j >= m { j + 1 } else { j }
        }
    }

    /// Philox key of the fresh left operand `R_t` of step (iteration, index): keyed by
    /// the previous step's hash, so it cannot be made (or a product with it started)
    /// before that step is done. Filled as matrix [`crate::prng::FRESH_MATRIX`].
    pub fn fresh_key(&self, iteration: u64, index: u64, prev: &[u8; 32]) -> [u32; 2] {
        let b = h(&[b"fresh", &self.0, &iteration.to_le_bytes(), &index.to_le_bytes(), prev]);
        [u32::from_le_bytes([b[0], b[1], b[2], b[3]]), u32::from_le_bytes([b[4], b[5], b[6], b[7]])]
    }

    /// Hash of step (0, 0)'s hashed rows: the input to the challenge key. Rows only, so
    /// a validator derives it in a few row products before it sends the challenge.
    pub fn first_rows_hash(&self, rows: &[f32]) -> [u8; 32] {
        let mut d = Sha256::new();
        d.update(DOMAIN);
        d.update(b"first-rows");
        d.update(self.0);
        for v in rows {
            d.update(v.to_le_bytes());
        }
        d.finalize().into()
    }

    /// `intermediate_hashes[iteration * num_matrices + position]`: SHA-256 over the
    /// step's coordinates, the matrix it wrote, its partner, the digest of the whole new matrix (`prng::mix_matrix`)
    /// and its hashed rows (f32 LE bytes). The digest covers every element, so no
    /// hash can be had from a few rows of the product.
    pub fn step_hash(
        &self,
        iteration: u64,
        position: u64,
        matrix: u64,
        partner: u64,
        digest: u64,
        rows: &[f32],
    ) -> [u8; 32] {
        let mut d = Sha256::new();
        d.update(DOMAIN);
        d.update(b"step2");
        d.update(self.0);
        d.update(iteration.to_le_bytes());
        d.update(position.to_le_bytes());
        d.update(matrix.to_le_bytes());
        d.update(partner.to_le_bytes());
        d.update(digest.to_le_bytes());
        for v in rows {
            d.update(v.to_le_bytes());
        }
        d.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SeedKey {
        SeedKey([7u8; 32])
    }

    #[test]
    fn order_is_index_order_then_a_hash_drawn_permutation() {
        let k = key();
        assert_eq!(k.order(0, 5, &[1u8; 32]), vec![0, 1, 2, 3, 4]);
        let a = k.order(1, 40, &[1u8; 32]);
        let b = k.order(1, 40, &[2u8; 32]);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..40).collect::<Vec<_>>());
        assert_ne!(a, b, "the previous hash draws the order");
        assert_ne!(a, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn partner_after_iteration_0_is_not_yet_rewritten_except_at_the_last_position() {
        let k = key();
        let num = 16u64;
        assert_eq!(k.partner(0, 0, &k.order(0, num, &[0u8; 32]), &[9u8; 32]), 1);
        for seed in 0..50u8 {
            let prev = [seed; 32];
            let order = k.order(1, num, &prev);
            for p in 0..num {
                let j = k.partner(1, p, &order, &prev);
                let q = order.iter().position(|&m| m == j).unwrap_or(usize::MAX) as u64;
                assert_ne!(j, order[p as usize]);
                if p + 1 < num {
                    assert!(q > p, "position {p} read position {q}");
                }
            }
        }
    }

    /// Iteration 0 reads products of earlier positions too (not only fills), so a
    /// 1-iteration proof still needs its products resident.
    #[test]
    fn partner_in_iteration_0_is_any_other_matrix() {
        let k = key();
        let num = 16u64;
        let order = k.order(0, num, &[0u8; 32]);
        let mut earlier = 0;
        for seed in 0..50u8 {
            for p in 1..num {
                let j = k.partner(0, p, &order, &[seed; 32]);
                assert_ne!(j, p);
                earlier += u32::from(j < p);
            }
        }
        // Expected 50 * sum(p / 15 for p in 1..16) = 400.
        assert!((300..500).contains(&earlier), "{earlier}");
    }

    /// Residency: a state written in iteration 0 is read in iteration 1 about as often
    /// whatever its matrix, so no matrix is cheap to drop and recompute. (Without the
    /// permutation, matrix 1's state would be read in 1 of 15 runs, matrix 15's in 3.3.)
    #[test]
    fn every_matrix_is_read_about_equally_often_in_the_next_iteration() {
        let k = key();
        let num = 16u64;
        let runs = 400u32;
        let mut reads = vec![0u32; num as usize];
        for seed in 0..runs {
            let mut prev = [0u8; 32];
            prev[..4].copy_from_slice(&seed.to_le_bytes());
            let order = k.order(1, num, &prev);
            for p in 0..num - 1 {
                reads[k.partner(1, p, &order, &prev) as usize] += 1;
            }
        }
        let mean = f64::from(reads.iter().sum::<u32>()) / num as f64;
        for (m, &r) in reads.iter().enumerate() {
            assert!(
                f64::from(r) > 0.7 * mean && f64::from(r) < 1.3 * mean,
                "matrix {m}: {r} reads, mean {mean}"
            );
        }
    }
}
