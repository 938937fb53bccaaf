//! The `distq` binary on the bundled model: `run` and `inspect`, and their error paths.

use distq_converter::models::{data_path, workspace_root};
use std::process::Command;

fn distq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distq")).args(args).current_dir(workspace_root()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

const MODEL: &str = "models/ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx";

#[test]
fn run_bundled_model_and_save_outputs() {
    let scratch = tempfile::tempdir().unwrap();
    let out_path = scratch.path().join("outputs.npz");
    let input = data_path("ppocr_cls.npz");
    let (ok, stdout, stderr) =
        distq(&["run", MODEL, "--input", input.to_str().unwrap(), "-o", out_path.to_str().unwrap(), "--repeat", "2"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("save_infer_model/scale_0.tmp_1: float [1, 2]"), "{stdout}");
    assert!(stdout.contains("activation arena"), "{stdout}");
    let saved = distq_io::npz::read_npz(&out_path).unwrap();
    let probs = saved[0].1.as_slice::<f32>().unwrap();
    assert!((probs[0] + probs[1] - 1.0).abs() < 1e-5, "softmax output {probs:?}");
}

#[test]
fn inspect_json_reports_the_model() {
    let (ok, stdout, stderr) = distq(&["inspect", MODEL, "--json"]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["opset"], 11);
    assert_eq!(v["inputs"][0]["name"], "x");
    assert_eq!(v["ops"]["Conv"], 53);
    assert_eq!(v["loadable"], true);
    assert!(v["parameters"].as_u64().unwrap() > 100_000);
}

#[test]
fn errors_name_the_problem() {
    let (ok, _, stderr) = distq(&["run", "models/nope.onnx", "--input", "x.npz"]);
    assert!(!ok && stderr.contains("models/nope.onnx"), "{stderr}");
    let (ok, _, stderr) = distq(&["run", MODEL, "--input", "models/README.md"]);
    assert!(!ok && stderr.contains("models/README.md") && stderr.contains(".npz"), "{stderr}");
    let wrong = data_path("silero_vad.npz");
    let (ok, _, stderr) = distq(&["run", MODEL, "--input", wrong.to_str().unwrap()]);
    assert!(!ok && stderr.contains("input 'x'") && stderr.contains("missing"), "{stderr}");
}
