//! The validator's side: structural checks, spot checks by replay, the challenge key
//! and ciphertext, and the timing window.
//!
//! Step `p` of iteration `i` advances the slot `c` the consume rule drew:
//! `S_c <- mix(S_c . R_t^T)`, `R_t` a PRNG matrix keyed by the previous hash. Every slot
//! is advanced once per iteration, so the proof is N independent chains; slots, fresh
//! keys and salts all follow from the reported hashes. A position (i, p) on slot c is
//! checked by replaying chain c from its fill through its i + 1 steps, comparing every
//! step with its reported hash: i + 1 full products, (I + 1) / 2 on average, known
//! before the replay starts. The replay runs on an [`Engine`]: the CPU engine by
//! default ([`Verifier::check_proof`]), a GPU engine when the validator has one
//! ([`Verifier::check_proof_on`]); both give the same bits.
//!
//! Why the digest and full products, and not rows only: whatever a verifier can
//! recompute cheaply from public data, the miner can too; only a digest over the whole
//! product forces the whole product.

use std::collections::{BTreeMap, HashMap};

use aes_gcm::aead::{OsRng, rand_core::RngCore};

use crate::cpu::CpuEngine;
use crate::crypto::{ChallengeKey, format_transport};
use crate::device::DeviceInfo;
use crate::engine::Engine;
use crate::error::{CryptoError, VerifyError};
use crate::gemm::{MatRef, igemm_nt};
use crate::prng::{FRESH_MATRIX, fill_matrix_vec, fill_row, mix_slice};
use crate::proof::{WORK_PRODUCT_VERSION, WorkProduct};
use crate::schedule::{Consume, Nonce, ProofParams, SeedKey};

/// Which positions to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpotCheck {
    /// This many distinct positions drawn uniformly over all steps (every iteration),
    /// fewer if `Verifier::max_full_products` runs out first.
    Random(usize),
    /// Exactly these (iteration, step within the iteration) positions, whatever they
    /// cost; hash `iteration * num_matrices + step`.
    At(Vec<(u64, u64)>),
}

/// 90 uniform positions: a proof with 5% of its steps faked passes with probability
/// 0.95^90 = 1%, one with 10% faked with 0.008% (README, "What each cheat costs").
pub const DEFAULT_SPOT_CHECKS: usize = 90;

impl Default for SpotCheck {
    fn default() -> Self {
        SpotCheck::Random(DEFAULT_SPOT_CHECKS)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The (iteration, index) positions whose hashes were recomputed on purpose.
    pub checked: Vec<(u64, u64)>,
    /// Full n^3 products replayed: the checked steps and the earlier steps of their
    /// chains (each of their hashes was confirmed too).
    pub full_products: usize,
}

#[derive(Clone, Debug)]
pub struct Verifier {
    pub params: ProofParams,
    /// Full products `SpotCheck::Random` may replay in all, counted as i + 1 per
    /// position of iteration i. Positions are drawn uniformly over every iteration
    /// until the next one no longer fits, so a budget B >= I guarantees floor(B / I)
    /// checks; B < I is refused (`VerifyError::Budget`), since capping the depth
    /// instead would leave later iterations unchecked. Default: no limit.
    pub max_full_products: usize,
    /// Slots and step scratch, `(num_matrices + 5) * n^2` bytes, must reach this
    /// fraction of the declared `memory` (total VRAM; the miner fills 95% of *free*
    /// memory, a bit less).
    pub min_vram_fraction: f64,
    pub threads: usize,
}

impl Verifier {
    pub fn new(params: ProofParams) -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Self { params, max_full_products: usize::MAX, min_vram_fraction: 0.90, threads }
    }

    /// A verifier with the parameters a miner uses for `device` by default.
    pub fn for_device(device: &DeviceInfo) -> Self {
        Self::new(ProofParams::for_device(device))
    }

