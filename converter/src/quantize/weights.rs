//! Weight quantizers, each with a reference dequantizer that computes exactly what
//! `DequantizeLinear` (or `Cast` from float16) computes on the stored values, so an error or
//! sensitivity measured on [`Quantized::dequantized`] weights is what the written file gives.
//!
//! - int8 per channel, symmetric (zero point 0, values in −127..=127), scale = max |w| / 127;
//! - uint4 block-wise with a zero point per block; scale and zero point searched per block for
//!   the least squared reconstruction error (plain min/max wastes levels on one outlier);
//!   optionally with block scales that are each column's base scale times 1, 2, 4 or 8, which
//!   the runtime runs as int8 per column (`(q − zero) · 2^e` fits in i8), at int8 speed;
//! - float16.
//!
//! ```
//! use distq_converter::quantize::weights::{Layout, Precision, quantize};
//! let w: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 10.0).collect();
//! // A [16, 4] MatMul weight: int4 blocks of 16 along the reduction axis (0).
//! let q = quantize(&w, &[16, 4], Precision::Int4 { block: 16, pow2_scales: false }, Layout { channel_axis: 1, reduction_axis: 0 }).unwrap();
//! assert_eq!(q.scale_shape, [1, 4]);
//! let err = w.iter().zip(q.dequantized()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
//! assert!(err <= q.scales.iter().fold(0f32, |m, &s| m.max(s)));
//! ```

use anyhow::{Result, bail, ensure};
use half::f16;

/// What a weight is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Precision {
    /// 4-bit with a scale and zero point per `block` values along the reduction axis.
    Int4 {
        /// Values per block: 32, 64 or 128.
        block: usize,
        /// Block scales that are their column's smallest times 1, 2, 4 or 8: the runtime
        /// computes the layer as int8 per column, about twice as fast as block by block, for
        /// somewhat more rounding error than free scales.
        pow2_scales: bool,
    },
    /// 8-bit per channel.
    Int8,
    /// IEEE half.
    F16,
    /// Left as it is.
    F32,
}

impl Precision {
    /// Short name: `int4-b32`, `int4-b32-pow2`, `int8`, `fp16`, `fp32`.
    pub fn name(self) -> String {
        match self {
            Precision::Int4 { block, pow2_scales: false } => format!("int4-b{block}"),
            Precision::Int4 { block, pow2_scales: true } => format!("int4-b{block}-pow2"),
            Precision::Int8 => "int8".into(),
            Precision::F16 => "fp16".into(),
            Precision::F32 => "fp32".into(),
        }
    }
}

/// Which axes of a weight mean what: per-channel scales run along `channel_axis` (a MatMul
/// weight's output columns, a Conv's output channels, an embedding table's rows), int4
/// blocks along `reduction_axis` (the axis the consumer sums over, or the embedding width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The axis with one int8 scale per index.
    pub channel_axis: usize,
    /// The axis int4 blocks run along.
    pub reduction_axis: usize,
}

/// The stored values.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// int8 values.
    I8(Vec<i8>),
    /// uint4 values, one per byte (packed when written).
    U4(Vec<u8>),
    /// float16 bits.
    F16(Vec<u16>),
}

/// A quantized weight: values, and the `DequantizeLinear` parameters that restore it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// What it was quantized to.
    pub precision: Precision,
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// The stored values, in the weight's element order.
    pub values: Stored,
    /// Scales (empty for float16).
    pub scales: Vec<f32>,
    /// uint4 zero points, one per scale (int4 only).
    pub zero_points: Vec<u8>,
    /// Shape of the scale tensor: `[channels]` per channel, the weight's shape with the
    /// reduction axis divided into blocks for int4.
    pub scale_shape: Vec<usize>,
    /// `DequantizeLinear`'s `axis`.
    pub axis: usize,
    /// `DequantizeLinear`'s `block_size` (int4).
    pub block: Option<usize>,
}

