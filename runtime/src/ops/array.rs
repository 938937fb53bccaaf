//! Data-movement and shape ops: Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Concat,
//! Split, Slice, Gather, Expand, Tile, Pad, Shape, Size, ConstantOfShape, Range, Identity.
//! They work on any dtype; shape-determining inputs must be constants at plan time.

use super::{
    BufferPool, Fact, ImportCtx, Importer, Op, broadcast_shapes, broadcast_strides, normalize_axis, numel, optional, out, required,
    strided_copy, strides, with_elements,
};
use crate::error::{Error, Result, bail, ensure};
use crate::tensor::{DataType, Tensor};
use std::sync::Arc;

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[
    ("Reshape", |c| Ok(Box::new(Reshape { allow_zero: c.attrs.int("allowzero", 0)? != 0 }))),
    ("Transpose", |c| Ok(Box::new(Transpose { perm: c.attrs.ints_opt("perm")? }))),
    ("Flatten", |c| Ok(Box::new(Flatten { axis: c.attrs.int("axis", 1)? }))),
    ("Squeeze", |c| Ok(Box::new(Squeeze { axes: axes_attr(c)? }))),
    ("Unsqueeze", |c| Ok(Box::new(Unsqueeze { axes: axes_attr(c)? }))),
    ("Concat", |c| Ok(Box::new(Concat { axis: c.attrs.int("axis", 0)? }))),
    ("Split", import_split),
    ("Slice", import_slice),
    ("Gather", |c| Ok(Box::new(Gather { axis: c.attrs.int("axis", 0)? }))),
    ("GatherElements", |c| Ok(Box::new(GatherElements { axis: c.attrs.int("axis", 0)? }))),
    ("Expand", |_| Ok(Box::new(Expand))),
    ("Tile", |_| Ok(Box::new(Tile))),
    ("Pad", import_pad),
    ("Shape", |c| Ok(Box::new(ShapeOf { start: c.attrs.int("start", 0)?, end: c.attrs.int_opt("end")? }))),
    ("Size", |_| Ok(Box::new(Size))),
    ("ConstantOfShape", |c| {
        Ok(Box::new(ConstantOfShape {
            value: c.attrs.tensor_opt("value")?.unwrap_or_else(|| Tensor::from_vec(vec![1], vec![0f32]).unwrap()),
        }))
    }),
    ("Range", |_| Ok(Box::new(Range))),
    ("Identity", |_| Ok(Box::new(Identity))),
    ("Dropout", |c| Ok(Box::new(Dropout { mask: c.num_outputs > 1 }))),
    ("Trilu", |c| Ok(Box::new(Trilu { upper: c.attrs.int("upper", 1)? != 0 }))),
];

/// Axes from the attribute (before opset 13) or `None` (then from input 1).
fn axes_attr(c: &ImportCtx) -> Result<Option<Vec<i64>>> {
    if c.opset < 13 { Ok(Some(c.attrs.ints_opt("axes")?.unwrap_or_default())) } else { Ok(None) }
}

fn axes_of(attr: &Option<Vec<i64>>, input: Option<&Fact>) -> Result<Vec<i64>> {
    match (attr, input) {
        (Some(a), _) => Ok(a.clone()),
        (None, Some(f)) => f.const_i64s("axes"),
        (None, None) => Ok(Vec::new()),
    }
}

/// Runs `infer` over the run-time tensors (for ops whose output shape depends on small
/// constant inputs: the same code then decides shapes at plan time and at run time).
fn infer_now(op: &dyn Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Fact>> {
    let facts = run_facts(inputs);
    op.infer(&facts.iter().map(|f| f.as_ref()).collect::<Vec<_>>())
}

/// Facts of run-time tensors: the data input by shape only, the small parameter inputs
/// (shapes, axes, pads, ...) with their values.
fn run_facts(inputs: &[Option<&Tensor>]) -> Vec<Option<Fact>> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, t)| t.map(|t| if i == 0 { Fact::new(t.dtype(), t.shape().to_vec()) } else { Fact::of(Arc::new(t.clone())) }))
        .collect()
}

/// Evaluates an op that only changes the shape label (Reshape, Flatten, Squeeze, Unsqueeze):
/// the output shape comes from the op's own inference.
fn relabel(op: &dyn Op, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
    let shape = infer_now(op, inputs)?.remove(0).shape;
    Ok(vec![required(inputs, 0)?.clone().reshaped(shape)?])
}

// ---- reshapes ----

/// `Reshape(data, shape)`.
#[derive(Debug)]
pub struct Reshape {
    allow_zero: bool,
}

impl Op for Reshape {
    fn is_view(&self) -> bool {
        true
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let spec = required(inputs, 1)?.const_i64s("the target shape")?;
        let n = numel(&x.shape)?;
        let mut shape = Vec::with_capacity(spec.len());
        let mut infer_at = None;
        for (i, &d) in spec.iter().enumerate() {
            shape.push(match d {
                -1 => {
                    ensure!(infer_at.is_none(), "target shape {spec:?} has more than one -1");
                    infer_at = Some(i);
                    1
                }
                0 if !self.allow_zero => *x.shape.get(i).ok_or_else(|| {
                    Error::Op(format!("target shape {spec:?} copies dim {i} of input {:?}, which has no such dim", x.shape))
                })?,
                d if d < 0 => bail!("target shape {spec:?} has dim {d}"),
                d => d as usize,
            });
        }
        if let Some(i) = infer_at {
            let known = numel(&shape)?;
            ensure!(known != 0 && n % known == 0, "cannot reshape {:?} to {spec:?}", x.shape);
            shape[i] = n / known;
        }
        ensure!(numel(&shape)? == n, "cannot reshape {:?} ({n} elements) to {spec:?}", x.shape);
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        relabel(self, inputs)
    }
}

/// `Flatten(axis)`.
#[derive(Debug)]
pub struct Flatten {
    axis: i64,
}

