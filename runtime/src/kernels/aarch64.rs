//! aarch64 GEMM tiles (8 columns = two q registers of 4 lanes): plain NEON (i16 widening +
//! `smull`), dotprod (`sdot` by element) and i8mm (the matrix instruction `usmmla`).
//! `sdot`/`usmmla` have no stable intrinsics, so those two use `asm!` inside functions
//! compiled for the feature.
//! Each group of 4 `k` values of a column is one i32 lane; an activation row's 4 bytes are
//! one 32-bit element of a register, picked by the instruction's lane index.

use super::{group, impl_gemm_kernel};
use std::arch::aarch64::*;
use std::arch::asm;
use std::arch::is_aarch64_feature_detected;

/// Plain NEON (8 columns × 4 rows; every aarch64 CPU): widen to i16, multiply long into i32,
/// reduce each column's 4 products pairwise.
pub struct Neon(());

impl Neon {
    /// `Some` on every aarch64 CPU with NEON (all of them in practice).
    pub fn new() -> Option<Neon> {
        is_aarch64_feature_detected!("neon").then_some(Neon(()))
    }
}

impl_gemm_kernel!(Neon, "aarch64-neon-gemm-u8i8", nr = 8, mr = 4, a_bias = 0, activation_bytes = 1, tile_neon);

#[target_feature(enable = "neon")]
unsafe fn tile_neon<const R: usize>(a: *const u8, lda: usize, panel: *const i8, k4: usize, init: *const i32, acc: *mut i32) {
    // Safety: init holds 8 values.
    let mut c = [unsafe { [vld1q_s32(init), vld1q_s32(init.add(4))] }; R];
    for g in 0..k4 {
        // Safety: the panel holds k4 groups of 32 bytes.
        let (b0, b1) = unsafe { (vld1q_s8(panel.add(32 * g)), vld1q_s8(panel.add(32 * g + 16))) };
        // Column pairs (0,1) (2,3) (4,5) (6,7), 4 k values each, as i16.
        let b = [vmovl_s8(vget_low_s8(b0)), vmovl_high_s8(b0), vmovl_s8(vget_low_s8(b1)), vmovl_high_s8(b1)];
        for (r, c) in c.iter_mut().enumerate() {
            // Safety: row r holds 4·k4 bytes. [a0 a1 a2 a3 a0 a1 a2 a3] as i16.
            let a16 = vreinterpretq_s16_u16(vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(unsafe { group(a, r * lda + 4 * g) }))));
            let p: [int32x4_t; 8] = [
                vmull_s16(vget_low_s16(b[0]), vget_low_s16(a16)),
                vmull_high_s16(b[0], a16),
                vmull_s16(vget_low_s16(b[1]), vget_low_s16(a16)),
                vmull_high_s16(b[1], a16),
                vmull_s16(vget_low_s16(b[2]), vget_low_s16(a16)),
                vmull_high_s16(b[2], a16),
                vmull_s16(vget_low_s16(b[3]), vget_low_s16(a16)),
                vmull_high_s16(b[3], a16),
            ];
            c[0] = vaddq_s32(c[0], vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3])));
            c[1] = vaddq_s32(c[1], vpaddq_s32(vpaddq_s32(p[4], p[5]), vpaddq_s32(p[6], p[7])));
        }
    }
    for (r, c) in c.iter().enumerate() {
        // Safety: acc holds R rows of 8.
        unsafe {
            vst1q_s32(acc.add(8 * r), c[0]);
            vst1q_s32(acc.add(8 * r + 4), c[1]);
        }
    }
}

