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

/// onnxruntime's decoder contrib ops (what its fusions and its genai model builder write),
/// on small random graphs: SkipLayerNormalization (with beta and bias) and
/// SkipSimplifiedLayerNormalization (with bias; skip repeated over the batch), every output
/// within 1e-5 of the output's scale.
#[test]
#[ignore = "onnxruntime: run by tools/test.sh"]
fn contrib_decoder_ops_match_onnxruntime() {
    use distq_runtime::onnx::build::{Attr, ModelBuilder};
    use distq_runtime::onnx::proto::OperatorSetIdProto;
    use distq_runtime::{DataType, Tensor};
    let random = |n: usize, seed: u32| -> Vec<f32> {
        (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0).collect()
    };
    let (batch, seq, hidden) = (2usize, 3usize, 16usize);
    let dir = tempfile::tempdir().unwrap();
    // (op, skip shape, with beta, with bias)
    let cases: [(&str, Vec<usize>, bool); 2] =
        [("SkipLayerNormalization", vec![batch, seq, hidden], true), ("SkipSimplifiedLayerNormalization", vec![seq, hidden], false)];
    for (op, skip_shape, beta) in cases {
        let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<_>>();
        let (shape, stat) = ([batch, seq, hidden], [batch, seq, 1]);
        let mut inputs = vec!["x", "skip", "gamma"];
        if beta {
            inputs.push("beta");
        }
        inputs.push("bias");
        let mut b = ModelBuilder::new(17)
            .input("x", DataType::F32, &dims(&shape))
            .input("skip", DataType::F32, &dims(&skip_shape))
            .initializer("gamma", &Tensor::from_vec(vec![hidden], random(hidden, 1)).unwrap())
            .initializer("beta", &Tensor::from_vec(vec![hidden], random(hidden, 2)).unwrap())
            .initializer("bias", &Tensor::from_vec(vec![hidden], random(hidden, 3)).unwrap())
            .node(op, &inputs, &["y", "mean", "inv_std", "sum"], vec![("epsilon", Attr::Float(1e-5))])
            .output("y", DataType::F32, &dims(&shape))
            .output("sum", DataType::F32, &dims(&shape));
        if beta {
            b = b.output("mean", DataType::F32, &dims(&stat)).output("inv_std", DataType::F32, &dims(&stat));
        } else {
            b = b.output("inv_std", DataType::F32, &dims(&stat));
        }
        let mut proto = b.build();
        let graph = proto.graph.as_mut().unwrap();
        graph.node[0].domain = Some("com.microsoft".into());
        if !beta {
            // The simplified norm has no mean: onnxruntime leaves that output unnamed.
            graph.node[0].output[1] = String::new();
        }
        proto.opset_import.push(OperatorSetIdProto { domain: Some("com.microsoft".into()), version: Some(1) });
        let path = dir.path().join(format!("{op}.onnx"));
        std::fs::write(&path, prost::Message::encode_to_vec(&proto)).unwrap();
        let feeds = vec![
            ("x".to_string(), Tensor::from_vec(shape.to_vec(), random(batch * seq * hidden, 4)).unwrap()),
            ("skip".to_string(), Tensor::from_vec(skip_shape.clone(), random(skip_shape.iter().product(), 5)).unwrap()),
        ];
        let inputs_path = dir.path().join(format!("{op}.npz"));
        distq_io::npz::write_npz(&inputs_path, &feeds).unwrap();
        let ours = Session::load(&path).unwrap().run(feeds).unwrap();
        let theirs = onnxruntime_outputs(&path, &inputs_path);
        assert_eq!(ours.len(), theirs.len(), "{op}: output count");
        for (name, a) in &ours {
            let b = &theirs.iter().find(|(n, _)| n == name).unwrap().1;
            let (diff, scale) = max_diff(a, b);
            println!("{op} '{name}': max |ours - onnxruntime| {diff:.2e} (scale {scale:.2e})");
            assert!(diff <= 1e-5 * scale.max(1e-3), "{op} output '{name}': {diff} against scale {scale}");
        }
    }
}
