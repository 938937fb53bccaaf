//! Post-training weight quantization to standard QDQ ONNX, uniform or mixed precision.
//!
//! The pipeline: find the quantizable weights ([`qdq::quantizable_layers`]), quantize each to
//! every candidate precision ([`weights`]), measure each candidate's sensitivity in our own
//! runtime ([`search`]) and its time on this machine ([`latency`]), pick a precision per layer
//! for the size or metric target within the speed goal, write the
//! QDQ graph ([`qdq::rewrite`]) and verify the written form end to end on the evaluation set
//! ([`metric`]): what is measured is what ships.

pub mod calibrate;
pub mod compact;
pub mod gptq;
pub mod latency;
pub mod metric;
pub mod observe;
pub mod opset;
pub mod prepare;
pub mod qdq;
pub mod report;
pub mod search;
pub mod weights;
pub mod writer;

use anyhow::{Context, Result, bail, ensure};
use calibrate::ChannelAxis;
use distq_runtime::onnx::proto::ModelProto;
use distq_runtime::{Model, Session, Tensor};
use gptq::Rounding;
use metric::{Dataset, Metric};
use observe::Observer;
use prost::Message;
use report::{FrontPoint, LayerReport, Report};
use search::Assignment;
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
    /// Largest time per sample allowed on this machine, ms, as predicted from each layer's
    /// measured time ([`latency`]).
    pub max_latency_ms: Option<f64>,
    /// Smallest speed-up over fp32 allowed on this machine, predicted the same way. Mixed
    /// precision without either goal asks for 1: never slower than fp32.
    pub min_speedup: Option<f64>,
    /// Calibration samples used per sensitivity run.
    pub sensitivity_samples: usize,
    /// Samples per model run.
    pub batch: usize,
    /// Correct each lowered layer's mean output shift in its bias.
    pub bias_correction: bool,
    /// Quantize int8 layers' inputs statically, with ranges from this observer (`None`: the
    /// inputs stay float: weight-only quantization).
    pub observer: Option<Observer>,
    /// How int4 weights are rounded (int8 is always rounded to nearest: GPTQ did not help it
    /// on real models). GPTQ needs `2 × sensitivity_samples` calibration samples (it fits
    /// its own, the sensitivities are measured on others); with fewer, rounding is nearest.
    pub rounding: Rounding,
    /// Rename internal tensors to short ids and drop node names ([`compact`]): the output
    /// is smaller, and sizes are measured on that form.
    pub compact_names: bool,
    /// Precisions decided beforehand (by an earlier search, before quantization-aware
    /// training), by layer name: no sensitivity search; layers not named stay fp32.
    pub fixed: Option<Vec<(String, Precision)>>,
}

/// The weight of time against bytes in the speed-first greedy walk, bytes per ms saved per
/// sample: large enough that any time saved outweighs any bytes.
const BYTES_PER_MS_MAX: f64 = 1e15;

/// Calibration samples observed for bias correction (at least).
const CORRECTION_SAMPLES: usize = 64;
/// Calibration samples observed for activation ranges (at most).
const RANGE_SAMPLES: usize = 256;

/// The quantized model and what was measured on the way.
pub struct Outcome {
    /// The model to write.
    pub model: ModelProto,
    /// The report (its `size_bytes` is the encoded model's size).
    pub report: Report,
    /// The precision chosen for each layer (by the prepared model's initializer names),
    /// for [`Config::fixed`] after quantization-aware training.
    pub precisions: Vec<(String, Precision)>,
}

