//! CUDA backend against the CPU reference. Needs a GPU: ignored by default and run by
//! `graval/gpu-check.sh` (`cargo test --features cuda -- --ignored`).
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use graval::cuda::CudaEngine;
use graval::node::decrypt_challenge;
use graval::{CpuEngine, Engine, ProofParams, SpotCheck, Verifier, prove};

const SEED: u64 = 1_234_567_890_123;
/// The validator's fresh value for the runs these tests make.
const NONCE: graval::Nonce = graval::Nonce([0x6e; 32]);

/// CUDA and CPU give the same hashes, bit for bit, when sized to the same budget.
fn same_hashes(n: usize, slots: u64, iterations: u64) {
    let params = ProofParams::with_matrix_size(n);
    let bytes = params.filled_bytes(slots);
    let mut gpu = CudaEngine::new(0).expect("CUDA device 0").with_memory_limit(bytes);
    let info = gpu.device_info().clone();
    let g = prove(&mut gpu, SEED, &NONCE, iterations, &params).unwrap();
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    let mut cpu = CpuEngine::with_device(info, threads).with_memory_limit(bytes);
    let c = prove(&mut cpu, SEED, &NONCE, iterations, &params).unwrap();
    assert_eq!(g.work_product.num_matrices, slots);
    assert_eq!(g.work_product, c.work_product, "n={n}: CUDA hashes differ from CPU hashes");
    assert_eq!(g.first_hash, c.first_hash);
    println!("RESULT cuda_eq_cpu n={n} slots={slots} iterations={iterations} equal=true");
}

#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn cuda_hashes_equal_cpu_hashes_at_several_sizes() {
    same_hashes(64, 6, 3);
    same_hashes(256, 12, 2);
    same_hashes(1024, 5, 2);
    // 4M elements: the mix kernel's grid-stride loop and block sums run more than once.
    same_hashes(2048, 3, 2);
    // Ragged for cuBLAS tiles: not a multiple of 64.
    same_hashes(400, 4, 2);
}

#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn cuda_fill_and_step_match_cpu_elementwise() {
    let n = 128;
    let mut gpu = CudaEngine::new(0).unwrap();
    gpu.allocate(n, 3).unwrap();
    gpu.fill_all([11, 22]).unwrap();
    for k in 0..3 {
        let want = graval::prng::fill_matrix_vec([11, 22], k as u32, n, 1);
        assert_eq!(gpu.read_slot(k).unwrap(), want, "fill of slot {k}");
    }
    let mut rows_out = vec![0i8; 2 * n];
    let fresh = [5, 6];
    let digest = gpu.step(2, fresh, 99, &[5, 77], &mut rows_out).unwrap();
    let r = graval::prng::fill_matrix_vec(fresh, graval::prng::FRESH_MATRIX, n, 1);
    let s = graval::prng::fill_matrix_vec([11, 22], 2, n, 1);
    let mut p = vec![0i32; n * n];
    graval::gemm::igemm_nt(
        graval::gemm::MatRef::new(&s, n, n),
        graval::gemm::MatRef::new(&r, n, n),
        &mut p,
        1,
    );
    let mut want = vec![0i8; n * n];
    let want_digest = graval::prng::mix_slice(&p, &mut want, 0, 99);
    assert_eq!(gpu.read_slot(2).unwrap(), want, "mix(S_2 . R^T)");
    assert_eq!(digest, want_digest, "digest");
    assert_eq!(&rows_out[..n], &want[5 * n..6 * n]);
    assert_eq!(&rows_out[n..], &want[77 * n..78 * n]);
    assert_eq!(
        gpu.read_slot(0).unwrap(),
        graval::prng::fill_matrix_vec([11, 22], 0, n, 1),
        "other slots untouched"
    );
    assert!(gpu.step(3, fresh, 99, &[0], &mut rows_out[..n]).is_err());
    gpu.release();
}

