//! What each layer costs in time at each precision, measured on the machine the converter
//! runs on, in the form the runtime will execute: every MatMul layer is written alone into a
//! one-node model (`x · W`, with as many rows of `x` as the layer sees per calibration batch),
//! lowered by [`rewrite`] exactly as the quantized file will hold it, and timed in our runtime
//! on one thread (median of a few runs). Layers of the same shape, rows and form share one
//! measurement. Other layers (Gather lookups cost the same at any precision; Gemm and Conv are
//! not measured yet) get no latency, which the search reads as "the same as fp32".

use super::calibrate::with_outputs;
use super::metric::Dataset;
use super::qdq::{Lowered, rewrite};
use super::search::Options;
use anyhow::{Context, Result};
use distq_runtime::onnx::proto::ModelProto;
use distq_runtime::testing::ModelBuilder;
use distq_runtime::{DataType, Model, Session, Tensor};
use prost::Message;
use std::collections::HashMap;
use std::time::Instant;

/// Timed runs per micro-model (after one untimed run, which packs the weights).
const RUNS: usize = 5;

/// Median wall time of `RUNS` runs of `session` on `inputs` on one thread, in milliseconds
/// (the session's own thread count is restored afterwards).
fn median_ms(session: &Session, inputs: &[(String, Tensor)]) -> Result<f64> {
    let threads = session.threads();
    session.set_threads(1);
    let ms = median_ms_now(session, inputs);
    session.set_threads(threads);
    ms
}

/// [`median_ms`] at the session's current thread count.
fn median_ms_now(session: &Session, inputs: &[(String, Tensor)]) -> Result<f64> {
    session.run(inputs.to_vec())?;
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        // The inputs are handed over by value: copied before the clock starts.
        let inputs = inputs.to_vec();
        let start = Instant::now();
        session.run(inputs)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[RUNS / 2])
}

/// The whole fp32 model's time per sample on `data`'s first batch (milliseconds), the
/// baseline speed-ups are predicted against.
pub fn model_ms_per_sample(session: &Session, data: &Dataset, batch: usize) -> Result<f64> {
    let samples = batch.min(data.samples()).max(1);
    let mut inputs = None;
    data.head(samples)?.for_each_batch(samples, |b| {
        inputs = Some(b);
        Ok(())
    })?;
    let inputs = inputs.context("no calibration sample to time the model on")?;
    Ok(median_ms(session, &inputs)? / samples as f64)
}

