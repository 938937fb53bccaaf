//! A C99 program compiled with `gcc -std=c99 -Wall -Wextra -Werror -pedantic` against
//! `ios/include/distq.h`, linked with `libdistq.a`: every misuse case on a tiny model, and real
//! models whose outputs must equal the Rust API's bit for bit.

use distq_runtime::testing::{add_one_model, read_raw_tensors, write_raw_tensors};
use distq_runtime::{Session, Tensor};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The static library cargo built beside this test binary (`target/<profile>/libdistq.a`).
fn static_library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().and_then(Path::parent).unwrap().join("libdistq.a");
    assert!(lib.is_file(), "{} is missing: `cargo test -p distq-ios` builds it", lib.display());
    lib
}

/// Compiles `tests/c/distq_c_test.c` into `dir` and returns the executable.
fn compile(dir: &Path) -> PathBuf {
    let ios = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join("distq_c_test");
    let output = Command::new("gcc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1", "-I"])
        .arg(ios.join("include"))
        .arg(ios.join("tests/c/distq_c_test.c"))
        .arg(static_library())
        // What a Rust static library needs from the system on Linux.
        .args(["-lpthread", "-ldl", "-lm", "-lgcc_s", "-o"])
        .arg(&exe)
        .output()
        .expect("gcc runs");
    assert!(output.status.success(), "gcc failed:\n{}", String::from_utf8_lossy(&output.stderr));
    exe
}

#[test]
fn c_program_runs_a_model_and_survives_every_misuse() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path());
    let model = dir.path().join("add_one.onnx");
    std::fs::write(&model, add_one_model()).unwrap();
    let output = Command::new(exe).arg("misuse").arg(&model).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(", 0 failed"), "{stdout}");
}

/// Runs `model` on `inputs` through the C program and through [`Session::run`].
fn assert_c_matches_rust(model: &Path, inputs: Vec<(String, Tensor)>) {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path());
    write_raw_tensors(dir.path(), "inputs.txt", &inputs).unwrap();
    let output = Command::new(exe).arg("run").arg(model).arg(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let from_c = read_raw_tensors(dir.path(), "outputs.txt").unwrap();
    let from_rust = Session::load(model).unwrap().run(inputs).unwrap();
    assert_eq!(from_c.len(), from_rust.len());
    for ((c_name, c), (name, r)) in from_c.iter().zip(&from_rust) {
        assert_eq!((c_name, c.dtype(), c.shape()), (name, r.dtype(), r.shape()));
        assert!(c.as_le_bytes() == r.as_le_bytes(), "output '{name}' of {} differs between C and Rust", model.display());
    }
    println!("{}: {} outputs equal to the Rust API's", model.display(), from_c.len());
}

fn real(rel: &str) -> PathBuf {
    distq_converter::models::model_path(rel)
        .unwrap_or_else(|| panic!("model {rel} is missing: run models/fetch.sh (or set DISTQ_MODELS_DIR)"))
}

#[test]
#[ignore = "real models: tools/test.sh runs it"]
fn c_program_runs_real_models_like_the_rust_api() {
    let data = |name| distq_converter::npz::read_npz(&distq_converter::models::data_path(name)).unwrap();
    assert_c_matches_rust(&real("minilm/all-MiniLM-L6-v2.onnx"), data("minilm_8x64.npz"));
    assert_c_matches_rust(&real("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx"), data("ppocr_cls.npz"));
}
