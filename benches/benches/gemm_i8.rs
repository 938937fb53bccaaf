//! u8·i8 → i32 GEMM through each dot kernel this CPU runs, side by side. Throughput is
//! reported in elements/s with 2·m·n·k elements per GEMM, i.e. integer ops per second.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use distq_runtime::kernels::{PackedI8, dot_u8i8_kernels, gemm_u8i8};
use std::hint::black_box;

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm_u8i8");
    group.sample_size(10);
    for (m, k, n) in [(512, 512, 512), (64, 384, 1536), (1, 4096, 4096)] {
        let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 251) as u8).collect();
        let b: Vec<i8> = (0..n * k).map(|i| (i * 13 % 255) as i8).collect();
        let packed = PackedI8::new(b, vec![0; n], k);
        let mut out = vec![0i32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for kernel in dot_u8i8_kernels() {
            group.bench_with_input(BenchmarkId::new(kernel.name(), format!("{m}x{k}x{n}")), &(), |bench, _| {
                bench.iter(|| gemm_u8i8(kernel.as_ref(), black_box(&a), 3, &packed, &mut out))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