/// A tile over a by-element dot instruction `$insn Vd.4s, Vn.16b (weights), Vm.4b[lane]
/// (activations)`: four groups per 16-byte activation load, one at a time at the tail.
/// Activations are XORed with `$flip` first (0x80 turns u8 into i8 minus 128 for `sdot`).
macro_rules! lane_dot_tile {
    ($name:ident, $features:literal, $insn:literal, $flip:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name<const R: usize>(a: *const u8, lda: usize, panel: *const i8, k4: usize, init: *const i32, acc: *mut i32) {
            // Safety: init holds 8 values.
    let mut c = [unsafe { [vld1q_s32(init), vld1q_s32(init.add(4))] }; R];
            let flip = vdupq_n_u8($flip);
            let mut g = 0;
            while g < k4 {
                let groups = if g + 4 <= k4 { 4 } else { 1 };
                let mut av = [vdupq_n_u8(0); R];
                for (r, av) in av.iter_mut().enumerate() {
                    let offset = r * lda + 4 * g;
                    // Safety: row r holds 4·k4 bytes, so 16 from group g when g + 4 ≤ k4.
                    let raw = unsafe { if groups == 4 { vld1q_u8(a.add(offset)) } else { vreinterpretq_u8_u32(vdupq_n_u32(group(a, offset))) } };
                    *av = veorq_u8(raw, flip);
                }
                macro_rules! lane {
                    ($lane:literal) => {
                        if $lane < groups {
                            // Safety: the panel holds k4 groups of 32 bytes.
                            let (b0, b1) = unsafe { (vld1q_s8(panel.add(32 * (g + $lane))), vld1q_s8(panel.add(32 * (g + $lane) + 16))) };
                            for (c, &av) in c.iter_mut().zip(&av) {
                                // Safety: the instruction exists under the features this function is compiled for.
                                unsafe {
                                    asm!(concat!($insn, " {c:v}.4s, {b:v}.16b, {a:v}.4b[", $lane, "]"),
                                        c = inout(vreg) c[0], b = in(vreg) b0, a = in(vreg) av, options(pure, nomem, nostack));
                                    asm!(concat!($insn, " {c:v}.4s, {b:v}.16b, {a:v}.4b[", $lane, "]"),
                                        c = inout(vreg) c[1], b = in(vreg) b1, a = in(vreg) av, options(pure, nomem, nostack));
                                }
                            }
                        }
                    };
                }
                lane!(0);
                lane!(1);
                lane!(2);
                lane!(3);
                g += groups;
            }
            for (r, c) in c.iter().enumerate() {
                // Safety: acc holds R rows of 8.
                unsafe {
                    vst1q_s32(acc.add(8 * r), c[0]);
                    vst1q_s32(acc.add(8 * r + 4), c[1]);
                }
            }
        }
    };
}

/// dotprod (ARMv8.2+, 8 columns × 8 rows): `sdot` is i8·i8, so activations are shifted to
/// i8 (a − 128) and the driver adds 128·Σb back.
pub struct DotProd(());

impl DotProd {
    /// `Some` only on a CPU with the dotprod extension.
    pub fn new() -> Option<DotProd> {
        is_aarch64_feature_detected!("dotprod").then_some(DotProd(()))
    }
}

lane_dot_tile!(tile_sdot, "neon,dotprod", "sdot", 0x80);
impl_gemm_kernel!(
    DotProd,
    "aarch64-dotprod-gemm-u8i8",
    nr = 8,
    mr = 8,
    a_bias = 128,
    activation_bytes = 1,
    tile_sdot,
    block_mr = 4,
    block_tile_sdot
);

/// `c += Σ_{i<4} b[4j + i] · a[i]` per lane j: one `sdot` by element 0 of `a`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot(c: &mut int32x4_t, b: int8x16_t, a: int8x16_t) {
    // Safety: the instruction exists under the features this function is compiled for.
    unsafe {
        asm!("sdot {c:v}.4s, {b:v}.16b, {a:v}.4b[0]", c = inout(vreg) *c, b = in(vreg) b, a = in(vreg) a, options(pure, nomem, nostack))
    };
}

