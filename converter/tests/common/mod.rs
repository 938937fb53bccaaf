//! Helpers shared by the real-model tests: where models live, and the onnxruntime peer.

#![allow(dead_code)]

use distq_runtime::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model file; fails loudly when it is missing.
pub fn model(rel: &str) -> PathBuf {
    distq_converter::models::model_path(rel)
        .unwrap_or_else(|| panic!("model {rel} is missing: run models/fetch.sh (or set DISTQ_MODELS_DIR)"))
}

/// A committed input file under `models/data`.
pub fn data(name: &str) -> PathBuf {
    distq_converter::models::data_path(name)
}

/// Runs `model` on `inputs` in onnxruntime through `$DISTQ_PYTHON` (the test script's venv).
pub fn onnxruntime_outputs(model: &Path, inputs: &Path) -> Vec<(String, Tensor)> {
    let python = std::env::var("DISTQ_PYTHON").expect("DISTQ_PYTHON must name a python with onnxruntime (tools/test.sh sets it)");
    let out = std::env::temp_dir().join(format!("distq-ort-{}-{}.npz", std::process::id(), model.file_stem().unwrap().to_string_lossy()));
    let status = Command::new(python)
        .arg(distq_converter::models::workspace_root().join("tools/ort_reference.py"))
        .arg(model)
        .arg(inputs)
        .arg(&out)
        .status()
        .expect("python runs");
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
