//! `distq quantize MODEL -o OUT --calib CALIB.npz [...]`: weight quantization to QDQ ONNX,
//! uniform or mixed precision from measured sensitivity.

use super::say;
use crate::fsutil::write_atomically;
use crate::quantize::gptq::Rounding;
use crate::quantize::metric::{Dataset, Metric};
use crate::quantize::observe::Observer;
use crate::quantize::weights::Precision;
use crate::quantize::{Config, quantize, writer};
use anyhow::{Context, Result, ensure};
use distq_runtime::Model;
use std::io::Write;
use std::path::PathBuf;

/// Precision choices on the command line.
#[derive(Clone, Copy, clap::ValueEnum)]
enum PrecisionArg {
    /// Per layer, from measured sensitivity (fp16 / int8 / int4).
    Mixed,
    /// int8 per channel everywhere.
    Int8,
    /// int4 blocks everywhere (int8 where a weight is shorter than a block).
    Int4,
    /// float16 everywhere.
    Fp16,
}

#[derive(clap::Args)]
pub struct Args {
    /// The fp32 ONNX model.
    model: PathBuf,
    /// Where to write the quantized model.
    #[arg(long, short)]
    output: PathBuf,
    /// Calibration samples: .npz with arrays named like the model inputs, first axis = samples.
    #[arg(long)]
    calib: PathBuf,
    /// Evaluation samples (same layout); default: the calibration set.
    #[arg(long)]
    eval: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "mixed")]
    precision: PrecisionArg,
    /// How outputs are compared with fp32.
    #[arg(long, value_enum, default_value = "cosine")]
    metric: Metric,
    /// Largest output size, MB (10^6 bytes).
    #[arg(long)]
    max_size_mb: Option<f64>,
    /// Smallest metric value accepted (largest for kl and mse); mixed precision defaults to
    /// 0.99 (cosine, top1) or 0.01 (kl, mse).
    #[arg(long)]
    min_metric: Option<f64>,
    /// int4 block size (32, 64 or 128).
    #[arg(long, default_value_t = 32)]
    block: usize,
    /// Put large initializers in OUT.data at 64-byte-aligned offsets.
    #[arg(long)]
    external_data: bool,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the SVG plot here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Calibration samples per sensitivity run.
    #[arg(long, default_value_t = 32)]
    sensitivity_samples: usize,
    /// Samples per model run.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Leave biases as they are (by default each lowered Conv / MatMul + Add gets its mean
    /// output shift, measured on the calibration samples, corrected in its bias).
    #[arg(long)]
    no_bias_correction: bool,
    /// Quantize int8 layers' inputs statically (uint8 per tensor) with ranges from this
    /// observer; without it inputs stay float and are quantized per row at run time.
    #[arg(long, value_enum)]
    observer: Option<Observer>,
    /// How int4 weights are rounded: GPTQ compensates each MatMul / 1×1 Conv weight's
    /// rounding error through its inputs' correlations (from the calibration samples).
    #[arg(long, value_enum, default_value = "gptq")]
    rounding: Rounding,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(matches!(args.block, 32 | 64 | 128), "--block {}: int4 blocks are 32, 64 or 128 values", args.block);
    if let Some(mb) = args.max_size_mb {
        ensure!(mb > 0.0 && mb.is_finite(), "--max-size-mb {mb}: give a positive size");
    }
    ensure!(args.sensitivity_samples > 0 && args.batch > 0, "--sensitivity-samples and --batch must be positive");
    let model = Model::load(&args.model).with_context(|| format!("{}: cannot load", args.model.display()))?;
    let calib = Dataset::load(&args.calib, &model)?;
    let eval = match &args.eval {
        Some(path) => Dataset::load(path, &model)?,
        None => calib.head(calib.samples())?,
    };
    let uniform = match args.precision {
        PrecisionArg::Mixed => None,
        PrecisionArg::Int8 => Some(Precision::Int8),
        PrecisionArg::Int4 => Some(Precision::Int4 { block: args.block }),
        PrecisionArg::Fp16 => Some(Precision::F16),
    };
    let config = Config {
        uniform,
        block: args.block,
        metric: args.metric,
        max_size: args.max_size_mb.map(|mb| (mb * 1e6) as u64),
        min_metric: args.min_metric,
        sensitivity_samples: args.sensitivity_samples,
        batch: args.batch,
        bias_correction: !args.no_bias_correction,
        observer: args.observer,
        rounding: args.rounding,
    };
    let mut last = String::new();
    let mut progress = |what: &str, done: usize, total: usize| {
        let line = format!("{what} {done}/{total}");
        if line != last {
            eprint!("\r{line}   ");
            last = line;
        }
        if done == total {
            eprintln!();
        }
    };
    let outcome = quantize(&model, &config, &calib, &eval, &mut progress)?;
    let mut report = outcome.report;
    report.size_bytes = writer::write_model(&args.output, &outcome.model, args.external_data)?;
    say!("{}", report.table().trim_end());
    say!("wrote {}", args.output.display());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        write_atomically(path, |f| Ok(f.write_all(json.as_bytes())?))?;
    }
    if let Some(path) = &args.plot {
        write_atomically(path, |f| Ok(f.write_all(report.svg().as_bytes())?))?;
    }
    Ok(())
}