/// Reports progress of long steps: `(what, done, total)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// What the calibration samples show about the layers' inputs, as far as `config` needs it:
/// channel means (bias correction), uint8 ranges (static activations, int8 only) and second
/// moments (GPTQ).
fn calibration(
    proto: &ModelProto,
    layers: &[qdq::Layer],
    config: &Config,
    precisions: &[Precision],
    calib: &Dataset,
    progress: Progress,
) -> Result<calibrate::Observations> {
    let samples = calib.head(config.sensitivity_samples.max(CORRECTION_SAMPLES))?;
    // Each activation once, with the axis its vectors run along.
    let inputs = |keep: &dyn Fn(&qdq::Layer) -> Option<ChannelAxis>| {
        let mut observed: Vec<(String, ChannelAxis)> = Vec::new();
        for l in layers {
            if let Some(axis) = keep(l).filter(|_| !observed.iter().any(|(n, _)| *n == l.activation)) {
                observed.push((l.activation.clone(), axis));
            }
        }
        observed
    };
    let axis = |l: &qdq::Layer| if l.op == "Conv" { ChannelAxis::Second } else { ChannelAxis::Last };
    let mut out = calibrate::Observations::default();
    if config.bias_correction {
        progress("calibrate means", 0, 1);
        out.means = calibrate::channel_means(proto, &inputs(&|l| l.bias.as_ref().map(|_| axis(l))), &samples, config.batch)?;
        progress("calibrate means", 1, 1);
    }
    if let Some(observer) = config.observer.filter(|_| precisions.contains(&Precision::Int8)) {
        let names = inputs(&|l| (l.op != "Gather").then(|| axis(l)));
        let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        progress("calibrate ranges", 0, 1);
        out.activations = calibrate::activation_ranges(proto, &names, observer, &calib.head(RANGE_SAMPLES)?, config.batch)?;
        progress("calibrate ranges", 1, 1);
    }
    // GPTQ fits its samples: mixed precision measures sensitivities on others (the first
    // `sensitivity_samples`), or GPTQ-rounded weights would look better than they are. Too
    // small a calibration set keeps nearest rounding.
    let unseen;
    let fitted = match config.uniform {
        Some(_) => &samples,
        None => {
            unseen = calib.range(config.sensitivity_samples..config.sensitivity_samples + samples.samples())?;
            &unseen
        }
    };
    let int4 = precisions.iter().any(|p| matches!(p, Precision::Int4 { .. }));
    if config.rounding == Rounding::Gptq && int4 && (config.uniform.is_some() || fitted.samples() >= config.sensitivity_samples) {
        progress("calibrate second moments", 0, 1);
        out.hessians = calibrate::input_hessians(proto, &inputs(&gptq::input_axis), fitted, config.batch)?;
        progress("calibrate second moments", 1, 1);
    }
    Ok(out)
}

