//! x86-64 GEMM tiles: AVX2 (i16 operands, `vpmaddwd`), AVX-VNNI (`vpdpbusd` on ymm,
//! CPUs without AVX-512) and AVX-512 VNNI (`vpdpbusd` on zmm). Each group of 4 `k` values of
//! a column is one i32 lane; an activation row's 4 bytes are broadcast to every lane.

use super::{group, impl_gemm_kernel};
use std::arch::x86_64::*;

/// AVX2 (8 columns × 6 rows): i16 activations (widened once per block of rows by the
/// drivers) and i8 weights widened per group, multiplied pairwise into i32 (`vpmaddwd`).
/// Exact, unlike `vpmaddubsw`, which saturates pairs at i16, and as fast where the multiplies
/// bound the loop: `vpmaddwd` makes 16 products, `vpmaddubsw` 32 but needs a second
/// `vpmaddwd` to widen them.
pub struct Avx2(());

impl Avx2 {
    /// `Some` only on a CPU with AVX2.
    pub fn new() -> Option<Avx2> {
        is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

impl_gemm_kernel!(Avx2, "x86-avx2-gemm-u8i8", nr = 8, mr = 6, a_bias = 0, activation_bytes = 2, tile_avx2, block_mr = 4, block_tile_avx2);

#[target_feature(enable = "avx2")]
unsafe fn tile_avx2<const R: usize>(a: *const u8, lda: usize, panel: *const i8, k4: usize, init: *const i32, acc: *mut i32) {
    // Safety: the caller checked the bounds of k4 groups; init holds 8 values, acc R rows of 8.
    unsafe {
        let c = sums_avx2::<R, 2>(a, lda, panel, 0..k4);
        let init = _mm256_loadu_si256(init.cast());
        for (r, c) in c.iter().enumerate() {
            _mm256_storeu_si256(acc.add(8 * r).cast(), _mm256_add_epi32(columns_avx2(c), init));
        }
    }
}

/// The exact i32 sums of R rows × 8 columns over the groups `groups` of `k`, per row two
/// vectors whose lanes pair up: `[c0 c0 c1 c1 | c2 c2 c3 c3]` and the same for columns 4–7
/// (one lane for `k0·k1`, one for `k2·k3` of each group; see [`columns_avx2`]). Per group: 2
/// panel loads widened to i16, and per row one 8-byte broadcast and 2 `vpmaddwd`. Activations
/// of `BYTES` = 2 are i16 already; of 1, u8 widened here (the block-scaled tile's rare wide
/// weights).
///
/// # Safety
/// The panel holds the groups (32 bytes each); every row, `lda` bytes apart, their 4 values
/// each.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn sums_avx2<const R: usize, const BYTES: usize>(
    a: *const u8,
    lda: usize,
    panel: *const i8,
    groups: std::ops::Range<usize>,
) -> [[__m256i; 2]; R] {
    let mut c = [[_mm256_setzero_si256(); 2]; R];
    for g in groups {
        // Safety (every access): as the caller guarantees.
        let (b_lo, b_hi) = unsafe {
            let p = panel.add(32 * g);
            (_mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast())), _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16).cast())))
        };
        for (r, c) in c.iter_mut().enumerate() {
            let av = match BYTES {
                2 => _mm256_set1_epi64x(unsafe { a.add(r * lda + 8 * g).cast::<i64>().read_unaligned() }),
                _ => _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(unsafe { group(a, r * lda + 4 * g) } as i32))),
            };
            c[0] = _mm256_add_epi32(c[0], _mm256_madd_epi16(av, b_lo));
            c[1] = _mm256_add_epi32(c[1], _mm256_madd_epi16(av, b_hi));
        }
    }
    c
}

/// One row's 8 column sums from [`sums_avx2`]'s lane pairs: `hadd` gives columns
/// `[0 1 4 5 | 2 3 6 7]`, the permute restores 0..7.
#[target_feature(enable = "avx2")]
#[inline]
fn columns_avx2(c: &[__m256i; 2]) -> __m256i {
    _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(c[0], c[1]))
}

