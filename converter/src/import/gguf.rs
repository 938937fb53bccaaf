//! A Llama-family GGUF file read through candle's GGUF reader: the architecture's
//! hyper-parameters and every weight dequantized to f32, in Hugging Face's layout.

use super::llama::{Layer, LlamaConfig, LlamaWeights};
use anyhow::{Context, Result, bail, ensure};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// The model in `path`, at most `max_layers` of its blocks (all when `None`: a slice of the
/// first blocks is a smaller model of the same family, for tests). Returns the weights and the
/// precision each kind of tensor had in the file, for the import report.
pub fn read(path: &Path, max_layers: Option<usize>) -> Result<(LlamaWeights, Vec<(String, String)>)> {
    let mut file = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let content = Content::read(&mut file).with_context(|| format!("{}: not a GGUF file", path.display()))?;
    let meta = |key: &str| content.metadata.get(key).with_context(|| format!("{}: no metadata '{key}'", path.display()));
    let arch = meta("general.architecture")?.to_string()?.clone();
    ensure!(arch == "llama", "{}: architecture '{arch}'; only 'llama' (Llama, SmolLM, Mistral-style) is imported", path.display());
    let int = |key: &str| -> Result<usize> { Ok(to_u64(meta(&format!("llama.{key}"))?).with_context(|| format!("llama.{key}"))? as usize) };
    let float = |key: &str| -> Result<f32> { meta(&format!("llama.{key}"))?.to_f32().with_context(|| format!("llama.{key}")) };
    let blocks = int("block_count")?;
    let config = LlamaConfig {
        layers: max_layers.map_or(blocks, |n| n.min(blocks)),
        hidden: int("embedding_length")?,
        ffn: int("feed_forward_length")?,
        heads: int("attention.head_count")?,
        kv_heads: int("attention.head_count_kv")?,
        rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
        rms_eps: float("attention.layer_norm_rms_epsilon")?,
        context: int("context_length").unwrap_or(2048),
        vocab: 0,
    };
    ensure!(
        config.heads > 0
            && config.kv_heads > 0
            && config.heads.is_multiple_of(config.kv_heads)
            && config.hidden.is_multiple_of(config.heads),
        "{}: {} heads, {} KV heads and width {} do not make a grouped-query attention",
        path.display(),
        config.heads,
        config.kv_heads,
        config.hidden
    );
    let mut precisions: Vec<(String, String)> = Vec::new();
    let mut tensor = |name: &str| -> Result<Vec<f32>> {
        let q = content.tensor(&mut file, name, &Device::Cpu).with_context(|| format!("{}: tensor '{name}'", path.display()))?;
        let kind = name.rsplit_once("blk.").map_or(name, |(_, rest)| rest.split_once('.').map_or(rest, |r| r.1));
        let dtype = format!("{:?}", q.dtype());
        if !precisions.iter().any(|(k, d)| k == kind && *d == dtype) {
            precisions.push((kind.to_string(), dtype));
        }
        flat(&q.dequantize(&Device::Cpu)?)
    };
    let embedding = tensor("token_embd.weight")?;
    let vocab = embedding.len() / config.hidden;
    let config = LlamaConfig { vocab, ..config };
    let head_dim = config.hidden / config.heads;
    let mut layers = Vec::with_capacity(config.layers);
    for i in 0..config.layers {
        let w = |part: &str| format!("blk.{i}.{part}.weight");
        layers.push(Layer {
            attn_norm: tensor(&w("attn_norm"))?,
            // llama.cpp's converter interleaves each head's rotary halves; undone here.
            q: unpermute_rotary(tensor(&w("attn_q"))?, config.heads, head_dim),
            k: unpermute_rotary(tensor(&w("attn_k"))?, config.kv_heads, head_dim),
            v: tensor(&w("attn_v"))?,
            o: tensor(&w("attn_output"))?,
            ffn_norm: tensor(&w("ffn_norm"))?,
            gate: tensor(&w("ffn_gate"))?,
            up: tensor(&w("ffn_up"))?,
            down: tensor(&w("ffn_down"))?,
        });
    }
    let final_norm = tensor("output_norm.weight")?;
    let output = match content.tensor_infos.contains_key("output.weight") {
        true => Some(tensor("output.weight")?),
        false => None,
    };
    Ok((LlamaWeights { config, embedding, layers, final_norm, output }, precisions))
}

/// The vocabulary of the GGUF file at `path` (its metadata, read again: no weights).
pub fn vocabulary(path: &Path) -> Result<super::tokenizer::Vocabulary> {
    let mut file = BufReader::new(File::open(path).with_context(|| format!("opening {}", path.display()))?);
    let content = Content::read(&mut file).with_context(|| format!("{}: not a GGUF file", path.display()))?;
    super::tokenizer::vocabulary(&content, path)
}

/// A metadata integer of any width.
fn to_u64(v: &Value) -> Result<u64> {
    Ok(match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        other => bail!("expected an unsigned integer, got {other:?}"),
    })
}

fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

/// Rows `[heads · head_dim, in]` from llama.cpp's order (within a head, row `2j + i` is
/// Hugging Face's row `i · head_dim/2 + j`) back to Hugging Face's, whose rotary embedding
/// rotates the two halves of each head.
fn unpermute_rotary(w: Vec<f32>, heads: usize, head_dim: usize) -> Vec<f32> {
    let cols = w.len() / (heads * head_dim);
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let (hf, gguf) = (h * head_dim + i * half + j, h * head_dim + 2 * j + i);
                out[hf * cols..][..cols].copy_from_slice(&w[gguf * cols..][..cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unpermute_rotary;

    #[test]
    fn rotary_rows_return_to_halves() {
        // One head of 4 rows, one column: llama.cpp's order is [h0, h2, h1, h3] of the halves
        // [h0 h1 | h2 h3].
        assert_eq!(unpermute_rotary(vec![0., 2., 1., 3.], 1, 4), vec![0., 1., 2., 3.]);
        // Two heads keep their own rows.
        assert_eq!(unpermute_rotary(vec![0., 2., 1., 3., 4., 6., 5., 7.], 2, 4), vec![0., 1., 2., 3., 4., 5., 6., 7.]);
    }
}
