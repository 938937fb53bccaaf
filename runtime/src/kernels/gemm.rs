//! The u8·i8 GEMM driver: weights packed once into a kernel's panels, activations padded to
//! whole groups of 4 (only when `k` is not a multiple of 4), tiles run panel by panel (a
//! panel stays in L1 while the activation rows stream past it), zero points applied per tile
//! before an epilogue writes the output.

use super::{GemmU8I8, TileRows, kernel_rows, row_block};
use std::borrow::Cow;

/// i8 weights packed for one kernel: panels of `nr` columns in groups of 4 `k` values
/// (`[k/4][nr][4]`, zero-padded), with each column's sum and zero point.
pub struct PackedI8 {
    panels: Vec<i8>,
    kernel: &'static str,
    nr: usize,
    k: usize,
    sums: Vec<i32>,
    zeros: Vec<i8>,
}

impl PackedI8 {
    /// Packs `b`, `k × n` row-major as MatMul stores weights, with one zero point per column
    /// (`n = zeros.len()`).
    ///
    /// # Panics
    /// When `b.len() != k · zeros.len()`.
    pub fn new(kernel: &dyn GemmU8I8, b: &[i8], k: usize, zeros: Vec<i8>) -> PackedI8 {
        let n = zeros.len();
        assert_eq!(b.len(), k * n, "PackedI8::new: b holds {} values, not {k} × {n}", b.len());
        PackedI8::from_fn(kernel, k, zeros, |p, j| b[p * n + j])
    }

    /// Packs the weights `get(p, j)` for `p < k`, `j < zeros.len()` (lets callers convert
    /// u8 or 4-bit weights on the way in, without an intermediate copy).
    pub fn from_fn(kernel: &dyn GemmU8I8, k: usize, zeros: Vec<i8>, get: impl Fn(usize, usize) -> i8) -> PackedI8 {
        let (n, nr, k4) = (zeros.len(), kernel.nr(), k.div_ceil(4));
        let mut panels = vec![0i8; n.div_ceil(nr) * k4 * nr * 4];
        let mut sums = vec![0i32; n];
        for (j, sum) in sums.iter_mut().enumerate() {
            let base = j / nr * k4 * nr * 4 + j % nr * 4;
            for p in 0..k {
                let v = get(p, j);
                panels[base + p / 4 * nr * 4 + p % 4] = v;
                *sum += v as i32;
            }
        }
        PackedI8 { panels, kernel: kernel.name(), nr, k, sums, zeros }
    }

    /// Reduction length.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of output columns.
    pub fn cols(&self) -> usize {
        self.zeros.len()
    }
}

/// `c[m, n] = Σ_k (a[m, k] − a_zero) · (b[k, n] − b.zeros[n])` for u8 activations `a`
/// (`m × k`, row-major), exact in i32 (wrapping past it, as the hardware does).
///
/// # Panics
/// When `b` was packed for another kernel or the slice lengths do not match the shapes.
pub fn gemm_u8i8(kernel: &dyn GemmU8I8, a: &[u8], a_zero: u8, b: &PackedI8, c: &mut [i32]) {
    gemm_u8i8_with(kernel, a, a_zero, b, c, |_, _, acc, out| out.copy_from_slice(acc));
}

