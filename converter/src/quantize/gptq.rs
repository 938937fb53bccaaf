//! Error-compensating rounding (GPTQ, Frantar et al. 2022) for the weights of MatMul and
//! 1×1 Conv layers. Rounding each weight to its nearest level ignores how the layer's inputs
//! correlate; GPTQ rounds one input column at a time and pushes each column's rounding error
//! onto the columns not yet rounded, weighted by the inverse of the inputs' second moments
//! `H = Σ x xᵀ` (observed on the calibration samples), which minimizes the error of the
//! layer's *outputs* `‖X W − X Ŵ‖²` rather than of its weights. int4 blocks get their scale
//! and zero point (the same least-squares search as plain rounding) from the compensated
//! values when the walk reaches them. The result is an ordinary [`Quantized`] weight.

use super::calibrate::ChannelAxis;
use super::qdq::Layer;
use super::weights::{Layout, Precision, Quantized, Stored, dequantize_u4, int4_block, int4_block_pow2, quantize_u4};
use anyhow::{Result, bail, ensure};
use serde::Serialize;

/// How int4 weights are rounded to their levels (int8 always goes to the nearest: on
/// PP-OCR's classifier GPTQ made int8 worse on unseen crops while int4 gained).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// Each weight to its nearest level.
    Nearest,
    /// GPTQ's error compensation where it applies (MatMul and 1×1 Conv weights), nearest
    /// elsewhere.
    Gptq,
}

/// Whether GPTQ applies to `layer`: a MatMul weight, or a 1×1 Conv without groups. Returns
/// the axis of the layer's input along which its vectors run (last, or 1 for NCHW).
pub fn input_axis(layer: &Layer) -> Option<ChannelAxis> {
    match layer.op.as_str() {
        "MatMul" if layer.shape.len() == 2 => Some(ChannelAxis::Last),
        "Conv" if layer.groups == 1 && layer.shape[2..].iter().all(|&d| d == 1) => Some(ChannelAxis::Second),
        _ => None,
    }
}

/// The second moments `Σ x xᵀ` of a layer's input vectors (length `k`) over the calibration
/// samples.
#[derive(Debug, Clone)]
pub struct Hessian {
    /// Input length (the weight's reduction axis).
    pub k: usize,
    /// `k × k`, row-major.
    sum: Vec<f64>,
    /// Input vectors seen.
    pub vectors: usize,
    /// The factor GPTQ walks ([`inverse_factor`]), computed once for all the layers and
    /// precisions reading this input.
    factor: std::cell::OnceCell<Option<Vec<f64>>>,
}

impl Hessian {
    /// Nothing seen yet.
    pub fn new(k: usize) -> Self {
        Self { k, sum: vec![0.0; k * k], vectors: 0, factor: std::cell::OnceCell::new() }
    }

    /// Adds the input vectors of an activation batch of `shape` whose vectors run along
    /// `axis` (the last axis for a MatMul, axis 1 of NCHW for a Conv).
    ///
    /// ```
    /// use distq_converter::quantize::gptq::Hessian;
    /// let mut h = Hessian::new(2);
    /// // Two vectors along the last axis: [1, 2] and [3, 4].
    /// h.add(&[1.0, 2.0, 3.0, 4.0], &[2, 2], 1).unwrap();
    /// assert_eq!(h.vectors, 2);
    /// assert_eq!(h.get(0, 1), 1.0 * 2.0 + 3.0 * 4.0);
    /// ```
    pub fn add(&mut self, values: &[f32], shape: &[usize], axis: usize) -> Result<()> {
        ensure!(axis < shape.len() && shape[axis] == self.k, "input of shape {shape:?} has no axis {axis} of length {}", self.k);
        let (outer, inner): (usize, usize) = (shape[..axis].iter().product(), shape[axis + 1..].iter().product());
        let x: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        let k = self.k;
        // Each slice is a k × columns matrix A (row stride `row`, column stride `col`) whose
        // columns are input vectors; Σ x xᵀ over them is A Aᵀ. Vectors along the last axis
        // form one k × outer matrix; NCHW gives one k × HW matrix per sample.
        let (slices, columns, row, col) = if inner == 1 { (1, outer, 1, k) } else { (outer, inner, inner, 1) };
        for o in 0..slices {
            let a = &x[o * k * columns..(o + 1) * k * columns];
            // SAFETY: a is k × columns with the strides given, sum is k × k; both live
            // through the call and do not overlap.
            unsafe {
                matrixmultiply::dgemm(
                    k,
                    columns,
                    k,
                    1.0,
                    a.as_ptr(),
                    row as isize,
                    col as isize,
                    a.as_ptr(),
                    col as isize,
                    row as isize,
                    1.0,
                    self.sum.as_mut_ptr(),
                    k as isize,
                    1,
                );
            }
        }
        self.vectors += outer * inner;
        self.factor = std::cell::OnceCell::new();
        Ok(())
    }

