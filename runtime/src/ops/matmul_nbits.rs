//! MatMul with weights quantized in blocks along K, in the two forms files hold them:
//! - com.microsoft `MatMulNBits`: `Y = A · dequant(B)ᵀ + bias` with 4- or 8-bit weights, the
//!   weight-only format onnxruntime's int4 quantizer writes. The weights stay packed in
//!   memory (the model's own bytes); at `accuracy_level` 0 each run dequantizes them into a
//!   recycled f32 buffer (vectorized, a small cost next to the GEMM) and runs the f32 GEMM,
//!   which the parity test holds us to; at level 4 it runs the block-scaled integer GEMM.
//! - the standard opset-21 form, `MatMul(A, DequantizeLinear(q, scale, zero; axis 0,
//!   block_size))` with 4-bit constant weights: fused by the planner into
//!   [`BlockQuantizedMatMul`], the block-scaled integer GEMM, as onnxruntime fuses it into
//!   MatMulNBits at its default accuracy level 4 (`Session::set_exact` keeps the float form).

use super::epilogue::Epilogue;
use super::matmul::{Matrix, sgemm, weights_product_shape};
use super::{BufferPool, Fact, ImportCtx, Importer, Op, PreparedWeights, expect_dtype, numel, optional, out, required};
use crate::error::{Error, Result, ensure};
use crate::kernels::best_gemm_u8i8;
use crate::kernels::blocked::{BlockScaledWeights, gemm_block_scaled, quantize_rows};
use crate::kernels::gemm::{PackedI8, gemm_u8i8_with};
use crate::nibbles::unpack_u4;
use crate::tensor::{DataType, Tensor};
use std::sync::Arc;

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[("com.microsoft::MatMulNBits", import)];

fn import(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let int = |key: &str| -> Result<usize> {
        let v = c.attrs.int(key, -1)?;
        ensure!(v > 0, "attribute {key} is {v}, expected a positive value");
        Ok(v as usize)
    };
    let bits = c.attrs.int("bits", 4)?;
    if bits != 4 && bits != 8 {
        return Err(super::unsupported_attr(format!("{bits}-bit weights (4 and 8 are)")));
    }
    if c.num_inputs > 4 && c.num_inputs != 6 {
        return Err(super::unsupported_attr("g_idx (act-order) input".into()));
    }
    Ok(Box::new(MatMulNBits {
        k: int("K")?,
        n: int("N")?,
        bits: bits as usize,
        block: int("block_size")?,
        int8_compute: c.attrs.int("accuracy_level", 0)? == 4,
        zeros: PreparedWeights::default(),
        int8: PreparedWeights::default(),
    }))
}

/// `MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?)`.
#[derive(Debug)]
pub struct MatMulNBits {
    k: usize,
    n: usize,
    bits: usize,
    block: usize,
    /// `accuracy_level` 4: activations quantized to int8 per block, integer products.
    int8_compute: bool,
    /// Zero point of each (row, block) as f32, unpacked on first use.
    zeros: PreparedWeights<Vec<f32>>,
    /// For int8 compute, the weights and zero points packed for the integer kernels (`None`
    /// for float zero points, which the integer sums cannot carry).
    int8: PreparedWeights<Option<BlockScaledWeights>>,
}

impl MatMulNBits {
    fn blocks(&self) -> usize {
        self.k.div_ceil(self.block)
    }

