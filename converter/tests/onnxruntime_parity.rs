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

/// A one-node graph of onnxruntime's contrib op `op` (built by `graph`, its node put in the
/// com.microsoft domain) on `feeds`, in our runtime and in onnxruntime: every output within
/// 1e-5 of its scale.
fn contrib_parity(
    dir: &std::path::Path,
    case: &str,
    graph: distq_runtime::onnx::build::ModelBuilder,
    feeds: Vec<(String, distq_runtime::Tensor)>,
) {
    let mut proto = graph.build();
    proto.graph.as_mut().unwrap().node[0].domain = Some("com.microsoft".into());
    proto.opset_import.push(distq_runtime::onnx::proto::OperatorSetIdProto { domain: Some("com.microsoft".into()), version: Some(1) });
    let path = dir.join(format!("{case}.onnx"));
    std::fs::write(&path, prost::Message::encode_to_vec(&proto)).unwrap();
    let inputs_path = dir.join(format!("{case}.npz"));
    distq_io::npz::write_npz(&inputs_path, &feeds).unwrap();
    let ours = Session::load(&path).unwrap().run(feeds).unwrap();
    let theirs = onnxruntime_outputs(&path, &inputs_path);
    assert_eq!(ours.len(), theirs.len(), "{case}: output count");
    for (name, a) in &ours {
        let b = &theirs.iter().find(|(n, _)| n == name).unwrap().1;
        let (diff, scale) = max_diff(a, b);
        println!("{case} '{name}': max |ours - onnxruntime| {diff:.2e} (scale {scale:.2e})");
        assert!(diff <= 1e-5 * scale.max(1e-3), "{case} output '{name}': {diff} against scale {scale}");
    }
}

/// Deterministic values in [−2, 2).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 250.0 - 2.0).collect()
}

/// onnxruntime's decoder contrib ops (what its fusions and its genai model builder write),
/// on small random graphs: SkipLayerNormalization (with beta and bias) and
/// SkipSimplifiedLayerNormalization (with bias; skip repeated over the batch).
#[test]
#[ignore = "onnxruntime: run by tools/test.sh"]
fn contrib_norms_match_onnxruntime() {
    use distq_runtime::onnx::build::{Attr, ModelBuilder};
    use distq_runtime::{DataType, Tensor};
    let (batch, seq, hidden) = (2usize, 3usize, 16usize);
    let dir = tempfile::tempdir().unwrap();
    let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<_>>();
    for (op, skip_shape, centered) in
        [("SkipLayerNormalization", vec![batch, seq, hidden], true), ("SkipSimplifiedLayerNormalization", vec![seq, hidden], false)]
    {
        let (shape, stat) = ([batch, seq, hidden], [batch, seq, 1]);
        let inputs: &[&str] = if centered { &["x", "skip", "gamma", "beta", "bias"] } else { &["x", "skip", "gamma", "bias"] };
        // The simplified norm has no mean: onnxruntime leaves that output unnamed.
        let outputs: &[&str] = if centered { &["y", "mean", "inv_std", "sum"] } else { &["y", "", "inv_std", "sum"] };
        let mut graph = ModelBuilder::new(17)
            .input("x", DataType::F32, &dims(&shape))
            .input("skip", DataType::F32, &dims(&skip_shape))
            .initializer("gamma", &Tensor::from_vec(vec![hidden], values(hidden, 1)).unwrap())
            .initializer("beta", &Tensor::from_vec(vec![hidden], values(hidden, 2)).unwrap())
            .initializer("bias", &Tensor::from_vec(vec![hidden], values(hidden, 3)).unwrap())
            .node(op, inputs, outputs, vec![("epsilon", Attr::Float(1e-5))])
            .output("y", DataType::F32, &dims(&shape))
            .output("sum", DataType::F32, &dims(&shape))
            .output("inv_std", DataType::F32, &dims(&stat));
        if centered {
            graph = graph.output("mean", DataType::F32, &dims(&stat));
        }
        let feeds = vec![
            ("x".to_string(), Tensor::from_vec(shape.to_vec(), values(batch * seq * hidden, 4)).unwrap()),
            ("skip".to_string(), Tensor::from_vec(skip_shape.clone(), values(skip_shape.iter().product(), 5)).unwrap()),
        ];
        contrib_parity(dir.path(), op, graph, feeds);
    }
}

