//! Integer kernels. A kernel family is one trait; each ISA implements it in its own module,
//! proves its CPU features at construction (`new() -> Option<Self>`), and is tested against
//! the scalar reference by the shared table in `tests.rs`.
//!
//! Family [`DotU8I8`]: u8 activations · i8 weights, accumulated exactly in i32 — the inner
//! product of `MatMulInteger` and of quantized MatMul/Conv. Exactness matters: AVX2's
//! `vpmaddubsw` saturates at i16, so the AVX2 kernel widens to i16 first instead.
//!
//! ```
//! use distq_runtime::kernels::{best_dot_u8i8, reference::Reference, DotU8I8};
//! let (a, b) = ([255u8; 40], [-128i8; 80]);
//! let mut fast = [0i32; 2];
//! let mut exact = [0i32; 2];
//! best_dot_u8i8().dot_rows(&a, &b, &mut fast);
//! Reference.dot_rows(&a, &b, &mut exact);
//! assert_eq!(fast, exact);
//! assert_eq!(exact[0], 40 * 255 * -128);
//! ```

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod reference;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use std::sync::OnceLock;

/// Longest `k` for which Σ u8·i8 cannot overflow i32 (255 · 128 · k < 2^31).
pub const MAX_DOT_LEN: usize = 65_793;

/// Dot products of one u8 row with several i8 rows.
pub trait DotU8I8: Send + Sync {
    /// Kernel name, `isa-family` (e.g. `x86-avx512vnni-dot-u8i8`).
    fn name(&self) -> &'static str;

    /// `out[j] = Σ_i a[i] · b[j·k + i]` with `k = a.len()` and `out.len()` rows in `b`.
    /// Exact for `k ≤ MAX_DOT_LEN`.
    ///
    /// # Panics
    /// When `b.len() != out.len() · a.len()`.
    fn dot_rows(&self, a: &[u8], b: &[i8], out: &mut [i32]);
}

/// Applies a single-row `dot` to each row of `b` (the shared body of the simple kernels).
pub(crate) fn dot_each_row(a: &[u8], b: &[i8], out: &mut [i32], dot: impl Fn(&[u8], &[i8]) -> i32) {
    let k = a.len();
    assert_eq!(b.len(), out.len() * k, "dot_rows: b holds {} values, not {} rows of {k}", b.len(), out.len());
    if k == 0 {
        out.fill(0);
        return;
    }
    for (o, row) in out.iter_mut().zip(b.chunks_exact(k)) {
        *o = dot(a, row);
    }
}

/// Every u8·i8 dot kernel this CPU can run, best first; the reference is always last.
pub fn dot_u8i8_kernels() -> Vec<Box<dyn DotU8I8>> {
    let mut v: Vec<Box<dyn DotU8I8>> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(k) = x86::Avx512Vnni::new() {
            v.push(Box::new(k));
        }
        if let Some(k) = x86::Avx2::new() {
            v.push(Box::new(k));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if let Some(k) = aarch64::I8mm::new() {
            v.push(Box::new(k));
        }
        if let Some(k) = aarch64::DotProd::new() {
            v.push(Box::new(k));
        }
        if let Some(k) = aarch64::Neon::new() {
            v.push(Box::new(k));
        }
    }
    v.push(Box::new(reference::Reference));
    v
}

/// The kernel used by the ops: the best this CPU runs, probed once, unless
/// `DISTQ_KERNEL=<name>` picks another (for tests and benches; an unknown or unsupported
/// name falls back to the best, with a message on stderr).
pub fn best_dot_u8i8() -> &'static dyn DotU8I8 {
    static BEST: OnceLock<Box<dyn DotU8I8>> = OnceLock::new();
    BEST.get_or_init(|| {
        let mut all = dot_u8i8_kernels();
        if let Ok(want) = std::env::var("DISTQ_KERNEL") {
            match all.iter().position(|k| k.name() == want) {
                Some(i) => return all.swap_remove(i),
                None => eprintln!("distq: DISTQ_KERNEL={want} is not available here; using {}", all[0].name()),
            }
        }
        all.swap_remove(0)
    })
    .as_ref()
}

/// i8 weights laid out for the dot kernels: one row of `k` values per output column, with
/// each row's sum and zero point (prepared once per weight tensor).
pub struct PackedI8 {
    /// `cols × k`, row-major.
    pub rows: Vec<i8>,
    /// Σ of each row (for the activation zero-point correction).
    pub sums: Vec<i32>,
    /// Zero point of each column.
    pub zeros: Vec<i8>,
    /// Reduction length.
    pub k: usize,
}

impl PackedI8 {
    /// Packs column-major weights given as `cols` rows of `k` values.
    ///
    /// # Panics
    /// When `rows.len() != zeros.len() · k`.
    pub fn new(rows: Vec<i8>, zeros: Vec<i8>, k: usize) -> PackedI8 {
        assert_eq!(rows.len(), zeros.len() * k, "packed weights shape");
        let sums = if k == 0 { vec![0; zeros.len()] } else { rows.chunks_exact(k).map(|r| r.iter().map(|&v| v as i32).sum()).collect() };
        PackedI8 { rows, sums, zeros, k }
    }

    /// Number of output columns.
    pub fn cols(&self) -> usize {
        self.zeros.len()
    }
}

/// `c[m, n] = Σ_k (a[m, k] − a_zero) · (b[n, k] − b.zeros[n])` for u8 activations `a`
/// (`rows × b.k`, row-major), exact in i32 (wrapping past it, as the hardware does).
pub fn gemm_u8i8(kernel: &dyn DotU8I8, a: &[u8], a_zero: u8, b: &PackedI8, c: &mut [i32]) {
    let (k, cols) = (b.k, b.cols());
    assert!(c.len() * k == a.len() * cols, "gemm_u8i8 shapes");
    let mut part = vec![0i32; cols];
    for (row, c_row) in a.chunks_exact(k.max(1)).zip(c.chunks_exact_mut(cols.max(1))) {
        let a_sum: i32 = row.iter().map(|&v| v as i32).sum();
        c_row.fill(0);
        // Split k so that each kernel call stays exact.
        let mut start = 0;
        while start < k {
            let end = (start + MAX_DOT_LEN).min(k);
            let slab: Vec<i8>;
            let b_slab: &[i8] = if start == 0 && end == k {
                &b.rows
            } else {
                slab = b.rows.chunks_exact(k).flat_map(|r| r[start..end].iter().copied()).collect();
                &slab
            };
            kernel.dot_rows(&row[start..end], b_slab, &mut part);
            c_row.iter_mut().zip(&part).for_each(|(c, &p)| *c = c.wrapping_add(p));
            start = end;
        }
        let (za, kk) = (a_zero as i32, k as i32);
        for ((c, &zb), &b_sum) in c_row.iter_mut().zip(&b.zeros).zip(&b.sums) {
            let zb = zb as i32;
            // Σ(a−za)(b−zb) = Σab − za·Σb − zb·Σa + k·za·zb
            *c = c
                .wrapping_sub(za.wrapping_mul(b_sum))
                .wrapping_sub(zb.wrapping_mul(a_sum))
                .wrapping_add(kk.wrapping_mul(za).wrapping_mul(zb));
        }
    }
}
