#!/usr/bin/env bash
# CPU benchmark of the proof's INT8 GEMM (graval-bench cpu: the AVX2 and portable
# kernels) beside onnxruntime's MLAS int8 GEMM (s8s8, and its u8s8 fast path) and
# numpy/OpenBLAS SGEMM on the same shape, alternating in one run so all see the same
# machine load; then the replay cost of a full-size proof extrapolated from measured
# sizes. Needs python3 with numpy (and onnxruntime + onnx for the MLAS figures).
#   graval/bench-cpu.sh [n=2048] [rounds=3]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
n="${1:-2048}"
rounds="${2:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../target}"
(cd "$here/.." && cargo build --release -q -p graval --bin graval-bench)
bench="$CARGO_TARGET_DIR/release/graval-bench"
python3 -c 'import numpy' 2>/dev/null || { echo "numpy missing: pip install numpy onnxruntime onnx"; exit 1; }
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads, load $(cut -d' ' -f1-3 /proc/loadavg)"
log="$(mktemp)"
for _ in $(seq "$rounds"); do
    python3 "$here/bench/ort_int8.py" "$n" 5 | tee -a "$log"
    "$bench" cpu --n "$n" --reps 5 | tee -a "$log"
done
python3 - "$log" <<'PY'
import re, statistics, sys
vals = {}
for line in open(sys.argv[1]):
    m = re.match(r"RESULT (\w+) (?:kernel=(\w+) )?.*(?:gflops|gops)=([\d.]+)", line)
    if m:
        vals.setdefault(m.group(1) + (":" + m.group(2) if m.group(2) else ""), []).append(float(m.group(3)))
med = {k: statistics.median(v) for k, v in vals.items()}
# The kernel the proof and the verifier use: the fastest this CPU runs.
best = max((k for k in med if k.startswith("cpu_igemm:")), key=med.get)
g = med[best]
print(f"SUMMARY graval uses {best.split(':')[1]}")
for k, v in sorted(med.items()):
    print(f"SUMMARY {k:22} median {v:7.1f} G(FL)OP/s   graval/this = {g / v:5.2f}")
PY
"$bench" verify-cost --sizes 512,1024,2048
