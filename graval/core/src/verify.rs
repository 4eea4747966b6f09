//! The validator's side: structural checks, spot checks by regeneration, the
//! challenge key and ciphertext, and the timing window.
//!
//! Step `p` of iteration `i` computes `M_m <- mix(R_t . M_j)`: `R_t` is a PRNG matrix
//! keyed by the previous hash, `M_j` a resident matrix chosen by that hash (in
//! iteration 0 any other, after that one not yet rewritten in this iteration, so as
//! the previous iteration left it). Its hash covers a digest of the *whole* new
//! matrix. Orders, partners and fresh keys are derivable from the proof's own hashes,
//! so the verifier knows every step's inputs and replays a checked step by replaying
//! its *lineage*: the step that wrote `M_j`, the step that wrote that one's operand,
//! and so on back to a fill. After iteration 0 the lineage drops an iteration at every
//! step but at most one per iteration (the last position reads a matrix rewritten in
//! its own iteration); in iteration 0 it walks down to earlier positions, about 1.7
//! steps on average. So a step of iteration `i` costs at least `i + 1` full products
//! and about `i + 1.7` on average (more than `2 i + 6` in about 2 of 100 000
//! positions): any position of any iteration is checkable, at a cost the verifier
//! knows before it starts, and every step on the way is compared with its own
//! reported hash as well.
//!
//! Why the digest and full products, and not rows only (`mix(M_j . R_t)` with hashed
//! rows, which a verifier could replay row by row): every row of such a chain is its
//! own independent lane, so a miner could compute each hashed row the same cheap way,
//! holding nothing and doing `rows / n` of the work. Whatever a verifier can recompute
//! from public data, the miner can too; only a digest over the whole product forces
//! the whole product.

use std::collections::{BTreeSet, HashMap};

use aes_gcm::aead::{OsRng, rand_core::RngCore};

use crate::crypto::{ChallengeKey, format_transport};
use crate::device::DeviceInfo;
use crate::error::{CryptoError, VerifyError};
use crate::gemm::{MatRef, sgemm};
use crate::prng::{FRESH_MATRIX, fill_matrix_vec, fill_row, mix_matrix, mix_slice};
use crate::proof::WorkProduct;
use crate::schedule::{ProofParams, SeedKey};

/// Which positions to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpotCheck {
    /// This many distinct positions drawn uniformly over all steps (every iteration),
    /// leaving out only those whose replay alone needs more than
    /// `Verifier::max_full_products`.
    Random(usize),
    /// Exactly these (iteration, step within the iteration) positions, whatever they
    /// cost; hash `iteration * num_matrices + step`.
    At(Vec<(u64, u64)>),
}

/// Three uniform positions: a proof with a fraction `f` of its steps faked passes with
/// probability `(1 - f)^3` (faking all but the first of 5 iterations: 0.8%).
impl Default for SpotCheck {
    fn default() -> Self {
        SpotCheck::Random(3)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The (iteration, index) positions whose hashes were recomputed on purpose.
    pub checked: Vec<(u64, u64)>,
    /// Full n^3 products replayed: the checked steps and their lineages (each of
    /// their hashes was confirmed too).
    pub full_products: usize,
}

/// Default per-position budget of full products. A position of the last iteration
/// of a 10-iteration proof (the most supported) costs about 10.7 on average, and
/// more than 24 practically never (simulated: none in 200 000), so random checks
/// reach every position a miner could pick to fake.
pub const MAX_LINEAGE_PRODUCTS: usize = 24;

#[derive(Clone, Debug)]
pub struct Verifier {
    pub params: ProofParams,
    /// A random position is drawn only if its replay alone needs at most this many
    /// full products. The default reaches every position of every supported proof;
    /// lower it to trade reach for speed (1 keeps iteration 0 only).
    pub max_full_products: usize,
    /// `(num_matrices + 1) * matrix_bytes` must reach this fraction of the declared
    /// `memory` (total VRAM; the miner fills 95% of *free* memory, a bit less).
    pub min_vram_fraction: f64,
    pub threads: usize,
}

impl Verifier {
    pub fn new(params: ProofParams) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self { params, max_full_products: MAX_LINEAGE_PRODUCTS, min_vram_fraction: 0.90, threads }
    }

    /// A verifier with the parameters a miner uses for `device` by default.
    pub fn for_device(device: &DeviceInfo) -> Self {
        Self::new(ProofParams::for_device(device))
    }

