//! End-to-end fp32 latency of the shared real models on their committed real inputs
//! (1 thread). Models come from `models/fetch.sh` or the shared folder; a missing model is
//! reported, not silently skipped.

use criterion::{Criterion, criterion_group, criterion_main};
use distq_converter::models::{data_path, model_path};
use distq_converter::npz::read_npz;
use distq_runtime::Session;
use std::hint::black_box;

const CASES: &[(&str, &str, &str)] = &[
    ("minilm_8x64", "minilm/all-MiniLM-L6-v2.onnx", "minilm_8x64.npz"),
    ("ppocr_det_192x384", "ppocr/ch_PP-OCRv4_det_infer.onnx", "ppocr_det.npz"),
    ("ppocr_rec_48x320", "ppocr/ch_PP-OCRv4_rec_infer.onnx", "ppocr_rec.npz"),
    ("ppocr_cls_48x192", "ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx", "ppocr_cls.npz"),
    ("silero_vad_512", "silero_vad/silero_vad_16k_op15.onnx", "silero_vad.npz"),
];

fn models(c: &mut Criterion) {
    let mut group = c.benchmark_group("fp32");
    group.sample_size(10);
    for &(name, rel, input) in CASES {
        let Some(path) = model_path(rel) else {
            eprintln!("bench {name}: model {rel} not found — run models/fetch.sh or set DISTQ_MODELS_DIR");
            continue;
        };
        let session = Session::load(&path).expect("model loads");
        let inputs = read_npz(&data_path(input)).expect("inputs read");
        group.bench_function(name, |b| b.iter(|| black_box(session.run(inputs.clone()).expect("runs"))));
    }
    group.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
