//! Counter-based PRNG (Philox4x32-10) and the exact integer mix.
//!
//! Both are pure functions of (key, counter) so any element can be computed on its own,
//! by a GPU thread or a CPU loop, with identical bits. The CUDA kernels in
//! `cuda::KERNELS` are a line-for-line transcription; the Random123 known answers
//! below, the fixed hashes in `tests/proof.rs` and the GPU check (`tests/cuda.rs`) pin both.
//!
//! Value range: matrix elements and mix outputs are integers in [-8, 8] stored as f32.
//! A product of two such n x n matrices has |sum| <= 64 n, below 2^24 for n <= 262144,
//! so every fp32 partial sum is an exact integer: any summation order (cuBLAS tiles,
//! split-K, FMA or not, the CPU kernel) gives the same bits.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Counter word 3 for matrix fills ("MATX"); other uses of the generator pick other tags.
pub const FILL_TAG: u32 = 0x4D41_5458;

/// Counter word 2 of the fresh right-hand operand `R_t` of a step. `R_t` is filled with
/// its own per-step key (`SeedKey::fresh_key`), so it never meets a resident fill.
pub const FRESH_MATRIX: u32 = u32::MAX;

/// Number of distinct element values: integers -8..=8.
pub const VALUE_SPAN: u32 = 17;

#[inline(always)]
fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = u64::from(a) * u64::from(b);
    ((p >> 32) as u32, p as u32)
}

/// Philox4x32 with 10 rounds (Salmon et al., Random123), the standard constants.
#[inline(always)]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = ctr;
    let mut k = key;
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(PHILOX_W0);
            k[1] = k[1].wrapping_add(PHILOX_W1);
        }
        let (hi0, lo0) = mulhilo(PHILOX_M0, c[0]);
        let (hi1, lo1) = mulhilo(PHILOX_M1, c[2]);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// Maps a 32-bit draw to an integer in [-8, 8] (bias below 2^-27, irrelevant here).
#[inline(always)]
pub fn draw_to_value(u: u32) -> f32 {
    ((u % VALUE_SPAN) as i32 - 8) as f32
}

/// The four consecutive elements `4g .. 4g+4` (row-major linear index) of fill matrix `k`.
#[inline(always)]
pub fn fill_group(key: [u32; 2], k: u32, g: u64) -> [f32; 4] {
    let r = philox4x32_10([g as u32, (g >> 32) as u32, k, FILL_TAG], key);
    [draw_to_value(r[0]), draw_to_value(r[1]), draw_to_value(r[2]), draw_to_value(r[3])]
}

/// Fills `out` (the `n*n` elements of matrix `k`, row-major) from the PRNG.
pub fn fill_matrix(key: [u32; 2], k: u32, out: &mut [f32]) {
    debug_assert!(out.len().is_multiple_of(4));
    for (g, chunk) in out.chunks_exact_mut(4).enumerate() {
        chunk.copy_from_slice(&fill_group(key, k, g as u64));
    }
}

/// Matrix `k` of size n x n as a new vector, filled on `threads` threads.
pub fn fill_matrix_vec(key: [u32; 2], k: u32, n: usize, threads: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * n];
    fill_matrix_threaded(key, k, &mut out, threads);
    out
}

/// [`fill_matrix`] on `threads` threads (same bits).
pub fn fill_matrix_threaded(key: [u32; 2], k: u32, out: &mut [f32], threads: usize) {
    let chunk = out.len().div_ceil(threads.max(1)).div_ceil(4) * 4;
    std::thread::scope(|s| {
        for (c, part) in out.chunks_mut(chunk.max(4)).enumerate() {
            s.spawn(move || {
                let g0 = (c * chunk / 4) as u64;
                for (g, four) in part.chunks_exact_mut(4).enumerate() {
                    four.copy_from_slice(&fill_group(key, k, g0 + g as u64));
                }
            });
        }
    });
}

/// Fills one row `row` (n elements) of matrix `k` of size n x n.
pub fn fill_row(key: [u32; 2], k: u32, n: usize, row: usize, out: &mut [f32]) {
    debug_assert_eq!(out.len(), n);
    let g0 = (row * n / 4) as u64;
    for (g, chunk) in out.chunks_exact_mut(4).enumerate() {
        chunk.copy_from_slice(&fill_group(key, k, g0 + g as u64));
    }
}

/// The exact integer non-linearity applied to every product element:
/// `x` (an exact integer in fp32) and its linear index are hashed with the step's salt
/// and folded back into [-8, 8]. Not affine, so products cannot be merged algebraically
/// (A.B.C precomputed), and it keeps every later product exact.
#[inline(always)]
pub fn mix(x: f32, idx: u32, salt: u32) -> f32 {
    draw_to_value(mix_hash(x, idx, salt))
}

