//! Models made by onnxruntime's own quantizer run here and match it.
//!
//! The dynamic int8 MiniLM (MatMulInteger + DynamicQuantizeLinear, quantized embeddings) is
//! numerically chaotic: a 1e-6 float difference flips a dynamic quantization step, and the
//! flips compound over 6 layers. onnxruntime's own optimized and unoptimized paths agree only
//! at pooled cosine ≈ 0.992 on these sentences (while every integer intermediate of layer 0
//! matches ours exactly). So the test asserts what is meaningful: ours tracks fp32 at least
//! as well as onnxruntime's int8 does (minus a small margin), and agrees with both of
//! onnxruntime's paths about as well as they agree with each other.

mod common;

use common::{cosine, data, model, onnxruntime_outputs, pooled, python_tool};
use distq_converter::npz::read_npz;
use distq_runtime::Session;

fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).fold(1.0, f32::min)
}

fn mean_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).sum::<f32>() / a.len() as f32
}

#[test]
#[ignore = "real models + onnxruntime: run by tools/test.sh"]
fn minilm_dynamic_int8_from_onnxruntime_quantizer() {
    let fp32 = model("minilm/all-MiniLM-L6-v2.onnx");
    let int8 = std::env::temp_dir().join(format!("distq-minilm-dyn-int8-{}.onnx", std::process::id()));
    python_tool("ort_quantize.py", &["dynamic".as_ref(), fp32.as_os_str(), int8.as_os_str()]);
    let inputs_path = data("minilm_8x64.npz");
    let inputs = read_npz(&inputs_path).unwrap();
    let mask = inputs.iter().find(|(n, _)| n == "attention_mask").unwrap().1.clone();

    let ours = &Session::load(&int8).unwrap().run(inputs.clone()).unwrap()[0].1;
    let reference = &onnxruntime_outputs(&fp32, &inputs_path)[0].1;
    let theirs = &onnxruntime_outputs(&int8, &inputs_path)[0].1;
    std::fs::remove_file(&int8).ok();
    let (ours, reference, theirs) = (pooled(ours, &mask), pooled(reference, &mask), pooled(theirs, &mask));

    let ours_fp32 = mean_cosine(&ours, &reference);
    let theirs_fp32 = mean_cosine(&theirs, &reference);
    let ours_theirs = min_cosine(&ours, &theirs);
    println!(
        "dynamic int8 MiniLM, pooled cosine: ours↔fp32 {ours_fp32:.4}, onnxruntime-int8↔fp32 {theirs_fp32:.4}, ours↔onnxruntime-int8 (min) {ours_theirs:.4}"
    );
    assert!(ours_fp32 >= theirs_fp32 - 0.002, "ours tracks fp32 at {ours_fp32}, onnxruntime's int8 at {theirs_fp32}");
    assert!(ours_fp32 >= 0.99, "ours↔fp32 {ours_fp32}");
    assert!(ours_theirs >= 0.99, "ours↔onnxruntime int8 {ours_theirs}");
}

/// int4 block-32 weight-only MiniLM in both of onnxruntime's forms (com.microsoft
/// MatMulNBits, and opset-21 DequantizeLinear(int4, block_size) → MatMul), against
/// onnxruntime at accuracy level 0 (exact f32 dequantization): every sentence's pooled
/// embedding at cosine ≥ 0.999.
#[test]
#[ignore = "real models + onnxruntime: run by tools/test.sh"]
fn minilm_int4_block32_from_onnxruntime_quantizer() {
    let fp32 = model("minilm/all-MiniLM-L6-v2.onnx");
    let inputs_path = data("minilm_8x64.npz");
    let inputs = read_npz(&inputs_path).unwrap();
    let mask = inputs.iter().find(|(n, _)| n == "attention_mask").unwrap().1.clone();
    let reference = pooled(&onnxruntime_outputs(&fp32, &inputs_path)[0].1, &mask);
    for kind in ["int4", "int4-qdq"] {
        let int4 = std::env::temp_dir().join(format!("distq-minilm-{kind}-{}.onnx", std::process::id()));
        python_tool("ort_quantize.py", &[kind.as_ref(), fp32.as_os_str(), int4.as_os_str()]);
        let ours = &Session::load(&int4).unwrap().run(inputs.clone()).unwrap()[0].1;
        let theirs = &onnxruntime_outputs(&int4, &inputs_path)[0].1;
        std::fs::remove_file(&int4).ok();
        let (ours, theirs) = (pooled(ours, &mask), pooled(theirs, &mask));
        let ours_theirs = min_cosine(&ours, &theirs);
        println!(
            "{kind} block-32 MiniLM, pooled cosine: ours↔onnxruntime (min) {ours_theirs:.6}, ours↔fp32 {:.4}, onnxruntime↔fp32 {:.4}",
            mean_cosine(&ours, &reference),
            mean_cosine(&theirs, &reference)
        );
        assert!(ours_theirs >= 0.999, "{kind}: ours↔onnxruntime {ours_theirs}");
    }
}
