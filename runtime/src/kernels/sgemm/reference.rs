//! Scalar reference kernel: the fallback on every CPU (a 3 × 4 tile, so that odd sizes
//! exercise the driver's edges).

use super::{GemmF32, Matrix, check_tile};

/// Plain Rust loops, a multiply then an add per term.
pub struct Reference;

impl GemmF32 for Reference {
    fn name(&self) -> &'static str {
        "reference-gemm-f32"
    }

    fn nr(&self) -> usize {
        4
    }

    fn mr(&self) -> usize {
        3
    }

    fn tile(&self, a: Matrix, panel: &[f32], out: &mut [f32], ldc: usize) {
        check_tile(self, a, panel, out, ldc);
        let nr = self.nr();
        for r in 0..a.rows {
            for j in 0..nr {
                let mut sum = 0f32;
                for p in 0..a.cols {
                    sum += a.data[r * a.row_stride + p * a.col_stride] * panel[p * nr + j];
                }
                out[r * ldc + j] = sum;
            }
        }
    }
}
