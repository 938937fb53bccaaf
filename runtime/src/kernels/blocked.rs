//! The block-scaled GEMM of weight-only quantized MatMul at int8 compute (onnxruntime's
//! MatMulNBits `accuracy_level` 4): 4- or 8-bit unsigned weights `u` with a zero point `z` and
//! a scale per block of `k` and per column, activations quantized to int8 per row and block on
//! the fly,
//!
//! `c[m, n] = Σ_blk a_scale[m, blk] · w_scale[blk, n] · (Σ_{k ∈ blk} a_q[m, k] · u[k, n] − z[blk, n] · Σ_{k ∈ blk} a_q[m, k])`,
//!
//! the inner sums exact in i32 (so equal to `Σ a_q · (u − z)`), the outer sum in f32, block by
//! block in order, so every kernel gives bit-identical results.
//!
//! The weights keep their stored width: a byte per 8-bit value, a nibble per 4-bit one, and
//! nothing per block but the scale and the zero point. Decoding one token reads every weight
//! once, so its speed is the bytes per weight; the zero point's term comes from the
//! activations' block sums, computed once per row, instead of a weight-side sum per column.

use super::{BlockPanel, BlockRows, BlockWeightScales, BlockZeros, GemmU8I8, row_block};
use crate::ops::quant::quantize;

/// Weights packed for one kernel with a scale and an unsigned zero point per (block, column):
/// per panel of `nr` columns, block by block, the values `[k4][nr][4]` (a byte each), or for
/// 4-bit values pairs of groups in one byte group (`[k4/2][nr][4]`, the even group in the low
/// nibbles).
pub struct BlockScaledWeights {
    values: Vec<u8>,
    /// One for all, or `[panel][block][nr]` (0 past the last column).
    zeros: Zeros,
    /// `[panel][block][nr]` (0 past the last column).
    scales: Scales,
    kernel: &'static str,
    four_bit: bool,
    block: usize,
    k: usize,
    n: usize,
    nr: usize,
}

impl BlockScaledWeights {
    /// Packs `k × n` unsigned weights `value(p, j)` with zero points `zero(blk, j)` and scales
    /// `scale(blk, j)` for blocks of `block` values of `k`. `four_bit` stores them as nibbles.
    ///
    /// # Panics
    /// When `block` is not a positive multiple of 4 (of 8 for `four_bit`), or a 4-bit value or
    /// zero point is past 15.
    #[allow(clippy::too_many_arguments)]
    pub fn from_fn(
        kernel: &dyn GemmU8I8,
        k: usize,
        n: usize,
        block: usize,
        four_bit: bool,
        value: impl Fn(usize, usize) -> u8,
        zero: impl Fn(usize, usize) -> u8,
        scale: impl Fn(usize, usize) -> f32,
    ) -> BlockScaledWeights {
        let group_values = if four_bit { 8 } else { 4 };
        assert!(block > 0 && block.is_multiple_of(group_values), "block size {block} is not a positive multiple of {group_values}");
        let (blocks, nr) = (k.div_ceil(block), kernel.nr());
        let panels = n.div_ceil(nr);
        let block_bytes = block * nr / if four_bit { 2 } else { 1 };
        let mut values = vec![0u8; panels * blocks * block_bytes];
        // k padded to whole blocks with zero values: the activations' padding is 0 too.
        for j in 0..n {
            let column = &mut values[j / nr * blocks * block_bytes..][..blocks * block_bytes];
            for p in 0..k {
                let v = value(p, j);
                let (group, within) = (p / 4, p % 4);
                if four_bit {
                    assert!(v < 16, "4-bit weight {v} at ({p}, {j})");
                    let byte = &mut column[((group / 2) * nr + j % nr) * 4 + within];
                    *byte |= v << (4 * (group % 2));
                } else {
                    column[(group * nr + j % nr) * 4 + within] = v;
                }
            }
        }
        let at = |blk: usize, j: usize| (j / nr * blocks + blk) * nr + j % nr;
        let (mut zeros, mut scales) = (vec![0u8; panels * blocks * nr], vec![0f32; panels * blocks * nr]);
        for blk in 0..blocks {
            for j in 0..n {
                let z = zero(blk, j);
                assert!(!four_bit || z < 16, "4-bit zero point {z} at block {blk}, column {j}");
                zeros[at(blk, j)] = z;
                scales[at(blk, j)] = scale(blk, j);
            }
        }
        let first_zero = (n > 0 && blocks > 0).then(|| zero(0, 0));
        let zeros = match first_zero {
            Some(z) if (0..blocks).all(|blk| (0..n).all(|j| zero(blk, j) == z)) => Zeros::Same(z),
            _ => Zeros::PerBlock(zeros),
        };
        let f16_exact = |s: &f32| half::f16::from_f32(*s).to_f32() == *s;
        let scales = match scales.iter().all(f16_exact) {
            true => Scales::F16(scales.iter().map(|&s| half::f16::from_f32(s).to_bits()).collect()),
            false => Scales::F32(scales),
        };
        BlockScaledWeights { values, zeros, scales, kernel: kernel.name(), four_bit, block, k, n, nr }
    }

