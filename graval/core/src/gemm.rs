//! CPU SGEMM: `C = A . B` for row-major f32 matrices, BLIS-style.
//!
//! Loops: NC-wide column panels of B, KC-deep slices packed once and shared by all
//! threads; each thread packs its own MC x KC block of A and runs a 6 x 16 register
//! microkernel over the packed panels (12 accumulators of 8 lanes + 2 B vectors + one
//! broadcast = 15 of 16 ymm registers). On x86-64 with AVX2+FMA (detected at run
//! time) the microkernel uses intrinsics; elsewhere a fixed-size array kernel that
//! LLVM vectorizes. Inputs in this crate are small integers, so the result is exact
//! and identical to cuBLAS whatever the blocking.

const MR: usize = 6;
const NR: usize = 16;
const KC: usize = 256;
const MC: usize = 96;
const NC: usize = 4096;

/// A row-major matrix view: `rows x cols`, element (r, c) at `r * ld + c`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl<'a> MatRef<'a> {
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix data shorter than rows*cols");
        Self { data, rows, cols, ld: cols }
    }
}

/// `c = a . b` with `c` row-major `a.rows x b.cols` (leading dimension `b.cols`),
/// on `threads` threads (1 = the caller's thread only).
pub fn sgemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [f32], threads: usize) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert!(c.len() >= m * n, "output shorter than rows*cols");
    let c = &mut c[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let kernel = Kernel::detect();
    let mut bpack = vec![0f32; KC * NC.min(n.div_ceil(NR) * NR)];
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            pack_b(b, pc, kc, jc, nc, &mut bpack);
            let first = pc == 0;
            // Row blocks are handed out one at a time, so a thread that the OS
            // preempts (this runs on shared machines) does not hold up a fixed share.
            let blocks = c.chunks_mut(MC * n).enumerate().map(|(i, ch)| (i * MC, ch));
            let count = m.div_ceil(MC);
            let queue = std::sync::Mutex::new(blocks);
            let bpack = &bpack[..];
            let run = || {
                let mut apack = vec![0f32; MC * KC];
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((ic, cblock)) = next else { break };
                    let mc = MC.min(m - ic);
                    pack_a(a, ic, mc, pc, kc, &mut apack);
                    macro_kernel(kernel, mc, nc, kc, &apack, bpack, cblock, n, jc, first);
                }
            };
            let threads = threads.clamp(1, count);
            if threads == 1 {
                run();
            } else {
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(run);
                    }
                });
            }
        }
    }
}

/// Packs B[pc..pc+kc, jc..jc+nc] into NR-wide panels, each `kc x NR`, zero-padded.
fn pack_b(b: MatRef<'_>, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [f32]) {
    for (panel, j0) in (0..nc).step_by(NR).enumerate() {
        let w = NR.min(nc - j0);
        let dst = &mut out[panel * kc * NR..(panel + 1) * kc * NR];
        for p in 0..kc {
            let src = &b.data[(pc + p) * b.ld + jc + j0..][..w];
            let d = &mut dst[p * NR..(p + 1) * NR];
            d[..w].copy_from_slice(src);
            d[w..].fill(0.0);
        }
    }
}

