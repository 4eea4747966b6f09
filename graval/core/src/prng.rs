//! Counter-based PRNG (Philox4x32-10) and the exact integer mix of GraVal v2.
//!
//! Both are pure functions of (key, counter) so any element can be computed on its own,
//! by a GPU thread or a CPU loop, with identical bits. The CUDA kernels in
//! `cuda::KERNELS` are a line-for-line transcription; the Random123 known answers
//! below, the fixed hashes in `tests/proof.rs` and the GPU check (`tests/cuda.rs`) pin both.
//!
//! Values: matrix elements are full-range `i8` (every byte of a Philox output), so a
//! state carries 8 bits per element and cannot be stored in fewer. Products are exact
//! `i32` (see `gemm`); the mix hashes each product element and keeps the top byte.

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;

/// Counter word 3 for matrix fills ("I8V2"); other uses of the generator pick other tags.
pub const FILL_TAG: u32 = 0x4938_5632;

/// Counter word 2 of the fresh left operand `R_t` of a step. `R_t` is filled with its
/// own per-step key (`SeedKey::fresh_key`), so it never meets a slot's fill.
pub const FRESH_MATRIX: u32 = u32::MAX;

/// Elements produced by one Philox call (4 words of 4 bytes).
pub const GROUP: usize = 16;

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

/// Elements `16g .. 16g+16` (row-major linear index) of PRNG matrix `id`: the 16
/// little-endian bytes of one Philox output, as `i8`.
#[inline(always)]
pub fn fill_group(key: [u32; 2], id: u32, g: u64) -> [i8; GROUP] {
    let r = philox4x32_10([g as u32, (g >> 32) as u32, id, FILL_TAG], key);
    let mut out = [0i8; GROUP];
    for (dst, w) in out.chunks_exact_mut(4).zip(r) {
        for (d, b) in dst.iter_mut().zip(w.to_le_bytes()) {
            *d = b as i8;
        }
    }
    out
}

/// Fills `out` with elements `16 g0 ..` of PRNG matrix `id` (`out.len()` a multiple of 16).
pub fn fill_from(key: [u32; 2], id: u32, g0: u64, out: &mut [i8]) {
    debug_assert!(out.len().is_multiple_of(GROUP));
    for (g, chunk) in out.chunks_exact_mut(GROUP).enumerate() {
        chunk.copy_from_slice(&fill_group(key, id, g0 + g as u64));
    }
}

/// Fills `out` (all elements of matrix `id`, row-major, a multiple of 16) on `threads` threads.
pub fn fill_matrix(key: [u32; 2], id: u32, out: &mut [i8], threads: usize) {
    let chunk = out.len().div_ceil(threads.max(1)).div_ceil(GROUP).max(1) * GROUP;
    if threads <= 1 || out.len() <= chunk {
        fill_from(key, id, 0, out);
        return;
    }
    std::thread::scope(|s| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            s.spawn(move || fill_from(key, id, (c * chunk / GROUP) as u64, part));
        }
    });
}

/// Matrix `id` of size n x n as a new vector.
pub fn fill_matrix_vec(key: [u32; 2], id: u32, n: usize, threads: usize) -> Vec<i8> {
    let mut out = vec![0i8; n * n];
    fill_matrix(key, id, &mut out, threads);
    out
}

/// Row `row` (n elements, n a multiple of 16) of matrix `id` of size n x n.
pub fn fill_row(key: [u32; 2], id: u32, n: usize, row: usize, out: &mut [i8]) {
    debug_assert_eq!(out.len(), n);
    fill_from(key, id, (row * n / GROUP) as u64, out);
}

/// The 32-bit keyed hash of one product element `x` at linear index `idx`: the step
/// digest sums it over every element, and its top byte is the new element.
#[inline(always)]
pub fn mix_hash(x: i32, idx: u32, salt: u32) -> u32 {
    let v = x as u32;
    let mut h = v.wrapping_mul(0x9E37_79B1) ^ idx.wrapping_mul(0x85EB_CA77) ^ salt;
    h ^= h >> 16;
    h = h.wrapping_mul(0x7FEB_352D);
    h ^= h >> 15;
    h = h.wrapping_mul(0x846C_A68B);
    h ^= h >> 16;
    h
}

