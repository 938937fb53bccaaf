//! Observing activations: the fp32 model runs on calibration samples with the observed
//! values exposed as extra graph outputs, and each value is reduced per channel as the
//! batches stream by. Bias correction uses the per-channel means of the quantized layers'
//! inputs; static activation quantization their ranges ([`super::observe`]); GPTQ their
//! second moments ([`super::gptq`]).

use super::gptq::Hessian;
use super::metric::Dataset;
use super::observe::{ActivationQuant, Observed, Observer};
use anyhow::{Context, Result, ensure};
use distq_runtime::onnx::proto::{ModelProto, ValueInfoProto};
use distq_runtime::{Model, Session};
use prost::Message;
use std::collections::HashMap;

/// What calibration observed of the quantizable layers' inputs, by activation name.
#[derive(Default)]
pub struct Observations {
    /// Per-channel means (bias correction).
    pub means: HashMap<String, Vec<f32>>,
    /// uint8 quantization (static activations).
    pub activations: HashMap<String, ActivationQuant>,
    /// Second moments (GPTQ).
    pub hessians: HashMap<String, Hessian>,
}

/// Which axis of an observed value holds its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAxis {
    /// Axis 1 (NCHW activations, a Conv's input).
    Second,
    /// The last axis (a MatMul's input rows).
    Last,
}

/// `model` with the values `names` exposed as extra graph outputs (those already outputs are
/// left as they are).
pub fn with_outputs(model: &ModelProto, names: &[&str]) -> Result<ModelProto> {
    let mut probe = model.clone();
    let graph = probe.graph.as_mut().context("model has no graph")?;
    for &name in names {
        if !graph.output.iter().any(|o| o.name.as_deref() == Some(name)) {
            graph.output.push(ValueInfoProto { name: Some(name.into()), ..Default::default() });
        }
    }
    Ok(probe)
}

/// Runs `model` on the samples of `data` with the values `names` exposed as outputs, calling
/// `visit(name, values, shape)` for each observed value of each batch.
fn stream(
    model: &ModelProto,
    names: &[&str],
    data: &Dataset,
    batch: usize,
    mut visit: impl FnMut(&str, &[f32], &[usize]) -> Result<()>,
) -> Result<()> {
    let session = Session::new(Model::from_bytes(with_outputs(model, names)?.encode_to_vec())?);
    data.for_each_batch(batch, |inputs| {
        let outputs = session.run(inputs)?;
        for &name in names {
            let (_, t) = outputs.iter().find(|(n, _)| n == name).with_context(|| format!("observed value '{name}' is not an output"))?;
            visit(name, &t.to_f32s()?, t.shape())?;
        }
        Ok(())
    })
}

/// [`stream`] for values observed per channel: `visit(name, values, shape, channel axis)`.
fn stream_channels(
    model: &ModelProto,
    observed: &[(String, ChannelAxis)],
    data: &Dataset,
    batch: usize,
    mut visit: impl FnMut(&str, &[f32], &[usize], usize) -> Result<()>,
) -> Result<()> {
    let names: Vec<&str> = observed.iter().map(|(n, _)| n.as_str()).collect();
    let axes: HashMap<&str, ChannelAxis> = observed.iter().map(|(n, a)| (n.as_str(), *a)).collect();
    stream(model, &names, data, batch, |name, values, shape| {
        let at = match axes[name] {
            ChannelAxis::Second => 1,
            ChannelAxis::Last => shape.len().saturating_sub(1),
        };
        ensure!(at < shape.len(), "observed value '{name}' has shape {shape:?}, no channel axis");
        visit(name, values, shape, at)
    })
}

/// The second moments `Σ x xᵀ` of the vectors (along their channel axis) of each value in
/// `observed`, over the samples of `data` (GPTQ's statistics).
pub fn input_hessians(
    model: &ModelProto,
    observed: &[(String, ChannelAxis)],
    data: &Dataset,
    batch: usize,
) -> Result<HashMap<String, Hessian>> {
    let mut hessians: HashMap<String, Hessian> = HashMap::new();
    stream_channels(model, observed, data, batch, |name, values, shape, at| {
        hessians
            .entry(name.to_string())
            .or_insert_with(|| Hessian::new(shape[at]))
            .add(values, shape, at)
            .with_context(|| format!("observed value '{name}'"))
    })?;
    Ok(hessians)
}

/// The mean of each channel of each value in `observed` over the samples of `data`.
pub fn channel_means(
    model: &ModelProto,
    observed: &[(String, ChannelAxis)],
    data: &Dataset,
    batch: usize,
) -> Result<HashMap<String, Vec<f32>>> {
    let mut sums: HashMap<String, (Vec<f64>, f64)> = HashMap::new();
    stream_channels(model, observed, data, batch, |name, values, shape, at| {
        let (channels, inner) = (shape[at], shape[at + 1..].iter().product::<usize>());
        let (sum, count) = sums.entry(name.to_string()).or_insert_with(|| (vec![0.0; channels], 0.0));
        ensure!(sum.len() == channels, "observed value '{name}' changed its channel count");
        for (i, &v) in values.iter().enumerate() {
            sum[i / inner.max(1) % channels] += v as f64;
        }
        *count += (values.len() / channels.max(1)) as f64;
        Ok(())
    })?;
    Ok(sums.into_iter().map(|(name, (sum, count))| (name, sum.iter().map(|&s| (s / count.max(1.0)) as f32).collect())).collect())
}

/// The uint8 quantization `observer` picks for each activation in `names`, from the values
/// they take on the samples of `data` (a second run fills the histograms of the clipping
/// observers, over the range the first one found).
pub fn activation_ranges(
    model: &ModelProto,
    names: &[&str],
    observer: Observer,
    data: &Dataset,
    batch: usize,
) -> Result<HashMap<String, ActivationQuant>> {
    let mut seen: HashMap<String, Observed> = names.iter().map(|&n| (n.to_string(), Observed::new())).collect();
    stream(model, names, data, batch, |name, values, _| {
        seen.get_mut(name).context("unobserved value")?.extend_range(values);
        Ok(())
    })?;
    if Observed::needs_histogram(observer) {
        stream(model, names, data, batch, |name, values, _| {
            seen.get_mut(name).context("unobserved value")?.extend_histogram(values);
            Ok(())
        })?;
    }
    Ok(seen.into_iter().map(|(name, o)| (name, o.quantization(observer))).collect())
}