#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn cuda_device_info_has_the_original_fields_and_units() {
    let gpu = CudaEngine::new(0).unwrap();
    let info = gpu.device_info();
    info.validate().unwrap();
    println!("device info: {}", serde_json::to_string(info).unwrap());
    assert!(info.memory > 1 << 30, "memory is in bytes");
    assert!(info.clock_rate == 0.0 || info.clock_rate > 100_000.0, "clock_rate is in kHz");
    assert!(info.max_threads_per_processor >= 1024);
    assert!(info.major >= 7);
}

/// A proof over >= 95% of free VRAM at the device's own matrix size, accepted by the
/// CUDA verifier (90 positions) and a CPU verifier on a budget of 2 x iterations full
/// products (positions anywhere, at least two; `tests/proof.rs` holds the same budget
/// against a forged tail).
#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn full_size_proof_fills_vram_and_both_verifiers_accept_it() {
    let mut gpu = CudaEngine::new(0).unwrap();
    let info = gpu.device_info().clone();
    let params = ProofParams::for_device(&info);
    let iterations = 4;
    let t = std::time::Instant::now();
    let run = prove(&mut gpu, SEED, &NONCE, iterations, &params).unwrap();
    println!(
        "RESULT full_proof n={} slots={} iterations={iterations} wall_s={:.2} chain_tops={:.1} \
         free_filled={:.4} total_filled={:.4}",
        params.matrix_size,
        run.work_product.num_matrices,
        t.elapsed().as_secs_f64(),
        run.chain_ops() / run.chain_seconds / 1e12,
        run.filled_bytes as f64 / run.free_bytes as f64,
        run.filled_bytes as f64 / info.memory as f64
    );
    assert!(run.filled_bytes as f64 >= 0.95 * run.free_bytes as f64);
    let v = Verifier::new(params);
    let t = std::time::Instant::now();
    let report = v
        .check_proof_on(&mut gpu, &info, SEED, &NONCE, iterations, &run.work_product, &SpotCheck::default())
        .unwrap();
    println!(
        "RESULT full_proof_cuda_verifier checks={} full_products={} verify_s={:.2}",
        report.checked.len(),
        report.full_products,
        t.elapsed().as_secs_f64()
    );
    let mut cpu_v = Verifier::new(params);
    cpu_v.max_full_products = 2 * iterations as usize;
    let t = std::time::Instant::now();
    let report =
        cpu_v.check_proof(&info, SEED, &NONCE, iterations, &run.work_product, &SpotCheck::default()).unwrap();
    println!(
        "RESULT full_proof_cpu_verifier checked={:?} full_products={} verify_s={:.2}",
        report.checked,
        report.full_products,
        t.elapsed().as_secs_f64()
    );
    // A tampered hash is refused by the CUDA verifier too.
    let mut bad = run.work_product.clone();
    bad.intermediate_hashes[0] = "00".repeat(32);
    assert!(
        v.check_proof_on(&mut gpu, &info, SEED, &NONCE, iterations, &bad, &SpotCheck::At(vec![(0, 0)]))
            .is_err()
    );
    let transport = v.encrypt_challenge(&info, SEED, &NONCE, iterations, "decrypt me please: gpu").unwrap();
    assert_eq!(decrypt_challenge(&run, iterations, &transport).unwrap(), "decrypt me please: gpu");
}

#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn asking_for_more_than_the_device_has_fails_fast_and_clearly() {
    let mut gpu = CudaEngine::new(0).unwrap();
    let total = gpu.device_info().memory;
    // Pretend twice the real memory is free: allocation must fail with a clear error.
    let mut gpu2 = CudaEngine::new(0).unwrap().with_memory_limit(total * 2);
    let err = prove(&mut gpu2, SEED, &NONCE, 1, &ProofParams::for_device(gpu.device_info())).unwrap_err();
    let msg = err.to_string();
    println!("expected failure: {msg}");
    assert!(msg.contains("allocation of slot"), "{msg}");
    // The device is usable again afterwards.
    gpu.allocate(64, 2).unwrap();
    gpu.release();
}
