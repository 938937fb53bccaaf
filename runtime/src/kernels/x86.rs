//! x86-64 GEMM tiles: AVX2 (i16 operands, `vpmaddwd`), AVX-VNNI (`vpdpbusd` on ymm,
//! CPUs without AVX-512) and AVX-512 VNNI (`vpdpbusd` on zmm). Each group of 4 `k` values of
//! a column is one i32 lane; an activation row's 4 bytes are broadcast to every lane.

use super::{BlockWeightScales, BlockZeros, group, impl_gemm_kernel};
use std::arch::x86_64::*;

/// AVX2 (8 columns × 6 rows): i16 activations (widened once per block of rows by the
/// drivers) and i8 weights widened per group, multiplied pairwise into i32 (`vpmaddwd`).
/// Exact, unlike `vpmaddubsw`, which saturates pairs at i16, and as fast where the multiplies
/// bound the loop: `vpmaddwd` makes 16 products, `vpmaddubsw` 32 but needs a second
/// `vpmaddwd` to widen them.
pub struct Avx2(());

impl Avx2 {
    /// `Some` only on a CPU with AVX2 and F16C (every one has both).
    pub fn new() -> Option<Avx2> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c")).then_some(Avx2(()))
    }
}

impl_gemm_kernel!(Avx2, "x86-avx2-gemm-u8i8", nr = 8, mr = 6, a_bias = 0, activation_bytes = 2, tile_avx2, block_mr = 4, block_tile_avx2);

#[target_feature(enable = "avx2")]
unsafe fn tile_avx2<const R: usize>(a: *const u8, lda: usize, panel: *const i8, k4: usize, init: *const i32, acc: *mut i32) {
    // Safety: the caller checked the bounds of k4 groups; init holds 8 values, acc R rows of 8.
    unsafe {
        let c = sums_avx2::<R>(a, lda, panel, 0..k4);
        let init = _mm256_loadu_si256(init.cast());
        for (r, c) in c.iter().enumerate() {
            _mm256_storeu_si256(acc.add(8 * r).cast(), _mm256_add_epi32(columns_avx2(c), init));
        }
    }
}