    /// Whether enough input vectors were seen for the compensation to generalize: with fewer
    /// than a few per dimension, `H` only spans the calibration samples' subspace and GPTQ
    /// fits them at the expense of every other input.
    pub fn well_sampled(&self) -> bool {
        self.vectors >= MIN_VECTORS_PER_DIMENSION * self.k
    }

    /// Entry `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> f64 {
        self.sum[i * self.k + j]
    }
}

/// Input vectors per input dimension GPTQ needs (see [`Hessian::well_sampled`]).
const MIN_VECTORS_PER_DIMENSION: usize = 4;

/// Relative damping added to the diagonal (GPTQ's default), raised tenfold while the matrix
/// is not positive definite.
const DAMPING: f64 = 0.01;

/// The lower Cholesky factor of the `n × n` matrix `a`, or `None` if it is not positive
/// definite.
fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|p| l[i * n + p] * l[j * n + p]).sum();
            let v = a[i * n + j] - dot;
            if i == j {
                if !(v > 0.0 && v.is_finite()) {
                    return None;
                }
                l[i * n + i] = v.sqrt();
            } else {
                l[i * n + j] = v / l[j * n + j];
            }
        }
    }
    Some(l)
}

/// The upper factor `U` with `H⁻¹ = Uᵀ U`, for `h` damped until it factors.
fn inverse_factor(h: &Hessian) -> Option<Vec<f64>> {
    let n = h.k;
    let mean_diagonal = (0..n).map(|i| h.get(i, i)).sum::<f64>() / n.max(1) as f64;
    let mut damping = DAMPING * mean_diagonal.max(1e-12);
    for _ in 0..6 {
        let mut a = h.sum.clone();
        for i in 0..n {
            // A dead input (always 0) would make H singular; its weights never matter.
            if a[i * n + i] == 0.0 {
                a[i * n + i] = 1.0;
            }
            a[i * n + i] += damping;
        }
        if let Some(l) = cholesky(&a, n) {
            // L⁻¹ by forward substitution, one column c at a time, stored transposed
            // (`inv_t[c][i] = L⁻¹[i][c]`) so that every inner loop runs along rows.
            let mut inv_t = vec![0.0; n * n];
            for c in 0..n {
                for i in c..n {
                    let s: f64 = (c..i).map(|p| l[i * n + p] * inv_t[c * n + p]).sum();
                    inv_t[c * n + i] = (if i == c { 1.0 } else { 0.0 } - s) / l[i * n + i];
                }
            }
            // H⁻¹ = L⁻ᵀ L⁻¹ = inv_t · inv_tᵀ.
            let mut hinv = vec![0.0; n * n];
            // SAFETY: all three are n × n with the strides given and live through the call.
            unsafe {
                matrixmultiply::dgemm(
                    n,
                    n,
                    n,
                    1.0,
                    inv_t.as_ptr(),
                    n as isize,
                    1,
                    inv_t.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    hinv.as_mut_ptr(),
                    n as isize,
                    1,
                );
            }
            // Upper factor of H⁻¹: the transpose of its lower Cholesky factor.
            if let Some(lower) = cholesky(&hinv, n) {
                let mut u = vec![0.0; n * n];
                for i in 0..n {
                    for j in 0..=i {
                        u[j * n + i] = lower[i * n + j];
                    }
                }
                return Some(u);
            }
        }
        damping *= 10.0;
    }
    None
}

