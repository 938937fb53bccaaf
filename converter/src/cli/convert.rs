//! `distq convert`: distill → mixed-precision search → quantization-aware training → write.
//!
//! The student is distilled in fp32, the quantizer measures each layer's sensitivity and
//! picks its precisions, then the student is fine-tuned with those weights fake-quantized
//! (straight-through estimator) on the same distillation loss, and the result is written
//! at exactly the precisions the search chose. The table compares the fp32 student, plain
//! post-training quantization and the quantization-aware result on the validation samples.

use super::distill::{self, Setup, setup};
use super::quantize::QuantizeFlags;
use super::say;
use super::train::{fit_with_progress, write_trained};
use crate::distill::data::take_rows;
use crate::distill::graph::Freeze;
use crate::distill::loss::masked_mean;
use crate::distill::ops::{from_runtime, to_runtime_f32};
use crate::distill::qat::FakeQuant;
use crate::distill::{Objective, TrainConfig};
use crate::quantize::metric::{Dataset, argmax, cosine};
use crate::quantize::weights::Precision;
use crate::quantize::{prepare, qdq, writer};
use anyhow::{Context, Result};
use candle_core::DType;
use distq_runtime::onnx::OnnxFile;
use distq_runtime::{Model, Session};
use prost::Message;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    distill: distill::Args,
    #[command(flatten)]
    quantize: QuantizeFlags,
    /// Calibration samples for the quantizer (default: the validation set, else the
    /// training data).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Epochs of quantization-aware training (0: post-training quantization only).
    #[arg(long, default_value_t = 1)]
    qat_epochs: usize,
    /// Peak learning rate of quantization-aware training (default: a tenth of --lr).
    #[arg(long)]
    qat_lr: Option<f64>,
    /// Train quantization-aware on the first N training samples only (default: all).
    #[arg(long)]
    qat_samples: Option<usize>,
}

/// How well a written model does on the validation samples: top-1 accuracy against the
/// labels when there are labels, else agreement with the teacher (top-1 for logits, mean
/// cosine per sample for features).
fn score(model: &Path, setup: &Setup) -> Result<Option<(String, f64)>> {
    let (Some(val), Some(targets)) = (&setup.data.val, &setup.data.val_targets) else { return Ok(None) };
    let session = Session::load(model).with_context(|| format!("{}: cannot load", model.display()))?;
    let inputs: Vec<String> = session.model().inputs().iter().map(|i| i.name.clone()).collect();
    let output = session.model().outputs().first().context("no outputs")?.name.clone();
    let (mut total, n) = (0.0, val.samples());
    for start in (0..n).step_by(64) {
        let rows: Vec<usize> = (start..(start + 64).min(n)).collect();
        let result = session.run(val.rows(&inputs, &rows)?)?;
        let got = &result.iter().find(|(name, _)| *name == output).context("output missing")?.1;
        // Sentence features are compared pooled, as they were trained.
        let got = match &setup.objective {
            Objective::Feature { pool: Some(mask), .. } => {
                let hidden = from_runtime(got, DType::F32)?;
                to_runtime_f32(&masked_mean(&hidden, &val.batch(mask, &rows, DType::F32)?)?)?.to_f32s()?
            }
            _ => got.to_f32s()?,
        };
        let per = got.len() / rows.len();
        let teacher = take_rows(targets.get(targets.names().next().context("no targets")?)?, &rows)?.to_f32s()?;
        for (r, row) in got.chunks(per).enumerate() {
            total += match (&setup.objective, &setup.data.labels) {
                (Objective::Feature { .. }, _) => cosine(row, &teacher[r * per..(r + 1) * per]),
                (_, Some(labels)) => f64::from(u8::from(argmax(row) as i64 == take_rows(val.get(labels)?, &[rows[r]])?.to_i64s()?[0])),
                (_, None) => f64::from(u8::from(argmax(row) == argmax(&teacher[r * per..(r + 1) * per]))),
            };
        }
    }
    let name = match (&setup.objective, &setup.data.labels) {
        (Objective::Feature { .. }, _) => "cosine to teacher",
        (_, Some(_)) => "accuracy",
        (_, None) => "top-1 agreement with teacher",
    };
    Ok(Some((name.to_string(), total / n as f64)))
}

fn size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path).with_context(|| format!("{}: cannot stat", path.display()))?.len())
}

