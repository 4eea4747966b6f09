//! CPU integer GEMM: `C = A . B` for row-major `i8` matrices with exact `i32` sums,
//! BLIS-style (the arithmetic of GraVal v2's chain, the same as cuBLAS
//! `cublasGemmEx(CUDA_R_8I, CUDA_R_32I, CUBLAS_COMPUTE_32I)`).
//!
//! Loops: NC-wide column panels of B, KC-deep slices packed once and shared by all
//! threads; each thread packs its own MC x KC block of A and runs a register
//! microkernel. Operands are packed as 32-bit words holding a group of k values:
//! - pairs (portable and AVX2, 6 x 16 tiles): two i8 widened to i16, so `vpmaddwd`
//!   gives `a[i][k] b[k][j] + a[i][k+1] b[k+1][j]` per lane and `vpaddd` accumulates
//!   (12 accumulators + 2 B vectors + 1 broadcast = 15 of 16 ymm). `vpmaddubsw` is
//!   never used: it saturates its i16 pair sums.
//! - quads (AVX-512 VNNI, 8 x 32 tiles): four bytes, A shifted to u8 (`a + 128`) for
//!   `vpdpbusd` (u8 x s8, four products summed into each i32 lane, no saturation);
//!   the shift is undone exactly by starting every accumulator at
//!   `-128 * sum_k b[k][j]` over the slice (16 accumulators + 2 B + 1 broadcast of 32 zmm).
//!
//! Every partial sum is an exact integer (|sum| <= k * 2^14 < 2^31 for k <= 65536), so
//! any blocking, thread count or kernel gives the same bits; the portable kernel is the
//! fallback where neither AVX2 nor AVX-512 VNNI is present (run-time detection) and the
//! reference the tests compare with.

const KC: usize = 512;
const MC: usize = 96;
const NC: usize = 2048;
/// Largest tile of any kernel (8 x 32).
const MAX_TILE: usize = 256;

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
    /// AVX-512 VNNI `vpdpbusd` (x86-64, detected at run time).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// A kernel's tile and packing: `mr x nr` tiles, k values grouped `kg` to a word, and
