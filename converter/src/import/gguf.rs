//! A Llama-family GGUF file read through candle's GGUF reader: the architecture's
//! hyper-parameters and every weight, in Hugging Face's layout, either dequantized to f32 or
//! as blocks of 32 int8 / int4 values with a scale each (GGUF's Q8_0 and Q4_0, whose blocks
//! ONNX's blocked DequantizeLinear holds exactly).

use super::llama::{Blocks, Layer, LlamaConfig, LlamaWeights, Matrix};
use super::tokenizer::Vocabulary;
use anyhow::{Context, Result, bail, ensure};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// How the import stores weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightFormat {
    /// f32: the file's model exactly, whatever its blocks.
    F32,
    /// Blocks of 32 int8 values with a scale (GGUF's Q8_0: exact from a Q8_0 file, else
    /// quantized by ggml's reference quantizer).
    Int8,
    /// Blocks of 32 int4 values with a scale (GGUF's Q4_0: exact from a Q4_0 file, else
    /// quantized by ggml's reference quantizer); Q8_0 tensors of the file (llama.cpp keeps
    /// some so) stay int8.
    Int4,
}

impl WeightFormat {
    /// The GGUF block type a matrix stored as `source` is written in (`None`: f32).
    fn blocks(self, source: GgmlDType) -> Option<GgmlDType> {
        match self {
            WeightFormat::F32 => None,
            WeightFormat::Int8 => Some(GgmlDType::Q8_0),
            WeightFormat::Int4 if source == GgmlDType::Q8_0 => Some(GgmlDType::Q8_0),
            WeightFormat::Int4 => Some(GgmlDType::Q4_0),
        }
    }
}

/// Per kind of tensor, its precision in the file and in the import.
pub type Precisions = Vec<(String, String)>;

/// The model in `path`, at most `max_layers` of its blocks (all when `None`: a slice of the
/// first blocks is a smaller model of the same family, for tests), its matrices in `format`.
/// Returns the weights, per kind of tensor its precision in the file and in the import, and
/// the tokenizer's vocabulary (the file's metadata is read once).
pub fn read(path: &Path, max_layers: Option<usize>, format: WeightFormat) -> Result<(LlamaWeights, Precisions, Vocabulary)> {
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
        // Optional metadata: Llama's 2048 when absent.
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
    let mut load = |name: &str, matrix: bool| -> Result<(QTensor, String)> {
        let q = content.tensor(&mut file, name, &Device::Cpu).with_context(|| format!("{}: tensor '{name}'", path.display()))?;
        let kind = name.rsplit_once("blk.").map_or(name, |(_, rest)| rest.split_once('.').map_or(rest, |r| r.1)).to_string();
        let stored = match format.blocks(q.dtype()).filter(|_| matrix) {
            None => "f32".to_string(),
            Some(target) if q.dtype() == target => format!("{target:?} blocks, exact,"),
            Some(target) => format!("{target:?} blocks, requantized,"),
        };
        let precision = format!("{:?} in the source, {stored} in the ONNX file", q.dtype());
        if !precisions.iter().any(|(k, p)| *k == kind && *p == precision) {
            precisions.push((kind.clone(), precision));
        }
        Ok((q, name.to_string()))
    };
    let mut vector = |name: &str| -> Result<Vec<f32>> { flat(&load(name, false)?.0.dequantize(&Device::Cpu)?) };
    let norms = |vector: &mut dyn FnMut(&str) -> Result<Vec<f32>>, i: usize| -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((vector(&format!("blk.{i}.attn_norm.weight"))?, vector(&format!("blk.{i}.ffn_norm.weight"))?))
    };
    let mut layer_norms = Vec::with_capacity(config.layers);
    for i in 0..config.layers {
        layer_norms.push(norms(&mut vector, i)?);
    }
    let final_norm = vector("output_norm.weight")?;
    let mut matrix = |name: &str| -> Result<(Matrix, usize)> {
        let (q, name) = load(name, true)?;
        let rows = q.shape().dims().first().copied().unwrap_or(1);
        Ok((to_matrix(q, format).with_context(|| format!("{}: tensor '{name}'", path.display()))?, rows))
    };
    let (embedding, vocab) = matrix("token_embd.weight")?;
    let config = LlamaConfig { vocab, ..config };
    let head_dim = config.hidden / config.heads;
    let mut layers = Vec::with_capacity(config.layers);
    for (i, (attn_norm, ffn_norm)) in layer_norms.into_iter().enumerate() {
        let mut w = |part: &str| Ok::<_, anyhow::Error>(matrix(&format!("blk.{i}.{part}.weight"))?.0);
        layers.push(Layer {
            attn_norm,
            // llama.cpp's converter interleaves each head's rotary halves; undone here.
            q: w("attn_q")?.rows_permuted(&rotary_row_order(config.heads, head_dim)),
            k: w("attn_k")?.rows_permuted(&rotary_row_order(config.kv_heads, head_dim)),
            v: w("attn_v")?,
            o: w("attn_output")?,
            ffn_norm,
            gate: w("ffn_gate")?,
            up: w("ffn_up")?,
            down: w("ffn_down")?,
        });
    }
    let output = match content.tensor_infos.contains_key("output.weight") {
        true => Some(matrix("output.weight")?.0),
        false => None,
    };
    let vocabulary = super::tokenizer::vocabulary(&content, path)?;
    Ok((LlamaWeights { config, embedding, layers, final_norm, output }, precisions, vocabulary))
}