/// Measures every MatMul layer's time per sample at fp32 and at each of its candidates, on
/// inputs shaped like its activation on `data`'s first batch, and stores them in `options`.
pub fn measure(model: &ModelProto, options: &mut [Options], data: &Dataset, batch: usize) -> Result<()> {
    let matmuls: Vec<usize> =
        (0..options.len()).filter(|&i| options[i].layer.op == "MatMul" && options[i].layer.shape.len() == 2).collect();
    if matmuls.is_empty() {
        return Ok(());
    }
    // Rows of each layer's input: its activation's elements over K, on one batch.
    let samples = batch.min(data.samples()).max(1);
    let names: Vec<&str> = matmuls.iter().map(|&i| options[i].layer.activation.as_str()).collect();
    let probe = Session::new(Model::from_bytes(with_outputs(model, &names)?.encode_to_vec())?);
    let mut sizes: HashMap<String, usize> = HashMap::new();
    data.head(samples)?.for_each_batch(samples, |inputs| {
        for (name, t) in probe.run(inputs)? {
            sizes.insert(name, t.len());
        }
        Ok(())
    })?;
    let mut measured: HashMap<(usize, usize, usize, String), f64> = HashMap::new();
    for i in matmuls {
        let o = &options[i];
        let (k, n) = (o.layer.shape[0], o.layer.shape[1]);
        let elements = *sizes.get(&o.layer.activation).with_context(|| format!("layer '{}': its input was not observed", o.layer.name))?;
        let rows = (elements / k.max(1)).max(1);
        let micro = micro_model(o, rows);
        let x: Vec<f32> = (0..rows * k).map(|j| ((j * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
        let inputs = vec![(o.layer.activation.clone(), Tensor::from_vec(vec![rows, k], x)?)];
        let mut time = |form: String, lowered: Option<Lowered>| -> Result<f64> {
            if let Some(&ms) = measured.get(&(k, n, rows, form.clone())) {
                return Ok(ms);
            }
            let written = match lowered {
                Some(l) => rewrite(&micro, &[l])?,
                None => micro.clone(),
            };
            let session = Session::new(Model::from_bytes(written.encode_to_vec())?);
            let ms = median_ms(&session, &inputs).with_context(|| format!("timing layer '{}' as {form}", o.layer.name))? / samples as f64;
            measured.insert((k, n, rows, form), ms);
            Ok(ms)
        };
        let fp32 = time("fp32".into(), None)?;
        let latencies = (0..o.candidates.len())
            .map(|c| {
                let candidate = &o.candidates[c];
                let form = format!("{}{}", candidate.precision.name(), if candidate.activation.is_some() { "-static" } else { "" });
                time(form, o.lowered(Some(c)).map(|l| Lowered { bias: None, ..l }))
            })
            .collect::<Result<Vec<f64>>>()?;
        let o = &mut options[i];
        o.fp32_ms = Some(fp32);
        for (c, ms) in o.candidates.iter_mut().zip(latencies) {
            c.ms = Some(ms);
        }
    }
    Ok(())
}

/// Scales every layer's times so that their fp32 sum is at most the whole model's
/// `model_ms`. Each one-node model carries a run's fixed overhead, which on small layers can
/// add up past the whole model's time; unscaled, the predicted time of a quantized model
/// (`model_ms` minus the layers' savings) could then fall below the time its own quantized
/// layers take, or below zero.
pub fn fit_to_model(options: &mut [Options], model_ms: f64) {
    let layers_ms: f64 = options.iter().filter_map(|o| o.fp32_ms).sum();
    if layers_ms <= model_ms || layers_ms <= 0.0 {
        return;
    }
    let scale = model_ms / layers_ms;
    for o in options {
        o.fp32_ms = o.fp32_ms.map(|ms| ms * scale);
        for c in &mut o.candidates {
            c.ms = c.ms.map(|ms| ms * scale);
        }
    }
}

/// `activation [rows, K] · weight [K, N]` under the layer's own names, so [`rewrite`] lowers
/// it as it lowers the layer in the whole model.
fn micro_model(o: &Options, rows: usize) -> ModelProto {
    let l = &o.layer;
    let (k, n) = (l.shape[0], l.shape[1]);
    let weight = Tensor::from_vec(l.shape.clone(), l.values.clone()).expect("a layer's values fill its shape");
    ModelBuilder::new(21)
        .input(&l.activation, DataType::F32, &[rows as i64, k as i64])
        .initializer(&l.name, &weight)
        .node("MatMul", &[&l.activation, &l.name], &[&l.node_output], vec![])
        .output(&l.node_output, DataType::F32, &[rows as i64, n as i64])
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::search::tests::{option, timed};

    #[test]
    fn layer_times_past_the_model_time_are_scaled_down_to_it() {
        // Two layers at 1.0 ms each (fp32) in a model measured at 1.5 ms as a whole.
        let mut options = [timed(option("a", 4096, &[0.0, 0.0, 0.0])), timed(option("b", 4096, &[0.0, 0.0, 0.0]))];
        fit_to_model(&mut options, 1.5);
        assert!(options.iter().all(|o| o.fp32_ms == Some(0.75)));
        let int8: Vec<f64> = options.iter().map(|o| o.candidates[1].ms.unwrap()).collect();
        assert!(int8.iter().all(|&ms| (ms - 0.225).abs() < 1e-12), "{int8:?}");
        // Both at int8 is then predicted at 0.45 ms, the layers' own time, never below it.
        let saved: f64 = options.iter().map(|o| o.ms_saved_at(Some(1))).sum();
        assert!((1.5 - saved - 0.45).abs() < 1e-12);
        // Layers within the model's time are left as measured.
        let mut within = [timed(option("c", 4096, &[0.0, 0.0, 0.0]))];
        fit_to_model(&mut within, 2.0);
        assert_eq!(within[0].fp32_ms, Some(1.0));
    }
}
