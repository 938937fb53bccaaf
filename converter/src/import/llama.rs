//! A Llama-family decoder written as standard ONNX (opset 21) with a KV cache, in Optimum's
//! names: inputs `input_ids`, `attention_mask`, `position_ids`, `past_key_values.{i}.key` /
//! `.value`; outputs `logits`, `present.{i}.key` / `.value`.
//!
//! Per block: RMSNorm, Q/K/V projections, rotary embedding (Hugging Face's halves), the new
//! keys and values appended to the past ones, grouped-query attention as a broadcasting
//! `MatMul` over `[batch, kv_heads, heads / kv_heads, …]` (the shared K/V are never
//! repeated), the causal and padding mask, the output projection, and a SwiGLU feed-forward.
//! The output projection is the embedding table (`Gemm` with `transB`) when tied.
//!
//! Weight matrices are f32 initializers, or int8 / int4 blocks of 32 along K with a scale
//! each, read through a blocked `DequantizeLinear` (GGUF's Q8_0 / Q4_0 exactly).

use anyhow::{Result, ensure};
use distq_runtime::nibbles::pack_u4;
use distq_runtime::onnx::build::{Attr, ModelBuilder};
use distq_runtime::onnx::proto::{ModelProto, TensorProto};
use distq_runtime::{DataType, Tensor};

/// The architecture's sizes.
#[derive(Clone, Debug)]
pub struct LlamaConfig {
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// The context the model was trained for (positions).
    pub context: usize,
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Hugging Face's `config.json` for these sizes.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.ffn,
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": self.context,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "vocab_size": self.vocab,
        })
    }
}

/// A weight matrix `[rows, cols]` (Hugging Face's `[out, in]`), row-major.
pub enum Matrix {
    F32(Vec<f32>),
    /// In blocks of 32 along each row.
    Blocks(Blocks),
}

/// Blocks of 32 values of a row, each block with its scale: value = scale · q.
pub struct Blocks {
    /// 8 (q in −128..=127) or 4 (q in −8..=7).
    pub bits: u8,
    /// `rows × cols / 32`.
    pub scales: Vec<f32>,
    /// `rows × cols`.
    pub values: Vec<i8>,
}

/// Values per block of [`Blocks`].
pub const BLOCK: usize = 32;

impl Matrix {
    /// The matrix with row `r` taken from row `order[r]`.
    pub fn rows_permuted(self, order: &[usize]) -> Matrix {
        fn permute<T: Copy>(v: &[T], order: &[usize]) -> Vec<T> {
            let cols = v.len() / order.len();
            order.iter().flat_map(|&r| v[r * cols..][..cols].iter().copied()).collect()
        }
        match self {
            Matrix::F32(v) => Matrix::F32(permute(&v, order)),
            Matrix::Blocks(b) => Matrix::Blocks(Blocks { scales: permute(&b.scales, order), values: permute(&b.values, order), ..b }),
        }
    }
}

/// One block's weights.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub q: Matrix,
    pub k: Matrix,
    pub v: Matrix,
    pub o: Matrix,
    pub ffn_norm: Vec<f32>,
    pub gate: Matrix,
    pub up: Matrix,
    pub down: Matrix,
}

/// The whole model's weights.
pub struct LlamaWeights {
    pub config: LlamaConfig,
    /// `[vocab, hidden]`.
    pub embedding: Matrix,
    pub layers: Vec<Layer>,
    pub final_norm: Vec<f32>,
    /// `[vocab, hidden]`, when not tied to the embedding.
    pub output: Option<Matrix>,
}

/// Names the graph's values: one prefix per block, a counter within.
struct Names(usize);

impl Names {
    fn next(&mut self, what: &str) -> String {
        self.0 += 1;
        format!("{what}_{}", self.0)
    }
}