    /// The zero point of each (row, block) as f32: packed u8 like the weights (rows padded to
    /// whole bytes), floats, or the default (the middle of the range).
    fn zero_points(&self, zeros: Option<&Tensor>) -> Result<Vec<f32>> {
        let (n, blocks) = (self.n, self.blocks());
        Ok(match zeros {
            None => vec![(1 << (self.bits - 1)) as f32; n * blocks],
            Some(z) if z.dtype() == DataType::F32 => {
                ensure!(z.len() == n * blocks, "float zero points hold {} values; {} expected", z.len(), n * blocks);
                z.as_slice::<f32>()?.to_vec()
            }
            Some(z) => {
                let z = z.as_slice::<u8>()?;
                let per_row = (blocks * self.bits).div_ceil(8);
                ensure!(z.len() == n * per_row, "zero points hold {} bytes; N {n} × {per_row} expected", z.len());
                let mut values = Vec::with_capacity(n * blocks);
                for row in z.chunks_exact(per_row) {
                    let row = if self.bits == 4 { unpack_u4(row, 2 * per_row)? } else { row.to_vec() };
                    values.extend(row[..blocks].iter().map(|&v| v as f32));
                }
                values
            }
        })
    }
}

impl MatMulNBits {
    /// The weights for the block-scaled integer GEMM, if exact: unsigned values with their
    /// zero points, 4-bit ones kept as nibbles.
    fn block_scaled(&self, packed: &[u8], scales: &[f32], zeros: Option<&Tensor>) -> Result<Option<BlockScaledWeights>> {
        if zeros.is_some_and(|z| z.dtype() == DataType::F32) || !self.block.is_multiple_of(4) {
            return Ok(None);
        }
        let zero_points = self.zero_points(zeros)?;
        let (k, n, blocks, bits, block) = (self.k, self.n, self.blocks(), self.bits, self.block);
        let blob = block * bits / 8;
        let value = |p: usize, j: usize| -> u8 {
            let (blk, within) = (p / block, p % block);
            let blob_bytes = &packed[(j * blocks + blk) * blob..];
            if bits == 8 { blob_bytes[within] } else { crate::nibbles::get(blob_bytes, within, false) as u8 }
        };
        let four_bit = bits == 4 && block.is_multiple_of(8);
        let zero = |blk: usize, j: usize| zero_points[j * blocks + blk] as u8;
        Ok(Some(BlockScaledWeights::from_fn(best_gemm_u8i8(), k, n, block, four_bit, value, zero, |blk, j| scales[j * blocks + blk])))
    }
}

crate::simd::widest_fn! {
    /// `w[row][p] = (q − zero) · scale` of its block, for `N × K` weights `w` from rows of
    /// `blocks` packed blobs (4-bit: low nibble first).
    fn dequantize_rows(packed: &[u8], bits: usize, block: usize, k: usize, scales: &[f32], zeros: &[f32], w: &mut [f32]) {
        let (blocks, blob) = (k.div_ceil(block), block * bits / 8);
        for (row, (w_row, p_row)) in w.chunks_exact_mut(k).zip(packed.chunks_exact(blocks * blob)).enumerate() {
            for (blk, (w_blk, p_blk)) in w_row.chunks_mut(block).zip(p_row.chunks_exact(blob)).enumerate() {
                let (scale, zero) = (scales[row * blocks + blk], zeros[row * blocks + blk]);
                if bits == 8 {
                    for (w, &q) in w_blk.iter_mut().zip(p_blk) {
                        *w = (q as f32 - zero) * scale;
                    }
                    continue;
                }
                let pairs = w_blk.len() / 2;
                for (pair, &byte) in w_blk[..2 * pairs].chunks_exact_mut(2).zip(p_blk) {
                    pair[0] = ((byte & 15) as f32 - zero) * scale;
                    pair[1] = ((byte >> 4) as f32 - zero) * scale;
                }
                if let Some(last) = w_blk.get_mut(2 * pairs) {
                    *last = ((p_blk[pairs] & 15) as f32 - zero) * scale;
                }
            }
        }
    }
}

