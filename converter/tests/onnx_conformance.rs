//! ONNX's backend node suite through our runtime (a real-model test, `#[ignore]`d for a bare
//! `cargo test`): the cases are regenerated from the installed onnx package's own
//! definitions (`tools/onnx_node_cases.py`), each is run as generated and with every input
//! but the first made a constant (as tract's runner does), and its outputs are compared with
//! the case's own rtol/atol as onnx's backend runner does (`|ours − expected| ≤ atol + rtol ·
//! |expected|`, NaN matching NaN, shape and dtype equal).
//!
//! Every run ends as: pass, a clear error (an op or dtype we lack, a shape known only from
//! input data), not run (a value an `.npz` cannot hold: sequences, strings, optional
//! values, dtypes numpy lacks), a wrong output, or a panic. The test fails on any wrong
//! output, any panic, and any run of `onnx_conformance_passing.txt` that no longer passes;
//! runs that pass without being listed are printed, to be added.

use distq_runtime::{DataType, Model, Session, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod common;

/// What one run of a case came to.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Pass,
    Error(String),
    NotRun(String),
    Wrong(String),
    Panic(String),
}

/// A tensor's elements as f64 (booleans and integers exactly), for the comparison.
fn values(t: &Tensor) -> Option<Vec<f64>> {
    Some(match t.dtype() {
        DataType::F32 => t.as_slice::<f32>().ok()?.iter().map(|&v| v as f64).collect(),
        DataType::F64 => t.as_slice::<f64>().ok()?.to_vec(),
        DataType::F16 => t.as_slice::<u16>().ok()?.iter().map(|&v| half::f16::from_bits(v).to_f64()).collect(),
        DataType::I64 => t.as_slice::<i64>().ok()?.iter().map(|&v| v as f64).collect(),
        DataType::I32 => t.as_slice::<i32>().ok()?.iter().map(|&v| v as f64).collect(),
        DataType::I8 => t.as_slice::<i8>().ok()?.iter().map(|&v| v as f64).collect(),
        DataType::U8 => t.as_slice::<u8>().ok()?.iter().map(|&v| v as f64).collect(),
        DataType::Bool => t.as_bools().ok()?.iter().map(|&v| v as f64).collect(),
        DataType::U4 | DataType::I4 => return values(&t.widened().ok()?),
        _ => return None,
    })
}

/// Why `ours` is not `expected` within the tolerances, if it is not.
fn mismatch(name: &str, ours: &Tensor, expected: &Tensor, rtol: f64, atol: f64) -> Option<String> {
    if ours.dtype() != expected.dtype() || ours.shape() != expected.shape() {
        return Some(format!("{name}: {} {:?}, expected {} {:?}", ours.dtype(), ours.shape(), expected.dtype(), expected.shape()));
    }
    let (Some(a), Some(b)) = (values(ours), values(expected)) else { return Some(format!("{name}: cannot compare {}", ours.dtype())) };
    let bad = a.iter().zip(&b).position(|(&x, &y)| {
        let close = x == y || (x - y).abs() <= atol + rtol * y.abs() || (x.is_nan() && y.is_nan());
        !close
    })?;
    Some(format!("{name}[{bad}]: {} instead of {}", a[bad], b[bad]))
}

/// Loads and runs `model` on `inputs`; compares with `outputs`.
fn run(model: &Path, inputs: &Path, outputs: &Path, rtol: f64, atol: f64) -> Outcome {
    let attempt = || -> Result<Option<String>, String> {
        let session = Session::new(Model::load(model).map_err(|e| e.to_string())?);
        session.set_threads(1);
        let inputs = distq_io::npz::read_npz(inputs).map_err(|e| format!("inputs: {e:#}"))?;
        let expected = distq_io::npz::read_npz(outputs).map_err(|e| format!("expected outputs: {e:#}"))?;
        let ours = session.run(inputs).map_err(|e| e.to_string())?;
        for (name, want) in &expected {
            let Some((_, got)) = ours.iter().find(|(n, _)| n == name) else { return Ok(Some(format!("no output {name}"))) };
            if let Some(why) = mismatch(name, got, want, rtol, atol) {
                return Ok(Some(why));
            }
        }
        Ok(None)
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(attempt)) {
        Ok(Ok(None)) => Outcome::Pass,
        Ok(Ok(Some(why))) => Outcome::Wrong(why),
        Ok(Err(e)) => Outcome::Error(e),
        Err(panic) => Outcome::Panic(
            panic.downcast_ref::<String>().cloned().or(panic.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default(),
        ),
    }
}

/// Runs every data set of one case in one form (`generated` or `constants`).
fn run_case(dir: &Path, form: &str, meta: &serde_json::Value) -> Outcome {
    if let Some(skip) = meta["skip"].as_str() {
        return Outcome::NotRun(skip.to_string());
    }
    let (rtol, atol) = (meta["rtol"].as_f64().unwrap_or(1e-3), meta["atol"].as_f64().unwrap_or(1e-7));
    for k in 0..meta["data_sets"].as_u64().unwrap_or(0) {
        let (model, inputs) = match form {
            "generated" => (dir.join("generated.onnx"), dir.join(format!("{k}_inputs.npz"))),
            _ => (dir.join(format!("{k}_constants.onnx")), dir.join(format!("{k}_first_input.npz"))),
        };
        let outcome = run(&model, &inputs, &dir.join(format!("{k}_outputs.npz")), rtol, atol);
        if outcome != Outcome::Pass {
            return outcome;
        }
    }
    Outcome::Pass
}

fn passing_list() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/onnx_conformance_passing.txt")
}

