//! x86-64 kernels: AVX2 (exact i16 widening + `vpmaddwd`) and AVX-512 VNNI (`vpdpbusd`).

use super::{DotU8I8, dot_each_row};
use std::arch::x86_64::*;

/// AVX2: u8 and i8 widened to i16, multiplied pairwise into i32 (`vpmaddwd`). Exact, unlike
/// `vpmaddubsw`, which saturates pairs at i16.
pub struct Avx2(());

impl Avx2 {
    /// `Some` only on a CPU with AVX2.
    pub fn new() -> Option<Avx2> {
        is_x86_feature_detected!("avx2").then_some(Avx2(()))
    }
}

impl DotU8I8 for Avx2 {
    fn name(&self) -> &'static str {
        "x86-avx2-dot-u8i8"
    }

    fn dot_rows(&self, a: &[u8], b: &[i8], out: &mut [i32]) {
        // Safety: constructing `Avx2` proved the CPU has AVX2; the loads stay in the slices.
        dot_each_row(a, b, out, |a, row| unsafe { dot_avx2(a, row) });
    }
}

#[target_feature(enable = "avx2")]
fn dot_avx2(a: &[u8], b: &[i8]) -> i32 {
    let n = a.len();
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i + 16 <= n {
        // Safety: i + 16 ≤ len for both slices.
        let (va, vb) =
            unsafe { (_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i), _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i)) };
        let prod = _mm256_madd_epi16(_mm256_cvtepu8_epi16(va), _mm256_cvtepi8_epi16(vb));
        acc = _mm256_add_epi32(acc, prod);
        i += 16;
    }
    let sum128 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
    let sum64 = _mm_add_epi32(sum128, _mm_shuffle_epi32::<0b01_00_11_10>(sum128));
    let sum32 = _mm_add_epi32(sum64, _mm_shuffle_epi32::<0b10_11_00_01>(sum64));
    let mut total = _mm_cvtsi128_si32(sum32);
    while i < n {
        total = total.wrapping_add(a[i] as i32 * b[i] as i32);
        i += 1;
    }
    total
}

/// AVX-512 VNNI: `vpdpbusd` multiplies 4 u8·i8 pairs into each i32 lane without saturation;
/// the tail uses masked loads.
pub struct Avx512Vnni(());

impl Avx512Vnni {
    /// `Some` only on a CPU with AVX-512 F/BW and VNNI.
    pub fn new() -> Option<Avx512Vnni> {
        (is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni"))
            .then_some(Avx512Vnni(()))
    }
}

impl DotU8I8 for Avx512Vnni {
    fn name(&self) -> &'static str {
        "x86-avx512vnni-dot-u8i8"
    }

    fn dot_rows(&self, a: &[u8], b: &[i8], out: &mut [i32]) {
        let k = a.len();
        assert_eq!(b.len(), out.len() * k, "dot_rows shapes");
        if k == 0 {
            out.fill(0);
            return;
        }
        // Four weight rows per pass share each activation load and keep four independent
        // accumulators in flight.
        let mut outs = out.chunks_exact_mut(4);
        let mut rows = b.chunks_exact(4 * k);
        for (o, quad) in (&mut outs).zip(&mut rows) {
            // Safety: constructing `Avx512Vnni` proved the features; loads are in bounds or
            // masked to the slices' ends.
            o.copy_from_slice(&unsafe { dot4_vnni(a, quad) });
        }
        // Safety: as above.
        dot_each_row(a, rows.remainder(), outs.into_remainder(), |a, row| unsafe { dot_vnni(a, row) });
    }
}

/// Four dot products of `a` with the consecutive rows of `b` (`4 · a.len()` values).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot4_vnni(a: &[u8], b: &[i8]) -> [i32; 4] {
    let n = a.len();
    let r: [&[i8]; 4] = [&b[..n], &b[n..2 * n], &b[2 * n..3 * n], &b[3 * n..4 * n]];
    let mut acc = [_mm512_setzero_si512(); 4];
    let mut i = 0;
    while i < n {
        let mask: __mmask64 = if n - i >= 64 { u64::MAX } else { (1u64 << (n - i)) - 1 };
        // Safety: masked loads read only the first n − i bytes from offset i.
        let va = unsafe { _mm512_maskz_loadu_epi8(mask, a.as_ptr().add(i) as *const i8) };
        for j in 0..4 {
            // Safety: as above, on row j.
            let vb = unsafe { _mm512_maskz_loadu_epi8(mask, r[j].as_ptr().add(i)) };
            acc[j] = _mm512_dpbusd_epi32(acc[j], va, vb);
        }
        i += 64;
    }
    acc.map(|v| _mm512_reduce_add_epi32(v))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn dot_vnni(a: &[u8], b: &[i8]) -> i32 {
    let n = a.len();
    let mut acc = _mm512_setzero_si512();
    let mut i = 0;
    while i + 64 <= n {
        // Safety: i + 64 ≤ len for both slices.
        let (va, vb) = unsafe { (_mm512_loadu_si512(a.as_ptr().add(i) as *const _), _mm512_loadu_si512(b.as_ptr().add(i) as *const _)) };
        acc = _mm512_dpbusd_epi32(acc, va, vb);
        i += 64;
    }
    if i < n {
        let mask: __mmask64 = (1u64 << (n - i)) - 1;
        // Safety: masked-off bytes are not read.
        let (va, vb) =
            unsafe { (_mm512_maskz_loadu_epi8(mask, a.as_ptr().add(i) as *const i8), _mm512_maskz_loadu_epi8(mask, b.as_ptr().add(i))) };
        acc = _mm512_dpbusd_epi32(acc, va, vb);
    }
    _mm512_reduce_add_epi32(acc)
}
