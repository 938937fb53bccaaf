//! Small ONNX models and helpers for tests, docs and hostile-input suites (models are built with
//! [`ModelBuilder`]).

pub use crate::onnx::build::{Attr, ModelBuilder, tensor_proto};
use crate::tensor::{DataType, Tensor};

/// `y = x + 1` over a float vector `x` of symbolic length.
pub fn add_one_model() -> Vec<u8> {
    ModelBuilder::new(17)
        .input("x", DataType::F32, &[-1])
        .initializer("one", &Tensor::scalar(1.0f32))
        .node("Add", &["x", "one"], &["y"], vec![])
        .output("y", DataType::F32, &[-1])
        .to_bytes()
}

/// A `tokenizer.json` for [`bigram_decoder`]: its 8 tokens are the words `w0`..`w7`, split at
/// whitespace (word-level, no decoder: text pieces after the first start with a space).
pub fn bigram_tokenizer_json() -> String {
    let vocab: Vec<String> = (0..8).map(|i| format!("\"w{i}\": {i}")).collect();
    format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {{"type": "WhitespaceSplit"}}, "post_processor": null, "decoder": null,
        "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "w0"}}}}"#,
        vocab.join(", ")
    )
}

/// A toy decoder in Optimum's names, of 8 tokens: after token `t` the most likely next token is
/// `(3t + 1) mod 8`, and its cache (one KV head of width 1) holds every token fed so far, as
/// floats. With `past_shape_output`, it also outputs the shape of layer 0's past keys, a
/// second reader of the cache that keeps it from being made token-major.
pub fn bigram_decoder(past_shape_output: bool) -> Vec<u8> {
    const V: usize = 8;
    let table: Vec<f32> = (0..V * V).map(|i| if i % V == (3 * (i / V) + 1) % V { 5.0 } else { (i % V) as f32 * 0.1 }).collect();
    let mut m = ModelBuilder::new(17)
        .input_named("input_ids", DataType::I64, &["batch", "sequence"])
        .input_named("attention_mask", DataType::I64, &["batch", "total"])
        .input_named("position_ids", DataType::I64, &["batch", "sequence"])
        .initializer("table", &Tensor::from_vec(vec![V, V], table).expect("a V × V table"))
        .initializer("axes", &Tensor::from_vec(vec![2], vec![1i64, 3]).expect("two axes"))
        .node("Gather", &["table", "input_ids"], &["logits"], vec![])
        .node("Cast", &["input_ids"], &["ids"], vec![("to", Attr::Int(1))])
        .node("Unsqueeze", &["ids", "axes"], &["new"], vec![]);
    for kind in ["key", "value"] {
        let (past, present) = (format!("past_key_values.0.{kind}"), format!("present.0.{kind}"));
        m = m
            .input_named(&past, DataType::F32, &["batch", "1", "past", "1"])
            .node("Concat", &[&past, "new"], &[&present], vec![("axis", Attr::Int(2))])
            .output_named(&present, DataType::F32, &["batch", "1", "total", "1"]);
    }
    if past_shape_output {
        m = m.node("Shape", &["past_key_values.0.key"], &["past_shape"], vec![]).output_named("past_shape", DataType::I64, &["4"]);
    }
    m.output_named("logits", DataType::F32, &["batch", "sequence", "8"]).to_bytes()
}

/// Writes named tensors to `dir` in the plain format the C and Java wrapper tests read and
/// write: `dir/<manifest>` has one line per tensor, `name dtype-code rank dims… file`, and
/// each file holds the raw little-endian elements.
///
/// ```
/// use distq_runtime::Tensor;
/// use distq_runtime::testing::{read_raw_tensors, write_raw_tensors};
/// let dir = std::env::temp_dir().join(format!("distq-raw-doc-{}", std::process::id()));
/// let t = vec![("x".to_string(), Tensor::from_vec(vec![2], vec![1i64, 2])?)];
/// write_raw_tensors(&dir, "inputs.txt", &t).unwrap();
/// let back = read_raw_tensors(&dir, "inputs.txt").unwrap();
/// assert_eq!(back[0].1.as_slice::<i64>()?, &[1, 2]);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), distq_runtime::Error>(())
/// ```
pub fn write_raw_tensors(dir: &std::path::Path, manifest: &str, tensors: &[(String, Tensor)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stem = manifest.trim_end_matches(".txt");
    let mut lines = String::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let file = format!("{stem}{i}.bin");
        std::fs::write(dir.join(&file), t.as_le_bytes())?;
        let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        lines += &format!("{name} {} {} {} {file}\n", t.dtype().onnx_code(), t.shape().len(), dims.join(" "));
    }
    std::fs::write(dir.join(manifest), lines)
}

/// Reads what [`write_raw_tensors`] (or a wrapper test) wrote.
pub fn read_raw_tensors(dir: &std::path::Path, manifest: &str) -> std::io::Result<Vec<(String, Tensor)>> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {what}", dir.join(manifest).display()));
    let text = std::fs::read_to_string(dir.join(manifest))?;
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<usize>().ok()).ok_or_else(|| bad(format!("bad line '{line}'")));
            let dtype = fields
                .get(1)
                .and_then(|f| f.parse().ok())
                .and_then(DataType::from_onnx)
                .ok_or_else(|| bad(format!("bad dtype in '{line}'")))?;
            let rank = number(2)?;
            let shape = (0..rank).map(|d| number(3 + d)).collect::<std::io::Result<Vec<usize>>>()?;
            let file = fields.get(3 + rank).ok_or_else(|| bad(format!("no file in '{line}'")))?;
            let bytes = std::fs::read(dir.join(file))?;
            let t = Tensor::from_le_bytes(dtype, shape, bytes.into()).map_err(|e| bad(e.to_string()))?;
            Ok((fields[0].to_string(), t))
        })
        .collect()
}
