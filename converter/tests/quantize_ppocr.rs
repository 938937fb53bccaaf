//! `distq quantize` on PP-OCR with a top-1 target, on real text-line crops cut from
//! scikit-image's scanned page (`tools/ppocr_crops.py`: calibration and evaluation crops come
//! from different lines). The recognizer: mixed precision within 30 % of its fp32 size at
//! per-step argmax agreement ≥ 0.99, in our runtime and in onnxruntime. The classifier: the
//! same targets at uniform int8 with its batch norms folded and its names compacted (names
//! are a tenth of its int8 file), and the static W8A8 form.

mod common;

use common::{model, onnxruntime_outputs, python_tool};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Crops for `kind` (`cls` or `rec`) and `split` (`calib` or `eval`) in `dir`.
fn crops(dir: &Path, kind: &str, split: &str) -> PathBuf {
    let path = dir.join(format!("{kind}_{split}.npz"));
    python_tool("ppocr_crops.py", &[kind.as_ref(), split.as_ref(), path.as_os_str()]);
    path
}

/// Quantizes `fp32` with `args`; returns the output and its JSON report.
fn quantize(fp32: &Path, out: &Path, calib: &Path, eval: &Path, args: &[&str]) -> serde_json::Value {
    let report = out.with_extension("json");
    let status = Command::new(env!("CARGO_BIN_EXE_distq"))
        .args(["quantize".as_ref(), fp32.as_os_str(), "-o".as_ref(), out.as_os_str(), "--calib".as_ref(), calib.as_os_str()])
        .args(["--eval".as_ref(), eval.as_os_str(), "--metric".as_ref(), "top1".as_ref(), "--report".as_ref(), report.as_os_str()])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "distq quantize {} failed", fp32.display());
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

/// Whether onnxruntime's int8 matmuls on this CPU saturate (x86 without VNNI).
fn onnxruntime_int8_saturates() -> bool {
    #[cfg(target_arch = "x86_64")]
    return !(is_x86_feature_detected!("avx512vnni") || is_x86_feature_detected!("avxvnni"));
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Argmax agreement over the last axis between two outputs.
fn agreement(a: &distq_runtime::Tensor, b: &distq_runtime::Tensor) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let classes = *a.shape().last().unwrap();
    let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
    let argmax = |v: &[f32]| v.iter().enumerate().fold((0, f32::MIN), |m, (i, &x)| if x > m.1 { (i, x) } else { m }).0;
    let pairs: Vec<bool> = a.chunks(classes).zip(b.chunks(classes)).map(|(x, y)| argmax(x) == argmax(y)).collect();
    pairs.iter().filter(|&&same| same).count() as f64 / pairs.len() as f64
}

#[test]
#[ignore = "real models + onnxruntime: run by tools/test.sh"]
fn ppocr_rec_and_cls_within_30_percent_on_real_crops() {
    let scratch = tempfile::Builder::new().prefix("distq-quantize-ppocr-").tempdir().unwrap();
    let dir = scratch.path();
    // (what, model, arguments, the agreement both runtimes must reach). The last quantizes
    // every layer's input too (uint8, ranges from the MSE observer): the static W8A8 form an
    // NPU takes, which costs the small classifier some agreement (onnxruntime's own int8
    // lost 1 in 8 top-1 predictions on a real CNN, ../shared/anchors.md).
    for (what, file, args, floor) in [
        // Sensitivities from 16 of the 27 calibration crops (CI time); verified on all 36.
        (
            "rec",
            "ppocr/ch_PP-OCRv4_rec_infer.onnx",
            vec!["--max-size-mb", "3.25", "--min-metric", "0.99", "--sensitivity-samples", "16"],
            0.99,
        ),
        ("cls", "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", vec!["--precision", "int8", "--compact-names"], 0.99),
        ("cls static", "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", vec!["--precision", "int8", "--observer", "mse"], 0.95),
    ] {
        let kind = &what[..3];
        let fp32 = model(file);
        let (calib, eval) = (crops(dir, kind, "calib"), crops(dir, kind, "eval"));
        let out = dir.join(format!("{}_quantized.onnx", what.replace(' ', "_")));
        let r = quantize(&fp32, &out, &calib, &eval, &args);
        let (size, fp32_size, ours) =
            (r["size_bytes"].as_f64().unwrap(), r["fp32_size_bytes"].as_f64().unwrap(), r["metric_value"].as_f64().unwrap());
        python_tool("check_onnx.py", &[out.as_os_str()]);
        let theirs = agreement(&onnxruntime_outputs(&out, &eval)[0].1, &onnxruntime_outputs(&fp32, &eval)[0].1);
        let mut precisions = std::collections::BTreeMap::new();
        for l in r["layers"].as_array().unwrap() {
            *precisions.entry(l["precision"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
        println!(
            "PP-OCR {what}: {:.3} MB = {:.1} % of fp32 (layers per precision {precisions:?}), top-1 agreement with fp32 over {} crops: ours {ours:.5}, onnxruntime {theirs:.5}",
            size / 1e6,
            100.0 * size / fp32_size,
            r["samples"]
        );
        // onnxruntime's u8·s8 GEMM on x86 without VNNI sums pairs of products in i16
        // (`vpmaddubsw`), which saturates on full-range int8 weights (its docs suggest
        // reduce_range on such machines); ours is exact everywhere. There its agreement is
        // held to a point lower, and the run says so.
        let theirs_floor = if onnxruntime_int8_saturates() { floor - 0.01 } else { floor };
        if theirs_floor < floor {
            println!("PP-OCR {what}: this x86 CPU has no VNNI, where onnxruntime's int8 products saturate: its floor is {theirs_floor}");
        }
        assert!(ours >= floor && theirs >= theirs_floor, "{what}: agreement ours {ours}, onnxruntime {theirs}");
        let samples = r["samples"].as_f64().unwrap();
        assert!((ours - theirs).abs() <= 1.0 / samples + 1e-9, "{what}: ours {ours} and onnxruntime {theirs} differ by more than one crop");
        if what != "cls static" {
            assert!(size <= 0.30 * fp32_size, "{what} at {size} bytes of {fp32_size}");
        }
    }
}