/// The exact i32 sums of R rows × 8 columns over the groups `groups` of `k`, per row two
/// vectors whose lanes pair up: `[c0 c0 c1 c1 | c2 c2 c3 c3]` and the same for columns 4–7
/// (one lane for `k0·k1`, one for `k2·k3` of each group; see [`columns_avx2`]). Per group: 2
/// panel loads widened to i16, and per row one 8-byte broadcast (the activations are i16
/// already) and 2 `vpmaddwd`.
///
/// # Safety
/// The panel holds the groups (32 bytes each); every row, `lda` bytes apart, their 4 values
/// each.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn sums_avx2<const R: usize>(a: *const u8, lda: usize, panel: *const i8, groups: std::ops::Range<usize>) -> [[__m256i; 2]; R] {
    let mut c = [[_mm256_setzero_si256(); 2]; R];
    for g in groups {
        // Safety (every access): as the caller guarantees.
        let (b_lo, b_hi) = unsafe {
            let p = panel.add(32 * g);
            (_mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast())), _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16).cast())))
        };
        for (r, c) in c.iter_mut().enumerate() {
            let av = _mm256_set1_epi64x(unsafe { a.add(r * lda + 8 * g).cast::<i64>().read_unaligned() });
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

/// The block-scaled tile (4 rows × 8 columns) on i8 activations, per block: the exact i32
/// sums of each row, converted and scaled into 4 ymm of f32 sums, so nothing leaves the
/// registers between blocks. Multiply then add, as the default tile does: the same bits.
/// 4-bit values are the unsigned operand of `vpmaddubsw` as they are (pairs within
/// 2·15·127, eight groups within i16 before `vpmaddwd` widens them); 8-bit ones, up to 255,
/// would saturate it, so they go as `v = u − 128` by the sign trick (`|v| · sign(v)·q`, pairs
/// within 2·128·127) and `128 · Σq` is added back with the zero point's term.
#[target_feature(enable = "avx2,f16c")]
unsafe fn block_tile_avx2<const R: usize>(a: super::BlockRows, w: super::BlockPanel, k4: usize, blocks: usize, acc: *mut f32) {
    let (q, lda, block_bytes) = (a.q.as_ptr().cast::<u8>(), a.stride, w.block_bytes(k4, 8));
    let (ones, low, flip) = (_mm256_set1_epi16(1), _mm256_set1_epi8(15), _mm256_set1_epi8(-128));
    let shift = if w.four_bit { 0 } else { 128 };
    let mut sums = [_mm256_setzero_ps(); R];
    for blk in 0..blocks {
        // Safety (every access): check_block_tile proved `blocks` blocks of the panel, 8 zero
        // points and scales per block, R rows of `blocks·4·k4` values with their sums and
        // scales, and R rows of 8 in acc.
        let panel = unsafe { w.values.as_ptr().add(blk * block_bytes) };
        let mut c: [__m256i; R] = std::array::from_fn(|r| {
            let q_sum = a.sums[r * a.blocks_stride + blk];
            match w.zeros {
                BlockZeros::Same(z) => _mm256_set1_epi32(q_sum.wrapping_mul(shift - z as i32)),
                BlockZeros::PerBlock(zeros) => {
                    let z = unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(zeros.as_ptr().add(8 * blk).cast())) };
                    _mm256_mullo_epi32(_mm256_sub_epi32(_mm256_set1_epi32(shift), z), _mm256_set1_epi32(q_sum))
                }
            }
        });
        let row = |r: usize, g: usize| unsafe { group(q, r * lda + 4 * (blk * k4 + g)) } as i32;
        if w.four_bit {
            for g0 in (0..k4).step_by(8) {
                let mut pairs = [_mm256_setzero_si256(); R];
                for t in (g0..k4.min(g0 + 8)).step_by(2) {
                    let b = unsafe { _mm256_loadu_si256(panel.add(16 * t).cast()) };
                    let (even, odd) = (_mm256_and_si256(b, low), _mm256_and_si256(_mm256_srli_epi16::<4>(b), low));
                    for (r, pairs) in pairs.iter_mut().enumerate() {
                        let products = _mm256_add_epi16(
                            _mm256_maddubs_epi16(even, _mm256_set1_epi32(row(r, t))),
                            _mm256_maddubs_epi16(odd, _mm256_set1_epi32(row(r, t + 1))),
                        );
                        *pairs = _mm256_add_epi16(*pairs, products);
                    }
                }
                for (c, &pairs) in c.iter_mut().zip(&pairs) {
                    *c = _mm256_add_epi32(*c, _mm256_madd_epi16(pairs, ones));
                }
            }
        } else {
            for g in 0..k4 {
                let v = unsafe { _mm256_xor_si256(_mm256_loadu_si256(panel.add(32 * g).cast()), flip) };
                let magnitude = _mm256_abs_epi8(v);
                for (r, c) in c.iter_mut().enumerate() {
                    let signed = _mm256_sign_epi8(_mm256_set1_epi32(row(r, g)), v);
                    *c = _mm256_add_epi32(*c, _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed), ones));
                }
            }
        }
        let w_scale = unsafe {
            match w.scales {
                BlockWeightScales::F32(s) => _mm256_loadu_ps(s.as_ptr().add(8 * blk)),
                BlockWeightScales::F16(s) => _mm256_cvtph_ps(_mm_loadu_si128(s.as_ptr().add(8 * blk).cast())),
            }
        };
        for (r, (sum, &c)) in sums.iter_mut().zip(&c).enumerate() {
            let a_scale = _mm256_set1_ps(a.scales[r * a.blocks_stride + blk]);
            *sum = _mm256_add_ps(*sum, _mm256_mul_ps(_mm256_cvtepi32_ps(c), _mm256_mul_ps(a_scale, w_scale)));
        }
    }
    for (r, &s) in sums.iter().enumerate() {
        // Safety: acc holds R rows of 8.
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

/// The block-scaled tile (4 rows × 48 columns): per block, 12 zmm of exact i32 sums
/// (`vpdpbusd` takes the unsigned values as they are, 4-bit ones split from their bytes),
/// started at the zero points' `−z · Σq`, then converted and scaled into 12 zmm of f32 sums,
/// so nothing leaves the registers between blocks. Multiply then add, as the default tile
/// does: the same bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_tile_avx512vnni<const R: usize>(a: super::BlockRows, w: super::BlockPanel, k4: usize, blocks: usize, acc: *mut f32) {
    let (q, lda, block_bytes) = (a.q.as_ptr().cast::<u8>(), a.stride, w.block_bytes(k4, 48));
    let low = _mm512_set1_epi8(15);
    let mut sums = [[_mm512_setzero_ps(); 3]; R];
    for blk in 0..blocks {
        // Safety (every access): check_block_tile proved `blocks` blocks of the panel, 48 zero
        // points and scales per block, R rows of `blocks·4·k4` values with their sums and
        // scales, and R rows of 48 in acc.
        let panel = unsafe { w.values.as_ptr().add(blk * block_bytes) };
        let mut c: [[__m512i; 3]; R] = std::array::from_fn(|r| {
            let q_sum = a.sums[r * a.blocks_stride + blk];
            match w.zeros {
                BlockZeros::Same(z) => [_mm512_set1_epi32(q_sum.wrapping_mul(-(z as i32))); 3],
                BlockZeros::PerBlock(zeros) => std::array::from_fn(|v| {
                    let z = unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(zeros.as_ptr().add(48 * blk + 16 * v).cast())) };
                    _mm512_mullo_epi32(z, _mm512_set1_epi32(q_sum.wrapping_neg()))
                }),
            }
        });
        let row = |r: usize, g: usize| _mm512_set1_epi32(unsafe { group(q, r * lda + 4 * (blk * k4 + g)) } as i32);
        if w.four_bit {
            for t in (0..k4).step_by(2) {
                let b: [__m512i; 3] = std::array::from_fn(|v| unsafe { _mm512_loadu_si512(panel.add(96 * t + 64 * v).cast()) });
                let (even, odd) = (b.map(|b| _mm512_and_si512(b, low)), b.map(|b| _mm512_and_si512(_mm512_srli_epi16::<4>(b), low)));
                for (r, c) in c.iter_mut().enumerate() {
                    let (a_even, a_odd) = (row(r, t), row(r, t + 1));
                    for v in 0..3 {
                        c[v] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c[v], even[v], a_even), odd[v], a_odd);
                    }
                }
            }
        } else {
            for g in 0..k4 {
                let b: [__m512i; 3] = std::array::from_fn(|v| unsafe { _mm512_loadu_si512(panel.add(192 * g + 64 * v).cast()) });
                for (r, c) in c.iter_mut().enumerate() {
                    let av = row(r, g);
                    for (c, &b) in c.iter_mut().zip(&b) {
                        *c = _mm512_dpbusd_epi32(*c, b, av);
                    }
                }
            }
        }
        let w_scale: [__m512; 3] = std::array::from_fn(|v| unsafe {
            match w.scales {
                BlockWeightScales::F32(s) => _mm512_loadu_ps(s.as_ptr().add(48 * blk + 16 * v)),
                BlockWeightScales::F16(s) => _mm512_cvtph_ps(_mm256_loadu_si256(s.as_ptr().add(48 * blk + 16 * v).cast())),
            }
        });
        for (r, (sums, c)) in sums.iter_mut().zip(&c).enumerate() {
            let a_scale = _mm512_set1_ps(a.scales[r * a.blocks_stride + blk]);
            for ((sum, &c), &w) in sums.iter_mut().zip(c).zip(&w_scale) {
                *sum = _mm512_add_ps(*sum, _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(a_scale, w)));
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        for (v, &s) in sums.iter().enumerate() {
            // Safety: acc holds R rows of 48.
            unsafe { _mm512_storeu_ps(acc.add(48 * r + 16 * v), s) };
        }
    }
}
