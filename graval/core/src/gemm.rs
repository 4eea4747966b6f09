//! CPU integer GEMM: `C = A . B` for row-major `i8` matrices with exact `i32` sums,
//! BLIS-style (the arithmetic of GraVal v2's chain, the same as cuBLAS
//! `cublasGemmEx(CUDA_R_8I, CUDA_R_32I, CUBLAS_COMPUTE_32I)`).
//!
//! Loops: NC-wide column panels of B, KC-deep slices packed once and shared by all
//! threads; each thread packs its own MC x KC block of A and runs a 6 x 16 register
//! microkernel. Operands are widened to i16 at packing, two k values per 32-bit lane:
//! B as `(b[k][j], b[k+1][j])` pairs, A as one `(a[i][k], a[i][k+1])` pair broadcast to
//! all lanes, so `vpmaddwd` yields `a[i][k] b[k][j] + a[i][k+1] b[k+1][j]` per lane and
//! `vpaddd` accumulates (12 accumulators + 2 B vectors + 1 broadcast = 15 of 16 ymm).
//! `vpmaddubsw` is never used: it saturates its i16 pair sums. Every partial sum is an
//! exact integer (|sum| <= k * 2^14 < 2^31 for k <= 65536), so any blocking, thread
//! count or kernel gives the same bits; the portable kernel is the fallback where AVX2
//! is missing (run-time detection) and the reference the tests compare with.

const MR: usize = 6;
const NR: usize = 16;
/// Even, so k-pairs never straddle a slice.
const KC: usize = 512;
const MC: usize = 96;
const NC: usize = 2048;

/// Largest inner dimension whose sums cannot overflow i32 (|a|, |b| <= 128).
pub const MAX_K: usize = 65536;

/// A row-major i8 matrix view: `rows x cols`, element (r, c) at `r * ld + c`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [i8],
    pub rows: usize,
    pub cols: usize,
    pub ld: usize,
}

impl<'a> MatRef<'a> {
    pub fn new(data: &'a [i8], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols, "matrix data shorter than rows*cols");
        Self { data, rows, cols, ld: cols }
    }
}

/// Which microkernel runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust (what LLVM makes of it); every target.
    Portable,
    /// AVX2 `vpmaddwd` (x86-64, detected at run time).
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Kernel::Avx2;
        }
        Kernel::Portable
    }

    /// Every kernel this CPU can run (benchmarks and the bit-identity test).
    pub fn available() -> Vec<Self> {
        let mut v = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            v.push(Kernel::Avx2);
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
        }
    }

    /// `kc2` k-pairs of packed A (`kc2 * MR` pair words) times packed B
    /// (`kc2 * 2 * NR` i16) into `tile`.
    #[inline]
    fn run(self, kc2: usize, a: &[i32], b: &[i16], tile: &mut [[i32; NR]; MR]) {
        assert!(a.len() >= kc2 * MR && b.len() >= kc2 * 2 * NR);
        match self {
            Kernel::Portable => kernel_portable(kc2, a, b, tile),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only after run-time detection of AVX2; the slice
            // lengths were asserted above and the kernel reads exactly that much.
            Kernel::Avx2 => unsafe { kernel_avx2(kc2, a.as_ptr(), b.as_ptr(), tile) },
        }
    }
}

/// How B is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BLayout {
    /// `b` is `k x n` row-major: `c = a . b`.
    Normal,
    /// `b` is `n x k` row-major: `c = a . b^T` (every element a dot product of two
    /// rows; cuBLAS's "TN" INT8 layout, the chain's).
    Transposed,
}

/// `c = a . b` (`c` row-major `a.rows x b.cols`, leading dimension `b.cols`) on
/// `threads` threads with the fastest kernel this CPU has.
pub fn igemm(a: MatRef<'_>, b: MatRef<'_>, c: &mut [i32], threads: usize) {
    igemm_with(Kernel::detect(), a, b, BLayout::Normal, c, threads);
}

/// `c = a . bt^T` (`bt` is `n x k`; `c` row-major `a.rows x bt.rows`).
pub fn igemm_nt(a: MatRef<'_>, bt: MatRef<'_>, c: &mut [i32], threads: usize) {
    igemm_with(Kernel::detect(), a, bt, BLayout::Transposed, c, threads);
}

