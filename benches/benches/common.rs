//! What the model benches share: the real models with their committed inputs, and
//! onnxruntime's quantized forms of MiniLM, made once into `models/cache/`.

use distq_converter::models::workspace_root;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `(name, model under the models folder, inputs under models/data)`.
pub const FP32_CASES: &[(&str, &str, &str)] = &[
    ("minilm_8x64", "minilm/all-MiniLM-L6-v2.onnx", "minilm_8x64.npz"),
    ("ppocr_det_192x384", "ppocr/ch_PP-OCRv4_det_infer.onnx", "ppocr_det.npz"),
    ("ppocr_rec_48x320", "ppocr/ch_PP-OCRv4_rec_infer.onnx", "ppocr_rec.npz"),
    ("ppocr_cls_48x192", "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_cls.npz"),
    ("silero_vad_512", "silero_vad/silero_vad_16k_op15.onnx", "silero_vad.npz"),
];

/// The Python with onnxruntime: `$DISTQ_PYTHON`, else tools/test.sh's `.venv`.
pub fn python() -> String {
    std::env::var("DISTQ_PYTHON").unwrap_or_else(|_| workspace_root().join(".venv/bin/python").to_string_lossy().into_owned())
}

/// onnxruntime's quantized form `kind` (see `tools/ort_quantize.py`) of MiniLM `fp32`, made
/// on first use; `None` with a message saying what is missing.
pub fn quantized(fp32: &Path, kind: &str) -> Option<PathBuf> {
    let root = workspace_root();
    let out = root.join("models/cache").join(format!("minilm_{kind}.onnx"));
    if out.exists() {
        return Some(out);
    }
    std::fs::create_dir_all(out.parent()?).ok()?;
    let python = python();
    let ok =
        Command::new(&python).arg(root.join("tools/ort_quantize.py")).arg(kind).arg(fp32).arg(&out).status().is_ok_and(|s| s.success());
    if !ok {
        eprintln!("bench minilm {kind}: could not run tools/ort_quantize.py with {python} (run tools/test.sh once, or set DISTQ_PYTHON)");
    }
    ok.then_some(out)
}
