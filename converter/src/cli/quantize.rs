//! `distq quantize MODEL -o OUT --calib CALIB.npz [...]`: weight quantization to QDQ ONNX,
//! uniform or mixed precision from measured sensitivity.

use super::progress::progress_printer;
use super::say;
use crate::quantize::gptq::Rounding;
use crate::quantize::metric::{Dataset, Metric};
use crate::quantize::observe::Observer;
use crate::quantize::report::Report;
use crate::quantize::weights::Precision;
use crate::quantize::{Config, Outcome, quantize, writer};
use anyhow::{Context, Result, ensure};
use distq_io::atomic_file::write_text_atomically;
use distq_runtime::Model;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Precision choices on the command line.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
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

/// Quantization flags shared by `quantize` and `convert`.
#[derive(clap::Args, Clone, Debug)]
pub struct QuantizeFlags {
    #[arg(long, value_enum, default_value = "mixed")]
    precision: PrecisionArg,
    /// How outputs are compared with fp32.
    #[arg(long, value_enum, default_value = "cosine")]
    metric: Metric,
    /// Largest output size, MB (10^6 bytes).
    #[arg(long)]
    max_size_mb: Option<f64>,
    /// Smallest metric value accepted (largest for kl and mse). Mixed precision without
    /// --max-size-mb defaults to 0.99 (cosine, top1; kl and mse need this flag or a size);
    /// with --max-size-mb and no floor, the pick is the most accurate one within the size.
    #[arg(long)]
    min_metric: Option<f64>,
    /// Largest time per sample on this machine, ms, as predicted from each MatMul layer's
    /// time measured here at each precision (see the report's `ms`).
    #[arg(long)]
    max_latency_ms: Option<f64>,
    /// Smallest speed-up over fp32 on this machine, predicted the same way; mixed precision
    /// without --max-latency-ms or this asks for 1 (never slower than fp32).
    #[arg(long)]
    min_speedup: Option<f64>,
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
    /// Leave biases as they are (by default each lowered Conv / MatMul + Add gets its mean
    /// output shift, measured on the calibration samples, corrected in its bias).
    #[arg(long)]
    no_bias_correction: bool,
    /// Quantize int8 layers' inputs statically (uint8 per tensor) with ranges from this
    /// observer; without it inputs stay float (weight-only quantization).
    #[arg(long, value_enum)]
    observer: Option<Observer>,
    /// How int4 weights are rounded: GPTQ compensates each MatMul / 1×1 Conv weight's
    /// rounding error through its inputs' correlations (from the calibration samples).
    #[arg(long, value_enum, default_value = "gptq")]
    rounding: Rounding,
    /// Rename internal tensors to short ids and drop node names (graph inputs and outputs
    /// keep theirs): names are a tenth of a small CNN's int8 file. The report still names
    /// layers as the input model does.
    #[arg(long)]
    compact_names: bool,
}

impl QuantizeFlags {
    /// The quantizer's configuration, running `batch` samples per model run.
    pub fn config(&self, batch: usize) -> Result<Config> {
        ensure!(matches!(self.block, 32 | 64 | 128), "--block {}: int4 blocks are 32, 64 or 128 values", self.block);
        if let Some(mb) = self.max_size_mb {
            ensure!(mb > 0.0 && mb.is_finite(), "--max-size-mb {mb}: give a positive size");
        }
        ensure!(self.sensitivity_samples > 0 && batch > 0, "--sensitivity-samples and --batch must be positive");
        for (flag, value) in [("--max-latency-ms", self.max_latency_ms), ("--min-speedup", self.min_speedup)] {
            ensure!(value.is_none_or(|v| v > 0.0 && v.is_finite()), "{flag} {}: give a positive number", value.unwrap_or(0.0));
        }
        let uniform = match self.precision {
            PrecisionArg::Mixed => None,
            PrecisionArg::Int8 => Some(Precision::Int8),
            PrecisionArg::Int4 => Some(Precision::Int4 { block: self.block, pow2_scales: false }),
            PrecisionArg::Fp16 => Some(Precision::F16),
        };
        Ok(Config {
            uniform,
            block: self.block,
            metric: self.metric,
            max_size: self.max_size_mb.map(|mb| (mb * 1e6) as u64),
            min_metric: self.min_metric,
            max_latency_ms: self.max_latency_ms,
            min_speedup: self.min_speedup,
            sensitivity_samples: self.sensitivity_samples,
            batch,
            bias_correction: !self.no_bias_correction,
            observer: self.observer,
            rounding: self.rounding,
            compact_names: self.compact_names,
            fixed: None,
        })
    }

    /// Quantizes with a progress bar on stderr.
    pub fn quantize(&self, model: &Model, config: &Config, calib: &Dataset, eval: &Dataset) -> Result<Outcome> {
        let mut progress = progress_printer(std::io::stderr().is_terminal());
        quantize(model, config, calib, eval, &mut |what, done, total| eprint!("{}", progress(what, done, total, "")))
    }

    /// Writes the quantized model to `output`, and the report and plot where asked; prints
    /// the report's table.
    pub fn write(&self, outcome: Outcome, output: &Path) -> Result<Report> {
        let mut report = outcome.report;
        report.size_bytes = writer::write_model(output, &outcome.model, self.external_data)?;
        say!("{}", report.table().trim_end());
        say!("wrote {}", output.display());
        if let Some(path) = &self.report {
            let json = serde_json::to_string_pretty(&report)?;
            write_text_atomically(path, &json)?;
        }
        if let Some(path) = &self.plot {
            write_text_atomically(path, &report.svg())?;
        }
        Ok(report)
    }
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
    /// Samples per model run.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[command(flatten)]
    flags: QuantizeFlags,
}

pub fn run(args: Args) -> Result<()> {
    let config = args.flags.config(args.batch)?;
    let model = Model::load(&args.model).with_context(|| format!("{}: cannot load", args.model.display()))?;
    let calib = Dataset::load(&args.calib, &model)?;
    let (calib, eval) = match &args.eval {
        Some(path) => (calib, Dataset::load(path, &model)?),
        None => {
            let total = calib.samples();
            let (calib, check) = calib.hold_out()?;
            match total {
                1 => say!("no --eval, and one calibration sample: it is also the final check (give --eval to check on other data)"),
                _ => say!("no --eval: the last {} of the {total} calibration samples are held out for the final check", check.samples()),
            }
            (calib, check)
        }
    };
    let outcome = args.flags.quantize(&model, &config, &calib, &eval)?;
    args.flags.write(outcome, &args.output)?;
    Ok(())
}
