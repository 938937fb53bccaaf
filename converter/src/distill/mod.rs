//! Training and distillation on candle: an ONNX student's initializers become `Var`s
//! ([`graph`]), trained with Adam ([`optim`]) on the seed's distillation loss ([`loss`])
//! against a frozen teacher's cached outputs ([`teacher`]), with seeded batches ([`data`]),
//! warmup + cosine learning rate, validation each epoch, best-parameter keeping and
//! checkpoints that a killed run resumes from ([`checkpoint`]); quantization-aware training
//! through fake-quantized weights ([`qat`]). [`derive`] makes a student from a teacher;
//! [`zoo`] holds the demo's CNN.

pub mod checkpoint;
pub mod data;
pub mod derive;
pub mod graph;
pub mod loss;
pub mod ops;
pub mod optim;
pub mod qat;
pub mod teacher;
pub mod zoo;

#[cfg(test)]
mod tests;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor};
use checkpoint::{EpochRecord, State};
use data::{Arrays, epoch_order};
use graph::TrainableGraph;
use loss::FeatureLoss;
use optim::{Adam, AdamParams, learning_rate};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Reports progress: `(what, done, total, detail)`.
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize, &str);

/// What the student learns from.
#[derive(Clone, Debug)]
pub enum Objective {
    /// Cross-entropy on true labels only (`distq train`).
    Labels,
    /// The seed's logit distillation; without labels α is 1.
    Logits {
        /// Softmax temperature T.
        temperature: f64,
        /// Weight α of the distillation term.
        alpha: f64,
    },
    /// Hidden-state distillation: a student value against a teacher value of the same shape.
    Feature {
        /// How they are compared.
        kind: FeatureLoss,
        /// The student's value (an output or any intermediate).
        student: String,
        /// The teacher's value, as named in the teacher targets.
        teacher: String,
        /// Mean-pool the student's value over the tokens this input marks (the teacher
        /// targets are pooled the same way when computed).
        pool: Option<String>,
    },
}

/// The data a run sees.
#[derive(Clone)]
pub struct TrainData {
    /// Training samples: arrays named like the student's inputs, plus labels.
    pub train: Arrays,
    /// Validation samples, same layout.
    pub val: Option<Arrays>,
    /// The labels array's name, when there are labels.
    pub labels: Option<String>,
    /// Teacher outputs on `train`: for logit distillation the first array is matched to the
    /// student's first output; for feature distillation arrays are found by name.
    pub targets: Option<Arrays>,
    /// Teacher outputs on `val`.
    pub val_targets: Option<Arrays>,
}

impl TrainData {
    /// The same data with only the first `n` training samples (validation unchanged).
    pub fn head(&self, n: usize) -> Result<TrainData> {
        Ok(TrainData { train: self.train.head(n)?, targets: self.targets.as_ref().map(|t| t.head(n)).transpose()?, ..self.clone() })
    }
}

/// How long and how fast to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup length as a fraction of all steps.
    pub warmup: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Folder for checkpoints (and the teacher cache), if any.
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (0: at epoch ends only).
    pub checkpoint_every: usize,
    /// Continue from the checkpoint in `checkpoint`.
    pub resume: bool,
    /// JSON-lines log: one object per logged step and per epoch.
    pub log: Option<PathBuf>,
    /// Steps between step records in the log.
    pub log_every: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            batch: 32,
            lr: 1e-4,
            warmup: 0.05,
            seed: 0,
            checkpoint: None,
            checkpoint_every: 0,
            resume: false,
            log: None,
            log_every: 10,
        }
    }
}

/// What a run did. The graph is left holding the best parameters.
#[derive(Debug)]
pub struct Outcome {
    /// Every epoch's summary.
    pub history: Vec<EpochRecord>,
    /// The epoch whose parameters were kept.
    pub best_epoch: usize,
    /// Optimizer steps in all.
    pub steps: usize,
}

