//! `distq import`: a pre-trained model from another format as an ONNX decoder.

use crate::cli::say;
use crate::import::{WeightFormat, import};
use anyhow::{Result, ensure};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The source model: a Llama-family GGUF file, or a Hugging Face folder (config.json,
    /// *.safetensors, tokenizer.json).
    model: PathBuf,
    /// Output folder: model.onnx and its weights, model.onnx.data.
    #[arg(short, long)]
    output: PathBuf,
    /// Keep only the first N blocks (a smaller model of the same family, for tests).
    #[arg(long)]
    layers: Option<usize>,
    /// How weight matrices are stored: f32, or int8 / int4 blocks of 32 (GGUF's Q8_0 / Q4_0,
    /// exact from such files).
    #[arg(long, value_enum, default_value = "f32")]
    weights: WeightFormat,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(args.layers != Some(0), "--layers must be at least 1");
    let imported = import(&args.model, &args.output, args.layers, args.weights)?;
    let c = &imported.config;
    say!(
        "{} blocks, width {}, feed-forward {}, {} heads ({} KV), vocabulary {}, rope θ {}, RMS ε {}",
        c.layers,
        c.hidden,
        c.ffn,
        c.heads,
        c.kv_heads,
        c.vocab,
        c.rope_theta,
        c.rms_eps
    );
    for (kind, precision) in &imported.source_precisions {
        say!("  {kind}: {precision}");
    }
    say!("wrote {} ({:.1} MB)", args.output.join("model.onnx").display(), imported.bytes as f64 / 1e6);
    Ok(())
}