/// Quantizes `w` (of `shape`) to `precision`.
pub fn quantize(w: &[f32], shape: &[usize], precision: Precision, layout: Layout) -> Result<Quantized> {
    ensure!(w.len() == shape.iter().product::<usize>(), "{} values do not fill shape {shape:?}", w.len());
    ensure!(layout.channel_axis < shape.len() && layout.reduction_axis < shape.len(), "axes {layout:?} outside shape {shape:?}");
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        bail!("value {i} is {} (weights must be finite to quantize)", w[i]);
    }
    Ok(match precision {
        Precision::Int8 => int8_per_channel(w, shape, layout.channel_axis),
        Precision::Int4 { block, pow2_scales } => {
            let whole = shape[layout.reduction_axis];
            ensure!(
                block >= 16 && (block.is_power_of_two() || block == whole),
                "int4 block size {block} is not a power of two ≥ 16 (nor the whole reduction axis, {whole})"
            );
            int4_blocks(w, shape, layout.reduction_axis, block, pow2_scales)
        }
        Precision::F16 => {
            let too_big = w.iter().position(|v| v.abs() > f16::MAX.to_f32());
            ensure!(too_big.is_none(), "value {} is {} (beyond float16's ±65504)", too_big.unwrap_or(0), w[too_big.unwrap_or(0)]);
            let bits = w.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            Quantized {
                precision,
                shape: shape.to_vec(),
                values: Stored::F16(bits),
                scales: vec![],
                zero_points: vec![],
                scale_shape: vec![],
                axis: 0,
                block: None,
            }
        }
        Precision::F32 => bail!("fp32 is not a quantized precision"),
    })
}

/// `[outer, n, inner]`: the weight seen around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

/// Round half to even, as `QuantizeLinear` does. Adding and taking away 1.5 · 2²³ rounds in
/// the FPU's default mode (to nearest, ties to even) inline: `round_ties_even` is a libm call
/// on baseline x86-64, and the int4 range search rounds every weight 63 times.
#[inline]
fn round(v: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0;
    // Exact below 2²² (the sum stays where f32's step is 1); quantized values are far below.
    if v.abs() < 4_194_304.0 { (v + SHIFT) - SHIFT } else { v.round_ties_even() }
}

fn int8_per_channel(w: &[f32], shape: &[usize], axis: usize) -> Quantized {
    let (_, n, inner) = around(shape, axis);
    let mut max = vec![0f32; n];
    for (i, &v) in w.iter().enumerate() {
        let c = i / inner % n;
        max[c] = max[c].max(v.abs());
    }
    // An all-zero channel still needs a non-zero scale; its values stay 0 either way.
    let scales: Vec<f32> = max.iter().map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 }).collect();
    let values = w.iter().enumerate().map(|(i, &v)| round(v / scales[i / inner % n]).clamp(-127.0, 127.0) as i8).collect();
    Quantized {
        precision: Precision::Int8,
        shape: shape.to_vec(),
        values: Stored::I8(values),
        scales,
        zero_points: vec![],
        scale_shape: vec![n],
        axis,
        block: None,
    }
}

/// Range shrink steps tried per int4 block: the range times 1, 0.975, …, 0.5.
const SHRINK_STEPS: usize = 21;

/// The (scale, zero point) with the least squared error for one block: each shrunken range,
/// with its rounded zero point and the two beside it.
pub(super) fn int4_block(values: &[f32]) -> (f32, u8) {
    let (lo, hi) = block_range(values);
    if hi == lo {
        return (1.0, 8);
    }
    let scales = (0..SHRINK_STEPS).map(|step| (hi - lo) * (1.0 - 0.025 * step as f32) / 15.0);
    let (_, scale, zero) = best_of(values, scales);
    (scale, zero)
}

/// The (scale, zero point) with the least squared error for one block among the scales
/// `base · 2^e`, e ≤ 3, and that error.
pub(super) fn int4_block_pow2(values: &[f32], base: f32) -> (f32, u8, f32) {
    let (err, scale, zero) = best_of(values, (0..4).map(|e| base * (1 << e) as f32));
    (scale, zero, err)
}

fn block_range(values: &[f32]) -> (f32, f32) {
    (values.iter().fold(0f32, |m, &v| m.min(v)), values.iter().fold(0f32, |m, &v| m.max(v)))
}

