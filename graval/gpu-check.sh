#!/usr/bin/env bash
# GPU check for the GraVal v2 CUDA backend:
# - CUDA hashes equal CPU hashes, bit for bit, at several sizes (tests/cuda.rs);
# - a full proof over >= 95% of free VRAM accepted by the CUDA verifier (90 checks)
#   and a CPU verifier on a budget of 2 x iterations full products (positions drawn
#   over every iteration), a tampered hash refused;
# - the bootstrap server on the GPU: signed /prove, v2 work product, CPU-verified;
# - the benchmark: cuBLAS's own INT8 GEMM (cublasGemmEx, COMPUTE_32I) beside the
#   proof chain's throughput (target >= 0.9 of it), VRAM filled, the model plan's
#   iterations against its projected estimate, and each verifier's time;
# - the CPU verifier's cost for the full-size proof of this GPU's model (the fallback
#   of a validator without a GPU): one replay step timed at the model's matrix size,
#   times the products 90 spot checks replay.
#
#   graval/gpu-check.sh                 build with --features cuda (needs cargo), then run
#   graval/gpu-check.sh --build-only    build here and copy the binaries to graval/.gpu-bin
#   graval/gpu-check.sh --prebuilt      run the binaries in graval/.gpu-bin (no cargo needed)
#   graval/gpu-check.sh --prebuilt-tests  the same without the benchmark (~1 minute)
#
# Exit codes: 0 all passed, 1 a check failed, 3 no CUDA GPU/driver (nothing was tested).
# Writes the full log to $OUT/gpu-check.log when OUT is set. Expected ~3-4 minutes on
# one H100 (projected: the v2 CUDA path has not run on a GPU yet).
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="$here/.gpu-bin"
mode="${1:-all}"
log="${OUT:-/tmp}/gpu-check.log"
exec > >(tee "$log") 2>&1

# Path of the test executable `$2` of package `$1`, built in release (extra flags after).
test_binary() {
    local pkg="$1" name="$2"
    shift 2
    (cd "$root" && cargo test --release -p "$pkg" "$@" --test "$name" --no-run --message-format=json 2>/dev/null) |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[1] and m.get("executable"):
        print(m["executable"])' "$name"
}

build() {
    command -v cargo >/dev/null || { echo "cargo not found: use --prebuilt with binaries from --build-only"; exit 1; }
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
    mkdir -p "$bin"
    (cd "$root" && cargo build --release -p graval --features cuda --bin graval-bench) || exit 1
    cp "$CARGO_TARGET_DIR/release/graval-bench" "$bin/graval-bench"
    (cd "$root" && cargo build --release -p graval-bootstrap --features cuda) || exit 1
    cp "$CARGO_TARGET_DIR/release/graval-bootstrap" "$bin/graval-bootstrap"
    local t
    t="$(test_binary graval cuda --features cuda)"
    [ -n "$t" ] || { echo "could not build the graval cuda test binary"; exit 1; }
    cp "$t" "$bin/cuda-tests"
    t="$(test_binary graval-bootstrap server)"
    [ -n "$t" ] || { echo "could not build the bootstrap server test binary"; exit 1; }
    cp "$t" "$bin/server-tests"
    echo "built: $(ls -la "$bin" | tail -n +2 | awk '{print $5, $9}' | tr '\n' ' ')"
}

# Directories holding libcuda, libcublas and libnvrtc, for cudarc's dynamic loading.
library_path() {
    local dirs=""
    for pat in 'libcuda.so*' 'libcublas.so*' 'libcublasLt.so*' 'libnvrtc.so*'; do
        while IFS= read -r f; do
            d="$(dirname "$f")"
            case ":$dirs:" in *":$d:"*) ;; *) dirs="$dirs:$d" ;; esac
        done < <(find /usr/local/nvidia /usr/local/cuda* /usr/lib/x86_64-linux-gnu /usr/lib64 /opt \
            -maxdepth 10 -name "$pat" 2>/dev/null | grep -v stubs | head -20)
    done
    echo "${dirs#:}"
}

run() {
    for b in cuda-tests graval-bench graval-bootstrap server-tests; do
        [ -x "$bin/$b" ] || { echo "no $b in $bin: run --build-only first"; exit 1; }
    done
    if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
        echo "NO CUDA GPU: nvidia-smi missing or sees no device. The CUDA path is untested."
        exit 3
    fi
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm --format=csv
    local lp
    lp="$(library_path)"
    export LD_LIBRARY_PATH="${lp}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    local status=0
    echo "=== CUDA tests (CUDA vs CPU hashes, full-VRAM proof and both verifiers, fail-fast allocation) ==="
    timeout 240 "$bin/cuda-tests" --ignored --test-threads=1 --nocapture || status=1
    echo "=== bootstrap server on the GPU: signed /prove, CPU-verified proof, /info ==="
    GRAVAL_BOOTSTRAP_BIN="$bin/graval-bootstrap" timeout 120 "$bin/server-tests" --ignored cuda_node_povw_flow \
        --nocapture || status=1
    if [ "${1:-}" != "tests-only" ]; then
        echo "=== GPU benchmark ==="
        timeout 300 "$bin/graval-bench" gpu --sizes 4096,8192 --model || status=1
        echo "=== CPU verifier cost for the full-size proof (this host's CPUs) ==="
        local model
        model="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
        timeout 240 "$bin/graval-bench" verify-cost --sizes 2048,8192 --model "$model" ||
            { echo "(no figure for $model: the H100 SXM plan's instead)";
              timeout 240 "$bin/graval-bench" verify-cost --sizes 2048,8192 || status=1; }
    fi
    echo "=== summary ==="
    grep -E '^RESULT|test result|FAILED|panicked' "$log" | grep -v '^grep'
    # The throughput target: the proof's chain against cuBLAS's own INT8 GEMM.
    grep -oE 'RESULT gpu_proof n=[0-9]+ iterations=[0-9]+ .*vs_cublas=[0-9.]+' "$log" |
        awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^vs_cublas=/) { split($i, r, "="); v = r[2] }
               print (v >= 0.9 ? "TARGET MET" : "BELOW TARGET") " (>= 0.9 of cuBLAS INT8): " $3 " " $4 " vs_cublas=" v }'
    # Each verifier's time for the model's full proof (90 checks).
    grep -E '^RESULT (gpu_verify_cuda|gpu_verify_cpu|cpu_verify_cost)' "$log" | sed 's/^RESULT /VERIFIER TIME: /'
    [ $status -eq 0 ] && echo "GPU CHECK PASSED" || echo "GPU CHECK FAILED"
    exit $status
}

case "$mode" in
    --build-only) build ;;
    --prebuilt) run ;;
    --prebuilt-tests) run tests-only ;;
    all) build && run ;;
    *) echo "usage: $0 [--build-only|--prebuilt|--prebuilt-tests]"; exit 2 ;;
esac