/// `[rows, cols]` → `[cols, rows]`.
fn transposed<T: Copy + Default>(w: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

fn ints(values: &[i64]) -> Tensor {
    Tensor::from_vec(vec![values.len()], values.to_vec()).expect("a 1-D tensor")
}

/// Defines value `name` as `matrix` (`[rows, cols]`): as stored, or transposed to `[cols,
/// rows]` (a MatMul's `K × N`) when `transpose`. Blocks stay blocks along the matrix's rows
/// (K), dequantized by a `DequantizeLinear` the runtime fuses into its integer GEMM.
fn matrix_value(m: ModelBuilder, name: &str, matrix: &Matrix, rows: usize, cols: usize, transpose: bool) -> Result<ModelBuilder> {
    let shape = |r: usize, c: usize| if transpose { vec![c, r] } else { vec![r, c] };
    let Matrix::Blocks(b) = matrix else {
        let Matrix::F32(v) = matrix else { unreachable!("two kinds") };
        ensure!(v.len() == rows * cols, "{name}: {} values for {rows} × {cols}", v.len());
        let v = if transpose { transposed(v, rows, cols) } else { v.clone() };
        return Ok(m.initializer(name, &Tensor::from_vec(shape(rows, cols), v)?));
    };
    ensure!(
        cols.is_multiple_of(BLOCK) && b.values.len() == rows * cols && b.scales.len() == rows * cols / BLOCK,
        "{name}: {} values and {} scales for {rows} × {cols} in blocks of {BLOCK}",
        b.values.len(),
        b.scales.len()
    );
    let (values, scales) = if transpose {
        (transposed(&b.values, rows, cols), transposed(&b.scales, rows, cols / BLOCK))
    } else {
        (b.values.clone(), b.scales.clone())
    };
    let (q, scale) = (format!("{name}.quantized"), format!("{name}.scale"));
    let m = match b.bits {
        8 => m.initializer(&q, &Tensor::from_vec(shape(rows, cols), values)?),
        _ => m.initializer_proto(TensorProto {
            name: Some(q.clone()),
            dims: shape(rows, cols).iter().map(|&d| d as i64).collect(),
            data_type: Some(DataType::I4.onnx_code()),
            raw_data: Some(pack_u4(&values.iter().map(|&v| v as u8 & 0x0f).collect::<Vec<_>>()).into()),
            ..Default::default()
        }),
    };
    let axis = if transpose { 0 } else { 1 };
    Ok(m.initializer(&scale, &Tensor::from_vec(shape(rows, cols / BLOCK), scales)?).node(
        "DequantizeLinear",
        &[&q, &scale],
        &[name],
        vec![("axis", Attr::Int(axis)), ("block_size", Attr::Int(BLOCK as i64))],
    ))
}

/// The decoder as an ONNX model.
pub fn decoder(w: &LlamaWeights) -> Result<ModelProto> {
    let c = &w.config;
    let (hd, group) = (c.head_dim(), c.heads / c.kv_heads);
    ensure!(hd.is_multiple_of(2), "head dim {hd} is odd: no rotary halves");
    let f32t = |shape: Vec<usize>, v: Vec<f32>| Tensor::from_vec(shape, v).expect("sizes checked");
    let inv_freq: Vec<f32> = (0..hd / 2).map(|j| 1.0 / c.rope_theta.powf(2.0 * j as f32 / hd as f32)).collect();
    let mut m = ModelBuilder::new(21)
        .input_named("input_ids", DataType::I64, &["batch_size", "sequence_length"])
        .input_named("attention_mask", DataType::I64, &["batch_size", "total_sequence_length"])
        .input_named("position_ids", DataType::I64, &["batch_size", "sequence_length"]);
    m = matrix_value(m, "embed_tokens", &w.embedding, c.vocab, c.hidden, false)?;
    m = m
        .initializer("inv_freq", &f32t(vec![hd / 2], inv_freq))
        .initializer("eps", &Tensor::scalar(c.rms_eps))
        .initializer("zero_f", &Tensor::scalar(0f32))
        .initializer("min_f", &Tensor::scalar(f32::MIN))
        .initializer("scale", &Tensor::scalar(1.0 / (hd as f32).sqrt()))
        .initializer("zero_i", &Tensor::scalar(0i64))
        .initializer("one_i", &Tensor::scalar(1i64))
        .initializer("axes_0", &ints(&[0]))
        .initializer("axes_1", &ints(&[1]))
        .initializer("axes_12", &ints(&[1, 2]))
        .initializer("axes_2", &ints(&[2]))
        .initializer("axes_last", &ints(&[-1]))
        .initializer("half_start", &ints(&[0]))
        .initializer("half_mid", &ints(&[hd as i64 / 2]))
        .initializer("half_end", &ints(&[i64::MAX]))
        .initializer("heads_shape", &ints(&[0, 0, c.heads as i64, hd as i64]))
        .initializer("kv_heads_shape", &ints(&[0, 0, c.kv_heads as i64, hd as i64]))
        .initializer("grouped_shape", &ints(&[0, c.kv_heads as i64, group as i64, -1, hd as i64]))
        .initializer("ungrouped_shape", &ints(&[0, c.heads as i64, -1, hd as i64]))
        .initializer("merged_shape", &ints(&[0, 0, c.hidden as i64]))
        .initializer("rows_shape", &ints(&[-1, c.hidden as i64]))
        .initializer("vocab_1d", &ints(&[c.vocab as i64]))
        .node("Gather", &["embed_tokens", "input_ids"], &["h_0"], vec![]);
    // Rotary angles from the positions: [batch, 1, seq, head_dim], cos and sin.
    m = m
        .node("Cast", &["position_ids"], &["positions"], vec![("to", Attr::Int(1))])
        .node("Unsqueeze", &["positions", "axes_last"], &["positions_col"], vec![])
        .node("Mul", &["positions_col", "inv_freq"], &["freqs"], vec![])
        .node("Concat", &["freqs", "freqs"], &["angles"], vec![("axis", Attr::Int(-1))])
        .node("Cos", &["angles"], &["cos_3d"], vec![])
        .node("Sin", &["angles"], &["sin_3d"], vec![])
        .node("Unsqueeze", &["cos_3d", "axes_1"], &["cos"], vec![])
        .node("Unsqueeze", &["sin_3d", "axes_1"], &["sin"], vec![]);
    // Mask [batch, 1, 1, seq, total]: key j is visible to query i (at position past + i)
    // when j ≤ past + i and attention_mask[j] is 1.
    m = m
        .node("Shape", &["attention_mask"], &["mask_shape"], vec![])
        .node("Gather", &["mask_shape", "one_i"], &["total"], vec![("axis", Attr::Int(0))])
        .node("Shape", &["input_ids"], &["ids_shape"], vec![])
        .node("Gather", &["ids_shape", "one_i"], &["seq"], vec![("axis", Attr::Int(0))])
        .node("Sub", &["total", "seq"], &["past"], vec![])
        .node("Range", &["past", "total", "one_i"], &["query_positions"], vec![])
        .node("Range", &["zero_i", "total", "one_i"], &["key_positions"], vec![])
        .node("Unsqueeze", &["query_positions", "axes_1"], &["query_col"], vec![])
        .node("LessOrEqual", &["key_positions", "query_col"], &["causal"], vec![])
        .node("Cast", &["attention_mask"], &["present_keys"], vec![("to", Attr::Int(9))])
        .node("Unsqueeze", &["present_keys", "axes_12"], &["padding"], vec![])
        .node("And", &["causal", "padding"], &["visible"], vec![])
        .node("Where", &["visible", "zero_f", "min_f"], &["mask_4d"], vec![])
        .node("Unsqueeze", &["mask_4d", "axes_1"], &["mask"], vec![]);
    let mut names = Names(0);
    let mut h = "h_0".to_string();
    for (i, layer) in w.layers.iter().enumerate() {
        let p = format!("layers.{i}");
        let weight = |m: ModelBuilder, name: &str, matrix: &Matrix, rows: usize, cols: usize| {
            matrix_value(m, &format!("{p}.{name}"), matrix, rows, cols, true)
        };
        m = weight(m, "q_proj", &layer.q, c.hidden, c.hidden)?;
        m = weight(m, "k_proj", &layer.k, c.kv_heads * hd, c.hidden)?;
        m = weight(m, "v_proj", &layer.v, c.kv_heads * hd, c.hidden)?;
        m = weight(m, "o_proj", &layer.o, c.hidden, c.hidden)?;
        m = weight(m, "gate_proj", &layer.gate, c.ffn, c.hidden)?;
        m = weight(m, "up_proj", &layer.up, c.ffn, c.hidden)?;
        m = weight(m, "down_proj", &layer.down, c.hidden, c.ffn)?;
        m = m
            .initializer(&format!("{p}.input_layernorm"), &f32t(vec![c.hidden], layer.attn_norm.clone()))
            .initializer(&format!("{p}.post_attention_layernorm"), &f32t(vec![c.hidden], layer.ffn_norm.clone()));
        let x;
        (m, x) = rms_norm(m, &mut names, &h, &format!("{p}.input_layernorm"));
        let proj = |m: ModelBuilder, names: &mut Names, x: &str, w: &str| {
            let y = names.next(w);
            (m.node("MatMul", &[x, &format!("{p}.{w}")], &[&y], vec![]), y)
        };
        let (q_proj, k_proj, v_proj);
        (m, q_proj) = proj(m, &mut names, &x, "q_proj");
        (m, k_proj) = proj(m, &mut names, &x, "k_proj");
        (m, v_proj) = proj(m, &mut names, &x, "v_proj");
        // [batch, seq, heads, hd] → [batch, heads, seq, hd].
        let heads = |m: ModelBuilder, names: &mut Names, x: &str, shape: &str| {
            let (r, t) = (names.next("heads"), names.next("heads_t"));
            (m.node("Reshape", &[x, shape], &[&r], vec![]).node("Transpose", &[&r], &[&t], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))]), t)
        };
        let (q_heads, k_heads, v);
        (m, q_heads) = heads(m, &mut names, &q_proj, "heads_shape");
        (m, k_heads) = heads(m, &mut names, &k_proj, "kv_heads_shape");
        (m, v) = heads(m, &mut names, &v_proj, "kv_heads_shape");
        let (q, k);
        (m, q) = rotary(m, &mut names, &q_heads);
        (m, k) = rotary(m, &mut names, &k_heads);
        let (present_k, present_v) = (format!("present.{i}.key"), format!("present.{i}.value"));
        let (past_k, past_v) = (format!("past_key_values.{i}.key"), format!("past_key_values.{i}.value"));
        let kv_dims = ["batch_size", &c.kv_heads.to_string(), "past_sequence_length", &hd.to_string()];
        let present_dims = ["batch_size", &c.kv_heads.to_string(), "total_sequence_length", &hd.to_string()];
        m = m
            .input_named(&past_k, DataType::F32, &kv_dims)
            .input_named(&past_v, DataType::F32, &kv_dims)
            .output_named(&present_k, DataType::F32, &present_dims)
            .output_named(&present_v, DataType::F32, &present_dims)
            .node("Concat", &[&past_k, &k], &[&present_k], vec![("axis", Attr::Int(2))])
            .node("Concat", &[&past_v, &v], &[&present_v], vec![("axis", Attr::Int(2))]);
        // Grouped-query attention: queries [batch, kv_heads, group, seq, hd] against keys and
        // values [batch, kv_heads, 1, total, hd], broadcast over the group.
        let (q5, k5, kt, v5, scores, scaled, masked, probs, ctx5, ctx, ctx_t, merged, attn, h_attn) = (
            names.next("q5"),
            names.next("k5"),
            names.next("kt"),
            names.next("v5"),
            names.next("scores"),
            names.next("scaled"),
            names.next("masked"),
            names.next("probs"),
            names.next("ctx5"),
            names.next("ctx"),
            names.next("ctx_t"),
            names.next("merged"),
            names.next("attn"),
            names.next("h_attn"),
        );
        m = m
            .node("Reshape", &[&q, "grouped_shape"], &[&q5], vec![])
            .node("Unsqueeze", &[&present_k, "axes_2"], &[&k5], vec![])
            .node("Transpose", &[&k5], &[&kt], vec![("perm", Attr::Ints(vec![0, 1, 2, 4, 3]))])
            .node("Unsqueeze", &[&present_v, "axes_2"], &[&v5], vec![])
            .node("MatMul", &[&q5, &kt], &[&scores], vec![])
            .node("Mul", &[&scores, "scale"], &[&scaled], vec![])
            .node("Add", &[&scaled, "mask"], &[&masked], vec![])
            .node("Softmax", &[&masked], &[&probs], vec![("axis", Attr::Int(-1))])
            .node("MatMul", &[&probs, &v5], &[&ctx5], vec![])
            .node("Reshape", &[&ctx5, "ungrouped_shape"], &[&ctx], vec![])
            .node("Transpose", &[&ctx], &[&ctx_t], vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))])
            .node("Reshape", &[&ctx_t, "merged_shape"], &[&merged], vec![]);
        m = m.node("MatMul", &[&merged, &format!("{p}.o_proj")], &[&attn], vec![]).node("Add", &[&h, &attn], &[&h_attn], vec![]);
        // SwiGLU feed-forward.
        let x;
        (m, x) = rms_norm(m, &mut names, &h_attn, &format!("{p}.post_attention_layernorm"));
        let (gate, up);
        (m, gate) = proj(m, &mut names, &x, "gate_proj");
        (m, up) = proj(m, &mut names, &x, "up_proj");
        let (sig, silu, act, down, next) =
            (names.next("sig"), names.next("silu"), names.next("act"), names.next("down"), format!("h_{}", i + 1));
        m = m
            .node("Sigmoid", &[&gate], &[&sig], vec![])
            .node("Mul", &[&gate, &sig], &[&silu], vec![])
            .node("Mul", &[&silu, &up], &[&act], vec![])
            .node("MatMul", &[&act, &format!("{p}.down_proj")], &[&down], vec![])
            .node("Add", &[&h_attn, &down], &[&next], vec![]);
        h = next;
    }
    m = m.initializer("norm", &f32t(vec![c.hidden], w.final_norm.clone()));
    let x;
    (m, x) = rms_norm(m, &mut names, &h, "norm");
    let table = match &w.output {
        Some(out) => {
            m = matrix_value(m, "lm_head", out, c.vocab, c.hidden, false)?;
            "lm_head"
        }
        None => "embed_tokens",
    };
    // Logits through the [vocab, hidden] table itself (Gemm transB): no transposed copy.
    Ok(m.node("Reshape", &[&x, "rows_shape"], &["rows"], vec![])
        .node("Gemm", &["rows", table], &["logit_rows"], vec![("transB", Attr::Int(1))])
        .node("Concat", &["ids_shape", "vocab_1d"], &["logits_shape"], vec![("axis", Attr::Int(0))])
        .node("Reshape", &["logit_rows", "logits_shape"], &["logits"], vec![])
        .output_named("logits", DataType::F32, &["batch_size", "sequence_length", &c.vocab.to_string()])
        .build())
}