/// The exact i32 sums of R rows × 8 columns (one vector per row, lanes in column order) over
/// the groups `groups` of `k`, for weights within ±[`SMALL_WEIGHT`](super::SMALL_WEIGHT) and
/// u8 activations: `vpmaddubsw` makes 32 products a µop (against `vpmaddwd`'s 16), summed in
/// pairs into i16 that cannot saturate (|a0·w0 + a1·w1| ≤ 2·255·15 = 7650), four groups
/// added in i16 (≤ 30600), then widened once by `vpmaddwd` with ones.
///
/// # Safety
/// The panel holds the groups (32 bytes each); every row, `lda` bytes apart, their 4 bytes
/// each.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn small_sums_avx2<const R: usize>(a: *const u8, lda: usize, panel: *const i8, groups: std::ops::Range<usize>) -> [__m256i; R] {
    let ones = _mm256_set1_epi16(1);
    let mut c = [_mm256_setzero_si256(); R];
    let mut g0 = groups.start;
    while g0 < groups.end {
        let mut pairs = [_mm256_setzero_si256(); R];
        for g in g0..groups.end.min(g0 + 4) {
            // Safety (every access): as the caller guarantees.
            let b = unsafe { _mm256_loadu_si256(panel.add(32 * g).cast()) };
            for (r, pairs) in pairs.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(unsafe { group(a, r * lda + 4 * g) } as i32);
                *pairs = _mm256_add_epi16(*pairs, _mm256_maddubs_epi16(av, b));
            }
        }
        for (c, &pairs) in c.iter_mut().zip(&pairs) {
            *c = _mm256_add_epi32(*c, _mm256_madd_epi16(pairs, ones));
        }
        g0 += 4;
    }
    c
}

/// The block-scaled tile (4 rows × 8 columns) on u8 activations: per block, the exact i32
/// sums of each row (by [`small_sums_avx2`] for small weights, else [`sums_avx2`] reduced),
/// converted and scaled into 4 ymm of f32 sums, so nothing leaves the registers between
/// blocks. Multiply then add, as the default tile does: the same bits.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_tile_avx2<const R: usize>(
    a: *const u8,
    lda: usize,
    panel: *const i8,
    k4: usize,
    blocks: usize,
    init: *const i32,
    a_scales: *const f32,
    a_stride: usize,
    w_scales: *const f32,
    small: bool,
    acc: *mut f32,
) {
    // Safety (every access): the caller checked blocks·k4 groups of 32 panel bytes, 8 init and
    // weight scales per block, `blocks` activation scales per row, R rows of `blocks·4·k4`
    // bytes, and R rows of 8 in acc.
    let mut sums = [_mm256_setzero_ps(); R];
    for blk in 0..blocks {
        let groups = blk * k4..(blk + 1) * k4;
        let (c, init, w) = unsafe {
            (
                match small {
                    true => small_sums_avx2::<R>(a, lda, panel, groups),
                    false => sums_avx2::<R, 1>(a, lda, panel, groups).map(|c| columns_avx2(&c)),
                },
                _mm256_loadu_si256(init.add(8 * blk).cast()),
                _mm256_loadu_ps(w_scales.add(8 * blk)),
            )
        };
        for (r, (sum, &c)) in sums.iter_mut().zip(&c).enumerate() {
            let a_scale = _mm256_set1_ps(unsafe { *a_scales.add(r * a_stride + blk) });
            let exact = _mm256_cvtepi32_ps(_mm256_add_epi32(c, init));
            *sum = _mm256_add_ps(*sum, _mm256_mul_ps(exact, _mm256_mul_ps(a_scale, w)));
        }
    }
    for (r, &s) in sums.iter().enumerate() {
        unsafe { _mm256_storeu_ps(acc.add(8 * r), s) };
    }
}

/// AVX-VNNI (16 columns × 6 rows): `vpdpbusd` on ymm, for CPUs with VNNI but no AVX-512.
pub struct AvxVnni(());

impl AvxVnni {
    /// `Some` only on a CPU with AVX-VNNI.
    pub fn new() -> Option<AvxVnni> {
        is_x86_feature_detected!("avxvnni").then_some(AvxVnni(()))
    }
}

impl_gemm_kernel!(AvxVnni, "x86-avxvnni-gemm-u8i8", nr = 16, mr = 6, a_bias = 0, activation_bytes = 1, tile_avxvnni);

#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile_avxvnni<const R: usize>(a: *const u8, lda: usize, panel: *const i8, k4: usize, init: *const i32, acc: *mut i32) {
    // Safety: init holds 16 values.
    let start = unsafe { [_mm256_loadu_si256(init.cast()), _mm256_loadu_si256(init.add(8).cast())] };
    let mut c = [start; R];
    for g in 0..k4 {
        // Safety: the panel holds k4 groups of 64 bytes.
        let (b0, b1) = unsafe { (_mm256_loadu_si256(panel.add(64 * g).cast()), _mm256_loadu_si256(panel.add(64 * g + 32).cast())) };
        for (r, c) in c.iter_mut().enumerate() {
            // Safety: row r holds 4·k4 bytes.
            let av = _mm256_set1_epi32(unsafe { group(a, r * lda + 4 * g) } as i32);
            c[0] = _mm256_dpbusd_avx_epi32(c[0], av, b0);
            c[1] = _mm256_dpbusd_avx_epi32(c[1], av, b1);
        }
    }
    for (r, c) in c.iter().enumerate() {
        // Safety: acc holds R rows of 16.
        unsafe {
            _mm256_storeu_si256(acc.add(16 * r).cast(), c[0]);
            _mm256_storeu_si256(acc.add(16 * r + 8).cast(), c[1]);
        }
    }
}

