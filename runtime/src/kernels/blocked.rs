//! The block-scaled GEMM of weight-only quantized MatMul at int8 compute (onnxruntime's
//! MatMulNBits `accuracy_level` 4): 4-bit (or any small) integer weights with one scale per
//! block of `k` and per column, activations quantized to int8 per row and block on the fly,
//!
//! `c[m, n] = Σ_blk a_scale[m, blk] · w_scale[blk, n] · Σ_{k ∈ blk} a_q[m, k] · w_q[k, n]`,
//!
//! the inner sums exact in i32 on the [`GemmU8I8`] tile kernels (one call per block), the
//! outer sum in f32, block by block in order, so every kernel gives bit-identical results.

use super::gemm::PackedI8;
use super::{GemmU8I8, TileRows};
use crate::ops::quant::quantize;

/// Weights packed for one kernel with a scale per (block, column). Block sums of the
/// weights carry the activations' offset (`a_q + 128` is stored as u8).
pub struct BlockScaledI8 {
    packed: PackedI8,
    block: usize,
    /// `[blocks][n rounded up to whole panels]`: `(a_bias − 128) · Σ_{k ∈ blk} w[k, n]`, the
    /// kernels' starting accumulators.
    block_terms: Vec<i32>,
    /// `[blocks][n]`.
    scales: Vec<f32>,
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
        let blocks = k.div_ceil(block);
        // k padded to whole blocks with zero weights, so every block is whole groups.
        let packed = PackedI8::from_fn(kernel, blocks * block, vec![0; n], |p, j| if p < k { get(p, j) } else { 0 });
        let width = n.div_ceil(kernel.nr()) * kernel.nr();
        let mut block_terms = vec![0i32; blocks * width];
        for p in 0..k {
            for (j, t) in block_terms[p / block * width..][..n].iter_mut().enumerate() {
                *t += (kernel.a_bias() - 128) * get(p, j) as i32;
            }
        }
        let scales = (0..blocks * n).map(|i| scale(i / n, i % n)).collect();
        BlockScaledI8 { packed, block, block_terms, scales }
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
    pub(super) data: Vec<u8>,
    /// `[rows][blocks]`.
    pub(super) scales: Vec<f32>,
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
/// threads.
///
/// # Panics
/// When `b` was packed for another kernel or `a` and `c` do not match `b`'s shape.
pub fn gemm_block_scaled(kernel: &dyn GemmU8I8, a: &QuantizedRows, b: &BlockScaledI8, c: &mut [f32]) {
    assert_eq!(kernel.name(), b.packed.kernel(), "weights packed for {} used with {}", b.packed.kernel(), kernel.name());
    let n = b.cols();
    let rows = a.data.len().checked_div(a.stride).unwrap_or(0);
    assert!(a.stride == b.packed.k() && c.len() == rows * n, "gemm_block_scaled: activations and output do not fit the weights");
    crate::threads::for_row_ranges(c, n, kernel.mr(), rows * n * a.stride, |row0, c| block_tiles(kernel, a, row0, b, c));
}

crate::simd::widest_fn! {
    /// Output rows `row0..` (`c`, whole rows), tile by tile, block by block.
    fn block_tiles(kernel: &dyn GemmU8I8, a: &QuantizedRows, row0: usize, b: &BlockScaledI8, c: &mut [f32]) {
        let (n, nr, mr, block, blocks) = (b.cols(), kernel.nr(), kernel.mr(), b.block, b.blocks());
        let (m, k4, width) = (c.len() / n.max(1), block / 4, b.block_terms.len() / blocks.max(1));
        let mut sums = vec![0i32; mr * nr];
        let mut acc = vec![0f32; mr * nr];
        for col0 in (0..n).step_by(nr) {
            let panel = b.packed.panel(col0);
            let cols = nr.min(n - col0);
            for tile_row in (0..m).step_by(mr) {
                let count = mr.min(m - tile_row);
                acc.fill(0.0);
                for blk in 0..blocks {
                    let data = &a.data[(row0 + tile_row) * a.stride + blk * block..];
                    let init = &b.block_terms[blk * width + col0..][..nr];
                    kernel.tile(TileRows { data, stride: a.stride, count }, &panel[blk * k4 * nr * 4..][..k4 * nr * 4], k4, init, &mut sums);
                    let w_scales = &b.scales[blk * n + col0..][..cols];
                    for r in 0..count {
                        let a_scale = a.scales[(row0 + tile_row + r) * blocks + blk];
                        for ((acc, &s), &w) in acc[r * nr..][..cols].iter_mut().zip(&sums[r * nr..]).zip(w_scales) {
                            *acc += s as f32 * (a_scale * w);
                        }
                    }
                }
                for r in 0..count {
                    c[(tile_row + r) * n + col0..][..cols].copy_from_slice(&acc[r * nr..][..cols]);
                }
            }
        }
    }
}
