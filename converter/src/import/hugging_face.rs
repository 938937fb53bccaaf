//! A Hugging Face folder of a Llama-family model: `config.json`, the weights in
//! `*.safetensors` (one file or shards; f32, f16 or bf16), read with candle's safetensors
//! reader (the `safetensors` crate), and the tokenizer files, copied as they are.

use super::gguf::{Precisions, WeightFormat, flat, to_matrix};
use super::llama::{Layer, LlamaConfig, LlamaWeights, Matrix};
use anyhow::{Context, Result, bail, ensure};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// The tokenizer files a folder may hold, copied beside the ONNX model.
pub const TEXT_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"];

/// The sizes in `config.json`.
fn config(dir: &Path) -> Result<(LlamaConfig, bool)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
    ensure!(model_type == "llama", "{}: model_type '{model_type}'; only 'llama' (Llama, SmolLM) is imported", path.display());
    if let Some(scaling) = json.get("rope_scaling").filter(|s| !s.is_null()) {
        bail!("{}: rope_scaling {scaling} is not supported (plain RoPE only)", path.display());
    }
    let int = |key: &str| -> Result<usize> {
        json.get(key).and_then(Value::as_u64).map(|v| v as usize).with_context(|| format!("{}: no integer '{key}'", path.display()))
    };
    let heads = int("num_attention_heads")?;
    let config = LlamaConfig {
        layers: int("num_hidden_layers")?,
        hidden: int("hidden_size")?,
        ffn: int("intermediate_size")?,
        heads,
        kv_heads: int("num_key_value_heads").unwrap_or(heads),
        vocab: int("vocab_size")?,
        rope_theta: json.get("rope_theta").and_then(Value::as_f64).unwrap_or(10_000.0) as f32,
        rms_eps: json.get("rms_norm_eps").and_then(Value::as_f64).with_context(|| format!("{}: no rms_norm_eps", path.display()))? as f32,
        context: int("max_position_embeddings").unwrap_or(2048),
    };
    let tied = json.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false);
    Ok((config, tied))
}

/// Every tensor of the folder's `*.safetensors` files.
fn tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "{}: no *.safetensors weights", dir.display());
    let mut all = HashMap::new();
    for file in files {
        let tensors =
            candle_core::safetensors::load(&file, &Device::Cpu).with_context(|| format!("{}: not safetensors", file.display()))?;
        all.extend(tensors);
    }
    Ok(all)
}