    /// The challenge key, from the hashed rows of step (0, 0), `mix(fill_0 . R_0^T)`:
    /// row r needs row r of the fill and all of `R_0`, a few row products. Anyone with
    /// (seed, nonce, device, iterations) can derive it so, miner included: it proves
    /// liveness only.
    pub fn challenge_key(
        &self,
        device: &DeviceInfo,
        seed: u64,
        nonce: &Nonce,
        iterations: u64,
    ) -> ChallengeKey {
        let key = SeedKey::derive(seed, nonce, device);
        let n = self.params.matrix_size;
        let rows = key.hash_rows(0, 0, &self.params);
        let mut s = vec![0i8; rows.len() * n];
        // Step (0, 0) advances slot 0 whatever num_matrices is.
        for (dst, &row) in s.chunks_exact_mut(n).zip(&rows) {
            fill_row(key.philox_key(), 0, n, row as usize, dst);
        }
        let r = fill_matrix_vec(key.fresh_key(0, 0, &key.start_hash()), FRESH_MATRIX, n, self.threads);
        let mut c = vec![0i32; rows.len() * n];
        igemm_nt(MatRef::new(&s, rows.len(), n), MatRef::new(&r, n, n), &mut c, self.threads);
        let salt = key.mix_salt(0, 0);
        let mut out = vec![0i8; rows.len() * n];
        for ((src, dst), &idx) in c.chunks_exact(n).zip(out.chunks_exact_mut(n)).zip(&rows) {
            mix_slice(src, dst, idx as usize * n, salt);
        }
        ChallengeKey::derive(&key, &key.first_rows_hash(&out), iterations)
    }

    /// `"<seed>|" + base64(iv || ct)` for `plaintext`, as GraVal's `/encrypt`.
    pub fn encrypt_challenge(
        &self,
        device: &DeviceInfo,
        seed: u64,
        nonce: &Nonce,
        iterations: u64,
        plaintext: &str,
    ) -> Result<String, CryptoError> {
        let blob = self.challenge_key(device, seed, nonce, iterations).encrypt(plaintext)?;
        Ok(format_transport(seed, &blob))
    }

    /// Shape checks: version, counts, hash format, matrix size and the memory filled.
    pub fn check_structure(
        &self,
        device: &DeviceInfo,
        iterations: u64,
        wp: &WorkProduct,
    ) -> Result<Vec<[u8; 32]>, VerifyError> {
        device.validate()?;
        if wp.version != WORK_PRODUCT_VERSION {
            return Err(VerifyError::Version { got: wp.version, want: WORK_PRODUCT_VERSION });
        }
        if wp.total_iterations != iterations || crate::proof::check_iterations(iterations).is_err() {
            return Err(VerifyError::Iterations { got: wp.total_iterations, want: iterations });
        }
        if wp.matrix_size != self.params.matrix_size {
            return Err(VerifyError::MatrixSize { got: wp.matrix_size, want: self.params.matrix_size });
        }
        if wp.num_matrices < 2 {
            return Err(VerifyError::TooFewMatrices(wp.num_matrices));
        }
        let filled = self.params.filled_bytes(wp.num_matrices);
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

    /// Structural checks, then spot checks replayed on the CPU engine.
    pub fn check_proof(
        &self,
        device: &DeviceInfo,
        seed: u64,
        nonce: &Nonce,
        iterations: u64,
        wp: &WorkProduct,
        spots: &SpotCheck,
    ) -> Result<CheckReport, VerifyError> {
        let mut engine = CpuEngine::with_device(device.clone(), self.threads);
        self.check_proof_on(&mut engine, device, seed, nonce, iterations, wp, spots)
    }

    /// Structural checks, then spot checks replayed on `engine` (a GPU engine when
    /// the validator has one). The engine's own device is irrelevant: it needs room
    /// for one state and the step scratch.
    // The request's seed, nonce and iterations as they went over the wire, beside the
    // product and the check: named where they are used rather than bundled.
    #[allow(clippy::too_many_arguments)]
    pub fn check_proof_on(
        &self,
        engine: &mut dyn Engine,
        device: &DeviceInfo,
        seed: u64,
        nonce: &Nonce,
        iterations: u64,
        wp: &WorkProduct,
        spots: &SpotCheck,
    ) -> Result<CheckReport, VerifyError> {
        let hashes = self.check_structure(device, iterations, wp)?;
        let key = SeedKey::derive(seed, nonce, device);
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
            SpotCheck::Random(count) => self.pick(iterations, num, *count, &mut || OsRng.next_u64())?,
        };
        if positions.is_empty() {
            return Err(VerifyError::NothingChecked);
        }
        let schedule = Schedule::new(&key, num, &hashes);
        // Per slot, the deepest iteration any check needs: one replay per chain.
        let mut deepest: BTreeMap<u64, u64> = BTreeMap::new();
        for &t in &positions {
            let e = deepest.entry(schedule.slots[t as usize]).or_default();
            *e = (*e).max(t / num);
        }
        let replay = Replay { key: &key, params: &self.params, schedule: &schedule, hashes: &hashes };
        engine.allocate(self.params.matrix_size, 1).map_err(|e| VerifyError::Engine(e.to_string()))?;
        let result = deepest.iter().try_fold(0usize, |done, (&slot, &last)| {
            replay.chain(engine, slot, last).map(|()| done + last as usize + 1)
        });
        engine.release();
        Ok(CheckReport {
            checked: positions.iter().map(|&t| (t / num, t % num)).collect(),
            full_products: result?,
        })
    }

