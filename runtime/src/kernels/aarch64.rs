//! aarch64 kernels: plain NEON (`smlal` on i16-widened values), dotprod (`sdot`) and i8mm
//! (`usdot`). `sdot`/`usdot` intrinsics are not stable Rust, so those two use `asm!` inside
//! functions compiled for the feature.

use super::{DotU8I8, dot_each_row};
use std::arch::aarch64::*;
use std::arch::asm;
use std::arch::is_aarch64_feature_detected;

fn tail(a: &[u8], b: &[i8], from: usize, total: i32) -> i32 {
    a[from..].iter().zip(&b[from..]).fold(total, |acc, (&x, &w)| acc.wrapping_add(x as i32 * w as i32))
}

/// Plain NEON (every aarch64 CPU): widen to i16, multiply-accumulate long into i32.
pub struct Neon(());

impl Neon {
    /// `Some` on every aarch64 CPU with NEON (all of them in practice).
    pub fn new() -> Option<Neon> {
        is_aarch64_feature_detected!("neon").then_some(Neon(()))
    }
}

impl DotU8I8 for Neon {
    fn name(&self) -> &'static str {
        "aarch64-neon-dot-u8i8"
    }

    fn dot_rows(&self, a: &[u8], b: &[i8], out: &mut [i32]) {
        // Safety: constructing `Neon` proved the feature; loads stay in bounds.
        dot_each_row(a, b, out, |a, b| unsafe { dot_neon(a, b) })
    }
}

#[target_feature(enable = "neon")]
fn dot_neon(a: &[u8], b: &[i8]) -> i32 {
    let n = a.len();
    let mut acc = vdupq_n_s32(0);
    let mut i = 0;
    while i + 16 <= n {
        // Safety: i + 16 ≤ len for both slices.
        let (va, vb) = unsafe { (vld1q_u8(a.as_ptr().add(i)), vld1q_s8(b.as_ptr().add(i))) };
        let (a_lo, a_hi) = (vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(va))), vreinterpretq_s16_u16(vmovl_high_u8(va)));
        let (b_lo, b_hi) = (vmovl_s8(vget_low_s8(vb)), vmovl_high_s8(vb));
        acc = vmlal_s16(acc, vget_low_s16(a_lo), vget_low_s16(b_lo));
        acc = vmlal_high_s16(acc, a_lo, b_lo);
        acc = vmlal_s16(acc, vget_low_s16(a_hi), vget_low_s16(b_hi));
        acc = vmlal_high_s16(acc, a_hi, b_hi);
        i += 16;
    }
    tail(a, b, i, vaddvq_s32(acc))
}

/// dotprod (ARMv8.2+): `sdot` is i8·i8, so activations are shifted to i8 (a − 128) and the
/// shift is added back as 128·Σb, with Σb from a second `sdot` against ones.
pub struct DotProd(());

impl DotProd {
    /// `Some` only on a CPU with the dotprod extension.
    pub fn new() -> Option<DotProd> {
        is_aarch64_feature_detected!("dotprod").then_some(DotProd(()))
    }
}

impl DotU8I8 for DotProd {
    fn name(&self) -> &'static str {
        "aarch64-dotprod-dot-u8i8"
    }

    fn dot_rows(&self, a: &[u8], b: &[i8], out: &mut [i32]) {
        // Safety: constructing `DotProd` proved the feature; loads stay in bounds.
        dot_each_row(a, b, out, |a, b| unsafe { dot_sdot(a, b) })
    }
}

#[target_feature(enable = "neon,dotprod")]
fn dot_sdot(a: &[u8], b: &[i8]) -> i32 {
    let n = a.len();
    let mut acc = vdupq_n_s32(0);
    let mut b_sum = vdupq_n_s32(0);
    let (flip, ones) = (vdupq_n_u8(0x80), vdupq_n_s8(1));
    let mut i = 0;
    while i + 16 <= n {
        // Safety: i + 16 ≤ len for both slices.
        let (va, vb) = unsafe { (vld1q_u8(a.as_ptr().add(i)), vld1q_s8(b.as_ptr().add(i))) };
        let shifted = vreinterpretq_s8_u8(veorq_u8(va, flip));
        // Safety: `sdot` exists under the dotprod feature this function is compiled for.
        unsafe {
            asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) shifted, b = in(vreg) vb, options(pure, nomem, nostack));
            asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) b_sum, a = in(vreg) ones, b = in(vreg) vb, options(pure, nomem, nostack));
        }
        i += 16;
    }
    let total = vaddvq_s32(acc).wrapping_add(vaddvq_s32(b_sum).wrapping_mul(128));
    tail(a, b, i, total)
}

/// i8mm (ARMv8.6+): `usdot` multiplies u8 by i8 directly.
pub struct I8mm(());

impl I8mm {
    /// `Some` only on a CPU with the i8mm extension.
    pub fn new() -> Option<I8mm> {
        is_aarch64_feature_detected!("i8mm").then_some(I8mm(()))
    }
}

impl DotU8I8 for I8mm {
    fn name(&self) -> &'static str {
        "aarch64-i8mm-dot-u8i8"
    }

    fn dot_rows(&self, a: &[u8], b: &[i8], out: &mut [i32]) {
        // Safety: constructing `I8mm` proved the feature; loads stay in bounds.
        dot_each_row(a, b, out, |a, b| unsafe { dot_usdot(a, b) })
    }
}

#[target_feature(enable = "neon,i8mm")]
fn dot_usdot(a: &[u8], b: &[i8]) -> i32 {
    let n = a.len();
    let mut acc = vdupq_n_s32(0);
    let mut i = 0;
    while i + 16 <= n {
        // Safety: i + 16 ≤ len for both slices.
        let (va, vb) = unsafe { (vld1q_u8(a.as_ptr().add(i)), vld1q_s8(b.as_ptr().add(i))) };
        // Safety: `usdot` exists under the i8mm feature this function is compiled for.
        unsafe {
            asm!("usdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) acc, a = in(vreg) va, b = in(vreg) vb, options(pure, nomem, nostack));
        }
        i += 16;
    }
    tail(a, b, i, vaddvq_s32(acc))
}
