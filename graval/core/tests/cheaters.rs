//! Cheating provers against the v2 verifier, on the CPU at small sizes (README,
//! "What each cheat costs"). Each cheater is an `Engine` run by the real proof
//! driver. Beside what it reports, it keeps the verifier's view (the honest state of
//! every slot, given the same reported inputs), so the test knows which of its hashes
//! are wrong without asking the verifier. The soundness argument predicts:
//! - a check of position t fails exactly when some step of t's chain, up to t, has a
//!   wrong hash (the verifier replays the chain and compares every step);
//! - so k uniform checks let a proof through with probability C(G, k) / C(T, k)
//!   (G good positions of T), which over thousands of draws the pass count must match
//!   within a bound exceeded with probability < 1e-9 (the draws are seeded, so the
//!   outcome is fixed);
//! - 7-bit storage spoils every read of a stored product (all of iterations >= 1),
//!   reduced-precision operands every product, dropped-and-faked chains exactly
//!   those chains, faked steps exactly the chain tails from each chain's first fake;
//! - a prover that drops D chains and recomputes them on demand passes, and pays
//!   exactly D * I (I - 1) / 2 extra products.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use graval::gemm::{MatRef, igemm_nt};
use graval::prng::{FRESH_MATRIX, fill_matrix_vec, mix_matrix};
use graval::{BackendError, DeviceInfo, Engine, ProofParams, SpotCheck, Verifier, VerifyError, prove};

const N: usize = 16;
const SLOTS: u64 = 16;
const ITERATIONS: u64 = 6;
const T: u64 = SLOTS * ITERATIONS;
const SEED: u64 = 77_000;
/// The validator's fresh value for the runs these tests make.
const NONCE: graval::Nonce = graval::Nonce([0x6e; 32]);

fn params() -> ProofParams {
    ProofParams::with_matrix_size(N)
}

fn device() -> DeviceInfo {
    common::h100_with_memory(params().filled_bytes(SLOTS))
}

fn verifier() -> Verifier {
    let mut v = Verifier::new(params());
    v.threads = 1;
    v
}

/// splitmix64: the test's own deterministic randomness (cheater choices, check picks).
fn mix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cheat {
    Honest,
    /// Stores every product with 7 bits per element (the low bit dropped); fills are
    /// kept exact (they regenerate for free).
    Packed7,
    /// Multiplies operands rounded to 4 significant bits (an FP8-like path).
    LowPrecision,
    /// Holds no state for chains 0..d and fakes their steps (random digest and rows).
    DropAndFake(usize),
    /// Fakes each step with probability per_mille / 1000.
    FakeSteps(u64),
    /// Holds no state for chains 0..d and recomputes it from the fill when read.
    DropAndRecompute(usize),
}

struct Cheater {
    info: DeviceInfo,
    cheat: Cheat,
    rng: u64,
    n: usize,
    fill_key: [u32; 2],
    /// What the cheater holds per slot (`None`: not stored).
    stored: Vec<Option<Vec<i8>>>,
    /// Per slot, (fresh key, salt) of its steps so far: all a recompute needs.
    history: Vec<Vec<([u32; 2], u32)>>,
    /// The verifier's view: the honest state of each slot given the reported inputs.
    /// Not the cheater's memory; the test's bookkeeping.
    shadow: Vec<Vec<i8>>,
    /// Full n^3 products the cheater computed.
    products: u64,
    /// Most states the cheater held at once.
    peak_held: usize,
    /// Per step (in driver order): its slot, whether its hash is wrong, and whether
    /// the cheater faked it (no product).
    slot_of: Vec<u64>,
    wrong: Vec<bool>,
    faked: Vec<bool>,
}

impl Cheater {
    fn new(cheat: Cheat, seed: u64) -> Self {
        Self {
            info: device(),
            cheat,
            rng: seed,
            n: 0,
            fill_key: [0, 0],
            stored: Vec::new(),
            history: Vec::new(),
            shadow: Vec::new(),
            products: 0,
            peak_held: 0,
            slot_of: Vec::new(),
            wrong: Vec::new(),
            faked: Vec::new(),
        }
    }

    fn dropped(&self, slot: usize) -> bool {
        matches!(self.cheat, Cheat::DropAndFake(d) | Cheat::DropAndRecompute(d) if slot < d)
    }

    /// Positions whose check the argument says fails: some step of the chain, up to
    /// and including this one, has a wrong hash.
    fn predicted_bad(&self) -> Vec<bool> {
        let mut spoiled = vec![false; SLOTS as usize];
        self.slot_of
            .iter()
            .zip(&self.wrong)
            .map(|(&slot, &wrong)| {
                spoiled[slot as usize] |= wrong;
                spoiled[slot as usize]
            })
            .collect()
    }
}

