//! Every shared real model, on real inputs, in our runtime and in onnxruntime: every output
//! must agree within 1e-4 of the output's scale. Also: decode → encode is byte-identical.
//!
//! These read the real models (`models/fetch.sh` or the shared folder) and call onnxruntime
//! through `$DISTQ_PYTHON`, so they are `#[ignore]`d for a bare `cargo test`; `tools/test.sh`
//! (the README's test command, and CI) runs them with `--include-ignored`.

mod common;

use common::{data, max_diff, model, onnxruntime_outputs};
use distq_io::npz::read_npz;
use distq_runtime::Session;

/// Tolerance relative to the largest magnitude of each output.
const TOLERANCE: f32 = 1e-4;

fn parity(model_rel: &str, input: &str) {
    let path = model(model_rel);
    let inputs_path = data(input);
    let session = Session::load(&path).unwrap();
    let ours = session.run(read_npz(&inputs_path).unwrap()).unwrap();
    let theirs = onnxruntime_outputs(&path, &inputs_path);
    assert_eq!(ours.len(), theirs.len(), "output count");
    for (name, a) in &ours {
        let b = &theirs.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("onnxruntime gave no output '{name}'")).1;
        let (diff, scale) = max_diff(a, b);
        println!(
            "{model_rel} output '{name}' {:?}: max |ours - onnxruntime| = {diff:.3e} (scale {scale:.3e}, relative {:.3e})",
            a.shape(),
            diff / scale.max(1e-6)
        );
        assert!(diff <= TOLERANCE * scale.max(1e-3), "{model_rel} output '{name}': max diff {diff} exceeds {TOLERANCE} × scale {scale}");
    }
}

#[test]
#[ignore = "real models + onnxruntime: run by tools/test.sh"]
fn minilm_matches_onnxruntime() {
    parity("minilm/all-MiniLM-L6-v2.onnx", "minilm_8x64.npz");
}

#[test]
#[ignore = "real models + onnxruntime: run by tools/test.sh"]
fn ppocr_det_matches_onnxruntime() {
    parity("ppocr/ch_PP-OCRv4_det_infer.onnx", "ppocr_det.npz");
}

#[test]
#[ignore = "real models + onnxruntime: run by tools/test.sh"]
fn ppocr_rec_matches_onnxruntime() {
    parity("ppocr/ch_PP-OCRv4_rec_infer.onnx", "ppocr_rec.npz");
}

#[test]
#[ignore = "real models + onnxruntime: run by tools/test.sh"]
fn ppocr_cls_matches_onnxruntime() {
    parity("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_cls.npz");
}

#[test]
#[ignore = "real models + onnxruntime: run by tools/test.sh"]
fn silero_vad_matches_onnxruntime() {
    parity("silero_vad/silero_vad_16k_op15.onnx", "silero_vad.npz");
}

#[test]
#[ignore = "real models: run by tools/test.sh"]
fn decode_encode_is_byte_identical() {
    for rel in [
        "minilm/all-MiniLM-L6-v2.onnx",
        "ppocr/ch_PP-OCRv4_det_infer.onnx",
        "ppocr/ch_PP-OCRv4_rec_infer.onnx",
        "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "silero_vad/silero_vad_16k_op15.onnx",
    ] {
        let path = model(rel);
        let original = std::fs::read(&path).unwrap();
        let file = distq_runtime::onnx::OnnxFile::open(&path).unwrap();
        let encoded = file.encode();
        assert!(encoded == original, "{rel}: re-encoding differs ({} vs {} bytes)", encoded.len(), original.len());
        println!("{rel}: {} bytes round-trip byte-identically", original.len());
    }
}
