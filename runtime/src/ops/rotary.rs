//! Rotary position embedding in Hugging Face's rotate-half form, `x·cos + rotate_half(x)·sin`
//! with `rotate_half(x) = [−x₂, x₁]` for the halves `x₁, x₂` of the last axis: one step where a
//! decoder spells it out in seven (two Slices, Neg, Concat, two Muls, Add). Made by fusion.

use super::{BufferPool, Fact, Op, broadcast_shapes, broadcast_strides, expect_dtype, out, required, strides};
use crate::error::{Result, ensure};
use crate::tensor::{DataType, Tensor};

/// `RotaryHalves(x, cos, sin)`: `cos` and `sin` broadcast to `x` (a decoder's `[batch, 1,
/// seq, head_dim]` against `[batch, heads, seq, head_dim]`), their last axis `x`'s own. The
/// same multiplications and addition as the spelled-out steps, so the same bits.
#[derive(Debug)]
pub struct RotaryHalves;

impl Op for RotaryHalves {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        let last = x.shape.last().copied().unwrap_or(0);
        ensure!(last % 2 == 0, "the last axis of {:?} has no halves", x.shape);
        for (i, what) in [(1, "cos"), (2, "sin")] {
            let t = required(inputs, i)?;
            expect_dtype(t, &[DataType::F32], what)?;
            ensure!(t.shape.last() == Some(&last), "{what} of shape {:?} does not match the last axis of {:?}", t.shape, x.shape);
            ensure!(broadcast_shapes(&x.shape, &t.shape)? == x.shape, "{what} of shape {:?} does not broadcast to {:?}", t.shape, x.shape);
        }
        Ok(vec![Fact::new(DataType::F32, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (x, cos, sin) = (required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?);
        let shape = x.shape().to_vec();
        let (rank, width) = (shape.len(), shape.last().copied().unwrap_or(0));
        let half = width / 2;
        let dense = strides(&shape);
        let (cos_strides, sin_strides) = (broadcast_strides(cos.shape(), &shape), broadcast_strides(sin.shape(), &shape));
        let (xv, cv, sv) = (x.as_slice::<f32>()?, cos.as_slice::<f32>()?, sin.as_slice::<f32>()?);
        let mut y = pool.overwritable(xv.len());
        for (row, (x_row, y_row)) in xv.chunks_exact(width.max(1)).zip(y.chunks_exact_mut(width.max(1))).enumerate() {
            let (mut c0, mut s0) = (0, 0);
            for d in 0..rank.saturating_sub(1) {
                let index = row * width / dense[d] % shape[d];
                c0 += index * cos_strides[d];
                s0 += index * sin_strides[d];
            }
            let (c, s) = (&cv[c0..][..width], &sv[s0..][..width]);
            for j in 0..width {
                let rotated = if j < half { -x_row[j + half] } else { x_row[j - half] };
                y_row[j] = x_row[j] * c[j] + rotated * s[j];
            }
        }
        Ok(vec![out(shape, y)?])
    }
}
