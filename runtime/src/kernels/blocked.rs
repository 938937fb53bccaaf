//! The block-scaled GEMM of weight-only quantized MatMul at int8 compute (onnxruntime's
//! MatMulNBits `accuracy_level` 4): 4-bit (or any small) integer weights with one scale per
//! block of `k` and per column, activations quantized to int8 per row and block on the fly,
//!
//! `c[m, n] = Σ_blk a_scale[m, blk] · w_scale[blk, n] · Σ_{k ∈ blk} a_q[m, k] · w_q[k, n]`,
//!
//! the inner sums exact in i32 on the [`GemmU8I8`] tile kernels (one call per block), the
//! outer sum in f32, block by block in order, so every kernel gives bit-identical results.

use super::gemm::PackedI8;
use super::{BlockScales, GemmU8I8, SMALL_WEIGHT, TileRows, kernel_rows, row_block};
use crate::ops::quant::quantize;

/// Weights packed for one kernel with a scale per (block, column). Block sums of the
/// weights carry the activations' offset (`a_q + 128` is stored as u8).
pub struct BlockScaledI8 {
    packed: PackedI8,
    block: usize,
    /// `[panel][block][nr]`: `(a_bias − 128) · Σ_{k ∈ blk} w[k, n]`, the kernels' starting
    /// accumulators (0 past the last column).
    block_terms: Vec<i32>,
    /// `[panel][block][nr]` (0 past the last column).
    scales: Vec<f32>,
    /// Every weight within ±[`SMALL_WEIGHT`] (see [`BlockScales::small_weights`]).
    small_weights: bool,
}

impl BlockScaledI8 {
    /// Packs `k × n` weights `get(p, j)` (already minus their zero points, so symmetric) with
    /// scales `scale(blk, j)` for blocks of `block` values of `k` (`block` a multiple of 4).
    ///
    /// # Panics
    /// When `block` is not a positive multiple of 4.
    pub fn from_fn(
        kernel: &dyn GemmU8I8,
        k: usize,
        n: usize,
        block: usize,
        get: impl Fn(usize, usize) -> i8,
        scale: impl Fn(usize, usize) -> f32,
    ) -> BlockScaledI8 {
        assert!(block > 0 && block.is_multiple_of(4), "block size {block} is not a positive multiple of 4");
        let (blocks, nr) = (k.div_ceil(block), kernel.nr());
        // k padded to whole blocks with zero weights, so every block is whole groups.
        let packed = PackedI8::from_fn(kernel, blocks * block, vec![0; n], |p, j| if p < k { get(p, j) } else { 0 });
        // Column j of block blk, in its panel.
        let at = |blk: usize, j: usize| (j / nr * blocks + blk) * nr + j % nr;
        let width = n.div_ceil(nr) * nr;
        let (mut block_terms, mut scales) = (vec![0i32; blocks * width], vec![0f32; blocks * width]);
        let mut small_weights = true;
        for p in 0..k {
            for j in 0..n {
                let w = get(p, j) as i32;
                block_terms[at(p / block, j)] += (kernel.a_bias() - 128) * w;
                small_weights &= w.abs() <= SMALL_WEIGHT;
            }
        }
        for blk in 0..blocks {
            for j in 0..n {
                scales[at(blk, j)] = scale(blk, j);
            }
        }
        BlockScaledI8 { packed, block, block_terms, scales, small_weights }
    }

    /// Values per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Number of output columns.
    pub fn cols(&self) -> usize {
        self.packed.cols()
    }

    fn blocks(&self) -> usize {
        self.packed.k() / self.block
    }
}

/// Activation rows quantized per block: `q = round_half_even(a · 127 / max|a|)` stored as
/// `q + 128`, rows padded to whole blocks, and each block's scale `max|a| / 127`.
pub struct QuantizedRows {
    /// `[rows][stride]`: `q + 128`.
    pub(crate) data: Vec<u8>,
    /// `[rows][blocks]`.
    pub(crate) scales: Vec<f32>,
    /// Padded row length (whole blocks).
    pub(super) stride: usize,
}

