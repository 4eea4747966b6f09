"""numpy (OpenBLAS) SGEMM on integer-valued f32 matrices, the same shape as graval-bench cpu."""
import sys
import time

import numpy as np

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
rng = np.random.default_rng(1)
a = rng.integers(-8, 9, (n, n)).astype(np.float32)
b = rng.integers(-8, 9, (n, n)).astype(np.float32)
c = a @ b
times = []
for _ in range(reps):
    t = time.perf_counter()
    np.matmul(a, b, out=c)
    times.append(time.perf_counter() - t)
times.sort()
gflops = 2 * n**3 / times[len(times) // 2] / 1e9
cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
print(f"RESULT numpy_sgemm n={n} blas={cfg.get('name')}-{cfg.get('version')} gflops={gflops:.1f}")