impl Op for Flatten {
    fn is_view(&self) -> bool {
        true
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let r = x.shape.len() as i64;
        ensure!((-r..=r).contains(&self.axis), "axis {} is out of range for rank {r}", self.axis);
        let axis = if self.axis < 0 { (self.axis + r) as usize } else { self.axis as usize };
        Ok(vec![Fact::new(x.dtype, vec![x.shape[..axis].iter().product(), x.shape[axis..].iter().product()])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        relabel(self, inputs)
    }
}

/// `Squeeze(data, axes?)`.
#[derive(Debug)]
pub struct Squeeze {
    axes: Option<Vec<i64>>,
}

impl Op for Squeeze {
    fn is_view(&self) -> bool {
        true
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let axes = axes_of(&self.axes, optional(inputs, 1))?;
        let axes = axes.iter().map(|&a| normalize_axis(a, x.shape.len())).collect::<Result<Vec<_>>>()?;
        for &a in &axes {
            ensure!(x.shape[a] == 1, "cannot squeeze axis {a} of shape {:?}: its size is not 1", x.shape);
        }
        let shape = x
            .shape
            .iter()
            .enumerate()
            .filter(|&(i, &d)| if axes.is_empty() { d != 1 } else { !axes.contains(&i) })
            .map(|(_, &d)| d)
            .collect();
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        relabel(self, inputs)
    }
}

/// `Unsqueeze(data, axes)`.
#[derive(Debug)]
pub struct Unsqueeze {
    axes: Option<Vec<i64>>,
}

impl Unsqueeze {
    /// The output axes that are inserted, ascending, for an input of rank `rank` (`axes`:
    /// the opset-13 input).
    pub(crate) fn inserted_axes(&self, rank: usize, axes: Option<&Fact>) -> Result<Vec<usize>> {
        let axes = axes_of(&self.axes, axes)?;
        let rank = rank + axes.len();
        let mut axes = axes.iter().map(|&a| normalize_axis(a, rank)).collect::<Result<Vec<_>>>()?;
        axes.sort_unstable();
        ensure!(axes.windows(2).all(|w| w[0] != w[1]), "axes {axes:?} repeat");
        Ok(axes)
    }
}

impl Op for Unsqueeze {
    fn is_view(&self) -> bool {
        true
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let axes = self.inserted_axes(x.shape.len(), optional(inputs, 1))?;
        let mut dims = x.shape.iter();
        let shape = (0..x.shape.len() + axes.len()).map(|i| if axes.contains(&i) { 1 } else { *dims.next().unwrap_or(&1) }).collect();
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        relabel(self, inputs)
    }
}

/// `GatherElements(data, indices, axis)`: each output element is the data element at the
/// same position, except along `axis`, where the index says (negative from the end,
/// bounds-checked). The output has the indices' shape; any dtype.
#[derive(Debug)]
pub struct GatherElements {
    axis: i64,
}

impl Op for GatherElements {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, idx) = (required(inputs, 0)?, required(inputs, 1)?);
        ensure!(matches!(idx.dtype, DataType::I64 | DataType::I32), "indices have dtype {}, expected int64 or int32", idx.dtype);
        ensure!(!x.dtype.is_four_bit(), "data has dtype {}", x.dtype);
        ensure!(x.shape.len() == idx.shape.len(), "indices of rank {} for data of rank {}", idx.shape.len(), x.shape.len());
        let axis = normalize_axis(self.axis, x.shape.len())?;
        for (d, (&n, &i)) in x.shape.iter().zip(&idx.shape).enumerate() {
            ensure!(d == axis || i <= n, "indices dim {d} is {i}, more than the data's {n}");
        }
        Ok(vec![Fact::new(x.dtype, idx.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (x, idx) = (required(inputs, 0)?, required(inputs, 1)?);
        let axis = normalize_axis(self.axis, x.shape().len())?;
        let (shape, width, len) = (idx.shape(), x.dtype().bytes(1), x.shape()[axis] as i64);
        let (data_strides, index_strides) = (strides(x.shape()), strides(shape));
        let bytes = x.as_le_bytes();
        let mut y = Vec::with_capacity(idx.len() * width);
        for (e, &i) in idx.to_i64s()?.iter().enumerate() {
            ensure!((-len..len).contains(&i), "index {i} is out of range for axis {axis} of length {len}");
            let source: usize = (0..shape.len())
                .map(|d| data_strides[d] * if d == axis { i.rem_euclid(len) as usize } else { e / index_strides[d] % shape[d] })
                .sum();
            y.extend_from_slice(&bytes[source * width..(source + 1) * width]);
        }
        Ok(vec![Tensor::from_le_bytes(x.dtype(), shape.to_vec(), y.into())?])
    }
}

/// `Dropout(data, ratio?, training_mode?)` at inference: the data as it is, and the mask (all
/// true) when the node asks for it. Training mode (random dropping) is refused.
#[derive(Debug)]
pub struct Dropout {
    mask: bool,
}

impl Dropout {
    /// Refuses a training-mode input that is true.
    fn check_inference(training_mode: Option<&Tensor>) -> Result<()> {
        if let Some(t) = training_mode {
            ensure!(t.as_bools()?.iter().all(|&b| b == 0), "Dropout in training mode (random dropping) is not supported");
        }
        Ok(())
    }
}

impl Op for Dropout {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        if let Some(mode) = optional(inputs, 2).and_then(|f| f.value.as_deref()) {
            Dropout::check_inference(Some(mode))?;
        }
        let mut facts = vec![x.clone()];
        if self.mask {
            facts.push(Fact::new(DataType::Bool, x.shape.clone()));
        }
        Ok(facts)
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        Dropout::check_inference(optional(inputs, 2))?;
        let x = required(inputs, 0)?;
        let mut outputs = vec![x.clone()];
        if self.mask {
            outputs.push(Tensor::from_bools(x.shape().to_vec(), vec![true; x.len()])?);
        }
        Ok(outputs)
    }
}

/// `Trilu(input, k?)`: the upper (`upper = 1`) or lower triangle of each matrix in the last
/// two axes, from diagonal `k` on (above it, or below), zeros elsewhere; any dtype.
#[derive(Debug)]
pub struct Trilu {
    upper: bool,
}

impl Op for Trilu {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        ensure!(x.shape.len() >= 2, "input has rank {}, at least 2 needed", x.shape.len());
        ensure!(!x.dtype.is_four_bit(), "input has dtype {}", x.dtype);
        if let Some(k) = optional(inputs, 1) {
            ensure!(k.shape.iter().product::<usize>() == 1, "k must be one value, has shape {:?}", k.shape);
        }
        Ok(vec![Fact::new(x.dtype, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let k = optional(inputs, 1).map(|t| t.to_i64s()).transpose()?.and_then(|v| v.first().copied()).unwrap_or(0);
        let (rank, width) = (x.shape().len(), x.dtype().bytes(1));
        ensure!(rank >= 2, "input has rank {rank}, at least 2 needed");
        let (rows, cols) = (x.shape()[rank - 2], x.shape()[rank - 1]);
        let mut bytes = x.as_le_bytes().to_vec();
        for (e, value) in bytes.chunks_exact_mut(width).enumerate() {
            let (i, j) = ((e / cols % rows.max(1)) as i64, (e % cols.max(1)) as i64);
            let kept = if self.upper { j - i >= k } else { j - i <= k };
            if !kept {
                value.fill(0);
            }
        }
        Ok(vec![Tensor::from_le_bytes(x.dtype(), x.shape().to_vec(), bytes.into())?])
    }
}

/// `Identity`.
#[derive(Debug)]
pub struct Identity;

impl Op for Identity {
    fn is_view(&self) -> bool {
        true
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        Ok(vec![Fact { dtype: x.dtype, shape: x.shape.clone(), value: x.value.clone() }])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        Ok(vec![required(inputs, 0)?.clone()])
    }
}

// ---- permutes and copies ----

/// `Transpose(perm)`.
#[derive(Debug)]
pub struct Transpose {
    perm: Option<Vec<i64>>,
}

impl Transpose {
    /// A transpose by `perm`.
    pub(crate) fn new(perm: &[usize]) -> Transpose {
        Transpose { perm: Some(perm.iter().map(|&p| p as i64).collect()) }
    }

    /// The permutation for a rank-`rank` input (the reversal when the attribute is absent).
    pub(crate) fn perm(&self, rank: usize) -> Result<Vec<usize>> {
        let perm: Vec<usize> = match &self.perm {
            Some(p) => p.iter().map(|&a| normalize_axis(a, rank)).collect::<Result<_>>()?,
            None => (0..rank).rev().collect(),
        };
        let mut seen = perm.clone();
        seen.sort_unstable();
        ensure!(seen == (0..rank).collect::<Vec<_>>(), "perm {perm:?} is not a permutation of 0..{rank}");
        Ok(perm)
    }
}

/// Permutes the axes of `x`.
pub fn transpose(x: &Tensor, perm: &[usize], pool: &mut BufferPool) -> Result<Tensor> {
    let st = strides(x.shape());
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let src_strides: Vec<isize> = perm.iter().map(|&p| st[p] as isize).collect();
    with_elements!(x, |v: &[T]| {
        let mut dst = pool.take(x.len());
        strided_copy(v, 0, &shape, &src_strides, &mut dst);
        out(shape, dst)
    })
}

impl Op for Transpose {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let perm = self.perm(x.shape.len())?;
        Ok(vec![Fact::new(x.dtype, perm.iter().map(|&p| x.shape[p]).collect())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        Ok(vec![transpose(x, &self.perm(x.shape().len())?, pool)?])
    }
}

/// Materializes `x` broadcast to `shape`.
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() == shape {
        return Ok(x.clone());
    }
    ensure!(broadcast_shapes(x.shape(), shape)? == shape, "{:?} does not broadcast to {shape:?}", x.shape());
    let st: Vec<isize> = broadcast_strides(x.shape(), shape).into_iter().map(|s| s as isize).collect();
    with_elements!(x, |v: &[T]| {
        let mut dst = Vec::with_capacity(numel(shape)?);
        strided_copy(v, 0, shape, &st, &mut dst);
        out(shape.to_vec(), dst)
    })
}

/// `Expand(input, shape)`: bidirectional broadcast.
#[derive(Debug)]
pub struct Expand;

impl Op for Expand {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let spec = required(inputs, 1)?.const_i64s("the target shape")?;
        ensure!(spec.iter().all(|&d| d >= 0), "target shape {spec:?} has a negative dim");
        let spec: Vec<usize> = spec.iter().map(|&d| d as usize).collect();
        Ok(vec![Fact::new(x.dtype, broadcast_shapes(&x.shape, &spec)?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let shape = infer_now(self, inputs)?.remove(0).shape;
        Ok(vec![broadcast_to(required(inputs, 0)?, &shape)?])
    }
}

/// `Tile(input, repeats)`.
#[derive(Debug)]
pub struct Tile;

impl Op for Tile {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let reps = required(inputs, 1)?.const_i64s("repeats")?;
        ensure!(reps.len() == x.shape.len() && reps.iter().all(|&r| r >= 0), "repeats {reps:?} do not fit rank {}", x.shape.len());
        let shape: Vec<usize> = x.shape.iter().zip(&reps).map(|(&d, &r)| d * r as usize).collect();
        numel(&shape)?;
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let shape = infer_now(self, inputs)?.remove(0).shape;
        // Read as a [r0, d0, r1, d1, ...] view with zero strides on the repeat axes.
        let st = strides(x.shape());
        let mut view = Vec::new();
        let mut view_strides = Vec::new();
        for (i, &d) in x.shape().iter().enumerate() {
            view.extend([shape[i] / d.max(1), d]);
            view_strides.extend([0isize, st[i] as isize]);
        }
        with_elements!(x, |v: &[T]| {
            let mut dst = Vec::with_capacity(numel(&shape)?);
            strided_copy(v, 0, &view, &view_strides, &mut dst);
            Ok(vec![out(shape, dst)?])
        })
    }
}

/// `Concat(axis)`.
#[derive(Debug)]
pub struct Concat {
    axis: i64,
}

impl Op for Concat {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let first = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, first.shape.len())?;
        let mut shape = first.shape.clone();
        shape[axis] = 0;
        for i in 0..inputs.len() {
            let f = required(inputs, i)?;
            ensure!(f.dtype == first.dtype, "input {i} has dtype {}, input 0 has {}", f.dtype, first.dtype);
            ensure!(
                f.shape.len() == shape.len() && f.shape.iter().enumerate().all(|(d, &n)| d == axis || n == shape[d]),
                "input {i} of shape {:?} does not match input 0 of shape {:?} outside axis {axis}",
                f.shape,
                first.shape
            );
            shape[axis] += f.shape[axis];
        }
        // Concatenations of constants (shape vectors) stay constant.
        Ok(vec![Fact::new(first.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (shape, axis) = self.output_shape(inputs)?;
        let outer: usize = shape[..axis].iter().product();
        let first = required(inputs, 0)?;
        with_elements!(first, |_v: &[T]| {
            let parts = inputs
                .iter()
                .map(|t| Ok((t.unwrap().as_slice::<T>()?, t.unwrap().shape()[axis..].iter().product::<usize>())))
                .collect::<Result<Vec<_>>>()?;
            let mut dst = pool.take(numel(&shape)?);
            for o in 0..outer {
                for (data, chunk) in &parts {
                    dst.extend_from_slice(&data[o * chunk..(o + 1) * chunk]);
                }
            }
            Ok(vec![out(shape, dst)?])
        })
    }

    fn reuses_first_input(&self) -> bool {
        true
    }

    /// Along the outermost axis with more than one element (a token-major KV cache: `[past,
    /// batch, heads, head_dim]`), the output is input 0 followed by the others: input 0's
    /// unshared storage grows in place, amortized, instead of being copied on every run.
    fn eval_taking_first(&self, first: Tensor, rest: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let inputs: Vec<Option<&Tensor>> = std::iter::once(Some(&first)).chain(rest.iter().copied()).collect();
        let (shape, axis) = self.output_shape(&inputs)?;
        if !first.is_unique() || shape[..axis].iter().any(|&d| d != 1) || first.dtype() == DataType::Bool {
            return self.eval(&inputs, pool);
        }
        with_elements!(&first, |_v: &[T]| {
            let parts = (0..rest.len()).map(|i| required(rest, i)?.as_slice::<T>()).collect::<Result<Vec<_>>>()?;
            let mut dst = first.into_vec::<T>()?;
            parts.iter().for_each(|p| dst.extend_from_slice(p));
            Ok(vec![out(shape, dst)?])
        })
    }
}

impl Concat {
    /// Concatenation along `axis` (negative counts from the end).
    pub(crate) fn new(axis: i64) -> Concat {
        Concat { axis }
    }

    /// The axis as the node gives it.
    pub(crate) fn axis(&self) -> i64 {
        self.axis
    }

    /// The output shape and the axis, checking the inputs.
    fn output_shape(&self, inputs: &[Option<&Tensor>]) -> Result<(Vec<usize>, usize)> {
        let fs: Vec<Option<Fact>> = inputs.iter().map(|t| t.map(|t| Fact::new(t.dtype(), t.shape().to_vec()))).collect();
        let shape = self.infer(&fs.iter().map(|f| f.as_ref()).collect::<Vec<_>>())?.remove(0).shape;
        let axis = normalize_axis(self.axis, shape.len())?;
        Ok((shape, axis))
    }
}

/// `Split(axis, split)` into as many outputs as the node declares.
#[derive(Debug)]
pub struct Split {
    axis: i64,
    split: Option<Vec<i64>>,
    num_outputs: usize,
}

fn import_split(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let split = if c.opset < 13 { c.attrs.ints_opt("split")? } else { None };
    Ok(Box::new(Split { axis: c.attrs.int("axis", 0)?, split, num_outputs: c.num_outputs }))
}

impl Split {
    fn sizes(&self, dim: usize, split_input: Option<&Fact>) -> Result<Vec<usize>> {
        let split = match (&self.split, split_input) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(f)) => Some(f.const_i64s("split")?),
            _ => None,
        };
        match split {
            Some(s) => {
                ensure!(
                    s.len() == self.num_outputs && s.iter().all(|&v| v >= 0) && s.iter().sum::<i64>() == dim as i64,
                    "split {s:?} does not divide dim {dim} into {} parts",
                    self.num_outputs
                );
                Ok(s.iter().map(|&v| v as usize).collect())
            }
            None => {
                let n = self.num_outputs.max(1);
                let chunk = dim.div_ceil(n);
                Ok((0..n).map(|i| chunk.min(dim.saturating_sub(i * chunk))).collect())
            }
        }
    }
}

impl Op for Split {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, x.shape.len())?;
        Ok(self
            .sizes(x.shape[axis], optional(inputs, 1))?
            .into_iter()
            .map(|n| {
                let mut s = x.shape.clone();
                s[axis] = n;
                Fact::new(x.dtype, s)
            })
            .collect())
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let axis = normalize_axis(self.axis, x.shape().len())?;
        let outs = infer_now(self, inputs)?;
        let st = strides(x.shape());
        let src_strides: Vec<isize> = st.iter().map(|&s| s as isize).collect();
        let mut start = 0;
        outs.into_iter()
            .map(|f| {
                let base = start * st[axis];
                start += f.shape[axis];
                with_elements!(x, |v: &[T]| {
                    let mut dst = Vec::with_capacity(numel(&f.shape)?);
                    strided_copy(v, base, &f.shape, &src_strides, &mut dst);
                    out(f.shape, dst)
                })
            })
            .collect()
    }
}

/// `Slice(data, starts, ends, axes?, steps?)` (attributes before opset 10).
#[derive(Debug)]
pub struct Slice {
    attrs: Option<SliceAttrs>,
}

/// Starts, ends and axes given as attributes (opset < 10).
#[derive(Debug)]
struct SliceAttrs {
    starts: Vec<i64>,
    ends: Vec<i64>,
    axes: Option<Vec<i64>>,
}

fn import_slice(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let attrs = if c.opset < 10 {
        let get = |n: &str| c.attrs.ints_opt(n)?.ok_or_else(|| Error::Op(format!("attribute '{n}' is required")));
        Some(SliceAttrs { starts: get("starts")?, ends: get("ends")?, axes: c.attrs.ints_opt("axes")? })
    } else {
        None
    };
    Ok(Box::new(Slice { attrs }))
}

/// Per-axis (start, step, len) of a slice, following the ONNX clamping rules.
fn slice_ranges(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: Option<Vec<i64>>,
    steps: Option<Vec<i64>>,
) -> Result<Vec<(i64, i64, usize)>> {
    ensure!(starts.len() == ends.len(), "starts {starts:?} and ends {ends:?} differ in length");
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    ensure!(axes.len() == starts.len() && steps.len() == starts.len(), "axes {axes:?} / steps {steps:?} do not match starts {starts:?}");
    let mut ranges: Vec<(i64, i64, usize)> = shape.iter().map(|&d| (0, 1, d)).collect();
    for i in 0..starts.len() {
        let axis = normalize_axis(axes[i], shape.len())?;
        let dim = shape[axis] as i64;
        let step = steps[i];
        ensure!(step != 0, "slice step is 0");
        let fix = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
        let (start, end) = if step > 0 {
            (fix(starts[i]).clamp(0, dim), fix(ends[i]).clamp(0, dim))
        } else {
            (fix(starts[i]).clamp(0, dim - 1), fix(ends[i]).clamp(-1, dim - 1))
        };
        let len = if step > 0 { (end - start + step - 1).div_euclid(step) } else { (start - end + (-step) - 1).div_euclid(-step) };
        ranges[axis] = (start, step, len.max(0) as usize);
    }
    Ok(ranges)
}

impl Slice {
    fn ranges(&self, inputs: &[Option<&Fact>]) -> Result<Vec<(i64, i64, usize)>> {
        let x = required(inputs, 0)?;
        match &self.attrs {
            Some(a) => slice_ranges(&x.shape, &a.starts, &a.ends, a.axes.clone(), None),
            None => {
                let get = |i: usize, what: &str| optional(inputs, i).map(|f| f.const_i64s(what)).transpose();
                slice_ranges(
                    &x.shape,
                    &required(inputs, 1)?.const_i64s("starts")?,
                    &required(inputs, 2)?.const_i64s("ends")?,
                    get(3, "axes")?,
                    get(4, "steps")?,
                )
            }
        }
    }
}

impl Op for Slice {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let shape = self.ranges(inputs)?.iter().map(|r| r.2).collect();
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let fs = run_facts(inputs);
        let refs: Vec<Option<&Fact>> = fs.iter().map(|f| f.as_ref()).collect();
        let ranges = self.ranges(&refs)?;
        let st = strides(x.shape());
        let base: i64 = ranges.iter().zip(&st).map(|(r, &s)| if r.2 > 0 { r.0 * s as i64 } else { 0 }).sum();
        let shape: Vec<usize> = ranges.iter().map(|r| r.2).collect();
        let src_strides: Vec<isize> = ranges.iter().zip(&st).map(|(r, &s)| (r.1 * s as i64) as isize).collect();
        with_elements!(x, |v: &[T]| {
            let mut dst = pool.take(numel(&shape)?);
            strided_copy(v, base as usize, &shape, &src_strides, &mut dst);
            Ok(vec![out(shape, dst)?])
        })
    }
}

/// `Gather(data, indices, axis)`; indices are bounds-checked.
#[derive(Debug)]
pub struct Gather {
    pub(crate) axis: i64,
}

impl Gather {
    /// The gathered axis (negative counts from the end).
    pub(crate) fn axis(&self) -> i64 {
        self.axis
    }
}

impl Op for Gather {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::gather_work(inputs[0].map(|t| t.dtype), outputs)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (x, idx) = (required(inputs, 0)?, required(inputs, 1)?);
        ensure!(matches!(idx.dtype, DataType::I64 | DataType::I32), "indices have dtype {}, expected int64 or int32", idx.dtype);
        let axis = normalize_axis(self.axis, x.shape.len())?;
        let shape = [&x.shape[..axis], &idx.shape[..], &x.shape[axis + 1..]].concat();
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (x, idx) = (required(inputs, 0)?, required(inputs, 1)?);
        let axis = normalize_axis(self.axis, x.shape().len())?;
        let dim = x.shape()[axis];
        let indices = idx
            .to_i64s()?
            .into_iter()
            .map(|i| {
                let j = if i < 0 { i + dim as i64 } else { i };
                ensure!((0..dim as i64).contains(&j), "index {i} is out of range for axis {axis} of size {dim}");
                Ok(j as usize)
            })
            .collect::<Result<Vec<_>>>()?;
        let outer: usize = x.shape()[..axis].iter().product();
        let inner: usize = x.shape()[axis + 1..].iter().product();
        let shape = [&x.shape()[..axis], idx.shape(), &x.shape()[axis + 1..]].concat();
        with_elements!(x, |v: &[T]| {
            let mut dst = pool.take(numel(&shape)?);
            for o in 0..outer {
                for &j in &indices {
                    let start = (o * dim + j) * inner;
                    dst.extend_from_slice(&v[start..start + inner]);
                }
            }
            Ok(vec![out(shape, dst)?])
        })
    }
}

