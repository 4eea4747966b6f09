//! Miner and validator together on the CPU backend: fixed vectors, round trip, and
//! every tampering the validator must catch.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use expect_test::expect;
use graval::node::decrypt_challenge;
use graval::verify::check_plaintexts;
use graval::{
    BackendError, CpuEngine, CryptoError, DeviceInfo, Node, ProofError, ProofParams, ProofRun, SpotCheck,
    Verifier, VerifyError, prove,
};

const SEED: u64 = 1_234_567_890_123;
/// The validator's fresh value for the runs these tests make.
const NONCE: graval::Nonce = graval::Nonce([0x6e; 32]);
const N: usize = 32;
const MATRIX_BYTES: u64 = (N * N) as u64;

fn params() -> ProofParams {
    ProofParams::with_matrix_size(N)
}

/// An H100-shaped device whose memory budget holds 16 slots + the step scratch (5 slots).
fn device() -> DeviceInfo {
    common::h100_with_memory(21 * MATRIX_BYTES)
}

fn run(dev: DeviceInfo, seed: u64, iterations: u64, threads: usize) -> ProofRun {
    prove(&mut CpuEngine::with_device(dev, threads), seed, &NONCE, iterations, &params()).unwrap()
}

fn verifier() -> Verifier {
    Verifier::new(params())
}

fn all_positions(iterations: u64, num: u64) -> SpotCheck {
    SpotCheck::At((0..iterations).flat_map(|i| (0..num).map(move |k| (i, k))).collect())
}