    /// The key a correct miner derives after the first step of its run: from the
    /// hashed rows of step (0, 0), `mix(R_0 . fill_1)`, a few row products.
    pub fn challenge_key(&self, device: &DeviceInfo, seed: u64, iterations: u64) -> ChallengeKey {
        let key = SeedKey::derive(seed, device);
        let n = self.params.matrix_size;
        let rows = key.hash_rows(0, 0, &self.params);
        let fresh = key.fresh_key(0, 0, &key.start_hash());
        let mut r = vec![0f32; rows.len() * n];
        for (dst, &row) in r.chunks_exact_mut(n).zip(&rows) {
            fill_row(fresh, FRESH_MATRIX, n, row as usize, dst);
        }
        // Step (0, 0) reads fill 1 whatever num_matrices is.
        let b = fill_matrix_vec(key.philox_key(), 1, n, self.threads);
        let mut c = vec![0f32; rows.len() * n];
        sgemm(MatRef::new(&r, rows.len(), n), MatRef::new(&b, n, n), &mut c, self.threads);
        let salt = key.mix_salt(0, 0);
        for (row, &idx) in c.chunks_exact_mut(n).zip(&rows) {
            mix_slice(row, idx as usize * n, salt);
        }
        ChallengeKey::derive(&key, &key.first_rows_hash(&c), iterations)
    }

    /// `"<seed>|" + base64(iv || ct)` for `plaintext`, as GraVal's `/encrypt`.
    pub fn encrypt_challenge(
        &self,
        device: &DeviceInfo,
        seed: u64,
        iterations: u64,
        plaintext: &str,
    ) -> Result<String, CryptoError> {
        let blob = self.challenge_key(device, seed, iterations).encrypt(plaintext)?;
        Ok(format_transport(seed, &blob))
    }

    /// Shape checks: counts, hash format, matrix size and the VRAM fraction.
    pub fn check_structure(
        &self,
        device: &DeviceInfo,
        iterations: u64,
        wp: &WorkProduct,
    ) -> Result<Vec<[u8; 32]>, VerifyError> {
        device.validate()?;
        if wp.total_iterations != iterations {
            return Err(VerifyError::Iterations { got: wp.total_iterations, want: iterations });
        }
        if wp.matrix_size != self.params.matrix_size {
            return Err(VerifyError::MatrixSize { got: wp.matrix_size, want: self.params.matrix_size });
        }
        if wp.num_matrices < 2 {
            return Err(VerifyError::TooFewMatrices(wp.num_matrices));
        }
        let filled = (wp.num_matrices + 1).saturating_mul(self.params.matrix_bytes());
        let fraction = filled as f64 / device.memory as f64;
        if fraction < self.min_vram_fraction {
            return Err(VerifyError::VramFraction {
                filled,
                memory: device.memory,
                fraction,
                required: self.min_vram_fraction,
            });
        }
        let want = wp.num_matrices.saturating_mul(wp.total_iterations);
        if wp.intermediate_hashes.len() as u64 != want {
            return Err(VerifyError::HashCount { got: wp.intermediate_hashes.len(), want });
        }
        wp.intermediate_hashes
            .iter()
            .enumerate()
            .map(|(idx, h)| {
                let mut out = [0u8; 32];
                match hex::decode_to_slice(h, &mut out) {
                    Ok(()) if h.len() == 64 => Ok(out),
                    _ => Err(VerifyError::HashFormat(idx)),
                }
            })
            .collect()
    }

    /// Structural checks, then spot checks by regeneration.
    pub fn check_proof(
        &self,
        device: &DeviceInfo,
        seed: u64,
        iterations: u64,
        wp: &WorkProduct,
        spots: &SpotCheck,
    ) -> Result<CheckReport, VerifyError> {
        let hashes = self.check_structure(device, iterations, wp)?;
        let key = SeedKey::derive(seed, device);
        let replay = Replay::new(&key, &self.params, wp.num_matrices, &hashes, self.threads);
        let num = wp.num_matrices;
        let positions: Vec<u64> = match spots {
            SpotCheck::At(list) => list
                .iter()
                .map(|&(iteration, index)| {
                    if iteration < iterations && index < num {
                        Ok(iteration * num + index)
                    } else {
                        Err(VerifyError::Position { iteration, index })
                    }
                })
                .collect::<Result<_, _>>()?,
            SpotCheck::Random(count) => self.pick(&replay, *count)?,
        };
        let mut needed = BTreeSet::new();
        for &t in &positions {
            needed.extend(replay.lineage(t));
        }
        replay.run(&needed)?;
        Ok(CheckReport {
            checked: positions.iter().map(|&t| (t / num, t % num)).collect(),
            full_products: needed.len(),
        })
    }

