//! Scalar reference kernels: the test oracle and the fallback on every CPU.

use super::{DotU8I8, dot_each_row};

/// Plain Rust loops.
pub struct Reference;

impl DotU8I8 for Reference {
    fn name(&self) -> &'static str {
        "reference-dot-u8i8"
    }

    fn dot_rows(&self, a: &[u8], b: &[i8], out: &mut [i32]) {
        dot_each_row(a, b, out, |a, row| a.iter().zip(row).fold(0i32, |acc, (&x, &w)| acc.wrapping_add(x as i32 * w as i32)));
    }
}