/// Regenerated from the algorithm (not typed in) when it last changed on purpose
/// (`UPDATE_EXPECT=1 cargo test -p graval --test proof`); any accidental change to the
/// PRNG, mix, digest, consume order, fresh operand, step hash or challenge-key input
/// fails here. The GPU check compares CUDA with these CPU hashes bit for bit.
#[test]
fn fixed_vectors_pin_the_algorithm() {
    let r = run(device(), SEED, 2, 1);
    assert_eq!(r.work_product.num_matrices, 16);
    assert_eq!(r.work_product.intermediate_hashes.len(), 32);
    let h = &r.work_product.intermediate_hashes;
    // First steps, the last step of iteration 0, the first and last steps of
    // iteration 1, and the challenge-key input.
    let pinned = [&h[0], &h[1], &h[2], &h[15], &h[16], &h[31], &hex::encode(r.first_hash)];
    expect![[r#"
        [
            "9c2ff6f8247551219a8bf5c3e9fc9fd131c5ff373852a8755aa4c97c85949436",
            "9c4474d56e3330cb565cd8a0c8a0366c4ce173e34be2724bca8942e20ad177ef",
            "04af6de1de8d5866c893a5560875907f87f00fc58c9695e300982da6a5b964c7",
            "0e99fee63963d374f66644c5ac480626cc947090355dadb5285223cd7be11a8d",
            "8f787627e6fcf8820a94cb1113a9d9b45aa76d756c9f9555b68ea3a9d053aa50",
            "27ca46881af53a91ad5a2aa438b69b40858070002b281305a7b63ea6853e7b75",
            "d238b580327b2d9457cc95a24858dc08890f35f59b63240d84913ba1a337947b",
        ]
    "#]]
    .assert_debug_eq(&pinned);
}

#[test]
fn work_product_json_has_the_original_shape() {
    let r = run(device(), SEED, 2, 2);
    let json = serde_json::to_value(&r.work_product).unwrap();
    let obj = json.as_object().unwrap();
    assert_eq!(obj["num_matrices"], 16);
    assert_eq!(obj["total_iterations"], 2);
    assert_eq!(obj["intermediate_hashes"].as_array().unwrap().len(), 32);
    assert!(obj["intermediate_hashes"][0].as_str().unwrap().len() == 64);
    assert_eq!(obj["matrix_size"], N);
    assert_eq!(obj["version"], 2);
}

/// A GraVal v1 work product (no `version` field) is read as version 1 and refused by
/// name, not misread as a v2 chain; so is any other version.
#[test]
fn a_v1_work_product_is_refused_with_a_clear_error() {
    let r = run(device(), SEED, 1, 2);
    let mut json = serde_json::to_value(&r.work_product).unwrap();
    json.as_object_mut().unwrap().remove("version");
    let v1: graval::WorkProduct = serde_json::from_value(json).unwrap();
    assert_eq!(v1.version, 1);
    let err = verifier().check_proof(&device(), SEED, &NONCE, 1, &v1, &SpotCheck::Random(1)).unwrap_err();
    assert_eq!(err, VerifyError::Version { got: 1, want: 2 });
    let msg = err.to_string();
    assert!(msg.contains("version is 1") && msg.contains("GraVal v1") && msg.contains("version 2"), "{msg}");
    let mut v3 = r.work_product.clone();
    v3.version = 3;
    assert_eq!(
        verifier().check_proof(&device(), SEED, &NONCE, 1, &v3, &SpotCheck::Random(1)),
        Err(VerifyError::Version { got: 3, want: 2 })
    );
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let a = run(device(), SEED, 2, 1);
    let b = run(device(), SEED, 2, 2);
    assert_eq!(a.work_product, b.work_product);
}

#[test]
fn prove_then_verify_round_trip() {
    let iterations = 2;
    let r = run(device(), SEED, iterations, 2);
    let v = verifier();
    // Every position, whatever it costs.
    let report = v
        .check_proof(&device(), SEED, &NONCE, iterations, &r.work_product, &all_positions(iterations, 16))
        .unwrap();
    assert_eq!(report.checked.len(), 32);
    // The default: 90 random positions (all 32 here).
    let report =
        v.check_proof(&device(), SEED, &NONCE, iterations, &r.work_product, &SpotCheck::default()).unwrap();
    assert_eq!(report.checked.len(), 32);

    let plaintext = "decrypt me please: 6f1c";
    let transport = v.encrypt_challenge(&device(), SEED, &NONCE, iterations, plaintext).unwrap();
    assert!(transport.starts_with(&format!("{SEED}|")));
    let got = decrypt_challenge(&r, iterations, &transport).unwrap();
    assert_eq!(got, plaintext);
    let by_uuid = HashMap::from([(device().uuid, got)]);
    check_plaintexts([(device().uuid.as_str(), plaintext)], &by_uuid).unwrap();
}

#[test]
fn every_tampered_hash_is_caught() {
    let iterations = 2;
    let r = run(device(), SEED, iterations, 2);
    let v = verifier();
    for t in 0..r.work_product.intermediate_hashes.len() {
        let mut wp = r.work_product.clone();
        let h = &mut wp.intermediate_hashes[t];
        let flipped = if h.starts_with('0') { "1" } else { "0" };
        h.replace_range(0..1, flipped);
        let err = v
            .check_proof(&device(), SEED, &NONCE, iterations, &wp, &all_positions(iterations, 16))
            .unwrap_err();
        assert!(matches!(err, VerifyError::HashMismatch { .. }), "position {t}: {err:?}");
    }
}

#[test]
fn a_single_spot_check_catches_a_tampered_hash_at_that_position() {
    let r = run(device(), SEED, 1, 2);
    let mut wp = r.work_product.clone();
    wp.intermediate_hashes[5] = "ab".repeat(32);
    let err =
        verifier().check_proof(&device(), SEED, &NONCE, 1, &wp, &SpotCheck::At(vec![(0, 5)])).unwrap_err();
    assert_eq!(err, VerifyError::HashMismatch { iteration: 0, index: 5 });
}

#[test]
fn wrong_seed_nonce_or_uuid_fails_verification_and_decryption() {
    let r = run(device(), SEED, 1, 2);
    let v = verifier();
    let all = all_positions(1, 16);
    assert!(matches!(
        v.check_proof(&device(), SEED + 1, &NONCE, 1, &r.work_product, &all),
        Err(VerifyError::HashMismatch { .. })
    ));
    let mut other = device();
    other.uuid = "f123456789abcdef0123456789abcdef".into();
    assert!(matches!(
        v.check_proof(&other, SEED, &NONCE, 1, &r.work_product, &all),
        Err(VerifyError::HashMismatch { .. })
    ));
    // Work done for another nonce (before the validator asked, with the node's known
    // seed) is not the work it asked for.
    let earlier = graval::Nonce([0x01; 32]);
    assert!(matches!(
        v.check_proof(&device(), SEED, &earlier, 1, &r.work_product, &all),
        Err(VerifyError::HashMismatch { .. })
    ));
    let for_other_nonce = v.encrypt_challenge(&device(), SEED, &earlier, 1, "x").unwrap();
    assert_eq!(decrypt_challenge(&r, 1, &for_other_nonce), Err(CryptoError::Decrypt));

    // A ciphertext for another seed or another device does not open.
    let for_other_seed = v.encrypt_challenge(&device(), SEED + 1, &NONCE, 1, "x").unwrap();
    let bare = for_other_seed.split_once('|').unwrap().1;
    assert_eq!(decrypt_challenge(&r, 1, bare), Err(CryptoError::Decrypt));
    assert!(matches!(decrypt_challenge(&r, 1, &for_other_seed), Err(CryptoError::Transport(_))));
    let for_other_device = v.encrypt_challenge(&other, SEED, &NONCE, 1, "x").unwrap();
    assert_eq!(decrypt_challenge(&r, 1, &for_other_device), Err(CryptoError::Decrypt));
    // Nor one for other iterations.
    let for_other_iterations = v.encrypt_challenge(&device(), SEED, &NONCE, 2, "x").unwrap();
    assert_eq!(decrypt_challenge(&r, 1, &for_other_iterations), Err(CryptoError::Decrypt));
}

#[test]
fn any_ciphertext_byte_flip_is_caught() {
    let r = run(device(), SEED, 1, 2);
    let v = verifier();
    let transport = v.encrypt_challenge(&device(), SEED, &NONCE, 1, "decrypt me please").unwrap();
    let (_, blob) = graval::crypto::parse_transport(&transport).unwrap();
    for i in 0..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x80;
        let t = graval::crypto::encode_blob(&bad);
        assert_eq!(decrypt_challenge(&r, 1, &t), Err(CryptoError::Decrypt), "byte {i}");
    }
}

#[test]
fn structural_lies_are_refused() {
    let r = run(device(), SEED, 1, 2);
    let v = verifier();
    let spot = SpotCheck::Random(1);
    let mut wp = r.work_product.clone();
    wp.intermediate_hashes.pop();
    assert_eq!(
        v.check_proof(&device(), SEED, &NONCE, 1, &wp, &spot),
        Err(VerifyError::HashCount { got: 15, want: 16 })
    );
    assert!(matches!(
        v.check_proof(&device(), SEED, &NONCE, 2, &r.work_product, &spot),
        Err(VerifyError::Iterations { got: 1, want: 2 })
    ));
    let mut wp = r.work_product.clone();
    wp.intermediate_hashes[3] = "zz".repeat(32);
    assert_eq!(v.check_proof(&device(), SEED, &NONCE, 1, &wp, &spot), Err(VerifyError::HashFormat(3)));
    // A check that replays nothing accepts nothing, and zero iterations are no proof.
    for nothing in [SpotCheck::At(vec![]), SpotCheck::Random(0)] {
        assert_eq!(
            v.check_proof(&device(), SEED, &NONCE, 1, &r.work_product, &nothing),
            Err(VerifyError::NothingChecked)
        );
    }
    let mut empty = r.work_product.clone();
    empty.total_iterations = 0;
    empty.intermediate_hashes.clear();
    assert_eq!(
        v.check_proof(&device(), SEED, &NONCE, 0, &empty, &spot),
        Err(VerifyError::Iterations { got: 0, want: 0 })
    );
    // Claiming fewer matrices than the declared memory holds: not VRAM-filling.
    let mut wp = r.work_product.clone();
    wp.num_matrices = 8;
    wp.intermediate_hashes.truncate(8);
    assert!(matches!(
        v.check_proof(&device(), SEED, &NONCE, 1, &wp, &spot),
        Err(VerifyError::VramFraction { .. })
    ));
    let mut wp = r.work_product.clone();
    wp.matrix_size = 64;
    assert_eq!(
        v.check_proof(&device(), SEED, &NONCE, 1, &wp, &spot),
        Err(VerifyError::MatrixSize { got: 64, want: 32 })
    );
    assert!(matches!(
        v.check_proof(&device(), SEED, &NONCE, 1, &r.work_product, &SpotCheck::At(vec![(1, 0)])),
        Err(VerifyError::Position { iteration: 1, index: 0 })
    ));
}

#[test]
fn sizing_fills_95_percent_or_fails_clearly() {
    let r = run(device(), SEED, 1, 1);
    assert_eq!(r.work_product.num_matrices, 16);
    assert_eq!(r.filled_bytes, 21 * MATRIX_BYTES, "16 slots + 5 slots of scratch, in bytes");
    assert!(r.filled_bytes as f64 >= 0.95 * r.free_bytes as f64);

    // Budget for 6 slots: the scratch takes 5, one slot is not a chain set.
    let mut small = device();
    small.memory = MATRIX_BYTES * 6;
    let err = prove(&mut CpuEngine::with_device(small, 1), SEED, &NONCE, 1, &params()).unwrap_err();
    assert!(matches!(err, ProofError::Backend(BackendError::TooLittleMemory { fit: 1, .. })), "{err:?}");
    assert!(err.to_string().contains("cannot fill 95% of free memory"), "{err}");

    // 7.9 slots of budget: 2 fit beside the scratch, which is only 89% of it.
    let mut ragged = device();
    ragged.memory = MATRIX_BYTES * 79 / 10;
    let err = prove(&mut CpuEngine::with_device(ragged, 1), SEED, &NONCE, 1, &params()).unwrap_err();
    assert!(matches!(err, ProofError::Backend(BackendError::TooLittleMemory { fit: 2, .. })), "{err:?}");

    let err = prove(&mut CpuEngine::with_device(device(), 1), SEED, &NONCE, 0, &params()).unwrap_err();
    assert!(matches!(err, ProofError::Iterations(0)));
    let err = prove(&mut CpuEngine::with_device(device(), 1), SEED, &NONCE, 65, &params()).unwrap_err();
    assert!(matches!(err, ProofError::Iterations(65)));
    let err =
        prove(&mut CpuEngine::with_device(device(), 1), SEED, &NONCE, 1, &ProofParams::with_matrix_size(40))
            .unwrap_err();
    assert!(err.to_string().contains("multiple of 16"), "{err}");
}

#[test]
fn node_proves_every_device_in_parallel() {
    let mut second = device();
    second.uuid = "fedcba9876543210fedcba9876543210".into();
    let engines: Vec<Box<dyn graval::Engine>> = vec![
        Box::new(CpuEngine::with_device(device(), 1)),
        Box::new(CpuEngine::with_device(second.clone(), 1)),
    ];
    let mut node = Node::new(engines, Some(N));
    let runs = node.prove(SEED, &NONCE, 1).unwrap();
    assert_eq!(runs.len(), 2);
    assert_ne!(runs[0].work_product, runs[1].work_product, "the device identity keys the PRNG");
    verifier().check_proof(&second, SEED, &NONCE, 1, &runs[1].work_product, &SpotCheck::Random(2)).unwrap();
}

#[test]
fn matrix_size_follows_declared_memory() {
    use graval::schedule::auto_matrix_size;
    let mut d = device();
    d.memory = 85_017_493_504; // H100 80GB
    assert_eq!(ProofParams::for_device(&d).matrix_size, 8192);
    assert_eq!(Verifier::for_device(&d).params.matrix_size, 8192);
    assert_eq!(auto_matrix_size(25_386_450_944), 8192); // 24 GB cards
    assert_eq!(auto_matrix_size(6_000_000_000), 4096);
    // With a 512 MiB reserve, slots of the chosen size fill 95% of what a card of each
    // table size typically has free (total minus ~600 MB of context).
    for model in graval::models::MODELS {
        let total = model.memory_gb * 1_073_741_824;
        let free = total - 600_000_000;
        let p = ProofParams::with_matrix_size(auto_matrix_size(total));
        graval::proof::plan_matrices(free, 512 << 20, &p).unwrap_or_else(|e| panic!("{}: {e}", model.key));
    }
}

/// Verifier work, counted in full n^3 products: a position of iteration i replays its
/// chain from the fill, exactly i + 1 products; checking every position costs exactly
/// the miner's work (one replay per chain).
#[test]
fn verifier_work_is_counted_in_products() {
    let iterations = 4;
    let num = 16;
    let r = run(device(), SEED, iterations, 2);
    let v = verifier();
    for i in 0..iterations {
        for k in (0..num).step_by(5) {
            let cost = v.replay_cost(&r.work_product, i, k).unwrap();
            assert_eq!(cost, i as usize + 1);
            let report = v
                .check_proof(
                    &device(),
                    SEED,
                    &NONCE,
                    iterations,
                    &r.work_product,
                    &SpotCheck::At(vec![(i, k)]),
                )
                .unwrap();
            assert_eq!(report.full_products, cost, "({i}, {k})");
        }
    }
    assert!(v.replay_cost(&r.work_product, iterations, 0).is_err());
    let report = v
        .check_proof(&device(), SEED, &NONCE, iterations, &r.work_product, &all_positions(iterations, num))
        .unwrap();
    assert_eq!(report.full_products, (iterations * num) as usize);
    // A budget bounds the replay; it must afford one check of the last iteration.
    let mut cheap = verifier();
    cheap.max_full_products = iterations as usize;
    let report = cheap
        .check_proof(&device(), SEED, &NONCE, iterations, &r.work_product, &SpotCheck::Random(3))
        .unwrap();
    assert!(!report.checked.is_empty() && report.full_products <= 4, "{report:?}");
    cheap.max_full_products = 3;
    assert_eq!(
        cheap.check_proof(&device(), SEED, &NONCE, iterations, &r.work_product, &SpotCheck::Random(1)),
        Err(VerifyError::Budget { budget: 3, iterations: 4 })
    );
}

/// The verifier replays through any engine: here a second CPU engine standing in for
/// a validator's GPU, with another identity (the replay uses the proof's device).
#[test]
fn the_verifier_replays_through_a_given_engine() {
    let r = run(device(), SEED, 2, 2);
    let mut other = device();
    other.uuid = "99999999999999999999999999999999".into();
    let mut engine = CpuEngine::with_device(other, 2);
    let report = verifier()
        .check_proof_on(&mut engine, &device(), SEED, &NONCE, 2, &r.work_product, &all_positions(2, 16))
        .unwrap();
    assert_eq!(report.full_products, 32);
}

#[test]
fn engine_step_refuses_a_slot_that_does_not_exist() {
    use graval::Engine;
    let mut e = CpuEngine::with_device(device(), 1);
    e.allocate(N, 3).unwrap();
    let mut out = vec![0i8; N];
    let err = e.step(3, [1, 2], 3, &[0], &mut out).unwrap_err();
    assert!(matches!(err, BackendError::Slot { slot: 3, count: 3 }), "{err:?}");
    assert!(e.fill(7, [1, 2], 0).is_err());
    assert!(e.step(2, [1, 2], 3, &[0], &mut out).is_ok());
}

/// The review's forgery: iteration 0 computed honestly, every later hash junk (240 of
/// the 256 at 16 iterations). Returns the honest product and the forged one.
fn forged_tail(iterations: u64) -> (graval::WorkProduct, graval::WorkProduct) {
    let honest = run(device(), SEED, iterations, 2).work_product;
    let mut forged = honest.clone();
    let num = forged.num_matrices as usize;
    for h in forged.intermediate_hashes.iter_mut().skip(num) {
        *h = "00".repeat(32);
    }
    (honest, forged)
}

/// A budget below `iterations` full products cannot replay a check of the last
/// iteration; the verifier refuses it rather than checking early iterations only (the
/// review's `max_full_products = 1` accepted the forged tail every time).
#[test]
fn a_budget_that_cannot_reach_the_last_iteration_is_refused() {
    let iterations = 16;
    let (honest, forged) = forged_tail(iterations);
    let mut v = verifier();
    v.max_full_products = 1;
    for wp in [&forged, &honest] {
        let err = v.check_proof(&device(), SEED, &NONCE, iterations, wp, &SpotCheck::default()).unwrap_err();
        assert_eq!(err, VerifyError::Budget { budget: 1, iterations: 16 });
        assert!(err.to_string().contains("last of 16 iterations"), "{err}");
    }
}

/// The budget gpu-check's CPU verifiers use, `max_full_products = 2 * iterations`:
/// positions are drawn over every iteration, the replay stays within the budget, and
/// the forged tail is always refused. A pass would need 17 iteration-0 draws (each
/// costs 1, and only a draw that no longer fits ends the checks) and there are 16.
#[test]
fn a_budgeted_verifier_checks_every_iteration_within_its_budget() {
    let iterations = 16;
    let (honest, forged) = forged_tail(iterations);
    let mut v = verifier();
    v.max_full_products = 2 * iterations as usize;
    let mut deepest = 0;
    for _ in 0..20 {
        let r = v.check_proof(&device(), SEED, &NONCE, iterations, &honest, &SpotCheck::default()).unwrap();
        assert!(r.full_products <= v.max_full_products, "{r:?}");
        assert!(r.checked.len() >= 2, "the budget affords at least two checks at any depth: {r:?}");
        deepest = deepest.max(r.checked.iter().map(|&(i, _)| i).max().unwrap_or(0));
        let err =
            v.check_proof(&device(), SEED, &NONCE, iterations, &forged, &SpotCheck::default()).unwrap_err();
        assert!(matches!(err, VerifyError::HashMismatch { .. }), "{err:?}");
    }
    // 40+ uniform draws all in iteration 0 would have probability below 16^-40.
    assert!(deepest > 0);
}

/// An original (v1) work product has `intermediate_hashes`, `num_matrices` and
/// `total_iterations` only. It parses and is refused by its version, not by a missing
/// v2 field; a v2 product still needs `matrix_size`.
#[test]
fn an_original_v1_shaped_work_product_is_refused_by_its_version() {
    let hashes: Vec<String> = (0..16).map(|i| format!("{i:064x}")).collect();
    let json = serde_json::json!({"intermediate_hashes": hashes, "num_matrices": 16, "total_iterations": 1});
    let wp: graval::WorkProduct = serde_json::from_value(json).unwrap();
    assert_eq!(wp.version, 1);
    assert_eq!(
        verifier().check_proof(&device(), SEED, &NONCE, 1, &wp, &SpotCheck::Random(1)),
        Err(VerifyError::Version { got: 1, want: 2 })
    );
    let r = run(device(), SEED, 1, 2);
    let mut v2 = serde_json::to_value(&r.work_product).unwrap();
    v2.as_object_mut().unwrap().remove("matrix_size");
    let err = serde_json::from_value::<graval::WorkProduct>(v2).unwrap_err();
    assert!(err.to_string().contains("matrix_size"), "{err}");
}

/// The challenge key needs only (seed, device, iterations): anyone derives it as the
/// validator does, without slots or a run. Decrypting proves liveness, not work.
#[test]
fn the_challenge_key_needs_no_run() {
    let v = verifier();
    let transport = v.encrypt_challenge(&device(), SEED, &NONCE, 16, "decrypt me please").unwrap();
    let (_, blob) = graval::crypto::parse_transport(&transport).unwrap();
    let key = verifier().challenge_key(&device(), SEED, &NONCE, 16);
    assert_eq!(key.decrypt(&blob).unwrap(), "decrypt me please");
}
