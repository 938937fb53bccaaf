//! Elementwise arithmetic between static-QDQ pairs, `DequantizeLinear(a), DequantizeLinear(b)
//! → Add | Sub | Mul | Div → QuantizeLinear` (what onnxruntime runs as QLinearAdd /
//! QLinearMul), as one step: the same dequantize, float op and quantize arithmetic as the
//! steps it replaces (bit-identical). Same-shape operands, and a second operand repeating
//! along the first (one value, a per-channel bias), run block by block, so no float tensor
//! reaches memory; other broadcasts dequantize whole tensors first. Made by the planner's fusion pass, not imported.

use super::chain::{BLOCK, Operand, binary_in_place};
use super::elementwise::Binary;
use super::quant::{QuantizedInt, StoredInt, dequantize_run, quantize_run};
use super::{BufferPool, Fact, Op, broadcast_shapes, expect_dtype, out, required};
use crate::error::{Result, ensure};
use crate::tensor::{DataType, Tensor};

/// `QLinearBinary(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale,
/// y_zero_point)`, every parameter one value.
#[derive(Debug)]
pub struct QLinearBinary {
    pub(crate) op: Binary,
}

/// A per-tensor scale and zero point.
#[derive(Clone, Copy)]
struct Params {
    scale: f32,
    zero: i32,
}

impl Params {
    fn of(inputs: &[Option<&Tensor>], scale: usize, what: &str) -> Result<Params> {
        let (s, z) = (required(inputs, scale)?, required(inputs, scale + 1)?);
        ensure!(s.len() == 1 && z.len() == 1, "{what} scale and zero point must be one value each, got {s:?} and {z:?}");
        let zero = match z.dtype() {
            DataType::U8 => z.as_slice::<u8>()?[0] as i32,
            _ => z.as_slice::<i8>()?[0] as i32,
        };
        Ok(Params { scale: s.to_f32s()?[0], zero })
    }
}

impl Op for QLinearBinary {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 3)?);
        for (i, what) in [(0, "a"), (2, "a_zero_point"), (3, "b"), (5, "b_zero_point")] {
            expect_dtype(required(inputs, i)?, &[DataType::U8, DataType::I8], what)?;
        }
        let y_zero = required(inputs, 7)?;
        expect_dtype(y_zero, &[DataType::U8, DataType::I8], "y_zero_point")?;
        Ok(vec![Fact::new(y_zero.dtype, broadcast_shapes(&a.shape, &b.shape)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 3)?);
        let (pa, pb, py) = (Params::of(inputs, 1, "a")?, Params::of(inputs, 4, "b")?, Params::of(inputs, 6, "y")?);
        ensure!(py.scale != 0.0, "y_scale is 0");
        let y_dtype = required(inputs, 7)?.dtype();
        macro_rules! typed {
            ($a:ty, $b:ty) => {
                match y_dtype {
                    DataType::U8 => self.typed::<$a, $b, u8>(a, pa, b, pb, py, pool),
                    _ => self.typed::<$a, $b, i8>(a, pa, b, pb, py, pool),
                }
            };
        }
        Ok(vec![match (a.dtype(), b.dtype()) {
            (DataType::U8, DataType::U8) => typed!(u8, u8)?,
            (DataType::U8, _) => typed!(u8, i8)?,
            (_, DataType::U8) => typed!(i8, u8)?,
            _ => typed!(i8, i8)?,
        }])
    }
}

impl QLinearBinary {
    fn typed<A: StoredInt, B: StoredInt, Y: QuantizedInt>(
        &self,
        a: &Tensor,
        pa: Params,
        b: &Tensor,
        pb: Params,
        py: Params,
        pool: &mut BufferPool,
    ) -> Result<Tensor> {
        let (av, bv) = (a.as_slice::<A>()?, b.as_slice::<B>()?);
        let shape = broadcast_shapes(a.shape(), b.shape())?;
        // `b` repeating along `a` (one value, or `a`'s trailing dims: a bias per channel)
        // is dequantized once; the same shape streams with `a`; other broadcasts go through
        // whole float tensors.
        let leading_ones = b.shape().iter().take_while(|&&d| d == 1).count();
        let repeats = shape == a.shape() && (bv.len() == 1 || a.shape().ends_with(&b.shape()[leading_ones..]));
        if a.shape() != b.shape() && !repeats {
            let y = self.op.apply(&dequantized::<A>(a, pa, pool)?, &dequantized::<B>(b, pb, pool)?, pool)?;
            let mut q = pool.overwritable::<Y>(y.len());
            quantize_run(y.as_slice::<f32>()?, py.scale, py.zero, &mut q);
            return out(y.shape().to_vec(), q);
        }
        let mut q = pool.overwritable::<Y>(av.len());
        let run = |qa: &mut [Y], aa: &[A], x: &mut [f32], operand: Operand| {
            dequantize_run(aa, pa.scale, pa.zero, x);
            binary_in_place(self.op, x, operand, false);
            quantize_run(x, py.scale, py.zero, qa);
        };
        if a.shape() == b.shape() {
            let (mut x, mut w) = ([0f32; BLOCK], [0f32; BLOCK]);
            for ((qa, aa), ba) in q.chunks_mut(BLOCK).zip(av.chunks(BLOCK)).zip(bv.chunks(BLOCK)) {
                let w = &mut w[..ba.len()];
                dequantize_run(ba, pb.scale, pb.zero, w);
                run(qa, aa, &mut x[..aa.len()], Operand::Slice(w));
            }
        } else {
            let mut w = vec![0f32; bv.len()];
            dequantize_run(bv, pb.scale, pb.zero, &mut w);
            // Rows of `b`'s length (at least a block when `b` is one value).
            let row = if w.len() == 1 { BLOCK } else { w.len() };
            let mut x = vec![0f32; row];
            for (qa, aa) in q.chunks_mut(row).zip(av.chunks(row)) {
                let operand = if w.len() == 1 { Operand::Scalar(w[0]) } else { Operand::Slice(&w) };
                run(qa, aa, &mut x[..aa.len()], operand);
            }
        }
        out(shape, q)
    }
}

/// A whole tensor dequantized (for broadcasting operands).
fn dequantized<T: StoredInt>(t: &Tensor, p: Params, pool: &mut BufferPool) -> Result<Tensor> {
    let mut f = pool.overwritable::<f32>(t.len());
    dequantize_run(t.as_slice::<T>()?, p.scale, p.zero, &mut f);
    out(t.shape().to_vec(), f)
}
