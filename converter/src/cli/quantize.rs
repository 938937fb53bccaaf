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
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

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
        compact_names: args.compact_names,
    };
    let mut progress = progress_printer(std::io::stderr().is_terminal());
    let outcome = quantize(&model, &config, &calib, &eval, &mut |what, done, total| eprint!("{}", progress(what, done, total)))?;
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

/// Progress of long steps for stderr: on a terminal a bar redrawn in place with the time
/// left; otherwise (logs) one line when a step starts and at each further tenth.
fn progress_printer(terminal: bool) -> impl FnMut(&str, usize, usize) -> String {
    let (mut step, mut tenth, mut started) = (String::new(), 0, Instant::now());
    move |what, done, total| {
        let new_step = what != step;
        if new_step {
            (step, started) = (what.to_string(), Instant::now());
        }
        let total = total.max(1);
        if terminal {
            const WIDTH: usize = 30;
            let filled = done.min(total) * WIDTH / total;
            let left = if done > 0 && done < total {
                format!(" {:.0} s left", started.elapsed().as_secs_f64() * (total - done) as f64 / done as f64)
            } else {
                String::new()
            };
            let end = if done >= total { "\n" } else { "" };
            return format!("\r{what} [{}{}] {done}/{total}{left}\x1b[K{end}", "#".repeat(filled), "-".repeat(WIDTH - filled));
        }
        let now = done * 10 / total;
        if new_step || now != tenth {
            tenth = now;
            return format!("{what} {done}/{total}\n");
        }
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::progress_printer;

    #[test]
    fn logs_get_a_line_per_tenth_and_terminals_a_bar() {
        let mut log = progress_printer(false);
        let lines: String = (0..=40).map(|i| log("sensitivity", i, 40)).collect();
        assert_eq!(lines.lines().count(), 11, "start and each tenth: {lines}");
        assert!(lines.ends_with("sensitivity 40/40\n"));
        assert_eq!(log("verify", 0, 1), "verify 0/1\n", "a new step always shows");
        let mut bar = progress_printer(true);
        assert!(bar("search", 3, 6).starts_with("\rsearch [###############---------------] 3/6"));
        assert!(bar("search", 6, 6).ends_with("\n"));
    }
}