/// `mix(round(s) . round(r)^T)` and its digest.
fn advance(state: &[i8], fresh: [u32; 2], salt: u32, n: usize, round: fn(i8) -> i8) -> (Vec<i8>, u64) {
    let r: Vec<i8> = fill_matrix_vec(fresh, FRESH_MATRIX, n, 1).into_iter().map(round).collect();
    let s: Vec<i8> = state.iter().copied().map(round).collect();
    let mut p = vec![0i32; n * n];
    igemm_nt(MatRef::new(&s, n, n), MatRef::new(&r, n, n), &mut p, 1);
    let mut next = vec![0i8; n * n];
    let digest = mix_matrix(&p, &mut next, salt, 1);
    (next, digest)
}

fn exact(v: i8) -> i8 {
    v
}

/// Keeps the 4 leading significant bits of |v| (truncation), as an FP8-like format would.
fn four_bits(v: i8) -> i8 {
    let m = i32::from(v);
    let a = m.abs();
    let bits = 32 - a.leading_zeros() as i32;
    let shift = (bits - 4).max(0);
    (m.signum() * ((a >> shift) << shift)).clamp(-128, 127) as i8
}

fn rows_of(state: &[i8], rows: &[u32], n: usize, out: &mut [i8]) {
    for (o, &r) in out.chunks_exact_mut(n).zip(rows) {
        o.copy_from_slice(&state[r as usize * n..(r as usize + 1) * n]);
    }
}

impl Engine for Cheater {
    fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    fn free_memory(&mut self) -> Result<u64, BackendError> {
        Ok(self.info.memory)
    }

    fn allocate(&mut self, n: usize, count: usize) -> Result<(), BackendError> {
        self.n = n;
        self.stored = vec![None; count];
        self.history = vec![Vec::new(); count];
        self.shadow = vec![Vec::new(); count];
        Ok(())
    }

    fn slots(&self) -> usize {
        self.stored.len()
    }

    fn fill(&mut self, slot: usize, key: [u32; 2], id: u32) -> Result<(), BackendError> {
        self.fill_key = key;
        let m = fill_matrix_vec(key, id, self.n, 1);
        if !self.dropped(slot) {
            self.stored[slot] = Some(m.clone());
        }
        self.shadow[slot] = m;
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
        let (honest, honest_digest) = advance(&self.shadow[slot], fresh, salt, n, exact);
        let mut honest_rows = vec![0i8; rows.len() * n];
        rows_of(&honest, rows, n, &mut honest_rows);
        self.shadow[slot] = honest;

        let fake = match self.cheat {
            Cheat::DropAndFake(d) => slot < d,
            Cheat::FakeSteps(per_mille) => mix64(&mut self.rng) % 1000 < per_mille,
            _ => false,
        };
        let digest = if fake {
            // No product: a made-up state, digest and rows.
            let junk: Vec<i8> = (0..n * n).map(|_| mix64(&mut self.rng) as i8).collect();
            rows_of(&junk, rows, n, out);
            if !self.dropped(slot) {
                self.stored[slot] = Some(junk);
            }
            mix64(&mut self.rng)
        } else {
            let input = match (self.cheat, &self.stored[slot]) {
                (_, Some(s)) => s.clone(),
                (Cheat::DropAndRecompute(_), None) => {
                    // Recompute this chain's state from its fill: one product per earlier step.
                    let mut s = fill_matrix_vec(self.fill_key, slot as u32, n, 1);
                    for &(f, sa) in &self.history[slot] {
                        s = advance(&s, f, sa, n, exact).0;
                        self.products += 1;
                    }
                    s
                }
                (_, None) => unreachable!("only DropAndFake leaves a slot empty, and it fakes"),
            };
            let round = if self.cheat == Cheat::LowPrecision { four_bits } else { exact };
            let (next, digest) = advance(&input, fresh, salt, n, round);
            self.products += 1;
            rows_of(&next, rows, n, out);
            if !self.dropped(slot) {
                let keep =
                    if self.cheat == Cheat::Packed7 { next.iter().map(|v| v & !1).collect() } else { next };
                self.stored[slot] = Some(keep);
            }
            digest
        };
        self.history[slot].push((fresh, salt));
        self.peak_held = self.peak_held.max(self.stored.iter().filter(|s| s.is_some()).count());
        self.slot_of.push(slot as u64);
        self.faked.push(fake);
        self.wrong.push(digest != honest_digest || out != &honest_rows[..]);
        Ok(digest)
    }

    fn read_slot(&mut self, slot: usize) -> Result<Vec<i8>, BackendError> {
        Ok(self.stored[slot].clone().unwrap_or_default())
    }

    fn release(&mut self) {
        self.stored.clear();
    }
}

