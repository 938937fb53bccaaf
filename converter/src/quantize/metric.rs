//! Calibration / evaluation sets (`.npz`, arrays named like the model inputs, first axis =
//! samples) and the metrics that compare a candidate model's first output with the fp32
//! model's, sample by sample:
//!
//! - `cosine`: cosine similarity of each sample's output, flattened; a `[batch, seq, hidden]`
//!   output with an `attention_mask` input is mean-pooled over the mask first (a sentence
//!   embedding);
//! - `top1`: agreement of the argmax over the last axis (per sample, or per step for
//!   sequence outputs such as CTC);
//! - `kl`: KL(reference ‖ candidate) of softmax over the last axis (lower is better);
//! - `mse`: mean squared error (lower is better).

use anyhow::{Context, Result, bail, ensure};
use distq_io::npz::read_npz;
use distq_runtime::graph::Dim;
use distq_runtime::{DataType, Model, Session, Tensor};
use std::path::Path;

/// How a candidate is compared with the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Mean cosine similarity (mask-pooled for sequence embeddings).
    Cosine,
    /// Argmax agreement over the last axis.
    Top1,
    /// KL divergence of the output distributions (softmaxed first unless the outputs are
    /// probabilities already).
    Kl,
    /// Mean squared error.
    Mse,
}

impl Metric {
    /// Whether larger values are better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::Cosine | Metric::Top1)
    }
}

/// A set of samples for one model.
pub struct Dataset {
    arrays: Vec<(String, Tensor)>,
    samples: usize,
    /// Index of the `attention_mask` array, if the model has one.
    mask: Option<usize>,
}

/// Rows `range` of `t` along its first axis.
fn rows(t: &Tensor, range: std::ops::Range<usize>) -> Result<Tensor> {
    let row: usize = t.shape()[1..].iter().product();
    let mut shape = t.shape().to_vec();
    shape[0] = range.len();
    let span = range.start * row..range.end * row;
    Ok(match t.dtype() {
        DataType::F32 => Tensor::from_vec(shape, t.as_slice::<f32>()?[span].to_vec())?,
        DataType::F64 => Tensor::from_vec(shape, t.as_slice::<f64>()?[span].to_vec())?,
        DataType::I64 => Tensor::from_vec(shape, t.as_slice::<i64>()?[span].to_vec())?,
        DataType::I32 => Tensor::from_vec(shape, t.as_slice::<i32>()?[span].to_vec())?,
        DataType::I8 => Tensor::from_vec(shape, t.as_slice::<i8>()?[span].to_vec())?,
        DataType::U8 => Tensor::from_vec(shape, t.as_slice::<u8>()?[span].to_vec())?,
        DataType::F16 => Tensor::from_vec(shape, t.as_slice::<u16>()?[span].to_vec())?,
        DataType::Bool => Tensor::from_bools(shape, t.as_bools()?[span].iter().map(|&b| b != 0).collect())?,
        other => bail!("{other} arrays are not supported as samples"),
    })
}

impl Dataset {
    /// Reads `path` and checks it against `model`'s inputs: every input present, with its
    /// declared element type and fixed dims, and the same number of samples in each array.
    pub fn load(path: &Path, model: &Model) -> Result<Dataset> {
        let all = read_npz(path)?;
        let what = path.display();
        let mut arrays = Vec::new();
        for input in model.inputs() {
            let (_, t) = all.iter().find(|(n, _)| *n == input.name).with_context(|| {
                let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                format!("{what}: no array named '{}' (the model's input); the file has {names:?}", input.name)
            })?;
            if let Some(dtype) = input.dtype {
                ensure!(t.dtype() == dtype, "{what}: array '{}' is {}, the model's input is {}", input.name, t.dtype(), dtype);
            }
            ensure!(!t.shape().is_empty(), "{what}: array '{}' is a scalar; the first axis must count samples", input.name);
            if let Some(dims) = &input.dims {
                ensure!(
                    dims.len() == t.shape().len(),
                    "{what}: array '{}' has shape {:?}, the model's input has rank {}",
                    input.name,
                    t.shape(),
                    dims.len()
                );
                for (i, (d, &n)) in dims.iter().zip(t.shape()).enumerate().skip(1) {
                    if let Dim::Fixed(f) = d {
                        ensure!(*f == n, "{what}: array '{}' has {n} at dim {i}, the model's input needs {f}", input.name);
                    }
                }
            }
            arrays.push((input.name.clone(), t.clone()));
        }
        let samples = arrays.first().map_or(0, |(_, t)| t.shape()[0]);
        ensure!(samples > 0, "{what}: the calibration set is empty (0 samples)");
        for (name, t) in &arrays {
            ensure!(t.shape()[0] == samples, "{what}: array '{name}' has {} samples, '{}' has {samples}", t.shape()[0], arrays[0].0);
        }
        let mask = arrays.iter().position(|(n, _)| n == "attention_mask");
        Ok(Dataset { arrays, samples, mask })
    }

    /// Samples in the set.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The first `n` samples (all when fewer).
    pub fn head(&self, n: usize) -> Result<Dataset> {
        self.range(0..n)
    }

