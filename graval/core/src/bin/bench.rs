//! graval-bench: throughput figures for the proof's GEMM and whole proofs.
//!
//!   graval-bench cpu [--n 2048] [--reps 5]          CPU SGEMM (the proof's kernel), GFLOP/s
//!   graval-bench cpu-proof [--n 512] [--mib 256] [--iterations 1]
//!   graval-bench gpu [--sizes 8192,16384] [--model]  (built with --features cuda)
//!
//! Every line of results starts with "RESULT " so scripts can grep them.

use std::time::Instant;

use anyhow_free::*;
use graval::gemm::{MatRef, sgemm};
use graval::prng::fill_matrix;
use graval::{CpuEngine, ProofParams, prove};

/// Tiny argument helpers (the library crate keeps no CLI dependency).
mod anyhow_free {
    pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    #[allow(dead_code)] // used by the `cuda` build only
    pub fn flag(args: &[String], name: &str) -> bool {
        args.iter().any(|a| a == name)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn cpu_gemm(args: &[String]) {
    let n: usize = arg(args, "--n", 2048);
    let reps: usize = arg(args, "--reps", 5);
    let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
    let mut a = vec![0f32; n * n];
    let mut b = vec![0f32; n * n];
    fill_matrix([1, 2], 0, &mut a);
    fill_matrix([1, 2], 1, &mut b);
    let mut c = vec![0f32; n * n];
    sgemm(MatRef::new(&a, n, n), MatRef::new(&b, n, n), &mut c, threads);
    let times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            sgemm(MatRef::new(&a, n, n), MatRef::new(&b, n, n), &mut c, threads);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let gflops = 2.0 * (n as f64).powi(3) / median(times) / 1e9;
    println!("RESULT cpu_sgemm n={n} threads={threads} gflops={gflops:.1}");
}

fn cpu_proof(args: &[String]) {
    let n: usize = arg(args, "--n", 512);
    let mib: u64 = arg(args, "--mib", 256);
    let iterations: u64 = arg(args, "--iterations", 1);
    let mut engine = CpuEngine::host(mib << 20);
    let t = Instant::now();
    match prove(&mut engine, 42, iterations, &ProofParams::with_matrix_size(n)) {
        Ok(run) => {
            let wall = t.elapsed().as_secs_f64();
            println!(
                "RESULT cpu_proof n={n} matrices={} iterations={iterations} wall_s={wall:.2} chain_gflops={:.1} filled={:.3}",
                run.work_product.num_matrices,
                run.chain_flops() / run.chain_seconds / 1e9,
                run.filled_bytes as f64 / run.free_bytes as f64
            );
        }
        Err(e) => {
            eprintln!("cpu proof failed: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(feature = "cuda")]
fn gpu(args: &[String]) {
    use graval::cuda::CudaEngine;
    use graval::{Engine, SpotCheck, Verifier};

    let sizes: String = arg(args, "--sizes", "8192".to_string());
    let mut engine = match CudaEngine::new(0) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("no usable CUDA device: {e}");
            std::process::exit(2);
        }
    };
    let info = engine.device_info().clone();
    println!("RESULT gpu_device {}", serde_json::to_string(&info).unwrap_or_default());
    let model = graval::models::identify(&info.name);
    for n in sizes.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
        let peak = match engine.sgemm_tflops(n, if n >= 16384 { 5 } else { 20 }) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("cuBLAS SGEMM n={n} failed: {e}");
                std::process::exit(1);
            }
        };
        println!("RESULT gpu_cublas_sgemm n={n} tflops={peak:.2}");
        let mut runs = vec![1u64];
        if let Some(m) = model.filter(|m| {
            flag(args, "--model") && n == graval::schedule::DEFAULT_MATRIX_SIZE && m.iterations > 1
        }) {
            runs.push(m.iterations);
        }
        for iterations in runs {
            let params = ProofParams::with_matrix_size(n);
            let t = Instant::now();
            let run = match prove(&mut engine, 7, iterations, &params) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("proof n={n} failed: {e}");
                    std::process::exit(1);
                }
            };
            let wall = t.elapsed().as_secs_f64();
            let tflops = run.chain_flops() / run.chain_seconds / 1e12;
            println!(
                "RESULT gpu_proof n={n} iterations={iterations} matrices={} wall_s={wall:.2} fill_s={:.2} chain_s={:.2} \
                 chain_tflops={tflops:.2} vs_cublas={:.3} vram_free_filled={:.4} vram_total_filled={:.4}",
                run.work_product.num_matrices,
                run.fill_seconds,
                run.chain_seconds,
                tflops / peak,
                run.filled_bytes as f64 / run.free_bytes as f64,
                run.filled_bytes as f64 / info.memory as f64,
            );
            if let Some(m) = model {
                println!(
                    "RESULT gpu_model key={} table_iterations={} original_estimate_s={} this_run_iterations={iterations} wall_s={wall:.2}",
                    m.key, m.iterations, m.estimate_s
                );
            }
            if iterations == 1 {
                let mut v = Verifier::new(params);
                // Positions of iteration 0 only (one full n^3 product each on the CPU:
                // about a second at 8192, ten at 16384 on 16 cores).
                v.max_full_products = 1;
                let spots = SpotCheck::Random(if n <= 8192 { 2 } else { 1 });
                let t = Instant::now();
                match v.check_proof(&info, 7, 1, &run.work_product, &spots) {
                    Ok(rep) => println!(
                        "RESULT gpu_proof_cpu_verify n={n} checked={:?} full_products={} verify_s={:.2}",
                        rep.checked,
                        rep.full_products,
                        t.elapsed().as_secs_f64()
                    ),
                    Err(e) => {
                        println!("RESULT gpu_proof_cpu_verify n={n} FAILED {e}");
                        std::process::exit(1);
                    }
                }
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn gpu(_args: &[String]) {
    eprintln!("graval-bench was built without the `cuda` feature");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("cpu") => cpu_gemm(&args),
        Some("cpu-proof") => cpu_proof(&args),
        Some("gpu") => gpu(&args),
        _ => {
            eprintln!("usage: graval-bench cpu|cpu-proof|gpu [options] (see the source header)");
            std::process::exit(2);
        }
    }
}
