//! Everything derived from (seed, nonce, device identity): the seed key, the PRNG key,
//! the per-step mix salt and fresh-operand key, the rows each step hashes, the consume
//! rule's slot draws, and the step hash itself. Miner and verifier call the same functions.

use sha2::{Digest, Sha256};

use crate::device::DeviceInfo;

/// Domain of every hash; v1 used `graval-rs/v1`, so no v1 value can pass for a v2 one.
const DOMAIN: &[u8] = b"graval-rs/v2";

/// Protocol parameters both sides must agree on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProofParams {
    /// States are `matrix_size x matrix_size` i8 (8192: 64 MiB each).
    pub matrix_size: usize,
    /// Rows of each new state that are hashed into its intermediate hash.
    pub rows_per_hash: usize,
    /// Fraction of free device memory the slots and the step scratch must fill.
    pub fill_fraction: f64,
}

impl Default for ProofParams {
    fn default() -> Self {
        Self { matrix_size: DEFAULT_MATRIX_SIZE, rows_per_hash: 8, fill_fraction: 0.95 }
    }
}

/// 8192: a 1.1 TOP INT8 product per step (~0.7-0.8 ms on an H100, large enough for
/// cuBLAS to run near peak) and 64 MiB states, so ~1,246 slots fill an 80 GB card.
pub const DEFAULT_MATRIX_SIZE: usize = 8192;

/// Devices with at least this many bytes get [`DEFAULT_MATRIX_SIZE`], smaller ones
/// [`SMALL_MATRIX_SIZE`] (16 MiB states, so small cards still hold hundreds of slots).
pub const LARGE_MATRIX_MIN_MEMORY: u64 = 16_000_000_000;
pub const SMALL_MATRIX_SIZE: usize = 4096;

/// Matrix size for a device with `memory` bytes in total: 8192 from 16 GB, else 4096.
pub fn auto_matrix_size(memory: u64) -> usize {
    if memory >= LARGE_MATRIX_MIN_MEMORY { DEFAULT_MATRIX_SIZE } else { SMALL_MATRIX_SIZE }
}

/// [`auto_matrix_size`]'s rule in words ("8192 from 16 GB, else 4096"), formatted from
/// the same constants so help texts cannot drift from the code.
pub fn auto_matrix_size_rule() -> String {
    format!(
        "{DEFAULT_MATRIX_SIZE} from {} GB, else {SMALL_MATRIX_SIZE}",
        LARGE_MATRIX_MIN_MEMORY / 1_000_000_000
    )
}

/// States per step beside the slots: the fresh operand (n^2 i8) and the product (n^2 i32).
pub const SCRATCH_STATES: u64 = 5;

impl ProofParams {
    pub fn with_matrix_size(matrix_size: usize) -> Self {
        Self { matrix_size, ..Self::default() }
    }

    /// The parameters both sides use for a device: the matrix size follows from the
    /// declared `memory`, so miner and validator agree without negotiating it.
    pub fn for_device(device: &DeviceInfo) -> Self {
        Self::with_matrix_size(auto_matrix_size(device.memory))
    }

    /// Bytes of one state (slot): n^2, one byte per element.
    pub fn matrix_bytes(&self) -> u64 {
        (self.matrix_size * self.matrix_size) as u64
    }

    /// Bytes of the step scratch: fresh operand (n^2) and int32 product (4 n^2).
    pub fn scratch_bytes(&self) -> u64 {
        SCRATCH_STATES * self.matrix_bytes()
    }

