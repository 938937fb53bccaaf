//! Scalar reference kernel: the fallback on every CPU (and a second oracle in the tests).

use super::{GemmU8I8, TileRows, check_tile};

/// Plain Rust loops over a 3 × 4 tile (odd sizes exercise the driver's edges).
pub struct Reference;

impl GemmU8I8 for Reference {
    fn name(&self) -> &'static str {
        "reference-gemm-u8i8"
    }

    fn nr(&self) -> usize {
        4
    }

    fn mr(&self) -> usize {
        3
    }

    fn tile(&self, rows: TileRows, panel: &[i8], k4: usize, init: &[i32], acc: &mut [i32]) {
        check_tile(self, rows, panel, k4, init, acc);
        let TileRows { data: a, stride: lda, count: rows } = rows;
        let nr = self.nr();
        for r in 0..rows {
            for j in 0..nr {
                let mut sum = init[j];
                for p in 0..4 * k4 {
                    sum = sum.wrapping_add(a[r * lda + p] as i32 * panel[(p / 4 * nr + j) * 4 + p % 4] as i32);
                }
                acc[r * nr + j] = sum;
            }
        }
    }
}