/// AVX-512 VNNI (48 columns × 8 rows): 24 zmm accumulators, 3 panel loads and 8 broadcasts
/// per 24 `vpdpbusd` (two issue per cycle on Sapphire Rapids; fewer loads than that would
/// starve them).
pub struct Avx512Vnni(());

impl Avx512Vnni {
    /// `Some` only on a CPU with AVX-512 F/BW and VNNI.
    pub fn new() -> Option<Avx512Vnni> {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni"))
            .then_some(Avx512Vnni(()))
    }
}

impl_gemm_kernel!(
    Avx512Vnni,
    "x86-avx512vnni-gemm-u8i8",
    nr = 48,
    mr = 8,
    a_bias = 0,
    activation_bytes = 1,
    tile_avx512vnni,
    block_mr = 4,
    block_tile_avx512vnni
);

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_avx512vnni<const R: usize>(a: *const u8, lda: usize, panel: *const i8, k4: usize, init: *const i32, acc: *mut i32) {
    // Safety: the caller checked the bounds of k4 groups from init's 48 values.
    let c = unsafe { sums_avx512vnni::<R>(a, lda, panel, 0..k4, init) };
    for (r, c) in c.iter().enumerate() {
        for (v, &c) in c.iter().enumerate() {
            // Safety: acc holds R rows of 48.
            unsafe { _mm512_storeu_si512(acc.add(48 * r + 16 * v).cast(), c) };
        }
    }
}

/// The exact i32 sums of R rows × 48 columns over the groups `groups` of `k`, starting from
/// the 48 values at `init`: 3 panel loads and R broadcasts per 3·R `vpdpbusd`.
///
/// # Safety
/// The panel holds the groups (192 bytes each), every row their 4 bytes each, `init` 48 values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn sums_avx512vnni<const R: usize>(
    a: *const u8,
    lda: usize,
    panel: *const i8,
    groups: std::ops::Range<usize>,
    init: *const i32,
) -> [[__m512i; 3]; R] {
    // Safety (every access): as the caller guarantees.
    let start =
        unsafe { [_mm512_loadu_si512(init.cast()), _mm512_loadu_si512(init.add(16).cast()), _mm512_loadu_si512(init.add(32).cast())] };
    let mut c = [start; R];
    for g in groups {
        let b = unsafe {
            let p = panel.add(192 * g);
            [_mm512_loadu_si512(p.cast()), _mm512_loadu_si512(p.add(64).cast()), _mm512_loadu_si512(p.add(128).cast())]
        };
        for (r, c) in c.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(unsafe { group(a, r * lda + 4 * g) } as i32);
            for (c, &b) in c.iter_mut().zip(&b) {
                *c = _mm512_dpbusd_epi32(*c, av, b);
            }
        }
    }
    c
}

/// The block-scaled tile (4 rows × 48 columns): per block, 12 zmm of exact i32 sums, then
/// converted and scaled into 12 zmm of f32 sums, so nothing leaves the registers between
/// blocks. Multiply then add, as the default tile does: the same bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn block_tile_avx512vnni<const R: usize>(
    a: *const u8,
    lda: usize,
    panel: *const i8,
    k4: usize,
    blocks: usize,
    init: *const i32,
    a_scales: *const f32,
    a_stride: usize,
    w_scales: *const f32,
    _small: bool,
    acc: *mut f32,
) {
    // Safety (every access): the caller checked blocks·k4 groups of 192 panel bytes, 48 init
    // and weight scales per block, `blocks` activation scales per row, and R rows of 48 in acc.
    let mut sums = [[_mm512_setzero_ps(); 3]; R];
    for blk in 0..blocks {
        let c = unsafe { sums_avx512vnni::<R>(a, lda, panel, blk * k4..(blk + 1) * k4, init.add(48 * blk)) };
        let w = unsafe {
            let w = w_scales.add(48 * blk);
            [_mm512_loadu_ps(w), _mm512_loadu_ps(w.add(16)), _mm512_loadu_ps(w.add(32))]
        };
        for (r, (sums, c)) in sums.iter_mut().zip(&c).enumerate() {
            let a_scale = _mm512_set1_ps(unsafe { *a_scales.add(r * a_stride + blk) });
            for ((sum, &c), &w) in sums.iter_mut().zip(c).zip(&w) {
                *sum = _mm512_add_ps(*sum, _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(a_scale, w)));
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        for (v, &s) in sums.iter().enumerate() {
            unsafe {
                _mm512_storeu_ps(acc.add(48 * r + 16 * v), s);
            }
        }
    }
}
