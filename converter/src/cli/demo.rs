//! `distq demo`: the whole pipeline on the bundled Fashion-MNIST subset and CNN teacher.
//!
//! A student a quarter of the teacher's width is derived from it and distilled (the seed's
//! recipe), the same student from the same start is trained on labels alone (the honest
//! baseline: what the teacher adds), the distilled student is quantized to mixed precision,
//! and all of them run in our runtime on the held-out test images. One table: test accuracy
//! against the true labels, size on disk, latency and energy per image.

use super::distill::{self, LossKind};
use super::say;
use super::train::{self, TrainFlags};
use crate::distill::data::{Arrays, take_rows};
use crate::distill::derive::narrow_width;
use crate::distill::loss::FeatureLoss;
use crate::distill::zoo::{CnnWidths, image_cnn};
use crate::models::workspace_root;
use crate::quantize::metric::{Dataset, Metric, argmax};
use crate::quantize::{Config, quantize, writer};
use anyhow::{Context, Result, ensure};
use distq_runtime::bench::{BenchOptions, EnergySource};
use distq_runtime::onnx::OnnxFile;
use distq_runtime::{Model, Session};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The teacher's widths (`--retrain-teacher`).
const TEACHER: CnnWidths = CnnWidths { conv1: 32, conv2: 64, hidden: 128 };

#[derive(clap::Args)]
pub struct Args {
    /// Folder with fashion_{train,val,test}.npz and teacher.onnx.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where the students are written (default: a temporary folder, removed afterwards).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Student width as a fraction of the teacher's.
    #[arg(long, default_value_t = 0.25)]
    width: f64,
    /// Epochs of student training (with and without the teacher).
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Distillation temperature T.
    #[arg(long, default_value_t = 4.0)]
    temperature: f64,
    /// Weight α of the distillation term.
    #[arg(long, default_value_t = 0.7)]
    alpha: f64,
    /// Train the teacher again from a fresh initialization and overwrite teacher.onnx.
    #[arg(long)]
    retrain_teacher: bool,
    /// The teacher's training data (default: the bundled training subset). The bundled
    /// teacher was trained on the full 60000-image training split, written by
    /// `tools/make_fashion_mnist.py`.
    #[arg(long)]
    teacher_data: Option<PathBuf>,
    /// Epochs of teacher training.
    #[arg(long, default_value_t = 12)]
    teacher_epochs: usize,
    /// Seed of initialization and batch order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// One row of the table.
struct Row {
    name: &'static str,
    accuracy: f64,
    bytes: u64,
    p50_ms: f64,
    joules: f64,
    energy_method: &'static str,
}

fn flags(dir: &Path, epochs: usize, lr: f64, seed: u64) -> TrainFlags {
    TrainFlags {
        data: dir.join("fashion_train.npz"),
        labels: Some("label".into()),
        val: Some(dir.join("fashion_val.npz")),
        lr,
        epochs,
        batch: 64,
        warmup: 0.05,
        freeze: None,
        checkpoint: None,
        checkpoint_every: 0,
        resume: false,
        seed,
    }
}

/// Test accuracy, size, latency and energy per image of `path` in our runtime.
fn measure(name: &'static str, path: &Path, test: &Arrays) -> Result<Row> {
    let model = Model::load(path).with_context(|| format!("{}: cannot load", path.display()))?;
    let session = Session::new(model);
    // The table promises one thread: a batch of one is too small to split anyway.
    session.set_threads(1);
    let (mut correct, n) = (0usize, test.samples());
    for start in (0..n).step_by(250) {
        let rows: Vec<usize> = (start..(start + 250).min(n)).collect();
        let out = session.run(test.rows(&["image".to_string()], &rows)?)?.remove(0).1;
        let logits = out.to_f32s()?;
        let labels = take_rows(test.get("label")?, &rows)?.to_i64s()?;
        for (row, &label) in logits.chunks(10).zip(&labels) {
            correct += usize::from(argmax(row) as i64 == label);
        }
    }
    let one = test.rows(&["image".to_string()], &[0])?;
    let options = BenchOptions { iters: 200, warmup: 20, energy: EnergySource::Auto, ..Default::default() };
    let report = session.benchmark(one, &options)?;
    let bytes = std::fs::metadata(path)?.len();
    Ok(Row {
        name,
        accuracy: correct as f64 / n as f64,
        bytes,
        p50_ms: report.latency.p50,
        joules: report.energy.joules_per_inference,
        energy_method: report.energy.method.name(),
    })
}

fn retrain_teacher(dir: &Path, args: &Args) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let init = scratch.path().join("teacher_init.onnx");
    writer::write_model(&init, &image_cnn(TEACHER, args.seed)?, false)?;
    let mut teacher_flags = flags(dir, args.teacher_epochs, 1e-3, args.seed);
    if let Some(data) = &args.teacher_data {
        teacher_flags.data = data.clone();
    }
    let outcome = train::train(&init, &dir.join("teacher.onnx"), &teacher_flags)?;
    train::print_history(&outcome.history, outcome.best_epoch);
    Ok(())
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let dir = args.data_dir.clone().unwrap_or_else(|| workspace_root().join("models/fashion"));
    if args.retrain_teacher {
        retrain_teacher(&dir, &args)?;
    }
    let teacher = dir.join("teacher.onnx");
    ensure!(teacher.is_file(), "{}: no teacher; run `distq demo --retrain-teacher` to train one", teacher.display());
    let scratch = tempfile::tempdir()?;
    let work = args.work_dir.clone().unwrap_or_else(|| scratch.path().to_path_buf());
    std::fs::create_dir_all(&work).with_context(|| format!("{}: cannot create", work.display()))?;