/// Re-rounds `q` (quantized from `w` with `layout`, int8 per channel or int4 blocks along the
/// reduction axis) with GPTQ's error compensation for inputs of second moments `h`. The
/// weight must be 2-D apart from axes of length 1 (MatMul, Gemm, 1×1 Conv).
pub fn refine(q: &mut Quantized, w: &[f32], layout: Layout, h: &Hessian) -> Result<()> {
    let shape = q.shape.clone();
    ensure!(
        shape.iter().enumerate().all(|(a, &d)| d == 1 || a == layout.channel_axis || a == layout.reduction_axis),
        "GPTQ needs a 2-D weight (got {shape:?})"
    );
    let stride = |axis: usize| shape[axis + 1..].iter().product::<usize>();
    let (rows, k) = (shape[layout.channel_axis], shape[layout.reduction_axis]);
    ensure!(h.k == k, "input vectors of length {} for a weight reducing over {k}", h.k);
    let (row_stride, col_stride) = (stride(layout.channel_axis), stride(layout.reduction_axis));
    let index = |r: usize, c: usize| r * row_stride + c * col_stride;
    let Some(u) = h.factor.get_or_init(|| inverse_factor(h)).as_ref() else {
        bail!("the inputs' second moments do not factor even when damped")
    };
    // Scale / zero point index of (row, block) for int4: DequantizeLinear's block layout.
    let (n, inner) = (k, col_stride);
    let group = |r: usize, b: usize, block: usize| {
        let i = index(r, 0);
        let (o, t) = (i / (n * inner), i % inner);
        (o * n.div_ceil(block) + b) * inner + t
    };
    // The weight as rows × k, row-major: the compensation runs along rows. Dead inputs
    // (always 0) contribute nothing and get weight 0.
    let mut work = vec![0f64; rows * k];
    for r in 0..rows {
        for c in (0..k).filter(|&c| h.get(c, c) != 0.0) {
            work[r * k + c] = w[index(r, c)] as f64;
        }
    }
    let mut gathered = Vec::new();
    let pow2_scales = matches!(q.precision, Precision::Int4 { pow2_scales: true, .. });
    for r in 0..rows {
        // With power-of-two block scales, blocks keep the row's smallest as their base.
        let base = match q.block {
            Some(block) if pow2_scales => (0..k.div_ceil(block)).map(|b| q.scales[group(r, b, block)]).fold(f32::INFINITY, f32::min),
            _ => 0.0,
        };
        let row = &mut work[r * k..(r + 1) * k];
        for c in 0..k {
            let x = row[c];
            let restored = match (&mut q.values, q.block) {
                (Stored::I8(values), _) => {
                    let scale = q.scales[r];
                    let v = (x as f32 / scale).round_ties_even().clamp(-127.0, 127.0);
                    values[index(r, c)] = v as i8;
                    v as f64 * scale as f64
                }
                (Stored::U4(values), Some(block)) => {
                    let g = group(r, c / block, block);
                    if c % block == 0 {
                        gathered.clear();
                        gathered.extend(row[c..(c + block).min(k)].iter().map(|&v| v as f32));
                        (q.scales[g], q.zero_points[g]) = if pow2_scales {
                            let (scale, zero, _) = int4_block_pow2(&gathered, base);
                            (scale, zero)
                        } else {
                            int4_block(&gathered)
                        };
                    }
                    let v = quantize_u4(x as f32, q.scales[g], q.zero_points[g]);
                    values[index(r, c)] = v;
                    dequantize_u4(v, q.scales[g], q.zero_points[g]) as f64
                }
                _ => bail!("GPTQ rounds int8 or int4 weights, not {:?}", q.precision),
            };
            let err = (x - restored) / u[c * k + c];
            for (v, &f) in row[c + 1..].iter_mut().zip(&u[c * k + c + 1..(c + 1) * k]) {
                *v -= err * f;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::weights::{Precision, quantize};

    /// `n` values from a 64-bit LCG, uniform in [-1, 1).
    fn uniform(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Inputs `[rows, k]` whose columns are strongly correlated (each a mix of 4 sources).
    fn correlated_inputs(rows: usize, k: usize) -> Vec<f32> {
        let sources = uniform(rows * 4, 7);
        let mix = uniform(4 * k, 8);
        let noise = uniform(rows * k, 9);
        (0..rows * k)
            .map(|i| {
                let (r, c) = (i / k, i % k);
                (0..4).map(|s| sources[r * 4 + s] * mix[s * k + c]).sum::<f32>() + 0.05 * noise[i]
            })
            .collect()
    }

    /// ‖X W − X Ŵ‖² for a MatMul weight `[k, n]`.
    fn output_error(x: &[f32], w: &[f32], restored: &[f32], k: usize, n: usize) -> f64 {
        x.chunks(k)
            .map(|row| {
                (0..n)
                    .map(|j| (0..k).map(|c| row[c] as f64 * (w[c * n + j] - restored[c * n + j]) as f64).sum::<f64>().powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    /// On correlated inputs GPTQ's output error is well below plain rounding's, for int8
    /// per channel and int4 blocks, with MatMul `[k, n]` and Conv `[n, k, 1, 1]` layouts.
    #[test]
    fn compensated_rounding_beats_nearest_on_correlated_inputs() {
        let (rows, k, n) = (256, 64, 24);
        let x = correlated_inputs(rows, k);
        let mut h = Hessian::new(k);
        h.add(&x, &[rows, k], 1).unwrap();
        let w = uniform(k * n, 3);
        let conv_w: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
        for precision in
            [Precision::Int8, Precision::Int4 { block: 32, pow2_scales: false }, Precision::Int4 { block: 32, pow2_scales: true }]
        {
            for conv in [false, true] {
                let (shape, layout, weight) = if conv {
                    (vec![n, k, 1, 1], Layout { channel_axis: 0, reduction_axis: 1 }, &conv_w)
                } else {
                    (vec![k, n], Layout { channel_axis: 1, reduction_axis: 0 }, &w)
                };
                let nearest = quantize(weight, &shape, precision, layout).unwrap();
                let mut refined = nearest.clone();
                refine(&mut refined, weight, layout, &h).unwrap();
                let as_matmul = |v: Vec<f32>| if conv { (0..k * n).map(|i| v[(i % n) * k + i / n]).collect() } else { v };
                let e_nearest = output_error(&x, &w, &as_matmul(nearest.dequantized()), k, n);
                let e_refined = output_error(&x, &w, &as_matmul(refined.dequantized()), k, n);
                assert!(e_refined < 0.5 * e_nearest, "{precision:?} conv={conv}: gptq {e_refined} vs nearest {e_nearest}");
            }
        }
    }

    /// With uncorrelated inputs of equal power (H ∝ I) there is nothing to compensate: GPTQ
    /// gives exactly the nearest rounding.
    #[test]
    fn identity_moments_change_nothing() {
        let (k, n) = (64, 8);
        let mut h = Hessian::new(k);
        let eye: Vec<f32> = (0..k * k).map(|i| if i / k == i % k { 1.0 } else { 0.0 }).collect();
        h.add(&eye, &[k, k], 1).unwrap();
        let w = uniform(k * n, 5);
        let layout = Layout { channel_axis: 1, reduction_axis: 0 };
        for precision in
            [Precision::Int8, Precision::Int4 { block: 32, pow2_scales: false }, Precision::Int4 { block: 32, pow2_scales: true }]
        {
            let nearest = quantize(&w, &[k, n], precision, layout).unwrap();
            let mut refined = nearest.clone();
            refine(&mut refined, &w, layout, &h).unwrap();
            assert_eq!(refined, nearest, "{precision:?}");
        }
    }

    /// NCHW activations (vectors along axis 1) give the same moments as their vectors laid
    /// out as rows.
    #[test]
    fn moments_of_nchw_equal_those_of_rows() {
        let (n, c, hw) = (3, 5, 7);
        let x = uniform(n * c * hw, 11);
        let mut nchw = Hessian::new(c);
        nchw.add(&x, &[n, c, hw, 1], 1).unwrap();
        let rows: Vec<f32> = (0..n * hw * c).map(|i| x[(i / c / hw) * c * hw + (i % c) * hw + i / c % hw]).collect();
        let mut by_rows = Hessian::new(c);
        by_rows.add(&rows, &[n * hw, c], 1).unwrap();
        assert_eq!(nchw.vectors, by_rows.vectors);
        for i in 0..c * c {
            assert!((nchw.sum[i] - by_rows.sum[i]).abs() < 1e-9, "{i}: {} vs {}", nchw.sum[i], by_rows.sum[i]);
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let h = Hessian::new(4);
        let layout = Layout { channel_axis: 0, reduction_axis: 1 };
        let w = vec![0.5; 2 * 4 * 3 * 3];
        let mut q = quantize(&w, &[2, 4, 3, 3], Precision::Int8, layout).unwrap();
        assert!(refine(&mut q, &w, layout, &h).unwrap_err().to_string().contains("2-D weight"));
        let mut wrong = Hessian::new(3);
        assert!(wrong.add(&[0.0; 8], &[2, 4], 1).is_err());
    }
}
