//! aarch64 f32 tile: NEON FMA (16 columns = four q registers × 4 rows, 16 accumulators):
//! per `k`, 4 panel loads and 4 broadcasts per 16 `fmla`.

use super::impl_gemm_f32;
use std::arch::aarch64::*;
use std::arch::is_aarch64_feature_detected;

/// NEON with fused multiply-add (every aarch64 CPU).
pub struct NeonFma(());

impl NeonFma {
    /// `Some` on every aarch64 CPU with NEON (all of them in practice).
    pub fn new() -> Option<NeonFma> {
        is_aarch64_feature_detected!("neon").then_some(NeonFma(()))
    }
}

impl_gemm_f32!(NeonFma, "aarch64-neon-gemm-f32", nr = 16, mr = 4, tile_neon);

#[target_feature(enable = "neon")]
unsafe fn tile_neon<const R: usize>(a: *const f32, rs: usize, cs: usize, k: usize, panel: *const f32, out: *mut f32, ldc: usize) {
    let mut c = [[vdupq_n_f32(0.0); 4]; R];
    for p in 0..k {
        // Safety (every access): the caller checked R rows of k values through the strides,
        // a panel of k × 16 and R rows of 16 in out, ldc apart.
        let b = unsafe {
            [
                vld1q_f32(panel.add(16 * p)),
                vld1q_f32(panel.add(16 * p + 4)),
                vld1q_f32(panel.add(16 * p + 8)),
                vld1q_f32(panel.add(16 * p + 12)),
            ]
        };
        for (r, c) in c.iter_mut().enumerate() {
            let av = vdupq_n_f32(unsafe { *a.add(r * rs + p * cs) });
            for (c, &b) in c.iter_mut().zip(&b) {
                *c = vfmaq_f32(*c, b, av);
            }
        }
    }
    for (r, c) in c.iter().enumerate() {
        for (v, &c) in c.iter().enumerate() {
            unsafe { vst1q_f32(out.add(ldc * r + 4 * v), c) };
        }
    }
}
