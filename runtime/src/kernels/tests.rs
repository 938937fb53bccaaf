//! The shared table: every kernel this CPU runs, driven by the GEMM driver, against a naive
//! triple loop, bit for bit, on random data and on edge shapes and values.

use super::blocked::{BlockScaledWeights, gemm_block_scaled, quantize_rows};
use super::gemm::{PackedI8, gemm_u8i8};
use super::{GemmU8I8, gemm_u8i8_kernels};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub(super) fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// The oracle: Σ (a − za)(b − zb) per output, wrapping in i32 like the hardware.
fn naive(a: &[u8], a_zero: u8, b: &[i8], b_zero: &[i8], m: usize, k: usize) -> Vec<i32> {
    let n = b_zero.len();
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).fold(0i32, |s, p| {
                s.wrapping_add((a[i * k + p] as i32 - a_zero as i32).wrapping_mul(b[p * n + j] as i32 - b_zero[j] as i32))
            });
        }
    }
    c
}

struct Case<'a> {
    a: &'a [u8],
    a_zero: u8,
    b: &'a [i8],
    b_zero: &'a [i8],
    m: usize,
    k: usize,
    what: &'a str,
}

fn check(kernel: &dyn GemmU8I8, case: &Case) {
    let Case { a, a_zero, b, b_zero, m, k, what } = *case;
    let packed = PackedI8::new(kernel, b, k, b_zero.to_vec());
    let mut got = vec![7i32; m * b_zero.len()];
    gemm_u8i8(kernel, a, a_zero, &packed, &mut got);
    let want = naive(a, a_zero, b, b_zero, m, k);
    if let Some(i) = got.iter().zip(&want).position(|(g, w)| g != w) {
        let n = b_zero.len();
        panic!(
            "{} differs on {what} (m {m}, k {k}, n {n}, a_zero {a_zero}) at c[{}, {}]: {} vs {}",
            kernel.name(),
            i / n,
            i % n,
            got[i],
            want[i]
        );
    }
}

/// k around every group and register width; rows and columns around every tile size
/// (mr ∈ {3, 4, 6, 8}, nr ∈ {4, 8, 16, 48}), including M = 1 and N = 1. At k = 4099 the
/// drivers' row blocks are a tile or two high, so its 17 rows span several.
const K: &[usize] = &[0, 1, 3, 4, 5, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 255, 384, 1000, 4099];
const M: &[usize] = &[1, 2, 3, 4, 5, 7, 8, 9, 13, 17];
const N: &[usize] = &[1, 3, 4, 5, 8, 9, 16, 17, 47, 48, 49, 100];

#[test]
fn every_kernel_matches_the_oracle_on_random_data() {
    for kernel in gemm_u8i8_kernels() {
        for (i, &k) in K.iter().enumerate() {
            for t in 0..3 {
                let (m, n) = (M[(i + 3 * t) % M.len()], N[(i * 5 + t) % N.len()]);
                let seed = (k * 131 + m * 7 + n) as u64;
                let a = bytes(m * k, seed);
                let b: Vec<i8> = bytes(k * n, seed + 1).into_iter().map(|v| v as i8).collect();
                let b_zero: Vec<i8> = bytes(n, seed + 2).into_iter().map(|v| v as i8).collect();
                let a_zero = [0u8, 1, 128, 255][(i + t) % 4];
                check(kernel.as_ref(), &Case { a: &a, a_zero, b: &b, b_zero: &b_zero, m, k, what: "random data" });
            }
        }
    }
}

#[test]
fn every_kernel_splits_rows_over_threads_exactly() {
    // Big enough for 3 threads to each get work; m not a multiple of any mr.
    let (m, k, n) = (203, 260, 70);
    let a = bytes(m * k, 11);
    let b: Vec<i8> = bytes(k * n, 12).into_iter().map(|v| v as i8).collect();
    let b_zero: Vec<i8> = bytes(n, 13).into_iter().map(|v| v as i8).collect();
    for kernel in gemm_u8i8_kernels() {
        crate::threads::with(3, || {
            check(kernel.as_ref(), &Case { a: &a, a_zero: 77, b: &b, b_zero: &b_zero, m, k, what: "3 threads" });
        });
    }
}

