//! `distq distill --teacher T.onnx (--student S.onnx | --derive width=F) --data D.npz -o S.onnx`:
//! distillation of a frozen teacher into a student, the seed's recipe.

use super::say;
use super::train::{TrainFlags, classes, fit_with_progress, print_history, write_trained};
use crate::distill::data::Arrays;
use crate::distill::graph::{Freeze, TrainableGraph};
use crate::distill::loss::FeatureLoss;
use crate::distill::{Objective, Outcome, TrainData, derive, teacher};
use anyhow::{Context, Result, bail, ensure};
use distq_runtime::Model;
use distq_runtime::onnx::OnnxFile;
use prost::Message;
use std::path::{Path, PathBuf};

/// Which loss the student learns from.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LossKind {
    /// Logit distillation: α·KL(teacher ‖ student)·T² + (1−α)·CE(labels).
    Kd,
    /// Hidden-state distillation (`--feature-loss`), for encoders.
    Feature,
}

#[derive(clap::Args, Clone, Debug)]
#[group(id = "distill_args")]
pub struct Args {
    /// The frozen teacher (any fp32 ONNX our runtime runs).
    #[arg(long)]
    pub teacher: PathBuf,
    /// The student to train, starting from its weights.
    #[arg(long, conflicts_with = "derive", required_unless_present = "derive")]
    pub student: Option<PathBuf>,
    /// Derive the student from the teacher: `layers=K` keeps K of a transformer's layers
    /// (evenly spaced, first and last included, DistilBERT-style); `width=F` keeps a
    /// fraction F of every hidden layer's channels (MLPs, CNNs), initialized from the
    /// teacher's strongest channels.
    #[arg(long)]
    pub derive: Option<String>,
    /// Where to write the trained student.
    #[arg(long, short)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "kd")]
    pub loss: LossKind,
    /// Softmax temperature T of the distillation term (inference uses 1).
    #[arg(long, default_value_t = 4.0)]
    pub temperature: f64,
    /// Weight α of the distillation term; 1 − α goes to the labels (α = 1 without labels).
    #[arg(long, default_value_t = 0.7)]
    pub alpha: f64,
    /// Feature distillation: how hidden states are compared.
    #[arg(long, value_enum, default_value = "cosine")]
    pub feature_loss: FeatureLoss,
    /// Feature distillation: the student's value (default: its first output).
    #[arg(long)]
    pub student_feature: Option<String>,
    /// Feature distillation: the teacher's value (default: its first output).
    #[arg(long)]
    pub teacher_feature: Option<String>,
    /// Folder for the cached teacher outputs (default: the checkpoint folder, else the
    /// system temp folder). Entries are keyed by the teacher's and the data's bytes.
    #[arg(long)]
    pub teacher_cache: Option<PathBuf>,
    /// Feature distillation: mean-pool both values over the tokens this input marks
    /// (e.g. attention_mask: sentence embeddings) before comparing.
    #[arg(long)]
    pub feature_pool: Option<String>,
    #[command(flatten)]
    pub train: TrainFlags,
}

/// The student model as named by `--student` or made by `--derive`.
fn student(args: &Args, teacher: &OnnxFile) -> Result<OnnxFile> {
    if let Some(path) = &args.student {
        return OnnxFile::open(path).with_context(|| format!("student {}: cannot load", path.display()));
    }
    let spec = args.derive.as_deref().context("give --student or --derive")?;
    let (key, value) = spec.split_once('=').with_context(|| format!("--derive {spec}: expected width=F or layers=K"))?;
    let proto = match key {
        "width" => {
            let factor: f64 = value.parse().with_context(|| format!("--derive {spec}: '{value}' is not a number"))?;
            derive::narrow_width(teacher, factor)?
        }
        "layers" => {
            let k: usize = value.parse().with_context(|| format!("--derive {spec}: '{value}' is not a layer count"))?;
            derive::keep_layers(teacher, k)?
        }
        other => bail!("--derive {spec}: unknown kind '{other}' (expected width=F or layers=K)"),
    };
    Ok(OnnxFile::decode(
        proto.encode_to_vec().into(),
        teacher.base_dir.clone(),
        format!("student derived from {} ({spec})", teacher.origin),
    )?)
}

