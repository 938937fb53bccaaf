//! Mixed precision from measured sensitivity. Each layer is lowered alone to each candidate
//! precision (written exactly as the quantized file will hold it) and the model is run in
//! our runtime on the calibration samples; the metric's loss is the layer's
//! sensitivity at that precision. A greedy walk then lowers, step by step, the layer that
//! saves the most bytes per unit of loss, which traces a size → metric front; the pick for a
//! size or metric target is verified end to end by the caller.

use super::calibrate::Observations;
use super::gptq::refine;
use super::metric::{Dataset, Metric};
use super::observe::ActivationQuant;
use super::qdq::{Layer, Lowered, rewrite};
use super::weights::{Precision, Quantized, quantize};
use anyhow::{Context, Result};
use distq_runtime::onnx::proto::ModelProto;
use distq_runtime::{Model, Session, Tensor};
use prost::Message;

/// One layer's options: each candidate precision with its quantized weight, file bytes and
/// measured loss (metric units, ≥ 0 means worse than fp32).
pub struct Options {
    /// The layer.
    pub layer: Layer,
    /// `(precision, quantized, bytes, loss)`, most precise first; fp32 is implicit.
    pub candidates: Vec<Candidate>,
    /// Time per sample at fp32, ms (`None`: not measured).
    pub fp32_ms: Option<f64>,
}

/// A precision a layer may take.
pub struct Candidate {
    /// The precision.
    pub precision: Precision,
    /// The weight stored at it.
    pub quantized: Quantized,
    /// Bytes in the file.
    pub bytes: usize,
    /// Metric loss when only this layer is lowered (None until measured).
    pub loss: Option<f64>,
    /// The bias correcting the mean output shift, when the layer has a bias site and its
    /// input's channel means were observed.
    pub bias: Option<Vec<f32>>,
    /// The static quantization of the layer's input (int8 with an observer).
    pub activation: Option<ActivationQuant>,
    /// Time per sample in this form, ms ([`super::latency`]; `None`: not measured).
    pub ms: Option<f64>,
}

impl Options {
    /// The layer as written at candidate `choice` (`None`: left fp32).
    pub fn lowered(&self, choice: Option<usize>) -> Option<Lowered<'_>> {
        let c = &self.candidates[choice?];
        Some(Lowered { layer: &self.layer, quantized: &c.quantized, bias: c.bias.as_deref(), activation: c.activation })
    }

    /// File bytes at choice `a` (`None`: fp32).
    fn bytes_at(&self, a: Option<usize>) -> usize {
        a.map_or(4 * self.layer.params(), |i| self.candidates[i].bytes)
    }

    /// Measured loss at choice `a` (`None`: fp32, no loss).
    fn loss_at(&self, a: Option<usize>) -> f64 {
        a.map_or(0.0, |i| self.candidates[i].loss.unwrap_or(0.0))
    }

    /// Time saved per sample against fp32 at choice `a`, ms (0 where not measured; negative
    /// when slower).
    pub fn ms_saved_at(&self, a: Option<usize>) -> f64 {
        match (self.fp32_ms, a.and_then(|i| self.candidates[i].ms)) {
            (Some(fp32), Some(ms)) => fp32 - ms,
            _ => 0.0,
        }
    }

    /// Whether candidate `c` is worth a step when time counts: no other candidate is both as
    /// small and as fast (fp16 weights, which this CPU expands to f32 per run, lose to int8
    /// on both).
    fn useful(&self, c: usize) -> bool {
        let (bytes, saved) = (self.candidates[c].bytes, self.ms_saved_at(Some(c)));
        !(0..self.candidates.len()).any(|d| {
            let (b, s) = (self.candidates[d].bytes, self.ms_saved_at(Some(d)));
            d != c && b <= bytes && s >= saved && (b < bytes || s > saved)
        })
    }
}

/// The written form of `assignment`.
pub fn written(model: &ModelProto, options: &[Options], assignment: &Assignment) -> Result<ModelProto> {
    let lowered: Vec<Lowered> = options.iter().zip(assignment).filter_map(|(o, &a)| o.lowered(a)).collect();
    rewrite(model, &lowered)
}

