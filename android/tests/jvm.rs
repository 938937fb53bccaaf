//! The Java API in a real JVM (JDK 17, `javac`, `java -Xcheck:jni`) over the host-built
//! `libdistq_jni.so`: every error path becomes the right Java exception without crashing the
//! JVM, one session serves several Java threads, and real models give outputs equal to the
//! Rust API's bit for bit and onnxruntime's within 1e-4.

use distq_runtime::testing::{add_one_model, read_raw_tensors, write_raw_tensors};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The folder holding `libdistq_jni.so`, built now (see `distq_converter::native_lib`).
fn library_dir() -> PathBuf {
    let library = distq_converter::native_lib::build("distq-android", "libdistq_jni.so").unwrap();
    library.parent().unwrap().to_path_buf()
}

fn tool(name: &str) -> Command {
    let cmd = Command::new(name);
    assert!(
        Command::new(name).arg("-version").output().is_ok(),
        "`{name}` not found: these tests need a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless)"
    );
    cmd
}

/// Compiles the API and the test program into `dir/classes`.
fn compile(dir: &Path) -> PathBuf {
    let android = Path::new(env!("CARGO_MANIFEST_DIR"));
    let classes = dir.join("classes");
    let sources = ["DistqException", "Tensor", "BenchmarkResult", "Outputs", "Session"]
        .iter()
        .map(|c| android.join(format!("java/dev/distq/{c}.java")))
        .chain([android.join("tests/java/dev/distq/SessionTest.java")]);
    let output = tool("javac").args(["-Xlint:all", "-Werror", "--release", "17", "-d"]).arg(&classes).args(sources).output().unwrap();
    assert!(output.status.success(), "javac failed:\n{}", String::from_utf8_lossy(&output.stderr));
    classes
}

/// Runs `dev.distq.SessionTest` with `args`; JNI misuse warnings from -Xcheck:jni fail it.
fn java(classes: &Path, args: &[&std::ffi::OsStr]) -> Output {
    let output = tool("java")
        .arg("-Xcheck:jni")
        .arg(format!("-Djava.library.path={}", library_dir().display()))
        .arg("-cp")
        .arg(classes)
        .arg("dev.distq.SessionTest")
        .args(args)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{stdout}");
    assert!(output.status.success(), "the JVM run failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(!stderr.contains("WARNING"), "-Xcheck:jni warned:\n{stderr}");
    output
}

#[test]
fn java_api_throws_the_right_exceptions_and_serves_threads() {
    let dir = tempfile::tempdir().unwrap();
    let classes = compile(dir.path());
    let model = dir.path().join("add_one.onnx");
    std::fs::write(&model, add_one_model()).unwrap();
    let output = java(&classes, &["errors".as_ref(), model.as_os_str()]);
    assert!(String::from_utf8_lossy(&output.stdout).contains(", 0 failed"));
}

/// The bundled CNN run from 8 Java threads at once on one session (kernels on 2 threads
/// each): every run's outputs equal the first run's byte for byte, and the first run's equal
/// the Rust API's.
#[test]
fn java_api_runs_one_session_from_8_threads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let classes = compile(dir.path());
    let (model, inputs) = distq_converter::models::bundled_cnn(8).unwrap();
    write_raw_tensors(dir.path(), "inputs.txt", &inputs).unwrap();
    let output = java(&classes, &["run".as_ref(), model.as_os_str(), dir.path().as_os_str(), "8".as_ref()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("8 threads x 10 runs on one session, 0 differing"), "{stdout}");
    distq_converter::reference::check_same_as_rust_api(&model, inputs, &read_raw_tensors(dir.path(), "outputs.txt").unwrap()).unwrap();
}

/// Runs `model` on the inputs in `npz` through the Java API; checks the outputs against the
/// Rust API (bit for bit) and onnxruntime.
fn check_java(classes: &Path, model_rel: &str, npz: &str) {
    let model = distq_converter::models::model_path(model_rel)
        .unwrap_or_else(|| panic!("model {model_rel} is missing: run models/fetch.sh (or set DISTQ_MODELS_DIR)"));
    let inputs = distq_converter::models::data_path(npz);
    let dir = tempfile::tempdir().unwrap();
    write_raw_tensors(dir.path(), "inputs.txt", &distq_io::npz::read_npz(&inputs).unwrap()).unwrap();
    java(classes, &["run".as_ref(), model.as_os_str(), dir.path().as_os_str()]);
    let from_java = read_raw_tensors(dir.path(), "outputs.txt").unwrap();
    let lines = distq_converter::reference::check_wrapper_outputs(&model, &inputs, &from_java)
        .unwrap_or_else(|e| panic!("{model_rel} from Java: {e:#}"));
    lines.iter().for_each(|l| println!("{model_rel} from Java: {l}"));
}

#[test]
#[ignore = "real models and onnxruntime: tools/test.sh runs it"]
fn java_api_runs_real_models_like_the_rust_api_and_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    let classes = compile(dir.path());
    check_java(&classes, "minilm/all-MiniLM-L6-v2.onnx", "minilm_8x64.npz");
    check_java(&classes, "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_cls.npz");
}