/// The block-scaled tile (4 rows × 8 columns) on `sdot`, i8 · i8: 4-bit values are i8 as they
/// are; 8-bit ones go as `u − 128` (the top bit flipped), with `128 · Σq` added back in the
/// zero points' term. Per block, the exact i32 sums start at that term, then are converted
/// and scaled into f32 sums, multiply then add, as the default tile does: the same bits.
#[target_feature(enable = "neon,dotprod")]
unsafe fn block_tile_sdot<const R: usize>(a: super::BlockRows, w: super::BlockPanel, k4: usize, blocks: usize, acc: *mut f32) {
    let (q, lda, block_bytes) = (a.q.as_ptr().cast::<u8>(), a.stride, w.block_bytes(k4, 8));
    let (low, flip) = (vdupq_n_u8(15), vdupq_n_u8(0x80));
    let shift = if w.four_bit { 0 } else { 128 };
    let mut sums = [[vdupq_n_f32(0.0); 2]; R];
    for blk in 0..blocks {
        // Safety (every access): check_block_tile proved `blocks` blocks of the panel, 8 zero
        // points and scales per block, R rows of `blocks·4·k4` values with their sums and
        // scales, and R rows of 8 in acc.
        let panel = unsafe { w.values.as_ptr().add(blk * block_bytes) };
        let mut c: [[int32x4_t; 2]; R] = std::array::from_fn(|r| {
            let q_sum = a.sums[r * a.blocks_stride + blk];
            let term: [i32; 8] = std::array::from_fn(|j| q_sum.wrapping_mul(shift - w.zeros.at(8 * blk + j) as i32));
            // Safety: term holds 8 values.
            unsafe { [vld1q_s32(term.as_ptr()), vld1q_s32(term.as_ptr().add(4))] }
        });
        let row = |r: usize, g: usize| vreinterpretq_s8_u32(vdupq_n_u32(unsafe { group(q, r * lda + 4 * (blk * k4 + g)) }));
        if w.four_bit {
            for t in (0..k4).step_by(2) {
                // Groups t and t + 1 share one 32-byte group of nibbles.
                let b = unsafe { [vld1q_u8(panel.add(16 * t)), vld1q_u8(panel.add(16 * t + 16))] };
                let (even, odd) = (b.map(|b| vreinterpretq_s8_u8(vandq_u8(b, low))), b.map(|b| vreinterpretq_s8_u8(vshrq_n_u8::<4>(b))));
                for (r, c) in c.iter_mut().enumerate() {
                    let (a_even, a_odd) = (row(r, t), row(r, t + 1));
                    for h in 0..2 {
                        sdot(&mut c[h], even[h], a_even);
                        sdot(&mut c[h], odd[h], a_odd);
                    }
                }
            }
        } else {
            for g in 0..k4 {
                let b = unsafe { [vld1q_u8(panel.add(32 * g)), vld1q_u8(panel.add(32 * g + 16))] }
                    .map(|b| vreinterpretq_s8_u8(veorq_u8(b, flip)));
                for (r, c) in c.iter_mut().enumerate() {
                    let av = row(r, g);
                    sdot(&mut c[0], b[0], av);
                    sdot(&mut c[1], b[1], av);
                }
            }
        }
        let scales: [f32; 8] = std::array::from_fn(|j| w.scales.at(8 * blk + j));
        // Safety: scales holds 8 values.
        let w_scale = unsafe { [vld1q_f32(scales.as_ptr()), vld1q_f32(scales.as_ptr().add(4))] };
        for (r, (sums, c)) in sums.iter_mut().zip(&c).enumerate() {
            let a_scale = vdupq_n_f32(a.scales[r * a.blocks_stride + blk]);
            for h in 0..2 {
                sums[h] = vaddq_f32(sums[h], vmulq_f32(vcvtq_f32_s32(c[h]), vmulq_f32(a_scale, w_scale[h])));
            }
        }
    }
    for (r, sums) in sums.iter().enumerate() {
        // Safety: acc holds R rows of 8.
        unsafe {
            vst1q_f32(acc.add(8 * r), sums[0]);
            vst1q_f32(acc.add(8 * r + 4), sums[1]);
        }
    }
}

/// i8mm (ARMv8.6+, 8 columns × 8 rows): the matrix instruction `usmmla` multiplies a 2 × 8
/// block of u8 activations (two rows, 8 `k` values) by a 2 × 8 block of i8 weights (two
/// columns) into a 2 × 2 block of i32 sums, 32 MACs per instruction (twice `sdot`/`sudot`).
pub struct I8mm(());

impl I8mm {
    /// `Some` only on a CPU with the i8mm extension (and dotprod, which every such CPU has:
    /// the block-scaled tile is `sdot`'s).
    pub fn new() -> Option<I8mm> {
        (is_aarch64_feature_detected!("i8mm") && is_aarch64_feature_detected!("dotprod")).then_some(I8mm(()))
    }
}

impl_gemm_kernel!(
    I8mm,
    "aarch64-i8mm-gemm-u8i8",
    nr = 8,
    mr = 8,
    a_bias = 0,
    activation_bytes = 1,
    tile_usmmla,
    block_mr = 4,
    block_tile_sdot
);