/// `q` as a matrix in `format`: f32, or its blocks (requantized by candle, ggml's reference
/// quantizer, when the file holds another type).
pub(super) fn to_matrix(q: QTensor, format: WeightFormat) -> Result<Matrix> {
    let Some(target) = format.blocks(q.dtype()) else { return Ok(Matrix::F32(flat(&q.dequantize(&Device::Cpu)?)?)) };
    let q = if q.dtype() == target { q } else { QTensor::quantize(&q.dequantize(&Device::Cpu)?, target)? };
    let raw = q.data()?;
    let (block_bytes, bits) = match target {
        GgmlDType::Q8_0 => (34, 8),
        GgmlDType::Q4_0 => (18, 4),
        other => bail!("no block layout for {other:?}"),
    };
    ensure!(raw.len().is_multiple_of(block_bytes), "{} bytes are not whole {target:?} blocks", raw.len());
    let count = raw.len() / block_bytes;
    let (mut scales, mut values) = (Vec::with_capacity(count), Vec::with_capacity(count * 32));
    for block in raw.chunks_exact(block_bytes) {
        // Each block: its scale as f16, then 32 values (Q8_0: bytes; Q4_0: the low nibbles of
        // 16 bytes are values 0..16, the high ones 16..32, stored with 8 added).
        scales.push(half::f16::from_le_bytes([block[0], block[1]]).to_f32());
        let body = &block[2..];
        match bits {
            8 => values.extend(body.iter().map(|&b| b as i8)),
            _ => {
                values.extend(body.iter().map(|&b| (b & 0x0f) as i8 - 8));
                values.extend(body.iter().map(|&b| (b >> 4) as i8 - 8));
            }
        }
    }
    Ok(Matrix::Blocks(Blocks { bits, scales, values }))
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

pub(super) fn flat(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

/// For each of Hugging Face's rows of a `[heads · head_dim, in]` projection, the row of
/// llama.cpp's order it is in: within a head, Hugging Face's row `i · head_dim/2 + j` (its
/// rotary embedding rotates the two halves of each head) is llama.cpp's row `2j + i`.
fn rotary_row_order(heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    (0..heads * head_dim).map(|r| (r / head_dim) * head_dim + 2 * (r % head_dim % half) + r % head_dim / half).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_0_blocks_are_read_exactly() {
        // 3 rows of 64: values candle quantizes to each type, read back as blocks, give the
        // values candle dequantizes, bit for bit.
        let values: Vec<f32> = (0..192).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let x = Tensor::from_vec(values, (3, 64), &Device::Cpu).unwrap();
        for (format, dtype) in [(WeightFormat::Int8, GgmlDType::Q8_0), (WeightFormat::Int4, GgmlDType::Q4_0)] {
            let q = QTensor::quantize(&x, dtype).unwrap();
            let want = flat(&q.dequantize(&Device::Cpu).unwrap()).unwrap();
            let Matrix::Blocks(b) = to_matrix(q, format).unwrap() else { panic!("{format:?} gave f32") };
            let got: Vec<f32> = b.values.iter().enumerate().map(|(i, &v)| v as f32 * b.scales[i / 32]).collect();
            assert_eq!(got, want, "{format:?}");
            assert_eq!(b.bits, if format == WeightFormat::Int8 { 8 } else { 4 });
        }
        // Int4 keeps a Q8_0 tensor's blocks; f32 dequantizes.
        let q8 = QTensor::quantize(&x, GgmlDType::Q8_0).unwrap();
        assert_eq!(WeightFormat::Int4.blocks(q8.dtype()), Some(GgmlDType::Q8_0));
        assert!(matches!(to_matrix(q8, WeightFormat::F32).unwrap(), Matrix::F32(v) if v.len() == 192));
    }

    #[test]
    fn rotary_rows_return_to_halves() {
        // One head of 4 rows: llama.cpp's order is [h0, h2, h1, h3] of the halves [h0 h1 | h2 h3].
        assert_eq!(rotary_row_order(1, 4), [0, 2, 1, 3]);
        // Two heads keep their own rows.
        assert_eq!(rotary_row_order(2, 4), [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(rotary_row_order(1, 6), [0, 2, 4, 1, 3, 5]);
    }
}
