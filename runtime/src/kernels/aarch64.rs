//! aarch64 GEMM tiles (8 columns = two q registers of 4 lanes): plain NEON (i16 widening +
//! `smull`), dotprod (`sdot` by element) and i8mm (`sudot` by element). `sdot`/`sudot` have
//! no stable intrinsics, so those two use `asm!` inside functions compiled for the feature.
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

impl_gemm_kernel!(Neon, "aarch64-neon-gemm-u8i8", nr = 8, mr = 4, a_bias = 0, tile_neon);

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
impl_gemm_kernel!(DotProd, "aarch64-dotprod-gemm-u8i8", nr = 8, mr = 8, a_bias = 128, tile_sdot);

/// i8mm (ARMv8.6+, 8 columns × 8 rows): `sudot` multiplies i8 weights by u8 activations
/// directly.
pub struct I8mm(());

impl I8mm {
    /// `Some` only on a CPU with the i8mm extension.
    pub fn new() -> Option<I8mm> {
        is_aarch64_feature_detected!("i8mm").then_some(I8mm(()))
    }
}

lane_dot_tile!(tile_sudot, "neon,i8mm", "sudot", 0);
impl_gemm_kernel!(I8mm, "aarch64-i8mm-gemm-u8i8", nr = 8, mr = 8, a_bias = 0, tile_sudot);