/// Quantizes `model` (from `path`) per `config`, measuring on `calib` and verifying on `eval`.
pub fn quantize(model: &Model, config: &Config, calib: &Dataset, eval: &Dataset, progress: Progress) -> Result<Outcome> {
    // Candidates are built and run in memory: external weights are read inline first.
    let inlined = prepare::inline_external(model)?;
    let original = inlined.as_ref().unwrap_or(&model.file().proto);
    let fp32_bytes = original.encoded_len() as u64;
    let prepared;
    // The fp32 reference is the model as given; layers are looked for in its prepared form.
    let fp32_session = Session::new(Model::from_bytes(original.encode_to_vec())?);
    let model = match prepare::prepare(original).or(inlined) {
        Some(p) => {
            prepared = Model::from_bytes(p.encode_to_vec())
                .context("the prepared model (weights inline, Constant weights as initializers, batch norms folded)")?;
            &prepared
        }
        None => model,
    };
    let proto = &model.file().proto;
    let layers = qdq::quantizable_layers(model)?;
    ensure!(
        !layers.is_empty(),
        "{}: no quantizable layer (a float weight of ≥ {} values read by MatMul, Gemm, Conv or Gather)",
        model.file().origin,
        qdq::MIN_VALUES
    );
    let layer_fp32: u64 = layers.iter().map(|l| 4 * l.params() as u64).sum();
    // The written form of a graph: names compacted if asked.
    let finish = |mut out: ModelProto| {
        if config.compact_names {
            compact::compact_names(&mut out);
        }
        out
    };
    // Bytes outside the quantizable weights, plus what each restoring node and its tensors'
    // headers add (measured on real models: well under 200 bytes per layer).
    let fixed = (finish(proto.clone()).encoded_len() as u64).saturating_sub(layer_fp32) + 200 * layers.len() as u64;
    let int4 = Precision::Int4 { block: config.block, pow2_scales: false };
    // A mixed search also weighs int4 with power-of-two block scales: the same bytes at int8
    // speed (the runtime computes it as int8 per column), for more rounding error.
    let int4_pow2 = Precision::Int4 { block: config.block, pow2_scales: true };
    let mut precisions = match config.uniform {
        Some(Precision::Int4 { .. }) => vec![Precision::Int8, int4],
        Some(p) => vec![p],
        None => vec![Precision::F16, Precision::Int8, int4, int4_pow2],
    };
    if let Some(fixed) = &config.fixed {
        precisions.retain(|p| fixed.iter().any(|(_, f)| f == p));
    }
    let observations = calibration(proto, &layers, config, &precisions, calib, progress)?;
    let observations_used_gptq = !observations.hessians.is_empty();
    // A lookup table costs no compute, only bytes: a mixed search may also give it long 4-bit
    // blocks, the longest power of two (onnxruntime's GatherBlockQuantized takes no other)
    // that divides a row. MiniLM's word embeddings (30522 rows of 384) take 6.2 MB so in
    // blocks of 128 instead of 7.5 MB in blocks of 32, which leaves room for int8, the fast
    // precision, elsewhere.
    let mixed = config.uniform.is_none() && config.fixed.is_none();
    let layer_precisions = |layer: &qdq::Layer| {
        let row = layer.shape[layer.layout.reduction_axis];
        // The lowest set bit of the row length: its longest power-of-two divisor.
        let longest = row & row.wrapping_neg();
        let long_blocks = Precision::Int4 { block: longest, pow2_scales: false };
        let table = mixed && layer.op == "Gather" && longest > config.block && precisions.contains(&int4);
        // Only matmuls compute on 4-bit blocks at int8 speed.
        let computes = |p: &Precision| *p != int4_pow2 || matches!(layer.op.as_str(), "MatMul" | "Gemm");
        precisions.iter().copied().filter(computes).chain(table.then_some(long_blocks)).collect()
    };
    let mut options = search::candidates(layers, layer_precisions, &observations)?;
    let reference_eval = eval.outputs(&fp32_session, config.batch)?;
    metric::check_applicable(config.metric, &reference_eval)?;
    // The written form of an assignment, and its metric on `data` against `reference`.
    let evaluate = |options: &[search::Options], a: &Assignment, data: &Dataset, reference: &[Tensor]| -> Result<(ModelProto, f64)> {
        let out = finish(search::written(proto, options, a)?);
        let session = Session::new(Model::from_bytes(out.encode_to_vec()).context("the quantized model does not load")?);
        let value = data.compare(config.metric, reference, &data.outputs(&session, config.batch)?)?;
        Ok((out, value))
    };
    let higher = config.metric.higher_is_better();
    let target = match (config.min_metric, config.max_size) {
        (Some(m), _) => Some(m),
        (None, None) if config.uniform.is_none() => {
            ensure!(higher, "metric {:?}: give --min-metric or --max-size-mb (there is no default target)", config.metric);
            Some(0.99)
        }
        (None, _) => None,
    };
    let target = target.filter(|_| config.fixed.is_none());
    let meets = |value: f64| target.is_none_or(|m| if higher { value >= m } else { value <= m });
    // Top-1 agreement moves in whole flips, which do not add up across layers: sensitivity
    // is measured as the KL divergence of the outputs instead (smooth, near-additive).
    let proxy = if config.metric == Metric::Top1 { Metric::Kl } else { config.metric };
    // The weight bytes a size budget leaves (the rest of the file is fixed).
    let weight_budget = |max: u64| max.saturating_sub(fixed) as usize;
    // This machine's fp32 time per sample and the goal, ms (mixed precision only), and the
    // time the chosen layers must save.
    let mut timing: Option<(f64, f64)> = None;
    let mut min_ms_saved = f64::NEG_INFINITY;
    // Without a speed flag the goal (never slower than fp32) is soft: where no point meets it
    // within the size and metric targets, the pick is made without regard to time (and the
    // report says it is slower).
    let soft = config.max_latency_ms.is_none() && config.min_speedup.is_none();
    let (mut chosen, mut front, mut index): (Assignment, _, _) = match (&config.fixed, config.uniform) {
        (Some(fixed), _) => {
            let assignment = options
                .iter()
                .map(|o| {
                    let Some((_, p)) = fixed.iter().find(|(n, _)| *n == o.layer.name) else { return Ok(None) };
                    if *p == Precision::F32 {
                        return Ok(None);
                    }
                    let i = o.candidates.iter().position(|c| c.precision == *p);
                    i.map(Some).with_context(|| format!("layer '{}' cannot be stored as {}", o.layer.name, p.name()))
                })
                .collect::<Result<_>>()?;
            (assignment, Vec::new(), 0)
        }
        // Candidates run most precise first: the last is the precision asked for, or int8
        // where int4 does not fit.
        (None, Some(_)) => (options.iter().map(|o| o.candidates.len().checked_sub(1)).collect(), Vec::new(), 0),
        (None, None) => {
            let sample = calib.head(config.sensitivity_samples)?;
            let reference = sample.outputs(&fp32_session, config.batch)?;
            // Layer times first, alone on the machine; then the sensitivity runs.
            progress("latency", 0, 1);
            latency::measure(proto, &mut options, &sample, config.batch)?;
            let model_ms = latency::model_ms_per_sample(&fp32_session, &sample, config.batch)?;
            latency::fit_to_model(&mut options, model_ms);
            progress("latency", 1, 1);
            let goal_ms = match (config.max_latency_ms, config.min_speedup) {
                (Some(ms), Some(speedup)) => ms.min(model_ms / speedup),
                (Some(ms), None) => ms,
                (None, speedup) => model_ms / speedup.unwrap_or(1.0),
            };
            timing = Some((model_ms, goal_ms));
            min_ms_saved = model_ms - goal_ms;
            search::measure(proto, &mut options, &sample, &reference, proxy, config.batch, |d, t| progress("sensitivity", d, t))?;
            let fast_enough = |s: &search::Step| s.ms_saved >= min_ms_saved;
            match config.max_size {
                // The most precise front point within the budget, its leftover bytes spent,
                // on the front that weighs time least while that point meets the speed goal.
                Some(max) => {
                    let at_budget = |front: &[search::Step]| front.iter().position(|s| s.bytes <= weight_budget(max) && fast_enough(s));
                    let mut front = search::greedy_front(&options, 0.0);
                    if at_budget(&front).is_none() {
                        let (mut slow, mut fast) = (0.0f64, BYTES_PER_MS_MAX);
                        front = search::greedy_front(&options, fast);
                        for _ in 0..24 {
                            let mid = (slow * fast).sqrt().max(fast / 1e3);
                            let candidate = search::greedy_front(&options, mid);
                            if at_budget(&candidate).is_some() {
                                (fast, front) = (mid, candidate);
                            } else {
                                slow = mid;
                            }
                        }
                    }
                    let index = match at_budget(&front) {
                        Some(i) => Some(i),
                        // The default goal gives way: the size pick without regard to time.
                        None if soft => {
                            min_ms_saved = f64::NEG_INFINITY;
                            front = search::greedy_front(&options, 0.0);
                            front.iter().position(|s| s.bytes <= weight_budget(max))
                        }
                        None => None,
                    };
                    let index = index.with_context(|| {
                        let smallest = front.last().map_or(0, |s| fixed + s.bytes as u64);
                        let fastest = front.iter().filter(|s| s.bytes <= weight_budget(max)).map(|s| s.ms_saved).fold(f64::NEG_INFINITY, f64::max);
                        match fastest > f64::NEG_INFINITY {
                            true => format!(
                                "speed goal not reachable within {:.2} MB: {goal_ms:.3} ms per sample asked, the fastest point is predicted at {:.3} ms (fp32: {model_ms:.3} ms on this machine)",
                                max as f64 / 1e6,
                                model_ms - fastest
                            ),
                            false => format!(
                                "budget not reachable: {:.2} MB asked, the smallest this model gets is {:.2} MB (every layer at its lowest precision)",
                                max as f64 / 1e6,
                                smallest as f64 / 1e6
                            ),
                        }
                    })?;
                    (search::fill(&options, &front[index].assignment, weight_budget(max), min_ms_saved), front, index)
                }
                // The front's most compact point whose metric on the calibration samples
                // meets the target (bisection: the metric falls along the front); time
                // weighs in only when that point misses the speed goal.
                None => {
                    let mut probe = 0;
                    let mut pick = |front: &[search::Step]| -> Result<usize> {
                        let (mut good, mut bad) = (0, front.len());
                        while bad - good > 1 {
                            let mid = (good + bad) / 2;
                            progress("search", probe, probe + 1);
                            probe += 1;
                            if meets(evaluate(&options, &front[mid].assignment, &sample, &reference)?.1) {
                                good = mid;
                            } else {
                                bad = mid;
                            }
                        }
                        progress("search", probe, probe);
                        Ok(good)
                    };
                    let mut front = search::greedy_front(&options, 0.0);
                    let mut index = pick(&front)?;
                    if !fast_enough(&front[index]) {
                        let speed_first = search::greedy_front(&options, BYTES_PER_MS_MAX);
                        let i = pick(&speed_first)?;
                        // The default goal gives way where speed first does not meet it either.
                        if fast_enough(&speed_first[i]) || !soft {
                            (front, index) = (speed_first, i);
                        }
                    }
                    (front[index].assignment.clone(), front, index)
                }
            }
        }
    };
    progress("verify", 0, 1);
    let (mut out, mut value) = evaluate(&options, &chosen, eval, &reference_eval)?;
    // The size is estimated per layer: while the written file is over the budget, shrink the
    // weights' budget by the excess (at least 0.5 %) and pick again along `front`.
    let fit_budget = |max: u64, front: &[search::Step], min_ms_saved: f64, picked: (Assignment, usize, ModelProto, f64)| -> Result<_> {
        let (mut chosen, mut index, mut out, mut value) = picked;
        let mut budget = weight_budget(max);
        while out.encoded_len() as u64 > max {
            let over = out.encoded_len() - max as usize;
            budget = budget.saturating_sub(over.max(budget / 200));
            let Some(i) = front.iter().position(|s| s.bytes <= budget && s.ms_saved >= min_ms_saved) else { break };
            index = i;
            chosen = search::fill(&options, &front[i].assignment, budget, min_ms_saved);
            (out, value) = evaluate(&options, &chosen, eval, &reference_eval)?;
        }
        Ok((chosen, index, out, value))
    };
    if config.uniform.is_none() && config.fixed.is_none() {
        match config.max_size {
            Some(max) => {
                (chosen, index, out, value) = fit_budget(max, &front, min_ms_saved, (chosen, index, out, value))?;
                // The soft goal gives way to the metric too: a pick that traded precision for
                // time and misses the metric is made again without regard to time.
                if soft && !meets(value) && min_ms_saved > f64::NEG_INFINITY {
                    min_ms_saved = f64::NEG_INFINITY;
                    front = search::greedy_front(&options, 0.0);
                    if let Some(i) = front.iter().position(|s| s.bytes <= weight_budget(max)) {
                        let again = search::fill(&options, &front[i].assignment, weight_budget(max), min_ms_saved);
                        let (again_out, again_value) = evaluate(&options, &again, eval, &reference_eval)?;
                        (chosen, index, out, value) = fit_budget(max, &front, min_ms_saved, (again, i, again_out, again_value))?;
                    }
                }
            }
            // The evaluation set may disagree with the calibration samples: step back
            // towards more precise points until it meets the target.
            None => {
                while !meets(value) && index > 0 {
                    index = index.saturating_sub(index.div_ceil(8));
                    chosen = front[index].assignment.clone();
                    (out, value) = evaluate(&options, &chosen, eval, &reference_eval)?;
                }
            }
        }
    }
    progress("verify", 1, 1);
    let size = out.encoded_len() as u64;
    if !meets(value) || config.max_size.is_some_and(|m| size > m) {
        bail!(
            "budget not reachable: the best found is {:.2} MB at {:?} {value:.4} (asked: {}{})",
            size as f64 / 1e6,
            config.metric,
            config.max_size.map_or(String::new(), |m| format!("≤ {:.2} MB ", m as f64 / 1e6)),
            target.map_or(String::new(), |m| format!("metric {m}")),
        );
    }
    let ms_saved: f64 = options.iter().zip(&chosen).map(|(o, &a)| o.ms_saved_at(a)).sum();
    if let Some((model_ms, goal_ms)) = timing
        && ms_saved < min_ms_saved
        && (config.max_latency_ms.is_some() || config.min_speedup.is_some())
    {
        bail!(
            "speed goal not reachable: {goal_ms:.3} ms per sample asked ({:.2}× fp32's {model_ms:.3} ms on this machine); the best found within the other targets is predicted at {:.3} ms",
            model_ms / goal_ms,
            model_ms - ms_saved
        );
    }
    let precisions = options
        .iter()
        .zip(&chosen)
        .map(|(o, &a)| (o.layer.name.clone(), a.map_or(Precision::F32, |i| o.candidates[i].precision)))
        .collect();
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
            activation: a.and_then(|i| o.candidates[i].activation).map(|q| (q.scale, q.zero_point)),
            ms: o
                .fp32_ms
                .map(|ms| ("fp32".to_string(), ms))
                .into_iter()
                .chain(o.candidates.iter().filter_map(|c| Some((c.precision.name(), c.ms?))))
                .collect(),
        })
        .collect();
    let front = front
        .iter()
        .enumerate()
        .map(|(i, s)| FrontPoint {
            size_bytes: fixed + s.bytes as u64,
            loss: s.predicted_loss,
            ms_per_sample: timing.map(|(model_ms, _)| model_ms - s.ms_saved),
            chosen: i == index,
        })
        .collect();
    let report = Report {
        size_bytes: size,
        fp32_size_bytes: fp32_bytes,
        metric: config.metric,
        metric_value: value,
        samples: eval.samples(),
        sensitivity_metric: proxy,
        observer: config.observer,
        rounding: if observations_used_gptq { Rounding::Gptq } else { Rounding::Nearest },
        layers,
        front,
        fp32_ms_per_sample: timing.map(|t| t.0),
        predicted_ms_per_sample: timing.map(|(model_ms, _)| model_ms - ms_saved),
    };
    Ok(Outcome { model: out, report, precisions })
}
