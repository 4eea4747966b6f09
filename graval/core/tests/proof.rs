//! Miner and validator together on the CPU backend: fixed vectors, round trip, and
//! every tampering the validator must catch.

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use expect_test::expect;
use graval::node::decrypt_challenge;
use graval::verify::check_plaintexts;
use graval::{
    BackendError, CpuEngine, CryptoError, DeviceInfo, Node, ProofError, ProofParams, ProofRun, SpotCheck,
    Verifier, VerifyError, prove,
};

const SEED: u64 = 1_234_567_890_123;
const N: usize = 32;
const MATRIX_BYTES: u64 = (N * N * 4) as u64;

fn params() -> ProofParams {
    ProofParams::with_matrix_size(N)
}

/// An H100-shaped device whose memory budget holds 16 resident matrices + scratch.
fn device() -> DeviceInfo {
    DeviceInfo {
        name: "NVIDIA H100 80GB HBM3".into(),
        uuid: "0123456789abcdef0123456789abcdef".into(),
        memory: 17 * MATRIX_BYTES,
        processors: 132,
        clock_rate: 1_980_000.0,
        max_threads_per_processor: 2048,
        major: 9,
        minor: 0,
        ecc: true,
        concurrent_kernels: true,
    }
}

fn run(dev: DeviceInfo, seed: u64, iterations: u64, threads: usize) -> ProofRun {
    prove(&mut CpuEngine::with_device(dev, threads), seed, iterations, &params()).unwrap()
}

fn verifier() -> Verifier {
    Verifier::new(params())
}

fn all_positions(iterations: u64, num: u64) -> SpotCheck {
    SpotCheck::At((0..iterations).flat_map(|i| (0..num).map(move |k| (i, k))).collect())
}