/// `x / sqrt(mean(x²) + eps) · weight` over the last axis.
fn rms_norm(m: ModelBuilder, names: &mut Names, x: &str, weight: &str) -> (ModelBuilder, String) {
    let (sq, mean, shifted, root, normed, out) =
        (names.next("sq"), names.next("mean"), names.next("shifted"), names.next("root"), names.next("normed"), names.next("rms"));
    let m = m
        .node("Mul", &[x, x], &[&sq], vec![])
        .node("ReduceMean", &[&sq, "axes_last"], &[&mean], vec![("keepdims", Attr::Int(1))])
        .node("Add", &[&mean, "eps"], &[&shifted], vec![])
        .node("Sqrt", &[&shifted], &[&root], vec![])
        .node("Div", &[x, &root], &[&normed], vec![])
        .node("Mul", &[&normed, weight], &[&out], vec![]);
    (m, out)
}

/// Hugging Face's rotary embedding on `[batch, heads, seq, hd]`: `x·cos + rotate_half(x)·sin`,
/// `rotate_half(x) = [−x₂, x₁]` for the halves `x₁, x₂`.
fn rotary(m: ModelBuilder, names: &mut Names, x: &str) -> (ModelBuilder, String) {
    let (first, second, neg, rotated, a, b, out) = (
        names.next("x1"),
        names.next("x2"),
        names.next("neg"),
        names.next("rot"),
        names.next("xcos"),
        names.next("rsin"),
        names.next("roped"),
    );
    let m = m
        .node("Slice", &[x, "half_start", "half_mid", "axes_last"], &[&first], vec![])
        .node("Slice", &[x, "half_mid", "half_end", "axes_last"], &[&second], vec![])
        .node("Neg", &[&second], &[&neg], vec![])
        .node("Concat", &[&neg, &first], &[&rotated], vec![("axis", Attr::Int(-1))])
        .node("Mul", &[x, "cos"], &[&a], vec![])
        .node("Mul", &[&rotated, "sin"], &[&b], vec![])
        .node("Add", &[&a, &b], &[&out], vec![]);
    (m, out)
}