/// [`gemm_u8i8`] with an epilogue: `epilogue(row, col0, values, out)` receives the exact i32
/// results of `row`, columns `col0..col0 + values.len()`, and writes them into `out`, the same
/// span of `c` (fused requantization, scales, bias, activations). Rows are split among the
/// run's threads (see `threads.rs`); each row's result is the same for any thread count.
pub fn gemm_u8i8_with<T: Send>(
    kernel: &dyn GemmU8I8,
    a: &[u8],
    a_zero: u8,
    b: &PackedI8,
    c: &mut [T],
    epilogue: impl Fn(usize, usize, &[i32], &mut [T]) + Sync,
) {
    assert_eq!(kernel.name(), b.kernel, "weights packed for {} used with {}", b.kernel, kernel.name());
    let (k, n, nr) = (b.k, b.cols(), b.nr);
    if n == 0 {
        return;
    }
    let m = c.len() / n;
    assert!(c.len() == m * n && a.len() == m * k, "gemm_u8i8: a holds {} values, c {}, for k = {k}, n = {n}", a.len(), c.len());
    let lda = 4 * k.div_ceil(4);
    let a: Cow<[u8]> = if lda == k {
        Cow::Borrowed(a)
    } else {
        let mut padded = vec![0u8; m * lda];
        for (dst, src) in padded.chunks_exact_mut(lda).zip(a.chunks_exact(k.max(1))) {
            dst[..k].copy_from_slice(src);
        }
        Cow::Owned(padded)
    };
    // Σ(a − za)(b − zb) = tile + (a_bias − za)·Σb − zb·Σa + k·za·zb, where tile = Σ(a − a_bias)·b.
    // The per-column terms start the kernel's accumulators (padded to whole panels); the
    // per-row term only exists for asymmetric weights.
    let za = a_zero as i32;
    let mut col_terms: Vec<i32> = (b.sums.iter().zip(&b.zeros))
        .map(|(&sum, &zb)| (kernel.a_bias() - za).wrapping_mul(sum).wrapping_add((k as i32).wrapping_mul(za).wrapping_mul(zb as i32)))
        .collect();
    col_terms.resize(n.div_ceil(nr) * nr, 0);
    let any_b_zero = b.zeros.iter().any(|&z| z != 0);
    let a_sums: Vec<i32> = (0..m).map(|r| if any_b_zero { a[r * lda..][..lda].iter().map(|&v| v as i32).sum() } else { 0 }).collect();
    let rows = Rows { a: &a, lda, a_sums: any_b_zero.then_some(&a_sums[..]) };
    crate::threads::for_row_ranges(c, n, kernel.mr(), m * n * k, |row0, c| tiles(kernel, &rows, row0, b, &col_terms, c, &epilogue));
}

/// The activation rows of one GEMM, padded to whole groups of 4, with their sums when the
/// weights have zero points.
struct Rows<'a> {
    a: &'a [u8],
    lda: usize,
    a_sums: Option<&'a [i32]>,
}

crate::simd::widest_fn! {
    /// Output rows `row0..` (`c`, whole rows) in blocks of rows prepared once for the kernel,
    /// each block panel by panel, tile by tile. Compiled for wide vectors too: the epilogue
    /// touches every output once per tile.
    fn tiles<T>(
        kernel: &dyn GemmU8I8,
        rows: &Rows,
        row0: usize,
        b: &PackedI8,
        col_terms: &[i32],
        c: &mut [T],
        epilogue: &(impl Fn(usize, usize, &[i32], &mut [T]) + Sync),
    ) {
        let (n, nr, mr, k4, lda) = (b.cols(), b.nr, kernel.mr(), b.k.div_ceil(4), rows.lda);
        let m = c.len() / n;
        let panel_len = k4 * nr * 4;
        let mut acc = vec![0i32; mr * nr];
        let (block, stride) = (row_block(mr, lda * kernel.activation_bytes(), n * size_of::<T>()), lda * kernel.activation_bytes());
        let mut wide = Vec::new();
        for block0 in (0..m).step_by(block) {
            let block_end = m.min(block0 + block);
            let a = kernel_rows(kernel.activation_bytes(), &rows.a[(row0 + block0) * lda..(row0 + block_end) * lda], &mut wide);
            for col0 in (0..n).step_by(nr) {
                let panel = &b.panels[col0 / nr * panel_len..][..panel_len];
                let cols = nr.min(n - col0);
                let (init, zeros) = (&col_terms[col0..col0 + nr], &b.zeros[col0..col0 + cols]);
                for tile_row in (block0..block_end).step_by(mr) {
                    let count = mr.min(block_end - tile_row);
                    let data = &a[(tile_row - block0) * stride..];
                    kernel.tile(TileRows { data, stride, count }, panel, k4, init, &mut acc);
                    for (r, values) in acc.chunks_exact_mut(nr).take(count).enumerate() {
                        let (row, values) = (tile_row + r, &mut values[..cols]);
                        if let Some(a_sums) = rows.a_sums {
                            let a_sum = a_sums[row0 + row];
                            for (v, &zb) in values.iter_mut().zip(zeros) {
                                *v = v.wrapping_sub((zb as i32).wrapping_mul(a_sum));
                            }
                        }
                        epilogue(row0 + row, col0, values, &mut c[row * n + col0..][..cols]);
                    }
                }
            }
        }
    }
}
