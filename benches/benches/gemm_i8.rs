//! u8·i8 → i32 GEMM through each kernel this CPU runs, side by side, at the shapes
//! (a square 512³, MiniLM's FFN 64×384×1536, a 4096² GEMV). Throughput is in elements/s with
//! 2·m·n·k elements per GEMM, i.e. integer ops per second. The `peak` entry measures this
//! CPU's register-only `vpdpbusd` rate (24 independent accumulators), the ceiling the
//! VNNI kernel is judged against.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use distq_runtime::kernels::gemm::{PackedI8, gemm_u8i8};
use distq_runtime::kernels::gemm_u8i8_kernels;
use std::hint::black_box;

fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm_u8i8");
    group.sample_size(10);
    for (m, k, n) in [(512, 512, 512), (64, 384, 1536), (1, 4096, 4096)] {
        let a: Vec<u8> = (0..m * k).map(|i| (i * 7 % 251) as u8).collect();
        let b: Vec<i8> = (0..n * k).map(|i| (i * 13 % 255) as i8).collect();
        let mut out = vec![0i32; m * n];
        group.throughput(Throughput::Elements((2 * m * n * k) as u64));
        for kernel in gemm_u8i8_kernels() {
            let packed = PackedI8::new(kernel.as_ref(), &b, k, vec![0; n]);
            group.bench_with_input(BenchmarkId::new(kernel.name(), format!("{m}x{k}x{n}")), &(), |bench, _| {
                bench.iter(|| gemm_u8i8(kernel.as_ref(), black_box(&a), 3, &packed, &mut out))
            });
        }
    }
    group.finish();
}

#[cfg(target_arch = "x86_64")]
fn peak(c: &mut Criterion) {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn dpbusd_loop(iters: usize, a: __m512i, b: __m512i) -> i32 {
        let mut acc = [_mm512_setzero_si512(); 24];
        for _ in 0..iters {
            for acc in acc.iter_mut() {
                *acc = _mm512_dpbusd_epi32(*acc, a, b);
            }
        }
        acc.iter().fold(0, |s, &v| s.wrapping_add(_mm512_reduce_add_epi32(v)))
    }
    if !(is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512bw")) {
        return;
    }
    let iters = 100_000;
    let mut group = c.benchmark_group("gemm_u8i8");
    // 24 vpdpbusd × 64 multiply-adds × 2 ops per iteration.
    group.throughput(Throughput::Elements((iters * 24 * 64 * 2) as u64));
    group.bench_function("peak/x86-avx512vnni-vpdpbusd", |bench| {
        // Safety: the features were detected above.
        bench.iter(|| unsafe { dpbusd_loop(black_box(iters), _mm512_set1_epi32(black_box(0x0101_0101)), _mm512_set1_epi32(0x0102_0304)) })
    });
    group.finish();
}

#[cfg(not(target_arch = "x86_64"))]
fn peak(_: &mut Criterion) {}

criterion_group!(benches, peak, gemm);
criterion_main!(benches);