/// The 32-bit hash inside [`mix`]; the step digest sums it over every element.
#[inline(always)]
pub fn mix_hash(x: f32, idx: u32, salt: u32) -> u32 {
    let v = x as i32 as u32;
    let mut h = v.wrapping_mul(0x9E37_79B1) ^ idx.wrapping_mul(0x85EB_CA77) ^ salt;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846C_A68B);
    h ^= h >> 16;
    h
}

/// Applies [`mix`] to a run of elements starting at linear index `idx0` and returns
/// their part of the step digest: the wrapping sum of every element's [`mix_hash`] as
/// u64. A sum is order-free, so GPU blocks may add their parts in any order; it
/// depends on every element, so it cannot be had without the whole product.
pub fn mix_slice(values: &mut [f32], idx0: usize, salt: u32) -> u64 {
    let mut digest = 0u64;
    for (off, v) in values.iter_mut().enumerate() {
        let h = mix_hash(*v, (idx0 + off) as u32, salt);
        digest = digest.wrapping_add(u64::from(h));
        *v = draw_to_value(h);
    }
    digest
}

/// [`mix_slice`] over a whole matrix (linear indices from 0) on `threads` threads;
/// returns the step digest.
pub fn mix_matrix(values: &mut [f32], salt: u32, threads: usize) -> u64 {
    let chunk = values.len().div_ceil(threads.max(1)).max(1);
    let mut parts = vec![0u64; values.len().div_ceil(chunk)];
    std::thread::scope(|s| {
        for ((c, part), d) in values.chunks_mut(chunk).enumerate().zip(parts.iter_mut()) {
            s.spawn(move || *d = mix_slice(part, c * chunk, salt));
        }
    });
    parts.iter().fold(0u64, |d, p| d.wrapping_add(*p))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer vectors from Random123's kat_vectors for philox4x32_10.
    #[test]
    fn philox_matches_random123_known_answers() {
        assert_eq!(philox4x32_10([0, 0, 0, 0], [0, 0]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn values_cover_exactly_minus8_to_8() {
        let mut seen = [0u32; 17];
        let mut m = vec![0f32; 64 * 64];
        fill_matrix([1, 2], 0, &mut m);
        for v in &m {
            assert_eq!(v.fract(), 0.0);
            seen[(*v as i32 + 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| c > 150), "{seen:?}");
    }

    #[test]
    fn threaded_fill_equals_serial_fill() {
        let n = 36;
        let mut m = vec![0f32; n * n];
        fill_matrix([7, 9], 3, &mut m);
        for threads in [1, 2, 5, 7] {
            assert_eq!(fill_matrix_vec([7, 9], 3, n, threads), m, "threads={threads}");
        }
    }

    #[test]
    fn row_fill_equals_matrix_fill() {
        let n = 32;
        let mut m = vec![0f32; n * n];
        fill_matrix([7, 9], 3, &mut m);
        let mut row = vec![0f32; n];
        fill_row([7, 9], 3, n, 5, &mut row);
        assert_eq!(&m[5 * n..6 * n], &row[..]);
    }

    #[test]
    fn threaded_mix_equals_serial_mix_and_digest() {
        let mut a: Vec<f32> = (0..1000).map(|i| (i * 37 % 2001) as f32 - 1000.0).collect();
        let mut b = a.clone();
        let serial = mix_slice(&mut a, 0, 5);
        for threads in [1, 3, 8] {
            let mut c = b.clone();
            assert_eq!(mix_matrix(&mut c, 5, threads), serial, "threads={threads}");
            assert_eq!(c, a);
        }
        // One element more or less changes the digest.
        b[999] += 1.0;
        assert_ne!(mix_matrix(&mut b, 5, 2), serial);
    }

    #[test]
    fn mix_is_exact_and_bounded_and_depends_on_all_inputs() {
        for x in [-524_288.0f32, -1.0, 0.0, 1.0, 12_345.0, 524_288.0] {
            let y = mix(x, 17, 99);
            assert!((-8.0..=8.0).contains(&y) && y.fract() == 0.0);
        }
        let base: Vec<f32> = (0..256).map(|i| mix(i as f32, 0, 1)).collect();
        let other_idx: Vec<f32> = (0..256).map(|i| mix(i as f32, 1, 1)).collect();
        let other_salt: Vec<f32> = (0..256).map(|i| mix(i as f32, 0, 2)).collect();
        assert_ne!(base, other_idx);
        assert_ne!(base, other_salt);
        // -0.0 never appears: hashes are over f32 bytes.
        assert!(base.iter().all(|v| v.to_bits() != (-0.0f32).to_bits()));
    }
}