#[test]
#[ignore = "regenerates ONNX's node cases with $DISTQ_PYTHON (tools/test.sh runs it)"]
fn onnx_backend_node_suite() {
    let scratch = tempfile::tempdir().unwrap();
    common::python_tool("onnx_node_cases.py", &[scratch.path().as_os_str()]);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(scratch.path()).unwrap().map(|e| e.unwrap().path()).collect();
    cases.sort();
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    for dir in &cases {
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let generated = run_case(dir, "generated", &meta);
        // A case of one input is its own constants form.
        let constants = if dir.join("0_constants.onnx").exists() { run_case(dir, "constants", &meta) } else { generated.clone() };
        outcomes.insert(format!("{name} generated"), generated);
        outcomes.insert(format!("{name} constants"), constants);
    }
    // The table, per form.
    for form in ["generated", "constants"] {
        let of_form: Vec<&Outcome> = outcomes.iter().filter(|(k, _)| k.ends_with(form)).map(|(_, o)| o).collect();
        let count = |f: fn(&Outcome) -> bool| of_form.iter().filter(|o| f(o)).count();
        let run = count(|o| !matches!(o, Outcome::NotRun(_)));
        let pass = count(|o| *o == Outcome::Pass);
        println!(
            "{form:>9}: {} runs, {pass} pass ({:.1} % of the {run} run), {} clear errors, {} not run, {} wrong, {} panics",
            of_form.len(),
            100.0 * pass as f64 / run.max(1) as f64,
            count(|o| matches!(o, Outcome::Error(_))),
            count(|o| matches!(o, Outcome::NotRun(_))),
            count(|o| matches!(o, Outcome::Wrong(_))),
            count(|o| matches!(o, Outcome::Panic(_))),
        );
    }
    let mut not_run: BTreeMap<&str, usize> = BTreeMap::new();
    for o in outcomes.values() {
        if let Outcome::NotRun(why) = o {
            *not_run.entry(why).or_default() += 1;
        }
    }
    println!("not run (values an .npz cannot hold): {not_run:?}");
    // The largest groups of errors (inputs made constants), names in quotes left out.
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for (_, o) in outcomes.iter().filter(|(k, _)| k.ends_with("constants")) {
        if let Outcome::Error(e) = o {
            let reason: String = e.split('\'').step_by(2).collect::<Vec<_>>().join("…");
            *errors.entry(reason.chars().take(120).collect()).or_default() += 1;
        }
    }
    let mut errors: Vec<_> = errors.into_iter().collect();
    errors.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (reason, n) in errors.iter().take(25) {
        println!("{n:>5}  {reason}");
    }
    let listed: BTreeSet<String> = std::fs::read_to_string(passing_list())
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let passing: BTreeSet<String> = outcomes.iter().filter(|(_, o)| **o == Outcome::Pass).map(|(k, _)| k.clone()).collect();
    if std::env::var_os("DISTQ_BLESS").is_some() {
        let text: String = passing.iter().map(|k| format!("{k}\n")).collect();
        std::fs::write(passing_list(), text).unwrap();
    }
    for new in passing.difference(&listed) {
        println!("newly passing (add to {}): {new}", passing_list().display());
    }
    let mut failures = Vec::new();
    for (key, outcome) in &outcomes {
        match outcome {
            Outcome::Wrong(why) => failures.push(format!("WRONG OUTPUT {key}: {why}")),
            Outcome::Panic(why) => failures.push(format!("PANIC {key}: {why}")),
            other if listed.contains(key) && *other != Outcome::Pass => failures.push(format!("REGRESSED {key}: {other:?}")),
            _ => {}
        }
    }
    for gone in listed.iter().filter(|k| !outcomes.contains_key(*k)) {
        failures.push(format!("REGRESSED {gone}: no longer in the suite"));
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
