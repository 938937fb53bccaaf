//! Post-training weight quantization to standard QDQ ONNX, uniform or mixed precision.
//!
//! The pipeline: find the quantizable weights ([`qdq::quantizable_layers`]), quantize each to
//! every candidate precision ([`weights`]), measure each candidate's sensitivity in our own
//! runtime ([`search`]), pick a precision per layer for the size or metric target, write the
//! QDQ graph ([`qdq::rewrite`]) and verify the written form end to end on the evaluation set
//! ([`metric`]): what is measured is what ships.

pub mod metric;
pub mod qdq;
pub mod report;
pub mod search;
pub mod weights;
pub mod writer;

use anyhow::{Context, Result, bail, ensure};
use distq_runtime::onnx::proto::ModelProto;
use distq_runtime::{Model, Session};
use metric::{Dataset, Metric};
use prost::Message;
use report::{FrontPoint, LayerReport, Report};
use search::{Assignment, Step};
use weights::Precision;

/// What to aim for.
pub struct Config {
    /// `None`: mixed precision from sensitivity; `Some(p)`: every layer at `p` (int4 falls
    /// back to int8 where a weight is shorter than one block).
    pub uniform: Option<Precision>,
    /// int4 block size.
    pub block: usize,
    /// The comparison with fp32.
    pub metric: Metric,
    /// Largest file size allowed, bytes.
    pub max_size: Option<u64>,
    /// Smallest metric allowed (largest, for kl and mse).
    pub min_metric: Option<f64>,
    /// Calibration samples used per sensitivity run.
    pub sensitivity_samples: usize,
    /// Samples per model run.
    pub batch: usize,
}

/// The quantized model and what was measured on the way.
pub struct Outcome {
    /// The model to write.
    pub model: ModelProto,
    /// The report (its `size_bytes` is the encoded model's size).
    pub report: Report,
}

