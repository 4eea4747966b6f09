//! CUDA backend against the CPU reference. Needs a GPU: ignored by default and run by
//! `graval/gpu-check.sh` (`cargo test --features cuda -- --ignored`).
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use graval::cuda::CudaEngine;
use graval::node::decrypt_challenge;
use graval::{CpuEngine, Engine, ProofParams, SpotCheck, Verifier, prove};

const SEED: u64 = 1_234_567_890_123;

/// CUDA and CPU give the same hashes, bit for bit, when sized to the same budget.
fn same_hashes(n: usize, matrices: u64, iterations: u64) {
    let bytes = (matrices + 1) * (n * n * 4) as u64;
    let mut gpu = CudaEngine::new(0).expect("CUDA device 0").with_memory_limit(bytes);
    let info = gpu.device_info().clone();
    let params = ProofParams::with_matrix_size(n);
    let g = prove(&mut gpu, SEED, iterations, &params).unwrap();
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    let mut cpu = CpuEngine::with_device(info, threads).with_memory_limit(bytes);
    let c = prove(&mut cpu, SEED, iterations, &params).unwrap();
    assert_eq!(g.work_product.num_matrices, matrices);
    assert_eq!(g.work_product, c.work_product, "n={n}: CUDA hashes differ from CPU hashes");
    assert_eq!(g.first_hash, c.first_hash);
}

#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn cuda_hashes_equal_cpu_hashes_at_small_n() {
    same_hashes(64, 6, 2);
    same_hashes(256, 12, 2);
    same_hashes(1024, 5, 1);
    // 4M elements: the mix kernel's grid-stride loop and block sums run more than once.
    same_hashes(2048, 3, 2);
}

#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn cuda_fill_and_mix_match_cpu_elementwise() {
    let n = 128;
    let mut gpu = CudaEngine::new(0).unwrap();
    gpu.allocate(n, 3).unwrap();
    gpu.fill_all([11, 22]).unwrap();
    for k in 0..3 {
        let mut want = vec![0f32; n * n];
        graval::prng::fill_matrix([11, 22], k as u32, &mut want);
        assert_eq!(gpu.read_matrix(k).unwrap(), want, "fill of matrix {k}");
    }
    let mut rows_out = vec![0f32; 2 * n];
    let fresh = [5, 6];
    let digest = gpu.step(0, 2, fresh, 99, &[5, 77], &mut rows_out).unwrap();
    let r = graval::prng::fill_matrix_vec(fresh, graval::prng::FRESH_MATRIX, n, 1);
    let b = graval::prng::fill_matrix_vec([11, 22], 2, n, 1);
    let mut c = vec![0f32; n * n];
    graval::gemm::sgemm(graval::gemm::MatRef::new(&r, n, n), graval::gemm::MatRef::new(&b, n, n), &mut c, 1);
    let want_digest = graval::prng::mix_slice(&mut c, 0, 99);
    assert_eq!(gpu.read_matrix(0).unwrap(), c, "fresh operand . M_2, then mix");
    assert_eq!(digest, want_digest, "digest");
    assert_eq!(&rows_out[..n], &c[5 * n..6 * n]);
    assert_eq!(&rows_out[n..], &c[77 * n..78 * n]);
    assert_eq!(gpu.read_matrix(2).unwrap(), b, "the partner is not written");
    assert!(gpu.step(1, 1, fresh, 99, &[0], &mut rows_out[..n]).is_err());
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

#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn full_size_proof_fills_vram_and_verifies_on_cpu() {
    let mut gpu = CudaEngine::new(0).unwrap();
    let info = gpu.device_info().clone();
    let params = ProofParams::default();
    let t = std::time::Instant::now();
    let run = prove(&mut gpu, SEED, 1, &params).unwrap();
    println!(
        "full-size proof: {} matrices of {}^2, wall {:.2}s, chain {:.2} TFLOP/s, {:.4} of free and {:.4} of total VRAM",
        run.work_product.num_matrices,
        params.matrix_size,
        t.elapsed().as_secs_f64(),
        run.chain_flops() / run.chain_seconds / 1e12,
        run.filled_bytes as f64 / run.free_bytes as f64,
        run.filled_bytes as f64 / info.memory as f64
    );
    assert!(run.filled_bytes as f64 >= 0.95 * run.free_bytes as f64);
    let mut v = Verifier::new(params);
    // A full 16384^3 product is ~9 TFLOP, seconds on this host's CPU cores: one
    // position of iteration 0 (one product) is what a check script affords.
    v.max_full_products = 1;
    let t = std::time::Instant::now();
    let report = v.check_proof(&info, SEED, 1, &run.work_product, &SpotCheck::Random(1)).unwrap();
    println!(
        "CPU verifier checked {:?} with {} full products in {:.1}s",
        report.checked,
        report.full_products,
        t.elapsed().as_secs_f64()
    );
    let transport = v.encrypt_challenge(&info, SEED, 1, "decrypt me please: gpu").unwrap();
    assert_eq!(decrypt_challenge(&run, 1, &transport).unwrap(), "decrypt me please: gpu");
}

#[test]
#[ignore = "needs a CUDA GPU; run graval/gpu-check.sh"]
fn asking_for_more_than_the_device_has_fails_fast_and_clearly() {
    let mut gpu = CudaEngine::new(0).unwrap();
    let total = gpu.device_info().memory;
    // Pretend twice the real memory is free: allocation must fail with a clear error.
    let mut gpu2 = CudaEngine::new(0).unwrap().with_memory_limit(total * 2);
    let err = prove(&mut gpu2, SEED, 1, &ProofParams::default()).unwrap_err();
    let msg = err.to_string();
    println!("expected failure: {msg}");
    assert!(msg.contains("allocation of matrix"), "{msg}");
    // The device is usable again afterwards.
    gpu.allocate(64, 2).unwrap();
    gpu.release();
}