/// onnxruntime's contrib RotaryEmbedding: a 3-D input with its head size from the caches,
/// positions per token; a 4-D input, interleaved pairs, one position offset; and a 3-D input
/// with 2 heads of which 4 of 8 values rotate.
#[test]
#[ignore = "onnxruntime: run by tools/test.sh"]
fn contrib_rotary_embedding_matches_onnxruntime() {
    use distq_runtime::onnx::build::{Attr, ModelBuilder};
    use distq_runtime::{DataType, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let dims = |s: &[usize]| s.iter().map(|&d| d as i64).collect::<Vec<_>>();
    // (case, input shape, positions, cache width, [interleaved, num_heads, rotary dim])
    let cases = [
        ("rotary_3d", vec![2, 3, 32], vec![0i64, 1, 2, 7, 8, 9], 4, [0, 0, 0]),
        ("rotary_4d_interleaved", vec![2, 2, 3, 8], vec![5], 4, [1, 0, 0]),
        ("rotary_partial", vec![2, 3, 16], vec![3, 4, 5, 0, 1, 2], 2, [0, 2, 4]),
    ];
    for (case, shape, positions, half, [interleaved, heads, rotary_dim]) in cases {
        let cache = 16usize;
        let angles: Vec<f32> = (0..cache * half).map(|i| (i / half) as f32 / (1.0 + (i % half) as f32)).collect();
        let position_shape = if positions.len() == 1 { vec![1] } else { vec![shape[0], positions.len() / shape[0]] };
        let graph = ModelBuilder::new(17)
            .input("x", DataType::F32, &dims(&shape))
            .input("positions", DataType::I64, &dims(&position_shape))
            .initializer("cos", &Tensor::from_vec(vec![cache, half], angles.iter().map(|a| a.cos()).collect()).unwrap())
            .initializer("sin", &Tensor::from_vec(vec![cache, half], angles.iter().map(|a| a.sin()).collect()).unwrap())
            .node(
                "RotaryEmbedding",
                &["x", "positions", "cos", "sin"],
                &["y"],
                vec![
                    ("interleaved", Attr::Int(interleaved)),
                    ("num_heads", Attr::Int(heads)),
                    ("rotary_embedding_dim", Attr::Int(rotary_dim)),
                ],
            )
            .output("y", DataType::F32, &dims(&shape));
        let feeds = vec![
            ("x".to_string(), Tensor::from_vec(shape.clone(), values(shape.iter().product(), 6)).unwrap()),
            ("positions".to_string(), Tensor::from_vec(position_shape, positions).unwrap()),
        ];
        contrib_parity(dir.path(), case, graph, feeds);
    }
}

/// onnxruntime's contrib GroupQueryAttention (4 query heads over 2 KV heads of 16): a prompt
/// without a cache and a token after a cache of 5 (2 sequences each), and Q, K, V packed in
/// one input with the rotary embedding of Q and K done by the op (a prompt, and a token after
/// a cache of 3).
#[test]
#[ignore = "onnxruntime: run by tools/test.sh"]
fn contrib_group_query_attention_matches_onnxruntime() {
    use distq_runtime::onnx::build::{Attr, ModelBuilder};
    use distq_runtime::{DataType, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let (q_heads, kv_heads, head) = (4usize, 2usize, 16usize);
    // (case, new tokens, cached tokens, packed with rotary)
    let cases = [
        ("gqa_prompt", 4usize, 0usize, false),
        ("gqa_token", 1, 5, false),
        ("gqa_packed_rotary_prompt", 3, 0, true),
        ("gqa_packed_rotary_token", 1, 3, true),
    ];
    for (case, new, past, packed) in cases {
        // onnxruntime runs a rotary prompt of several tokens for one sequence only.
        let batch = if packed { 1 } else { 2 };
        let total = past + new;
        let width = if packed { (q_heads + 2 * kv_heads) * head } else { q_heads * head };
        let mut graph = ModelBuilder::new(17)
            .input("query", DataType::F32, &[batch as i64, new as i64, width as i64])
            .input("seqlens_k", DataType::I32, &[batch as i64])
            .input("total_sequence_length", DataType::I32, &[]);
        let mut feeds = vec![
            ("query".to_string(), Tensor::from_vec(vec![batch, new, width], values(batch * new * width, 7)).unwrap()),
            ("seqlens_k".to_string(), Tensor::from_vec(vec![batch], vec![total as i32 - 1; batch]).unwrap()),
            ("total_sequence_length".to_string(), Tensor::from_vec(vec![], vec![total as i32]).unwrap()),
        ];
        let kv_width = kv_heads * head;
        if !packed {
            graph = graph.input("key", DataType::F32, &[batch as i64, new as i64, kv_width as i64]).input(
                "value",
                DataType::F32,
                &[batch as i64, new as i64, kv_width as i64],
            );
            for (name, seed) in [("key", 8), ("value", 9)] {
                feeds.push((name.to_string(), Tensor::from_vec(vec![batch, new, kv_width], values(batch * new * kv_width, seed)).unwrap()));
            }
        }
        if past > 0 {
            let shape = [batch as i64, kv_heads as i64, past as i64, head as i64];
            graph = graph.input("past_key", DataType::F32, &shape).input("past_value", DataType::F32, &shape);
            for (name, seed) in [("past_key", 10), ("past_value", 11)] {
                let n = batch * kv_heads * past * head;
                feeds.push((name.to_string(), Tensor::from_vec(vec![batch, kv_heads, past, head], values(n, seed)).unwrap()));
            }
        }
        let (cache, half) = (16usize, head / 2);
        let angles: Vec<f32> = (0..cache * half).map(|i| (i / half) as f32 / (1.0 + (i % half) as f32)).collect();
        graph = graph
            .initializer("cos", &Tensor::from_vec(vec![cache, half], angles.iter().map(|a| a.cos()).collect()).unwrap())
            .initializer("sin", &Tensor::from_vec(vec![cache, half], angles.iter().map(|a| a.sin()).collect()).unwrap());
        let opt = |present: bool, name: &'static str| if present { name } else { "" };
        let inputs = [
            "query",
            opt(!packed, "key"),
            opt(!packed, "value"),
            opt(past > 0, "past_key"),
            opt(past > 0, "past_value"),
            "seqlens_k",
            "total_sequence_length",
            opt(packed, "cos"),
            opt(packed, "sin"),
        ];
        let inputs: Vec<&str> = inputs[..if packed { 9 } else { 7 }].to_vec();
        let attrs = vec![
            ("num_heads", Attr::Int(q_heads as i64)),
            ("kv_num_heads", Attr::Int(kv_heads as i64)),
            ("do_rotary", Attr::Int(packed as i64)),
        ];
        let present = [batch as i64, kv_heads as i64, total as i64, head as i64];
        graph = graph
            .node("GroupQueryAttention", &inputs, &["output", "present_key", "present_value"], attrs)
            .output("output", DataType::F32, &[batch as i64, new as i64, (q_heads * head) as i64])
            .output("present_key", DataType::F32, &present)
            .output("present_value", DataType::F32, &present);
        contrib_parity(dir.path(), case, graph, feeds);
    }
}