    /// Full products a check of (iteration, step) alone replays (its lineage), for
    /// a proof that passed [`Verifier::check_structure`].
    pub fn replay_cost(
        &self,
        device: &DeviceInfo,
        seed: u64,
        wp: &WorkProduct,
        iteration: u64,
        index: u64,
    ) -> Result<usize, VerifyError> {
        let hashes = self.check_structure(device, wp.total_iterations, wp)?;
        if iteration >= wp.total_iterations || index >= wp.num_matrices {
            return Err(VerifyError::Position { iteration, index });
        }
        let key = SeedKey::derive(seed, device);
        let replay = Replay::new(&key, &self.params, wp.num_matrices, &hashes, self.threads);
        Ok(replay.lineage(iteration * wp.num_matrices + index).len())
    }

    fn pick(&self, replay: &Replay<'_>, count: usize) -> Result<Vec<u64>, VerifyError> {
        let mut order: Vec<u64> = (0..replay.hashes.len() as u64).collect();
        for i in (1..order.len()).rev() {
            let j = (OsRng.next_u64() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let picked: Vec<u64> = order
            .into_iter()
            .filter(|&t| replay.lineage(t).len() <= self.max_full_products)
            .take(count)
            .collect();
        if picked.is_empty() && count > 0 {
            return Err(VerifyError::NoEligiblePosition(self.max_full_products));
        }
        Ok(picked)
    }
}

/// Replays steps of a chain in full from the PRNG, the partners and the reported hashes.
struct Replay<'a> {
    params: &'a ProofParams,
    key: &'a SeedKey,
    num: u64,
    hashes: &'a [[u8; 32]],
    /// Per step: the matrix it rewrites and the one it reads.
    matrices: Vec<u64>,
    partners: Vec<u64>,
    /// Per iteration: the position of each matrix in that iteration's order.
    positions: Vec<Vec<u64>>,
    threads: usize,
}

impl<'a> Replay<'a> {
    fn new(
        key: &'a SeedKey,
        params: &'a ProofParams,
        num: u64,
        hashes: &'a [[u8; 32]],
        threads: usize,
    ) -> Self {
        let mut prev = key.start_hash();
        let mut matrices = Vec::with_capacity(hashes.len());
        let mut partners = Vec::with_capacity(hashes.len());
        let mut positions = Vec::new();
        for (i, chunk) in hashes.chunks(num as usize).enumerate() {
            let i = i as u64;
            let order = key.order(i, num, &prev);
            let mut pos = vec![0u64; num as usize];
            for (p, &m) in order.iter().enumerate() {
                pos[m as usize] = p as u64;
            }
            positions.push(pos);
            for (p, h) in chunk.iter().enumerate() {
                matrices.push(order[p]);
                partners.push(key.partner(i, p as u64, &order, &prev));
                prev = *h;
            }
        }
        Self { params, key, num, hashes, matrices, partners, positions, threads }
    }

    fn prev_hash(&self, t: u64) -> [u8; 32] {
        if t == 0 { self.key.start_hash() } else { self.hashes[t as usize - 1] }
    }

    /// The step whose output step `t` reads (its partner's last writer), or `None`
    /// when that is still the partner's fill.
    fn source(&self, t: u64) -> Option<u64> {
        let (i, p) = (t / self.num, t % self.num);
        let j = self.partners[t as usize];
        let q = self.positions[i as usize][j as usize];
        if q < p {
            Some(i * self.num + q)
        } else if i >= 1 {
            Some((i - 1) * self.num + self.positions[i as usize - 1][j as usize])
        } else {
            None
        }
    }

    /// `t` and every step whose full output it depends on, newest first.
    fn lineage(&self, t: u64) -> Vec<u64> {
        let mut out = vec![t];
        let mut cur = t;
        while let Some(s) = self.source(cur) {
            out.push(s);
            cur = s;
        }
        out
    }

    /// The full output of step `s` from its input `b` (the partner's state), and its digest.
    fn output(&self, s: u64, b: &[f32]) -> (Vec<f32>, u64) {
        let n = self.params.matrix_size;
        let (i, k) = (s / self.num, s % self.num);
        let r = fill_matrix_vec(self.key.fresh_key(i, k, &self.prev_hash(s)), FRESH_MATRIX, n, self.threads);
        let mut c = vec![0f32; n * n];
        sgemm(MatRef::new(&r, n, n), MatRef::new(b, n, n), &mut c, self.threads);
        drop(r);
        let digest = mix_matrix(&mut c, self.key.mix_salt(i, k), self.threads);
        (c, digest)
    }

    /// The partner state step `s` reads, recomputed from the fill along its lineage.
    fn input(&self, s: u64) -> Vec<f32> {
        let n = self.params.matrix_size;
        let chain = self.lineage(s);
        let oldest = chain[chain.len() - 1];
        let mut state =
            fill_matrix_vec(self.key.philox_key(), self.partners[oldest as usize] as u32, n, self.threads);
        for &t in chain[1..].iter().rev() {
            state = self.output(t, &state).0;
        }
        state
    }

