"""INT8 GEMM references beside graval-bench cpu: onnxruntime's MatMulInteger (MLAS,
hand-written AVX2/AVX-VNNI/AVX-512 int8 kernels: the best CPU int8 GEMM installable here
from PyPI), as s8 x s8 and as its fast u8 x s8 path with the bias correction, numpy's
OpenBLAS SGEMM on the same values as f32, and numpy's integer matmul (no BLAS). Same
shape, full-range int8 operands, results checked against the exact product, median of
`reps` runs.
Usage: ort_int8.py N REPS"""
import os
import sys
import time

import numpy as np

n = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
rng = np.random.default_rng(1)
a = rng.integers(-128, 128, (n, n), dtype=np.int8)
b = rng.integers(-128, 128, (n, n), dtype=np.int8)
ops = 2 * n**3


def median_s(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


try:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def session(a_type):
        node = helper.make_node("MatMulInteger", ["A", "B"], ["C"])
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("A", a_type, [n, n]),
             helper.make_tensor_value_info("B", TensorProto.INT8, [n, n])],
            [helper.make_tensor_value_info("C", TensorProto.INT32, [n, n])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = os.cpu_count()
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])

    exact = (a[:64].astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    # s8 x s8 directly.
    s8 = session(TensorProto.INT8)
    assert (s8.run(None, {"A": a, "B": b})[0][:64] == exact).all(), "onnxruntime s8s8 differs from the exact product"
    t = median_s(lambda: s8.run(None, {"A": a, "B": b}), reps)
    print(f"RESULT ort_s8s8 n={n} version={ort.__version__} threads={os.cpu_count()} gops={ops / t / 1e9:.1f}")
    # MLAS's fast path is u8 x s8 (vpdpbusd): A + 128 as u8, then subtract 128 * column sums of B.
    u8 = session(TensorProto.UINT8)
    au = (a.astype(np.int16) + 128).astype(np.uint8)
    colsum = b.astype(np.int32).sum(axis=0)
    got = u8.run(None, {"A": au, "B": b})[0][:64] - 128 * colsum
    assert (got == exact).all(), "onnxruntime u8s8 with bias correction differs from the exact product"
    t = median_s(lambda: u8.run(None, {"A": au, "B": b}), reps)
    print(f"RESULT ort_u8s8 n={n} version={ort.__version__} threads={os.cpu_count()} gops={ops / t / 1e9:.1f}")
except ImportError as e:
    print(f"RESULT ort unavailable ({e}): pip install onnxruntime onnx")

af, bf = a.astype(np.float32), b.astype(np.float32)
c = np.empty((n, n), dtype=np.float32)
s = median_s(lambda: np.matmul(af, bf, out=c), reps)
cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
print(f"RESULT numpy_sgemm n={n} blas={cfg.get('name')}-{cfg.get('version')} gflops={ops / s / 1e9:.1f}")
if n <= 1024:
    ai, bi = a.astype(np.int32), b.astype(np.int32)
    s = median_s(lambda: ai @ bi, 1)
    print(f"RESULT numpy_int32_matmul n={n} gops={ops / s / 1e9:.2f}")