    /// Samples `range` (clipped to the set).
    pub fn range(&self, range: std::ops::Range<usize>) -> Result<Dataset> {
        let (start, end) = (range.start.min(self.samples), range.end.min(self.samples));
        let arrays = self.arrays.iter().map(|(name, t)| Ok((name.clone(), rows(t, start..end.max(start))?))).collect::<Result<_>>()?;
        Ok(Dataset { arrays, samples: end.saturating_sub(start), mask: self.mask })
    }

    /// The set split for a final check on samples the quantizer was not fitted on: the last
    /// fifth (at least one sample) held out, the rest to calibrate on. A set of one sample
    /// cannot be split: it is both.
    ///
    /// ```
    /// use distq_converter::quantize::metric::Dataset;
    /// use distq_runtime::{Model, Tensor};
    /// let model = Model::from_bytes(distq_runtime::testing::add_one_model())?;
    /// let path = std::env::temp_dir().join(format!("distq-hold-out-{}.npz", std::process::id()));
    /// distq_io::npz::write_npz(&path, &[("x".into(), Tensor::from_vec(vec![10], vec![0.5f32; 10])?)])?;
    /// let (calib, check) = Dataset::load(&path, &model)?.hold_out()?;
    /// std::fs::remove_file(&path)?;
    /// assert_eq!((calib.samples(), check.samples()), (8, 2));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn hold_out(&self) -> Result<(Dataset, Dataset)> {
        if self.samples < 2 {
            return Ok((self.head(self.samples)?, self.head(self.samples)?));
        }
        let held = self.samples.div_ceil(5);
        Ok((self.range(0..self.samples - held)?, self.range(self.samples - held..self.samples)?))
    }

    /// Calls `f` with the inputs of each batch of up to `batch` samples, in order.
    pub fn for_each_batch(&self, batch: usize, mut f: impl FnMut(Vec<(String, Tensor)>) -> Result<()>) -> Result<()> {
        for start in (0..self.samples).step_by(batch.max(1)) {
            let range = start..(start + batch.max(1)).min(self.samples);
            f(self.arrays.iter().map(|(n, t)| Ok((n.clone(), rows(t, range.clone())?))).collect::<Result<Vec<_>>>()?)?;
        }
        Ok(())
    }

    /// Runs `session` over the set in batches of `batch`; returns each sample's first output.
    pub fn outputs(&self, session: &Session, batch: usize) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.samples);
        self.for_each_batch(batch, |inputs| {
            let n = inputs.first().map_or(0, |(_, t)| t.shape()[0]);
            let (_, y) = session.run(inputs)?.into_iter().next().context("the model has no output")?;
            ensure!(y.shape().first() == Some(&n), "first output {:?} does not have the batch ({n}) as its first axis", y.shape());
            out.extend((0..n).map(|i| rows(&y, i..i + 1)).collect::<Result<Vec<_>>>()?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The metric of `candidate` outputs against `reference` outputs, averaged over samples.
    pub fn compare(&self, metric: Metric, reference: &[Tensor], candidate: &[Tensor]) -> Result<f64> {
        ensure!(
            reference.len() == candidate.len() && !reference.is_empty(),
            "{} reference vs {} candidate outputs",
            reference.len(),
            candidate.len()
        );
        let mut total = 0.0;
        for (i, (r, c)) in reference.iter().zip(candidate).enumerate() {
            ensure!(r.shape() == c.shape(), "sample {i}: output shapes differ: {:?} vs {:?}", r.shape(), c.shape());
            let (r, c) = (r.to_f32s()?, c.to_f32s()?);
            let last = *reference[i].shape().last().unwrap_or(&1);
            total += match metric {
                Metric::Cosine => {
                    let (r, c) = match self.pooling(i, reference[i].shape())? {
                        Some(mask) => (pool(&r, &mask), pool(&c, &mask)),
                        None => (r, c),
                    };
                    cosine(&r, &c)
                }
                Metric::Top1 => {
                    let steps: Vec<bool> = r.chunks(last.max(1)).zip(c.chunks(last.max(1))).map(|(a, b)| argmax(a) == argmax(b)).collect();
                    steps.iter().filter(|&&same| same).count() as f64 / steps.len().max(1) as f64
                }
                Metric::Kl => {
                    // Scores already softmaxed by the model are compared as they are: a softmax
                    // of probabilities would be near uniform and hide every change.
                    let probabilities = r.chunks(last.max(1)).all(is_distribution);
                    r.chunks(last.max(1)).zip(c.chunks(last.max(1))).map(|(a, b)| kl(a, b, probabilities)).sum::<f64>()
                        / (r.len() / last.max(1)).max(1) as f64
                }
                Metric::Mse => r.iter().zip(&c).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / r.len().max(1) as f64,
            };
        }
        Ok(total / reference.len() as f64)
    }

    /// The attention mask row of sample `i` when its output `[1, seq, hidden]` is a sequence
    /// of token embeddings to mean-pool.
    fn pooling(&self, i: usize, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        let Some(m) = self.mask else { return Ok(None) };
        let row = rows(&self.arrays[m].1, i..i + 1)?;
        let mask: Vec<f32> = match row.to_i64s() {
            Ok(ints) => ints.iter().map(|&v| v as f32).collect(),
            Err(_) => row.to_f32s()?,
        };
        if shape.len() != 3 || shape[1] != mask.len() {
            return Ok(None);
        }
        Ok(Some(mask))
    }
}

/// Mean of the rows of `x` (`[seq, hidden]` flattened) where `mask` is non-zero.
fn pool(x: &[f32], mask: &[f32]) -> Vec<f32> {
    let hidden = x.len() / mask.len().max(1);
    let mut sum = vec![0f64; hidden];
    for (row, &m) in x.chunks(hidden.max(1)).zip(mask) {
        for (s, &v) in sum.iter_mut().zip(row) {
            *s += (m * v) as f64;
        }
    }
    let count = mask.iter().map(|&m| m as f64).sum::<f64>().max(1e-9);
    sum.iter().map(|&s| (s / count) as f32).collect()
}

/// Cosine similarity of two vectors (1 when both are zero), accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    if na == 0.0 || nb == 0.0 {
        return if na == nb { 1.0 } else { 0.0 };
    }
    dot / (na * nb)
}

