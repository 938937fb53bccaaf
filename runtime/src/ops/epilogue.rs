//! What an integer GEMM applies to each output tile as it leaves the kernel, after its scales
//! and bias: a residual Add (`MatMul → Add(bias) → Add(x)`, before every LayerNorm of a
//! transformer). It is the f32 addition of the step it replaces, so results are bit-identical
//! to the unfused graph, and the matmul's output makes one trip through memory instead of two.
//! The planner's fusion pass builds it.
//!
//! Elementwise chains (GELU) stay steps of their own: on the kernel's spans of 48 columns
//! the chain measured slower than one pass over the whole output (erf's latency is not hidden
//! on so few values), while the residual costs one add per value either way.

use super::{Fact, Work};
use crate::error::{Error, Result};
use crate::tensor::DataType;

/// The fused tail of a matmul step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epilogue {
    /// `v + residual`, from a full-shape f32 input of the step.
    pub residual: bool,
}

impl Epilogue {
    /// Checks the residual input's fact against the step's output shape.
    pub(crate) fn check_residual(&self, residual: Option<&Fact>, output: &[usize]) -> Result<()> {
        match (self.residual, residual) {
            (false, _) => Ok(()),
            (true, Some(r)) if r.dtype == DataType::F32 && r.shape == output => Ok(()),
            (true, Some(r)) => Err(Error::Op(format!("the residual {:?} {:?} must be f32 {output:?}", r.dtype, r.shape))),
            (true, None) => Err(Error::Op("the fused residual Add has no input".into())),
        }
    }

    /// Applies the epilogue to `out`, the span of row `row` from column `col0` of a row-major
    /// output with `n` columns; `residual` is the whole residual input.
    #[inline(always)]
    pub(crate) fn apply(&self, out: &mut [f32], residual: Option<&[f32]>, row: usize, col0: usize, n: usize) {
        if let Some(r) = residual.filter(|_| self.residual) {
            for (v, &r) in out.iter_mut().zip(&r[row * n + col0..]) {
                *v += r;
            }
        }
    }

    /// Its elementwise operations over `elements` outputs (for the energy model).
    pub(crate) fn work(&self, elements: usize) -> Work {
        Work { other_ops: if self.residual { elements as u64 } else { 0 }, ..Work::default() }
    }
}