fn cheat_run(cheat: Cheat, seed: u64) -> (Cheater, graval::WorkProduct) {
    let mut c = Cheater::new(cheat, seed ^ 0x5eed);
    let run = prove(&mut c, seed, &NONCE, ITERATIONS, &params()).unwrap();
    assert_eq!(run.work_product.num_matrices, SLOTS);
    (c, run.work_product)
}

/// Checks every position on its own and compares the verifier's verdicts with the
/// prediction; returns the predicted-bad flags.
fn verdicts_match_prediction(cheat: Cheat, seed: u64) -> (Cheater, Vec<bool>) {
    let (c, wp) = cheat_run(cheat, seed);
    let bad = c.predicted_bad();
    let v = verifier();
    for t in 0..T {
        let pos = (t / SLOTS, t % SLOTS);
        let got = v.check_proof(&device(), seed, &NONCE, ITERATIONS, &wp, &SpotCheck::At(vec![pos]));
        match (bad[t as usize], got) {
            (false, Ok(_)) => {}
            (true, Err(VerifyError::HashMismatch { .. })) => {}
            (want_bad, got) => {
                panic!("{cheat:?} seed {seed} position {pos:?}: predicted bad={want_bad}, got {got:?}")
            }
        }
    }
    (c, bad)
}

/// ln C(a, b).
fn ln_choose(a: u64, b: u64) -> f64 {
    (0..b).map(|i| ((a - i) as f64).ln() - ((b - i) as f64).ln()).sum()
}

/// Deviation from the mean of a sum of independent Bernoulli variables with variance
/// `var` that is exceeded (either side) with probability below 1e-9 (Bernstein).
fn slack_1e9(var: f64) -> f64 {
    let l = (2e9f64).ln();
    l / 3.0 + ((l / 3.0).powi(2) + 2.0 * l * var).sqrt()
}

/// Over `runs` seeds, `draws` sets of k uniform checks each (test-drawn, so the outcome
/// is fixed for these seeds): every verdict must be the predicted one (pass exactly
/// when all k positions are good), and the pass count must match
/// sum C(G, k) / C(T, k) within a bound exceeded with probability < 1e-9.
fn survival_rate_matches(cheat: Cheat, k: usize, runs: u64, draws: u64) -> (u64, f64) {
    let v = verifier();
    let (mut passes, mut expected, mut var) = (0u64, 0.0f64, 0.0f64);
    for run in 0..runs {
        let seed = SEED + 1000 * run + 1;
        let (c, wp) = cheat_run(cheat, seed);
        let bad = c.predicted_bad();
        let good = bad.iter().filter(|b| !**b).count() as u64;
        let p =
            if good < k as u64 { 0.0 } else { (ln_choose(good, k as u64) - ln_choose(T, k as u64)).exp() };
        let mut rng = seed;
        for _ in 0..draws {
            expected += p;
            var += p * (1.0 - p);
            let mut picks = std::collections::BTreeSet::new();
            while picks.len() < k {
                picks.insert(mix64(&mut rng) % T);
            }
            let spots = SpotCheck::At(picks.iter().map(|&t| (t / SLOTS, t % SLOTS)).collect());
            let passed = v.check_proof(&device(), seed, &NONCE, ITERATIONS, &wp, &spots).is_ok();
            assert_eq!(passed, picks.iter().all(|&t| !bad[t as usize]), "{cheat:?} seed {seed} {picks:?}");
            passes += u64::from(passed);
        }
    }
    let slack = slack_1e9(var);
    let trials = runs * draws;
    println!("{cheat:?}, k = {k}: {passes} of {trials} passed, predicted {expected:.2} (+- {slack:.2})");
    assert!((passes as f64 - expected).abs() <= slack, "{cheat:?}: {passes} passes, predicted {expected:.2}");
    (passes, expected)
}

#[test]
fn the_honest_prover_passes_every_check_with_the_honest_work() {
    let (c, bad) = verdicts_match_prediction(Cheat::Honest, SEED);
    assert!(bad.iter().all(|b| !b));
    assert_eq!(c.products, T, "one product per step");
    assert_eq!(c.peak_held, SLOTS as usize);
    let (_, wp) = cheat_run(Cheat::Honest, SEED);
    let all: Vec<(u64, u64)> = (0..T).map(|t| (t / SLOTS, t % SLOTS)).collect();
    verifier().check_proof(&device(), SEED, &NONCE, ITERATIONS, &wp, &SpotCheck::At(all)).unwrap();
}

