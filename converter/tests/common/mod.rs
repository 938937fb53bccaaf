//! Helpers shared by the real-model tests: where models live, and the onnxruntime peer.

#![allow(dead_code)]

use distq_runtime::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Folder holding `minilm/`, `ppocr/`, `silero_vad/`: `$DISTQ_MODELS_DIR`, else the shared
/// folder beside the checkout, else `models/cache` filled by `models/fetch.sh`.
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DISTQ_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    let shared = workspace().join("../shared/models");
    if shared.is_dir() {
        return shared;
    }
    let cache = workspace().join("models/cache");
    assert!(cache.is_dir(), "no models found: run models/fetch.sh (or set DISTQ_MODELS_DIR)");
    cache
}

/// A model file under [`models_dir`]; fails loudly when it is missing.
pub fn model(rel: &str) -> PathBuf {
    let p = models_dir().join(rel);
    assert!(p.is_file(), "model {} is missing: run models/fetch.sh", p.display());
    p
}

/// A committed input file under `models/data`.
pub fn data(name: &str) -> PathBuf {
    workspace().join("models/data").join(name)
}

/// Runs `model` on `inputs` in onnxruntime through `$DISTQ_PYTHON` (the test script's venv).
pub fn onnxruntime_outputs(model: &Path, inputs: &Path) -> Vec<(String, Tensor)> {
    let python = std::env::var("DISTQ_PYTHON").expect("DISTQ_PYTHON must name a python with onnxruntime (tools/test.sh sets it)");
    let out = std::env::temp_dir().join(format!("distq-ort-{}-{}.npz", std::process::id(), model.file_stem().unwrap().to_string_lossy()));
    let status = Command::new(python).arg(workspace().join("tools/ort_reference.py")).arg(model).arg(inputs).arg(&out).status().expect("python runs");
    assert!(status.success(), "onnxruntime failed on {}", model.display());
    let outputs = distq_converter::npz::read_npz(&out).unwrap();
    std::fs::remove_file(out).ok();
    outputs
}

/// Largest |a - b| and the largest |b| (the output's scale).
pub fn max_diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    (diff, scale)
}
