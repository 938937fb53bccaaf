//! Rotary position embedding: in Hugging Face's rotate-half form, `x·cos + rotate_half(x)·sin`
//! with `rotate_half(x) = [−x₂, x₁]` for the halves `x₁, x₂` of the last axis, one step where
//! a decoder spells it out in seven (two Slices, Neg, Concat, two Muls, Add), made by fusion;
//! and onnxruntime's contrib `RotaryEmbedding`, which reads its angles from cos/sin caches.

use super::{
    BufferPool, Fact, ImportCtx, Importer, Op, broadcast_shapes, broadcast_strides, expect_dtype, out, required, strides, unsupported_attr,
};
use crate::error::{Result, bail, ensure};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[("com.microsoft::RotaryEmbedding", import_rotary_embedding)];

fn import_rotary_embedding(c: &ImportCtx) -> Result<Box<dyn Op>> {
    if c.attrs.int("is_packed_batching", 0)? != 0 {
        return Err(unsupported_attr("packed batching".into()));
    }
    let scale = c.attrs.float("scale", 1.0)?;
    if scale != 1.0 {
        return Err(unsupported_attr(format!("scale {scale}")));
    }
    let count = |key: &str| -> Result<usize> {
        let v = c.attrs.int(key, 0)?;
        usize::try_from(v).map_err(|_| crate::error::Error::Op(format!("attribute {key} is {v}")))
    };
    Ok(Box::new(RotaryEmbedding {
        interleaved: c.attrs.int("interleaved", 0)? != 0,
        num_heads: count("num_heads")?,
        rotary_dim: count("rotary_embedding_dim")?,
    }))
}

/// com.microsoft `RotaryEmbedding(input, position_ids, cos_cache, sin_cache)`: `input` is
/// `[batch, seq, heads · head_size]` or `[batch, heads, seq, head_size]`; position `p` of a
/// token rotates the first `rotary_dim` values of each head by the angles of row `p` of the
/// caches (`[positions, rotary_dim / 2]`), as pairs of halves or, `interleaved`, of neighbours;
/// the rest pass as they are. `position_ids` is `[batch, seq]`, or one offset for all.
#[derive(Debug)]
pub struct RotaryEmbedding {
    interleaved: bool,
    /// Heads of a 3-D input (0: from the caches' width, a whole head rotated).
    num_heads: usize,
    /// Values rotated per head (0: the whole head).
    rotary_dim: usize,
}

impl RotaryEmbedding {
    /// Rotation of the first `rotary_dim` values of each of `num_heads` heads (for 3-D input;
    /// 0s as in the attributes).
    pub(crate) fn new(interleaved: bool, num_heads: usize, rotary_dim: usize) -> RotaryEmbedding {
        RotaryEmbedding { interleaved, num_heads, rotary_dim }
    }

    /// (batch, seq, heads, head_size, rotary_dim) of an input of shape `x` with caches
    /// `half` wide.
    fn dims(&self, x: &[usize], half: usize) -> Result<(usize, usize, usize, usize, usize)> {
        let (batch, seq, heads, head_size) = match *x {
            [b, n, s, h] => (b, s, n, h),
            [b, s, hidden] => {
                let head_size = match self.num_heads {
                    0 => 2 * half,
                    n => hidden / n.max(1),
                };
                ensure!(head_size > 0 && hidden.is_multiple_of(head_size), "width {hidden} is not whole heads of {head_size}");
                (b, s, hidden / head_size, head_size)
            }
            _ => bail!("input of shape {x:?}; [batch, seq, hidden] or [batch, heads, seq, head_size] expected"),
        };
        let rotary_dim = if self.rotary_dim > 0 { self.rotary_dim } else { head_size };
        ensure!(
            rotary_dim == 2 * half && rotary_dim <= head_size,
            "caches {half} wide do not rotate {rotary_dim} of each head's {head_size} values in pairs"
        );
        Ok((batch, seq, heads, head_size, rotary_dim))
    }
}