    /// Bytes a proof with `slots` slots holds on the device.
    pub fn filled_bytes(&self, slots: u64) -> u64 {
        slots.saturating_mul(self.matrix_bytes()).saturating_add(self.scratch_bytes())
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

/// The validator's fresh value for one `/prove`: 32 random bytes, 64 hex characters on
/// the wire. The seed is the node's (the miner posted it when it registered the node),
/// so a key from the seed alone would let a miner compute the whole proof before it is
/// asked, on any hardware and at any speed, and answer inside the timing window from a
/// cache. Mixed into the seed key, the nonce makes every value of the run unknowable
/// until the request arrives. Not secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; 32]);

impl Nonce {
    /// A fresh nonce from the operating system's generator (the validator's side).
    pub fn random() -> Self {
        use aes_gcm::aead::{OsRng, rand_core::RngCore};
        let mut b = [0u8; 32];
        OsRng.fill_bytes(&mut b);
        Self(b)
    }

    /// From its 64 hex characters; `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut b = [0u8; 32];
        (text.len() == 64 && hex::decode_to_slice(text, &mut b).is_ok()).then_some(Self(b))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nonce({})", self.to_hex())
    }
}

impl SeedKey {
    pub fn derive(seed: u64, nonce: &Nonce, device: &DeviceInfo) -> Self {
        Self(h(&[b"seed", &seed.to_le_bytes(), &nonce.0, &device.identity_bytes()]))
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

    /// The random word that picks step (iteration, position)'s slot among those not
    /// yet advanced in this iteration (see [`Consume`]); drawn from the previous step's
    /// hash, so the next slot is unknown until the previous step is done.
    pub fn draw(&self, iteration: u64, position: u64, prev: &[u8; 32]) -> u64 {
        let b = h(&[b"draw", &self.0, &iteration.to_le_bytes(), &position.to_le_bytes(), prev]);
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        u64::from_le_bytes(w)
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
    pub fn first_rows_hash(&self, rows: &[i8]) -> [u8; 32] {
        let mut d = Sha256::new();
        d.update(DOMAIN);
        d.update(b"first-rows");
        d.update(self.0);
        d.update(i8_bytes(rows));
        d.finalize().into()
    }

    /// `intermediate_hashes[iteration * num_matrices + position]`: SHA-256 over the
    /// step's coordinates, the slot it advanced, the digest of the whole new state
    /// (`prng::mix_matrix`) and its hashed rows. The digest covers every element, so
    /// no hash can be had from a few rows of the product.
    pub fn step_hash(&self, iteration: u64, position: u64, slot: u64, digest: u64, rows: &[i8]) -> [u8; 32] {
        let mut d = Sha256::new();
        d.update(DOMAIN);
        d.update(b"step");
        d.update(self.0);
        d.update(iteration.to_le_bytes());
        d.update(position.to_le_bytes());
        d.update(slot.to_le_bytes());
        d.update(digest.to_le_bytes());
        d.update(i8_bytes(rows));
        d.finalize().into()
    }
}

fn i8_bytes(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

/// The consume rule: within one iteration every slot is advanced exactly once, in an
/// order drawn step by step from the previous hash. Step (0, 0) always takes slot 0, so
/// the challenge key (its rows) does not depend on the number of slots.
#[derive(Clone, Debug)]
pub struct Consume {
    remaining: Vec<u64>,
}

impl Consume {
    /// A new iteration over `num` slots.
    pub fn new(num: u64) -> Self {
        Self { remaining: (0..num).collect() }
    }

    /// The slot step (iteration, position) advances; removes it from this iteration.
    /// Returns `None` once every slot has been advanced.
    pub fn next(&mut self, key: &SeedKey, iteration: u64, position: u64, prev: &[u8; 32]) -> Option<u64> {
        if self.remaining.is_empty() {
            return None;
        }
        let idx = if iteration == 0 && position == 0 {
            0
        } else {
            (key.draw(iteration, position, prev) % self.remaining.len() as u64) as usize
        };
        Some(self.remaining.swap_remove(idx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SeedKey {
        SeedKey([7u8; 32])
    }

    #[test]
    fn every_slot_is_advanced_exactly_once_per_iteration_starting_with_slot_0() {
        let k = key();
        for (i, prev) in [(0u64, [1u8; 32]), (3, [2u8; 32])] {
            let mut c = Consume::new(40);
            let mut seen = Vec::new();
            for p in 0..40 {
                seen.push(c.next(&k, i, p, &[prev[0].wrapping_add(p as u8); 32]).unwrap());
            }
            assert!(c.next(&k, i, 40, &prev).is_none());
            if i == 0 {
                assert_eq!(seen[0], 0);
            }
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..40).collect::<Vec<_>>());
            assert_ne!(seen, (0..40).collect::<Vec<_>>(), "the order is drawn, not index order");
        }
    }

    /// The slot a step reads is drawn from the previous hash: another previous hash
    /// gives another slot (so it cannot be known before that step is done), and over
    /// many hashes every remaining slot is about equally likely.
    #[test]
    fn the_next_slot_depends_on_the_previous_hash_and_is_uniform() {
        let k = key();
        let num = 16u64;
        let mut counts = vec![0u32; num as usize];
        for s in 0..3200u32 {
            let mut prev = [0u8; 32];
            prev[..4].copy_from_slice(&s.to_le_bytes());
            counts[Consume::new(num).next(&k, 1, 0, &prev).unwrap() as usize] += 1;
        }
        // 200 expected per slot.
        assert!(counts.iter().all(|&c| (130..270).contains(&c)), "{counts:?}");
    }

    #[test]
    fn memory_is_counted_in_bytes() {
        let p = ProofParams::with_matrix_size(8192);
        assert_eq!(p.matrix_bytes(), 64 << 20);
        assert_eq!(p.scratch_bytes(), 5 * (64 << 20));
        assert_eq!(p.filled_bytes(10), 15 * (64 << 20));
        assert_eq!(auto_matrix_size(80_000_000_000), 8192);
        assert_eq!(auto_matrix_size(12_000_000_000), 4096);
    }

    #[test]
    fn the_matrix_size_rule_in_words_is_the_one_implemented() {
        // Whole GB, or the rule's "16 GB" would round the threshold.
        assert_eq!(LARGE_MATRIX_MIN_MEMORY % 1_000_000_000, 0);
        assert_eq!(auto_matrix_size(LARGE_MATRIX_MIN_MEMORY), DEFAULT_MATRIX_SIZE);
        assert_eq!(auto_matrix_size(LARGE_MATRIX_MIN_MEMORY - 1), SMALL_MATRIX_SIZE);
        assert_eq!(auto_matrix_size_rule(), "8192 from 16 GB, else 4096");
    }
}
