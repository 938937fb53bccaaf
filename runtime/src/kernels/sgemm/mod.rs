//! f32 GEMM kernels. Family [`GemmF32`]: the micro-kernel of `c = a · b` in f32, one tile of
//! up to `mr` rows of `a` against one panel of `nr` columns of `b`, packed as `[k][nr]` (a
//! contiguous vector load per `k`); `a` is read in place through any row and column strides,
//! one broadcast per value, so transposed or head-split operands (attention's `Q · Kᵀ`) are
//! never copied. Each ISA module proves its features at construction; `tests.rs` checks
//! every kernel against an f64 oracle. [`sgemm`] drives the tiles.
//!
//! ```
//! use distq_runtime::kernels::sgemm::{best_gemm_f32, sgemm, Matrix, PackedF32};
//! let kernel = best_gemm_f32();
//! let (a, b) = ([1f32, 2.0, 3.0, 4.0], [1f32, 0.0, 0.0, 1.0]);
//! let packed = PackedF32::new(kernel, Matrix::dense(&b, 2, 2));
//! let mut c = [0f32; 4];
//! sgemm(kernel, Matrix::dense(&a, 2, 2).t(), &packed, &mut c);
//! assert_eq!(c, [1.0, 3.0, 2.0, 4.0]);
//! ```

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
pub mod reference;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use std::sync::OnceLock;