/// whether B panels carry the `-128 * column sum` start values (u8 x s8 kernels).
#[derive(Clone, Copy)]
struct Shape {
    mr: usize,
    nr: usize,
    kg: usize,
    bias: bool,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        Self::available().pop().unwrap_or(Kernel::Portable)
    }

    /// Every kernel this CPU can run, slowest first (benchmarks and the bit-identity test).
    pub fn available() -> Vec<Self> {
        #[allow(unused_mut)] // only x86-64 adds kernels
        let mut v = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                v.push(Kernel::Avx2);
            }
            if has_vnni() {
                v.push(Kernel::Avx512Vnni);
            }
        }
        v
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => "avx512vnni",
        }
    }

    fn shape(self) -> Shape {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => Shape { mr: 8, nr: 32, kg: 4, bias: true },
            _ => Shape { mr: 6, nr: 16, kg: 2, bias: false },
        }
    }

    /// `groups` k-groups of packed A (`groups * mr` words) times a packed B panel
    /// (`nr` start values, then `groups * nr` words) into `tile` (`mr x nr`, row-major).
    #[inline]
    fn run(self, groups: usize, a: &[i32], b: &[i32], tile: &mut [i32; MAX_TILE]) {
        let sh = self.shape();
        assert!(a.len() >= groups * sh.mr && b.len() >= (groups + 1) * sh.nr);
        match self {
            Kernel::Portable => kernel_portable(groups, a, b, tile),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only after run-time detection of AVX2; the slice
            // lengths were asserted above and the kernel reads exactly that much.
            Kernel::Avx2 => unsafe { kernel_avx2(groups, a.as_ptr(), b.as_ptr(), tile) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: selected only after run-time detection of AVX-512 F/BW/VNNI;
            // lengths asserted above.
            Kernel::Avx512Vnni => unsafe { kernel_vnni(groups, a.as_ptr(), b.as_ptr(), tile) },
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
    let sh = kernel.shape();
    let kgroups = KC / sh.kg;
    let panel_words = (kgroups + 1) * sh.nr;
    let mut bpack = vec![0i32; NC.min(n.div_ceil(sh.nr) * sh.nr) / sh.nr * panel_words];
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let groups = kc.div_ceil(sh.kg);
            pack_b(b, layout, sh, (pc, kc), (jc, nc), &mut bpack);
            let first = pc == 0;
            // Row blocks are handed out one at a time, so a thread that the OS
            // preempts (this runs on shared machines) does not hold up a fixed share.
            let blocks = c.chunks_mut(MC * n).enumerate().map(|(i, ch)| (i * MC, ch));
            let count = m.div_ceil(MC);
            let queue = std::sync::Mutex::new(blocks);
            let bpack = &bpack[..];
            let run = || {
                let mut apack = vec![0i32; MC.div_ceil(sh.mr) * sh.mr * kgroups];
                loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                    let Some((ic, cblock)) = next else { break };
                    let mc = MC.min(m - ic);
                    pack_a(a, sh, (ic, mc), (pc, kc), &mut apack);
                    let blk = Block { kernel, sh, mc, nc, groups, ldc: n, jc, first };
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

/// Packs up to `kg` consecutive k values into one word: i16 pairs, or bytes (A's
/// shifted to u8 when `shift`).
#[inline(always)]
fn word(vals: &[i8], kg: usize, shift: bool) -> i32 {
    if kg == 2 {
        let lo = vals.first().copied().unwrap_or(0);
        let hi = vals.get(1).copied().unwrap_or(0);
        (i32::from(lo) & 0xFFFF) | (i32::from(hi) << 16)
    } else {
        let mut w = [0u8; 4];
        for (d, v) in w.iter_mut().zip(vals) {
            *d = if shift { (i16::from(*v) + 128) as u8 } else { *v as u8 };
        }
        i32::from_le_bytes(w)
    }
}

/// Packs B[pc..pc+kc, jc..jc+nc] into `nr`-wide panels: `nr` start values (the
/// `-128 * column sum` of u8 x s8 kernels, else 0), then per k-group `nr` words;
/// zero-padded.
fn pack_b(
    b: MatRef<'_>,
    layout: BLayout,
    sh: Shape,
    (pc, kc): (usize, usize),
    (jc, nc): (usize, usize),
    out: &mut [i32],
) {
    let groups = kc.div_ceil(sh.kg);
    let mut col = vec![0i8; kc];
    for (panel, j0) in (0..nc).step_by(sh.nr).enumerate() {
        let w = sh.nr.min(nc - j0);
        let dst = &mut out[panel * (groups + 1) * sh.nr..(panel + 1) * (groups + 1) * sh.nr];
        dst.fill(0);
        for j in 0..w {
            let c = jc + j0 + j;
            match layout {
                // Row c of `b` holds column c of B: contiguous in k.
                BLayout::Transposed => col.copy_from_slice(&b.data[c * b.ld + pc..][..kc]),
                BLayout::Normal => {
                    for (p, v) in col.iter_mut().enumerate() {
                        *v = b.data[(pc + p) * b.ld + c];
                    }
                }
            }
            if sh.bias {
                dst[j] = -128 * col.iter().map(|v| i32::from(*v)).sum::<i32>();
            }
            for (g, vals) in col.chunks(sh.kg).enumerate() {
                dst[(g + 1) * sh.nr + j] = word(vals, sh.kg, false);
            }
        }
    }
}

/// Packs A[ic..ic+mc, pc..pc+kc] into `mr`-tall panels, per k-group `mr` words
/// (k-major); zero-padded.
fn pack_a(a: MatRef<'_>, sh: Shape, (ic, mc): (usize, usize), (pc, kc): (usize, usize), out: &mut [i32]) {
    let groups = kc.div_ceil(sh.kg);
    for (panel, i0) in (0..mc).step_by(sh.mr).enumerate() {
        let h = sh.mr.min(mc - i0);
        let dst = &mut out[panel * groups * sh.mr..(panel + 1) * groups * sh.mr];
        for i in 0..sh.mr {
            if i < h {
                let row = &a.data[(ic + i0 + i) * a.ld + pc..][..kc];
                for (g, vals) in row.chunks(sh.kg).enumerate() {
                    dst[g * sh.mr + i] = word(vals, sh.kg, sh.bias);
                }
            } else {
                for g in 0..groups {
                    dst[g * sh.mr + i] = 0;
                }
            }
        }
    }
}

/// One thread's block: `mc x nc` of C at column `jc`, `groups` k-groups deep.
struct Block {
    kernel: Kernel,
    sh: Shape,
    mc: usize,
    nc: usize,
    groups: usize,
    ldc: usize,
    jc: usize,
    /// First k-slice: store instead of add.
    first: bool,
}

fn macro_kernel(blk: &Block, apack: &[i32], bpack: &[i32], cblock: &mut [i32]) {
    let (sh, groups) = (blk.sh, blk.groups);
    let panel_words = (groups + 1) * sh.nr;
    let mut tile = [0i32; MAX_TILE];
    for (jp, j0) in (0..blk.nc).step_by(sh.nr).enumerate() {
        let w = sh.nr.min(blk.nc - j0);
        let bp = &bpack[jp * panel_words..(jp + 1) * panel_words];
        for (ip, i0) in (0..blk.mc).step_by(sh.mr).enumerate() {
            let h = sh.mr.min(blk.mc - i0);
            let ap = &apack[ip * groups * sh.mr..(ip + 1) * groups * sh.mr];
            blk.kernel.run(groups, ap, bp, &mut tile);
            for (i, trow) in tile.chunks_exact(sh.nr).enumerate().take(h) {
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

const PAIR_MR: usize = 6;
const PAIR_NR: usize = 16;

fn kernel_portable(groups: usize, a: &[i32], b: &[i32], tile: &mut [i32; MAX_TILE]) {
    let mut acc = [[0i32; PAIR_NR]; PAIR_MR];
    for g in 0..groups {
        let bv = &b[(g + 1) * PAIR_NR..(g + 2) * PAIR_NR];
        for (i, row) in acc.iter_mut().enumerate() {
            let w = a[g * PAIR_MR + i];
            let (a0, a1) = (i32::from(w as i16), w >> 16);
            for (c, &bw) in row.iter_mut().zip(bv) {
                *c = c.wrapping_add(a0 * i32::from(bw as i16) + a1 * (bw >> 16));
            }
        }
    }
    for (dst, row) in tile.chunks_exact_mut(PAIR_NR).zip(&acc) {
        dst.copy_from_slice(row);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn kernel_avx2(groups: usize, a: *const i32, b: *const i32, tile: &mut [i32; MAX_TILE]) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller guarantees `a` holds groups*6 words and `b`
    // (groups+1)*16; unaligned loads and stores only.
    unsafe {
        let mut c = [_mm256_setzero_si256(); 2 * PAIR_MR];
        let (mut ap, mut bp) = (a, b.add(PAIR_NR));
        for _ in 0..groups {
            let b0 = _mm256_loadu_si256(bp.cast());
            let b1 = _mm256_loadu_si256(bp.add(8).cast());
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
            ap = ap.add(PAIR_MR);
            bp = bp.add(PAIR_NR);
        }
        for i in 0..PAIR_MR {
            let dst = tile.as_mut_ptr().add(i * PAIR_NR);
            _mm256_storeu_si256(dst.cast(), c[2 * i]);
            _mm256_storeu_si256(dst.add(8).cast(), c[2 * i + 1]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel_vnni(groups: usize, a: *const i32, b: *const i32, tile: &mut [i32; MAX_TILE]) {
    use std::arch::x86_64::*;
    const MR: usize = 8;
    const NR: usize = 32;
    // SAFETY (whole body): the caller guarantees `a` holds groups*8 words and `b`
    // (groups+1)*32; unaligned loads and stores only.
    unsafe {
        // Start at -128 * column sums: undoes A's +128 shift exactly.
        let s0 = _mm512_loadu_si512(b.cast());
        let s1 = _mm512_loadu_si512(b.add(16).cast());
        let mut c = [s0, s1, s0, s1, s0, s1, s0, s1, s0, s1, s0, s1, s0, s1, s0, s1];
        let (mut ap, mut bp) = (a, b.add(NR));
        for _ in 0..groups {
            let b0 = _mm512_loadu_si512(bp.cast());
            let b1 = _mm512_loadu_si512(bp.add(16).cast());
            macro_rules! row {
                ($i:expr) => {{
                    let av = _mm512_set1_epi32(*ap.add($i));
                    c[2 * $i] = _mm512_dpbusd_epi32(c[2 * $i], av, b0);
                    c[2 * $i + 1] = _mm512_dpbusd_epi32(c[2 * $i + 1], av, b1);
                }};
            }
            row!(0);
            row!(1);
            row!(2);
            row!(3);
            row!(4);
            row!(5);
            row!(6);
            row!(7);
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for i in 0..MR {
            let dst = tile.as_mut_ptr().add(i * NR);
            _mm512_storeu_si512(dst.cast(), c[2 * i]);
            _mm512_storeu_si512(dst.add(16).cast(), c[2 * i + 1]);
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
        // 127 is 255 after the u8 shift of the VNNI kernel: the other extreme.
        let top = vec![127i8; m * k];
        for lhs in [&a, &top] {
            let want = naive(lhs, &mixed, m, k, n);
            for kernel in Kernel::available() {
                let mut c = vec![0i32; m * n];
                igemm_with(
                    kernel,
                    MatRef::new(lhs, m, k),
                    MatRef::new(&mixed, k, n),
                    BLayout::Normal,
                    &mut c,
                    2,
                );
                assert_eq!(c, want, "{kernel:?}");
            }
        }
    }
}