impl Op for RotaryEmbedding {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        expect_dtype(required(inputs, 1)?, &[DataType::I64], "position_ids")?;
        let (cos, sin) = (required(inputs, 2)?, required(inputs, 3)?);
        for (t, what) in [(cos, "cos_cache"), (sin, "sin_cache")] {
            expect_dtype(t, &[DataType::F32], what)?;
            ensure!(t.shape.len() == 2, "{what} of shape {:?}; [positions, rotary_dim / 2] expected", t.shape);
        }
        ensure!(cos.shape == sin.shape, "cos_cache {:?} and sin_cache {:?} differ", cos.shape, sin.shape);
        self.dims(&x.shape, cos.shape[1])?;
        Ok(vec![Fact::new(DataType::F32, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (x, positions, cos, sin) = (required(inputs, 0)?, required(inputs, 1)?, required(inputs, 2)?, required(inputs, 3)?);
        let (max_position, half) = (cos.shape()[0], cos.shape()[1]);
        let (batch, seq, heads, head_size, rotary_dim) = self.dims(x.shape(), half)?;
        let ids = positions.as_slice::<i64>()?;
        let position = |b: usize, s: usize| -> Result<usize> {
            let p = match ids.len() {
                1 => ids[0] + s as i64,
                n if n == batch * seq => ids[b * seq + s],
                n => bail!("position_ids hold {n} values; one offset or batch {batch} × seq {seq} expected"),
            };
            usize::try_from(p)
                .ok()
                .filter(|&p| p < max_position)
                .ok_or_else(|| crate::error::Error::Op(format!("position {p} is beyond the cos/sin caches' {max_position} positions")))
        };
        let (xv, cv, sv) = (x.as_slice::<f32>()?, cos.as_slice::<f32>()?, sin.as_slice::<f32>()?);
        let mut y = pool.overwritable(xv.len());
        y.copy_from_slice(xv);
        let four_d = x.shape().len() == 4;
        for b in 0..batch {
            for s in 0..seq {
                let p = position(b, s)?;
                let (c, sn) = (&cv[p * half..][..half], &sv[p * half..][..half]);
                for h in 0..heads {
                    let start = if four_d { ((b * heads + h) * seq + s) * head_size } else { ((b * seq + s) * heads + h) * head_size };
                    let (x_head, y_head) = (&xv[start..][..rotary_dim], &mut y[start..][..rotary_dim]);
                    for i in 0..half {
                        let (first, second) = if self.interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
                        let (x1, x2) = (x_head[first], x_head[second]);
                        y_head[first] = x1 * c[i] - x2 * sn[i];
                        y_head[second] = x2 * c[i] + x1 * sn[i];
                    }
                }
            }
        }
        Ok(vec![out(x.shape().to_vec(), y)?])
    }
}

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

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn rotary_embedding_refuses_positions_past_its_caches_and_odd_shapes() {
        let op = RotaryEmbedding { interleaved: false, num_heads: 0, rotary_dim: 0 };
        let x = f32t(&[1, 2, 4], &[1.0; 8]);
        let caches = || [f32t(&[3, 2], &[1.0; 6]), f32t(&[3, 2], &[0.0; 6])];
        let positions = |p: Vec<i64>| Some(Tensor::from_vec(vec![1, p.len()], p).unwrap());
        let [cos, sin] = caches();
        // cos 1, sin 0: the identity.
        let y = run(&op, &[x.clone(), positions(vec![0, 2]), cos, sin]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), [1.0; 8]);
        let [cos, sin] = caches();
        let past = run(&op, &[x.clone(), positions(vec![1, 3]), cos, sin]).unwrap_err().to_string();
        assert!(past.contains("position 3 is beyond the cos/sin caches' 3 positions"), "{past}");
        let [cos, sin] = caches();
        let odd = run(&op, &[f32t(&[1, 2, 6], &[1.0; 12]), positions(vec![0, 1]), cos, sin]).unwrap_err().to_string();
        assert!(odd.contains("not whole heads of 4"), "{odd}");
    }
}
