//! The independent reference for tests: a model run in onnxruntime, through the other
//! `tools/` Python scripts and `$DISTQ_PYTHON` (the venv `tools/test.sh` makes).

use anyhow::{Context, Result, bail};
use distq_runtime::{NamedTensors, Tensor};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// How far an output may be from onnxruntime's, relative to its largest magnitude.
pub const ONNXRUNTIME_TOLERANCE: f32 = 1e-4;

/// Runs `tools/<script>` with `$DISTQ_PYTHON`.
pub fn python_tool(script: &str, args: &[&OsStr]) -> Result<()> {
    let python = std::env::var("DISTQ_PYTHON").context("DISTQ_PYTHON must name a python with onnxruntime (tools/test.sh sets it)")?;
    let status = Command::new(&python)
        .arg(crate::models::workspace_root().join("tools").join(script))
        .args(args)
        .status()
        .with_context(|| format!("cannot run {python}"))?;
    if !status.success() {
        bail!("tools/{script} failed ({status})");
    }
    Ok(())
}

/// Runs `model` on the inputs in `inputs` (an `.npz`) in onnxruntime, with its graph
/// optimizations `"optimized"` or `"unoptimized"` (Q/DQ pairs run as written).
pub fn onnxruntime_outputs(model: &Path, inputs: &Path, mode: &str) -> Result<NamedTensors> {
    let scratch = tempfile::tempdir()?;
    let out = scratch.path().join("outputs.npz");
    python_tool("ort_reference.py", &[model.as_os_str(), inputs.as_os_str(), out.as_os_str(), mode.as_ref()])?;
    distq_io::npz::read_npz(&out)
}

/// Largest |a - b| over two float tensors of one shape, and the largest |b| (the scale).
pub fn max_diff(a: &Tensor, b: &Tensor) -> Result<(f32, f32)> {
    if a.shape() != b.shape() {
        bail!("shapes differ: {:?} vs {:?}", a.shape(), b.shape());
    }
    let (a, b) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let scale = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
    Ok((diff, scale))
}

/// Checks that a wrapper's `outputs` for `model` on `inputs` are the bytes
/// [`distq_runtime::Session::run`] gives, names, dtypes and shapes included.
pub fn check_same_as_rust_api(model: &Path, inputs: distq_runtime::NamedTensors, outputs: &[(String, Tensor)]) -> Result<()> {
    let ours = distq_runtime::Session::load(model)?.run(inputs)?;
    if outputs.len() != ours.len() {
        bail!("{} outputs, the model has {}", outputs.len(), ours.len());
    }
    for ((name, got), (rust_name, rust)) in outputs.iter().zip(&ours) {
        if (name, got.dtype(), got.shape()) != (rust_name, rust.dtype(), rust.shape()) || got.as_le_bytes() != rust.as_le_bytes() {
            bail!("output '{name}' {:?} differs from the Rust API's '{rust_name}' {:?}", got.shape(), rust.shape());
        }
    }
    Ok(())
}

/// Checks what a wrapper (the C ABI, the Java API) computed for `model` on the inputs in
/// `inputs` (an `.npz`): the same bytes as [`distq_runtime::Session::run`], and within
/// [`ONNXRUNTIME_TOLERANCE`] of onnxruntime for float outputs. Returns a line per output.
pub fn check_wrapper_outputs(model: &Path, inputs: &Path, outputs: &[(String, Tensor)]) -> Result<Vec<String>> {
    check_same_as_rust_api(model, distq_io::npz::read_npz(inputs)?, outputs)?;
    let theirs = onnxruntime_outputs(model, inputs, "optimized")?;
    let mut lines = Vec::new();
    for (name, got) in outputs {
        let ort = &theirs.iter().find(|(n, _)| n == name).with_context(|| format!("onnxruntime gave no output '{name}'"))?.1;
        let (diff, scale) = max_diff(got, ort)?;
        if diff > ONNXRUNTIME_TOLERANCE * scale.max(1e-3) {
            bail!("output '{name}': max |diff| to onnxruntime {diff:.3e} exceeds {ONNXRUNTIME_TOLERANCE} × scale {scale:.3e}");
        }
        lines
            .push(format!("'{name}' {:?}: equal to the Rust API's, max |diff| to onnxruntime {diff:.2e} (scale {scale:.2e})", got.shape()));
    }
    Ok(lines)
}