impl Op for MatMulNBits {
    fn work(&self, _inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::Work::macs(super::output_elements(outputs) * self.k, self.int8_compute)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let a = required(inputs, 0)?;
        expect_dtype(a, &[DataType::F32], "A")?;
        expect_dtype(required(inputs, 1)?, &[DataType::U8], "B")?;
        expect_dtype(required(inputs, 2)?, &[DataType::F32], "scales")?;
        ensure!(a.shape.last() == Some(&self.k), "A has shape {:?}; its last dim must be K = {}", a.shape, self.k);
        if let Some(bias) = optional(inputs, 5) {
            ensure!(bias.shape.iter().product::<usize>() == self.n, "bias has shape {:?}; N = {} values expected", bias.shape, self.n);
        }
        let mut shape = a.shape.clone();
        *shape.last_mut().expect("checked above") = self.n;
        Ok(vec![Fact::new(DataType::F32, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        let (k, n, blocks) = (self.k, self.n, self.blocks());
        let packed = b.as_slice::<u8>()?;
        let blob = self.block * self.bits / 8;
        ensure!(packed.len() == n * blocks * blob, "B holds {} bytes; N {n} × {blocks} blocks × {blob} bytes expected", packed.len());
        let scales = required(inputs, 2)?.as_slice::<f32>()?;
        ensure!(scales.len() == n * blocks, "scales hold {} values; N {n} × {blocks} blocks expected", scales.len());
        let mut shape = a.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        let m = a.len() / k;
        let mut y = pool.overwritable(numel(&shape)?);
        let int8 =
            if self.int8_compute { self.int8.get(b, || self.block_scaled(packed, scales, optional(inputs, 3)))? } else { Arc::new(None) };
        if let Some(weights) = int8.as_ref() {
            let rows = quantize_rows(a.as_slice::<f32>()?, k, self.block);
            gemm_block_scaled(best_gemm_u8i8(), &rows, weights, &mut y, |_, _, v, out| out.copy_from_slice(v));
        } else {
            let zeros = self.zeros.get(b, || self.zero_points(optional(inputs, 3)))?;
            let mut w = pool.overwritable(n * k);
            dequantize_rows(packed, self.bits, self.block, k, scales, &zeros, &mut w);
            sgemm(1.0, Matrix::dense(a.as_slice::<f32>()?, m, k), Matrix::dense(&w, n, k).t(), 0.0, &mut y);
            pool.give(out(vec![n, k], w)?);
        }
        if let Some(bias) = optional(inputs, 5) {
            let bias = bias.as_slice::<f32>()?;
            for row in y.chunks_exact_mut(n) {
                for (v, &b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
        }
        Ok(vec![out(shape, y)?])
    }
}

/// `MatMul(A, DequantizeLinear(q, scale, zero_point?))` with `K × N` 4-bit constant weights
/// in blocks of `block` along K (axis 0), or `Gemm(A, DequantizeLinear(q), C)` with `transB`
/// and `N × K` weights blocked along their axis 1, at int8 compute: `A` quantized per row and
/// block ([`quantize_rows`]), the products exact in i32, scaled per block in f32
/// ([`gemm_block_scaled`]), with a bias (an `Add` after it, or the Gemm's C) and an
/// [`Epilogue`] fused. Made by the planner's fusion pass, not imported.
///
/// 4-bit weights whose block scales are their column's smallest times 1, 2, 4 or 8 (what
/// `distq quantize` writes for its int8-speed int4 layers) are int8 weights per column in
/// disguise: `(q − zero) · 2^e` lies in −120..=120. They are packed so, and run as the int8
/// GEMM with activations quantized per row (see `per_column_scales`), about twice as fast
/// as block by block.
/// Inputs: `(A, q, scale, zero_point?, bias?, residual?)`, `scale` and `zero_point` of shape
/// `[K / block, N]` (`[N, K / block]` for transposed weights), `bias` of N values, the
/// residual (the epilogue's) the output's shape.
#[derive(Debug)]
pub struct BlockQuantizedMatMul {
    block: usize,
    /// Weights stored `N × K` (a Gemm's `transB`).
    transposed: bool,
    /// `q − zero_point` packed for the integer kernels, with the scales, built on first use.
    weights: PreparedWeights<PackedBlocks>,
    /// The block scales are powers of two apart within each column (see above).
    per_column: bool,
    /// What follows the bias.
    epilogue: Epilogue,
}

impl BlockQuantizedMatMul {
    /// The fused step for blocks of `block` values, if its integer GEMM takes them (blocks of
    /// whole groups of 4).
    pub(crate) fn new(block: usize, transposed: bool) -> Option<BlockQuantizedMatMul> {
        (block > 0 && block.is_multiple_of(4)).then(|| BlockQuantizedMatMul {
            block,
            transposed,
            weights: PreparedWeights::default(),
            per_column: false,
            epilogue: Epilogue::default(),
        })
    }

    /// The step running its 4-bit weights as int8 per column, when `scale`'s blocks allow it
    /// (see `per_column_scales`).
    pub(crate) fn per_column_if_exact(self, q: &Tensor, scale: &Tensor, zero: Option<&Tensor>) -> BlockQuantizedMatMul {
        let four_bit = q.dtype().is_four_bit() && zero.is_none_or(|z| z.dtype().is_four_bit());
        let per_column = four_bit && self.per_column_scales(q.shape(), scale).is_ok_and(|s| s.is_some());
        BlockQuantizedMatMul { per_column, ..self }
    }

    /// Whether the weights run as int8 per column.
    pub(crate) fn is_per_column(&self) -> bool {
        self.per_column
    }

    /// When every block scale of a column is its smallest times 2^e, e ≤ 3 (so 4-bit
    /// `(q − zero) · 2^e` fits in i8): the smallest per column, and each block's e in the
    /// scales' stored order. Multiplying by a power of two is exact, so the check is too.
    fn per_column_scales(&self, shape: &[usize], scale: &Tensor) -> Result<Option<(Vec<f32>, Vec<u8>)>> {
        let (k, n) = self.k_n(shape)?;
        let (scales, blocks) = (scale.as_slice::<f32>()?, k.div_ceil(self.block));
        ensure!(scales.len() == blocks * n, "scale holds {} values; {blocks} blocks × N {n} expected", scales.len());
        let mut bases = vec![f32::INFINITY; n];
        for blk in 0..blocks {
            for (j, base) in bases.iter_mut().enumerate() {
                *base = base.min(scales[self.parameter_at(blk, j, blocks, n)]);
            }
        }
        if !bases.iter().all(|b| b.is_normal() && *b > 0.0) {
            return Ok(None);
        }
        let mut shifts = vec![0u8; scales.len()];
        for blk in 0..blocks {
            for (j, &base) in bases.iter().enumerate() {
                let at = self.parameter_at(blk, j, blocks, n);
                match (0..=3u8).find(|&e| base * (1u32 << e) as f32 == scales[at]) {
                    Some(e) => shifts[at] = e,
                    None => return Ok(None),
                }
            }
        }
        Ok(Some((bases, shifts)))
    }

    /// The step with `epilogue` after its bias.
    pub(crate) fn with_epilogue(self, epilogue: Epilogue) -> BlockQuantizedMatMul {
        BlockQuantizedMatMul { epilogue, ..self }
    }

    /// K and N of weights stored with shape `shape`.
    fn k_n(&self, shape: &[usize]) -> Result<(usize, usize)> {
        match (shape, self.transposed) {
            ([k, n], false) | ([n, k], true) => Ok((*k, *n)),
            _ => Err(Error::Op(format!("weights of shape {shape:?}; {} expected", if self.transposed { "N × K" } else { "K × N" }))),
        }
    }

    /// Where weight `(p, j)` (row p of K, column j of N) is stored.
    fn weight_at(&self, p: usize, j: usize, k: usize, n: usize) -> usize {
        if self.transposed { j * k + p } else { p * n + j }
    }

    /// Where the scale and zero point of block `blk` of column `j` are stored.
    fn parameter_at(&self, blk: usize, j: usize, blocks: usize, n: usize) -> usize {
        if self.transposed { j * blocks + blk } else { blk * n + j }
    }

    /// `q − zero_point` of 4-bit weights in their stored order (the per-column form's
    /// operand).
    fn differences(&self, q: &Tensor, zero: Option<&Tensor>) -> Result<Vec<i8>> {
        let (k, n) = self.k_n(q.shape())?;
        let blocks = k.div_ceil(self.block);
        // `pack` checked the zero points' count.
        let (values, zeros) = (StoredValues::of(q)?, zero.map(StoredValues::of).transpose()?);
        Ok((0..q.len())
            .map(|i| {
                let (p, j) = if self.transposed { (i % k, i / k) } else { (i / n, i % n) };
                let zero = zeros.as_ref().map_or(values.zero(), |z| z.get(self.parameter_at(p / self.block, j, blocks, n)));
                (values.get(i) as i32 - zero as i32) as i8
            })
            .collect())
    }

    fn pack(&self, q: &Tensor, scale: &Tensor, zero: Option<&Tensor>) -> Result<PackedBlocks> {
        let (k, n) = self.k_n(q.shape())?;
        let scales = scale.as_slice::<f32>()?;
        let blocks = k.div_ceil(self.block);
        ensure!(scales.len() == blocks * n, "scale holds {} values; {blocks} blocks × N {n} expected", scales.len());
        ensure!(
            zero.is_none_or(|z| z.len() == blocks * n),
            "zero point holds {} values; {} expected",
            zero.map_or(0, Tensor::len),
            blocks * n
        );
        if self.per_column {
            let w = self.differences(q, zero)?;
            let weight = |p, j| w[self.weight_at(p, j, k, n)];
            let not_exact = || Error::Op("block scales are not powers of two apart".into());
            let (bases, shifts) = self.per_column_scales(q.shape(), scale)?.ok_or_else(not_exact)?;
            let shifted = |p: usize, j: usize| weight(p, j) << shifts[self.parameter_at(p / self.block, j, blocks, n)];
            return Ok(PackedBlocks::PerColumn { weights: PackedI8::from_fn(best_gemm_u8i8(), k, vec![0; n], shifted), scales: bases });
        }
        ensure!(zero.is_none_or(|z| z.dtype() == q.dtype()), "zero point of another type than the weights ({})", q.dtype());
        let (values, zeros) = (StoredValues::of(q)?, zero.map(StoredValues::of).transpose()?);
        let value = |p, j| values.get(self.weight_at(p, j, k, n));
        let zero = |blk, j| zeros.as_ref().map_or(values.zero(), |z| z.get(self.parameter_at(blk, j, blocks, n)));
        let scale = |blk, j| scales[self.parameter_at(blk, j, blocks, n)];
        let four_bit = q.dtype().is_four_bit() && self.block.is_multiple_of(8);
        Ok(PackedBlocks::Blocks(BlockScaledWeights::from_fn(best_gemm_u8i8(), k, n, self.block, four_bit, value, zero, scale)))
    }
}

/// Stored integer values read as unsigned ones: u8 and uint4 as they are, int8 + 128 and
/// int4 + 8 (the top bit flipped), so that `u − z` is the stored difference.
enum StoredValues<'a> {
    Bytes { bytes: &'a [u8], flip: u8 },
    Nibbles { packed: &'a [u8], flip: u8 },
}

impl StoredValues<'_> {
    fn of(t: &Tensor) -> Result<StoredValues<'_>> {
        Ok(match t.dtype() {
            DataType::U8 => StoredValues::Bytes { bytes: t.as_slice::<u8>()?, flip: 0 },
            DataType::I8 => StoredValues::Bytes { bytes: t.as_le_bytes(), flip: 0x80 },
            DataType::U4 => StoredValues::Nibbles { packed: t.as_nibbles()?, flip: 0 },
            DataType::I4 => StoredValues::Nibbles { packed: t.as_nibbles()?, flip: 8 },
            other => return Err(Error::Op(format!("{other} weights; 8- or 4-bit integers expected"))),
        })
    }

    #[inline]
    fn get(&self, i: usize) -> u8 {
        match *self {
            StoredValues::Bytes { bytes, flip } => bytes[i] ^ flip,
            StoredValues::Nibbles { packed, flip } => crate::nibbles::get(packed, i, false) as u8 ^ flip,
        }
    }

    /// The default zero point (a stored 0).
    fn zero(&self) -> u8 {
        match *self {
            StoredValues::Bytes { flip, .. } | StoredValues::Nibbles { flip, .. } => flip,
        }
    }
}

/// A [`BlockQuantizedMatMul`]'s packed weights.
enum PackedBlocks {
    /// Scaled block by block.
    Blocks(BlockScaledWeights),
    /// Int8 per column, with the column scales.
    PerColumn { weights: PackedI8, scales: Vec<f32> },
}

impl Op for BlockQuantizedMatMul {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        let elements = super::output_elements(outputs);
        super::Work::macs(elements * super::input_dim(inputs, 0, -1), true) + self.epilogue.work(elements)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let q = required(inputs, 1)?;
        expect_dtype(q, &[DataType::U8, DataType::I8, DataType::U4, DataType::I4], "weights")?;
        expect_dtype(required(inputs, 2)?, &[DataType::F32], "scale")?;
        let (k, n) = self.k_n(&q.shape)?;
        let shape = weights_product_shape(required(inputs, 0)?, &Fact::new(q.dtype, vec![k, n]))?;
        if let Some(bias) = optional(inputs, 4) {
            expect_dtype(bias, &[DataType::F32], "bias")?;
            ensure!(bias.shape.iter().product::<usize>() == n, "bias has shape {:?}; N = {n} values expected", bias.shape);
        }
        self.epilogue.check_residual(optional(inputs, 5), &shape)?;
        Ok(vec![Fact::new(DataType::F32, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (a, q) = (required(inputs, 0)?, required(inputs, 1)?);
        let weights = self.weights.get(q, || self.pack(q, required(inputs, 2)?, optional(inputs, 3)))?;
        let (k, n) = self.k_n(q.shape())?;
        let mut shape = a.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        let mut y = pool.overwritable(numel(&shape)?);
        let bias = optional(inputs, 4).map(|b| b.as_slice::<f32>()).transpose()?;
        let residual = optional(inputs, 5).map(|r| r.as_slice::<f32>()).transpose()?;
        // The bias, then the epilogue, on each tile as it leaves the kernel.
        let finish = |row: usize, col0: usize, out: &mut [f32]| {
            if let Some(bias) = bias {
                for (y, &b) in out.iter_mut().zip(&bias[col0..]) {
                    *y += b;
                }
            }
            self.epilogue.apply(out, residual, row, col0, n);
        };
        match weights.as_ref() {
            PackedBlocks::Blocks(weights) => {
                let rows = quantize_rows(a.as_slice::<f32>()?, k, self.block);
                gemm_block_scaled(
                    best_gemm_u8i8(),
                    &rows,
                    weights,
                    &mut y,
                    #[inline(always)]
                    |row, col0, v, out| {
                        out.copy_from_slice(v);
                        finish(row, col0, out);
                    },
                );
            }
            PackedBlocks::PerColumn { weights, scales } => {
                // One block per row: activations quantized per row, symmetric (`q + 128`).
                let rows = quantize_rows(a.as_slice::<f32>()?, k, k.max(1));
                gemm_u8i8_with(
                    best_gemm_u8i8(),
                    &rows.offset_u8(),
                    128,
                    weights,
                    &mut y,
                    #[inline(always)]
                    |row, col0, acc, out| {
                        let a_scale = rows.scales[row];
                        for ((y, &v), &s) in out.iter_mut().zip(acc).zip(&scales[col0..]) {
                            *y = v as f32 * (a_scale * s);
                        }
                        finish(row, col0, out);
                    },
                );
            }
        }
        Ok(vec![out(shape, y)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn four_bit_blocks_with_packed_zero_points() {
        // K = 5 in blocks of 4 (the second block short, padded in the blob), N = 2.
        let op = MatMulNBits {
            k: 5,
            n: 2,
            bits: 4,
            block: 4,
            int8_compute: false,
            zeros: PreparedWeights::default(),
            int8: PreparedWeights::default(),
        };
        // Row 0: q = [1, 2, 3, 4 | 5], row 1: q = [15, 0, 8, 8 | 9]; 2 bytes per blob.
        let b = Tensor::from_vec(vec![2, 2, 2], vec![0x21u8, 0x43, 0x05, 0x00, 0x0f, 0x88, 0x09, 0x00]).unwrap();
        let scales = f32t(&[4], &[1.0, 2.0, 0.5, 0.25]);
        // Zero points: row 0 blocks (0, 1) → byte 0x10; row 1 blocks (8, 8) → 0x88.
        let zeros = Tensor::from_vec(vec![2], vec![0x10u8, 0x88]).unwrap();
        let a = f32t(&[1, 5], &[1., 1., 1., 1., 1.]);
        let bias = f32t(&[2], &[0.5, -0.5]);
        let y = run(&op, &[a, Some(b), scales, Some(zeros), None, bias]).unwrap();
        // Row 0: (1+2+3+4)·1 + (5−1)·2 = 18 (+0.5); row 1: (7 − 8 + 0 + 0)·0.5 + (9−8)·0.25 = −0.25 (−0.5).
        assert_close(&y[0], &[1, 2], &[18.5, -0.75]);
    }

    /// `accuracy_level` 4: int8 activations per block on the integer kernels, close to the
    /// f32 path, 8-bit weights with zero point 0 too (their differences span 0..=255); float
    /// zero points, which integer sums cannot carry, fall back to it.
    #[test]
    fn int8_compute_is_close_to_f32_and_exact_when_it_falls_back() {
        let (m, k, n, block) = (3usize, 96usize, 10usize, 32usize);
        let blocks = k / block;
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for (bits, zeros) in [(4usize, None), (8, None), (8, Some(DataType::U8)), (4, Some(DataType::F32))] {
            let blob = block * bits / 8;
            let b: Vec<u8> = (0..n * blocks * blob).map(|i| (i * 151 % 256) as u8).collect();
            let scales: Vec<f32> = (0..n * blocks).map(|i| 0.01 + 0.002 * i as f32).collect();
            let op = |int8_compute| MatMulNBits {
                k,
                n,
                bits,
                block,
                int8_compute,
                zeros: PreparedWeights::default(),
                int8: PreparedWeights::default(),
            };
            let zeros = zeros.map(|dtype| match dtype {
                DataType::U8 => Tensor::from_vec(vec![n * blocks], vec![0u8; n * blocks]).unwrap(),
                _ => Tensor::from_vec(vec![n * blocks], vec![7.5f32; n * blocks]).unwrap(),
            });
            let float_zeros = zeros.as_ref().is_some_and(|z| z.dtype() == DataType::F32);
            let inputs =
                [f32t(&[m, k], &a), Some(Tensor::from_vec(vec![n, blocks, blob], b.clone()).unwrap()), f32t(&[n * blocks], &scales), zeros];
            let exact = run(&op(false), &inputs).unwrap().remove(0);
            let int8 = run(&op(true), &inputs).unwrap().remove(0);
            let (exact, int8) = (exact.as_slice::<f32>().unwrap(), int8.as_slice::<f32>().unwrap());
            if float_zeros {
                assert_eq!(int8, exact, "float zero points must run in f32");
                continue;
            }
            let scale = exact.iter().map(|v| v.abs()).fold(0.0, f32::max);
            for (x, y) in int8.iter().zip(exact) {
                assert!((x - y).abs() <= 0.02 * scale, "{bits} bits: {x} vs {y} (outputs up to {scale})");
            }
            assert_ne!(int8, exact, "{bits} bits: the int8 path did not run");
        }
    }
}
