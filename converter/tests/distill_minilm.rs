//! MiniLM-L6 in training form: the exported graph (shape arithmetic, attention masks,
//! LayerNormalization, erf GELU) run through the candle translation gives the runtime's
//! hidden states with gradients for every weight; and distilled to 2 layers it keeps the
//! teacher's sentence embeddings (the must-show).

mod common;

use candle_core::{DType, Tensor};
use common::{checkpoint_step, cosine, epoch_losses, model, onnxruntime_outputs, pooled, python_tool};
use distq_converter::distill::data::{Arrays, take_rows};
use distq_converter::distill::graph::{Freeze, TrainableGraph};
use distq_converter::models::data_path;
use distq_io::npz::write_npz;
use distq_runtime::Session;
use distq_runtime::onnx::OnnxFile;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Distillation epochs over the 7500 training sentences.
const EPOCHS: usize = 2;
/// Sentences the quantization-aware fine-tuning sees.
const QAT_SAMPLES: usize = 1000;

#[test]
#[ignore = "real model: run by tools/test.sh"]
fn minilm_trains_in_candle_as_the_runtime_runs_it() {
    let path = model("minilm/all-MiniLM-L6-v2.onnx");
    let data = Arrays::read(&data_path("minilm_8x64.npz")).unwrap();
    let rows: Vec<usize> = (0..4).collect();
    let graph = TrainableGraph::new(&OnnxFile::open(&path).unwrap(), DType::F32, &Freeze::parse("embeddings")).unwrap();
    let feeds: Vec<(&str, Tensor)> = graph.inputs().iter().map(|n| (n.as_str(), data.batch(n, &rows, DType::F32).unwrap())).collect();
    let output = graph.outputs()[0].clone();
    let hidden = graph.forward(&feeds, &[&output]).unwrap().remove(0);
    let runtime = Session::load(&path).unwrap().run(data.rows(graph.inputs(), &rows).unwrap()).unwrap().remove(0).1;
    assert_eq!(hidden.dims(), runtime.shape());
    let ours = hidden.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let max = ours.iter().zip(runtime.to_f32s().unwrap()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("MiniLM in candle vs the runtime: max |diff| {max:.2e} over {} values", ours.len());
    assert!(max < 1e-3, "max |diff| {max}");
    // Frozen embeddings get no gradient; every encoder weight does.
    let grads = hidden.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    let (mut trained, mut frozen) = (0, 0);
    for p in graph.params() {
        if p.trainable {
            trained += 1;
            let g = grads.get(&p.var).unwrap_or_else(|| panic!("no gradient for {}", p.name));
            assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "zero gradient for {}", p.name);
        } else {
            frozen += 1;
            assert!(p.name.contains("embeddings"));
        }
    }
    println!("{trained} trainable parameters with gradients, {frozen} frozen");
    assert!(trained > 90 && frozen >= 3);
}

/// `model`'s mean-pooled sentence embeddings of the test sentences in our runtime.
fn pooled_ours(model: &Path) -> Vec<Vec<f32>> {
    let inputs = Arrays::read(&data_path("sentences_test.npz")).unwrap();
    let mask = inputs.get("attention_mask").unwrap();
    let session = Session::load(model).unwrap();
    let names: Vec<String> = ["input_ids", "attention_mask", "token_type_ids"].map(String::from).to_vec();
    let mut all = Vec::new();
    for start in (0..inputs.samples()).step_by(50) {
        let rows: Vec<usize> = (start..(start + 50).min(inputs.samples())).collect();
        let out = session.run(inputs.rows(&names, &rows).unwrap()).unwrap().remove(0).1;
        all.extend(pooled(&out, &take_rows(mask, &rows).unwrap()));
    }
    all
}

/// The same in onnxruntime.
fn pooled_onnxruntime(model: &Path) -> Vec<Vec<f32>> {
    let test = data_path("sentences_test.npz");
    let mask = Arrays::read(&test).unwrap().get("attention_mask").unwrap().clone();
    pooled(&onnxruntime_outputs(model, &test)[0].1, &mask)
}