crate::simd::widest_fn! {
    /// Quantizes the rows of `a` (`k` values each) in blocks of `block`, as onnxruntime's
    /// int8-compute MatMulNBits does (symmetric, scale `max|a| / 127`, a block of zeros has
    /// scale 0).
    pub fn quantize_rows(a: &[f32], k: usize, block: usize) -> QuantizedRows {
        let blocks = k.div_ceil(block);
        let (rows, stride) = (a.len().checked_div(k).unwrap_or(0), blocks * block);
        let mut data = vec![128u8; rows * stride];
        let mut scales = vec![0f32; rows * blocks];
        for (r, row) in a.chunks_exact(k.max(1)).enumerate().take(rows) {
            for (blk, values) in row.chunks(block).enumerate() {
                let max = crate::ops::math::fold_lanes(values, 0.0, |m, v| m.max(v.abs()), f32::max);
                scales[r * blocks + blk] = max / 127.0;
                let inverse = if max != 0.0 { 127.0 / max } else { 0.0 };
                for (q, &v) in data[r * stride + blk * block..][..values.len()].iter_mut().zip(values) {
                    *q = (quantize(v * inverse, 1.0, 0, -127, 127) + 128) as u8;
                }
            }
        }
        QuantizedRows { data, scales, stride }
    }
}

/// `c = a · b` (see the module docs), `c` row-major `rows × n`, rows split among the run's
/// threads, through an epilogue: `epilogue(row, col0, values, out)` receives the f32 results of
/// `row`, columns `col0..col0 + values.len()`, and writes them into `out`, the same span of `c`
/// (a fused bias, activation, residual Add).
///
/// # Panics
/// When `b` was packed for another kernel or `a` and `c` do not match `b`'s shape.
pub fn gemm_block_scaled(
    kernel: &dyn GemmU8I8,
    a: &QuantizedRows,
    b: &BlockScaledI8,
    c: &mut [f32],
    epilogue: impl Fn(usize, usize, &[f32], &mut [f32]) + Sync,
) {
    assert_eq!(kernel.name(), b.packed.kernel(), "weights packed for {} used with {}", b.packed.kernel(), kernel.name());
    let n = b.cols();
    let rows = a.data.len().checked_div(a.stride).unwrap_or(0);
    assert!(a.stride == b.packed.k() && c.len() == rows * n, "gemm_block_scaled: activations and output do not fit the weights");
    let work = rows * n * a.stride;
    if rows < 2 * kernel.block_mr() {
        // A decoder's tokens: too few rows to share, so threads take columns (panels).
        crate::threads::for_column_ranges(c, n, kernel.nr(), work, |col0, c| {
            let cols = col0..col0 + c.width();
            block_tiles(kernel, a, 0, rows, b, cols, &mut |r, col, acc| epilogue(r, col, acc, &mut c.row(r)[col - col0..][..acc.len()]))
        });
        return;
    }
    crate::threads::for_row_ranges(c, n, kernel.block_mr(), work, |row0, c| {
        let rows = c.len() / n.max(1);
        block_tiles(kernel, a, row0, rows, b, 0..n, &mut |r, col, acc| epilogue(row0 + r, col, acc, &mut c[r * n + col..][..acc.len()]))
    });
}

crate::simd::widest_fn! {
    /// Rows `row0..row0 + m` of the product, columns `cols`, in blocks of rows prepared once
    /// for the kernel, each block panel by panel, tile by tile; `emit(r, col, sums)` takes
    /// each tile row (row `row0 + r`, from column `col`).
    fn block_tiles(
        kernel: &dyn GemmU8I8,
        a: &QuantizedRows,
        row0: usize,
        m: usize,
        b: &BlockScaledI8,
        cols: std::ops::Range<usize>,
        emit: &mut dyn FnMut(usize, usize, &[f32]),
    ) {
    let (nr, mr, blocks) = (kernel.nr(), kernel.block_mr(), b.blocks());
    let (n, k4, terms) = (cols.end, b.block / 4, blocks * nr);
    let mut acc = vec![0f32; mr * nr];
    let bytes = kernel.block_activation_bytes();
    let (block, stride) = (row_block(mr, a.stride * bytes, n * size_of::<f32>()), a.stride * bytes);
    let mut wide = Vec::new();
    for block0 in (0..m).step_by(block) {
        let block_end = m.min(block0 + block);
        let data = kernel_rows(bytes, &a.data[(row0 + block0) * a.stride..(row0 + block_end) * a.stride], &mut wide);
        for col0 in cols.clone().step_by(nr) {
            let panel = b.packed.panel(col0);
            let width = nr.min(n - col0);
            let (init, w) = (&b.block_terms[col0 / nr * terms..][..terms], &b.scales[col0 / nr * terms..][..terms]);
            for tile_row in (block0..block_end).step_by(mr) {
                let count = mr.min(block_end - tile_row);
                let rows = TileRows { data: &data[(tile_row - block0) * stride..], stride, count };
                let scales = BlockScales { a: &a.scales[(row0 + tile_row) * blocks..], a_stride: blocks, w, small_weights: b.small_weights };
                kernel.tile_block_scaled(rows, panel, k4, blocks, init, scales, &mut acc);
                for r in 0..count {
                    emit(tile_row + r, col0, &acc[r * nr..][..width]);
                }
            }
        }
    }
}
}
