//! End-to-end fp32 latency of the shared real models on their committed real inputs
//! (1 thread). Models come from `models/fetch.sh` or the shared folder; a missing model is
//! reported, not silently skipped.

#[path = "common.rs"]
#[allow(dead_code)] // each bench target uses its own part of it
mod common;

use common::FP32_CASES;
use criterion::{Criterion, criterion_group, criterion_main};
use distq_converter::models::{data_path, model_path};
use distq_io::npz::read_npz;
use distq_runtime::Session;
use std::hint::black_box;

fn models(c: &mut Criterion) {
    let mut group = c.benchmark_group("fp32");
    group.sample_size(10);
    for &(name, rel, input) in FP32_CASES {
        let Some(path) = model_path(rel) else {
            eprintln!("bench {name}: model {rel} not found — run models/fetch.sh or set DISTQ_MODELS_DIR");
            continue;
        };
        let session = Session::load(&path).expect("model loads");
        session.set_threads(1);
        let inputs = read_npz(&data_path(input)).expect("inputs read");
        group.bench_function(name, |b| b.iter(|| black_box(session.run(inputs.clone()).expect("runs"))));
    }
    group.finish();
}

criterion_group!(benches, models);
criterion_main!(benches);
