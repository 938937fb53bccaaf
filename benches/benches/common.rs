//! What the model benches share: the real models with their committed inputs, and
//! onnxruntime's and distq's own quantized forms of MiniLM, made once into `models/cache/`.

use distq_converter::models::{data_path, workspace_root};
use distq_converter::quantize::gptq::Rounding;
use distq_converter::quantize::metric::{Dataset, Metric};
use distq_converter::quantize::{Config, quantize, writer};
use distq_runtime::Model;
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

/// MiniLM `fp32` converted by distq itself, as `distq quantize --max-size-mb 17
/// --min-speedup 2.45 --sensitivity-samples 16` would (calibrated on the committed 256
/// training sentences, verified on the 256 test sentences), made on first use (about a
/// minute) into `models/cache/`; `None` with the reason on stderr.
pub fn distq_quantized(fp32: &Path) -> Option<PathBuf> {
    // Named after the converter's choices that shape it (4-bit blocks with power-of-two
    // scales), so that a file cached by an older converter is not timed in its place.
    let out = workspace_root().join("models/cache/minilm_distq_17mb_2.45x_pow2.onnx");
    if out.exists() {
        return Some(out);
    }
    let convert = || -> anyhow::Result<()> {
        let model = Model::load(fp32)?;
        let calib = Dataset::load(&data_path("sentences_train_256.npz"), &model)?;
        let eval = Dataset::load(&data_path("sentences_test_256.npz"), &model)?;
        let config = Config {
            uniform: None,
            block: 32,
            metric: Metric::Cosine,
            max_size: Some(17_000_000),
            min_metric: None,
            max_latency_ms: None,
            min_speedup: Some(2.45),
            sensitivity_samples: 16,
            batch: 8,
            bias_correction: true,
            observer: None,
            rounding: Rounding::Gptq,
            compact_names: false,
            fixed: None,
        };
        let outcome = quantize(&model, &config, &calib, &eval, &mut |_, _, _| {})?;
        std::fs::create_dir_all(out.parent().expect("a cache folder"))?;
        writer::write_model(&out, &outcome.model, false)?;
        eprintln!(
            "bench: {}",
            outcome.report.table().lines().filter(|l| l.starts_with("size") || l.starts_with("time")).collect::<Vec<_>>().join("; ")
        );
        Ok(())
    };
    match convert() {
        Ok(()) => Some(out),
        Err(e) => {
            eprintln!("bench minilm distq-quantized: {e:#}");
            None
        }
    }
}
