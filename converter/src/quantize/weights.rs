//! Weight quantizers, each with a reference dequantizer that computes exactly what
//! `DequantizeLinear` (or `Cast` from float16) computes on the stored values, so an error or
//! sensitivity measured on [`Quantized::dequantized`] weights is what the written file gives.
//!
//! - int8 per channel, symmetric (zero point 0, values in −127..=127), scale = max |w| / 127;
//! - uint4 block-wise with a zero point per block; scale and zero point searched per block for
//!   the least squared reconstruction error (plain min/max wastes levels on one outlier);
//! - float16.
//!
//! ```
//! use distq_converter::quantize::weights::{Layout, Precision, quantize};
//! let w: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 10.0).collect();
//! // A [16, 4] MatMul weight: int4 blocks of 16 along the reduction axis (0).
//! let q = quantize(&w, &[16, 4], Precision::Int4 { block: 16 }, Layout { channel_axis: 1, reduction_axis: 0 }).unwrap();
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
    },
    /// 8-bit per channel.
    Int8,
    /// IEEE half.
    F16,
    /// Left as it is.
    F32,
}

impl Precision {
    /// Short name: `int4-b32`, `int8`, `fp16`, `fp32`.
    pub fn name(self) -> String {
        match self {
            Precision::Int4 { block } => format!("int4-b{block}"),
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
        Precision::Int4 { block } => {
            let whole = shape[layout.reduction_axis];
            ensure!(
                block >= 16 && (block.is_power_of_two() || block == whole),
                "int4 block size {block} is not a power of two ≥ 16 (nor the whole reduction axis, {whole})"
            );
            int4_blocks(w, shape, layout.reduction_axis, block)
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
    let lo = values.iter().fold(0f32, |m, &v| m.min(v));
    let hi = values.iter().fold(0f32, |m, &v| m.max(v));
    if hi == lo {
        return (1.0, 8);
    }
    let mut best = (f32::INFINITY, 1.0, 8u8);
    for step in 0..SHRINK_STEPS {
        let scale = (hi - lo) * (1.0 - 0.025 * step as f32) / 15.0;
        let center = round(-lo / scale);
        for zero in [center - 1.0, center, center + 1.0] {
            let zero = zero.clamp(0.0, 15.0) as u8;
            let err: f32 = values.iter().map(|&v| (v - dequantize_u4(quantize_u4(v, scale, zero), scale, zero)).powi(2)).sum();
            if err < best.0 {
                best = (err, scale, zero);
            }
        }
    }
    (best.1, best.2)
}

pub(super) fn quantize_u4(v: f32, scale: f32, zero: u8) -> u8 {
    (round(v / scale) + zero as f32).clamp(0.0, 15.0) as u8
}

/// `DequantizeLinear`'s formula: `(q − zero) · scale`.
pub(super) fn dequantize_u4(q: u8, scale: f32, zero: u8) -> f32 {
    (q as i32 - zero as i32) as f32 * scale
}

fn int4_blocks(w: &[f32], shape: &[usize], axis: usize, block: usize) -> Quantized {
    let (outer, n, inner) = around(shape, axis);
    let blocks = n.div_ceil(block);
    let mut scale_shape = shape.to_vec();
    scale_shape[axis] = blocks;
    let (mut scales, mut zero_points) = (vec![0f32; outer * blocks * inner], vec![0u8; outer * blocks * inner]);
    let mut values = vec![0u8; w.len()];
    let mut gathered = Vec::with_capacity(block);
    for o in 0..outer {
        for b in 0..blocks {
            for t in 0..inner {
                let index = |j: usize| (o * n + j) * inner + t;
                let rows = b * block..((b + 1) * block).min(n);
                gathered.clear();
                gathered.extend(rows.clone().map(|j| w[index(j)]));
                let (scale, zero) = int4_block(&gathered);
                let g = (o * blocks + b) * inner + t;
                (scales[g], zero_points[g]) = (scale, zero);
                for j in rows {
                    values[index(j)] = quantize_u4(w[index(j)], scale, zero);
                }
            }
        }
    }
    Quantized {
        precision: Precision::Int4 { block },
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
        let q = quantize(&w, &shape, Precision::Int4 { block }, Layout { channel_axis: 1, reduction_axis: 0 }).unwrap();
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
        let q = quantize(&w, &[3, 40], Precision::Int4 { block: 32 }, Layout { channel_axis: 0, reduction_axis: 1 }).unwrap();
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
