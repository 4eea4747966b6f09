#!/usr/bin/env bash
# CPU benchmark: the proof's SGEMM (graval-bench cpu) beside numpy's OpenBLAS SGEMM
# of the same size and integer-valued inputs, alternating in one run so both see the
# same machine load, then a small whole CPU proof. Needs python3 with numpy.
#   graval/bench-cpu.sh [n=2048] [rounds=3]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
n="${1:-2048}"
rounds="${2:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../target}"
(cd "$here/.." && cargo build --release -q -p graval --bin graval-bench)
bench="$CARGO_TARGET_DIR/release/graval-bench"
python3 -c 'import numpy' 2>/dev/null || { echo "numpy missing: pip install numpy"; exit 1; }
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads, load $(cut -d' ' -f1-3 /proc/loadavg)"
log="$(mktemp)"
for _ in $(seq "$rounds"); do
    python3 "$here/bench/numpy_sgemm.py" "$n" 5 | tee -a "$log"
    "$bench" cpu --n "$n" --reps 5 | tee -a "$log"
done
python3 - "$log" <<'PY'
import re, statistics, sys
vals = {"numpy_sgemm": [], "cpu_sgemm": []}
for line in open(sys.argv[1]):
    m = re.match(r"RESULT (\w+) .*gflops=([\d.]+)", line)
    if m and m.group(1) in vals:
        vals[m.group(1)].append(float(m.group(2)))
g, o = statistics.median(vals["cpu_sgemm"]), statistics.median(vals["numpy_sgemm"])
print(f"SUMMARY graval sgemm {g:.1f} GFLOP/s, numpy/OpenBLAS {o:.1f} GFLOP/s, ratio {g / o:.2f} (target >= 0.50)")
PY
"$bench" cpu-proof --n 512 --mib 64 --iterations 1