#[test]
fn every_kernel_is_exact_at_the_value_limits() {
    // 255 · −128 everywhere is where vpmaddubsw-style kernels saturate; 255 · 127 the positive
    // side; alternating signs cancel; zero points at both ends.
    for kernel in gemm_u8i8_kernels() {
        for &k in K {
            let (m, n) = (9, 17);
            for (av, bv, a_zero, b_zero) in
                [(255u8, -128i8, 0u8, 0i8), (255, 127, 0, 0), (0, -128, 255, 127), (128, -1, 128, -128), (255, -128, 0, 127)]
            {
                let what = format!("a = {av}, b = {bv}, zero points {a_zero}/{b_zero}");
                let (a, b, zb) = (vec![av; m * k], vec![bv; k * n], vec![b_zero; n]);
                check(kernel.as_ref(), &Case { a: &a, a_zero, b: &b, b_zero: &zb, m, k, what: &what });
            }
            let alternating: Vec<i8> = (0..k * 5).map(|i| if i % 2 == 0 { 127 } else { -128 }).collect();
            check(
                kernel.as_ref(),
                &Case { a: &vec![255; 3 * k], a_zero: 0, b: &alternating, b_zero: &[0; 5], m: 3, k, what: "alternating signs" },
            );
        }
    }
}

#[test]
fn every_kernel_wraps_like_the_oracle_past_i32() {
    // 255 · 128 · k passes 2^31 at k = 65,794: the sums wrap, identically everywhere.
    for kernel in gemm_u8i8_kernels() {
        for k in [65_793, 70_001] {
            let (a, b) = (vec![255u8; 2 * k], vec![-128i8; k * 3]);
            check(kernel.as_ref(), &Case { a: &a, a_zero: 0, b: &b, b_zero: &[0, 0, 1], m: 2, k, what: "long k" });
        }
    }
}

/// Block-scaled products (weight-only int4 at int8 compute): every kernel equals the oracle
/// bit for bit — the block sums are exact and the f32 combination runs in the same order.
#[test]
fn every_kernel_computes_block_scaled_products_exactly() {
    // (k, block, m, n, 4-bit, zero points): k a multiple of the block or not, one block, blocks
    // of one or two groups, blocks of 5 and 9 groups, 4-bit blocks of 16 groups (the AVX2
    // tile widens its i16 sums every 8), a case big enough to split over 3 threads, one whose
    // rows span several of the drivers' row blocks, the last one short; zero points the
    // middle (GGUF's symmetric blocks), random, or 0 and 255 (8-bit values minus them span
    // −255..=255), each with scales stored as f16 and as f32; last, the extremes: every
    // activation at ±127 and every weight at its largest or smallest value.
    #[derive(Clone, Copy, PartialEq)]
    enum Zeros {
        Middle,
        Random,
        Ends,
        Extremes,
    }
    use Zeros::*;
    for (case, &(k, block, m, n, four_bit, zeros)) in [
        (64usize, 32usize, 5usize, 17usize, true, Middle),
        (40, 32, 9, 3, true, Random),
        (384, 32, 1, 49, true, Middle),
        (100, 8, 3, 8, true, Random),
        (7, 8, 2, 5, true, Middle),
        (128, 64, 4, 9, true, Random),
        (60, 20, 4, 9, false, Random),
        (72, 36, 3, 11, false, Middle),
        (256, 64, 150, 60, true, Middle),
        (4096, 32, 21, 9, false, Middle),
        (64, 32, 5, 17, false, Ends),
        (100, 4, 3, 8, false, Random),
        (256, 64, 150, 60, false, Random),
        (96, 32, 4, 16, false, Extremes),
        (96, 32, 4, 16, true, Extremes),
        // A decoder's token and a few: threads split the columns.
        (1024, 32, 1, 500, true, Middle),
        (512, 32, 3, 333, false, Random),
    ]
    .iter()
    .enumerate()
    {
        let blocks = k.div_ceil(block);
        let seed = case as u64 * 7 + 1;
        let top = if four_bit { 15 } else { 255 };
        let a: Vec<f32> = match zeros {
            Extremes => (0..m * k).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect(),
            _ => bytes(m * k, seed).into_iter().map(|v| (v as f32 - 127.5) / 17.0).collect(),
        };
        let u: Vec<u8> = match zeros {
            Extremes => (0..k * n).map(|i| if i % n % 2 == 0 { top } else { 0 }).collect(),
            _ => bytes(k * n, seed + 1).into_iter().map(|v| v & top).collect(),
        };
        let z: Vec<u8> = match zeros {
            Middle => vec![top / 2 + 1; blocks * n],
            Random => bytes(blocks * n, seed + 3).into_iter().map(|v| v & top).collect(),
            Ends => (0..blocks * n).map(|i| if i % 2 == 0 { 0 } else { top }).collect(),
            Extremes => (0..blocks * n).map(|i| if i % 2 == 0 { 0 } else { top }).collect(),
        };
        // Scales exact in f16 (stored so) in even cases, not in odd ones (stored as f32).
        let inexact = if case % 2 == 1 { 1.0001 } else { 1.0 };
        let scales: Vec<f32> = bytes(blocks * n, seed + 2).into_iter().map(|v| (v as f32 + 1.0) / 512.0 * inexact).collect();
        let qa = quantize_rows(&a, k, block);
        let mut want = vec![0f32; m * n];
        for r in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for blk in 0..blocks {
                    let s: i32 = (blk * block..((blk + 1) * block).min(k))
                        .map(|p| qa.q[r * qa.stride + p] as i32 * (u[p * n + j] as i32 - z[blk * n + j] as i32))
                        .sum();
                    acc += s as f32 * (qa.scales[r * blocks + blk] * scales[blk * n + j]);
                }
                want[r * n + j] = acc;
            }
        }
        for kernel in gemm_u8i8_kernels() {
            let (value, zero, scale) = (|p, j| u[p * n + j], |blk, j| z[blk * n + j], |blk, j| scales[blk * n + j]);
            let b = BlockScaledWeights::from_fn(kernel.as_ref(), k, n, block, four_bit, value, zero, scale);
            let mut c = vec![f32::NAN; m * n];
            crate::threads::with(3, || gemm_block_scaled(kernel.as_ref(), &qa, &b, &mut c, |_, _, v, out| out.copy_from_slice(v)));
            assert_eq!(c, want, "{} on case {case} (k {k}, block {block}, m {m}, n {n}, 4-bit {four_bit})", kernel.name());
        }
    }
}

