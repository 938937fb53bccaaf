//! x86-64 f32 tiles: AVX-512F (32 columns × 8 rows, 16 zmm accumulators) and AVX2 + FMA
//! (16 columns × 6 rows, 12 ymm accumulators, the classic Haswell shape). Per `k`: one
//! contiguous panel load per vector of columns, one broadcast per row, fused multiply-adds.

use super::impl_gemm_f32;
use std::arch::x86_64::*;

/// AVX-512F: 2 panel loads and 8 broadcasts per 16 `vfmadd231ps`.
pub struct Avx512F(());

impl Avx512F {
    /// `Some` only on a CPU with AVX-512F.
    pub fn new() -> Option<Avx512F> {
        is_x86_feature_detected!("avx512f").then_some(Avx512F(()))
    }
}

impl_gemm_f32!(Avx512F, "x86-avx512f-gemm-f32", nr = 32, mr = 8, tile_avx512f);

#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512f<const R: usize>(a: *const f32, rs: usize, cs: usize, k: usize, panel: *const f32, out: *mut f32, ldc: usize) {
    let mut c = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..k {
        // Safety (every access): the caller checked R rows of k values through the strides,
        // a panel of k × 32 and R rows of 32 in out, ldc apart.
        let b = unsafe { [_mm512_loadu_ps(panel.add(32 * p)), _mm512_loadu_ps(panel.add(32 * p + 16))] };
        for (r, c) in c.iter_mut().enumerate() {
            let av = _mm512_set1_ps(unsafe { *a.add(r * rs + p * cs) });
            c[0] = _mm512_fmadd_ps(av, b[0], c[0]);
            c[1] = _mm512_fmadd_ps(av, b[1], c[1]);
        }
    }
    for (r, c) in c.iter().enumerate() {
        unsafe {
            _mm512_storeu_ps(out.add(ldc * r), c[0]);
            _mm512_storeu_ps(out.add(ldc * r + 16), c[1]);
        }
    }
}

/// AVX2 + FMA: 2 panel loads and 6 broadcasts per 12 `vfmadd231ps`.
pub struct Avx2Fma(());

impl Avx2Fma {
    /// `Some` only on a CPU with AVX2 and FMA.
    pub fn new() -> Option<Avx2Fma> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2Fma(()))
    }
}

impl_gemm_f32!(Avx2Fma, "x86-avx2fma-gemm-f32", nr = 16, mr = 6, tile_avx2fma);

#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2fma<const R: usize>(a: *const f32, rs: usize, cs: usize, k: usize, panel: *const f32, out: *mut f32, ldc: usize) {
    let mut c = [[_mm256_setzero_ps(); 2]; R];
    for p in 0..k {
        // Safety (every access): as in `tile_avx512f`, with panels of 16 columns.
        let b = unsafe { [_mm256_loadu_ps(panel.add(16 * p)), _mm256_loadu_ps(panel.add(16 * p + 8))] };
        for (r, c) in c.iter_mut().enumerate() {
            let av = _mm256_set1_ps(unsafe { *a.add(r * rs + p * cs) });
            c[0] = _mm256_fmadd_ps(av, b[0], c[0]);
            c[1] = _mm256_fmadd_ps(av, b[1], c[1]);
        }
    }
    for (r, c) in c.iter().enumerate() {
        unsafe {
            _mm256_storeu_ps(out.add(ldc * r), c[0]);
            _mm256_storeu_ps(out.add(ldc * r + 8), c[1]);
        }
    }
}