/// The (error, scale, zero point) with the least squared error among `scales`, each with its
/// rounded zero point and the two beside it.
fn best_of(values: &[f32], scales: impl Iterator<Item = f32>) -> (f32, f32, u8) {
    let (lo, _) = block_range(values);
    let mut best = (f32::INFINITY, 1.0, 8u8);
    for scale in scales {
        let center = round(-lo / scale);
        let zeros = [center - 1.0, center, center + 1.0].map(|zero| zero.clamp(0.0, 15.0) as u8);
        // The three zero points in one pass: a value's division and rounding do not depend on
        // the zero point (this search is most of the time `distq quantize` spends on weights).
        let error = |v: f32, steps: f32, zero: u8| (v - dequantize_u4(offset_u4(steps, zero), scale, zero)).powi(2);
        let mut errs = [0f32; 3];
        for &v in values {
            let steps = round(v / scale);
            errs[0] += error(v, steps, zeros[0]);
            errs[1] += error(v, steps, zeros[1]);
            errs[2] += error(v, steps, zeros[2]);
        }
        for (err, zero) in errs.into_iter().zip(zeros) {
            if err < best.0 {
                best = (err, scale, zero);
            }
        }
    }
    best
}

/// Base scales tried per column, relative to its largest free block scale over 8: a quarter
/// octave apart, so the top block's scale lands within 2^(1/8) of any value it wants.
const POW2_BASES: [f32; 4] = [0.707_106_77, 0.840_896_4, 1.0, 1.189_207_1];

#[inline]
pub(super) fn quantize_u4(v: f32, scale: f32, zero: u8) -> u8 {
    offset_u4(round(v / scale), zero)
}

/// `QuantizeLinear`'s saturation of a value's rounded steps, offset by the zero point.
#[inline]
fn offset_u4(steps: f32, zero: u8) -> u8 {
    (steps + zero as f32).clamp(0.0, 15.0) as u8
}

/// `DequantizeLinear`'s formula: `(q − zero) · scale`.
#[inline]
pub(super) fn dequantize_u4(q: u8, scale: f32, zero: u8) -> f32 {
    (q as i32 - zero as i32) as f32 * scale
}

fn int4_blocks(w: &[f32], shape: &[usize], axis: usize, block: usize, pow2_scales: bool) -> Quantized {
    let (outer, n, inner) = around(shape, axis);
    let blocks = n.div_ceil(block);
    let mut scale_shape = shape.to_vec();
    scale_shape[axis] = blocks;
    let (mut scales, mut zero_points) = (vec![0f32; outer * blocks * inner], vec![0u8; outer * blocks * inner]);
    let mut values = vec![0u8; w.len()];
    for o in 0..outer {
        for t in 0..inner {
            let index = |j: usize| (o * n + j) * inner + t;
            // This column's blocks, gathered.
            let column: Vec<Vec<f32>> = (0..blocks).map(|b| (b * block..((b + 1) * block).min(n)).map(|j| w[index(j)]).collect()).collect();
            let mut chosen: Vec<(f32, u8)> = column.iter().map(|v| int4_block(v)).collect();
            if pow2_scales {
                // Constant blocks (dead inputs give all-zero ones) want no particular scale.
                let varied = column.iter().zip(&chosen).filter(|(v, _)| block_range(v).0 != block_range(v).1);
                let top = varied.fold(0f32, |m, (_, &(s, _))| m.max(s));
                let top = if top > 0.0 { top / 8.0 } else { 1.0 };
                let per_base = POW2_BASES.map(|f| {
                    let picks: Vec<(f32, u8, f32)> = column.iter().map(|v| int4_block_pow2(v, top * f)).collect();
                    (picks.iter().map(|p| p.2).sum::<f32>(), picks)
                });
                let (_, picks) = per_base.into_iter().min_by(|a, b| a.0.total_cmp(&b.0)).expect("four bases");
                chosen = picks.into_iter().map(|(s, z, _)| (s, z)).collect();
            }
            for (b, &(scale, zero)) in chosen.iter().enumerate() {
                let g = (o * blocks + b) * inner + t;
                (scales[g], zero_points[g]) = (scale, zero);
                for j in b * block..((b + 1) * block).min(n) {
                    values[index(j)] = quantize_u4(w[index(j)], scale, zero);
                }
            }
        }
    }
    Quantized {
        precision: Precision::Int4 { block, pow2_scales },
        shape: shape.to_vec(),
        values: Stored::U4(values),
        scales,
        zero_points,
        scale_shape,
        axis,
        block: Some(block),
    }
}

