//! MiniLM (8 sentences × 64 tokens, 1 thread) in fp32 and in onnxruntime's quantized forms,
//! side by side: dynamic int8 per-channel (MatMulInteger + DynamicQuantizeLinear) and int4
//! block-32 weight-only (MatMulNBits, exact f32 and at int8 compute). The quantized files are made once by
//! `tools/ort_quantize.py` into `models/cache/` with `$DISTQ_PYTHON` (tools/test.sh's venv:
//! `.venv/bin/python`); without it the bench says what is missing instead of skipping
//! silently.

#[path = "common.rs"]
#[allow(dead_code)] // each bench target uses its own part of it
mod common;

use common::quantized;
use criterion::{Criterion, criterion_group, criterion_main};
use distq_converter::models::{data_path, model_path};
use distq_io::npz::read_npz;
use distq_runtime::Session;
use std::hint::black_box;

fn minilm(c: &mut Criterion) {
    let Some(fp32) = model_path("minilm/all-MiniLM-L6-v2.onnx") else {
        eprintln!("bench minilm: model not found — run models/fetch.sh or set DISTQ_MODELS_DIR");
        return;
    };
    let inputs = read_npz(&data_path("minilm_8x64.npz")).expect("inputs read");
    let mut group = c.benchmark_group("minilm_8x64");
    group.sample_size(20);
    let variants = [
        ("fp32", Some(fp32.clone())),
        ("int8_dynamic", quantized(&fp32, "dynamic")),
        ("int4_block32", quantized(&fp32, "int4")),
        ("int4_block32_int8_compute", quantized(&fp32, "int4-int8")),
    ];
    for (name, path) in variants {
        let Some(path) = path else { continue };
        let session = Session::load(&path).expect("model loads");
        session.set_threads(1);
        group.bench_function(name, |b| b.iter(|| black_box(session.run(inputs.clone()).expect("runs"))));
    }
    group.finish();
}

criterion_group!(benches, minilm);
criterion_main!(benches);