/// `Pad(data, pads, constant_value?, axes?)` in constant, reflect or edge mode.
#[derive(Debug)]
pub struct Pad {
    mode: PadMode,
    attrs: Option<(Vec<i64>, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
}

fn import_pad(c: &ImportCtx) -> Result<Box<dyn Op>> {
    let mode = match c.attrs.string("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        other => return Err(super::unsupported_attr(format!("Pad mode '{other}'"))),
    };
    let attrs = if c.opset < 11 { Some((c.attrs.ints_opt("pads")?.unwrap_or_default(), c.attrs.float("value", 0.0)?)) } else { None };
    Ok(Box::new(Pad { mode, attrs }))
}

impl Pad {
    /// Per-axis (before, after) pads.
    fn pads(&self, inputs: &[Option<&Fact>]) -> Result<Vec<(i64, i64)>> {
        let x = required(inputs, 0)?;
        let rank = x.shape.len();
        let (pads, axes) = match &self.attrs {
            Some((p, _)) => (p.clone(), None),
            None => (required(inputs, 1)?.const_i64s("pads")?, optional(inputs, 3).map(|f| f.const_i64s("axes")).transpose()?),
        };
        let axes = match axes {
            Some(a) => a.iter().map(|&a| normalize_axis(a, rank)).collect::<Result<Vec<_>>>()?,
            None => (0..rank).collect(),
        };
        ensure!(pads.len() == 2 * axes.len(), "pads {pads:?} must have 2 values per padded axis ({} axes)", axes.len());
        let mut per_axis = vec![(0, 0); rank];
        for (i, &a) in axes.iter().enumerate() {
            per_axis[a] = (pads[i], pads[i + axes.len()]);
        }
        for (a, &(b, e)) in per_axis.iter().enumerate() {
            let d = x.shape[a] as i64;
            ensure!(d + b + e >= 0, "pads ({b}, {e}) shrink axis {a} of size {d} below zero");
            if self.mode == PadMode::Reflect {
                ensure!(b < d.max(1) && e < d.max(1), "reflect pads ({b}, {e}) must be smaller than axis {a} of size {d}");
            }
            if self.mode != PadMode::Constant && d == 0 {
                ensure!(b <= 0 && e <= 0, "cannot {:?}-pad empty axis {a}", self.mode);
            }
        }
        Ok(per_axis)
    }
}

impl Op for Pad {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let shape = x.shape.iter().zip(self.pads(inputs)?).map(|(&d, (b, e))| (d as i64 + b + e) as usize).collect();
        Ok(vec![Fact::new(x.dtype, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let fs = run_facts(inputs);
        let refs: Vec<Option<&Fact>> = fs.iter().map(|f| f.as_ref()).collect();
        let pads = self.pads(&refs)?;
        let shape: Vec<usize> = x.shape().iter().zip(&pads).map(|(&d, &(b, e))| (d as i64 + b + e) as usize).collect();
        let in_strides = strides(x.shape());
        let mode = self.mode;
        let src_index = |o: usize, axis: usize| -> Option<usize> {
            let d = x.shape()[axis] as i64;
            let i = o as i64 - pads[axis].0;
            if (0..d).contains(&i) {
                return Some(i as usize);
            }
            match mode {
                PadMode::Constant => None,
                PadMode::Edge => Some(i.clamp(0, d - 1) as usize),
                PadMode::Reflect => {
                    let period = 2 * (d - 1).max(1);
                    let r = i.rem_euclid(period);
                    Some((if r >= d { period - r } else { r }) as usize)
                }
            }
        };
        with_elements!(x, |v: &[T]| {
            let fill: T = match (&self.attrs, optional(inputs, 2)) {
                (None, Some(c)) if !c.is_empty() => c.as_slice::<T>()?[0],
                (Some((_, value)), _) => super::array::pad_value::<T>(*value),
                _ => T::default(),
            };
            let n = numel(&shape)?;
            let mut dst = Vec::with_capacity(n);
            let mut idx = vec![0usize; shape.len()];
            for _ in 0..n {
                let mut off = Some(0usize);
                for (axis, &o) in idx.iter().enumerate() {
                    off = match (off, src_index(o, axis)) {
                        (Some(acc), Some(i)) => Some(acc + i * in_strides[axis]),
                        _ => None,
                    };
                }
                dst.push(off.map_or(fill, |o| v[o]));
                for axis in (0..shape.len()).rev() {
                    idx[axis] += 1;
                    if idx[axis] < shape[axis] {
                        break;
                    }
                    idx[axis] = 0;
                }
            }
            Ok(vec![out(shape, dst)?])
        })
    }
}

/// The pre-opset-11 `value` attribute converted to the data's element type.
fn pad_value<T: 'static + Copy + Default>(value: f32) -> T {
    let any: &dyn std::any::Any = &value;
    any.downcast_ref::<T>().copied().unwrap_or_default()
}

// ---- shape producers ----

/// `Shape(start, end)`: always known at plan time.
#[derive(Debug)]
pub struct ShapeOf {
    start: i64,
    end: Option<i64>,
}

impl Op for ShapeOf {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        let r = x.shape.len() as i64;
        let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
        let (s, e) = (clamp(self.start), clamp(self.end.unwrap_or(r)));
        let dims: Vec<i64> = x.shape[s..e.max(s)].iter().map(|&d| d as i64).collect();
        Ok(vec![Fact::of(Arc::new(Tensor::from_vec(vec![dims.len()], dims)?))])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        Ok(vec![infer_now(self, inputs)?.remove(0).value.map(|v| (*v).clone()).ok_or_else(|| Error::Op("shape unknown".into()))?])
    }
}

/// `Size`: element count, always known at plan time.
#[derive(Debug)]
pub struct Size;

impl Op for Size {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let n = numel(&required(inputs, 0)?.shape)? as i64;
        Ok(vec![Fact::of(Arc::new(Tensor::scalar(n)))])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::scalar(required(inputs, 0)?.len() as i64)])
    }
}