/// Quantizes every layer to every candidate precision `precisions(layer)` lists that it
/// accepts, using what calibration `observed` of its input: GPTQ rounding where second
/// moments were collected, the bias correction for its channel means, and at int8 its static
/// quantization.
pub fn candidates(layers: Vec<Layer>, precisions: impl Fn(&Layer) -> Vec<Precision>, observed: &Observations) -> Result<Vec<Options>> {
    layers
        .into_iter()
        .map(|layer| {
            let candidates = precisions(&layer)
                .iter()
                .filter(|&&p| layer.accepts(p))
                .map(|&precision| {
                    let context = || format!("weight '{}'", layer.name);
                    let mut quantized = quantize(&layer.values, &layer.shape, precision, layer.layout).with_context(context)?;
                    if let Some(h) =
                        observed.hessians.get(&layer.activation).filter(|h| matches!(precision, Precision::Int4 { .. }) && h.well_sampled())
                    {
                        refine(&mut quantized, &layer.values, layer.layout, h).with_context(context)?;
                    }
                    let means = observed.means.get(&layer.activation);
                    let bias = means.and_then(|m| layer.corrected_bias(&quantized.dequantized(), m));
                    let activation = observed
                        .activations
                        .get(&layer.activation)
                        .copied()
                        .filter(|_| precision == Precision::Int8 && layer.op != "Gather");
                    Ok(Candidate { precision, bytes: quantized.stored_bytes(), quantized, loss: None, bias, activation, ms: None })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Options { layer, candidates, fp32_ms: None })
        })
        .collect()
}

/// The loss of `value` against a perfect score, so that larger is always worse.
pub fn loss(metric: Metric, value: f64) -> f64 {
    if metric.higher_is_better() { 1.0 - value } else { value }
}

/// Measures each candidate's loss on `data` (`reference` = the fp32 outputs), calling
/// `progress(done, total)` after each. Candidates are independent runs: they spread over the
/// cores ([`MEASURE_WORKERS`] at most), and each loss is the same whichever worker runs it.
pub fn measure(
    model: &ModelProto,
    options: &mut [Options],
    data: &Dataset,
    reference: &[Tensor],
    metric: Metric,
    batch: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<()> {
    let jobs: Vec<(usize, usize)> =
        options.iter().enumerate().flat_map(|(o, opt)| (0..opt.candidates.len()).map(move |c| (o, c))).collect();
    let total = jobs.len();
    let shared: &[Options] = options;
    let one = |(o, c): (usize, usize)| -> Result<f64> {
        let lowered = shared[o].lowered(Some(c)).into_iter().collect::<Vec<_>>();
        let session = Session::new(Model::from_bytes(rewrite(model, &lowered)?.encode_to_vec())?);
        let out = data.outputs(&session, batch)?;
        Ok(loss(metric, data.compare(metric, reference, &out)?).max(0.0))
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MEASURE_WORKERS).min(total.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (sender, receiver) = std::sync::mpsc::channel();
    let losses = std::thread::scope(|scope| -> Result<Vec<Option<f64>>> {
        for _ in 0..workers {
            let sender = sender.clone();
            let (next, jobs, one) = (&next, &jobs, &one);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&job) = jobs.get(i) else { break };
                    let result = one(job).with_context(|| {
                        format!("layer '{}' at {}", shared[job.0].layer.name, shared[job.0].candidates[job.1].precision.name())
                    });
                    let failed = result.is_err();
                    if sender.send((i, result)).is_err() || failed {
                        // Stop the others early: the run fails on the first error.
                        next.store(jobs.len(), std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
        drop(sender);
        let mut losses = vec![None; total];
        for (done, (i, result)) in receiver.iter().enumerate() {
            losses[i] = Some(result?);
            progress(done + 1, total);
        }
        Ok(losses)
    })?;
    for (&(o, c), l) in jobs.iter().zip(losses) {
        options[o].candidates[c].loss = Some(l.context("a sensitivity run ended without a result")?);
    }
    Ok(())
}

/// Sensitivity runs at once, at most: each holds a rewritten copy of the model (MiniLM: about
/// 300 MB), so more would cost memory for little gain on a laptop's cores.
pub const MEASURE_WORKERS: usize = 4;

/// A precision per layer (an index into its candidates; `None` = fp32).
pub type Assignment = Vec<Option<usize>>;

/// A point of the greedy walk: the assignment, its file bytes (weights only), the summed
/// loss it predicts and the time per sample it saves against fp32.
pub struct Step {
    /// Precision per layer.
    pub assignment: Assignment,
    /// Bytes of the quantizable weights.
    pub bytes: usize,
    /// Sum of the lowered layers' losses.
    pub predicted_loss: f64,
    /// Sum of the lowered layers' time saved per sample, ms.
    pub ms_saved: f64,
}

/// The layer and new choice that `score` rates highest over every layer's one possible move
/// from `assignment` (`score` gives the move and its rating, or `None` when it has none).
fn best_move(
    options: &[Options],
    assignment: &Assignment,
    score: impl Fn(&Options, Option<usize>) -> Option<(Option<usize>, f64)>,
) -> Option<(usize, Option<usize>)> {
    options
        .iter()
        .zip(assignment)
        .enumerate()
        .filter_map(|(i, (o, &a))| score(o, a).map(|(to, rating)| (i, to, rating)))
        .max_by(|x, y| x.2.total_cmp(&y.2))
        .map(|(i, to, _)| (i, to))
}

/// The greedy walk from all-fp32 down to every layer at its lowest candidate: each step
/// lowers one layer by one candidate, choosing the largest `bytes saved + ms_per_byte⁻¹ · time
/// saved` per unit of added loss (`bytes_per_ms` = 0: bytes alone). When time counts, a layer
/// skips the candidates another one beats on both size and speed. Returns every point.
pub fn greedy_front(options: &[Options], bytes_per_ms: f64) -> Vec<Step> {
    let mut assignment: Assignment = vec![None; options.len()];
    let point = |a: &Assignment| Step {
        assignment: a.clone(),
        bytes: options.iter().zip(a).map(|(o, &x)| o.bytes_at(x)).sum(),
        predicted_loss: options.iter().zip(a).map(|(o, &x)| o.loss_at(x)).sum(),
        ms_saved: options.iter().zip(a).map(|(o, &x)| o.ms_saved_at(x)).sum(),
    };
    let mut steps = vec![point(&assignment)];
    let lower = |o: &Options, a: Option<usize>| {
        let first = a.map_or(0, |x| x + 1);
        let next = (first..o.candidates.len()).find(|&c| bytes_per_ms == 0.0 || o.useful(c))?;
        let saved = o.bytes_at(a) as f64 - o.bytes_at(Some(next)) as f64;
        let faster = o.ms_saved_at(Some(next)) - o.ms_saved_at(a);
        let added = (o.loss_at(Some(next)) - o.loss_at(a)).max(1e-12);
        Some((Some(next), (saved + bytes_per_ms * faster) / added))
    };
    while let Some((i, to)) = best_move(options, &assignment, lower) {
        assignment[i] = to;
        steps.push(point(&assignment));
    }
    steps
}

/// Spends what `budget` (bytes of the quantizable weights) leaves beyond `assignment`: while
/// it fits, raises the layer whose next more precise candidate (or fp32) removes the most
/// loss per added byte, as long as the layers still save `min_ms_saved` per sample (candidates
/// another one beats on size and speed are skipped when that counts). The greedy front moves
/// in whole layers, so its point under a budget can leave a large layer's worth of bytes unused.
pub fn fill(options: &[Options], assignment: &Assignment, budget: usize, min_ms_saved: f64) -> Assignment {
    let mut a = assignment.clone();
    let mut used: usize = options.iter().zip(&a).map(|(o, &x)| o.bytes_at(x)).sum();
    let mut saved: f64 = options.iter().zip(&a).map(|(o, &x)| o.ms_saved_at(x)).sum();
    let timed = min_ms_saved > f64::NEG_INFINITY;
    loop {
        let raise = |o: &Options, x: Option<usize>| {
            let up = (0..x?).rev().find(|&c| !timed || o.useful(c));
            let added = o.bytes_at(up).saturating_sub(o.bytes_at(x));
            let gain = o.loss_at(x) - o.loss_at(up);
            let still_fast = saved - o.ms_saved_at(x) + o.ms_saved_at(up) >= min_ms_saved;
            (gain > 0.0 && used + added <= budget && still_fast).then(|| (up, gain / added.max(1) as f64))
        };
        let Some((i, up)) = best_move(options, &a, raise) else { break };
        used += options[i].bytes_at(up) - options[i].bytes_at(a[i]);
        saved += options[i].ms_saved_at(up) - options[i].ms_saved_at(a[i]);
        a[i] = up;
    }
    a
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::quantize::weights::Layout;

    pub(in crate::quantize) fn option(name: &str, params: usize, losses: &[f64]) -> Options {
        let layer = Layer {
            name: name.into(),
            op: "MatMul".into(),
            node_output: format!("{name}_out"),
            activation: "x".into(),
            groups: 1,
            shape: vec![params / 4, 4],
            layout: Layout { channel_axis: 1, reduction_axis: 0 },
            values: vec![0.5; params],
            bias: None,
        };
        let precisions = [Precision::F16, Precision::Int8, Precision::Int4 { block: 32, pow2_scales: false }];
        let candidates = precisions
            .iter()
            .zip(losses)
            .map(|(&p, &loss)| {
                let quantized = quantize(&layer.values, &layer.shape, p, layer.layout).unwrap();
                Candidate {
                    precision: p,
                    bytes: quantized.stored_bytes(),
                    quantized,
                    loss: Some(loss),
                    bias: None,
                    activation: None,
                    ms: None,
                }
            })
            .collect();
        Options { layer, candidates, fp32_ms: None }
    }

    #[test]
    fn greedy_lowers_the_cheapest_bytes_first() {
        // "robust" loses nothing at any precision; "fragile" loses a lot at int4.
        let options = [option("fragile", 4096, &[0.0, 0.001, 0.2]), option("robust", 4096, &[0.0, 0.0, 0.0001])];
        let front = greedy_front(&options, 0.0);
        assert_eq!(front.len(), 7, "fp32 + 3 steps per layer");
        assert!(front.windows(2).all(|w| w[1].bytes < w[0].bytes), "every step saves bytes");
        // "robust" reaches int4 before "fragile" leaves int8.
        let robust_int4 = front.iter().position(|s| s.assignment[1] == Some(2)).unwrap();
        let fragile_int4 = front.iter().position(|s| s.assignment[0] == Some(2)).unwrap();
        assert!(robust_int4 < fragile_int4);
        assert_eq!(front.last().unwrap().assignment, [Some(2), Some(2)]);
        assert!((front.last().unwrap().predicted_loss - 0.2001).abs() < 1e-12);
    }

    /// Times per sample: fp32 1.0 ms, fp16 1.3 (expanded per run), int8 0.3, int4 0.5.
    pub(in crate::quantize) fn timed(mut o: Options) -> Options {
        o.fp32_ms = Some(1.0);
        for (c, ms) in o.candidates.iter_mut().zip([1.3, 0.3, 0.5]) {
            c.ms = Some(ms);
        }
        o
    }

    #[test]
    fn time_weighed_walks_skip_candidates_beaten_on_size_and_speed() {
        let options = [timed(option("fragile", 4096, &[0.0, 0.001, 0.2])), timed(option("robust", 4096, &[0.0, 0.0, 0.0001]))];
        // Bytes alone: every layer passes through fp16, which is slower than fp32.
        let by_bytes = greedy_front(&options, 0.0);
        assert!(by_bytes.iter().any(|s| s.ms_saved < 0.0), "fp16 steps cost time");
        // Time counts: int8 beats fp16 on both, so no layer takes fp16 and no step is slower.
        let by_time = greedy_front(&options, 1e6);
        assert!(by_time.iter().all(|s| s.assignment.iter().all(|&a| a != Some(0))));
        assert_eq!(by_time.len(), 5, "fp32 + int8 and int4 per layer");
        assert!(by_time.iter().all(|s| s.ms_saved >= 0.0));
        assert!((by_time[2].ms_saved - 1.4).abs() < 1e-9, "both layers at int8 first: {}", by_time[2].ms_saved);
        // Filling back towards fp32 stops where the layers would no longer save 1.0 ms.
        let lowest = vec![Some(1), Some(1)];
        assert_eq!(fill(&options, &lowest, usize::MAX, 1.0), lowest, "raising either to fp32 leaves 0.7 ms saved");
        assert_eq!(fill(&options, &lowest, usize::MAX, 0.5), [None, Some(1)], "the fragile layer's int8 loss goes first");
    }

    #[test]
    fn fill_spends_the_budget_where_it_removes_most_loss() {
        let options = [option("fragile", 4096, &[0.0, 0.001, 0.2]), option("robust", 4096, &[0.0, 0.0, 0.0001])];
        let bytes = |o: &Options, i: usize| o.candidates[i].bytes;
        let lowest = vec![Some(2), Some(2)];
        let floor = bytes(&options[0], 2) + bytes(&options[1], 2);
        // Room for one layer at int8: the fragile one gets it.
        let room = bytes(&options[0], 1) - bytes(&options[0], 2);
        assert_eq!(fill(&options, &lowest, floor + room, f64::NEG_INFINITY), [Some(1), Some(2)]);
        // No room: nothing changes; room for everything: back to fp32 only where it helps.
        assert_eq!(fill(&options, &lowest, floor + room - 1, f64::NEG_INFINITY), lowest);
        assert_eq!(fill(&options, &lowest, usize::MAX, f64::NEG_INFINITY), [Some(0), Some(1)], "fp16 and int8 lose nothing more than fp32");
    }
}