/// Index of the largest value (the first of equals; 0 for an empty slice).
pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

/// KL(softmax(p) ‖ softmax(q)).
fn kl(p: &[f32], q: &[f32], probabilities: bool) -> f64 {
    let log_distribution = |v: &[f32]| {
        if probabilities {
            return v.iter().map(|&x| (x.max(0.0) as f64).max(1e-30).ln()).collect::<Vec<_>>();
        }
        let max = v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let lse = v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
        v.iter().map(|&x| x as f64 - lse).collect::<Vec<_>>()
    };
    let (lp, lq) = (log_distribution(p), log_distribution(q));
    lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * (a - b)).sum()
}

/// Whether a row of scores is a probability distribution (non-negative, summing to 1).
fn is_distribution(row: &[f32]) -> bool {
    row.iter().all(|&x| x >= 0.0) && (row.iter().map(|&x| x as f64).sum::<f64>() - 1.0).abs() < 1e-3
}

/// Fails clearly when a metric cannot apply to a model's output.
pub fn check_applicable(metric: Metric, reference: &[Tensor]) -> Result<()> {
    let Some(first) = reference.first() else { bail!("no outputs to compare") };
    if matches!(metric, Metric::Top1 | Metric::Kl) && first.shape().last().is_none_or(|&n| n < 2) {
        bail!("metric {metric:?} needs scores over classes on the last axis; the output has shape {:?}", first.shape());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_hand_made_outputs() {
        let t = |v: Vec<f32>, shape: Vec<usize>| Tensor::from_vec(shape, v).unwrap();
        let data = Dataset {
            arrays: vec![("attention_mask".into(), Tensor::from_vec(vec![2, 2], vec![1i64, 0, 1, 1]).unwrap())],
            samples: 2,
            mask: Some(0),
        };
        // Sample 0 pools only token 0 (mask [1, 0]): the second token's difference is ignored.
        let r = vec![t(vec![1.0, 0.0, 5.0, 5.0], vec![1, 2, 2]), t(vec![1.0, 1.0, 1.0, -1.0], vec![1, 2, 2])];
        let c = vec![t(vec![1.0, 0.0, -5.0, 9.0], vec![1, 2, 2]), t(vec![1.0, 1.0, 1.0, -1.0], vec![1, 2, 2])];
        assert!((data.compare(Metric::Cosine, &r, &c).unwrap() - 1.0).abs() < 1e-12);
        // Top-1 per step: sample 0 agrees on step 0 (argmax 0) and not step 1 (0 vs 1).
        assert_eq!(data.compare(Metric::Top1, &r, &c).unwrap(), (0.5 + 1.0) / 2.0);
        assert_eq!(data.compare(Metric::Mse, &r, &c).unwrap(), (100.0 + 16.0) / 4.0 / 2.0);
        assert!(data.compare(Metric::Kl, &r, &r).unwrap().abs() < 1e-12);
        assert!(data.compare(Metric::Kl, &r, &c).unwrap() > 0.1);
        // Outputs that are probabilities already are compared as they are: KL([0.5, 0.5] ‖
        // [0.25, 0.75]) = 0.5·ln 2 + 0.5·ln(2/3) (a softmax of them would give ~0.016).
        let plain = Dataset { arrays: Vec::new(), samples: 1, mask: None };
        let kl = plain.compare(Metric::Kl, &[t(vec![0.5, 0.5], vec![1, 2])], &[t(vec![0.25, 0.75], vec![1, 2])]).unwrap();
        assert!((kl - 0.5 * (2f64.ln() + (2.0f64 / 3.0).ln())).abs() < 1e-6, "{kl}");
        assert!(check_applicable(Metric::Top1, &[t(vec![1.0], vec![1, 1])]).is_err());
    }
}
