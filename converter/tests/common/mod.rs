//! Helpers shared by the real-model tests: where models live, and the onnxruntime peer.

#![allow(dead_code)]

use distq_runtime::Tensor;
use std::path::{Path, PathBuf};

/// A model file; fails loudly when it is missing.
pub fn model(rel: &str) -> PathBuf {
    distq_converter::models::model_path(rel)
        .unwrap_or_else(|| panic!("model {rel} is missing: run models/fetch.sh (or set DISTQ_MODELS_DIR)"))
}

/// A committed input file under `models/data`.
pub fn data(name: &str) -> PathBuf {
    distq_converter::models::data_path(name)
}

/// Runs one of the `tools/` Python scripts with `$DISTQ_PYTHON`.
pub fn python_tool(script: &str, args: &[&std::ffi::OsStr]) {
    distq_converter::reference::python_tool(script, args).unwrap();
}

/// Runs `model` on `inputs` in onnxruntime through `$DISTQ_PYTHON` (the test script's venv).
pub fn onnxruntime_outputs(model: &Path, inputs: &Path) -> Vec<(String, Tensor)> {
    onnxruntime_outputs_in(model, inputs, "optimized")
}

/// [`onnxruntime_outputs`] with onnxruntime's graph optimizations `"optimized"` (default),
/// `"unoptimized"` (Q/DQ pairs run as written) or `"int8-compute"` (optimized, int4 blocks at
/// its default accuracy level 4, see `tools/ort_reference.py`).
pub fn onnxruntime_outputs_in(model: &Path, inputs: &Path, mode: &str) -> Vec<(String, Tensor)> {
    distq_converter::reference::onnxruntime_outputs(model, inputs, mode).unwrap()
}

/// Largest |a - b| and the largest |b| (the output's scale).
pub fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    distq_converter::reference::max_diff(a, b).unwrap()
}

/// Mean-pooled (over the attention mask) sentence embeddings of a [batch, seq, hidden] output.
pub fn pooled(hidden: &Tensor, mask: &Tensor) -> Vec<Vec<f32>> {
    let (h, m) = (hidden.as_slice::<f32>().unwrap(), mask.as_slice::<i64>().unwrap());
    let (batch, seq, dim) = (hidden.shape()[0], hidden.shape()[1], hidden.shape()[2]);
    (0..batch)
        .map(|b| {
            let mut acc = vec![0f32; dim];
            let count = (0..seq).filter(|&t| m[b * seq + t] != 0).count().max(1) as f32;
            for t in (0..seq).filter(|&t| m[b * seq + t] != 0) {
                acc.iter_mut().zip(&h[(b * seq + t) * dim..][..dim]).for_each(|(a, &v)| *a += v);
            }
            acc.iter().map(|v| v / count).collect()
        })
        .collect()
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The training epochs' losses (`train_loss`) in a training run's JSON-lines log.
pub fn epoch_losses(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["train_loss"].as_f64())
        .collect()
}

/// The step of the last checkpoint in `dir` (its `state.json`), 0 before the first.
pub fn checkpoint_step(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("state.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["progress"]["step"].as_u64()).unwrap_or(0) as usize
}
