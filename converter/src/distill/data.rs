//! Training data: named arrays from `.npz` files sharing a first (sample) axis, cut into
//! batches in a seeded order that depends only on the seed and the epoch, so a resumed run
//! sees exactly the batches the interrupted one would have.

use super::ops::from_runtime;
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor};
use distq_io::npz::read_npz;
use distq_runtime::DataType;
use std::path::Path;

/// Named arrays, first axis = samples.
#[derive(Clone)]
pub struct Arrays {
    arrays: Vec<(String, distq_runtime::Tensor)>,
    samples: usize,
    origin: String,
}

impl Arrays {
    /// Reads every array of `path` and checks they agree on the sample count.
    pub fn read(path: &Path) -> Result<Arrays> {
        Arrays::new(read_npz(path)?, path.display().to_string())
    }

    /// Wraps arrays that must share their first axis.
    pub fn new(arrays: Vec<(String, distq_runtime::Tensor)>, origin: String) -> Result<Arrays> {
        let samples = match arrays.first() {
            Some((name, t)) => *t.shape().first().with_context(|| format!("{origin}: array '{name}' is a scalar, not samples"))?,
            None => bail!("{origin}: no arrays"),
        };
        for (name, t) in &arrays {
            let count = t.shape().first().copied();
            ensure!(
                count == Some(samples),
                "{origin}: array '{name}' has {} samples, '{}' has {samples}: every array needs one entry per sample",
                count.map_or("no".into(), |c| c.to_string()),
                arrays[0].0
            );
        }
        ensure!(samples > 0, "{origin}: the arrays hold no samples");
        Ok(Arrays { arrays, samples, origin })
    }

    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Where the arrays came from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The first `n` samples (all of them when there are fewer).
    pub fn head(&self, n: usize) -> Result<Arrays> {
        let rows: Vec<usize> = (0..n.min(self.samples)).collect();
        let arrays = self.arrays.iter().map(|(name, t)| Ok((name.clone(), take_rows(t, &rows)?))).collect::<Result<_>>()?;
        Arrays::new(arrays, format!("{} (first {} samples)", self.origin, rows.len()))
    }

    /// The arrays' names, in file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.arrays.iter().map(|(n, _)| n.as_str())
    }

    /// The array called `name`.
    pub fn get(&self, name: &str) -> Result<&distq_runtime::Tensor> {
        self.arrays.iter().find(|(n, _)| n == name).map(|(_, t)| t).with_context(|| {
            let names: Vec<&str> = self.arrays.iter().map(|(n, _)| n.as_str()).collect();
            format!("{}: no array named '{name}' (arrays: {names:?})", self.origin)
        })
    }

    /// The rows `rows` of array `name` as a candle tensor (floats in `float`).
    pub fn batch(&self, name: &str, rows: &[usize], float: DType) -> Result<Tensor> {
        let t = self.get(name)?;
        from_runtime(&take_rows(t, rows)?, float)
    }

    /// The rows `rows` of every array, as runtime tensors (for running a model).
    pub fn rows(&self, names: &[String], rows: &[usize]) -> Result<Vec<(String, distq_runtime::Tensor)>> {
        names.iter().map(|n| Ok((n.clone(), take_rows(self.get(n)?, rows)?))).collect()
    }
}

/// Rows of a tensor along its first axis.
pub fn take_rows(t: &distq_runtime::Tensor, rows: &[usize]) -> Result<distq_runtime::Tensor> {
    let row_bytes = t.byte_len() / t.shape()[0].max(1);
    let bytes = t.as_le_bytes();
    let mut out = Vec::with_capacity(row_bytes * rows.len());
    for &r in rows {
        out.extend_from_slice(&bytes[r * row_bytes..(r + 1) * row_bytes]);
    }
    let mut shape = t.shape().to_vec();
    shape[0] = rows.len();
    Ok(distq_runtime::Tensor::from_le_bytes(t.dtype(), shape, out.into())?)
}

/// Stacks tensors along their first axis (teacher outputs computed batch by batch).
pub fn concat_rows(parts: &[distq_runtime::Tensor]) -> Result<distq_runtime::Tensor> {
    let first = parts.first().context("nothing to concatenate")?;
    let mut shape = first.shape().to_vec();
    ensure!(!shape.is_empty(), "cannot stack scalars");
    shape[0] = 0;
    let mut bytes = Vec::new();
    for p in parts {
        ensure!(p.dtype() == first.dtype() && p.shape()[1..] == first.shape()[1..], "batch outputs differ in shape or dtype");
        shape[0] += p.shape()[0];
        bytes.extend_from_slice(p.as_le_bytes());
    }
    Ok(distq_runtime::Tensor::from_le_bytes(first.dtype(), shape, bytes.into())?)
}

/// Integer class labels, checked to lie in `0..classes`.
pub fn check_labels(labels: &distq_runtime::Tensor, classes: usize, origin: &str) -> Result<()> {
    ensure!(
        matches!(labels.dtype(), DataType::I64 | DataType::I32 | DataType::U8),
        "{origin}: labels must be integers, not {}",
        labels.dtype()
    );
    if let Some(bad) = labels.to_i64s()?.into_iter().find(|&l| l < 0 || l as usize >= classes) {
        bail!("{origin}: label {bad} is outside 0..{classes} (the model has {classes} classes)");
    }
    Ok(())
}

/// SplitMix64: a tiny, portable generator, so orders do not change with a crate's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The sample order of `epoch`: a Fisher–Yates shuffle seeded by `(seed, epoch)`.
///
/// ```
/// use distq_converter::distill::data::epoch_order;
/// let a = epoch_order(10, 7, 0);
/// assert_eq!(a, epoch_order(10, 7, 0));
/// assert_ne!(a, epoch_order(10, 7, 1));
/// let mut sorted = a.clone();
/// sorted.sort();
/// assert_eq!(sorted, (0..10).collect::<Vec<_>>());
/// ```
pub fn epoch_order(samples: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = SplitMix64(seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut order: Vec<usize> = (0..samples).collect();
    for i in (1..samples).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// A random normal value stream for weight initialization (Box–Muller over SplitMix64).
pub fn normal_values(count: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    let mut uniform = move || ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (0..count).map(|_| ((-2.0 * uniform().ln()).sqrt() * (std::f64::consts::TAU * uniform()).cos()) as f32 * std).collect()
}
