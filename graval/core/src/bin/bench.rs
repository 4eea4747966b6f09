//! graval-bench: throughput figures for the proof's INT8 GEMM, whole proofs and the
//! verifier's replay.
//!
//!   graval-bench cpu [--n 2048] [--reps 5]            CPU INT8 GEMM per kernel, GOPS
//!   graval-bench cpu-proof [--n 256] [--mib 64] [--iterations 4]
//!   graval-bench verify-cost [--sizes 512,1024,2048] [--model "NVIDIA H100 80GB HBM3"]
//!   graval-bench gpu [--sizes 8192] [--model]          (built with --features cuda)
//!
//! Every line of results starts with "RESULT " so scripts can grep them.

use std::time::Instant;

use args::*;
use graval::gemm::{BLayout, Kernel, MatRef, igemm_with};
use graval::prng::fill_matrix_vec;
use graval::{CpuEngine, Engine, Nonce, ProofParams, prove};

/// Tiny argument helpers (the library crate keeps no CLI dependency).
mod args {
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

fn threads() -> usize {
    std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1)
}

/// The chain's product `s . r^T` at size n with each kernel; median GOPS.
fn cpu_gemm(args: &[String]) {
    let n: usize = arg(args, "--n", 2048);
    let reps: usize = arg(args, "--reps", 5);
    let threads = threads();
    let s = fill_matrix_vec([1, 2], 0, n, threads);
    let r = fill_matrix_vec([1, 2], 1, n, threads);
    let mut c = vec![0i32; n * n];
    for kernel in Kernel::available() {
        let mut once = || {
            let t = Instant::now();
            igemm_with(
                kernel,
                MatRef::new(&s, n, n),
                MatRef::new(&r, n, n),
                BLayout::Transposed,
                &mut c,
                threads,
            );
            t.elapsed().as_secs_f64()
        };
        once();
        let times: Vec<f64> = (0..reps).map(|_| once()).collect();
        let gops = 2.0 * (n as f64).powi(3) / median(times) / 1e9;
        println!("RESULT cpu_igemm kernel={} n={n} threads={threads} gops={gops:.1}", kernel.name());
    }
}

fn cpu_proof(args: &[String]) {
    let n: usize = arg(args, "--n", 256);
    let mib: u64 = arg(args, "--mib", 64);
    let iterations: u64 = arg(args, "--iterations", 4);
    let mut engine = CpuEngine::host(mib << 20);
    let t = Instant::now();
    match prove(&mut engine, 42, &Nonce::random(), iterations, &ProofParams::with_matrix_size(n)) {
        Ok(run) => {
            let wall = t.elapsed().as_secs_f64();
            println!(
                "RESULT cpu_proof n={n} slots={} iterations={iterations} wall_s={wall:.2} chain_gops={:.1} filled={:.3}",
                run.work_product.num_matrices,
                run.chain_ops() / run.chain_seconds / 1e9,
                run.filled_bytes as f64 / run.free_bytes as f64
            );
        }
        Err(e) => {
            eprintln!("cpu proof failed: {e}");
            std::process::exit(1);
        }
    }
}

/// Median seconds of one replay step (fill of the fresh operand, product, mix, rows)
/// on `engine`, which holds one slot of size n.
fn step_seconds(engine: &mut dyn Engine, n: usize, reps: usize) -> Result<f64, graval::BackendError> {
    engine.allocate(n, 1)?;
    engine.fill(0, [1, 2], 0)?;
    let mut out = vec![0i8; 8 * n];
    let rows: Vec<u32> = (0..8).collect();
    engine.step(0, [3, 4], 5, &rows, &mut out)?;
    let mut times = Vec::new();
    for rep in 0..reps {
        let t = Instant::now();
        engine.step(0, [3, rep as u32], 5, &rows, &mut out)?;
        times.push(t.elapsed().as_secs_f64());
    }
    engine.release();
    Ok(median(times))
}