#[test]
fn activation_blocks_quantize_symmetrically_per_block() {
    // Two blocks of 4 and a short third: max|a| maps to ±127, halves round to even, zeros
    // stay zero with scale 0.
    let a = [1.0f32, -0.5, 0.25, 2.0, 0.0, 0.0, 0.0, 0.0, -3.0, 1.5 * 3.0 / 127.0];
    let q = quantize_rows(&a, 10, 4);
    assert_eq!(q.stride, 12);
    assert_eq!(q.scales, [2.0 / 127.0, 0.0, 3.0 / 127.0]);
    assert_eq!(q.sums, [64 - 32 + 16 + 127, 0, -127 + 2]);
    let values: Vec<i32> = q.q.iter().map(|&v| v as i32).collect();
    // 1·63.5 = 63.5 → 64 (even), −0.5·63.5 = −31.75 → −32, 0.25·63.5 = 15.875 → 16; padding 0.
    assert_eq!(values, [64, -32, 16, 127, 0, 0, 0, 0, -127, 2, 0, 0]);
}

#[test]
fn packed_weights_belong_to_their_kernel() {
    let kernels = gemm_u8i8_kernels();
    let reference = kernels.last().unwrap();
    let packed = PackedI8::new(reference.as_ref(), &[1, 2], 1, vec![0, 0]);
    for kernel in kernels.iter().filter(|k| k.name() != reference.name()) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gemm_u8i8(kernel.as_ref(), &[1], 0, &packed, &mut [0; 2])));
        assert!(result.is_err(), "{} ran weights packed for the reference", kernel.name());
    }
}

#[test]
fn kernels_report_what_runs_here() {
    let names: Vec<&str> = gemm_u8i8_kernels().iter().map(|k| k.name()).collect();
    println!("u8·i8 GEMM kernels on this CPU: {names:?}");
    assert_eq!(names.last(), Some(&"reference-gemm-u8i8"));
}