/// Below 8 bits per element a state cannot be held (it is uniform over all 256
/// values): every step that reads a stored product is wrong, i.e. every position
/// after iteration 0, and one uniform check catches it 5 times in 6.
#[test]
fn storage_packed_below_8_bits_fails_at_the_predicted_rate() {
    let (_, bad) = verdicts_match_prediction(Cheat::Packed7, SEED);
    let want: Vec<bool> = (0..T).map(|t| t >= SLOTS).collect();
    assert_eq!(bad, want, "wrong from the first read of a packed state on");
    // 2,000 single checks: 333 passes expected, 217..=450 accepted, so a verifier (or
    // a draw) that refuses every packed proof, or passes twice as many, fails here.
    let (passes, expected) = survival_rate_matches(Cheat::Packed7, 1, 4, 500);
    assert!((expected - 2000.0 / 6.0).abs() < 1e-6);
    assert!(passes > 0);
}

/// Products from operands rounded to 4 significant bits are wrong at every step.
#[test]
fn reduced_precision_operands_fail_every_check() {
    let (_, bad) = verdicts_match_prediction(Cheat::LowPrecision, SEED);
    assert!(bad.iter().all(|b| *b));
    let (passes, _) = survival_rate_matches(Cheat::LowPrecision, 1, 2, 100);
    assert_eq!(passes, 0);
}

/// Dropping 4 of 16 chains and faking their steps saves 25% of the products and
/// spoils exactly those chains: 3 checks let it through (12 of 16 chains good)
/// C(72, 3) / C(96, 3) = 41% of the time, 90 checks practically never.
#[test]
fn dropped_and_faked_chains_fail_at_the_predicted_rate() {
    let (c, bad) = verdicts_match_prediction(Cheat::DropAndFake(4), SEED);
    let want: Vec<bool> = c.slot_of.iter().map(|&s| s < 4).collect();
    assert_eq!(bad, want);
    assert_eq!(c.products, T - 4 * ITERATIONS, "what the cheat saves");
    assert_eq!(c.peak_held, 12);
    survival_rate_matches(Cheat::DropAndFake(4), 3, 4, 250);
    survival_rate_matches(Cheat::DropAndFake(4), 10, 4, 750);
}

/// Faking 5% of the steps: a fake spoils its own hash and every later hash of its chain
/// (the cheater goes on from its junk state and never gets back to the honest one), and
/// nothing else, so the bad positions are exactly the chain tails from each chain's
/// first fake; k = 5 checks catch it as predicted.
#[test]
fn faked_steps_fail_at_the_predicted_rate() {
    let (mut faked, mut bad_total) = (0, 0);
    for s in 0..4 {
        let (c, bad) = verdicts_match_prediction(Cheat::FakeSteps(50), SEED + s);
        // Per chain, the iteration of its first fake; step t is in iteration t / SLOTS.
        let mut first = [ITERATIONS; SLOTS as usize];
        for (t, (&slot, &f)) in c.slot_of.iter().zip(&c.faked).enumerate() {
            if f {
                first[slot as usize] = first[slot as usize].min(t as u64 / SLOTS);
            }
        }
        let tails: Vec<bool> =
            c.slot_of.iter().enumerate().map(|(t, &slot)| t as u64 / SLOTS >= first[slot as usize]).collect();
        assert_eq!(c.wrong, tails, "seed {}: wrong hashes are the chain tails from the first fake", SEED + s);
        assert_eq!(bad, tails);
        faked += c.faked.iter().filter(|f| **f).count();
        bad_total += bad.iter().filter(|b| **b).count();
    }
    assert!(faked > 0 && bad_total > faked, "{faked} faked, {bad_total} bad");
    survival_rate_matches(Cheat::FakeSteps(50), 5, 8, 250);
}

/// A prover that holds 12 of 16 chains and recomputes the other 4 from their fills
/// when read passes every check, and pays what the design says: in iteration i a
/// dropped chain costs i extra products, D * I (I - 1) / 2 = 4 * 15 = 60 in all,
/// d (I - 1) / 2 = 62.5% on top of the honest 96.
#[test]
fn a_prover_that_recomputes_dropped_states_passes_but_pays_the_predicted_work() {
    let d = 4u64;
    let (c, bad) = verdicts_match_prediction(Cheat::DropAndRecompute(d as usize), SEED);
    assert!(bad.iter().all(|b| !b), "recomputed states are the honest ones");
    assert_eq!(c.peak_held, (SLOTS - d) as usize, "it really held fewer states");
    let extra = d * ITERATIONS * (ITERATIONS - 1) / 2;
    assert_eq!(c.products, T + extra);
    let fraction = extra as f64 / T as f64;
    let d_frac = d as f64 / SLOTS as f64;
    assert!((fraction - d_frac * (ITERATIONS - 1) as f64 / 2.0).abs() < 1e-12);
    println!(
        "dropping {d} of {SLOTS} chains: {extra} extra products, {:.1}% of the honest work",
        100.0 * fraction
    );
}