/// The `usmmla` tile. Accumulator `c[p][q]` holds rows `2p, 2p + 1` × columns `2q, 2q + 1`
/// as `[r0·c0, r0·c1, r1·c0, r1·c1]`. Two of the panel's groups of 4 `k` values become one
/// group of 8 by `zip1`/`zip2` on 32-bit lanes (column `j` of both groups side by side); two
/// activation rows' 16 bytes become two such groups by `zip1`/`zip2` on 64-bit lanes. The
/// main loop takes 16 `k` values; the tail 8, or a last odd group paired with zeros. A
/// missing last row is zeros.
#[target_feature(enable = "neon,i8mm")]
unsafe fn tile_usmmla<const R: usize>(a: *const u8, lda: usize, panel: *const i8, k4: usize, init: *const i32, acc: *mut i32) {
    let pairs = R.div_ceil(2);
    let mut c = [[vdupq_n_s32(0); 4]; 4];
    for q in 0..4 {
        // Safety: init holds 8 values.
        let columns = unsafe { vld1_s32(init.add(2 * q)) };
        for c in c.iter_mut().take(pairs) {
            c[q] = vcombine_s32(columns, columns);
        }
    }
    // Groups g and g + 1 (zeros for the second when `second` is false) as the four column
    // pairs' 8 `k` values.
    let weights = |g: usize, second: bool| {
        let half = |h: usize| {
            // Safety: the panel holds k4 groups of 32 bytes, g + 1 < k4 when `second`.
            let (first, next) = unsafe {
                let first = vreinterpretq_u32_s8(vld1q_s8(panel.add(32 * g + 16 * h)));
                (first, if second { vreinterpretq_u32_s8(vld1q_s8(panel.add(32 * (g + 1) + 16 * h))) } else { vdupq_n_u32(0) })
            };
            [vzip1q_u32(first, next), vzip2q_u32(first, next)].map(|v| vreinterpretq_s8_u32(v))
        };
        let ([b0, b1], [b2, b3]) = (half(0), half(1));
        [b0, b1, b2, b3]
    };
    let mut g = 0;
    while g + 4 <= k4 {
        let (low, high) = (weights(g, true), weights(g + 2, true));
        for (p, c) in c.iter_mut().enumerate().take(pairs) {
            // Safety: row r holds 4·k4 bytes, so 16 from group g when g + 4 ≤ k4.
            let row = |r: usize| if r < R { unsafe { vreinterpretq_u64_u8(vld1q_u8(a.add(r * lda + 4 * g))) } } else { vdupq_n_u64(0) };
            let (r0, r1) = (row(2 * p), row(2 * p + 1));
            // Safety: this function's features.
            unsafe {
                usmmla_columns(c, vreinterpretq_u8_u64(vzip1q_u64(r0, r1)), &low);
                usmmla_columns(c, vreinterpretq_u8_u64(vzip2q_u64(r0, r1)), &high);
            }
        }
        g += 4;
    }
    while g < k4 {
        let whole = g + 2 <= k4;
        let b = weights(g, whole);
        // Row r's 8 (or, for a last odd group, 4) activations from group g; 0 past R.
        let row = |r: usize| -> u64 {
            match (r < R, whole) {
                // Safety: row r holds 4·k4 bytes, so 8 from group g when g + 2 ≤ k4.
                (true, true) => unsafe { a.add(r * lda + 4 * g).cast::<u64>().read_unaligned() },
                // Safety: as above, 4 bytes from group g < k4.
                (true, false) => unsafe { group(a, r * lda + 4 * g) as u64 },
                (false, _) => 0,
            }
        };
        for (p, c) in c.iter_mut().enumerate().take(pairs) {
            // Safety: this function's features.
            unsafe { usmmla_columns(c, vcombine_u8(vcreate_u8(row(2 * p)), vcreate_u8(row(2 * p + 1))), &b) };
        }
        g += 2;
    }
    for (p, c) in c.iter().enumerate().take(pairs) {
        let [c01, c23, c45, c67] = c.map(|v| vreinterpretq_s64_s32(v));
        for (r, half) in [(2 * p, false), (2 * p + 1, true)] {
            if r >= R {
                break;
            }
            let take = |x, y| vreinterpretq_s32_s64(if half { vzip2q_s64(x, y) } else { vzip1q_s64(x, y) });
            // Safety: acc holds R rows of 8.
            unsafe {
                vst1q_s32(acc.add(8 * r), take(c01, c23));
                vst1q_s32(acc.add(8 * r + 4), take(c45, c67));
            }
        }
    }
}

/// `c[q] += a · b[q]ᵀ` for the four column pairs: two activation rows × 8 `k` values against
/// each pair's two columns.
#[target_feature(enable = "neon,i8mm")]
#[inline]
unsafe fn usmmla_columns(c: &mut [int32x4_t; 4], a: uint8x16_t, b: &[int8x16_t; 4]) {
    for (c, &b) in c.iter_mut().zip(b) {
        // Safety: the instruction exists under the features this function is compiled for.
        unsafe {
            asm!("usmmla {c:v}.4s, {a:v}.16b, {b:v}.16b", c = inout(vreg) *c, a = in(vreg) a, b = in(vreg) b, options(pure, nomem, nostack))
        };
    }
}