impl Quantized {
    /// The weight as `DequantizeLinear` / `Cast` will restore it.
    pub fn dequantized(&self) -> Vec<f32> {
        let (outer, n, inner) = around(&self.shape, self.axis);
        match &self.values {
            Stored::I8(q) => q.iter().enumerate().map(|(i, &v)| v as i32 as f32 * self.scales[i / inner % n]).collect(),
            Stored::U4(q) => {
                let block = self.block.unwrap_or(n);
                let blocks = n.div_ceil(block);
                debug_assert_eq!(self.scales.len(), outer * blocks * inner);
                q.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let (o, j, t) = (i / (n * inner), i / inner % n, i % inner);
                        let g = (o * blocks + j / block) * inner + t;
                        dequantize_u4(v, self.scales[g], self.zero_points[g])
                    })
                    .collect()
            }
            Stored::F16(bits) => bits.iter().map(|&b| f16::from_bits(b).to_f32()).collect(),
        }
    }

    /// Bytes the stored values, scales and zero points take in the file.
    pub fn stored_bytes(&self) -> usize {
        let values = match &self.values {
            Stored::I8(q) => q.len(),
            Stored::U4(q) => q.len().div_ceil(2),
            Stored::F16(q) => 2 * q.len(),
        };
        values + 4 * self.scales.len() + self.zero_points.len().div_ceil(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(n: usize) -> Vec<f32> {
        // Bell-shaped (a sum of four uniforms) with a few outliers, like trained weights.
        let u = |i: usize, k: usize| ((i * 7919 + k * 104_729) % 1009) as f32 / 1009.0 - 0.5;
        (0..n).map(|i| (u(i, 0) + u(i, 1) + u(i, 2) + u(i, 3)) * if i % 61 == 0 { 4.0 } else { 1.0 }).collect()
    }

    #[test]
    fn int8_per_channel_rounds_within_half_a_step() {
        let shape = [6, 5];
        let w = weights(30);
        let q = quantize(&w, &shape, Precision::Int8, Layout { channel_axis: 1, reduction_axis: 0 }).unwrap();
        assert_eq!((q.scale_shape.as_slice(), q.axis), ([5].as_slice(), 1));
        for (i, (a, b)) in w.iter().zip(q.dequantized()).enumerate() {
            assert!((a - b).abs() <= q.scales[i % 5] / 2.0 + 1e-7, "element {i}: {a} vs {b}");
        }
        // The largest magnitude of each column maps to ±127 exactly.
        let Stored::I8(v) = &q.values else { panic!("int8") };
        for c in 0..5 {
            assert_eq!((0..6).map(|r| v[r * 5 + c].unsigned_abs()).max(), Some(127));
        }
    }

    #[test]
    fn int4_search_beats_plain_min_max() {
        let (shape, block) = ([256, 3], 32);
        let w = weights(768);
        let q = quantize(&w, &shape, Precision::Int4 { block, pow2_scales: false }, Layout { channel_axis: 1, reduction_axis: 0 }).unwrap();
        assert_eq!(q.scale_shape, [8, 3]);
        let searched: f32 = w.iter().zip(q.dequantized()).map(|(a, b)| (a - b).powi(2)).sum();
        // Plain min/max on the same blocks.
        let mut plain = 0f32;
        for b in 0..8 {
            for c in 0..3 {
                let vals: Vec<f32> = (b * 32..b * 32 + 32).map(|r| w[r * 3 + c]).collect();
                let (lo, hi) = (vals.iter().fold(0f32, |m, &v| m.min(v)), vals.iter().fold(0f32, |m, &v| m.max(v)));
                let scale = (hi - lo) / 15.0;
                let zero = round(-lo / scale) as u8;
                plain += vals.iter().map(|&v| (v - dequantize_u4(quantize_u4(v, scale, zero), scale, zero)).powi(2)).sum::<f32>();
            }
        }
        assert!(searched < 0.98 * plain, "searched {searched} vs min/max {plain}");
    }

    /// Power-of-two block scales: each column's scales are its smallest times 1, 2, 4 or 8
    /// exactly (what the runtime checks to run the layer as int8), the values restore within
    /// half a step, and the error lies between free block scales' and one scale per column's.
    #[test]
    fn int4_pow2_scales_are_powers_of_two_apart() {
        let (k, n, block) = (256, 5, 32);
        // Blocks of different magnitudes, as rows of trained weights have.
        let w: Vec<f32> = weights(k * n).iter().enumerate().map(|(i, v)| v * [1.0, 0.3, 2.2, 0.6][i / n / block % 4]).collect();
        let layout = Layout { channel_axis: 1, reduction_axis: 0 };
        let error = |precision| {
            let q = quantize(&w, &[k, n], precision, layout).unwrap();
            (w.iter().zip(q.dequantized()).map(|(a, b)| (a - b).powi(2)).sum::<f32>(), q)
        };
        let (pow2_error, q) = error(Precision::Int4 { block, pow2_scales: true });
        assert_eq!((q.scale_shape.as_slice(), q.precision.name()), ([8, 5].as_slice(), "int4-b32-pow2".to_string()));
        for j in 0..n {
            let column: Vec<f32> = (0..8).map(|b| q.scales[b * n + j]).collect();
            let base = column.iter().fold(f32::INFINITY, |m, &s| m.min(s));
            assert!(column.iter().all(|&s| (0..4).any(|e| base * (1 << e) as f32 == s)), "column {j}: {column:?}");
        }
        for (i, (a, b)) in w.iter().zip(q.dequantized()).enumerate() {
            let g = (i / n / block) * n + i % n;
            let (scale, zero) = (q.scales[g], q.zero_points[g] as f32);
            let inside = (-zero * scale..=(15.0 - zero) * scale).contains(a);
            assert!(!inside || (a - b).abs() <= scale / 2.0 + 1e-6, "element {i}: {a} vs {b}");
        }
        let (free_error, _) = error(Precision::Int4 { block, pow2_scales: false });
        let (per_column_error, _) = error(Precision::Int4 { block: k, pow2_scales: false });
        assert!(
            free_error < pow2_error && pow2_error < per_column_error,
            "free {free_error}, pow2 {pow2_error}, per column {per_column_error}"
        );
    }

    #[test]
    fn rounding_is_half_to_even_as_round_ties_even() {
        let mut values = vec![0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 8_388_609.0, 4_194_303.5, -4_194_304.5, f32::MAX, f32::INFINITY];
        values.extend((-2000..2000).map(|i| i as f32 * 0.137));
        for v in values {
            // By value: −0.5 rounds to +0 here, to −0 in libm, which quantize the same.
            assert_eq!(round(v), v.round_ties_even(), "{v}");
        }
        assert!(round(f32::NAN).is_nan());
    }

    #[test]
    fn int4_blocks_cover_a_short_tail_and_any_axis() {
        // An embedding table [rows, width]: blocks along the width (axis 1), 40 = 32 + 8.
        let w = weights(3 * 40);
        let q = quantize(&w, &[3, 40], Precision::Int4 { block: 32, pow2_scales: false }, Layout { channel_axis: 0, reduction_axis: 1 })
            .unwrap();
        assert_eq!((q.scale_shape.as_slice(), q.axis, q.block), ([3, 2].as_slice(), 1, Some(32)));
        let worst = w.iter().zip(q.dequantized()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 0.6, "worst error {worst}");
        assert_eq!(q.stored_bytes(), 60 + 6 * 4 + 3);
    }

    #[test]
    fn float16_and_bad_weights() {
        let q = quantize(&[1.0, -0.333, 6e4], &[3], Precision::F16, Layout { channel_axis: 0, reduction_axis: 0 }).unwrap();
        assert_eq!(q.dequantized(), [1.0, f16::from_f32(-0.333).to_f32(), f16::from_f32(6e4).to_f32()]);
        let layout = Layout { channel_axis: 0, reduction_axis: 0 };
        let err = quantize(&[1.0, 7e4], &[2], Precision::F16, layout).unwrap_err().to_string();
        assert!(err.contains("65504"), "{err}");
        let err = quantize(&[1.0, f32::NAN], &[2], Precision::Int8, layout).unwrap_err().to_string();
        assert!(err.contains("value 1 is NaN"), "{err}");
        assert!(quantize(&[0.0; 4], &[4], Precision::Int8, layout).unwrap().dequantized().iter().all(|&v| v == 0.0));
    }
}
