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
#[ignore = "real models: run by tools/test.sh"]
fn minilm_sequence_lengths_share_one_plan() {
    // The 8 sentences cut to 16, 17, … 24 tokens: the second length makes a plan for every
    // later one (the sequence dims grow together), whose outputs are those of a plan made for
    // each length alone, bit for bit.
    let path = model("minilm/all-MiniLM-L6-v2.onnx");
    let full = read_npz(&data("minilm_8x64.npz")).unwrap();
    let cut = |len: usize| -> Vec<(String, distq_runtime::Tensor)> {
        full.iter()
            .map(|(name, t)| {
                let rows: Vec<i64> = t.as_slice::<i64>().unwrap().chunks(t.shape()[1]).flat_map(|row| row[..len].to_vec()).collect();
                (name.clone(), distq_runtime::Tensor::from_vec(vec![t.shape()[0], len], rows).unwrap())
            })
            .collect()
    };
    let session = Session::load(&path).unwrap();
    for len in 16..=24 {
        let ours = session.run(cut(len)).unwrap();
        let alone = Session::load(&path).unwrap().run(cut(len)).unwrap();
        for ((name, a), (_, b)) in ours.iter().zip(&alone) {
            assert_eq!(a.shape(), b.shape(), "'{name}' at {len} tokens");
            assert!(a.as_le_bytes() == b.as_le_bytes(), "'{name}' at {len} tokens differs from a plan for {len} tokens alone");
        }
    }
    assert_eq!(session.plans_made(), 2, "16 tokens, then one plan for 17 to 24");
    let shapes: Vec<_> = cut(24).iter().map(|(_, t)| (t.dtype(), t.shape().to_vec())).collect();
    let alone = Session::load(&path).unwrap().plan_for(&shapes).unwrap();
    println!(
        "MiniLM at 24 tokens: {} steps planned for the family, {} for 24 tokens alone",
        session.plan_for(&shapes).unwrap().num_steps(),
        alone.num_steps()
    );
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