/// Mean pooled cosine of `model`'s sentence embeddings to the teacher's over the test
/// sentences, in our runtime and in onnxruntime.
fn cosine_to_teacher(model: &Path, teacher_ours: &[Vec<f32>], teacher_ort: &[Vec<f32>]) -> (f64, f64) {
    let mean = |a: &[Vec<f32>], b: &[Vec<f32>]| a.iter().zip(b).map(|(x, y)| f64::from(cosine(x, y))).sum::<f64>() / a.len() as f64;
    (mean(&pooled_ours(model), teacher_ours), mean(&pooled_onnxruntime(model), teacher_ort))
}

fn distq(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_distq")).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "distq {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The must-show: MiniLM-L6 → 2 layers (the first and the last), feature
/// distillation on the pooled sentence embeddings of the training sentences, then
/// `distq convert` (mixed precision at ≤ 1/4 of the student's size, quantization-aware
/// training); cosine to the teacher on the 1000 test sentences, ours and onnxruntime's.
#[test]
#[ignore = "must-show, 15 minutes of training: tools/mustshow/minilm_distill.sh"]
fn mustshow_minilm_distills_to_two_layers_and_converts_at_a_quarter_of_its_size() {
    let teacher = model("minilm/all-MiniLM-L6-v2.onnx");
    let scratch = tempfile::Builder::new().prefix("distq-distill-minilm-").tempdir().unwrap();
    let dir = scratch.path();
    // The last 500 training sentences validate (best epoch); the test sentences stay unseen.
    let all = Arrays::read(&data_path("sentences_train.npz")).unwrap();
    let names: Vec<String> = ["input_ids", "attention_mask", "token_type_ids"].map(String::from).to_vec();
    let (train, val) = (dir.join("train.npz"), dir.join("val.npz"));
    write_npz(&train, &all.rows(&names, &(0..7500).collect::<Vec<_>>()).unwrap()).unwrap();
    write_npz(&val, &all.rows(&names, &(7500..8000).collect::<Vec<_>>()).unwrap()).unwrap();
    let (student, converted) = (dir.join("student.onnx"), dir.join("student_mixed.onnx"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // One teacher-output cache for both runs: the teacher runs once.
    let common = format!(
        "--teacher {} --loss feature --feature-loss cosine --feature-pool attention_mask --freeze embeddings \
         --data {} --val {} --batch 32 --lr 2e-4 --seed 0 --teacher-cache {}",
        s(&teacher),
        s(&train),
        s(&val),
        s(&dir.join("teacher-cache"))
    );
    let started = Instant::now();
    let distill =
        format!("distill {common} --derive layers=2 --epochs {EPOCHS} --checkpoint {} -o {}", s(&dir.join("distill")), s(&student));
    println!("{}", distq(&distill.split_whitespace().collect::<Vec<_>>()));
    let seconds = started.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(dir.join("distill/log.jsonl")).unwrap();
    let steps_per_s: Vec<f64> =
        log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["steps_per_s"].as_f64()).collect();

    let (teacher_ours, teacher_ort) = (pooled_ours(&teacher), pooled_onnxruntime(&teacher));
    let (ours, theirs) = cosine_to_teacher(&student, &teacher_ours, &teacher_ort);
    let student_bytes = std::fs::metadata(&student).unwrap().len();
    println!(
        "2-layer student: mean pooled cosine to the teacher over 1000 test sentences: ours {ours:.4}, onnxruntime {theirs:.4}; \
         {EPOCHS} epochs in {seconds:.0} s (teacher outputs included), steps/s per epoch {steps_per_s:?}; {:.1} MB",
        student_bytes as f64 / 1e6
    );
    assert!(ours >= 0.85 && theirs >= 0.85, "student cosine: ours {ours}, onnxruntime {theirs}");

    let max_mb = student_bytes as f64 / 4.0 / 1e6;
    let convert = format!(
        "convert {common} --student {} --epochs 0 --qat-epochs 1 --qat-samples {QAT_SAMPLES} --metric cosine \
         --max-size-mb {max_mb:.6} --checkpoint {} -o {}",
        s(&student),
        s(&dir.join("convert")),
        s(&converted)
    );
    println!("{}", distq(&convert.split_whitespace().collect::<Vec<_>>()));
    python_tool("check_onnx.py", &[converted.as_os_str()]);
    let bytes = std::fs::metadata(&converted).unwrap().len();
    let (ours_q, theirs_q) = cosine_to_teacher(&converted, &teacher_ours, &teacher_ort);
    println!(
        "converted: {:.2} MB = {:.1} % of the student; mean pooled cosine to the teacher: ours {ours_q:.4}, onnxruntime {theirs_q:.4}",
        bytes as f64 / 1e6,
        100.0 * bytes as f64 / student_bytes as f64
    );
    assert!(bytes * 4 <= student_bytes, "{bytes} bytes, student {student_bytes}");
    assert!(ours_q >= 0.84 && theirs_q >= 0.84, "converted cosine: ours {ours_q}, onnxruntime {theirs_q}");
}

/// CI's short version of the must-show: MiniLM → 2 layers on 128 real sentences for 2 epochs
/// of 8 steps. The loss falls from the first epoch to the second, and a run SIGKILLed once a
/// checkpoint past step 8 is on disk resumes to the uninterrupted run's final loss.
#[test]
#[ignore = "real model: run by tools/test.sh"]
fn minilm_distills_a_few_steps_with_a_falling_loss_and_resumes_after_a_kill() {
    let teacher = model("minilm/all-MiniLM-L6-v2.onnx");
    let scratch = tempfile::Builder::new().prefix("distq-distill-minilm-short-").tempdir().unwrap();
    let dir = scratch.path();
    let all = Arrays::read(&data_path("sentences_train_256.npz")).unwrap();
    let names: Vec<String> = ["input_ids", "attention_mask", "token_type_ids"].map(String::from).to_vec();
    let train = dir.join("train.npz");
    write_npz(&train, &all.rows(&names, &(0..128).collect::<Vec<_>>()).unwrap()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = |checkpoint: &Path, out: &Path| -> Vec<String> {
        format!(
            "distill --teacher {} --derive layers=2 --loss feature --feature-loss cosine --feature-pool attention_mask \
             --freeze embeddings --data {} --batch 16 --epochs 2 --lr 5e-4 --seed 0 --teacher-cache {} \
             --checkpoint {} --checkpoint-every 4 -o {}",
            s(&teacher),
            s(&train),
            s(&dir.join("teacher-cache")),
            s(checkpoint),
            s(out)
        )
        .split_whitespace()
        .map(String::from)
        .collect()
    };
    let whole = dir.join("whole");
    let started = Instant::now();
    let a: Vec<String> = args(&whole, &dir.join("whole.onnx"));
    distq(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let losses = epoch_losses(&whole.join("log.jsonl"));
    println!("MiniLM 2-layer student, 128 sentences: epoch losses {losses:?} in {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(losses.len(), 2, "{losses:?}");
    assert!(losses[1] < losses[0], "the loss did not fall: {losses:?}");

    // Killed once a checkpoint past step 8 (of 16) is on disk, then resumed.
    let killed = dir.join("killed");
    let out = dir.join("killed.onnx");
    let step = || checkpoint_step(&killed);
    let mut child = Command::new(env!("CARGO_BIN_EXE_distq"))
        .args(args(&killed, &out))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let waiting = Instant::now();
    while step() < 8 && child.try_wait().unwrap().is_none() {
        assert!(waiting.elapsed().as_secs() < 300, "no checkpoint past step 8 after 5 minutes");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let at = step();
    assert!(!out.exists(), "a killed run leaves no output model");
    let mut resume = args(&killed, &out);
    resume.push("--resume".into());
    distq(&resume.iter().map(String::as_str).collect::<Vec<_>>());
    let (a, b) = (losses[1], *epoch_losses(&killed.join("log.jsonl")).last().unwrap());
    println!("killed at step {at} of 16, resumed: final loss {b:.6}, uninterrupted {a:.6}");
    assert!((a - b).abs() <= 1e-4 * a.abs().max(1e-3), "final loss: uninterrupted {a}, killed at step {at} then resumed {b}");
}