/// Loss, and the logits for accuracy, of one batch.
fn batch_loss(
    graph: &TrainableGraph,
    objective: &Objective,
    split: &Arrays,
    targets: Option<&Arrays>,
    labels: Option<&str>,
    rows: &[usize],
) -> Result<(Tensor, Tensor)> {
    let float = graph.dtype();
    let feeds: Vec<(&str, Tensor)> =
        graph.inputs().iter().map(|name| Ok((name.as_str(), split.batch(name, rows, float)?))).collect::<Result<_>>()?;
    let y = labels.map(|l| split.batch(l, rows, float)).transpose()?;
    let student_output = graph.outputs().first().context("the student has no outputs")?.clone();
    let target = |name: &str| -> Result<Tensor> { targets.context("no teacher outputs")?.batch(name, rows, float) };
    match objective {
        Objective::Labels => {
            let z = graph.forward(&feeds, &[&student_output])?.remove(0);
            Ok((loss::cross_entropy(&z, y.as_ref().context("training on labels needs labels")?)?, z))
        }
        Objective::Logits { temperature, alpha } => {
            let z = graph.forward(&feeds, &[&student_output])?.remove(0);
            let zt = target(targets.and_then(|t| t.names().next()).context("no teacher logits")?)?;
            Ok((loss::distillation(&z, &zt, y.as_ref(), *temperature, *alpha)?, z))
        }
        Objective::Feature { kind, student, teacher, pool } => {
            let mut h = graph.forward(&feeds, &[student])?.remove(0);
            if let Some(mask) = pool {
                h = loss::masked_mean(&h, &split.batch(mask, rows, float)?)?;
            }
            Ok((loss::feature(&h, &target(teacher)?, *kind)?, h))
        }
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Mean loss and (with labels) top-1 accuracy over a whole split, without gradients.
pub fn evaluate(
    graph: &TrainableGraph,
    objective: &Objective,
    split: &Arrays,
    targets: Option<&Arrays>,
    labels: Option<&str>,
    batch: usize,
) -> Result<(f64, Option<f64>)> {
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
    let order: Vec<usize> = (0..split.samples()).collect();
    for rows in order.chunks(batch.max(1)) {
        let (loss, out) = batch_loss(graph, objective, split, targets, labels, rows)?;
        loss_sum += scalar(&loss)? * rows.len() as f64;
        if let Some(l) = labels
            && !matches!(objective, Objective::Feature { .. })
        {
            let predicted = out.argmax(candle_core::D::Minus1)?.to_dtype(DType::I64)?;
            let truth = split.batch(l, rows, DType::F32)?.flatten_all()?.to_dtype(DType::I64)?;
            correct += predicted.flatten_all()?.eq(&truth)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()? as usize;
        }
        seen += rows.len();
    }
    let accuracy = labels.filter(|_| !matches!(objective, Objective::Feature { .. })).map(|_| correct as f64 / seen as f64);
    Ok((loss_sum / seen as f64, accuracy))
}

fn log_line(log: &mut Option<std::fs::File>, value: serde_json::Value) -> Result<()> {
    if let Some(f) = log {
        writeln!(f, "{value}")?;
        f.flush()?;
    }
    Ok(())
}

/// Trains `graph` on `data` for `objective`. On return the graph holds the parameters of
/// the best epoch (highest validation accuracy with labels, else lowest validation loss,
/// else lowest training loss).
pub fn fit(graph: &TrainableGraph, objective: &Objective, data: &TrainData, config: &TrainConfig, progress: Progress) -> Result<Outcome> {
    ensure!(config.batch > 0 && config.epochs > 0, "batch and epochs must be at least 1");
    ensure!(config.lr > 0.0 && config.lr.is_finite(), "the learning rate must be positive, not {}", config.lr);
    let labels = data.labels.as_deref();
    if matches!(objective, Objective::Labels) {
        ensure!(labels.is_some(), "training without a teacher needs labels (--labels NAME)");
    }
    if let Objective::Logits { temperature, alpha } = objective {
        ensure!(*temperature > 0.0, "the temperature must be positive, not {temperature}");
        ensure!((0.0..=1.0).contains(alpha), "alpha must lie in [0, 1], not {alpha}");
    }
    let samples = data.train.samples();
    let per_epoch = samples.div_ceil(config.batch);
    let total = per_epoch * config.epochs;
    let warmup = ((total as f64 * config.warmup).round() as usize).max(1);
    let vars = graph.trainable_vars();
    ensure!(!vars.is_empty(), "nothing to train: every parameter is frozen");
    let mut adam = Adam::new(vars, AdamParams::default())?;
    let fingerprint = format!(
        "params={:?} samples={samples} batch={} epochs={} lr={} seed={} objective={objective:?}",
        graph.params().iter().map(|p| p.var.dims().to_vec()).collect::<Vec<_>>(),
        config.batch,
        config.epochs,
        config.lr,
        config.seed
    );
    let mut state = checkpoint::Progress { fingerprint: fingerprint.clone(), ..Default::default() };
    let mut best: Option<Vec<Tensor>> = None;
    if config.resume {
        let dir = config.checkpoint.as_ref().context("--resume needs --checkpoint DIR")?;
        if checkpoint::exists(dir) {
            let (saved, tensors) = checkpoint::load(dir)?;
            if saved.fingerprint != fingerprint {
                bail!("{}: the checkpoint was made with other settings ({}), not ({fingerprint})", dir.display(), saved.fingerprint);
            }
            graph.restore(&tensors.params)?;
            adam.load_state(tensors.moments, saved.step)?;
            best = tensors.best;
            state = saved;
        }
    }
    let mut log = match &config.log {
        Some(path) => Some({
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("{}: cannot open the log", path.display()))?
        }),
        None => None,
    };
    let save = |state: &checkpoint::Progress, adam: &Adam, best: &Option<Vec<Tensor>>| -> Result<()> {
        let Some(dir) = &config.checkpoint else { return Ok(()) };
        let params = graph.params().iter().map(|p| p.var.as_tensor().clone()).collect();
        checkpoint::save(dir, state, &State { params, moments: adam.state(), best: best.clone() })
    };
    while state.epoch < config.epochs {
        let order = epoch_order(samples, config.seed, state.epoch);
        let started = Instant::now();
        let first_batch = state.batch;
        let what = format!("epoch {}/{}", state.epoch + 1, config.epochs);
        for (b, rows) in order.chunks(config.batch).enumerate().skip(state.batch) {
            let lr = learning_rate(state.step, warmup, total, config.lr);
            let (loss, _) = batch_loss(graph, objective, &data.train, data.targets.as_ref(), labels, rows)?;
            let value = scalar(&loss)?;
            ensure!(value.is_finite(), "the loss became {value} at step {}: lower the learning rate", state.step);
            adam.step(&loss.backward()?, lr)?;
            state.step += 1;
            state.batch = b + 1;
            state.epoch_loss_sum += value;
            let rate = (state.batch - first_batch) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            progress(
                &what,
                state.batch,
                per_epoch,
                &format!("loss {:.4} · {:.1} steps/s", state.epoch_loss_sum / state.batch as f64, rate),
            );
            if config.log_every > 0 && state.step.is_multiple_of(config.log_every) {
                log_line(&mut log, serde_json::json!({"step": state.step, "epoch": state.epoch + 1, "loss": value, "lr": lr}))?;
            }
            if config.checkpoint_every > 0 && state.step.is_multiple_of(config.checkpoint_every) && state.batch < per_epoch {
                save(&state, &adam, &best)?;
            }
        }
        let (val_loss, val_accuracy) = match &data.val {
            Some(val) => {
                let (l, a) = evaluate(graph, objective, val, data.val_targets.as_ref(), labels, config.batch.max(64))?;
                (Some(l), a)
            }
            None => (None, None),
        };
        let record = EpochRecord {
            epoch: state.epoch + 1,
            train_loss: state.epoch_loss_sum / per_epoch as f64,
            val_loss,
            val_accuracy,
            steps_per_s: (per_epoch - first_batch) as f64 / started.elapsed().as_secs_f64().max(1e-9),
        };
        // Higher is better: accuracy, else minus a loss.
        let score = record.val_accuracy.or(record.val_loss.map(|l| -l)).unwrap_or(-record.train_loss);
        if state.best.is_none_or(|(_, s)| score > s) {
            state.best = Some((record.epoch, score));
            best = Some(graph.snapshot()?);
        }
        log_line(&mut log, serde_json::to_value(&record)?)?;
        let mut detail = format!("loss {:.4}", record.train_loss);
        if let Some(l) = record.val_loss {
            detail += &format!(" · val loss {l:.4}");
        }
        if let Some(a) = record.val_accuracy {
            detail += &format!(" · val accuracy {a:.4}");
        }
        progress(&format!("{what} done"), 1, 1, &detail);
        state.history.push(record);
        state.epoch += 1;
        state.batch = 0;
        state.epoch_loss_sum = 0.0;
        save(&state, &adam, &best)?;
    }
    if let Some(values) = &best {
        graph.restore(values)?;
    }
    Ok(Outcome { history: state.history, best_epoch: state.best.map_or(0, |(e, _)| e), steps: state.step })
}