    /// Values per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// Number of output columns.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// Bytes held (values, zero points and scales).
    pub fn bytes(&self) -> usize {
        let zeros = match &self.zeros {
            Zeros::Same(_) => 1,
            Zeros::PerBlock(z) => z.len(),
        };
        let scales = match &self.scales {
            Scales::F32(s) => 4 * s.len(),
            Scales::F16(s) => 2 * s.len(),
        };
        self.values.len() + zeros + scales
    }

    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// The panel of columns `col0..col0 + nr`.
    fn panel(&self, col0: usize) -> BlockPanel<'_> {
        let (blocks, panel) = (self.blocks(), col0 / self.nr);
        let values_len = self.values.len() / self.n.div_ceil(self.nr).max(1);
        let terms = blocks * self.nr;
        BlockPanel {
            values: &self.values[panel * values_len..][..values_len],
            zeros: match &self.zeros {
                Zeros::Same(z) => BlockZeros::Same(*z),
                Zeros::PerBlock(z) => BlockZeros::PerBlock(&z[panel * terms..][..terms]),
            },
            scales: match &self.scales {
                Scales::F32(s) => BlockWeightScales::F32(&s[panel * terms..][..terms]),
                Scales::F16(s) => BlockWeightScales::F16(&s[panel * terms..][..terms]),
            },
            four_bit: self.four_bit,
        }
    }
}

/// [`BlockScaledWeights`]' zero points.
enum Zeros {
    Same(u8),
    PerBlock(Vec<u8>),
}

/// [`BlockScaledWeights`]' scales.
enum Scales {
    F32(Vec<f32>),
    /// f16 bit patterns, when every scale is exact in f16.
    F16(Vec<u16>),
}

/// Activation rows quantized per block: `q = round_half_even(a · 127 / max|a|)`, rows padded
/// to whole blocks with zeros, each block's scale `max|a| / 127` and its sum of `q`.
pub struct QuantizedRows {
    /// `[rows][stride]`.
    pub(crate) q: Vec<i8>,
    /// `[rows][blocks]`.
    pub(crate) scales: Vec<f32>,
    /// `[rows][blocks]`: `Σ q` of each block.
    pub(crate) sums: Vec<i32>,
    /// Padded row length (whole blocks).
    pub(super) stride: usize,
}

impl QuantizedRows {
    /// The values as `q + 128` in u8, the u8 · i8 GEMM's activations with zero point 128.
    pub(crate) fn offset_u8(&self) -> Vec<u8> {
        self.q.iter().map(|&q| (q as i32 + 128) as u8).collect()
    }
}

crate::simd::widest_fn! {
    /// Quantizes the rows of `a` (`k` values each) in blocks of `block`, as onnxruntime's
    /// int8-compute MatMulNBits does (symmetric, scale `max|a| / 127`, a block of zeros has
    /// scale 0).
    pub fn quantize_rows(a: &[f32], k: usize, block: usize) -> QuantizedRows {
        let blocks = k.div_ceil(block);
        let (rows, stride) = (a.len().checked_div(k).unwrap_or(0), blocks * block);
        let mut q = vec![0i8; rows * stride];
        let (mut scales, mut sums) = (vec![0f32; rows * blocks], vec![0i32; rows * blocks]);
        for (r, row) in a.chunks_exact(k.max(1)).enumerate().take(rows) {
            for (blk, values) in row.chunks(block).enumerate() {
                let max = crate::ops::math::fold_lanes(values, 0.0, |m, v| m.max(v.abs()), f32::max);
                scales[r * blocks + blk] = max / 127.0;
                let inverse = if max != 0.0 { 127.0 / max } else { 0.0 };
                let out = &mut q[r * stride + blk * block..][..values.len()];
                for (q, &v) in out.iter_mut().zip(values) {
                    *q = quantize(v * inverse, 1.0, 0, -127, 127) as i8;
                }
                sums[r * blocks + blk] = out.iter().map(|&q| q as i32).sum();
            }
        }
        QuantizedRows { q, scales, sums, stride }
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
    b: &BlockScaledWeights,
    c: &mut [f32],
    epilogue: impl Fn(usize, usize, &[f32], &mut [f32]) + Sync,
) {
    assert_eq!(kernel.name(), b.kernel, "weights packed for {} used with {}", b.kernel, kernel.name());
    let n = b.cols();
    let rows = a.q.len().checked_div(a.stride).unwrap_or(0);
    assert!(a.stride == b.blocks() * b.block && c.len() == rows * n, "gemm_block_scaled: activations and output do not fit the weights");
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

/// Rows `row0..row0 + m` of the product, columns `cols`, in blocks of rows that stay in cache
/// while the panels pass, each block panel by panel, tile by tile; `emit(r, col, sums)` takes
/// each tile row (row `row0 + r`, from column `col`).
fn block_tiles(
    kernel: &dyn GemmU8I8,
    a: &QuantizedRows,
    row0: usize,
    m: usize,
    b: &BlockScaledWeights,
    cols: std::ops::Range<usize>,
    emit: &mut dyn FnMut(usize, usize, &[f32]),
) {
    let (nr, mr, blocks) = (kernel.nr(), kernel.block_mr(), b.blocks());
    let n = cols.end;
    let mut acc = vec![0f32; mr * nr];
    let block = row_block(mr, a.stride, n * size_of::<f32>());
    for block0 in (0..m).step_by(block) {
        let block_end = m.min(block0 + block);
        for col0 in cols.clone().step_by(nr) {
            let (panel, width) = (b.panel(col0), nr.min(n - col0));
            for tile_row in (block0..block_end).step_by(mr) {
                let (count, first) = (mr.min(block_end - tile_row), row0 + tile_row);
                let rows = BlockRows {
                    q: &a.q[first * a.stride..],
                    stride: a.stride,
                    count,
                    sums: &a.sums[first * blocks..],
                    scales: &a.scales[first * blocks..],
                    blocks_stride: blocks,
                };
                kernel.tile_block_scaled(rows, panel, b.block / 4, blocks, &mut acc);
                for r in 0..count {
                    emit(tile_row + r, col0, &acc[r * nr..][..width]);
                }
            }
        }
    }
}
