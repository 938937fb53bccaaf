//! Normalizations: BatchNormalization (inference), LayerNormalization, RMSNormalization,
//! Softmax, LogSoftmax.

use super::chain::{BLOCK, ChainStep, run_steps};
use super::{
    BufferPool, Fact, ImportCtx, Importer, Op, broadcast_shapes, broadcast_strides, expect_dtype, math, normalize_axis, optional, out,
    required, strides,
};
use crate::error::{Result, ensure};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[
    ("BatchNormalization", |c| Ok(Box::new(BatchNorm { epsilon: c.attrs.float("epsilon", 1e-5)? }))),
    ("LayerNormalization", |c| import_layer_norm(c, true)),
    ("RMSNormalization", |c| import_layer_norm(c, false)),
    // onnxruntime-genai's decoders: RMSNormalization under its contrib name.
    ("com.microsoft::SimplifiedLayerNormalization", |c| import_layer_norm(c, false)),
    // onnxruntime's fusions (and its genai model builder): the residual Add before the norm.
    ("com.microsoft::SkipLayerNormalization", |c| Ok(Box::new(SkipNorm { epsilon: c.attrs.float("epsilon", 1e-12)?, centered: true }))),
    ("com.microsoft::SkipSimplifiedLayerNormalization", |c| {
        Ok(Box::new(SkipNorm { epsilon: c.attrs.float("epsilon", 1e-12)?, centered: false }))
    }),
    ("Softmax", |c| import_softmax(c, false)),
    ("LogSoftmax", |c| import_softmax(c, true)),
];

/// `BatchNormalization(X, scale, B, mean, var)` in inference mode.
#[derive(Debug)]
pub struct BatchNorm {
    epsilon: f32,
}