    // One start for both students: the teacher's strongest channels.
    let init = work.join("student_init.onnx");
    writer::write_model(&init, &narrow_width(&OnnxFile::open(&teacher)?, args.width)?, false)?;
    let student_flags = flags(&dir, args.epochs, 2e-3, args.seed);
    say!("distilling a {}-width student from {} ({} epochs)", args.width, teacher.display(), args.epochs);
    let distilled = work.join("student_kd.onnx");
    distill::distill(&distill::Args {
        teacher: teacher.clone(),
        student: Some(init.clone()),
        derive: None,
        output: distilled.clone(),
        loss: LossKind::Kd,
        temperature: args.temperature,
        alpha: args.alpha,
        feature_loss: FeatureLoss::Cosine,
        student_feature: None,
        teacher_feature: None,
        feature_pool: None,
        teacher_cache: None,
        train: student_flags.clone(),
    })?;
    say!("training the same student without a teacher");
    let baseline = work.join("student_ce.onnx");
    train::train(&init, &baseline, &student_flags)?;

    say!("quantizing the distilled student to mixed precision");
    let model = Model::load(&distilled)?;
    let calib = Dataset::load(&dir.join("fashion_val.npz"), &model)?;
    let config = Config {
        uniform: None,
        block: 32,
        metric: Metric::Top1,
        max_size: None,
        min_metric: Some(0.99),
        max_latency_ms: None,
        min_speedup: None,
        sensitivity_samples: 256,
        batch: 256,
        bias_correction: true,
        observer: None,
        rounding: crate::quantize::gptq::Rounding::Nearest,
        compact_names: true,
        fixed: None,
    };
    let outcome = quantize(&model, &config, &calib, &calib, &mut |_, _, _| {})?;
    let mixed = work.join("student_mixed.onnx");
    writer::write_model(&mixed, &outcome.model, false)?;

    let test = Arrays::read(&dir.join("fashion_test.npz"))?;
    let rows = [
        measure("teacher fp32", &teacher, &test)?,
        measure("student fp32, distilled", &distilled, &test)?,
        measure("student mixed, distilled", &mixed, &test)?,
        measure("student fp32, no teacher", &baseline, &test)?,
    ];
    say!("");
    say!("Fashion-MNIST, {} test images (true labels); latency and energy per image, batch 1, 1 thread", test.samples());
    say!("{:<28} {:>9} {:>11} {:>10} {:>12}", "model", "accuracy", "size", "p50 ms", "energy µJ");
    for r in &rows {
        say!(
            "{:<28} {:>9.4} {:>8.1} KB {:>10.3} {:>9.2} ({})",
            r.name,
            r.accuracy,
            r.bytes as f64 / 1e3,
            r.p50_ms,
            r.joules * 1e6,
            r.energy_method
        );
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for layer in &outcome.report.layers {
        match counts.iter_mut().find(|(p, _)| *p == layer.precision) {
            Some((_, n)) => *n += 1,
            None => counts.push((layer.precision.clone(), 1)),
        }
    }
    let counts: Vec<String> = counts.iter().map(|(p, n)| format!("{n} {p}")).collect();
    say!("mixed precision (top-1 agreement with fp32 ≥ 0.99 on the validation images): layers {}", counts.join(", "));
    say!("demo took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
