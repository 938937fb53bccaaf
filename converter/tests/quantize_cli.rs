//! `distq quantize` on a small synthetic model (an embedding table, two MatMuls): every
//! precision writes a loadable QDQ file with the promised size order and accuracy, mixed
//! precision meets a size budget, and bad input fails with a message naming the problem and
//! no output file.

use distq_converter::quantize::writer::write_model;
use distq_io::npz::write_npz;
use distq_runtime::testing::ModelBuilder;
use distq_runtime::{DataType, Model, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch folder for one test, removed when the guard drops (also when the test fails).
fn scratch(test: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("distq-quantize-{test}-")).tempdir().unwrap()
}

/// Near-Gaussian values (a sum of 12 uniforms from a 64-bit LCG), like trained weights.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n).map(|_| ((0..12).map(|_| uniform()).sum::<f32>() - 6.0) * scale).collect()
}

/// `ids → Gather(table[500, 64]) → MatMul(64×128) → Relu → MatMul(128×64)`.
fn embedding_model(dir: &Path) -> PathBuf {
    let t = |shape: Vec<usize>, seed| Tensor::from_vec(shape.clone(), values(shape.iter().product(), seed, 0.3)).unwrap();
    let bytes = ModelBuilder::new(17)
        .input("ids", DataType::I64, &[-1, 16])
        .initializer("table", &t(vec![500, 64], 1))
        .initializer("w1", &t(vec![64, 128], 2))
        .initializer("w2", &t(vec![128, 64], 3))
        .node("Gather", &["table", "ids"], &["e"], vec![])
        .node("MatMul", &["e", "w1"], &["h"], vec![])
        .node("Relu", &["h"], &["r"], vec![])
        .node("MatMul", &["r", "w2"], &["y"], vec![])
        .output("y", DataType::F32, &[-1, 16, 64])
        .to_bytes();
    let path = dir.join("model.onnx");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn ids(dir: &Path, name: &str, samples: usize) -> PathBuf {
    let ids: Vec<i64> = (0..samples * 16).map(|i| ((i * 31 + 7) % 500) as i64).collect();
    let path = dir.join(name);
    write_npz(&path, &[("ids".into(), Tensor::from_vec(vec![samples, 16], ids).unwrap())]).unwrap();
    path
}

fn distq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distq")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn every_precision_writes_a_loadable_qdq_model() {
    let scratch = scratch("uniform");
    let dir = scratch.path();
    let (model, calib) = (embedding_model(dir), ids(dir, "calib.npz", 12));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut sizes = Vec::new();
    for precision in ["fp16", "int8", "int4"] {
        let (out, json) = (dir.join(format!("{precision}.onnx")), dir.join(format!("{precision}.json")));
        let (ok, stdout, stderr) = distq(&[
            "quantize",
            &s(&model),
            "-o",
            &s(&out),
            "--calib",
            &s(&calib),
            "--precision",
            precision,
            "--report",
            &s(&json),
            "--block",
            "32",
        ]);
        assert!(ok, "{precision}: {stderr}");
        assert!(stdout.contains("Cosine"), "{stdout}");
        // Without --eval, the final check runs on calibration samples held out of fitting.
        assert!(stdout.contains("no --eval: the last 3 of the 12 calibration samples are held out"), "{stdout}");
        let r = report(&json);
        assert_eq!(r["samples"], 3, "the check's samples");
        let rounding = if precision == "int4" { "gptq" } else { "nearest" };
        assert_eq!(r["rounding"], rounding, "GPTQ by default, for int4 weights");
        let size = r["size_bytes"].as_u64().unwrap();
        assert_eq!(size, std::fs::metadata(&out).unwrap().len(), "{precision}: the report gives the file's size");
        let cosine = r["metric_value"].as_f64().unwrap();
        let floor = if precision == "int4" { 0.98 } else { 0.999 };
        assert!(cosine >= floor, "{precision}: cosine {cosine}");
        let layers = r["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3, "table, w1, w2");
        let want = if precision == "int4" { "int4-b32" } else { precision };
        assert!(layers.iter().all(|l| l["precision"] == want), "{layers:?}");
        // The written file loads, and its weights are the quantized ones, not floats: restored
        // by a DequantizeLinear or Cast each, except int8 MatMuls, which run on integers, and
        // a 4-bit table, which GatherBlockQuantized reads as it is stored.
        let loaded = Model::load(&out).unwrap();
        let ops: Vec<String> = loaded.file().proto.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        let count = |op: &str| ops.iter().filter(|o| *o == op).count();
        let (restore, restored, integer) = match precision {
            "fp16" => ("Cast", 3, 0),
            "int8" => ("DequantizeLinear", 1, 2),
            _ => ("DequantizeLinear", 2, 0),
        };
        let lookup = if precision == "int4" { "GatherBlockQuantized" } else { "Gather" };
        assert_eq!((count(restore), count("MatMulInteger"), count(lookup)), (restored, integer, 1), "{ops:?}");
        sizes.push(size);
    }
    assert!(sizes[0] > sizes[1] && sizes[1] > sizes[2], "fp16 > int8 > int4 bytes: {sizes:?}");
}

#[test]
fn mixed_precision_meets_a_size_budget() {
    let scratch = scratch("mixed");
    let dir = scratch.path();
    let (model, calib, eval) = (embedding_model(dir), ids(dir, "calib.npz", 8), ids(dir, "eval.npz", 5));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (out, json, svg) = (dir.join("mixed.onnx"), dir.join("mixed.json"), dir.join("mixed.svg"));
    // fp32 weights are 192 KB; 60 KB forces int4 on the table and int8 or lower elsewhere.
    let args = ["quantize", &s(&model), "-o", &s(&out), "--calib", &s(&calib), "--eval", &s(&eval), "--max-size-mb", "0.06"];
    let (ok, stdout, stderr) = distq(&[&args[..], &["--report", &s(&json), "--plot", &s(&svg), "--external-data"]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("← written"), "{stdout}");
    let r = report(&json);
    assert!(r["size_bytes"].as_u64().unwrap() <= 60_000, "{}", r["size_bytes"]);
    assert_eq!(
        r["size_bytes"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len() + std::fs::metadata(dir.join("mixed.onnx.data")).unwrap().len()
    );
    assert_eq!(r["samples"], 5);
    for layer in r["layers"].as_array().unwrap() {
        // The table's rows are 64 long, a power of two: it may also take 4-bit blocks of a
        // whole row. Matmuls may take 4-bit blocks with power-of-two scales (int8 speed), a
        // table has no use for them.
        let measured: Vec<&str> = layer["losses"].as_array().unwrap().iter().map(|l| l[0].as_str().unwrap()).collect();
        let want = if layer["op"] == "Gather" {
            &["fp16", "int8", "int4-b32", "int4-b64"][..]
        } else {
            &["fp16", "int8", "int4-b32", "int4-b32-pow2"]
        };
        assert_eq!(measured, want, "{layer}");
        // MatMul layers are timed at fp32 and at each candidate; the table lookup is not.
        let timed = if layer["op"] == "MatMul" { 5 } else { 0 };
        assert_eq!(layer["ms"].as_array().unwrap().len(), timed, "{layer}");
    }
    assert!(r["fp32_ms_per_sample"].as_f64().unwrap() > 0.0 && r["predicted_ms_per_sample"].as_f64().unwrap() > 0.0);
    assert!(r["front"].as_array().unwrap().iter().all(|p| p["ms_per_sample"].as_f64().is_some()));
    assert!(stdout.contains("time per sample on this machine: fp32"), "{stdout}");
    assert!(r["front"].as_array().unwrap().len() >= 4);
    // A speed goal no precision reaches fails, naming it, and writes nothing.
    let (slow, slow_json) = (dir.join("too_fast.onnx"), dir.join("too_fast.json"));
    let goal = ["--min-speedup", "1000", "--report", &s(&slow_json)];
    let args = ["quantize", &s(&model), "-o", &s(&slow), "--calib", &s(&calib), "--eval", &s(&eval), "--max-size-mb", "0.06"];
    let (ok, _, stderr) = distq(&[&args[..], &goal].concat());
    assert!(!ok && stderr.contains("speed goal not reachable within 0.06 MB"), "{stderr}");
    assert!(!slow.exists() && !slow_json.exists(), "nothing is written when the goal fails");
    // The plot names the layers and their precisions, and gives its axes values.
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    for layer in r["layers"].as_array().unwrap() {
        let label = format!("{}: {}</title>", layer["name"].as_str().unwrap(), layer["precision"].as_str().unwrap());
        assert!(plot.contains(&label), "{label} missing from the plot");
    }
    assert!(plot.contains(">1e-7</text>") && plot.contains(" MB</text>") && plot.contains(" ms</text>"), "axis values");
    assert!(plot.contains("written: "), "the written point on the time front");
    // A table is written as DequantizeLinear → Gather, and at 4 bits (a tighter budget) as
    // onnxruntime's GatherBlockQuantized, which gathers rows before dequantizing them
    // (standard ONNX has no gather of 4-bit values).
    let lookup = |out: &Path, json: &Path| {
        let table = report(json)["layers"].as_array().unwrap().iter().find(|l| l["op"] == "Gather").unwrap()["precision"].clone();
        let written = Model::load(out).unwrap().file().proto.clone();
        let graph = written.graph.as_ref().unwrap();
        let node = graph.node.iter().find(|n| n.output == ["e"]).unwrap();
        let microsoft = written.opset_import.iter().any(|o| o.domain.as_deref() == Some("com.microsoft"));
        let dequantized = graph.node.iter().any(|n| n.output == ["table"] && n.op_type.as_deref() == Some("DequantizeLinear"));
        (table.as_str().unwrap().to_string(), node.op_type.clone().unwrap(), node.domain.clone(), microsoft, dequantized)
    };
    // The search's pick at this budget may be either; each is written in its own form.
    let (precision, op, domain, microsoft, dequantized) = lookup(&out, &json);
    match precision.as_str() {
        "int8" => assert_eq!((op.as_str(), domain.as_deref(), microsoft, dequantized), ("Gather", None, false, true)),
        _ => assert_eq!(
            (op.as_str(), domain.as_deref(), microsoft, dequantized),
            ("GatherBlockQuantized", Some("com.microsoft"), true, false)
        ),
    }
    let (int8, int8_json) = (dir.join("int8.onnx"), dir.join("int8.json"));
    let args = ["quantize", &s(&model), "-o", &s(&int8), "--calib", &s(&calib), "--eval", &s(&eval), "--precision", "int8"];
    let (ok, _, stderr) = distq(&[&args[..], &["--report", &s(&int8_json)]].concat());
    assert!(ok, "{stderr}");
    assert_eq!(lookup(&int8, &int8_json), ("int8".into(), "Gather".into(), None, false, true));
    let (tight, tight_json) = (dir.join("tight.onnx"), dir.join("tight.json"));
    let args = ["quantize", &s(&model), "-o", &s(&tight), "--calib", &s(&calib), "--eval", &s(&eval), "--max-size-mb", "0.032"];
    let (ok, _, stderr) = distq(&[&args[..], &["--report", &s(&tight_json)]].concat());
    assert!(ok, "{stderr}");
    let (precision, op, domain, microsoft, dequantized) = lookup(&tight, &tight_json);
    assert!(precision.starts_with("int4-b"), "{precision}");
    assert_eq!((op.as_str(), domain.as_deref(), microsoft, dequantized), ("GatherBlockQuantized", Some("com.microsoft"), true, false));
    // A model whose weights are in an external data file quantizes the same.
    let external = dir.join("external.onnx");
    let fp32 = Model::load(&model).unwrap();
    write_model(&external, &fp32.file().proto, true).unwrap();
    assert!(dir.join("external.onnx.data").exists());
    let again = dir.join("again.onnx");
    let (ok, _, stderr) =
        distq(&["quantize", &s(&external), "-o", &s(&again), "--calib", &s(&calib), "--precision", "int8", "--report", &s(&json)]);
    assert!(ok, "{stderr}");
    let r = report(&json);
    assert_eq!(r["fp32_size_bytes"].as_u64().unwrap(), std::fs::metadata(&model).unwrap().len(), "external weights counted");
    assert!(r["metric_value"].as_f64().unwrap() >= 0.999);
}

/// `x[N, 4, 8, 8] → Conv(16×4×3×3, bias) → Relu → Conv(16×16×1×1, bias)`.
fn conv_model(dir: &Path) -> PathBuf {
    let t = |shape: Vec<usize>, seed| Tensor::from_vec(shape.clone(), values(shape.iter().product(), seed, 0.3)).unwrap();
    let bytes = ModelBuilder::new(17)
        .input("x", DataType::F32, &[-1, 4, 8, 8])
        .initializer("w1", &t(vec![16, 4, 3, 3], 4))
        .initializer("b1", &t(vec![16], 5))
        .initializer("w2", &t(vec![16, 16, 1, 1], 6))
        .initializer("b2", &t(vec![16], 7))
        .node("Conv", &["x", "w1", "b1"], &["h"], vec![])
        .node("Relu", &["h"], &["r"], vec![])
        .node("Conv", &["r", "w2", "b2"], &["y"], vec![])
        .output("y", DataType::F32, &[-1, 16, 6, 6])
        .to_bytes();
    let path = dir.join("conv.onnx");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// With `--observer`, int8 layers' inputs are quantized statically: one QuantizeLinear →
/// DequantizeLinear pair per input, int32 biases, run by our runtime as integer convolutions,
/// close to fp32 with every observer.
#[test]
fn observers_quantize_activations_statically() {
    let scratch = scratch("observer");
    let dir = scratch.path();
    let model = conv_model(dir);
    let calib = dir.join("images.npz");
    write_npz(&calib, &[("x".into(), Tensor::from_vec(vec![8, 4, 8, 8], values(8 * 256, 9, 1.0)).unwrap())]).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for observer in ["minmax", "percentile", "entropy", "mse"] {
        let (out, json) = (dir.join(format!("{observer}.onnx")), dir.join(format!("{observer}.json")));
        let args = ["quantize", &s(&model), "-o", &s(&out), "--calib", &s(&calib), "--precision", "int8", "--observer", observer];
        let (ok, _, stderr) = distq(&[&args[..], &["--report", &s(&json)]].concat());
        assert!(ok, "{observer}: {stderr}");
        let r = report(&json);
        assert_eq!(r["observer"], observer);
        let cosine = r["metric_value"].as_f64().unwrap();
        assert!(cosine >= 0.99, "{observer}: cosine {cosine}");
        for layer in r["layers"].as_array().unwrap() {
            let (scale, zero) = (layer["activation"][0].as_f64().unwrap(), layer["activation"][1].as_u64().unwrap());
            assert!(scale > 0.0 && zero <= 255, "{observer}: {layer}");
        }
        let loaded = Model::load(&out).unwrap();
        let graph = loaded.file().proto.graph.as_ref().unwrap();
        let count = |op: &str| graph.node.iter().filter(|n| n.op_type.as_deref() == Some(op)).count();
        assert_eq!(count("QuantizeLinear"), 2, "{observer}: one per conv input");
        assert_eq!(count("DequantizeLinear"), 6, "{observer}: 2 inputs, 2 weights, 2 biases");
        let int32 = graph.initializer.iter().filter(|t| t.data_type == Some(DataType::I32.onnx_code())).count();
        assert_eq!(int32, 2, "{observer}: int32 biases");
        // Our runtime runs both convolutions on the integer kernels.
        let (ok, stdout, stderr) = distq(&["run", &s(&out), "--input", &s(&calib), "--profile"]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("QLinearConv") && !stdout.lines().any(|l| l.starts_with("Conv ")), "{observer}: {stdout}");
    }
}

#[test]
fn bad_input_is_named_and_writes_nothing() {
    let scratch = scratch("bad");
    let dir = scratch.path();
    let model = embedding_model(dir);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let npz = |name: &str, arrays: Vec<(&str, Tensor)>| {
        let path = dir.join(name);
        write_npz(&path, &arrays.into_iter().map(|(n, t)| (n.to_string(), t)).collect::<Vec<_>>()).unwrap();
        path
    };
    let wrong_name = npz("wrong_name.npz", vec![("tokens", Tensor::from_vec(vec![2, 16], vec![1i64; 32]).unwrap())]);
    let wrong_dtype = npz("wrong_dtype.npz", vec![("ids", Tensor::from_vec(vec![2, 16], vec![1f32; 32]).unwrap())]);
    let wrong_rank = npz("wrong_rank.npz", vec![("ids", Tensor::from_vec(vec![32], vec![1i64; 32]).unwrap())]);
    let empty = npz("empty.npz", vec![("ids", Tensor::from_vec(vec![0, 16], Vec::<i64>::new()).unwrap())]);
    let good = ids(dir, "good.npz", 4);
    let plain = dir.join("plain.onnx");
    let relu = ModelBuilder::new(17).input("ids", DataType::I64, &[-1, 16]).node("Neg", &["ids"], &["y"], vec![]).output(
        "y",
        DataType::I64,
        &[-1, 16],
    );
    std::fs::write(&plain, relu.to_bytes()).unwrap();
    let out = dir.join("out.onnx");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![s(&model), "--calib".into(), s(&wrong_name)], "no array named 'ids'"),
        (vec![s(&model), "--calib".into(), s(&wrong_dtype)], "array 'ids' is float, the model's input is int64"),
        (vec![s(&model), "--calib".into(), s(&wrong_rank)], "array 'ids' has shape [32], the model's input has rank 2"),
        (vec![s(&model), "--calib".into(), s(&empty)], "calibration set is empty"),
        (vec![s(&plain), "--calib".into(), s(&good)], "no quantizable layer"),
        (vec![s(&model), "--calib".into(), s(&good), "--max-size-mb".into(), "0.001".into()], "budget not reachable"),
        (vec![s(&model), "--calib".into(), s(&good), "--block".into(), "48".into()], "--block 48"),
        (vec![s(&model), "--calib".into(), s(&dir.join("missing.npz"))], "missing.npz"),
        (vec![s(&model), "--calib".into(), s(&good), "--observer".into(), "median".into()], "invalid value 'median' for '--observer"),
    ];
    for (args, want) in cases {
        let mut full = vec!["quantize".to_string(), "-o".into(), s(&out)];
        full.extend(args);
        let (ok, _, stderr) = distq(&full.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!ok, "{full:?} succeeded");
        assert!(stderr.contains(want), "{full:?}: expected '{want}' in: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!out.exists(), "{full:?} left an output file");
        let leftovers: Vec<_> =
            std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains(".tmp-")).collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

/// `--compact-names`: the same model with short tensor ids and no node names — smaller, the
/// same results, and the graph's inputs and outputs named as before.
#[test]
fn compact_names_shrink_the_file_and_keep_results() {
    let scratch = scratch("compact");
    let dir = scratch.path();
    let model = conv_model(dir);
    let calib = dir.join("images.npz");
    write_npz(&calib, &[("x".into(), Tensor::from_vec(vec![4, 4, 8, 8], values(4 * 256, 3, 1.0)).unwrap())]).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut written = Vec::new();
    for extra in [None, Some("--compact-names")] {
        let (out, json) = (dir.join(format!("{extra:?}.onnx")), dir.join(format!("{extra:?}.json")));
        let args = ["quantize", &s(&model), "-o", &s(&out), "--calib", &s(&calib), "--precision", "int8", "--report", &s(&json)];
        let (ok, _, stderr) = distq(&[&args[..], extra.as_slice()].concat());
        assert!(ok, "{stderr}");
        written.push((Model::load(&out).unwrap(), report(&json)));
    }
    let [(kept, kept_report), (compact, compact_report)] = &written[..] else { unreachable!() };
    assert!(compact_report["size_bytes"].as_u64() < kept_report["size_bytes"].as_u64());
    assert_eq!(compact_report["metric_value"], kept_report["metric_value"], "the same computation");
    assert_eq!(compact.inputs()[0].name, kept.inputs()[0].name);
    assert_eq!(compact.outputs()[0].name, kept.outputs()[0].name);
    let graph = compact.file().proto.graph.as_ref().unwrap();
    assert!(graph.node.iter().all(|n| n.name.is_none()));
    assert!(graph.initializer.iter().all(|t| t.name.as_deref().is_some_and(|n| n.starts_with('_'))));
}
