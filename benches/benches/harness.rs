//! Side by side: the same models on the same real inputs in our runtime, onnxruntime (its
//! Python package, `tools/ort_bench.py`) and tract (this crate's dev-dependency only), all
//! on one thread, in one run, with the ratios. `cargo bench -p distq-benches --bench harness`
//! (`DISTQ_PYTHON` names the Python with onnxruntime; tools/test.sh's `.venv` by default).
//! A runtime that cannot run a model gets its error in the table, not a silent gap.

#[path = "common.rs"]
#[allow(dead_code)] // each bench target uses its own part of it
mod common;

use common::{FP32_CASES, distq_quantized, python, quantized};
use distq_converter::models::{data_path, model_path, workspace_root};
use distq_io::npz::read_npz;
use distq_runtime::bench::{BenchOptions, EnergySource};
use distq_runtime::energy::Method;
use distq_runtime::{DataType, Session};
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tract_onnx::prelude::*;

const ITERS: usize = 20;
const WARMUP: usize = 3;

/// p50 latency in ms, or why it could not be measured.
type Timing = Result<f64, String>;

fn ours(model: &Path, inputs: &Path) -> Timing {
    let session = Session::load(model).map_err(|e| e.to_string())?;
    session.set_threads(1);
    let inputs = read_npz(inputs).map_err(|e| e.to_string())?;
    let options = BenchOptions { iters: ITERS, warmup: WARMUP, energy: EnergySource::Only(Method::Model), ..Default::default() };
    Ok(session.benchmark(inputs, &options).map_err(|e| e.to_string())?.latency.p50)
}

fn onnxruntime(model: &Path, inputs: &Path) -> Timing {
    let out = Command::new(python())
        .arg(workspace_root().join("tools/ort_bench.py"))
        .args([model.as_os_str(), inputs.as_os_str()])
        .args([ITERS.to_string(), WARMUP.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e} (set DISTQ_PYTHON)", python()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed").to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
    v["p50_ms"].as_f64().ok_or_else(|| "no p50_ms in ort_bench.py output".into())
}

fn tract(model: &Path, inputs: &Path) -> Timing {
    let run = || -> TractResult<f64> {
        let inputs = read_npz(inputs).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut graph = tract_onnx::onnx().model_for_path(model)?;
        // Inputs in the model's order, with their concrete shapes as facts.
        let names: Vec<String> = graph.input_outlets()?.iter().map(|o| graph.node(o.node).name.clone()).collect();
        let mut values = TVec::new();
        for (i, name) in names.iter().enumerate() {
            let (_, t) = inputs.iter().find(|(n, _)| n == name).ok_or_else(|| anyhow::anyhow!("input {name} missing"))?;
            let value = match t.dtype() {
                DataType::F32 => Tensor::from_shape(t.shape(), t.as_slice::<f32>().map_err(|e| anyhow::anyhow!("{e}"))?)?,
                DataType::I64 => Tensor::from_shape(t.shape(), t.as_slice::<i64>().map_err(|e| anyhow::anyhow!("{e}"))?)?,
                other => anyhow::bail!("input {name}: {other} not handled by the harness"),
            };
            graph.set_input_fact(i, InferenceFact::from(value.clone()).without_value())?;
            values.push(value.into_tvalue());
        }
        let plan = graph.into_optimized()?.into_runnable()?;
        for _ in 0..WARMUP {
            plan.run(values.clone())?;
        }
        let mut runs: Vec<f64> = (0..ITERS)
            .map(|_| {
                let t = Instant::now();
                plan.run(values.clone()).map(|_| t.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<TractResult<_>>()?;
        runs.sort_by(f64::total_cmp);
        Ok(runs[runs.len() / 2])
    };
    run().map_err(|e| format!("{e}").lines().next().unwrap_or("failed").to_string())
}

fn cell(t: &Timing) -> String {
    match t {
        Ok(ms) => format!("{ms:.2}"),
        Err(_) => "fails".into(),
    }
}

fn ratio(ours: &Timing, theirs: &Timing) -> String {
    match (ours, theirs) {
        (Ok(a), Ok(b)) => format!("{:.2}×", b / a),
        _ => "—".into(),
    }
}

fn main() {
    let mut cases: Vec<(String, std::path::PathBuf, &str)> = Vec::new();
    for &(name, rel, input) in FP32_CASES {
        match model_path(rel) {
            Some(p) => cases.push((format!("{name} fp32"), p, input)),
            None => println!("{name}: model {rel} not found — run models/fetch.sh or set DISTQ_MODELS_DIR"),
        }
    }
    if let Some(fp32) = model_path("minilm/all-MiniLM-L6-v2.onnx") {
        for (kind, label) in [("dynamic", "minilm_8x64 int8 dynamic"), ("int4", "minilm_8x64 int4 block-32")] {
            if let Some(p) = quantized(&fp32, kind) {
                cases.push((label.into(), p, "minilm_8x64.npz"));
            }
        }
        if let Some(p) = distq_quantized(&fp32) {
            cases.push(("minilm_8x64 distq 17 MB, 2.45×".into(), p, "minilm_8x64.npz"));
        }
    }
    println!("1 thread each; p50 of {ITERS} runs after {WARMUP} warm-up runs, ms; ratios = their p50 / ours (> 1: we are faster)");
    println!("{:<30} {:>9} {:>12} {:>9} {:>10} {:>9}", "model", "distq", "onnxruntime", "tract", "vs ort", "vs tract");
    let mut errors = Vec::new();
    for (label, model, input) in &cases {
        let inputs = data_path(input);
        let (a, b, c) = (ours(model, &inputs), onnxruntime(model, &inputs), tract(model, &inputs));
        println!("{label:<30} {:>9} {:>12} {:>9} {:>10} {:>9}", cell(&a), cell(&b), cell(&c), ratio(&a, &b), ratio(&a, &c));
        for (who, t) in [("distq", &a), ("onnxruntime", &b), ("tract", &c)] {
            if let Err(e) = t {
                errors.push(format!("{label}, {who}: {e}"));
            }
        }
    }
    for e in errors {
        println!("  {e}");
    }
}