    /// Full products a check of (iteration, step) alone replays: its chain from the
    /// fill, `iteration + 1`.
    pub fn replay_cost(&self, wp: &WorkProduct, iteration: u64, index: u64) -> Result<usize, VerifyError> {
        if iteration >= wp.total_iterations || index >= wp.num_matrices {
            return Err(VerifyError::Position { iteration, index });
        }
        Ok(iteration as usize + 1)
    }

    /// Up to `count` distinct positions, each uniform over all `iterations * num`,
    /// drawn until the next one's replay (i + 1 products, chain sharing ignored, so
    /// the count is an upper bound) no longer fits the budget. The draw that does not
    /// fit ends the picking: skipping it and drawing on would favour cheap early
    /// positions, which a miner could then leave honest and fake the rest.
    fn pick(
        &self,
        iterations: u64,
        num: u64,
        count: usize,
        next: &mut dyn FnMut() -> u64,
    ) -> Result<Vec<u64>, VerifyError> {
        let total = iterations.saturating_mul(num);
        if count == 0 || total == 0 {
            return Ok(Vec::new());
        }
        if (self.max_full_products as u64) < iterations {
            return Err(VerifyError::Budget { budget: self.max_full_products, iterations });
        }
        let want = (count as u64).min(total);
        let mut left = self.max_full_products as u64;
        let mut picked = std::collections::BTreeSet::new();
        while (picked.len() as u64) < want {
            let t = next() % total;
            if picked.contains(&t) {
                continue;
            }
            let cost = t / num + 1;
            if cost > left {
                break;
            }
            left -= cost;
            picked.insert(t);
        }
        Ok(picked.into_iter().collect())
    }
}

/// Which slot every step advanced, rebuilt from the reported hashes.
struct Schedule {
    num: u64,
    slots: Vec<u64>,
    /// Per slot, its steps in iteration order.
    chains: HashMap<u64, Vec<u64>>,
}

impl Schedule {
    fn new(key: &SeedKey, num: u64, hashes: &[[u8; 32]]) -> Self {
        let mut prev = key.start_hash();
        let mut slots = Vec::with_capacity(hashes.len());
        let mut chains: HashMap<u64, Vec<u64>> = HashMap::new();
        for (i, chunk) in hashes.chunks(num as usize).enumerate() {
            let i = i as u64;
            let mut consume = Consume::new(num);
            for (p, h) in chunk.iter().enumerate() {
                let slot = consume.next(key, i, p as u64, &prev).unwrap_or_default();
                chains.entry(slot).or_default().push(slots.len() as u64);
                slots.push(slot);
                prev = *h;
            }
        }
        Self { num, slots, chains }
    }
}

struct Replay<'a> {
    key: &'a SeedKey,
    params: &'a ProofParams,
    schedule: &'a Schedule,
    hashes: &'a [[u8; 32]],
}