/// Teacher outputs for `split` (cached in the checkpoint folder, else the temp folder).
fn targets(args: &Args, split: &Arrays, path: &Path, outputs: &[String], pool: Option<&str>) -> Result<Arrays> {
    let dir = args
        .teacher_cache
        .clone()
        .or_else(|| args.train.checkpoint.clone())
        .unwrap_or_else(|| std::env::temp_dir().join("distq-teacher-cache"));
    let cache = teacher::cache_path(&dir, &args.teacher, path, outputs, pool)?;
    let mut bar = super::progress::progress_printer(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    teacher::outputs(&args.teacher, split, outputs, pool, &cache, &mut |what, done, total, detail| {
        eprint!("{}", bar(what, done, total, detail))
    })
}

/// A distillation ready to run: the student, its loss and its data (teacher outputs
/// computed or read from the cache).
pub struct Setup {
    /// The student's file (its proto is what the trained weights are written into).
    pub student: OnnxFile,
    /// The loss.
    pub objective: Objective,
    /// Samples, labels and teacher outputs.
    pub data: TrainData,
}

impl Setup {
    /// The student as a trainable graph (fresh from its file).
    pub fn graph(&self, freeze: &Freeze) -> Result<TrainableGraph> {
        TrainableGraph::new(&self.student, candle_core::DType::F32, freeze)
    }
}

/// Loads the teacher and the student, reads the data and the teacher's outputs on it.
pub fn setup(args: &Args) -> Result<Setup> {
    let teacher_file = OnnxFile::open(&args.teacher).with_context(|| format!("teacher {}: cannot load", args.teacher.display()))?;
    let teacher_model = Model::load(&args.teacher).with_context(|| format!("teacher {}", args.teacher.display()))?;
    let student = student(args, &teacher_file)?;
    let student_outputs: Vec<String> = student.proto.graph.iter().flat_map(|g| &g.output).filter_map(|o| o.name.clone()).collect();
    let (train, val) = args.train.arrays(classes(&student))?;
    let teacher_first = teacher_model.outputs().first().context("the teacher has no outputs")?.name.clone();
    let objective = match args.loss {
        LossKind::Kd => {
            ensure!(
                classes(&teacher_file) == classes(&student),
                "the teacher has {:?} classes and the student {:?}",
                classes(&teacher_file),
                classes(&student)
            );
            // Without labels the distillation term is the whole loss.
            let alpha = if args.train.labels.is_some() { args.alpha } else { 1.0 };
            Objective::Logits { temperature: args.temperature, alpha }
        }
        LossKind::Feature => Objective::Feature {
            kind: args.feature_loss,
            student: args.student_feature.clone().or_else(|| student_outputs.first().cloned()).context("the student has no outputs")?,
            teacher: args.teacher_feature.clone().unwrap_or_else(|| teacher_first.clone()),
            pool: args.feature_pool.clone(),
        },
    };
    let wanted = match &objective {
        Objective::Feature { teacher, .. } => vec![teacher.clone()],
        _ => vec![teacher_first],
    };
    let pool = match &objective {
        Objective::Feature { pool, .. } => pool.as_deref(),
        _ => None,
    };
    let train_targets = targets(args, &train, &args.train.data, &wanted, pool)?;
    let val_targets = match (&val, &args.train.val) {
        (Some(v), Some(path)) => Some(targets(args, v, path, &wanted, pool)?),
        _ => None,
    };
    let data = TrainData { train, val, labels: args.train.labels.clone(), targets: Some(train_targets), val_targets };
    Ok(Setup { student, objective, data })
}

/// Distills and writes the student: the library form of `distq distill`.
pub fn distill(args: &Args) -> Result<Outcome> {
    let setup = setup(args)?;
    let graph = setup.graph(&Freeze::parse(args.train.freeze.as_deref().unwrap_or("")))?;
    let outcome = fit_with_progress(&graph, &setup.objective, &setup.data, &args.train.config())?;
    write_trained(&graph, setup.student.proto.clone(), &args.output)?;
    Ok(outcome)
}

pub fn run(args: Args) -> Result<()> {
    let outcome = distill(&args)?;
    print_history(&outcome.history, outcome.best_epoch);
    say!("wrote {} ({} steps)", args.output.display(), outcome.steps);
    Ok(())
}