    /// Recomputes every step in `needed` (closed under `source`) in order, holding a
    /// full output only while a later needed step still reads it, and compares each
    /// step with its reported hash.
    fn run(&self, needed: &BTreeSet<u64>) -> Result<(), VerifyError> {
        let n = self.params.matrix_size;
        let mut readers: HashMap<u64, usize> = HashMap::new();
        for &s in needed {
            if let Some(src) = self.source(s) {
                *readers.entry(src).or_default() += 1;
            }
        }
        let mut held: HashMap<u64, Vec<f32>> = HashMap::new();
        for &s in needed {
            let (i, k) = (s / self.num, s % self.num);
            let partner = self.partners[s as usize];
            let src = self.source(s);
            let (c, digest) = match src.and_then(|src| held.get(&src)) {
                Some(b) => self.output(s, b),
                // A fill, or (never, as `needed` is closed under `source`) a dropped state.
                None => self.output(s, &self.input(s)),
            };
            let rows = self.key.hash_rows(i, k, self.params);
            let mut sel = Vec::with_capacity(rows.len() * n);
            for &row in &rows {
                sel.extend_from_slice(&c[row as usize * n..(row as usize + 1) * n]);
            }
            let matrix = self.matrices[s as usize];
            if self.key.step_hash(i, k, matrix, partner, digest, &sel) != self.hashes[s as usize] {
                return Err(VerifyError::HashMismatch { iteration: i, index: k });
            }
            if let Some(src) = src
                && let Some(left) = readers.get_mut(&src)
            {
                *left -= 1;
                if *left == 0 {
                    held.remove(&src);
                }
            }
            if readers.get(&s).is_some_and(|&r| r > 0) {
                held.insert(s, c);
            }
        }
        Ok(())
    }
}

/// The validator's timing window around a per-model estimate (GraVal v0.2: 0.55x to 1.7x).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimingWindow {
    pub low: f64,
    pub high: f64,
}

impl Default for TimingWindow {
    fn default() -> Self {
        Self { low: 0.55, high: 1.7 }
    }
}

impl TimingWindow {
    /// Checks an end-to-end response time (seconds) against `estimate` seconds.
    /// The window is open at both ends, as the original's `low < elapsed < high`.
    pub fn check(&self, elapsed: f64, estimate: f64) -> Result<(), VerifyError> {
        let (low, high) = (self.low * estimate, self.high * estimate);
        if elapsed > low && elapsed < high { Ok(()) } else { Err(VerifyError::Timing { elapsed, low, high }) }
    }

    /// Upper bound only, for fresh per-launch seeds the miner could not precompute
    /// (the original used 2.15x for instance launches).
    pub fn check_upper(&self, elapsed: f64, estimate: f64) -> Result<(), VerifyError> {
        let high = self.high * estimate;
        if elapsed < high { Ok(()) } else { Err(VerifyError::Timing { elapsed, low: 0.0, high }) }
    }
}

/// Checks that every decrypted plaintext equals what was encrypted for that device.
pub fn check_plaintexts<'a>(
    expected: impl IntoIterator<Item = (&'a str, &'a str)>,
    got: &HashMap<String, String>,
) -> Result<(), VerifyError> {
    for (uuid, want) in expected {
        match got.get(uuid) {
            Some(p) if p == want => {}
            Some(_) => return Err(VerifyError::Plaintext(uuid.to_string())),
            None => return Err(VerifyError::MissingDevice(uuid.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_window_is_open_at_both_ends() {
        let w = TimingWindow::default();
        // Measured on an H100 SXM: 5 iterations at n = 16384 took 63.3 s; table says 70 s.
        assert!(w.check(63.3, 70.0).is_ok());
        assert!(w.check(38.5, 70.0).is_err(), "0.55 x 70 exactly is refused");
        assert!(w.check(38.6, 70.0).is_ok());
        assert!(w.check(119.0, 70.0).is_err(), "1.7 x 70 exactly is refused");
        assert_eq!(
            w.check(10.0, 70.0),
            Err(VerifyError::Timing { elapsed: 10.0, low: 0.55 * 70.0, high: 1.7 * 70.0 })
        );
        assert!(w.check_upper(1.0, 70.0).is_ok());
        assert!(w.check_upper(120.0, 70.0).is_err());
    }

    #[test]
    fn plaintexts_must_all_match() {
        let got = HashMap::from([("a".to_string(), "x".to_string()), ("b".to_string(), "y".to_string())]);
        assert!(check_plaintexts([("a", "x"), ("b", "y")], &got).is_ok());
        assert_eq!(check_plaintexts([("a", "x"), ("b", "z")], &got), Err(VerifyError::Plaintext("b".into())));
        assert_eq!(check_plaintexts([("c", "x")], &got), Err(VerifyError::MissingDevice("c".into())));
    }
}
