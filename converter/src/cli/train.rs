//! `distq train MODEL.onnx --data D.npz --labels NAME -o OUT.onnx`: plain cross-entropy
//! training of an ONNX model's weights (the seed's step 1, how the demo makes its teacher),
//! and the training flags `distill` and `convert` share.

use super::progress::progress_printer;
use super::say;
use crate::distill::checkpoint::EpochRecord;
use crate::distill::data::{Arrays, check_labels};
use crate::distill::graph::{Freeze, TrainableGraph};
use crate::distill::{Objective, Outcome, TrainConfig, TrainData, fit};
use crate::quantize::writer::write_model;
use anyhow::{Context, Result};
use distq_runtime::onnx::OnnxFile;
use distq_runtime::onnx::proto::ModelProto;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Data and optimization flags shared by `train`, `distill` and `convert`.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainFlags {
    /// Training samples: .npz with arrays named like the model's inputs (first axis =
    /// samples), plus the labels array when there are labels.
    #[arg(long)]
    pub data: PathBuf,
    /// Name of the integer class-labels array in the data.
    #[arg(long)]
    pub labels: Option<String>,
    /// Validation samples (same layout), evaluated after every epoch; the best epoch's
    /// weights are the ones written.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Peak learning rate (Adam), reached after a linear warmup, then cosine decay.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Samples per step.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Warmup as a fraction of all steps.
    #[arg(long, default_value_t = 0.05)]
    pub warmup: f64,
    /// Keep parameters whose names contain any of these comma-separated substrings frozen
    /// (for example embedding tables).
    #[arg(long)]
    pub freeze: Option<String>,
    /// Folder for checkpoints, the JSON log and the teacher-output cache.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Steps between checkpoints (0: at the end of each epoch only).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_every: usize,
    /// Continue an interrupted run from the checkpoint folder.
    #[arg(long)]
    pub resume: bool,
    /// Seed of the batch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl TrainFlags {
    /// The training configuration these flags ask for; the log goes to `<checkpoint>/log.jsonl`.
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            warmup: self.warmup,
            seed: self.seed,
            checkpoint: self.checkpoint.clone(),
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            log: self.checkpoint.as_ref().map(|d| d.join("log.jsonl")),
            log_every: 10,
        }
    }

    /// The training and validation arrays, labels checked against `classes`.
    pub fn arrays(&self, classes: Option<usize>) -> Result<(Arrays, Option<Arrays>)> {
        let train = Arrays::read(&self.data)?;
        let val = self.val.as_deref().map(Arrays::read).transpose()?;
        if let (Some(labels), Some(classes)) = (&self.labels, classes) {
            for split in std::iter::once(&train).chain(val.as_ref()) {
                check_labels(split.get(labels)?, classes, split.origin())?;
            }
        }
        Ok((train, val))
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model to train (its initial weights are the starting point).
    model: PathBuf,
    /// Where to write the trained model.
    #[arg(long, short)]
    output: PathBuf,
    #[command(flatten)]
    train: TrainFlags,
}

/// A model's class count: the last dim of its first output, when fixed.
pub fn classes(file: &OnnxFile) -> Option<usize> {
    use distq_runtime::onnx::proto::{tensor_shape_proto::dimension::Value, type_proto};
    let output = file.proto.graph.as_ref()?.output.first()?;
    let Some(type_proto::Value::TensorType(t)) = output.r#type.as_ref()?.value.as_ref() else { return None };
    match t.shape.as_ref()?.dim.last()?.value {
        Some(Value::DimValue(d)) if d > 0 => Some(d as usize),
        _ => None,
    }
}

/// Runs [`fit`] with a progress bar on stderr and prints one line per epoch.
pub fn fit_with_progress(graph: &TrainableGraph, objective: &Objective, data: &TrainData, config: &TrainConfig) -> Result<Outcome> {
    let mut bar = progress_printer(std::io::stderr().is_terminal());
    fit(graph, objective, data, config, &mut |what, done, total, detail| eprint!("{}", bar(what, done, total, detail)))
}

/// Writes `graph`'s trained weights into `proto` and the result to `path` atomically.
pub fn write_trained(graph: &TrainableGraph, mut proto: ModelProto, path: &Path) -> Result<u64> {
    graph.write_into(&mut proto)?;
    write_model(path, &proto, false).with_context(|| format!("{}: cannot write", path.display()))
}

/// One line per epoch.
pub fn print_history(history: &[EpochRecord], best_epoch: usize) {
    for r in history {
        let val = match (r.val_loss, r.val_accuracy) {
            (_, Some(a)) => format!("val accuracy {a:.4}"),
            (Some(l), None) => format!("val loss {l:.4}"),
            _ => String::new(),
        };
        let mark = if r.epoch == best_epoch { " (best, kept)" } else { "" };
        say!("epoch {:>3}: train loss {:.4} {val} · {:.1} steps/s{mark}", r.epoch, r.train_loss, r.steps_per_s);
    }
}

/// Trains `model` on labels and writes the result: the library form of `distq train`.
pub fn train(model: &Path, output: &Path, flags: &TrainFlags) -> Result<Outcome> {
    let file = OnnxFile::open(model).with_context(|| format!("{}: cannot load", model.display()))?;
    let graph = TrainableGraph::new(&file, candle_core::DType::F32, &Freeze::parse(flags.freeze.as_deref().unwrap_or("")))?;
    let (train, val) = flags.arrays(classes(&file))?;
    let data = TrainData { train, val, labels: flags.labels.clone(), targets: None, val_targets: None };
    let outcome = fit_with_progress(&graph, &Objective::Labels, &data, &flags.config())?;
    write_trained(&graph, file.proto.clone(), output)?;
    Ok(outcome)
}

pub fn run(args: Args) -> Result<()> {
    let outcome = train(&args.model, &args.output, &args.train)?;
    print_history(&outcome.history, outcome.best_epoch);
    say!("wrote {} ({} steps)", args.output.display(), outcome.steps);
    Ok(())
}
