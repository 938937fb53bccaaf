//! The shared table: every kernel this CPU runs against the scalar reference, bit for bit,
//! on random data and on edge shapes and values.

use super::reference::Reference;
use super::{DotU8I8, PackedI8, dot_u8i8_kernels, gemm_u8i8};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
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

/// (k, rows): k around every SIMD width boundary, long rows, 1 row, many rows.
const SHAPES: &[(usize, usize)] = &[
    (0, 3),
    (1, 1),
    (15, 2),
    (16, 4),
    (17, 3),
    (31, 1),
    (32, 5),
    (33, 2),
    (63, 3),
    (64, 4),
    (65, 2),
    (127, 1),
    (255, 7),
    (384, 3),
    (1000, 2),
    (4099, 1),
];

fn check(kernel: &dyn DotU8I8, a: &[u8], b: &[i8], rows: usize, what: &str) {
    let (mut got, mut want) = (vec![7i32; rows], vec![0i32; rows]);
    kernel.dot_rows(a, b, &mut got);
    Reference.dot_rows(a, b, &mut want);
    assert_eq!(got, want, "{} differs from the reference on {what} (k = {})", kernel.name(), a.len());
}

#[test]
fn every_kernel_matches_reference_on_random_data() {
    for kernel in dot_u8i8_kernels() {
        for &(k, rows) in SHAPES {
            let a = bytes(k, k as u64 + 1);
            let b: Vec<i8> = bytes(k * rows, k as u64 + 99).into_iter().map(|v| v as i8).collect();
            check(kernel.as_ref(), &a, &b, rows, "random data");
        }
    }
}

#[test]
fn every_kernel_is_exact_at_the_value_limits() {
    // 255 · −128 everywhere is where vpmaddubsw-style kernels saturate; 255 · 127 the
    // positive side; mixed signs cancel.
    for kernel in dot_u8i8_kernels() {
        for &(k, rows) in SHAPES {
            for (av, bv) in [(255u8, -128i8), (255, 127), (0, -128), (128, -1)] {
                check(kernel.as_ref(), &vec![av; k], &vec![bv; k * rows], rows, &format!("a = {av}, b = {bv}"));
            }
            let alternating: Vec<i8> = (0..k * rows).map(|i| if i % 2 == 0 { 127 } else { -128 }).collect();
            check(kernel.as_ref(), &vec![255; k], &alternating, rows, "alternating signs");
        }
        let k = super::MAX_DOT_LEN;
        check(kernel.as_ref(), &vec![255; k], &vec![-128; k], 1, "the longest exact k");
    }
}

#[test]
fn gemm_applies_zero_points_exactly() {
    let (m, k, n) = (3, 37, 5);
    let a = bytes(m * k, 5);
    let b: Vec<i8> = bytes(n * k, 6).into_iter().map(|v| v as i8).collect();
    let b_zero: Vec<i8> = vec![0, 3, -7, 127, -128];
    let packed = PackedI8::new(b.clone(), b_zero.clone(), k);
    for kernel in dot_u8i8_kernels() {
        for a_zero in [0u8, 1, 128, 255] {
            let mut c = vec![0i32; m * n];
            gemm_u8i8(kernel.as_ref(), &a, a_zero, &packed, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let want: i32 = (0..k).map(|p| (a[i * k + p] as i32 - a_zero as i32) * (b[j * k + p] as i32 - b_zero[j] as i32)).sum();
                    assert_eq!(c[i * n + j], want, "{} c[{i}, {j}] with a_zero {a_zero}", kernel.name());
                }
            }
        }
    }
}

#[test]
fn kernels_report_what_runs_here() {
    let names: Vec<&str> = dot_u8i8_kernels().iter().map(|k| k.name()).collect();
    println!("u8·i8 dot kernels on this CPU: {names:?}");
    assert_eq!(names.last(), Some(&"reference-dot-u8i8"));
}