/// The new element from a mix hash: its top byte (uniform, full range).
#[inline(always)]
pub fn mix_value(h: u32) -> i8 {
    (h >> 24) as u8 as i8
}

/// Mixes a run of product elements starting at linear index `idx0` into `dst` and
/// returns their part of the step digest: the wrapping u64 sum of the mix hashes.
/// A sum is order-free, so GPU blocks may add their parts in any order; it depends on
/// every element, so it cannot be had without the whole product.
pub fn mix_slice(src: &[i32], dst: &mut [i8], idx0: usize, salt: u32) -> u64 {
    let mut digest = 0u64;
    for (off, (s, d)) in src.iter().zip(dst.iter_mut()).enumerate() {
        let h = mix_hash(*s, (idx0 + off) as u32, salt);
        digest = digest.wrapping_add(u64::from(h));
        *d = mix_value(h);
    }
    digest
}

/// [`mix_slice`] over a whole matrix (linear indices from 0) on `threads` threads;
/// returns the step digest.
pub fn mix_matrix(src: &[i32], dst: &mut [i8], salt: u32, threads: usize) -> u64 {
    assert_eq!(src.len(), dst.len(), "product and state differ in size");
    let chunk = src.len().div_ceil(threads.max(1)).max(1);
    if threads <= 1 {
        return mix_slice(src, dst, 0, salt);
    }
    let mut parts = vec![0u64; src.len().div_ceil(chunk)];
    std::thread::scope(|s| {
        for (((c, sp), dp), d) in
            src.chunks(chunk).enumerate().zip(dst.chunks_mut(chunk)).zip(parts.iter_mut())
        {
            s.spawn(move || *d = mix_slice(sp, dp, c * chunk, salt));
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
    fn fill_is_full_range_and_about_uniform() {
        let m = fill_matrix_vec([1, 2], 0, 128, 1);
        let mut seen = [0u32; 256];
        for v in &m {
            seen[(*v as u8) as usize] += 1;
        }
        // 16384 draws over 256 values: 64 expected each.
        assert!(seen.iter().all(|&c| (25..=110).contains(&c)), "{seen:?}");
    }

    #[test]
    fn threaded_fill_equals_serial_fill_and_rows() {
        let n = 48;
        let m = fill_matrix_vec([7, 9], 3, n, 1);
        for threads in [2, 5, 7] {
            assert_eq!(fill_matrix_vec([7, 9], 3, n, threads), m, "threads={threads}");
        }
        let mut row = vec![0i8; n];
        fill_row([7, 9], 3, n, 5, &mut row);
        assert_eq!(&m[5 * n..6 * n], &row[..]);
    }

    #[test]
    fn threaded_mix_equals_serial_mix_and_digest() {
        let src: Vec<i32> = (0..1000).map(|i| (i * 7919 % 200_003) - 100_000).collect();
        let mut a = vec![0i8; 1000];
        let serial = mix_slice(&src, &mut a, 0, 5);
        for threads in [1, 3, 8] {
            let mut c = vec![0i8; 1000];
            assert_eq!(mix_matrix(&src, &mut c, 5, threads), serial, "threads={threads}");
            assert_eq!(c, a);
        }
        // One element more or less changes the digest.
        let mut other = src.clone();
        other[999] += 1;
        assert_ne!(mix_matrix(&other, &mut a, 5, 2), serial);
    }

    #[test]
    fn mix_depends_on_value_index_and_salt() {
        let base: Vec<i8> = (0..256).map(|i| mix_value(mix_hash(i, 0, 1))).collect();
        let other_idx: Vec<i8> = (0..256).map(|i| mix_value(mix_hash(i, 1, 1))).collect();
        let other_salt: Vec<i8> = (0..256).map(|i| mix_value(mix_hash(i, 0, 2))).collect();
        assert_ne!(base, other_idx);
        assert_ne!(base, other_salt);
        let distinct: std::collections::BTreeSet<i8> = base.iter().copied().collect();
        assert!(distinct.len() > 120, "top bytes spread over the range: {}", distinct.len());
    }
}