/// Verifier cost of a full-size proof for `--model` on this CPU, extrapolated from
/// replay steps measured at smaller sizes (time per step scales with n^3).
fn verify_cost(args: &[String]) {
    let sizes: String = arg(args, "--sizes", "512,1024,2048".to_string());
    let name: String = arg(args, "--model", "NVIDIA H100 80GB HBM3".to_string());
    let checks: usize = arg(args, "--checks", graval::verify::DEFAULT_SPOT_CHECKS);
    let mut engine = CpuEngine::host(1 << 30);
    let mut per_op = 0.0;
    for n in sizes.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
        match step_seconds(&mut engine, n, if n >= 2048 { 3 } else { 5 }) {
            Ok(t) => {
                per_op = t / (2.0 * (n as f64).powi(3));
                println!(
                    "RESULT cpu_replay_step n={n} threads={} step_s={t:.4} gops={:.1}",
                    threads(),
                    1e-9 / per_op
                );
            }
            Err(e) => {
                eprintln!("replay step n={n} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    let Some(plan) = graval::models::V2Plan::for_device_name(&name) else {
        eprintln!("no GraVal v2 plan for {name:?}");
        std::process::exit(2);
    };
    let n = plan.matrix_size as f64;
    let step = per_op * 2.0 * n * n * n;
    // k uniform positions of an I-iteration proof replay (I + 1) / 2 products each.
    let products = checks as f64 * (plan.iterations as f64 + 1.0) / 2.0;
    println!(
        "RESULT cpu_verify_cost model={name:?} n={} slots={} iterations={} checks={checks} products={products:.0} \
         step_s={step:.1} total_s={:.0} total_h={:.1} (extrapolated from the largest measured size by n^3)",
        plan.matrix_size,
        plan.slots,
        plan.iterations,
        step * products,
        step * products / 3600.0
    );
}

#[cfg(feature = "cuda")]
fn gpu(args: &[String]) {
    use graval::cuda::CudaEngine;
    use graval::{SpotCheck, Verifier};

    let sizes: String = arg(args, "--sizes", "8192".to_string());
    let checks: usize = arg(args, "--checks", graval::verify::DEFAULT_SPOT_CHECKS);
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        println!("RESULT FAILED {what}: {e}");
        std::process::exit(1);
    };
    let mut engine = CudaEngine::new(0).unwrap_or_else(|e| {
        eprintln!("no usable CUDA device: {e}");
        std::process::exit(2);
    });
    let info = engine.device_info().clone();
    println!("RESULT gpu_device {}", serde_json::to_string(&info).unwrap_or_default());
    let plan = graval::models::V2Plan::for_device_name(&info.name);
    if let Some(p) = plan {
        println!("RESULT gpu_plan {p:?}");
    }
    for n in sizes.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
        let peak = engine
            .int8_gemm_tops(n, if n >= 8192 { 50 } else { 200 })
            .unwrap_or_else(|e| fail("cuBLAS INT8", &e));
        println!("RESULT gpu_cublas_int8 n={n} tops={peak:.1}");
        let mut runs = vec![4u64];
        if let Some(p) = plan.filter(|p| flag(args, "--model") && p.matrix_size == n) {
            runs.push(p.iterations);
        }
        for iterations in runs {
            let params = ProofParams::with_matrix_size(n);
            let run_nonce = Nonce::random();
            let t = Instant::now();
            let run =
                prove(&mut engine, 7, &run_nonce, iterations, &params).unwrap_or_else(|e| fail("proof", &e));
            let wall = t.elapsed().as_secs_f64();
            let tops = run.chain_ops() / run.chain_seconds / 1e12;
            println!(
                "RESULT gpu_proof n={n} iterations={iterations} slots={} wall_s={wall:.2} fill_s={:.2} chain_s={:.2} \
                 step_ms={:.3} chain_tops={tops:.1} vs_cublas={:.3} vram_free_filled={:.4} vram_total_filled={:.4}",
                run.work_product.num_matrices,
                run.fill_seconds,
                run.chain_seconds,
                run.chain_seconds * 1e3 / (run.work_product.num_matrices * iterations) as f64,
                tops / peak,
                run.filled_bytes as f64 / run.free_bytes as f64,
                run.filled_bytes as f64 / info.memory as f64,
            );
            if let Some(p) = plan {
                println!(
                    "RESULT gpu_window plan_iterations={} plan_estimate_s={:.1} this_iterations={iterations} wall_s={wall:.2} \
                     scaled_to_plan_s={:.1}",
                    p.iterations,
                    p.estimate_s,
                    wall * p.iterations as f64 / iterations as f64
                );
            }
            let v = Verifier::new(params);
            let t = Instant::now();
            match v.check_proof_on(
                &mut engine,
                &info,
                7,
                &run_nonce,
                iterations,
                &run.work_product,
                &SpotCheck::Random(checks),
            ) {
                Ok(rep) => println!(
                    "RESULT gpu_verify_cuda n={n} iterations={iterations} checks={checks} full_products={} verify_s={:.2}",
                    rep.full_products,
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => fail("CUDA verifier", &e),
            }
            // The CPU verifier on gpu-check's budget: 2 x iterations full products,
            // positions drawn over every iteration.
            let mut v = Verifier::new(params);
            v.max_full_products = 2 * iterations as usize;
            let t = Instant::now();
            match v.check_proof(&info, 7, &run_nonce, iterations, &run.work_product, &SpotCheck::default()) {
                Ok(rep) => println!(
                    "RESULT gpu_verify_cpu n={n} iterations={iterations} checked={:?} full_products={} verify_s={:.2}",
                    rep.checked,
                    rep.full_products,
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => fail("CPU verifier", &e),
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
        Some("verify-cost") => verify_cost(&args),
        Some("gpu") => gpu(&args),
        _ => {
            eprintln!("usage: graval-bench cpu|cpu-proof|verify-cost|gpu [options] (see the source header)");
            std::process::exit(2);
        }
    }
}