/// Packs A[ic..ic+mc, pc..pc+kc] into MR-tall panels, each `kc x MR` (k-major).
fn pack_a(a: MatRef<'_>, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [f32]) {
    for (panel, i0) in (0..mc).step_by(MR).enumerate() {
        let h = MR.min(mc - i0);
        let dst = &mut out[panel * kc * MR..(panel + 1) * kc * MR];
        for i in 0..MR {
            if i < h {
                let row = &a.data[(ic + i0 + i) * a.ld + pc..][..kc];
                for (p, v) in row.iter().enumerate() {
                    dst[p * MR + i] = *v;
                }
            } else {
                for p in 0..kc {
                    dst[p * MR + i] = 0.0;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn macro_kernel(
    kernel: Kernel,
    mc: usize,
    nc: usize,
    kc: usize,
    apack: &[f32],
    bpack: &[f32],
    cblock: &mut [f32],
    ldc: usize,
    jc: usize,
    first: bool,
) {
    let mut tile = [[0f32; NR]; MR];
    for (jp, j0) in (0..nc).step_by(NR).enumerate() {
        let w = NR.min(nc - j0);
        let bp = &bpack[jp * kc * NR..(jp + 1) * kc * NR];
        for (ip, i0) in (0..mc).step_by(MR).enumerate() {
            let h = MR.min(mc - i0);
            let ap = &apack[ip * kc * MR..(ip + 1) * kc * MR];
            kernel.run(kc, ap, bp, &mut tile);
            for (i, trow) in tile.iter().enumerate().take(h) {
                let crow = &mut cblock[(i0 + i) * ldc + jc + j0..][..w];
                if first {
                    crow.copy_from_slice(&trow[..w]);
                } else {
                    for (c, t) in crow.iter_mut().zip(trow) {
                        *c += *t;
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Kernel::Avx2Fma;
        }
        Kernel::Portable
    }

    #[inline]
    fn run(self, kc: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]) {
        assert!(a.len() >= kc * MR && b.len() >= kc * NR);
        match self {
            Kernel::Portable => kernel_portable(kc, a, b, tile),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only after run-time detection of AVX2 and FMA; the
            // slice lengths were asserted above, the kernel reads kc*MR and kc*NR.
            Kernel::Avx2Fma => unsafe { kernel_avx2(kc, a.as_ptr(), b.as_ptr(), tile) },
        }
    }
}

fn kernel_portable(kc: usize, a: &[f32], b: &[f32], tile: &mut [[f32; NR]; MR]) {
    let mut acc = [[0f32; NR]; MR];
    for p in 0..kc {
        let bv: &[f32; NR] = b[p * NR..(p + 1) * NR].try_into().unwrap_or(&[0.0; NR]);
        for i in 0..MR {
            let av = a[p * MR + i];
            for j in 0..NR {
                acc[i][j] += av * bv[j];
            }
        }
    }
    *tile = acc;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, a: *const f32, b: *const f32, tile: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees a has kc*MR and b has kc*NR floats.
    unsafe {
        let mut c = [_mm256_setzero_ps(); 2 * MR];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(bp);
            let b1 = _mm256_loadu_ps(bp.add(8));
            macro_rules! row {
                ($i:expr) => {{
                    let av = _mm256_broadcast_ss(&*ap.add($i));
                    c[2 * $i] = _mm256_fmadd_ps(av, b0, c[2 * $i]);
                    c[2 * $i + 1] = _mm256_fmadd_ps(av, b1, c[2 * $i + 1]);
                }};
            }
            row!(0);
            row!(1);
            row!(2);
            row!(3);
            row!(4);
            row!(5);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for (i, trow) in tile.iter_mut().enumerate() {
            _mm256_storeu_ps(trow.as_mut_ptr(), c[2 * i]);
            _mm256_storeu_ps(trow.as_mut_ptr().add(8), c[2 * i + 1]);
        }
    }
}

/// Reference triple loop, for tests only.
#[cfg(test)]
pub(crate) fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = a[i * k + p];
            for j in 0..n {
                c[i * n + j] += av * b[p * n + j];
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::fill_matrix;

    fn check(m: usize, k: usize, n: usize, threads: usize) {
        let mut a = vec![0f32; (m * k).div_ceil(4) * 4];
        let mut b = vec![0f32; (k * n).div_ceil(4) * 4];
        fill_matrix([1, 2], 0, &mut a);
        fill_matrix([1, 2], 1, &mut b);
        let want = naive(&a, &b, m, k, n);
        let mut got = vec![f32::NAN; m * n];
        sgemm(MatRef::new(&a, m, k), MatRef::new(&b, k, n), &mut got, threads);
        assert_eq!(got, want, "m={m} k={k} n={n} threads={threads}");
    }

    #[test]
    fn matches_triple_loop_on_ragged_shapes() {
        check(1, 1, 1, 1);
        check(7, 300, 17, 2);
        check(97, 513, 33, 2);
        check(8, 64, 64, 1);
        check(13, 300, 4100, 2);
    }

    #[test]
    fn portable_kernel_matches_detected_kernel() {
        let kc = 37;
        let mut a = vec![0f32; kc * MR];
        let mut b = vec![0f32; kc * NR];
        fill_matrix([3, 4], 0, &mut a[..(kc * MR) / 4 * 4]);
        fill_matrix([3, 4], 1, &mut b);
        let mut t1 = [[0f32; NR]; MR];
        let mut t2 = [[0f32; NR]; MR];
        kernel_portable(kc, &a, &b, &mut t1);
        Kernel::detect().run(kc, &a, &b, &mut t2);
        assert_eq!(t1, t2);
    }
}