/// Regenerated from the algorithm (not typed in) when it last changed on purpose
/// (`UPDATE_EXPECT=1 cargo test -p graval --test proof`); any accidental change to the
/// PRNG, mix, digest, partner order, fresh operand, step hash or challenge-key input
/// fails here. The GPU check compares CUDA with these CPU hashes bit for bit.
#[test]
fn fixed_vectors_pin_the_algorithm() {
    let r = run(device(), SEED, 2, 1);
    assert_eq!(r.work_product.num_matrices, 16);
    assert_eq!(r.work_product.intermediate_hashes.len(), 32);
    let h = &r.work_product.intermediate_hashes;
    // First steps, the last step of iteration 0 (reads a matrix rewritten in its own
    // iteration), the first and last steps of iteration 1, and the challenge-key input.
    let pinned = [&h[0], &h[1], &h[2], &h[15], &h[16], &h[31], &hex::encode(r.first_hash)];
    expect![[r#"
        [
            "91c276dcae9dc087bb1959dfd335444f015710419c0fea1cfaffb9d713d840f0",
            "2319133c9f505a48255abde50d03676b2ab55c0b8df7983473a25e5243e3961d",
            "866fbafb47edeaf980a723f9fc788b74ac98952242a8078c10b6f37d7979099d",
            "d3390a5670f586b0e989c1d32480aef9a87901958caa5e1de9879778b8bf993d",
            "0265f5827b2fcb3eafb501745872e1a7095216149665c4eb8b0810df4daeeeef",
            "5eafbc1fc4131aa6074ccc08fba262e26ad09dbf5849e56e1dd70eced30e6634",
            "8a85f261dd0b73edf27a55116e4a2426cebd4bb0546a54b0d2e69f6209c4348b",
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
    let report =
        v.check_proof(&device(), SEED, iterations, &r.work_product, &all_positions(iterations, 16)).unwrap();
    assert_eq!(report.checked.len(), 32);
    // Random positions within the budget of full products.
    let report = v.check_proof(&device(), SEED, iterations, &r.work_product, &SpotCheck::Random(3)).unwrap();
    assert!(!report.checked.is_empty());
    assert!(report.full_products <= v.max_full_products, "{report:?}");

    let plaintext = "decrypt me please: 6f1c";
    let transport = v.encrypt_challenge(&device(), SEED, iterations, plaintext).unwrap();
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
        let err =
            v.check_proof(&device(), SEED, iterations, &wp, &all_positions(iterations, 16)).unwrap_err();
        assert!(matches!(err, VerifyError::HashMismatch { .. }), "position {t}: {err:?}");
    }
}

#[test]
fn a_single_spot_check_catches_a_tampered_hash_at_that_position() {
    let r = run(device(), SEED, 1, 2);
    let mut wp = r.work_product.clone();
    wp.intermediate_hashes[5] = "ab".repeat(32);
    let err = verifier().check_proof(&device(), SEED, 1, &wp, &SpotCheck::At(vec![(0, 5)])).unwrap_err();
    assert_eq!(err, VerifyError::HashMismatch { iteration: 0, index: 5 });
}

#[test]
fn wrong_seed_or_wrong_uuid_fails_verification_and_decryption() {
    let r = run(device(), SEED, 1, 2);
    let v = verifier();
    let all = all_positions(1, 16);
    assert!(matches!(
        v.check_proof(&device(), SEED + 1, 1, &r.work_product, &all),
        Err(VerifyError::HashMismatch { .. })
    ));
    let mut other = device();
    other.uuid = "f123456789abcdef0123456789abcdef".into();
    assert!(matches!(
        v.check_proof(&other, SEED, 1, &r.work_product, &all),
        Err(VerifyError::HashMismatch { .. })
    ));

    // A ciphertext for another seed or another device does not open.
    let for_other_seed = v.encrypt_challenge(&device(), SEED + 1, 1, "x").unwrap();
    let bare = for_other_seed.split_once('|').unwrap().1;
    assert_eq!(decrypt_challenge(&r, 1, bare), Err(CryptoError::Decrypt));
    assert!(matches!(decrypt_challenge(&r, 1, &for_other_seed), Err(CryptoError::Transport(_))));
    let for_other_device = v.encrypt_challenge(&other, SEED, 1, "x").unwrap();
    assert_eq!(decrypt_challenge(&r, 1, &for_other_device), Err(CryptoError::Decrypt));
    // Nor one for other iterations.
    let for_other_iterations = v.encrypt_challenge(&device(), SEED, 2, "x").unwrap();
    assert_eq!(decrypt_challenge(&r, 1, &for_other_iterations), Err(CryptoError::Decrypt));
}

#[test]
fn any_ciphertext_byte_flip_is_caught() {
    let r = run(device(), SEED, 1, 2);
    let v = verifier();
    let transport = v.encrypt_challenge(&device(), SEED, 1, "decrypt me please").unwrap();
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
        v.check_proof(&device(), SEED, 1, &wp, &spot),
        Err(VerifyError::HashCount { got: 15, want: 16 })
    );
    assert!(matches!(
        v.check_proof(&device(), SEED, 2, &r.work_product, &spot),
        Err(VerifyError::Iterations { got: 1, want: 2 })
    ));
    let mut wp = r.work_product.clone();
    wp.intermediate_hashes[3] = "zz".repeat(32);
    assert_eq!(v.check_proof(&device(), SEED, 1, &wp, &spot), Err(VerifyError::HashFormat(3)));
    // Claiming fewer matrices than the declared memory holds: not VRAM-filling.
    let mut wp = r.work_product.clone();
    wp.num_matrices = 8;
    wp.intermediate_hashes.truncate(8);
    assert!(matches!(v.check_proof(&device(), SEED, 1, &wp, &spot), Err(VerifyError::VramFraction { .. })));
    let mut wp = r.work_product.clone();
    wp.matrix_size = 64;
    assert_eq!(
        v.check_proof(&device(), SEED, 1, &wp, &spot),
        Err(VerifyError::MatrixSize { got: 64, want: 32 })
    );
    assert!(matches!(
        v.check_proof(&device(), SEED, 1, &r.work_product, &SpotCheck::At(vec![(1, 0)])),
        Err(VerifyError::Position { iteration: 1, index: 0 })
    ));
}

#[test]
fn sizing_fills_95_percent_or_fails_clearly() {
    let r = run(device(), SEED, 1, 1);
    assert_eq!(r.filled_bytes, 17 * MATRIX_BYTES);
    assert!(r.filled_bytes as f64 >= 0.95 * r.free_bytes as f64);

    // Budget for 2.5 matrices: fewer than two operands + scratch.
    let mut small = device();
    small.memory = MATRIX_BYTES * 5 / 2;
    let err = prove(&mut CpuEngine::with_device(small, 1), SEED, 1, &params()).unwrap_err();
    assert!(matches!(err, ProofError::Backend(BackendError::TooLittleMemory { fit: 2, .. })), "{err:?}");
    assert!(err.to_string().contains("cannot fill 95% of free memory"), "{err}");

    // 3.9 matrices of budget: 3 fit, which is only 77% of it.
    let mut ragged = device();
    ragged.memory = MATRIX_BYTES * 39 / 10;
    let err = prove(&mut CpuEngine::with_device(ragged, 1), SEED, 1, &params()).unwrap_err();
    assert!(matches!(err, ProofError::Backend(BackendError::TooLittleMemory { fit: 3, .. })), "{err:?}");

    let err = prove(&mut CpuEngine::with_device(device(), 1), SEED, 0, &params()).unwrap_err();
    assert!(matches!(err, ProofError::Iterations(0)));
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
    let runs = node.prove(SEED, 1).unwrap();
    assert_eq!(runs.len(), 2);
    assert_ne!(runs[0].work_product, runs[1].work_product, "the device identity keys the PRNG");
    verifier().check_proof(&second, SEED, 1, &runs[1].work_product, &SpotCheck::Random(2)).unwrap();
}

#[test]
fn matrix_size_follows_declared_memory() {
    use graval::schedule::auto_matrix_size;
    let mut d = device();
    d.memory = 85_017_493_504; // H100 80GB
    assert_eq!(ProofParams::for_device(&d).matrix_size, 16384);
    assert_eq!(Verifier::for_device(&d).params.matrix_size, 16384);
    assert_eq!(auto_matrix_size(25_386_450_944), 8192); // 24 GB cards
    assert_eq!(auto_matrix_size(6_000_000_000), 4096);
    // With a 512 MiB reserve, whole matrices of the chosen size fill 95% of what a
    // card of each table size typically has free (total minus ~600 MB of context).
    for model in graval::models::MODELS {
        let total = model.memory_gb * 1_073_741_824;
        let free = total - 600_000_000;
        let p = ProofParams::with_matrix_size(auto_matrix_size(total));
        graval::proof::plan_matrices(free, 512 << 20, &p).unwrap_or_else(|e| panic!("{}: {e}", model.key));
    }
}

/// A lazy miner computes iteration 0 honestly and makes up the hashes of later
/// iterations. Spot checks are drawn over every iteration, so the default check
/// (3 positions) lets such a proof through with probability (1/3)^3 = 1/27 here.
#[test]
fn faked_later_iterations_are_caught_by_the_default_spot_check() {
    let iterations = 3;
    let r = run(device(), SEED, iterations, 2);
    let v = verifier();
    let spot = SpotCheck::default();
    // Honest proof: every trial passes, and draws reach every iteration.
    let mut reached = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let report = v.check_proof(&device(), SEED, iterations, &r.work_product, &spot).unwrap();
        assert_eq!(report.checked.len(), 3);
        reached.extend(report.checked.iter().map(|&(i, _)| i));
    }
    assert_eq!(reached, (0..iterations).collect(), "random checks reach every iteration");

    let mut lazy = r.work_product.clone();
    for (t, h) in lazy.intermediate_hashes.iter_mut().enumerate().skip(16) {
        *h = format!("{:064x}", (t as u128 + 1) * 0x9e37_79b9_7f4a_7c15);
    }
    let trials = 64;
    let mut passed = 0;
    for _ in 0..trials {
        match v.check_proof(&device(), SEED, iterations, &lazy, &spot) {
            Ok(_) => passed += 1,
            Err(VerifyError::HashMismatch { iteration, .. }) => assert!(iteration >= 1),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    // Expected 64/27 = 2.4 passes; 13 or more has probability below 1e-6.
    assert!(passed <= 12, "{passed} of {trials} lazy proofs passed");
}

/// Verifier work, counted in full n^3 products (at n = 16384 about 8.8 TFLOP each,
/// ~15 s on 16 CPU cores, measured in the GPU check), not in seconds: a position of
/// iteration i replays its lineage, at least i + 1 products and about i + 1.7 on
/// average; checking everything costs exactly the miner's work.
#[test]
fn verifier_work_is_bounded_in_products() {
    let iterations = 4;
    let num = 16;
    let r = run(device(), SEED, iterations, 2);
    let v = verifier();
    assert!(v.max_full_products >= 2 * 9 + 6, "the default reaches (practically) every position");
    let mut per_iteration = vec![0usize; iterations as usize];
    for i in 0..iterations {
        for k in 0..num {
            let cost = v.replay_cost(&device(), SEED, &r.work_product, i, k).unwrap();
            let lo = i as usize + 1;
            let hi = 2 * i as usize + 6;
            assert!((lo..=hi).contains(&cost), "({i}, {k}) costs {cost}, outside {lo}..={hi}");
            per_iteration[i as usize] += cost;
            if k % 5 == 0 {
                let report = v
                    .check_proof(&device(), SEED, iterations, &r.work_product, &SpotCheck::At(vec![(i, k)]))
                    .unwrap();
                assert_eq!(report.full_products, cost, "({i}, {k})");
            }
        }
    }
    // Means over this and three more seeds (one proof's costs are correlated: its
    // positions share lineages): about i + 1.7.
    for seed in 1..4 {
        let other = run(device(), SEED + seed, iterations, 2);
        for i in 0..iterations {
            for k in 0..num {
                per_iteration[i as usize] +=
                    v.replay_cost(&device(), SEED + seed, &other.work_product, i, k).unwrap();
            }
        }
    }
    let means: Vec<f64> = per_iteration.iter().map(|c| *c as f64 / (4 * num) as f64).collect();
    println!("mean products per check by iteration: {means:?}");
    for (i, m) in means.iter().enumerate() {
        assert!(*m <= i as f64 + 2.5, "iteration {i}: mean {m}");
    }
    let report =
        v.check_proof(&device(), SEED, iterations, &r.work_product, &all_positions(iterations, num)).unwrap();
    assert_eq!(report.full_products, (iterations * num) as usize);
    // A budget of one product keeps random checks in iteration 0.
    let mut cheap = verifier();
    cheap.max_full_products = 1;
    let report =
        cheap.check_proof(&device(), SEED, iterations, &r.work_product, &SpotCheck::Random(3)).unwrap();
    assert_eq!(report.full_products, 3);
    assert!(report.checked.iter().all(|&(i, _)| i == 0), "{report:?}");
    cheap.max_full_products = 0;
    assert_eq!(
        cheap.check_proof(&device(), SEED, iterations, &r.work_product, &SpotCheck::Random(1)),
        Err(VerifyError::NoEligiblePosition(0))
    );
}

#[test]
fn engine_step_refuses_reading_the_matrix_it_writes() {
    use graval::Engine;
    let mut e = CpuEngine::with_device(device(), 1);
    e.allocate(N, 3).unwrap();
    let mut out = vec![0f32; N];
    let err = e.step(1, 1, [1, 2], 3, &[0], &mut out).unwrap_err();
    assert!(matches!(err, BackendError::Step { k: 1, j: 1, count: 3 }), "{err:?}");
    assert!(e.step(0, 3, [1, 2], 3, &[0], &mut out).is_err());
    assert!(e.step(0, 2, [1, 2], 3, &[0], &mut out).is_ok());
}
