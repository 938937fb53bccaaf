//! Observing activations: the fp32 model runs on calibration samples with the observed
//! values exposed as extra graph outputs, and each value is reduced per channel as the
//! batches stream by. Bias correction uses the per-channel means of the quantized layers'
//! inputs.

use super::metric::Dataset;
use anyhow::{Context, Result, ensure};
use distq_runtime::onnx::proto::{ModelProto, ValueInfoProto};
use distq_runtime::{Model, Session};
use prost::Message;
use std::collections::HashMap;

/// Which axis of an observed value holds its channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelAxis {
    /// Axis 1 (NCHW activations, a Conv's input).
    Second,
    /// The last axis (a MatMul's input rows).
    Last,
}

/// The mean of each channel of each value in `observed` over the samples of `data`.
pub fn channel_means(
    model: &ModelProto,
    observed: &[(String, ChannelAxis)],
    data: &Dataset,
    batch: usize,
) -> Result<HashMap<String, Vec<f32>>> {
    let mut probe = model.clone();
    let graph = probe.graph.as_mut().context("model has no graph")?;
    for (name, _) in observed {
        if !graph.output.iter().any(|o| o.name.as_deref() == Some(name)) {
            graph.output.push(ValueInfoProto { name: Some(name.clone()), ..Default::default() });
        }
    }
    let session = Session::new(Model::from_bytes(probe.encode_to_vec())?);
    let mut sums: HashMap<&str, (Vec<f64>, f64)> = HashMap::new();
    data.for_each_batch(batch, |inputs| {
        let outputs = session.run(inputs)?;
        for (name, axis) in observed {
            let (_, t) = outputs.iter().find(|(n, _)| n == name).with_context(|| format!("observed value '{name}' is not an output"))?;
            let shape = t.shape();
            let at = match axis {
                ChannelAxis::Second => 1,
                ChannelAxis::Last => shape.len().saturating_sub(1),
            };
            ensure!(at < shape.len(), "observed value '{name}' has shape {shape:?}, no channel axis");
            let (channels, inner) = (shape[at], shape[at + 1..].iter().product::<usize>());
            let values = t.to_f32s()?;
            let (sum, count) = sums.entry(name).or_insert_with(|| (vec![0.0; channels], 0.0));
            ensure!(sum.len() == channels, "observed value '{name}' changed its channel count");
            for (i, &v) in values.iter().enumerate() {
                sum[i / inner.max(1) % channels] += v as f64;
            }
            *count += (values.len() / channels.max(1)) as f64;
        }
        Ok(())
    })?;
    Ok(sums
        .into_iter()
        .map(|(name, (sum, count))| (name.to_string(), sum.iter().map(|&s| (s / count.max(1.0)) as f32).collect()))
        .collect())
}
