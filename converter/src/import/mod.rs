//! Model import: a pre-trained language model from another format, written as a standard
//! ONNX decoder with a KV cache that the runtime (and onnxruntime) runs.
//!
//! Llama-family models (SmolLM2, TinyLlama, Llama): GGUF files, read with candle's GGUF
//! reader, and Hugging Face folders (`config.json`, `*.safetensors`, the tokenizer files).
//! Weight matrices are written in the [`WeightFormat`] asked for: f32 (the file's model
//! exactly, whatever its blocks), or int8 / int4 blocks of 32 with a scale each, which hold
//! GGUF's Q8_0 / Q4_0 exactly (other block types, such as Q4_1 with its per-block offset, are
//! requantized to them by ggml's reference quantizer, and the import says so per tensor).

pub mod gguf;
pub mod hugging_face;
pub mod llama;
pub mod tokenizer;

pub use gguf::WeightFormat;

use crate::quantize::writer::write_model;
use anyhow::{Context, Result};
use std::path::Path;

/// What an import wrote.
pub struct Imported {
    pub config: llama::LlamaConfig,
    /// Each kind of tensor (`attn_q`, `token_embd.weight`…) with its precision in the source.
    pub source_precisions: Vec<(String, String)>,
    /// Bytes written (model and external data).
    pub bytes: u64,
}

/// Imports `source` into `out_dir/model.onnx` (weights in `model.onnx.data`), keeping its
/// first `max_layers` blocks when given, with the tokenizer, chat template and `config.json`
/// beside it: a GGUF file (its vocabulary rebuilt, see [`tokenizer`]) or a Hugging Face
/// folder (its tokenizer files copied).
pub fn import(source: &Path, out_dir: &Path, max_layers: Option<usize>, format: WeightFormat) -> Result<Imported> {
    let folder = source.is_dir();
    let (weights, source_precisions, vocabulary) = match folder {
        true => {
            let (weights, precisions) = hugging_face::read(source, max_layers, format)?;
            (weights, precisions, None)
        }
        false => {
            let (weights, precisions, vocabulary) = gguf::read(source, max_layers, format)?;
            (weights, precisions, Some(vocabulary))
        }
    };
    let model = llama::decoder(&weights)?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let bytes = write_model(&out_dir.join("model.onnx"), &model, true)?;
    match vocabulary {
        Some(vocabulary) => tokenizer::write(&vocabulary, out_dir)?,
        None => {
            for name in hugging_face::TEXT_FILES {
                let from = source.join(name);
                if from.exists() {
                    let text = std::fs::read_to_string(&from).with_context(|| format!("reading {}", from.display()))?;
                    distq_io::atomic_file::write_text_atomically(&out_dir.join(name), &text)?;
                }
            }
        }
    }
    let config = serde_json::to_string_pretty(&weights.config.to_json())?;
    distq_io::atomic_file::write_text_atomically(&out_dir.join("config.json"), &config)?;
    Ok(Imported { config: weights.config, source_precisions, bytes })
}