/// A matrix read through strides: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct Matrix<'a> {
    /// The elements, from `(0, 0)`.
    pub data: &'a [f32],
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns.
    pub col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// A dense row-major `rows × cols` matrix.
    pub fn dense(data: &'a [f32], rows: usize, cols: usize) -> Matrix<'a> {
        Matrix { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The same elements read transposed.
    pub fn t(self) -> Matrix<'a> {
        Matrix { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Whether every element lies inside `data`.
    pub fn in_bounds(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// One f32 GEMM tile: `out[r·ldc + j] = Σ_{p < k} a[r, p] · panel[p·nr + j]` for the rows
/// `r` of `a` (at most `mr`) and `j < nr`, each sum in order of `p`.
pub trait GemmF32: Send + Sync {
    /// Kernel name, `isa-family` (e.g. `x86-avx512f-gemm-f32`).
    fn name(&self) -> &'static str;

    /// Columns per packed panel.
    fn nr(&self) -> usize;

    /// Most rows per tile.
    fn mr(&self) -> usize;

    /// Computes one tile (see the trait docs) into `out`, rows `ldc` apart; `a.cols` is `k`.
    ///
    /// # Panics
    /// When `a` is out of its bounds, has more than `mr` rows or none, or the panel and `out`
    /// are too short (see [`check_tile`]).
    fn tile(&self, a: Matrix, panel: &[f32], out: &mut [f32], ldc: usize);
}

/// The bounds every kernel checks before its unchecked loads.
pub fn check_tile<K: GemmF32 + ?Sized>(kernel: &K, a: Matrix, panel: &[f32], out: &[f32], ldc: usize) {
    let (name, nr) = (kernel.name(), kernel.nr());
    assert!((1..=kernel.mr()).contains(&a.rows), "{name}: {} rows in a tile of {}", a.rows, kernel.mr());
    assert!(a.in_bounds(), "{name}: activations out of bounds");
    assert_eq!(panel.len(), a.cols * nr, "{name}: panel size");
    assert!(ldc >= nr && out.len() >= (a.rows - 1) * ldc + nr, "{name}: output too short");
}

/// `b` (`k × n`) packed for one kernel: panels of `nr` columns, `[k][nr]`, zero-padded.
pub struct PackedF32 {
    panels: Vec<f32>,
    kernel: &'static str,
    nr: usize,
    k: usize,
    n: usize,
}

impl PackedF32 {
    /// Packs `b`.
    ///
    /// # Panics
    /// When `b` is out of its bounds.
    pub fn new(kernel: &dyn GemmF32, b: Matrix) -> PackedF32 {
        PackedF32::new_reporting(kernel, b, |_| {})
    }

    /// Packs `b`, calling `packed(columns)` after each panel's columns are packed (a caller
    /// whose columns are contiguous rows of a mapped file hands their pages back as it goes).
    ///
    /// # Panics
    /// When `b` is out of its bounds.
    pub fn new_reporting(kernel: &dyn GemmF32, b: Matrix, mut packed: impl FnMut(std::ops::Range<usize>)) -> PackedF32 {
        assert!(b.in_bounds(), "PackedF32: b out of bounds");
        let (k, n, nr) = (b.rows, b.cols, kernel.nr());
        let mut panels = vec![0f32; n.div_ceil(nr) * k * nr];
        for (panel, col0) in panels.chunks_exact_mut((k * nr).max(1)).zip((0..n).step_by(nr)) {
            let cols = nr.min(n - col0);
            if b.col_stride == 1 {
                // Rows contiguous (V, weights): a copy per row.
                for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                    row[..cols].copy_from_slice(&b.data[p * b.row_stride + col0..][..cols]);
                }
            } else {
                // Columns contiguous (Kᵀ): read each column in order.
                for j in 0..cols {
                    let column = &b.data[(col0 + j) * b.col_stride..];
                    for (p, v) in panel.iter_mut().skip(j).step_by(nr).enumerate() {
                        *v = column[p * b.row_stride];
                    }
                }
            }
            packed(col0..col0 + cols);
        }
        PackedF32 { panels, kernel: kernel.name(), nr, k, n }
    }

    /// Columns `col0..col0 + nr` (`col0` a multiple of `nr`): `[k][nr]`.
    fn panel(&self, col0: usize) -> &[f32] {
        let len = self.k * self.nr;
        &self.panels[col0 / self.nr * len..][..len]
    }
}

/// `c = a · b`, `c` dense row-major `a.rows × b.n`, rows split among the run's threads (each
/// row's result is the same for any thread count).
///
/// # Panics
/// When `b` was packed for another kernel or the shapes do not match.
pub fn sgemm(kernel: &dyn GemmF32, a: Matrix, b: &PackedF32, c: &mut [f32]) {
    assert_eq!(kernel.name(), b.kernel, "weights packed for {} used with {}", b.kernel, kernel.name());
    let (m, k, n) = (a.rows, a.cols, b.n);
    assert!(k == b.k && c.len() == m * n && a.in_bounds(), "sgemm: a is {m} × {k}, b {} × {n}, c holds {}", b.k, c.len());
    if n == 0 {
        return;
    }
    if m < 2 * kernel.mr() {
        // A decoder's tokens: too few rows to share, so threads take panels of columns, each
        // streaming its own panels' contiguous weights. Every weight read from memory is one
        // multiply-add per row there: its work counts as a tall product's 16.
        crate::threads::for_column_ranges(c, n, b.nr, 16 * n * k, |col0, c| {
            let mut edge = vec![0.0; kernel.mr() * b.nr];
            for col in (col0..col0 + c.width()).step_by(b.nr) {
                let cols = b.nr.min(n - col);
                for row0 in (0..m).step_by(kernel.mr()) {
                    let rows = kernel.mr().min(m - row0);
                    let data = &a.data[(row0 * a.row_stride).min(a.data.len())..];
                    kernel.tile(Matrix { data, rows, ..a }, b.panel(col), &mut edge, b.nr);
                    for (r, values) in edge.chunks_exact(b.nr).take(rows).enumerate() {
                        c.row(row0 + r)[col - col0..][..cols].copy_from_slice(&values[..cols]);
                    }
                }
            }
        });
        return;
    }
    crate::threads::for_row_ranges(c, n, kernel.mr(), m * n * k, |row0, c| {
        let rows = c.len() / n;
        let data = &a.data[(row0 * a.row_stride).min(a.data.len())..];
        tiles(kernel, Matrix { data, rows, ..a }, b, c)
    });
}

/// The rows of `a` (one thread's share) in blocks of rows that stay in L2, each block panel
/// by panel, tile by tile: whole panels straight into `c`, the last partial one through a
/// tile-sized buffer.
fn tiles(kernel: &dyn GemmF32, a: Matrix, b: &PackedF32, c: &mut [f32]) {
    let (n, nr, mr) = (b.n, b.nr, kernel.mr());
    let block = super::row_block(mr, a.cols * size_of::<f32>(), n * size_of::<f32>());
    let mut edge = Vec::new();
    for (block0, block_end) in (0..a.rows).step_by(block).map(|r| (r, a.rows.min(r + block))) {
        for col0 in (0..n).step_by(nr) {
            let (panel, cols) = (b.panel(col0), nr.min(n - col0));
            for row0 in (block0..block_end).step_by(mr) {
                let rows = mr.min(block_end - row0);
                let data = &a.data[(row0 * a.row_stride).min(a.data.len())..];
                let a = Matrix { data, rows, ..a };
                if cols == nr {
                    kernel.tile(a, panel, &mut c[row0 * n + col0..], n);
                    continue;
                }
                edge.resize(mr * nr, 0.0);
                kernel.tile(a, panel, &mut edge, nr);
                for (r, values) in edge.chunks_exact(nr).take(rows).enumerate() {
                    c[(row0 + r) * n + col0..][..cols].copy_from_slice(&values[..cols]);
                }
            }
        }
    }
}

/// Every f32 GEMM kernel this CPU can run, best first; the reference is always last.
pub fn gemm_f32_kernels() -> Vec<Box<dyn GemmF32>> {
    let mut v: Vec<Box<dyn GemmF32>> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(k) = x86::Avx512F::new() {
            v.push(Box::new(k));
        }
        if let Some(k) = x86::Avx2Fma::new() {
            v.push(Box::new(k));
        }
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(k) = aarch64::NeonFma::new() {
        v.push(Box::new(k));
    }
    v.push(Box::new(reference::Reference));
    v
}

/// The kernel the ops use: the best this CPU runs, probed once, unless
/// `DISTQ_KERNEL_F32=<name>` picks another (tests and benches).
pub fn best_gemm_f32() -> &'static dyn GemmF32 {
    static BEST: OnceLock<Box<dyn GemmF32>> = OnceLock::new();
    BEST.get_or_init(|| super::pick(gemm_f32_kernels(), "DISTQ_KERNEL_F32", |k| k.name())).as_ref()
}

/// Implements [`GemmF32`] for a kernel type whose tile function is
/// `unsafe fn tile<const R: usize>(a: *const f32, row_stride, col_stride, k, panel: *const f32, out: *mut f32, ldc)`
/// (rows as a const parameter so the accumulators live in registers).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! impl_gemm_f32 {
    ($ty:ty, $name:literal, nr = $nr:literal, mr = $mr:literal, $tile:ident) => {
        impl $crate::kernels::sgemm::GemmF32 for $ty {
            fn name(&self) -> &'static str {
                $name
            }

            fn nr(&self) -> usize {
                $nr
            }

            fn mr(&self) -> usize {
                $mr
            }

            fn tile(&self, a: $crate::kernels::sgemm::Matrix, panel: &[f32], out: &mut [f32], ldc: usize) {
                $crate::kernels::sgemm::check_tile(self, a, panel, out, ldc);
                let (rs, cs, k) = (a.row_stride, a.col_stride, a.cols);
                let (data, panel, out) = (a.data.as_ptr(), panel.as_ptr(), out.as_mut_ptr());
                // Safety: constructing the kernel proved its CPU features; `check_tile` proved
                // the bounds its loads and stores assume.
                unsafe {
                    match a.rows {
                        1 => $tile::<1>(data, rs, cs, k, panel, out, ldc),
                        2 => $tile::<2>(data, rs, cs, k, panel, out, ldc),
                        3 => $tile::<3>(data, rs, cs, k, panel, out, ldc),
                        4 => $tile::<4>(data, rs, cs, k, panel, out, ldc),
                        5 if $mr >= 5 => $tile::<5>(data, rs, cs, k, panel, out, ldc),
                        6 if $mr >= 6 => $tile::<6>(data, rs, cs, k, panel, out, ldc),
                        7 if $mr >= 7 => $tile::<7>(data, rs, cs, k, panel, out, ldc),
                        8 if $mr >= 8 => $tile::<8>(data, rs, cs, k, panel, out, ldc),
                        _ => unreachable!("check_tile bounds rows by mr ≤ 8"),
                    }
                }
            }
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) use impl_gemm_f32;