/// [`igemm`] / [`igemm_nt`] with a chosen kernel (same bits whichever).
pub fn igemm_with(
    kernel: Kernel,
    a: MatRef<'_>,
    b: MatRef<'_>,
    layout: BLayout,
    c: &mut [i32],
    threads: usize,
) {
    let (bk, n) = match layout {
        BLayout::Normal => (b.rows, b.cols),
        BLayout::Transposed => (b.cols, b.rows),
    };
    assert_eq!(a.cols, bk, "inner dimensions differ");
    let (m, k) = (a.rows, a.cols);
    assert!(k <= MAX_K, "inner dimension {k} could overflow i32 sums");
    assert!(c.len() >= m * n, "output shorter than rows*cols");
    let c = &mut c[..m * n];
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0);
        return;
    }
    let mut bpack = vec![0i16; KC * NC.min(n.div_ceil(NR) * NR)];
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let kc2 = kc.div_ceil(2);
            pack_b(b, layout, pc, kc, jc, nc, &mut bpack);
            let first = pc == 0;
            // Row blocks are handed out one at a time, so a thread that the OS
            // preempts (this runs on shared machines) does not hold up a fixed share.
            let blocks = c.chunks_mut(MC * n).enumerate().map(|(i, ch)| (i * MC, ch));
            let count = m.div_ceil(MC);
            let queue = std::sync::Mutex::new(blocks);
            let bpack = &bpack[..];
            let run = || {
                let mut apack = vec![0i32; MC.div_ceil(MR) * MR * (KC / 2)];
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((ic, cblock)) = next else { break };
                    let mc = MC.min(m - ic);
                    pack_a(a, ic, mc, pc, kc, &mut apack);
                    let blk = Block { kernel, mc, nc, kc2, ldc: n, jc, first };
                    macro_kernel(&blk, &apack, bpack, cblock);
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

/// Packs B[pc..pc+kc, jc..jc+nc] into NR-wide panels of `kc2` k-pairs, each pair
/// `2 * NR` i16 as `(b[k][j], b[k+1][j])` for j in the panel; zero-padded.
fn pack_b(b: MatRef<'_>, layout: BLayout, pc: usize, kc: usize, jc: usize, nc: usize, out: &mut [i16]) {
    let kc2 = kc.div_ceil(2);
    for (panel, j0) in (0..nc).step_by(NR).enumerate() {
        let w = NR.min(nc - j0);
        let dst = &mut out[panel * kc2 * 2 * NR..(panel + 1) * kc2 * 2 * NR];
        if layout == BLayout::Transposed {
            // Row j of `b` holds column j of B: its k-pairs are adjacent bytes.
            dst.fill(0);
            for j in 0..w {
                let row = &b.data[(jc + j0 + j) * b.ld + pc..][..kc];
                for (p2, pr) in row.chunks(2).enumerate() {
                    dst[p2 * 2 * NR + 2 * j] = i16::from(pr[0]);
                    dst[p2 * 2 * NR + 2 * j + 1] = pr.get(1).map_or(0, |v| i16::from(*v));
                }
            }
            continue;
        }
        for p2 in 0..kc2 {
            let d = &mut dst[p2 * 2 * NR..(p2 + 1) * 2 * NR];
            d.fill(0);
            let r0 = &b.data[(pc + 2 * p2) * b.ld + jc + j0..][..w];
            for (j, v) in r0.iter().enumerate() {
                d[2 * j] = i16::from(*v);
            }
            if 2 * p2 + 1 < kc {
                let r1 = &b.data[(pc + 2 * p2 + 1) * b.ld + jc + j0..][..w];
                for (j, v) in r1.iter().enumerate() {
                    d[2 * j + 1] = i16::from(*v);
                }
            }
        }
    }
}

/// Two i8 widened to i16 in one 32-bit word: `lo` in the low half (little-endian, as
/// `vpmaddwd` pairs lanes).
#[inline(always)]
fn pair(lo: i8, hi: i8) -> i32 {
    (i32::from(lo) & 0xFFFF) | (i32::from(hi) << 16)
}

/// Packs A[ic..ic+mc, pc..pc+kc] into MR-tall panels of `kc2` k-pairs, each
/// `MR` pair words (k-major); zero-padded.
fn pack_a(a: MatRef<'_>, ic: usize, mc: usize, pc: usize, kc: usize, out: &mut [i32]) {
    let kc2 = kc.div_ceil(2);
    for (panel, i0) in (0..mc).step_by(MR).enumerate() {
        let h = MR.min(mc - i0);
        let dst = &mut out[panel * kc2 * MR..(panel + 1) * kc2 * MR];
        for i in 0..MR {
            if i < h {
                let row = &a.data[(ic + i0 + i) * a.ld + pc..][..kc];
                for p2 in 0..kc2 {
                    let hi = row.get(2 * p2 + 1).copied().unwrap_or(0);
                    dst[p2 * MR + i] = pair(row[2 * p2], hi);
                }
            } else {
                for p2 in 0..kc2 {
                    dst[p2 * MR + i] = 0;
                }
            }
        }
    }
}

/// One thread's block: `mc x nc` of C at column `jc`, `kc2` k-pairs deep.
struct Block {
    kernel: Kernel,
    mc: usize,
    nc: usize,
    kc2: usize,
    ldc: usize,
    jc: usize,
    /// First k-slice: store instead of add.
    first: bool,
}

fn macro_kernel(blk: &Block, apack: &[i32], bpack: &[i16], cblock: &mut [i32]) {
    let kc2 = blk.kc2;
    let mut tile = [[0i32; NR]; MR];
    for (jp, j0) in (0..blk.nc).step_by(NR).enumerate() {
        let w = NR.min(blk.nc - j0);
        let bp = &bpack[jp * kc2 * 2 * NR..(jp + 1) * kc2 * 2 * NR];
        for (ip, i0) in (0..blk.mc).step_by(MR).enumerate() {
            let h = MR.min(blk.mc - i0);
            let ap = &apack[ip * kc2 * MR..(ip + 1) * kc2 * MR];
            blk.kernel.run(kc2, ap, bp, &mut tile);
            for (i, trow) in tile.iter().enumerate().take(h) {
                let crow = &mut cblock[(i0 + i) * blk.ldc + blk.jc + j0..][..w];
                if blk.first {
                    crow.copy_from_slice(&trow[..w]);
                } else {
                    for (c, t) in crow.iter_mut().zip(trow) {
                        *c = c.wrapping_add(*t);
                    }
                }
            }
        }
    }
}

fn kernel_portable(kc2: usize, a: &[i32], b: &[i16], tile: &mut [[i32; NR]; MR]) {
    let mut acc = [[0i32; NR]; MR];
    for p2 in 0..kc2 {
        let bv = &b[p2 * 2 * NR..(p2 + 1) * 2 * NR];
        for (i, row) in acc.iter_mut().enumerate() {
            let w = a[p2 * MR + i];
            let (a0, a1) = (i32::from(w as i16), w >> 16);
            for (j, c) in row.iter_mut().enumerate() {
                *c = c.wrapping_add(a0 * i32::from(bv[2 * j]) + a1 * i32::from(bv[2 * j + 1]));
            }
        }
    }
    *tile = acc;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_avx2(kc2: usize, a: *const i32, b: *const i16, tile: &mut [[i32; NR]; MR]) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees `a` holds kc2*MR words and `b`
    // kc2*2*NR i16; unaligned loads and stores only.
    unsafe {
        let mut c = [_mm256_setzero_si256(); 2 * MR];
        let (mut ap, mut bp) = (a, b);
        for _ in 0..kc2 {
            let b0 = _mm256_loadu_si256(bp.cast());
            let b1 = _mm256_loadu_si256(bp.add(NR).cast());
            macro_rules! row {
                ($i:expr) => {{
                    let av = _mm256_set1_epi32(*ap.add($i));
                    c[2 * $i] = _mm256_add_epi32(c[2 * $i], _mm256_madd_epi16(av, b0));
                    c[2 * $i + 1] = _mm256_add_epi32(c[2 * $i + 1], _mm256_madd_epi16(av, b1));
                }};
            }
            row!(0);
            row!(1);
            row!(2);
            row!(3);
            row!(4);
            row!(5);
            ap = ap.add(MR);
            bp = bp.add(2 * NR);
        }
        for (i, trow) in tile.iter_mut().enumerate() {
            _mm256_storeu_si256(trow.as_mut_ptr().cast(), c[2 * i]);
            _mm256_storeu_si256(trow.as_mut_ptr().add(8).cast(), c[2 * i + 1]);
        }
    }
}

/// Triple loop in i64, the reference the kernels are compared with.
pub fn naive(a: &[i8], b: &[i8], m: usize, k: usize, n: usize) -> Vec<i32> {
    let mut c = vec![0i64; m * n];
    for i in 0..m {
        for p in 0..k {
            let av = i64::from(a[i * k + p]);
            for j in 0..n {
                c[i * n + j] += av * i64::from(b[p * n + j]);
            }
        }
    }
    c.into_iter().map(|v| v as i32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prng::fill_matrix;

    fn operands(m: usize, k: usize, n: usize) -> (Vec<i8>, Vec<i8>) {
        let mut a = vec![0i8; (m * k).div_ceil(16) * 16];
        let mut b = vec![0i8; (k * n).div_ceil(16) * 16];
        fill_matrix([1, 2], 0, &mut a, 1);
        fill_matrix([1, 2], 1, &mut b, 1);
        (a, b)
    }

    fn transpose(b: &[i8], k: usize, n: usize) -> Vec<i8> {
        let mut t = vec![0i8; k * n];
        for p in 0..k {
            for j in 0..n {
                t[j * k + p] = b[p * n + j];
            }
        }
        t
    }

    fn check(m: usize, k: usize, n: usize, threads: usize) {
        let (a, b) = operands(m, k, n);
        let bt = transpose(&b, k, n);
        let want = naive(&a, &b, m, k, n);
        for kernel in Kernel::available() {
            let mut got = vec![i32::MIN; m * n];
            igemm_with(
                kernel,
                MatRef::new(&a, m, k),
                MatRef::new(&b, k, n),
                BLayout::Normal,
                &mut got,
                threads,
            );
            assert_eq!(got, want, "{kernel:?} m={m} k={k} n={n} threads={threads}");
            let mut got = vec![i32::MIN; m * n];
            let bt = MatRef::new(&bt, n, k);
            igemm_with(kernel, MatRef::new(&a, m, k), bt, BLayout::Transposed, &mut got, threads);
            assert_eq!(got, want, "{kernel:?} transposed m={m} k={k} n={n} threads={threads}");
        }
    }

    #[test]
    fn every_kernel_matches_the_triple_loop_on_ragged_shapes() {
        check(1, 1, 1, 1);
        check(7, 301, 17, 2);
        check(97, 1025, 33, 2);
        check(8, 64, 64, 1);
        check(13, 300, 2100, 2);
    }

    /// The extreme operands: every product is (-128)(-128) = 2^14 and the sums reach
    /// k * 2^14, where a saturating 16-bit path (`vpmaddubsw`) would go wrong.
    #[test]
    fn extreme_values_sum_exactly() {
        let (m, k, n) = (6, 4096, 16);
        let a = vec![-128i8; m * k];
        let b = vec![-128i8; k * n];
        for kernel in Kernel::available() {
            let mut c = vec![0i32; m * n];
            igemm_with(kernel, MatRef::new(&a, m, k), MatRef::new(&b, k, n), BLayout::Normal, &mut c, 1);
            assert!(c.iter().all(|&v| v == 4096 << 14), "{kernel:?}");
        }
        let mut mixed = b.clone();
        for (i, v) in mixed.iter_mut().enumerate() {
            *v = if i % 3 == 0 { 127 } else { -128 };
        }
        let want = naive(&a, &mixed, m, k, n);
        for kernel in Kernel::available() {
            let mut c = vec![0i32; m * n];
            igemm_with(kernel, MatRef::new(&a, m, k), MatRef::new(&mixed, k, n), BLayout::Normal, &mut c, 2);
            assert_eq!(c, want, "{kernel:?}");
        }
    }
}