impl Replay<'_> {
    /// Replays chain `slot` from its fill through iteration `last` in slot 0 of
    /// `engine`, comparing every step with its reported hash.
    fn chain(&self, engine: &mut dyn Engine, slot: u64, last: u64) -> Result<(), VerifyError> {
        let engine_err = |e: crate::error::BackendError| VerifyError::Engine(e.to_string());
        let n = self.params.matrix_size;
        let num = self.schedule.num;
        engine.fill(0, self.key.philox_key(), slot as u32).map_err(engine_err)?;
        let mut rows_out = vec![0i8; self.params.rows_per_hash * n];
        let steps = self.schedule.chains.get(&slot).map(Vec::as_slice).unwrap_or_default();
        for &t in steps.iter().take(last as usize + 1) {
            let (i, p) = (t / num, t % num);
            let prev = if t == 0 { self.key.start_hash() } else { self.hashes[t as usize - 1] };
            let rows = self.key.hash_rows(i, p, self.params);
            let digest = engine
                .step(0, self.key.fresh_key(i, p, &prev), self.key.mix_salt(i, p), &rows, &mut rows_out)
                .map_err(engine_err)?;
            if self.key.step_hash(i, p, slot, digest, &rows_out) != self.hashes[t as usize] {
                return Err(VerifyError::HashMismatch { iteration: i, index: p });
            }
        }
        Ok(())
    }
}

/// The validator's timing window around a per-model estimate (`models::V2Plan`).
/// v2: 0.5x to 1.3x. The upper end is what binds: a miner who drops a fraction d of
/// its states pays d (I - 1) / 2 more products, so 1.3 caps d at 0.6 / (I - 1). (The
/// original's 0.55x to 1.7x was set for a workload a cheaper path could undercut.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimingWindow {
    pub low: f64,
    pub high: f64,
}

impl Default for TimingWindow {
    fn default() -> Self {
        Self { low: 0.5, high: 1.3 }
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
        assert!(w.check(60.0, 56.0).is_ok());
        assert!(w.check(28.0, 56.0).is_err(), "0.5 x 56 exactly is refused");
        assert!(w.check(28.1, 56.0).is_ok());
        assert!(w.check(72.8, 56.0).is_err(), "1.3 x 56 exactly is refused");
        assert_eq!(
            w.check(10.0, 56.0),
            Err(VerifyError::Timing { elapsed: 10.0, low: 28.0, high: 1.3 * 56.0 })
        );
        assert!(w.check_upper(1.0, 56.0).is_ok());
        assert!(w.check_upper(73.0, 56.0).is_err());
    }

    /// Positions (iteration-major, 4 per iteration) fed in order.
    fn feed(seq: &[u64]) -> impl FnMut() -> u64 + '_ {
        let mut i = 0;
        move || {
            i += 1;
            seq[i - 1]
        }
    }

    #[test]
    fn the_budget_ends_the_draws_and_never_skips_to_cheaper_positions() {
        let mut v = Verifier::new(ProofParams::with_matrix_size(16));
        v.max_full_products = 8;
        // Iteration 3 (4 products), a repeat (redrawn), iteration 0 (1), iteration 3
        // (4 > 3 left): the picking ends there, though position 1 would still fit.
        let got = v.pick(4, 4, 90, &mut feed(&[13, 13, 2, 14, 1])).unwrap();
        assert_eq!(got, vec![2, 13]);
        // floor(8 / 4) = 2 checks at the deepest iteration always fit.
        assert_eq!(v.pick(4, 4, 90, &mut feed(&[12, 15, 14])).unwrap(), vec![12, 15]);
        assert_eq!(v.pick(4, 4, 1, &mut feed(&[0])).unwrap(), vec![0]);
        assert!(v.pick(4, 4, 0, &mut feed(&[])).unwrap().is_empty());
        v.max_full_products = 3;
        assert_eq!(v.pick(4, 4, 1, &mut feed(&[0])), Err(VerifyError::Budget { budget: 3, iterations: 4 }));
    }

    #[test]
    fn plaintexts_must_all_match() {
        let got = HashMap::from([("a".to_string(), "x".to_string()), ("b".to_string(), "y".to_string())]);
        assert!(check_plaintexts([("a", "x"), ("b", "y")], &got).is_ok());
        assert_eq!(check_plaintexts([("a", "x"), ("b", "z")], &got), Err(VerifyError::Plaintext("b".into())));
        assert_eq!(check_plaintexts([("c", "x")], &got), Err(VerifyError::MissingDevice("c".into())));
    }
}