impl Op for BatchNorm {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        ensure!(x.shape.len() >= 2, "input {:?} has no channel axis", x.shape);
        for i in 1..5 {
            let p = required(inputs, i)?;
            ensure!(p.shape == [x.shape[1]], "parameter {i} has shape {:?}, expected [{}]", p.shape, x.shape[1]);
        }
        Ok(vec![Fact::new(DataType::F32, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let p = (1..5).map(|i| required(inputs, i)?.as_slice::<f32>()).collect::<Result<Vec<_>>>()?;
        let c = x.shape()[1];
        let spatial: usize = x.shape()[2..].iter().product();
        let mut y = pool.take(x.len());
        for (i, chunk) in x.as_slice::<f32>()?.chunks(spatial.max(1)).enumerate() {
            let ch = i % c;
            let k = p[0][ch] / (p[3][ch] + self.epsilon).sqrt();
            let b = p[1][ch] - p[2][ch] * k;
            y.extend(chunk.iter().map(|&v| v * k + b));
        }
        Ok(vec![out(x.shape().to_vec(), y)?])
    }
}

/// `LayerNormalization(X, Scale, B?)` over the axes from `axis` to the end, and
/// `RMSNormalization(X, Scale)` (opset 23, a decoder's norm): the same without centering,
/// `x / sqrt(mean(x²) + ε) · scale`.
#[derive(Debug)]
pub struct LayerNorm {
    axis: i64,
    epsilon: f32,
    /// Subtracts the mean (LayerNormalization); without, the root mean square normalizes.
    centered: bool,
}

impl LayerNorm {
    /// RMSNormalization over the last axis (what fusion makes of a decoder's spelled-out norm).
    pub(crate) fn rms_over_last_axis(epsilon: f32) -> LayerNorm {
        LayerNorm { axis: -1, epsilon, centered: false }
    }
}

fn import_layer_norm(c: &ImportCtx, centered: bool) -> Result<Box<dyn Op>> {
    // Statistics are computed in f32 whatever stash_type asks: f32 is the only input dtype.
    Ok(Box::new(LayerNorm { axis: c.attrs.int("axis", -1)?, epsilon: c.attrs.float("epsilon", 1e-5)?, centered }))
}

impl Op for LayerNorm {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let norm: usize = x.shape[axis..].iter().product();
        for i in 1..3 {
            if let Some(p) = optional(inputs, i) {
                ensure!(
                    p.shape.iter().product::<usize>() == norm,
                    "parameter {i} of shape {:?} does not cover the normalized shape {:?}",
                    p.shape,
                    &x.shape[axis..]
                );
            }
        }
        let mut stat = x.shape.clone();
        stat[axis..].iter_mut().for_each(|d| *d = 1);
        Ok(vec![Fact::new(DataType::F32, x.shape.clone()), Fact::new(DataType::F32, stat.clone()), Fact::new(DataType::F32, stat)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, x.shape().len())?;
        let norm: usize = x.shape()[axis..].iter().product();
        let scale = required(inputs, 1)?.as_slice::<f32>()?;
        let bias = optional(inputs, 2).map(|b| b.as_slice::<f32>()).transpose()?;
        let mut y = pool.take(x.len());
        let (means, inv_stds) = layer_norm_rows(x.as_slice::<f32>()?, norm, scale, bias, self.epsilon, self.centered, &mut y);
        let mut stat = x.shape().to_vec();
        stat[axis..].iter_mut().for_each(|d| *d = 1);
        Ok(vec![out(x.shape().to_vec(), y)?, out(stat.clone(), means)?, out(stat, inv_stds)?])
    }
}

/// com.microsoft `SkipLayerNormalization(input, skip, gamma, beta?, bias?)` and
/// `SkipSimplifiedLayerNormalization(input, skip, gamma, bias?)`: `s = input + skip (+ bias)`
/// normalized over the last axis (centered, or by its root mean square), as LayerNorm does.
/// Outputs: the normalized `s`, its mean and 1/σ per row, and `s` itself (the residual stream
/// the next block adds to). `skip` is as large as `input` or a suffix of it, repeated.
#[derive(Debug)]
pub struct SkipNorm {
    epsilon: f32,
    centered: bool,
}

impl SkipNorm {
    /// Input slots of the optional beta and bias.
    fn beta_bias(&self) -> (Option<usize>, usize) {
        if self.centered { (Some(3), 4) } else { (None, 3) }
    }
}

impl Op for SkipNorm {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, skip) = (required(inputs, 0)?, required(inputs, 1)?);
        expect_dtype(x, &[DataType::F32], "input")?;
        expect_dtype(skip, &[DataType::F32], "skip")?;
        let hidden = *x.shape.last().ok_or_else(|| crate::error::Error::Op("input is a scalar; [.., hidden] expected".into()))?;
        let suffix = skip.shape.iter().skip_while(|&&d| d == 1).copied().collect::<Vec<_>>();
        ensure!(
            x.shape.ends_with(&suffix) && skip.shape.last() == Some(&hidden),
            "skip of shape {:?} does not repeat over input of shape {:?}",
            skip.shape,
            x.shape
        );
        let (beta, bias) = self.beta_bias();
        for (slot, what) in [(Some(2), "gamma"), (beta, "beta"), (Some(bias), "bias")] {
            if let Some(p) = slot.and_then(|i| optional(inputs, i)) {
                ensure!(p.shape.iter().product::<usize>() == hidden, "{what} of shape {:?}; {hidden} values expected", p.shape);
            }
        }
        let mut stat = x.shape.clone();
        *stat.last_mut().expect("checked above") = 1;
        let f = |shape: &Vec<usize>| Fact::new(DataType::F32, shape.clone());
        Ok(vec![f(&x.shape), f(&stat), f(&stat), f(&x.shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (x, skip) = (required(inputs, 0)?, required(inputs, 1)?.as_slice::<f32>()?);
        let hidden = *x.shape().last().unwrap_or(&1);
        let (beta, bias) = self.beta_bias();
        let param = |slot: Option<usize>| slot.and_then(|i| optional(inputs, i)).map(|t| t.as_slice::<f32>()).transpose();
        let (gamma, beta, bias) = (required(inputs, 2)?.as_slice::<f32>()?, param(beta)?, param(Some(bias))?);
        let mut sum = pool.take(x.len());
        for x in x.as_slice::<f32>()?.chunks(skip.len().max(1)) {
            sum.extend(x.iter().zip(skip).map(|(x, s)| x + s));
        }
        if let Some(bias) = bias {
            for row in sum.chunks_mut(hidden.max(1)) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
        let mut y = pool.take(x.len());
        let (means, inv_stds) = layer_norm_rows(&sum, hidden, gamma, beta, self.epsilon, self.centered, &mut y);
        let mut stat = x.shape().to_vec();
        *stat.last_mut().unwrap_or(&mut 0) = 1;
        Ok(vec![out(x.shape().to_vec(), y)?, out(stat.clone(), means)?, out(stat, inv_stds)?, out(x.shape().to_vec(), sum)?])
    }
}

crate::simd::widest_fn! {
    /// Normalizes each `norm`-long row of `x` into `y`, centered or not; returns each row's
    /// mean (0 uncentered) and 1/σ (1 / root mean square uncentered).
    fn layer_norm_rows(
        x: &[f32],
        norm: usize,
        scale: &[f32],
        bias: Option<&[f32]>,
        epsilon: f32,
        centered: bool,
        y: &mut Vec<f32>,
    ) -> (Vec<f32>, Vec<f32>) {
        let (mut means, mut inv_stds) = (Vec::new(), Vec::new());
        for row in x.chunks(norm.max(1)) {
            let mean = if centered { math::sum(row) / norm as f32 } else { 0.0 };
            let var = math::fold_lanes(row, 0.0, |acc, v| acc + (v - mean) * (v - mean), |a, b| a + b) / norm as f32;
            let inv = 1.0 / (var + epsilon).sqrt();
            let start = y.len();
            y.resize(start + row.len(), 0.0);
            let out = &mut y[start..];
            for ((o, &v), &s) in out.iter_mut().zip(row).zip(scale) {
                *o = (v - mean) * inv * s;
            }
            if let Some(b) = bias {
                for (o, &b) in out.iter_mut().zip(b) {
                    *o += b;
                }
            }
            means.push(mean);
            inv_stds.push(inv);
        }
        (means, inv_stds)
    }
}

/// `Softmax` / `LogSoftmax`. Before opset 13 the input is coerced to 2-D at `axis`.
#[derive(Debug)]
pub struct Softmax {
    axis: i64,
    coerce_2d: bool,
    log: bool,
}

fn import_softmax(c: &ImportCtx, log: bool) -> Result<Box<dyn Op>> {
    let coerce_2d = c.opset < 13;
    Ok(Box::new(Softmax { axis: c.attrs.int("axis", if coerce_2d { 1 } else { -1 })?, coerce_2d, log }))
}

/// Softmax (or log-softmax) of one contiguous lane, in place.
#[inline(always)]
pub(super) fn softmax_lane(lane: &mut [f32], log: bool) {
    let max = math::max(lane);
    // `for` loops rather than `for_each`, which may stay out of line (see simd.rs).
    if log {
        let shift = max + math::fold_lanes(lane, 0.0, |acc, v| acc + math::exp(v - max), |a, b| a + b).ln();
        for v in lane.iter_mut() {
            *v -= shift;
        }
    } else {
        for v in lane.iter_mut() {
            *v = math::exp(*v - max);
        }
        let inv = 1.0 / math::sum(lane);
        for v in lane.iter_mut() {
            *v *= inv;
        }
    }
}

crate::simd::widest_fn! {
    /// Softmax (or log-softmax) of each `len`-long run with stride `stride`, in place.
    fn softmax_lanes(y: &mut [f32], outer: usize, len: usize, stride: usize, log: bool) {
        if stride == 1 {
            for lane in y.chunks_mut(len.max(1)) {
                softmax_lane(lane, log);
            }
            return;
        }
        let mut lane = vec![0f32; len];
        for o in 0..outer {
            for s in 0..stride {
                let base = o * len * stride + s;
                lane.iter_mut().enumerate().for_each(|(i, v)| *v = y[base + i * stride]);
                softmax_lane(&mut lane, log);
                lane.iter().enumerate().for_each(|(i, &v)| y[base + i * stride] = v);
            }
        }
    }
}

impl Softmax {
    /// Whether this is a plain softmax (not log) over the last axis of a rank-`rank` input.
    pub(crate) fn over_last_axis(&self, rank: usize) -> bool {
        !self.log && normalize_axis(self.axis, rank).is_ok_and(|a| a + 1 == rank)
    }
}

/// Softmax over the last axis of `prologue(x) + mask`, made by fusion from attention's
/// `Mul(scale) → Add(mask) → Softmax`: one pass over the scores instead of three. The
/// prologue is chain steps (see [`super::chain`]); the mask (input 1, optional) broadcasts
/// to `x`. Each element is computed exactly as the separate ops compute it.
#[derive(Debug)]
pub struct MaskedSoftmax {
    prologue: Vec<ChainStep>,
    masked: bool,
}

impl MaskedSoftmax {
    /// Softmax of `prologue(x)`, plus input 1 before the softmax when `masked`.
    pub(crate) fn new(prologue: Vec<ChainStep>, masked: bool) -> MaskedSoftmax {
        MaskedSoftmax { prologue, masked }
    }
}

impl Op for MaskedSoftmax {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        ensure!(!x.shape.is_empty(), "softmax input is a scalar");
        if self.masked {
            let mask = required(inputs, 1)?;
            expect_dtype(mask, &[DataType::F32], "mask")?;
            ensure!(broadcast_shapes(&mask.shape, &x.shape)? == x.shape, "mask {:?} does not broadcast to {:?}", mask.shape, x.shape);
        }
        Ok(vec![Fact::new(DataType::F32, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let shape = x.shape();
        let len = *shape.last().unwrap_or(&1);
        let rows = x.len() / len.max(1);
        let mask = match self.masked {
            false => None,
            true => {
                let m = required(inputs, 1)?;
                ensure!(broadcast_shapes(m.shape(), shape)? == shape, "mask {:?} does not broadcast to {shape:?}", m.shape());
                // Each row's offset into the mask, and whether the mask varies along the row.
                let (ms, row_dims) = (broadcast_strides(m.shape(), shape), &shape[..shape.len() - 1]);
                let row_strides = strides(row_dims);
                let offsets =
                    (0..rows).map(|r| row_dims.iter().zip(&row_strides).zip(&ms).map(|((&d, &s), &m)| (r / s) % d * m).sum()).collect();
                Some(RowMask { values: m.as_slice::<f32>()?, offsets, along_row: ms[shape.len() - 1] != 0 })
            }
        };
        let mut y = pool.take(x.len());
        masked_softmax_rows(&self.prologue, x.as_slice::<f32>()?, len, mask.as_ref(), &mut y);
        Ok(vec![out(shape.to_vec(), y)?])
    }
}

/// A mask broadcast to softmax rows: row `r` reads `values[offsets[r]..]`, one value per
/// element when `along_row`, else one value for the whole row.
struct RowMask<'a> {
    values: &'a [f32],
    offsets: Vec<usize>,
    along_row: bool,
}

crate::simd::widest_fn! {
    /// Appends softmax(prologue(row) + mask row) of each `len`-long row of `x` to `y`,
    /// rows grouped into blocks of about [`BLOCK`] values for the prologue.
    fn masked_softmax_rows(prologue: &[ChainStep], x: &[f32], len: usize, mask: Option<&RowMask>, y: &mut Vec<f32>) {
        let len = len.max(1);
        let per_block = (BLOCK / len).max(1) * len;
        for (b, block) in x.chunks(per_block).enumerate() {
            let start = y.len();
            y.extend_from_slice(block);
            run_steps(prologue, block, &mut y[start..]);
            for (r, row) in y[start..].chunks_mut(len).enumerate() {
                if let Some(m) = mask {
                    let offset = m.offsets[b * per_block / len + r];
                    if m.along_row {
                        for (v, &w) in row.iter_mut().zip(&m.values[offset..offset + len]) {
                            *v += w;
                        }
                    } else {
                        let w = m.values[offset];
                        for v in row.iter_mut() {
                            *v += w;
                        }
                    }
                }
                softmax_lane(row, false);
            }
        }
    }
}

impl Op for Softmax {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        normalize_axis(self.axis, x.shape.len())?;
        Ok(vec![Fact::new(DataType::F32, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, x.shape().len())?;
        let mut y = pool.take(x.len());
        y.extend_from_slice(x.as_slice::<f32>()?);
        let shape = x.shape();
        let outer: usize = shape[..axis].iter().product();
        if self.coerce_2d {
            softmax_lanes(&mut y, outer, shape[axis..].iter().product(), 1, self.log);
        } else {
            softmax_lanes(&mut y, outer, shape[axis], shape[axis + 1..].iter().product(), self.log);
        }
        Ok(vec![out(shape.to_vec(), y)?])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn batch_norm_per_channel() {
        let p = |v: [f32; 2]| f32t(&[2], &v);
        let y =
            run(&BatchNorm { epsilon: 0.0 }, &[f32t(&[1, 2, 2], &[1., 2., 3., 4.]), p([2., 1.]), p([0., 1.]), p([1., 3.]), p([4., 1.])])
                .unwrap();
        assert_close(&y[0], &[1, 2, 2], &[0., 1., 1., 2.]);
    }

    #[test]
    fn layer_norm_rows() {
        let layer_norm = LayerNorm { axis: -1, epsilon: 0.0, centered: true };
        let y = run(&layer_norm, &[f32t(&[2, 2], &[1., 3., 5., 7.]), f32t(&[2], &[1., 2.]), f32t(&[2], &[0., 1.])]).unwrap();
        assert_close(&y[0], &[2, 2], &[-1., 3., -1., 3.]);
        assert_close(&y[1], &[2, 1], &[2., 6.]);
    }

    /// RMSNormalization over the last two axes: `x / sqrt(mean(x²) + ε) · scale`.
    #[test]
    fn rms_norm_rows() {
        let rms_norm = LayerNorm { axis: 1, epsilon: 1e-5, centered: false };
        let x = [3., -4., 0., 0., 1., 1., 1., 1.];
        let y = run(&rms_norm, &[f32t(&[2, 2, 2], &x), f32t(&[2, 2], &[1., 2., 3., 4.]), None]).unwrap();
        let (first, second) = ((6.25f32 + 1e-5).sqrt(), (1f32 + 1e-5).sqrt());
        let want = [3. / first, -8. / first, 0., 0., 1. / second, 2. / second, 3. / second, 4. / second];
        assert_close(&y[0], &[2, 2, 2], &want);
    }

    #[test]
    fn softmax_axes_and_coercion() {
        let x = f32t(&[2, 2], &[0., 0., 1., 3.]);
        let y = run(&Softmax { axis: 0, coerce_2d: false, log: false }, std::slice::from_ref(&x)).unwrap();
        let e1 = 1.0 / (1.0 + 1f32.exp());
        let e3 = 1.0 / (1.0 + 3f32.exp());
        assert_close(&y[0], &[2, 2], &[e1, e3, 1. - e1, 1. - e3]);
        // Opset < 13, axis 0: one softmax over all four values.
        let y = run(&Softmax { axis: 0, coerce_2d: true, log: false }, std::slice::from_ref(&x)).unwrap();
        let s = 2.0 + 1f32.exp() + 3f32.exp();
        assert_close(&y[0], &[2, 2], &[1. / s, 1. / s, 1f32.exp() / s, 3f32.exp() / s]);
        let y = run(&Softmax { axis: -1, coerce_2d: false, log: true }, &[x]).unwrap();
        let l = (1.0 + (-2f32).exp()).ln();
        assert_close(&y[0], &[2, 2], &[-(2f32.ln()), -(2f32.ln()), -2.0 - l, -l]);
    }
}
