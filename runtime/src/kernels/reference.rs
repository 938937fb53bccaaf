//! Scalar reference kernels: the test oracle and the fallback on every CPU.

use super::DotU8I8;

/// Plain Rust loops.
pub struct Reference;

impl DotU8I8 for Reference {
    fn name(&self) -> &'static str {
        "reference-dot-u8i8"
    }

    fn dot_rows(&self, a: &[u8], b: &[i8], out: &mut [i32]) {
        let k = a.len();
        assert_eq!(b.len(), out.len() * k, "dot_rows: b holds {} values, not {} rows of {k}", b.len(), out.len());
        for (o, row) in out.iter_mut().zip(b.chunks_exact(k.max(1))) {
            *o = a.iter().zip(row).fold(0i32, |acc, (&x, &w)| acc.wrapping_add(x as i32 * w as i32));
        }
        if k == 0 {
            out.fill(0);
        }
    }
}