/// The model in the folder `dir`, at most `max_layers` of its blocks, its matrices in
/// `format`. Returns the weights and, per kind of tensor, its precision in the source and in
/// the import.
pub fn read(dir: &Path, max_layers: Option<usize>, format: WeightFormat) -> Result<(LlamaWeights, Precisions)> {
    let (config, tied) = config(dir)?;
    let config = LlamaConfig { layers: max_layers.map_or(config.layers, |n| n.min(config.layers)), ..config };
    let mut tensors = tensors(dir)?;
    let mut precisions: Precisions = Vec::new();
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = tensors.remove(name).with_context(|| format!("{}: no tensor '{name}' in the safetensors files", dir.display()))?;
        ensure!(t.dims() == shape, "{}: tensor '{name}' has shape {:?}; {shape:?} expected", dir.display(), t.dims());
        let kind = name.rsplit_once("layers.").map_or(name, |(_, rest)| rest.split_once('.').map_or(rest, |r| r.1)).to_string();
        let precision = format!("{:?} in the source", t.dtype());
        if !precisions.iter().any(|(k, _)| *k == kind) {
            precisions.push((kind, precision));
        }
        Ok(t)
    };
    // Matrices as the GGUF import stores them: f32, or blocks by ggml's reference quantizer.
    let matrix = |t: Tensor| -> Result<Matrix> {
        let q = QTensor::quantize(&t.to_dtype(candle_core::DType::F32)?, GgmlDType::F32)?;
        to_matrix(q, format)
    };
    let (h, kv, ffn, vocab) = (config.hidden, config.kv_heads * config.head_dim(), config.ffn, config.vocab);
    let embedding = matrix(take("model.embed_tokens.weight", &[vocab, h])?)?;
    let mut layers = Vec::with_capacity(config.layers);
    for i in 0..config.layers {
        let mut w = |part: &str, shape: &[usize]| take(&format!("model.layers.{i}.{part}.weight"), shape);
        layers.push(Layer {
            attn_norm: flat(&w("input_layernorm", &[h])?)?,
            q: matrix(w("self_attn.q_proj", &[h, h])?)?,
            k: matrix(w("self_attn.k_proj", &[kv, h])?)?,
            v: matrix(w("self_attn.v_proj", &[kv, h])?)?,
            o: matrix(w("self_attn.o_proj", &[h, h])?)?,
            ffn_norm: flat(&w("post_attention_layernorm", &[h])?)?,
            gate: matrix(w("mlp.gate_proj", &[ffn, h])?)?,
            up: matrix(w("mlp.up_proj", &[ffn, h])?)?,
            down: matrix(w("mlp.down_proj", &[h, ffn])?)?,
        });
    }
    let final_norm = flat(&take("model.norm.weight", &[h])?)?;
    let output = match tied {
        true => None,
        false => Some(matrix(take("lm_head.weight", &[vocab, h])?)?),
    };
    for (_, precision) in &mut precisions {
        precision.push_str(match format {
            WeightFormat::F32 => ", f32 in the ONNX file",
            WeightFormat::Int8 => ", Q8_0 blocks (matrices) in the ONNX file",
            WeightFormat::Int4 => ", Q4_0 blocks (matrices) in the ONNX file",
        });
    }
    Ok((LlamaWeights { config, embedding, layers, final_norm, output }, precisions))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder with `config` as config.json and one f16 safetensors file of `tensors`.
    fn folder(config: &str, tensors: &[(&str, &[usize])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        if !tensors.is_empty() {
            let map: HashMap<String, Tensor> = tensors
                .iter()
                .map(|(name, shape)| (name.to_string(), Tensor::ones(*shape, candle_core::DType::F16, &Device::Cpu).unwrap()))
                .collect();
            candle_core::safetensors::save(&map, dir.path().join("model.safetensors")).unwrap();
        }
        dir
    }

    const CONFIG: &str = r#"{"model_type": "llama", "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10, "rms_norm_eps": 1e-5, "tie_word_embeddings": true}"#;

    fn error(dir: &Path) -> String {
        match read(dir, None, WeightFormat::F32) {
            Ok(_) => panic!("{} imported", dir.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn bad_folders_are_named() {
        let empty = tempfile::tempdir().unwrap();
        assert!(error(empty.path()).contains("config.json"), "{}", error(empty.path()));
        let gpt2 = folder(r#"{"model_type": "gpt2"}"#, &[]);
        assert!(error(gpt2.path()).contains("model_type 'gpt2'"), "{}", error(gpt2.path()));
        let scaled = folder(&CONFIG.replace("\"llama\",", "\"llama\", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0},"), &[]);
        assert!(error(scaled.path()).contains("rope_scaling"), "{}", error(scaled.path()));
        let no_weights = folder(CONFIG, &[]);
        assert!(error(no_weights.path()).contains("no *.safetensors"), "{}", error(no_weights.path()));
        let wrong_shape = folder(CONFIG, &[("model.embed_tokens.weight", &[10, 9])]);
        let message = error(wrong_shape.path());
        assert!(message.contains("'model.embed_tokens.weight' has shape [10, 9]; [10, 8] expected"), "{message}");
        let missing = folder(CONFIG, &[("model.embed_tokens.weight", &[10, 8])]);
        assert!(error(missing.path()).contains("no tensor 'model.layers.0.input_layernorm.weight'"), "{}", error(missing.path()));
    }

    #[test]
    fn half_precision_weights_widen_exactly() {
        let mut shapes: Vec<(String, Vec<usize>)> =
            vec![("model.embed_tokens.weight".into(), vec![10, 8]), ("model.norm.weight".into(), vec![8])];
        for (part, shape) in [
            ("input_layernorm", vec![8]),
            ("post_attention_layernorm", vec![8]),
            ("self_attn.q_proj", vec![8, 8]),
            ("self_attn.k_proj", vec![4, 8]),
            ("self_attn.v_proj", vec![4, 8]),
            ("self_attn.o_proj", vec![8, 8]),
            ("mlp.gate_proj", vec![16, 8]),
            ("mlp.up_proj", vec![16, 8]),
            ("mlp.down_proj", vec![8, 16]),
        ] {
            shapes.push((format!("model.layers.0.{part}.weight"), shape));
        }
        let shapes: Vec<(&str, &[usize])> = shapes.iter().map(|(n, s)| (n.as_str(), s.as_slice())).collect();
        let (weights, precisions) = read(folder(CONFIG, &shapes).path(), None, WeightFormat::F32).unwrap();
        let Matrix::F32(q) = &weights.layers[0].q else { panic!("f32 asked for") };
        assert!(q.iter().chain(&weights.final_norm).all(|&v| v == 1.0));
        assert!(weights.output.is_none(), "tied embeddings");
        assert!(precisions.iter().all(|(_, p)| p.starts_with("F16 in the source")), "{precisions:?}");
    }
}