pub fn run(args: Args) -> Result<()> {
    let config = args.quantize.config(args.distill.train.batch)?;
    let scratch = tempfile::tempdir()?;
    let work = args.distill.train.checkpoint.clone().unwrap_or_else(|| scratch.path().to_path_buf());
    std::fs::create_dir_all(&work).with_context(|| format!("{}: cannot create", work.display()))?;

    // 1. Distill in fp32.
    let student_fp32 = work.join("student_fp32.onnx");
    let setup = setup(&args.distill)?;
    let freeze = Freeze::parse(args.distill.train.freeze.as_deref().unwrap_or(""));
    let graph = setup.graph(&freeze)?;
    let mut train_config = args.distill.train.config();
    train_config.checkpoint = Some(work.join("distill"));
    // `--epochs 0`: the student is distilled already (quantize and fine-tune it only).
    if train_config.epochs > 0 {
        let history = fit_with_progress(&graph, &setup.objective, &setup.data, &train_config)?;
        super::train::print_history(&history.history, history.best_epoch);
    }
    write_trained(&graph, setup.student.proto.clone(), &student_fp32)?;

    // 2. Search precisions (post-training quantization).
    let model = Model::load(&student_fp32)?;
    let calib_path = args.calib.clone().or(args.distill.train.val.clone()).unwrap_or(args.distill.train.data.clone());
    // The final checks run on calibration samples the precisions were not fitted on.
    let (calib, check) = Dataset::load(&calib_path, &model)?.hold_out()?;
    say!(
        "quantization: the last {} of the {} calibration samples are held out for the final check",
        check.samples(),
        calib.samples() + check.samples()
    );
    let ptq = args.quantize.quantize(&model, &config, &calib, &check)?;
    let ptq_path = work.join("student_ptq.onnx");
    writer::write_model(&ptq_path, &ptq.model, false)?;
    let mut rows = vec![("student fp32", student_fp32.clone()), ("post-training quantization", ptq_path.clone())];

    // 3. Quantization-aware training at those precisions, on the prepared graph (batch
    //    norms folded): the form the quantizer lowers, so names and values line up.
    let final_model = if args.qat_epochs > 0 {
        let prepared = prepare::prepare(&model.file().proto).unwrap_or_else(|| model.file().proto.clone());
        let prepared_model = Model::from_bytes(prepared.encode_to_vec())?;
        let layouts: Vec<(String, crate::quantize::weights::Layout)> =
            qdq::quantizable_layers(&prepared_model)?.into_iter().map(|l| (l.name, l.layout)).collect();
        let fake: Vec<(String, FakeQuant)> = ptq
            .precisions
            .iter()
            .filter(|(_, p)| *p != Precision::F32)
            .map(|(name, precision)| {
                let layout =
                    layouts.iter().find(|(n, _)| n == name).map(|(_, l)| *l).with_context(|| format!("layer '{name}' not found"))?;
                Ok((name.clone(), FakeQuant { precision: *precision, layout }))
            })
            .collect::<Result<_>>()?;
        let file = OnnxFile::decode(prepared.encode_to_vec().into(), None, "prepared student".into())?;
        let mut qat_graph = crate::distill::graph::TrainableGraph::new(&file, candle_core::DType::F32, &freeze)?;
        qat_graph.fake_quantize(fake)?;
        let qat_config = TrainConfig {
            epochs: args.qat_epochs,
            lr: args.qat_lr.unwrap_or(args.distill.train.lr / 10.0),
            checkpoint: Some(work.join("qat")),
            log: Some(work.join("qat").join("log.jsonl")),
            ..train_config
        };
        std::fs::create_dir_all(work.join("qat"))?;
        say!("quantization-aware training at the chosen precisions");
        let qat_data = match args.qat_samples {
            Some(n) => setup.data.head(n)?,
            None => setup.data.clone(),
        };
        let qat = fit_with_progress(&qat_graph, &setup.objective, &qat_data, &qat_config)?;
        super::train::print_history(&qat.history, qat.best_epoch);
        let qat_fp32 = work.join("student_qat_fp32.onnx");
        write_trained(&qat_graph, prepared, &qat_fp32)?;
        let qat_model = Model::load(&qat_fp32)?;
        let fixed = crate::quantize::Config { fixed: Some(ptq.precisions.clone()), ..config };
        let (calib, check) = Dataset::load(&calib_path, &qat_model)?.hold_out()?;
        args.quantize.quantize(&qat_model, &fixed, &calib, &check)?
    } else {
        ptq
    };
    let report = args.quantize.write(final_model, &args.distill.output)?;
    if args.qat_epochs > 0 {
        rows.push(("quantization-aware (written)", args.distill.output.clone()));
    }
    say!("");
    for (name, path) in rows {
        let measured = score(&path, &setup)?.map_or(String::new(), |(metric, v)| format!("  {metric} {v:.4}"));
        say!("{name:<30} {:>10.1} KB{measured}", size(&path)? as f64 / 1e3);
    }
    say!("written: {:.1} % of the fp32 student", 100.0 * report.size_bytes as f64 / size(&student_fp32)? as f64);
    Ok(())
}
