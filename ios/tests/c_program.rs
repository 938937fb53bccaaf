//! A C99 program compiled with `gcc -std=c99 -Wall -Wextra -Werror -pedantic` against
//! `ios/include/distq.h`, linked with `libdistq.a`: every misuse case on a tiny model, and real
//! models whose outputs must equal the Rust API's bit for bit and onnxruntime's within 1e-4.

use distq_runtime::testing::{add_one_model, read_raw_tensors, write_raw_tensors};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `libdistq.a`, built now (see `distq_converter::native_lib`).
fn static_library() -> PathBuf {
    distq_converter::native_lib::build("distq-ios", "libdistq.a").unwrap()
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

/// Generation from C on the toy bigram decoder (after token `t`, `3t + 1 mod 8`) and its
/// word-level tokenizer: the text streams to the callback piece by piece, and the callback
/// stops it.
#[test]
fn c_program_streams_generated_text_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path());
    let model = dir.path().join("model.onnx");
    std::fs::write(&model, distq_runtime::testing::bigram_decoder(false)).unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), distq_runtime::testing::bigram_tokenizer_json()).unwrap();
    let generate = |stop_after: &str| {
        let output = Command::new(&exe).arg("generate").arg(&model).args(["w2", "4", stop_after]).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(generate("0"), "w7| w6| w3| w2|\ntokens: 1 prompt, 4 generated, end 0\n");
    assert_eq!(generate("2"), "w7| w6|\ntokens: 1 prompt, 2 generated, end 2\n");
}

/// The bundled CNN run from 8 C threads at once on one session (each run also splitting its
/// kernels over 2 threads): every run's outputs equal the first run's byte for byte, and the
/// first run's equal the Rust API's.
#[test]
fn c_program_runs_one_session_from_8_threads_identically() {
    let (model, inputs) = distq_converter::models::bundled_cnn(8).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path());
    write_raw_tensors(dir.path(), "inputs.txt", &inputs).unwrap();
    let output = Command::new(exe).arg("run").arg(&model).arg(dir.path()).arg("8").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("8 threads x 10 runs on one session, 0 differing"), "{stdout}");
    distq_converter::reference::check_same_as_rust_api(&model, inputs, &read_raw_tensors(dir.path(), "outputs.txt").unwrap()).unwrap();
}

/// Runs `model` on the inputs in `npz` through the C program; checks the outputs against the
/// Rust API (bit for bit) and onnxruntime.
fn check_c_program(model_rel: &str, npz: &str) {
    let (model, inputs) = (real(model_rel), distq_converter::models::data_path(npz));
    let dir = tempfile::tempdir().unwrap();
    let exe = compile(dir.path());
    write_raw_tensors(dir.path(), "inputs.txt", &distq_io::npz::read_npz(&inputs).unwrap()).unwrap();
    let output = Command::new(exe).arg("run").arg(&model).arg(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let from_c = read_raw_tensors(dir.path(), "outputs.txt").unwrap();
    let lines =
        distq_converter::reference::check_wrapper_outputs(&model, &inputs, &from_c).unwrap_or_else(|e| panic!("{model_rel} from C: {e:#}"));
    lines.iter().for_each(|l| println!("{model_rel} from C: {l}"));
}

fn real(rel: &str) -> PathBuf {
    distq_converter::models::model_path(rel)
        .unwrap_or_else(|| panic!("model {rel} is missing: run models/fetch.sh (or set DISTQ_MODELS_DIR)"))
}

#[test]
#[ignore = "real models and onnxruntime: tools/test.sh runs it"]
fn c_program_runs_real_models_like_the_rust_api_and_onnxruntime() {
    check_c_program("minilm/all-MiniLM-L6-v2.onnx", "minilm_8x64.npz");
    check_c_program("ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_cls.npz");
}