/// Reports progress of long steps: `(what, done, total)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Quantizes `model` (from `path`) per `config`, measuring on `calib` and verifying on `eval`.
pub fn quantize(model: &Model, config: &Config, calib: &Dataset, eval: &Dataset, progress: Progress) -> Result<Outcome> {
    let proto = &model.file().proto;
    let layers = qdq::quantizable_layers(model)?;
    ensure!(
        !layers.is_empty(),
        "{}: no quantizable layer (a float weight of ≥ {} values read by MatMul, Gemm, Conv or Gather)",
        model.file().origin,
        qdq::MIN_VALUES
    );
    let fp32_bytes = proto.encoded_len() as u64;
    let layer_fp32: u64 = layers.iter().map(|l| 4 * l.params() as u64).sum();
    // Bytes outside the quantizable weights, plus what each restoring node and its tensors'
    // headers add (measured on real models: well under 200 bytes per layer).
    let fixed = fp32_bytes - layer_fp32 + 200 * layers.len() as u64;
    let int4 = Precision::Int4 { block: config.block };
    let precisions = match config.uniform {
        Some(Precision::Int4 { .. }) => vec![Precision::Int8, int4],
        Some(p) => vec![p],
        None => vec![Precision::F16, Precision::Int8, int4],
    };
    let mut options = search::candidates(layers, &precisions)?;
    let reference_eval = eval.outputs(&Session::new(Model::from_bytes(proto.encode_to_vec())?), config.batch)?;
    metric::check_applicable(config.metric, &reference_eval)?;
    let verify = |options: &[search::Options], a: &Assignment, progress: Progress| -> Result<(ModelProto, f64)> {
        let chosen: Vec<(&str, &weights::Quantized)> =
            options.iter().zip(a).filter_map(|(o, &x)| x.map(|i| (o.layer.name.as_str(), &o.candidates[i].quantized))).collect();
        let out = qdq::rewrite(proto, &chosen)?;
        progress("verify", 0, 1);
        let session = Session::new(Model::from_bytes(out.encode_to_vec()).context("the quantized model does not load")?);
        let value = eval.compare(config.metric, &reference_eval, &eval.outputs(&session, config.batch)?)?;
        progress("verify", 1, 1);
        Ok((out, value))
    };
    let meets = |value: f64| config.min_metric.is_none_or(|m| if config.metric.higher_is_better() { value >= m } else { value <= m });
    let (assignment, front) = match config.uniform {
        Some(_) => {
            // Candidates run most precise first: the last is `p`, or int8 where int4 does not fit.
            let a: Assignment = options.iter().map(|o| o.candidates.len().checked_sub(1)).collect();
            (a, Vec::new())
        }
        None => {
            let sample = calib.head(config.sensitivity_samples)?;
            let reference = sample.outputs(&Session::new(Model::from_bytes(proto.encode_to_vec())?), config.batch)?;
            search::measure(proto, &mut options, &sample, &reference, config.metric, config.batch, |d, t| progress("sensitivity", d, t))?;
            let front = search::greedy_front(&options);
            (pick(&front, fixed, config, &meets)?, front)
        }
    };
    let (mut out, mut value) = verify(&options, &assignment, progress)?;
    let mut chosen = assignment;
    // The sensitivities add up only approximately: back off towards more precise points of
    // the front until the verified metric meets the target.
    if config.uniform.is_none() && !meets(value) {
        let mut index = front.iter().position(|s| s.assignment == chosen).unwrap_or(0);
        for _ in 0..6 {
            if index == 0 || meets(value) {
                break;
            }
            index = index.saturating_sub(index.div_ceil(8));
            if config.max_size.is_some_and(|max| fixed + front[index].bytes as u64 > max) {
                break;
            }
            chosen = front[index].assignment.clone();
            (out, value) = verify(&options, &chosen, progress)?;
        }
    }
    let size = out.encoded_len() as u64;
    if !meets(value) || config.max_size.is_some_and(|m| size > m) {
        bail!(
            "budget not reachable: the best found is {:.2} MB at {:?} {value:.4} (asked: {}{})",
            size as f64 / 1e6,
            config.metric,
            config.max_size.map_or(String::new(), |m| format!("≤ {:.2} MB ", m as f64 / 1e6)),
            config.min_metric.map_or(String::new(), |m| format!("metric {m}")),
        );
    }
    let layers = options
        .iter()
        .zip(&chosen)
        .map(|(o, &a)| LayerReport {
            name: o.layer.name.clone(),
            op: o.layer.op.clone(),
            params: o.layer.params(),
            precision: a.map_or(Precision::F32, |i| o.candidates[i].precision).name(),
            sensitivity: a.and_then(|i| o.candidates[i].loss),
            losses: o.candidates.iter().filter_map(|c| c.loss.map(|l| (c.precision.name(), l))).collect(),
        })
        .collect();
    let front = front
        .iter()
        .map(|s| FrontPoint {
            size_bytes: fixed + s.bytes as u64,
            predicted_metric: predicted(config.metric, s),
            chosen: s.assignment == chosen,
        })
        .collect();
    let report = Report {
        size_bytes: size,
        fp32_size_bytes: fp32_bytes,
        metric: config.metric,
        metric_value: value,
        samples: eval.samples(),
        layers,
        front,
    };
    Ok(Outcome { model: out, report })
}

/// The metric a front point predicts (perfect minus its summed loss).
fn predicted(metric: Metric, step: &Step) -> f64 {
    if metric.higher_is_better() { 1.0 - step.predicted_loss } else { step.predicted_loss }
}

/// The front point for the targets: the first within the size budget, or the last whose
/// prediction meets the metric, or (with no target) the last predicting ≥ 0.99 / ≤ 0.01.
fn pick(front: &[Step], fixed: u64, config: &Config, meets: &dyn Fn(f64) -> bool) -> Result<Assignment> {
    let size = |s: &Step| fixed + s.bytes as u64;
    if let Some(max) = config.max_size {
        let Some(step) = front.iter().find(|s| size(s) <= max) else {
            let smallest = front.last().map_or(0, size);
            bail!(
                "budget not reachable: {:.2} MB asked, the smallest this model gets is {:.2} MB (every layer at its lowest precision)",
                max as f64 / 1e6,
                smallest as f64 / 1e6
            );
        };
        return Ok(step.assignment.clone());
    }
    let default = |v: f64| if config.metric.higher_is_better() { v >= 0.99 } else { v <= 0.01 };
    let target = |v: f64| if config.min_metric.is_some() { meets(v) } else { default(v) };
    let step = front.iter().rev().find(|s| target(predicted(config.metric, s))).unwrap_or(&front[0]);
    Ok(step.assignment.clone())
}
