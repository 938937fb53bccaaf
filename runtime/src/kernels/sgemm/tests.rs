//! The shared table: every f32 kernel this CPU runs, driven by [`sgemm`], against an f64
//! oracle on random data, dense and strided operands, and edge shapes, within the error
//! bound of an f32 sum in any order (`k · ε · Σ|a·b|`).

use super::{Matrix, PackedF32, gemm_f32_kernels, sgemm};

/// Deterministic values in [-1, 1) (the integer table's generator), so failures reproduce.
fn values(n: usize, seed: u64) -> Vec<f32> {
    super::super::tests::bytes(n, seed).into_iter().map(|b| b as f32 / 128.0 - 1.0).collect()
}

/// Checks `a · b` for every kernel; `a` and `b` read through their strides.
fn check(a: Matrix, b: Matrix, what: &str) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let at = |x: &Matrix, i: usize, j: usize| x.data[i * x.row_stride + j * x.col_stride];
    for kernel in gemm_f32_kernels() {
        let packed = PackedF32::new(kernel.as_ref(), b);
        let mut c = vec![f32::NAN; m * n];
        sgemm(kernel.as_ref(), a, &packed, &mut c);
        for i in 0..m {
            for j in 0..n {
                let terms = (0..k).map(|p| at(&a, i, p) as f64 * at(&b, p, j) as f64);
                let (want, magnitude) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                let bound = k as f64 * f32::EPSILON as f64 * magnitude;
                let got = c[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= bound,
                    "{} on {what} (m {m}, k {k}, n {n}) at c[{i}, {j}]: {got} vs {want} (bound {bound:e})",
                    kernel.name()
                );
            }
        }
    }
}

/// Rows and columns around every tile size (mr ∈ {3, 4, 6, 8}, nr ∈ {4, 16, 32}), k from 0.
const M: &[usize] = &[1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 64];
const K: &[usize] = &[0, 1, 2, 5, 16, 31, 32, 33, 64, 100, 384];
const N: &[usize] = &[1, 3, 4, 5, 15, 16, 17, 31, 32, 33, 64, 100];

#[test]
fn every_kernel_matches_the_oracle_dense() {
    for (i, &k) in K.iter().enumerate() {
        for t in 0..3 {
            let (m, n) = (M[(i + 4 * t) % M.len()], N[(i * 5 + t) % N.len()]);
            let (a, b) = (values(m * k, (k * 131 + m) as u64), values(k * n, (k * 7 + n) as u64));
            check(Matrix::dense(&a, m, k), Matrix::dense(&b, k, n), "dense operands");
        }
    }
}

#[test]
fn every_kernel_reads_strided_operands_in_place() {
    // Attention's head split: Q rows 384 apart (a head's 32 values inside), Kᵀ read by
    // columns, V rows 384 apart; 12 heads side by side in one buffer of 64 tokens.
    let (tokens, width, head) = (64, 384, 32);
    let (q, kv) = (values(tokens * width, 1), values(tokens * width, 2));
    for h in [0, 5, 11] {
        let q_h = Matrix { data: &q[h * head..], rows: tokens, cols: head, row_stride: width, col_stride: 1 };
        let k_h = Matrix { data: &kv[h * head..], rows: tokens, cols: head, row_stride: width, col_stride: 1 };
        check(q_h, k_h.t(), "Q · Kᵀ of one head");
        let p = values(tokens * tokens, 3 + h as u64);
        check(Matrix::dense(&p, tokens, tokens), k_h, "P · V of one head");
    }
    // A read transposed (Gemm's transA).
    let a = values(33 * 7, 4);
    check(Matrix::dense(&a, 33, 7).t(), Matrix::dense(&values(33 * 19, 5), 33, 19), "A transposed");
}

#[test]
fn rows_span_several_row_blocks() {
    // 250 rows of k = 384 make blocks of 96 rows for 6-row tiles (rows and output within a
    // share of L2; see `row_block`), the last one short and not whole tiles.
    let (m, k, n) = (250, 384, 100);
    let (a, b) = (values(m * k, 8), values(k * n, 9));
    check(Matrix::dense(&a, m, k), Matrix::dense(&b, k, n), "rows in several blocks");
    check(Matrix::dense(&a, k, m).t(), Matrix::dense(&b, k, n), "A transposed, rows in several blocks");
}

#[test]
fn special_values_propagate() {
    let (a, b) = ([1.0, f32::INFINITY, 0.0, 2.0], [f32::NAN, 1.0, 1.0, 1.0]);
    for kernel in gemm_f32_kernels() {
        let mut c = [0f32; 4];
        sgemm(kernel.as_ref(), Matrix::dense(&a, 2, 2), &PackedF32::new(kernel.as_ref(), Matrix::dense(&b, 2, 2)), &mut c);
        assert!(c[0].is_nan() && c[1] == f32::INFINITY && c[2].is_nan() && c[3] == 2.0, "{}: {c:?}", kernel.name());
    }
}

#[test]
fn threads_split_rows_without_changing_results() {
    let (m, k, n) = (301, 200, 45);
    let (a, b) = (values(m * k, 6), values(k * n, 7));
    for kernel in gemm_f32_kernels() {
        let packed = PackedF32::new(kernel.as_ref(), Matrix::dense(&b, k, n));
        let product = |threads| {
            let mut c = vec![0f32; m * n];
            crate::threads::with(threads, || sgemm(kernel.as_ref(), Matrix::dense(&a, m, k), &packed, &mut c));
            c
        };
        assert_eq!(product(1), product(3), "{}", kernel.name());
    }
}

#[test]
fn a_few_rows_split_columns_and_sum_as_inside_a_tall_product() {
    // A decoder's token or two: threads take panels of columns; each row's values are those
    // the same row gets among many (split by rows).
    let (m, k, n) = (40, 300, 1000);
    let (a, b) = (values(m * k, 10), values(k * n, 11));
    for kernel in gemm_f32_kernels() {
        let packed = PackedF32::new(kernel.as_ref(), Matrix::dense(&b, k, n));
        let product = |rows: usize, threads| {
            let mut c = vec![0f32; rows * n];
            crate::threads::with(threads, || sgemm(kernel.as_ref(), Matrix::dense(&a, rows, k), &packed, &mut c));
            c
        };
        let tall = product(m, 2);
        for rows in [1, 2, 3] {
            assert_eq!(product(rows, 1), product(rows, 3), "{}: {rows} rows", kernel.name());
            assert_eq!(product(rows, 2), tall[..rows * n], "{}: {rows} rows against a tall product", kernel.name());
        }
    }
}

#[test]
#[should_panic(expected = "out of bounds")]
fn an_operand_past_its_data_is_refused() {
    let kernel = super::best_gemm_f32();
    let b = [0f32; 6];
    PackedF32::new(kernel, Matrix { data: &b, rows: 2, cols: 3, row_stride: 4, col_stride: 1 });
}
