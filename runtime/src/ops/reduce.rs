//! Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ReduceL1, ReduceL2,
//! ReduceSumSquare, ReduceLogSum, ReduceLogSumExp, ArgMax, ArgMin, and the running sums and
//! products CumSum and CumProd.

use super::{BufferPool, Fact, ImportCtx, Importer, Op, expect_dtype, normalize_axis, optional, out, required};
use crate::error::{Result, ensure};
use crate::tensor::{DataType, Tensor};

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[
    ("ReduceMean", |c| import(c, Reduction::Mean, 18)),
    ("ReduceSum", |c| import(c, Reduction::Sum, 13)),
    ("ReduceMax", |c| import(c, Reduction::Max, 18)),
    ("ReduceMin", |c| import(c, Reduction::Min, 18)),
    ("ReduceProd", |c| import(c, Reduction::Prod, 18)),
    ("ReduceL1", |c| import(c, Reduction::L1, 18)),
    ("ReduceL2", |c| import(c, Reduction::L2, 18)),
    ("ReduceSumSquare", |c| import(c, Reduction::SumSquare, 18)),
    ("ReduceLogSum", |c| import(c, Reduction::LogSum, 18)),
    ("ReduceLogSumExp", |c| import(c, Reduction::LogSumExp, 18)),
    ("ArgMax", |c| import_arg(c, true)),
    ("ArgMin", |c| import_arg(c, false)),
    ("CumSum", |c| import_cumulative(c, false)),
    ("CumProd", |c| import_cumulative(c, true)),
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Reduction {
    Mean,
    Sum,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

/// A reduction over some axes.
#[derive(Debug)]
pub struct Reduce {
    kind: Reduction,
    /// `Some` when axes come from the attribute (opsets before `axes_input_since`).
    axes: Option<Vec<i64>>,
    keep_dims: bool,
    noop_with_empty_axes: bool,
}

fn import(c: &ImportCtx, kind: Reduction, axes_input_since: i64) -> Result<Box<dyn Op>> {
    let axes = if c.opset < axes_input_since { Some(c.attrs.ints_opt("axes")?.unwrap_or_default()) } else { None };
    Ok(Box::new(Reduce {
        kind,
        axes,
        keep_dims: c.attrs.int("keepdims", 1)? != 0,
        noop_with_empty_axes: c.attrs.int("noop_with_empty_axes", 0)? != 0,
    }))
}

impl Reduce {
    /// The reduced axes (sorted, unique), or `None` for the no-op case.
    fn axes(&self, rank: usize, axes_input: Option<&Fact>) -> Result<Option<Vec<usize>>> {
        let axes = match (&self.axes, axes_input) {
            (Some(a), _) => a.clone(),
            (None, Some(f)) => f.const_i64s("axes")?,
            (None, None) => Vec::new(),
        };
        if axes.is_empty() {
            return Ok(if self.noop_with_empty_axes { None } else { Some((0..rank).collect()) });
        }
        let mut v = axes.iter().map(|&a| normalize_axis(a, rank)).collect::<Result<Vec<_>>>()?;
        v.sort_unstable();
        v.dedup();
        Ok(Some(v))
    }

    /// Whether this is a mean over the last axis of a rank-`rank` input, its dim kept.
    pub(crate) fn is_mean_over_last_axis(&self, rank: usize, axes_input: Option<&Fact>) -> bool {
        self.kind == Reduction::Mean && self.keep_dims && rank > 0 && self.axes(rank, axes_input).ok().flatten() == Some(vec![rank - 1])
    }

    fn out_shape(&self, shape: &[usize], axes: &[usize]) -> Vec<usize> {
        shape.iter().enumerate().filter_map(|(i, &d)| if axes.contains(&i) { self.keep_dims.then_some(1) } else { Some(d) }).collect()
    }
}

impl Op for Reduce {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        let shape = match self.axes(x.shape.len(), optional(inputs, 1))? {
            Some(axes) => {
                if matches!(self.kind, Reduction::Max | Reduction::Min) {
                    ensure!(axes.iter().all(|&a| x.shape[a] > 0), "cannot take max/min over an empty axis of {:?}", x.shape);
                }
                self.out_shape(&x.shape, &axes)
            }
            None => x.shape.clone(),
        };
        Ok(vec![Fact::new(DataType::F32, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let axes_fact = optional(inputs, 1).map(|t| Fact::of(std::sync::Arc::new(t.clone())));
        let Some(axes) = self.axes(x.shape().len(), axes_fact.as_ref())? else { return Ok(vec![x.clone()]) };
        let shape = x.shape();
        // Permute reduced axes last, then reduce contiguous runs.
        let kept: Vec<usize> = (0..shape.len()).filter(|a| !axes.contains(a)).collect();
        let perm: Vec<usize> = kept.iter().chain(axes.iter()).copied().collect();
        let is_identity = perm.iter().enumerate().all(|(i, &p)| i == p);
        let permuted;
        let data = if is_identity {
            x.as_slice::<f32>()?
        } else {
            permuted = super::array::transpose(x, &perm, pool)?;
            permuted.as_slice::<f32>()?
        };
        let run: usize = axes.iter().map(|&a| shape[a]).product();
        let outer: usize = kept.iter().map(|&a| shape[a]).product();
        let mut y = pool.take(outer);
        for o in 0..outer {
            let lane = &data[o * run..(o + 1) * run];
            y.push(match self.kind {
                Reduction::Sum => lane.iter().sum(),
                Reduction::Mean => lane.iter().sum::<f32>() / run as f32,
                Reduction::Max => lane.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                Reduction::Min => lane.iter().copied().fold(f32::INFINITY, f32::min),
                Reduction::Prod => lane.iter().product(),
                Reduction::L1 => lane.iter().map(|v| v.abs()).sum(),
                Reduction::L2 => lane.iter().map(|v| v * v).sum::<f32>().sqrt(),
                Reduction::SumSquare => lane.iter().map(|v| v * v).sum(),
                Reduction::LogSum => lane.iter().sum::<f32>().ln(),
                Reduction::LogSumExp => {
                    // Shifted by the maximum so that large values do not overflow exp.
                    let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    if max.is_finite() { max + lane.iter().map(|v| (v - max).exp()).sum::<f32>().ln() } else { max }
                }
            });
        }
        Ok(vec![out(self.out_shape(shape, &axes), y)?])
    }
}

/// `ArgMax` / `ArgMin` along one axis.
#[derive(Debug)]
pub struct ArgExtreme {
    max: bool,
    axis: i64,
    keep_dims: bool,
    select_last: bool,
}

fn import_arg(c: &ImportCtx, max: bool) -> Result<Box<dyn Op>> {
    Ok(Box::new(ArgExtreme {
        max,
        axis: c.attrs.int("axis", 0)?,
        keep_dims: c.attrs.int("keepdims", 1)? != 0,
        select_last: c.attrs.int("select_last_index", 0)? != 0,
    }))
}

impl ArgExtreme {
    fn out_shape(&self, shape: &[usize]) -> Result<(usize, Vec<usize>)> {
        let axis = normalize_axis(self.axis, shape.len())?;
        ensure!(shape[axis] > 0, "cannot take arg-extreme over empty axis {axis} of {shape:?}");
        let mut s = shape.to_vec();
        if self.keep_dims {
            s[axis] = 1;
        } else {
            s.remove(axis);
        }
        Ok((axis, s))
    }
}

impl Op for ArgExtreme {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        Ok(vec![Fact::new(DataType::I64, self.out_shape(&x.shape)?.1)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let (axis, shape) = self.out_shape(x.shape())?;
        let len = x.shape()[axis];
        let inner: usize = x.shape()[axis + 1..].iter().product();
        let outer: usize = x.shape()[..axis].iter().product();
        let xv = x.as_slice::<f32>()?;
        let mut y = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let mut best = 0;
                for j in 1..len {
                    let (v, b) = (xv[(o * len + j) * inner + i], xv[(o * len + best) * inner + i]);
                    let better = if self.max { v > b || (self.select_last && v == b) } else { v < b || (self.select_last && v == b) };
                    if better {
                        best = j;
                    }
                }
                y.push(best as i64);
            }
        }
        Ok(vec![out(shape, y)?])
    }
}

/// `CumSum(x, axis)` and `CumProd(x, axis)`: running sums (products) along `axis` (a
/// one-value input), each leaving its own element out when `exclusive`, from the end when
/// `reverse`.
#[derive(Debug)]
pub struct Cumulative {
    product: bool,
    exclusive: bool,
    reverse: bool,
}

fn import_cumulative(c: &ImportCtx, product: bool) -> Result<Box<dyn Op>> {
    Ok(Box::new(Cumulative { product, exclusive: c.attrs.int("exclusive", 0)? != 0, reverse: c.attrs.int("reverse", 0)? != 0 }))
}

impl Op for Cumulative {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32, DataType::F64, DataType::I64, DataType::I32], "input")?;
        let axis = required(inputs, 1)?;
        ensure!(axis.shape.iter().product::<usize>() == 1, "axis must be one value, has shape {:?}", axis.shape);
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        use super::elementwise::Num;
        let x = required(inputs, 0)?;
        let axis = *required(inputs, 1)?.to_i64s()?.first().ok_or_else(|| crate::error::Error::Op("axis holds no value".into()))?;
        let shape = x.shape().to_vec();
        let a = normalize_axis(axis, shape.len())?;
        let (len, inner) = (shape[a], shape[a + 1..].iter().product::<usize>());
        fn running<T: Num>(x: &[T], len: usize, inner: usize, op: &Cumulative) -> Vec<T> {
            let mut y = x.to_vec();
            for (block, out) in x.chunks(len * inner).zip(y.chunks_mut(len * inner)) {
                for i in 0..inner {
                    let mut acc = T::from_i64(op.product as i64);
                    for step in 0..len {
                        let at = if op.reverse { len - 1 - step } else { step } * inner + i;
                        let next = if op.product { acc.mul(block[at]) } else { acc.add(block[at]) };
                        out[at] = if op.exclusive { acc } else { next };
                        acc = next;
                    }
                }
            }
            y
        }
        if len == 0 || x.is_empty() {
            return Ok(vec![x.clone()]);
        }
        super::dispatch_dtype!(x, |v: &[T]| Ok(vec![out(shape, running(v, len, inner, self))?]),
            [F32 => f32, F64 => f64, I64 => i64, I32 => i32],
            other => crate::error::bail!("a running sum or product of {other} is not supported"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    /// Running sums over the middle axis of [2, 3, 2], each way.
    /// Each reduction over axis 1 of [[1, −2, 3], [0.5, 4, −1]], against its definition.
    #[test]
    fn reductions_over_an_axis() {
        let x = [1f32, -2., 3., 0.5, 4., -1.];
        let lse = |r: &[f32]| r.iter().map(|v| v.exp()).sum::<f32>().ln();
        let cases: [(Reduction, [f32; 2]); 6] = [
            (Reduction::Prod, [-6., -2.]),
            (Reduction::L1, [6., 5.5]),
            (Reduction::L2, [14f32.sqrt(), 17.25f32.sqrt()]),
            (Reduction::SumSquare, [14., 17.25]),
            (Reduction::LogSum, [2f32.ln(), 3.5f32.ln()]),
            (Reduction::LogSumExp, [lse(&x[..3]), lse(&x[3..])]),
        ];
        for (kind, want) in cases {
            let op = Reduce { kind, axes: Some(vec![1]), keep_dims: false, noop_with_empty_axes: false };
            let y = run(&op, &[f32t(&[2, 3], &x)]).unwrap();
            assert_close(&y[0], &[2], &want);
        }
        // Over an empty axis: the identity of each (−∞ for LogSumExp).
        let op = Reduce { kind: Reduction::LogSumExp, axes: Some(vec![1]), keep_dims: true, noop_with_empty_axes: false };
        let y = run(&op, &[f32t(&[2, 0], &[])]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), [f32::NEG_INFINITY; 2]);
    }

    #[test]
    fn cumsum_each_way() {
        let x: Vec<i64> = (1..=12).collect();
        let cases = [
            (false, false, [1, 2, 4, 6, 9, 12, 7, 8, 16, 18, 27, 30]),
            (true, false, [0, 0, 1, 2, 4, 6, 0, 0, 7, 8, 16, 18]),
            (false, true, [9, 12, 8, 10, 5, 6, 27, 30, 20, 22, 11, 12]),
            (true, true, [8, 10, 5, 6, 0, 0, 20, 22, 11, 12, 0, 0]),
        ];
        for (exclusive, reverse, want) in cases {
            let y = run(&Cumulative { product: false, exclusive, reverse }, &[i64t(&[2, 3, 2], &x), i64t(&[], &[-2])]).unwrap();
            assert_eq!(y[0].as_slice::<i64>().unwrap(), want, "exclusive {exclusive}, reverse {reverse}");
        }
        let x = f32t(&[3], &[0.5, 1.0, 2.0]);
        let y = run(&Cumulative { product: false, exclusive: false, reverse: false }, &[x.clone(), i64t(&[1], &[0])]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), [0.5, 1.5, 3.5]);
        // Products: inclusive, and exclusive from the end.
        let y = run(&Cumulative { product: true, exclusive: false, reverse: false }, &[x.clone(), i64t(&[1], &[0])]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), [0.5, 0.5, 1.0]);
        let y = run(&Cumulative { product: true, exclusive: true, reverse: true }, &[x, i64t(&[1], &[0])]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), [2.0, 2.0, 1.0]);
    }

    #[test]
    fn reductions() {
        let x = f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let mean = Reduce { kind: Reduction::Mean, axes: Some(vec![1]), keep_dims: true, noop_with_empty_axes: false };
        assert_close(&run(&mean, std::slice::from_ref(&x)).unwrap()[0], &[2, 1], &[2., 5.]);
        let sum = Reduce { kind: Reduction::Sum, axes: None, keep_dims: false, noop_with_empty_axes: false };
        assert_close(&run_const(&sum, &[x.clone(), i64t(&[1], &[0])]).unwrap()[0], &[3], &[5., 7., 9.]);
        assert_close(&run(&sum, std::slice::from_ref(&x)).unwrap()[0], &[], &[21.]);
        let max = Reduce { kind: Reduction::Max, axes: Some(vec![-1, 0]), keep_dims: false, noop_with_empty_axes: false };
        assert_close(&run(&max, std::slice::from_ref(&x)).unwrap()[0], &[], &[6.]);
        let am = ArgExtreme { max: true, axis: 1, keep_dims: false, select_last: false };
        assert_eq!(run(&am, &[f32t(&[2, 3], &[1., 9., 9., 7., 0., 1.])]).unwrap()[0].as_slice::<i64>().unwrap(), &[1, 0]);
    }
}