/// `ConstantOfShape(shape, value)`.
#[derive(Debug)]
pub struct ConstantOfShape {
    value: Tensor,
}

impl Op for ConstantOfShape {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let spec = required(inputs, 0)?.const_i64s("the shape")?;
        ensure!(spec.iter().all(|&d| d >= 0), "shape {spec:?} has a negative dim");
        let shape: Vec<usize> = spec.iter().map(|&d| d as usize).collect();
        numel(&shape)?;
        Ok(vec![Fact::new(self.value.dtype(), shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let shape = self.infer(&[Some(&Fact::of(Arc::new(required(inputs, 0)?.clone())))])?.remove(0).shape;
        ensure!(self.value.len() == 1, "value must hold one element");
        with_elements!(&self.value, |v: &[T]| Ok(vec![out(shape.clone(), vec![v[0]; numel(&shape)?])?]))
    }
}

/// `Range(start, limit, delta)`.
#[derive(Debug)]
pub struct Range;

fn range_len(start: f64, limit: f64, delta: f64) -> Result<usize> {
    ensure!(delta != 0.0, "Range delta is 0");
    let n = ((limit - start) / delta).ceil().max(0.0);
    ensure!(n < (1u64 << 40) as f64, "Range({start}, {limit}, {delta}) is too long");
    Ok(n as usize)
}

impl Op for Range {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let s = required(inputs, 0)?;
        let get = |i: usize| -> Result<f64> {
            let f = required(inputs, i)?;
            ensure!(f.dtype == s.dtype, "Range inputs differ in dtype");
            let values: Vec<f64> = match f.dtype {
                DataType::F32 | DataType::F64 => f.const_f32s("Range bounds")?.iter().map(|&v| v as f64).collect(),
                _ => f.const_i64s("Range bounds")?.iter().map(|&v| v as f64).collect(),
            };
            // Checked here, before eval indexes them: a fuzzed model gave an empty bound.
            ensure!(values.len() == 1, "Range input {i} holds {} values; each bound is one value", values.len());
            Ok(values[0])
        };
        Ok(vec![Fact::new(s.dtype, vec![range_len(get(0)?, get(1)?, get(2)?)?])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], _: &mut BufferPool) -> Result<Vec<Tensor>> {
        let start = required(inputs, 0)?;
        Ok(vec![match start.dtype() {
            DataType::F32 | DataType::F64 => {
                let v: Vec<f32> = (0..3).map(|i| required(inputs, i).and_then(|t| t.to_f32s()).map(|v| v[0])).collect::<Result<_>>()?;
                let n = range_len(v[0] as f64, v[1] as f64, v[2] as f64)?;
                super::elementwise::cast(&Tensor::from_vec(vec![n], (0..n).map(|i| v[0] + i as f32 * v[2]).collect())?, start.dtype())?
            }
            _ => {
                let v: Vec<i64> = (0..3).map(|i| required(inputs, i).and_then(|t| t.to_i64s()).map(|v| v[0])).collect::<Result<_>>()?;
                let n = range_len(v[0] as f64, v[1] as f64, v[2] as f64)?;
                super::elementwise::cast(&Tensor::from_vec(vec![n], (0..n as i64).map(|i| v[0] + i * v[2]).collect())?, start.dtype())?
            }
        }])
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn iota(shape: &[usize]) -> Option<Tensor> {
        let n: usize = shape.iter().product();
        f32t(shape, &(0..n).map(|i| i as f32).collect::<Vec<_>>())
    }

    /// ONNX's examples: axis 1 on a 2 × 2, and axis 0 with a negative index.
    #[test]
    fn gather_elements_picks_along_the_axis() {
        let y = run(&GatherElements { axis: 1 }, &[f32t(&[2, 2], &[1., 2., 3., 4.]), i64t(&[2, 2], &[0, 0, 1, 0])]).unwrap();
        assert_close(&y[0], &[2, 2], &[1., 1., 4., 3.]);
        let data = f32t(&[3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let y = run(&GatherElements { axis: 0 }, &[data.clone(), i64t(&[2, 3], &[1, 2, 0, 2, 0, -3])]).unwrap();
        assert_close(&y[0], &[2, 3], &[4., 8., 3., 7., 2., 3.]);
        let err = run(&GatherElements { axis: 0 }, &[data, i64t(&[1, 1], &[3])]).unwrap_err();
        assert!(err.to_string().contains("index 3 is out of range"), "{err}");
    }

    #[test]
    fn dropout_passes_the_data_at_inference() {
        let x = f32t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let y = run(&Dropout { mask: true }, &[x.clone(), f32t(&[], &[0.5]), None]).unwrap();
        assert_eq!(y[0].as_slice::<f32>().unwrap(), [1., 2., 3., 4., 5., 6.]);
        assert_eq!((y[1].shape(), y[1].as_bools().unwrap()), (&[2usize, 3][..], &[1u8; 6][..]));
        let mode = |on| Some(Tensor::from_bools(vec![], vec![on]).unwrap());
        assert_eq!(run(&Dropout { mask: false }, &[x.clone(), None, mode(false)]).unwrap().len(), 1);
        let err = run(&Dropout { mask: false }, &[x, None, mode(true)]).unwrap_err();
        assert!(err.to_string().contains("training mode"), "{err}");
    }

    /// Both triangles of a batch of two 3 × 4 matrices, on and off the main diagonal.
    #[test]
    fn trilu_keeps_one_triangle_of_each_matrix() {
        let x: Vec<i64> = (1..=24).collect();
        let want = |upper: bool, k: i64| -> Vec<i64> {
            x.iter()
                .enumerate()
                .map(|(e, &v)| {
                    let (i, j) = ((e / 4 % 3) as i64, (e % 4) as i64);
                    if (upper && j - i >= k) || (!upper && j - i <= k) { v } else { 0 }
                })
                .collect()
        };
        for (upper, k) in [(true, 0), (true, 1), (true, -1), (false, 0), (false, 2), (false, -2)] {
            let y = run(&Trilu { upper }, &[i64t(&[2, 3, 4], &x), i64t(&[], &[k])]).unwrap();
            assert_eq!(y[0].as_slice::<i64>().unwrap(), want(upper, k), "upper {upper}, k {k}");
        }
        // Upper, k = 0 spelled out for the first matrix; then k absent is 0.
        let y = run(&Trilu { upper: true }, &[i64t(&[2, 3, 4], &x), None]).unwrap();
        assert_eq!(&y[0].as_slice::<i64>().unwrap()[..12], [1, 2, 3, 4, 0, 6, 7, 8, 0, 0, 11, 12]);
    }

    #[test]
    fn reshape_with_zero_and_minus_one() {
        let y = run_const(&Reshape { allow_zero: false }, &[iota(&[2, 3, 4]), i64t(&[3], &[0, -1, 2])]).unwrap();
        assert_eq!(y[0].shape(), &[2, 6, 2]);
        let err = run_const(&Reshape { allow_zero: false }, &[iota(&[2, 3]), i64t(&[1], &[4])]).unwrap_err().to_string();
        assert!(err.contains("cannot reshape"), "{err}");
    }

    #[test]
    fn transpose_and_flatten() {
        let y = run(&Transpose { perm: Some(vec![1, 0]) }, &[iota(&[2, 3])]).unwrap();
        assert_close(&y[0], &[3, 2], &[0., 3., 1., 4., 2., 5.]);
        let y = run(&Transpose { perm: Some(vec![0, 2, 1]) }, &[iota(&[1, 2, 2])]).unwrap();
        assert_close(&y[0], &[1, 2, 2], &[0., 2., 1., 3.]);
        let y = run(&Flatten { axis: 2 }, &[iota(&[2, 3, 4, 5])]).unwrap();
        assert_eq!(y[0].shape(), &[6, 20]);
    }

    #[test]
    fn squeeze_unsqueeze() {
        let y = run_const(&Unsqueeze { axes: None }, &[iota(&[2, 3]), i64t(&[2], &[0, -1])]).unwrap();
        assert_eq!(y[0].shape(), &[1, 2, 3, 1]);
        let y = run(&Squeeze { axes: Some(vec![]) }, &[iota(&[1, 2, 1])]).unwrap();
        assert_eq!(y[0].shape(), &[2]);
        assert!(run(&Squeeze { axes: Some(vec![1]) }, &[iota(&[1, 2, 1])]).is_err());
    }

    #[test]
    fn concat_split_roundtrip() {
        let y = run(&Concat { axis: 1 }, &[iota(&[2, 1]), f32t(&[2, 2], &[10., 11., 12., 13.])]).unwrap();
        assert_close(&y[0], &[2, 3], &[0., 10., 11., 1., 12., 13.]);
        let parts = run_const(&Split { axis: 1, split: None, num_outputs: 2 }, &[y.into_iter().next(), i64t(&[2], &[1, 2])]).unwrap();
        assert_close(&parts[0], &[2, 1], &[0., 1.]);
        assert_close(&parts[1], &[2, 2], &[10., 11., 12., 13.]);
        let even = run(&Split { axis: 0, split: None, num_outputs: 2 }, &[iota(&[4])]).unwrap();
        assert_close(&even[1], &[2], &[2., 3.]);
    }

    #[test]
    fn slice_cases() {
        let s = Slice { attrs: None };
        let y = run_const(&s, &[iota(&[3, 4]), i64t(&[2], &[1, 0]), i64t(&[2], &[1000, -1]), None, None]).unwrap();
        assert_close(&y[0], &[2, 3], &[4., 5., 6., 8., 9., 10.]);
        // Negative step walks backwards; INT64_MIN-style end clamps to before the start.
        let y = run_const(&s, &[iota(&[5]), i64t(&[1], &[-1]), i64t(&[1], &[i64::MIN]), i64t(&[1], &[0]), i64t(&[1], &[-2])]).unwrap();
        assert_close(&y[0], &[3], &[4., 2., 0.]);
        let y = run_const(&s, &[iota(&[4]), i64t(&[1], &[3]), i64t(&[1], &[1]), None, None]).unwrap();
        assert_eq!(y[0].shape(), &[0]);
    }

    #[test]
    fn gather_checks_bounds() {
        let y = run(&Gather { axis: 0 }, &[iota(&[3, 2]), i64t(&[2], &[2, -3])]).unwrap();
        assert_close(&y[0], &[2, 2], &[4., 5., 0., 1.]);
        let y = run(&Gather { axis: 1 }, &[iota(&[2, 3]), i64t(&[], &[1])]).unwrap();
        assert_close(&y[0], &[2], &[1., 4.]);
        let err = run(&Gather { axis: 0 }, &[iota(&[3, 2]), i64t(&[1], &[3])]).unwrap_err().to_string();
        assert!(err.contains("index 3 is out of range"), "{err}");
    }

    #[test]
    fn expand_tile_pad() {
        let y = run_const(&Expand, &[f32t(&[2, 1], &[1., 2.]), i64t(&[2], &[1, 3])]).unwrap();
        assert_close(&y[0], &[2, 3], &[1., 1., 1., 2., 2., 2.]);
        let y = run_const(&Tile, &[f32t(&[2], &[1., 2.]), i64t(&[1], &[3])]).unwrap();
        assert_close(&y[0], &[6], &[1., 2., 1., 2., 1., 2.]);
        let pad = |mode| Pad { mode, attrs: None };
        let x = || f32t(&[3], &[1., 2., 3.]);
        let y = run_const(&pad(PadMode::Constant), &[x(), i64t(&[2], &[1, 2]), f32t(&[], &[9.])]).unwrap();
        assert_close(&y[0], &[6], &[9., 1., 2., 3., 9., 9.]);
        let y = run_const(&pad(PadMode::Reflect), &[x(), i64t(&[2], &[2, 2])]).unwrap();
        assert_close(&y[0], &[7], &[3., 2., 1., 2., 3., 2., 1.]);
        let y = run_const(&pad(PadMode::Edge), &[x(), i64t(&[2], &[1, 1])]).unwrap();
        assert_close(&y[0], &[5], &[1., 1., 2., 3., 3.]);
    }

    #[test]
    fn shape_range_constant_of_shape() {
        let y = run(&ShapeOf { start: 1, end: None }, &[iota(&[2, 3, 4])]).unwrap();
        assert_eq!(y[0].as_slice::<i64>().unwrap(), &[3, 4]);
        let y = run_const(&Range, &[i64t(&[], &[10]), i64t(&[], &[4]), i64t(&[], &[-3])]).unwrap();
        assert_eq!(y[0].as_slice::<i64>().unwrap(), &[10, 7]);
        let c = ConstantOfShape { value: Tensor::from_vec(vec![1], vec![7i64]).unwrap() };
        let y = run_const(&c, &[i64t(&[2], &[2, 2])]).unwrap();
        assert_eq!(y[0].as_slice::<i64>().unwrap(), &[7, 7, 7, 7]);
    }
}
