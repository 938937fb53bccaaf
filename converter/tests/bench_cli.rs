//! `distq bench`: its JSON contract, `--vs` ratios, meters read from a fake sysfs tree, and
//! its errors (no timed runs, unreadable sensors, open input shapes).

use distq_converter::models::{data_path, workspace_root};
use std::process::Command;

const MODEL: &str = "models/ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx";

fn distq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_distq")).args(args).current_dir(workspace_root()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let (ok, stdout, stderr) = distq(args);
    assert!(ok, "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn json_reports_latency_memory_size_and_model_energy_with_ratios() {
    let input = data_path("ppocr_cls.npz");
    let input = input.to_str().unwrap();
    let v = json_of(&["bench", MODEL, "--vs", MODEL, "--input", input, "--iters", "5", "--warmup", "1", "--energy", "model", "--json"]);
    for m in [&v, &v["vs"]] {
        let l = &m["latency_ms"];
        let (p50, p90, p99, mean) =
            (l["p50"].as_f64().unwrap(), l["p90"].as_f64().unwrap(), l["p99"].as_f64().unwrap(), l["mean"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99 && mean > 0.0, "{l}");
        assert!(m["load_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(m["model_bytes"].as_u64(), Some(std::fs::metadata(workspace_root().join(MODEL)).unwrap().len()));
        assert!(m["peak_rss_bytes"].as_u64().unwrap() > 1_000_000);
        assert_eq!(m["energy"]["method"], "model");
        assert!(m["energy"]["source"].as_str().unwrap().contains("Horowitz"));
        let estimate = &m["energy"]["model_estimate"];
        assert!(estimate["f32_macs"].as_u64().unwrap() > 1_000_000, "the classifier's convolutions: {estimate}");
        assert_eq!(m["energy"]["joules_per_inference"], estimate["joules"]);
    }
    // The same model on both sides: size and (deterministic) model energy ratios are 1.
    assert_eq!(v["ratios"]["size"].as_f64(), Some(1.0));
    assert_eq!(v["ratios"]["energy"].as_f64(), Some(1.0));
    assert!(v["ratios"]["speedup"].as_f64().unwrap() > 0.0);
    assert!(v["machine"]["int8_kernel"].as_str().is_some());
    // Without --threads: the performance cores, and their scaling when there are several.
    let cores = distq_runtime::performance_cores();
    assert_eq!(v["threads"].as_u64(), Some(cores as u64));
    assert_eq!(v["scaling"].is_null(), cores == 1, "scaling on {cores} threads: {}", v["scaling"]);
}

#[test]
fn more_threads_report_their_scaling_over_one() {
    let input = data_path("ppocr_cls.npz");
    let v = json_of(&["bench", MODEL, "--input", input.to_str().unwrap(), "--iters", "5", "--warmup", "1", "--threads", "2", "--json"]);
    assert_eq!(v["threads"].as_u64(), Some(2));
    let (one, speedup) = (v["scaling"]["p50_1_thread"].as_f64().unwrap(), v["scaling"]["speedup"].as_f64().unwrap());
    assert!(one > 0.0 && (speedup - one / v["latency_ms"]["p50"].as_f64().unwrap()).abs() < 1e-9, "{}", v["scaling"]);
}

#[test]
fn sensor_meters_read_the_sysfs_tree_given() {
    let tree = tempfile::tempdir().unwrap();
    let zone = tree.path().join("class/powercap/intel-rapl:0");
    std::fs::create_dir_all(&zone).unwrap();
    for (file, value) in [("name", "package-0"), ("energy_uj", "5000"), ("max_energy_range_uj", "262143328850")] {
        std::fs::write(zone.join(file), value).unwrap();
    }
    let sysfs = tree.path().to_str().unwrap();
    let args = ["bench", MODEL, "--shape", "x=1,3,48,192", "--iters", "2", "--warmup", "0", "--sysfs", sysfs, "--json"];
    let v = json_of(&args);
    assert_eq!(v["energy"]["method"], "rapl", "auto picks the readable counter");
    assert_eq!(v["energy"]["source"], "RAPL zones package-0");
    // The fake counter stands still: zero joules measured, not a model figure.
    assert_eq!(v["energy"]["joules_per_inference"].as_f64(), Some(0.0));
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([1, 3, 48, 192]));
}

#[test]
fn bad_options_get_clear_errors() {
    let empty = tempfile::tempdir().unwrap();
    let sysfs = empty.path().to_str().unwrap();
    let shape = ["--shape", "x=1,3,48,192"];
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (vec!["--iters", "0"], &["--iters 0", "at least one timed run"]),
        (vec!["--energy", "rapl", "--sysfs", sysfs], &["energy meter rapl", "powercap"]),
        (vec!["--energy", "power-supply", "--sysfs", sysfs], &["energy meter power-supply", "power_supply"]),
        (vec!["--energy", "odpm", "--sysfs", sysfs], &["energy meter odpm", "iio"]),
        (vec![], &["input 'x'", "leaves open", "--shape x="]),
        (vec!["--shape", "y=1"], &["no input 'y'"]),
        (vec!["--shape", "x=1,three"], &["--shape x=1,three", "integers"]),
    ];
    for (extra, parts) in cases {
        let with_shape = extra.iter().any(|a| a.starts_with("--energy"));
        let mut args = vec!["bench", MODEL];
        args.extend(extra.iter().copied());
        if with_shape {
            args.extend(shape);
        }
        let (ok, _, stderr) = distq(&args);
        assert!(!ok, "{args:?} should fail");
        for p in parts {
            assert!(stderr.contains(p), "{args:?}: {stderr:?} should mention {p:?}");
        }
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
