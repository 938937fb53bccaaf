//! Quantization ops: QuantizeLinear, DequantizeLinear (per tensor or per axis),
//! DynamicQuantizeLinear, MatMulInteger on the integer dot kernels, and gathers from quantized
//! tables (com.microsoft GatherBlockQuantized).

use super::array::Gather;
use super::epilogue::Epilogue;
use super::{
    BufferPool, Fact, ImportCtx, Importer, Op, PreparedWeights, expect_dtype, math, normalize_axis, numel, optional, out, required,
};
use crate::error::{Result, bail, ensure};
use crate::kernels::best_gemm_u8i8;
use crate::kernels::gemm::{PackedI8, gemm_u8i8_with};
use crate::tensor::{DataType, Element, Tensor};
use std::borrow::Cow;
use std::ops::Range;
use std::sync::Arc;

/// The ops of this family.
pub const OPS: &[(&str, Importer)] = &[
    ("QuantizeLinear", |c| Ok(Box::new(QuantizeLinear { axis: Axis::import(c)? }))),
    ("DequantizeLinear", |c| Ok(Box::new(DequantizeLinear { axis: Axis::import(c)? }))),
    ("DynamicQuantizeLinear", |_| Ok(Box::new(DynamicQuantizeLinear))),
    ("MatMulInteger", |_| Ok(Box::new(MatMulInteger::default()))),
    ("QLinearMatMul", |_| Ok(Box::new(QLinearMatMul::default()))),
    ("com.microsoft::GatherBlockQuantized", GatherBlockQuantized::import),
];

/// The `axis` and `block_size` attributes of QuantizeLinear / DequantizeLinear.
#[derive(Debug, Clone, Copy)]
pub struct Axis {
    axis: i64,
    /// 0: per tensor or per axis; otherwise blocks of this many along the axis (opset 21).
    block: usize,
}

impl Axis {
    fn import(c: &ImportCtx) -> Result<Axis> {
        let block = c.attrs.int("block_size", 0)?;
        ensure!(block >= 0, "block_size is {block}");
        Ok(Axis { axis: c.attrs.int("axis", 1)?, block: block as usize })
    }
}

/// Per-element (scale, zero point) lookup for per-tensor, per-axis or blocked parameters.
/// With the tensor seen as `[outer, len, inner]` around the axis, element `(o, a, i)` uses
/// parameter `a` (per axis) or `(o, a / block, i)` (blocked).
struct QuantParams {
    scales: Vec<f32>,
    zeros: Vec<i32>,
    layout: Layout,
}

enum Layout {
    Tensor,
    Axis { len: usize, inner: usize },
    Blocked { len: usize, inner: usize, block: usize, blocks: usize },
}

impl QuantParams {
    fn new(shape: &[usize], axis: Axis, scale: &Tensor, zero: Option<&Tensor>) -> Result<QuantParams> {
        let scales = scale.to_f32s()?;
        let zeros: Vec<i32> = match zero {
            Some(z) => match z.dtype() {
                DataType::U8 => z.as_slice::<u8>()?.iter().map(|&v| v as i32).collect(),
                DataType::I8 => z.as_slice::<i8>()?.iter().map(|&v| v as i32).collect(),
                DataType::I32 => z.as_slice::<i32>()?.to_vec(),
                other => bail!("zero point has dtype {other}, expected uint8, int8 or int32 (or int4/uint4)"),
            },
            None => vec![0; scales.len()],
        };
        ensure!(zeros.len() == scales.len(), "scale has {} values, zero point {}", scales.len(), zeros.len());
        ensure!(scales.iter().all(|s| s.is_finite()), "scale holds a NaN or infinite value");
        if axis.block == 0 && scales.len() == 1 && scale.shape().len() <= 1 {
            return Ok(QuantParams { scales, zeros, layout: Layout::Tensor });
        }
        let a = normalize_axis(axis.axis, shape.len())?;
        let (len, inner) = (shape[a], shape[a + 1..].iter().product());
        if axis.block == 0 {
            ensure!(
                scale.shape().len() == 1 && len == scales.len(),
                "per-axis scale of {} values does not match axis {a} of {shape:?}",
                scales.len()
            );
            return Ok(QuantParams { scales, zeros, layout: Layout::Axis { len, inner } });
        }
        let blocks = len.div_ceil(axis.block);
        let mut want = shape.to_vec();
        want[a] = blocks;
        ensure!(
            scale.shape() == want,
            "blocked scale has shape {:?}; input {shape:?} in blocks of {} along axis {a} needs {want:?}",
            scale.shape(),
            axis.block
        );
        Ok(QuantParams { scales, zeros, layout: Layout::Blocked { len, inner, block: axis.block, blocks } })
    }

    /// Calls `f(run, params)` for each run of consecutive elements of a `len`-element tensor
    /// whose parameters are one value (the whole tensor, a channel's span, a block along the
    /// last axis) or one per element from contiguous slices (blocks along an outer axis).
    fn runs(&self, len: usize, mut f: impl FnMut(Range<usize>, Params)) {
        if len == 0 {
            return; // a zero dim: nothing to run, and the strides below may be 0
        }
        match self.layout {
            Layout::Tensor => f(0..len, Params::One(self.scales[0], self.zeros[0])),
            // The axis is the innermost: each row runs over every channel's parameters (runs
            // of one element each would cost a call per element: a MatMul weight `[K, N]`
            // quantized per output column).
            Layout::Axis { len: channels, inner: 1 } => {
                for start in (0..len).step_by(channels.max(1)) {
                    let end = (start + channels).min(len);
                    f(start..end, Params::Each(&self.scales[..end - start], &self.zeros[..end - start]));
                }
            }
            Layout::Axis { len: channels, inner } => {
                for (c, start) in (0..len).step_by(inner.max(1)).enumerate() {
                    f(start..(start + inner).min(len), Params::One(self.scales[c % channels], self.zeros[c % channels]));
                }
            }
            Layout::Blocked { len: axis_len, inner: 1, block, blocks } => {
                for (o, start) in (0..len).step_by(axis_len.max(1)).enumerate() {
                    for b in 0..blocks {
                        let run = start + b * block..(start + (b + 1) * block).min(start + axis_len);
                        f(run, Params::One(self.scales[o * blocks + b], self.zeros[o * blocks + b]));
                    }
                }
            }
            Layout::Blocked { len: axis_len, inner, block, blocks } => {
                for (row, start) in (0..len).step_by(inner).enumerate() {
                    let p = (row / axis_len * blocks + row % axis_len / block) * inner;
                    f(start..start + inner, Params::Each(&self.scales[p..p + inner], &self.zeros[p..p + inner]));
                }
            }
        }
    }
}

/// The parameters of one run of elements (see [`QuantParams::runs`]).
#[derive(Clone, Copy)]
enum Params<'a> {
    One(f32, i32),
    Each(&'a [f32], &'a [i32]),
}

/// `DequantizeLinear(x, scale, zero_point?)`: `(x − zero_point) · scale`.
#[derive(Debug)]
pub struct DequantizeLinear {
    axis: Axis,
}

impl DequantizeLinear {
    /// The axis of per-axis parameters (`None` when blocked).
    pub(crate) fn per_axis(&self) -> Option<i64> {
        (self.axis.block == 0).then_some(self.axis.axis)
    }

    /// The axis and block size of blocked parameters (`None` when not blocked).
    pub(crate) fn blocked(&self) -> Option<(i64, usize)> {
        (self.axis.block > 0).then_some((self.axis.axis, self.axis.block))
    }
}

impl Op for DequantizeLinear {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::U8, DataType::I8, DataType::I32, DataType::U4, DataType::I4], "input")?;
        expect_dtype(required(inputs, 1)?, &[DataType::F32], "scale")?;
        if let Some(z) = optional(inputs, 2) {
            ensure!(z.dtype == x.dtype, "zero point has dtype {}, the input {}", z.dtype, x.dtype);
        }
        Ok(vec![Fact::new(DataType::F32, x.shape.clone())])
    }

    fn reads_four_bit(&self) -> bool {
        true
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        // 4-bit constants are widened here, once per use: this runs at plan time, or per run
        // only in exact sessions (CompactWeights).
        let x = &required(inputs, 0)?.widened()?;
        let zero = optional(inputs, 2).map(Tensor::widened).transpose()?;
        let p = QuantParams::new(x.shape(), self.axis, required(inputs, 1)?, zero.as_ref())?;
        fn run<T: StoredInt>(x: &Tensor, p: &QuantParams, pool: &mut BufferPool) -> Result<Tensor> {
            let q = x.as_slice::<T>()?;
            let mut y = pool.overwritable(q.len());
            p.runs(q.len(), |r, params| match params {
                Params::One(s, z) => dequantize_run(&q[r.clone()], s, z, &mut y[r]),
                Params::Each(s, z) => dequantize_each(&q[r.clone()], s, z, &mut y[r]),
            });
            out(x.shape().to_vec(), y)
        }
        Ok(vec![match x.dtype() {
            DataType::U8 => run::<u8>(x, &p, pool)?,
            DataType::I8 => run::<i8>(x, &p, pool)?,
            _ => run::<i32>(x, &p, pool)?,
        }])
    }
}

crate::simd::widest_fn! {
    /// `y = (q − zero) · scale`.
    pub(crate) fn dequantize_run<T: StoredInt>(q: &[T], scale: f32, zero: i32, y: &mut [f32]) {
        for (y, &v) in y.iter_mut().zip(q) {
            *y = v.widen().wrapping_sub(zero) as f32 * scale;
        }
    }
}

crate::simd::widest_fn! {
    /// `y[i] = (q[i] − zero[i]) · scale[i]`.
    fn dequantize_each<T: StoredInt>(q: &[T], scales: &[f32], zeros: &[i32], y: &mut [f32]) {
        for (((y, &v), &s), &z) in y.iter_mut().zip(q).zip(scales).zip(zeros) {
            *y = v.widen().wrapping_sub(z) as f32 * s;
        }
    }
}

/// `DequantizeLinear(constant) → Gather` as `Gather → DequantizeLinear`: quantized tables
/// (embeddings) stay quantized in memory and only the gathered rows are dequantized, with
/// the same arithmetic. Blocked parameters (int4 rows in blocks) are gathered with the data.
/// Made by the planner's fusion pass, not imported.
/// Inputs: `(quantized data, scale, zero_point?, indices)`.
#[derive(Debug)]
pub struct DequantizedGather {
    pub(crate) gather: Arc<Gather>,
    /// Dequantizes the gathered values (its axis moved to where the gather put it).
    pub(crate) dequantize: DequantizeLinear,
    /// How the scale and zero point reach the gathered values.
    parameters: GatheredParameters,
}

/// The parameters of a [`DequantizedGather`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum GatheredParameters {
    /// Per tensor, or along an axis the gather keeps: used as they are.
    Kept,
    /// Blocked along an axis the gather keeps: gathered like the data.
    Gathered,
    /// One per gathered row (an embedding table quantized per row): gathered like the data,
    /// with a trailing 1 so that each is one block of the whole row.
    PerRow,
}

impl DequantizedGather {
    /// For a table of shape `table` dequantized by `dequantize` and gathered by `gather` with
    /// indices of rank `indices_rank`, when its parameters are per tensor, along (or blocked
    /// along) an axis the gather keeps, or one per row of a 2-D table gathered by rows.
    pub(crate) fn new(
        gather: Arc<Gather>,
        dequantize: &DequantizeLinear,
        per_tensor: bool,
        table: &[usize],
        indices_rank: usize,
    ) -> Option<Self> {
        let gathered = normalize_axis(gather.axis(), table.len()).ok()?;
        let (axis, block) = match (per_tensor, dequantize.per_axis(), dequantize.blocked()) {
            (true, ..) => (None, 0),
            (false, Some(axis), _) => (Some(axis), 0),
            (false, None, Some((axis, block))) => (Some(axis), block),
            (false, None, None) => return None,
        };
        let mut parameters = if block > 0 { GatheredParameters::Gathered } else { GatheredParameters::Kept };
        let (axis, block) = match axis {
            None => (0, 0),
            Some(axis) => {
                let a = normalize_axis(axis, table.len()).ok()?;
                match a.cmp(&gathered) {
                    std::cmp::Ordering::Less => (a, block),
                    std::cmp::Ordering::Greater => (a + indices_rank - 1, block),
                    // Per row of [rows, row length]: each gathered row is one block.
                    std::cmp::Ordering::Equal if block == 0 && a == 0 && table.len() == 2 => {
                        parameters = GatheredParameters::PerRow;
                        (indices_rank, table[1].max(1))
                    }
                    std::cmp::Ordering::Equal => return None,
                }
            }
        };
        let dequantize = DequantizeLinear { axis: Axis { axis: axis as i64, block } };
        Some(DequantizedGather { gather, dequantize, parameters })
    }

    /// The shape a gathered parameter of shape `shape` takes.
    fn parameter_shape(&self, mut shape: Vec<usize>) -> Vec<usize> {
        if self.parameters == GatheredParameters::PerRow {
            shape.push(1);
        }
        shape
    }

    /// `table` gathered by `indices`. A 4-bit table is gathered packed, as rows of bytes, when
    /// the gather moves whole rows (its last dim even, gathered along another axis); only the
    /// gathered values are widened.
    fn gather_values(&self, table: &Tensor, indices: Option<&Tensor>, pool: &mut BufferPool) -> Result<Tensor> {
        if !table.dtype().is_four_bit() {
            return Ok(self.gather.eval(&[Some(table), indices], pool)?.remove(0));
        }
        let moves_rows = normalize_axis(self.gather.axis(), table.shape().len())? + 1 < table.shape().len();
        match table.packed_rows().filter(|_| moves_rows) {
            Some(rows) => {
                let gathered = self.gather.eval(&[Some(&rows), indices], pool)?.remove(0);
                Tensor::from_packed_rows(gathered, table.dtype())?.widened()
            }
            None => Ok(self.gather.eval(&[Some(&table.widened()?), indices], pool)?.remove(0)),
        }
    }

    /// The scale and zero point as the gathered values need them.
    fn parameters<'a>(&self, inputs: &[Option<&'a Tensor>], pool: &mut BufferPool) -> Result<[Option<Cow<'a, Tensor>>; 2]> {
        let indices = optional(inputs, 3);
        let mut gathered = |t: Option<&'a Tensor>| -> Result<Option<Cow<'a, Tensor>>> {
            Ok(match t {
                Some(t) if self.parameters != GatheredParameters::Kept => {
                    let g = self.gather_values(t, indices, pool)?;
                    let shape = self.parameter_shape(g.shape().to_vec());
                    Some(Cow::Owned(g.reshaped(shape)?))
                }
                t => t.map(Cow::Borrowed),
            })
        };
        Ok([gathered(optional(inputs, 1))?, gathered(optional(inputs, 2))?])
    }
}

impl Op for DequantizedGather {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::gather_work(inputs[0].map(|t| t.dtype), outputs)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let gathered = self.gather.infer(&[optional(inputs, 0), optional(inputs, 3)])?;
        let parameter = |i: usize| -> Result<Option<Fact>> {
            match optional(inputs, i) {
                Some(f) if self.parameters != GatheredParameters::Kept => {
                    let g = self.gather.infer(&[Some(f), optional(inputs, 3)])?.remove(0);
                    Ok(Some(Fact::new(g.dtype, self.parameter_shape(g.shape))))
                }
                f => Ok(f.cloned()),
            }
        };
        let (scale, zero) = (parameter(1)?, parameter(2)?);
        self.dequantize.infer(&[Some(&gathered[0]), scale.as_ref(), zero.as_ref()])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let gathered = self.gather_values(required(inputs, 0)?, optional(inputs, 3), pool)?;
        let [scale, zero] = self.parameters(inputs, pool)?;
        self.dequantize.eval(&[Some(&gathered), scale.as_deref(), zero.as_deref()], pool)
    }
}

/// com.microsoft `GatherBlockQuantized(data, indices, scales, zero_points?)`: rows of a 4-bit
/// table quantized in blocks along another axis, gathered, then dequantized. It is
/// onnxruntime's form of a 4-bit embedding table: the standard `Gather` takes no 4-bit type,
/// and `DequantizeLinear → Gather` makes onnxruntime dequantize the whole table on every run.
/// Runs as the planner's [`DequantizedGather`] of the same table, so only the gathered rows are
/// widened. Data is int4 or uint4 (zero point 0 when absent) with float scales (checked by
/// the DequantizeLinear it runs); the uint8 packing onnxruntime also accepts is refused by name.
#[derive(Debug)]
pub struct GatherBlockQuantized {
    gather: Arc<Gather>,
    dequantize: DequantizeLinear,
}

impl GatherBlockQuantized {
    fn import(c: &ImportCtx) -> Result<Box<dyn Op>> {
        let bits = c.attrs.int("bits", 4)?;
        ensure!(bits == 4, "bits is {bits}: only 4-bit (int4, uint4) data is supported");
        let block = c.attrs.int("block_size", 128)?;
        ensure!(block >= 16 && (block as u64).is_power_of_two(), "block_size is {block}, expected a power of 2 of at least 16");
        let gather = Arc::new(Gather { axis: c.attrs.int("gather_axis", 0)? });
        let axis = Axis { axis: c.attrs.int("quantize_axis", 1)?, block: block as usize };
        Ok(Box::new(GatherBlockQuantized { gather, dequantize: DequantizeLinear { axis } }))
    }

    /// The equivalent gather of a dequantized table of shape `table` by indices of rank
    /// `indices_rank`, and its inputs `(data, scales, zero_points?, indices)` in its order.
    fn as_dequantized_gather<'a, T>(
        &self,
        inputs: &[Option<&'a T>],
        shape: impl Fn(&T) -> (&[usize], DataType),
    ) -> Result<(DequantizedGather, Vec<Option<&'a T>>)> {
        let (table, indices) = (shape(required(inputs, 0)?), shape(required(inputs, 1)?));
        ensure!(table.1.is_four_bit(), "data has dtype {}: int4 and uint4 are supported (uint8-packed data is not)", table.1);
        ensure!(
            normalize_axis(self.dequantize.axis.axis, table.0.len())? != normalize_axis(self.gather.axis, table.0.len())?,
            "quantize_axis and gather_axis are the same axis"
        );
        let op = DequantizedGather::new(self.gather.clone(), &self.dequantize, false, table.0, indices.0.len())
            .ok_or_else(|| crate::error::Error::Op("the quantize and gather axes do not fit the table's rank".into()))?;
        Ok((op, vec![inputs[0], optional(inputs, 2), optional(inputs, 3), inputs[1]]))
    }
}

impl Op for GatherBlockQuantized {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::gather_work(inputs[0].map(|t| t.dtype), outputs)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (op, inputs) = self.as_dequantized_gather(inputs, |f: &Fact| (&f.shape[..], f.dtype))?;
        op.infer(&inputs)
    }

    fn reads_four_bit(&self) -> bool {
        true
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (op, inputs) = self.as_dequantized_gather(inputs, |t: &Tensor| (t.shape(), t.dtype()))?;
        op.eval(&inputs, pool)
    }
}

/// Weights kept compact in memory — quantized (`DequantizeLinear(8-bit constant)`, weight-only
/// quantization) or float16 (`Cast(float16 constant)`) — in front of `MatMul | Gemm | Conv`,
/// as one step that expands them on each run into a recycled buffer with the same
/// arithmetic as the folded constant (bit-identical): 4× (int8) or 2× (float16) less
/// resident weight memory for one pass over the weights per run. Made by the planner's
/// fusion pass, not imported.
/// Inputs: the op's, with its weight input replaced by the expander's inputs.
#[derive(Debug)]
pub struct CompactWeights {
    /// DequantizeLinear or Cast.
    pub(crate) expand: Arc<dyn Op>,
    pub(crate) expand_inputs: usize,
    pub(crate) op: Arc<dyn Op>,
    /// Which input of `op` the weights are.
    pub(crate) weight: usize,
}

/// The wrapped op's inputs (weights left out) and the expander's.
type SplitInputs<'a, T> = (Vec<Option<T>>, &'a [Option<T>]);

impl CompactWeights {
    /// The op's inputs with a gap for the expanded weights, and the expander's.
    fn split<'a, T: Copy>(&self, inputs: &'a [Option<T>]) -> Result<SplitInputs<'a, T>> {
        let (w, end) = (self.weight, self.weight + self.expand_inputs);
        ensure!(inputs.len() >= end, "expected {end} inputs, got {}", inputs.len());
        let op_inputs = [&inputs[..w], &[None], &inputs[end..]].concat();
        Ok((op_inputs, &inputs[w..end]))
    }
}

impl Op for CompactWeights {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        // The wrapped op's work, plus expanding the weights.
        let Ok((mut op_inputs, expand)) = self.split(inputs) else { return super::Work::default() };
        let Ok(mut expanded) = self.expand.infer(expand) else { return super::Work::default() };
        let expanding = self.expand.work(expand, &expanded);
        let weights = expanded.remove(0);
        op_inputs[self.weight] = Some(&weights);
        self.op.work(&op_inputs, outputs) + expanding
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (mut op_inputs, expand) = self.split(inputs)?;
        let weights = self.expand.infer(expand)?.remove(0);
        op_inputs[self.weight] = Some(&weights);
        self.op.infer(&op_inputs)
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let (mut op_inputs, expand) = self.split(inputs)?;
        let weights = self.expand.eval(expand, pool)?.remove(0);
        op_inputs[self.weight] = Some(&weights);
        let outputs = self.op.eval(&op_inputs, pool)?;
        pool.give(weights);
        Ok(outputs)
    }
}

/// `QuantizeLinear(x, scale, zero_point?)`: `saturate(round_half_even(x / scale) + zero_point)`.
#[derive(Debug)]
pub struct QuantizeLinear {
    axis: Axis,
}

/// Quantizes one value to the range `[lo, hi]`, rounding half to even.
#[inline(always)]
pub(crate) fn quantize(x: f32, scale: f32, zero: i32, lo: i32, hi: i32) -> i32 {
    // Clamp first (the result saturates anyway), then round half to even by adding and
    // subtracting 1.5·2^23: exact below 2^22 and vectorizable, unlike `round_ties_even`,
    // which is a libm call without SSE4.1.
    const ROUNDER: f32 = 12_582_912.0;
    let v = (x / scale).clamp(-4_194_304.0, 4_194_304.0);
    let q = (v + ROUNDER) - ROUNDER + zero as f32;
    // `max` then `min` (unlike `clamp`) turn NaN into `lo`, so the value is always in range
    // and the unchecked conversion (which vectorizes, unlike `as`) is sound.
    let q = q.max(lo as f32).min(hi as f32);
    // Safety: q is finite and within [lo, hi] ⊂ i32.
    unsafe { q.to_int_unchecked::<i32>() }
}

crate::simd::widest_fn! {
    /// min and max of `xs`, widened to include 0 (DynamicQuantizeLinear's range).
    fn range(xs: &[f32]) -> (f32, f32) {
        let (lo, hi) = math::min_max(xs);
        (lo.min(0.0), hi.max(0.0))
    }
}

crate::simd::widest_fn! {
    /// `q = saturate(round_half_even(x / scale) + zero)`.
    pub(crate) fn quantize_run<T: QuantizedInt>(xs: &[f32], scale: f32, zero: i32, q: &mut [T]) {
        for (q, &v) in q.iter_mut().zip(xs) {
            *q = T::narrow(quantize(v, scale, zero, T::LO, T::HI));
        }
    }
}

impl Op for QuantizeLinear {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        let dtype = optional(inputs, 2).map_or(DataType::U8, |z| z.dtype);
        ensure!(matches!(dtype, DataType::U8 | DataType::I8), "zero point dtype {dtype} is not uint8 or int8");
        Ok(vec![Fact::new(dtype, x.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let zero = optional(inputs, 2);
        let p = QuantParams::new(x.shape(), self.axis, required(inputs, 1)?, zero)?;
        ensure!(p.scales.iter().all(|&s| s != 0.0), "scale is 0");
        fn run<T: QuantizedInt>(x: &Tensor, p: &QuantParams, pool: &mut BufferPool) -> Result<Tensor> {
            let xs = x.as_slice::<f32>()?;
            let mut q = pool.overwritable::<T>(xs.len());
            p.runs(xs.len(), |r, params| match params {
                Params::One(s, z) => quantize_run(&xs[r.clone()], s, z, &mut q[r]),
                Params::Each(s, z) => {
                    for (((q, &x), &s), &z) in q[r.clone()].iter_mut().zip(&xs[r]).zip(s).zip(z) {
                        *q = T::narrow(quantize(x, s, z, T::LO, T::HI));
                    }
                }
            });
            out(x.shape().to_vec(), q)
        }
        Ok(vec![match zero.map_or(DataType::U8, |z| z.dtype()) {
            DataType::I8 => run::<i8>(x, &p, pool)?,
            _ => run::<u8>(x, &p, pool)?,
        }])
    }
}

/// `DynamicQuantizeLinear(x)`: u8 with scale and zero point from the data's range
/// (which always includes 0).
#[derive(Debug)]
pub struct DynamicQuantizeLinear;

impl Op for DynamicQuantizeLinear {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = required(inputs, 0)?;
        expect_dtype(x, &[DataType::F32], "input")?;
        Ok(vec![Fact::new(DataType::U8, x.shape.clone()), Fact::new(DataType::F32, vec![]), Fact::new(DataType::U8, vec![])])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let x = required(inputs, 0)?;
        let xs = x.as_slice::<f32>()?;
        let (lo, hi) = range(xs);
        ensure!(lo.is_finite() && hi.is_finite(), "input holds infinite values");
        let scale = (hi - lo) / 255.0;
        // All zeros (scale 0): every value quantizes to the zero point 0.
        let zero = if scale == 0.0 { 0 } else { quantize(-lo, scale, 0, 0, 255) };
        let mut q = pool.overwritable::<u8>(xs.len());
        if scale == 0.0 {
            q.fill(0);
        } else {
            quantize_run(xs, scale, zero, &mut q);
        }
        Ok(vec![out(x.shape().to_vec(), q)?, Tensor::scalar(scale), Tensor::scalar(zero as u8)])
    }
}

/// `MatMulInteger(A, B, a_zero_point?, b_zero_point?)` → i32, numpy batching over A.
/// Every u8/i8 combination runs on the u8·i8 kernel: i8 activations shift by +128 (zero
/// point too), u8 weights by −128, which leaves every difference (x − zero) unchanged.
#[derive(Debug, Default)]
pub struct MatMulInteger {
    /// B packed once when it is a constant.
    packed: PreparedWeights<PackedI8>,
    /// B stored `N × K` (a Gemm's `transB`; fusion only).
    b_transposed: bool,
}

/// Weight zero points as the u8·i8 kernels take them (u8 weights shifted by −128): one per
/// column of `n`, from one value or `n` values (none: 0, the dtype's zero).
pub(crate) fn weight_zeros(dtype: DataType, zero: Option<&Tensor>, n: usize) -> Result<Vec<i8>> {
    let zs: Vec<i8> = match zero {
        None => vec![0],
        Some(z) => {
            ensure!(z.dtype() == dtype, "weight zero point has dtype {}, the weights {dtype}", z.dtype());
            match z.dtype() {
                DataType::I8 => z.as_slice::<i8>()?.to_vec(),
                _ => z.as_slice::<u8>()?.iter().map(|&v| shift_u8(v)).collect(),
            }
        }
    };
    let zs = if zero.is_none() && dtype == DataType::U8 { vec![-128] } else { zs };
    match zs.len() {
        1 => Ok(vec![zs[0]; n]),
        len if len == n => Ok(zs),
        len => bail!("weight zero point has {len} values for {n} output columns"),
    }
}

/// u8 weight values as i8 (−128), which keeps every difference to the zero point.
fn shift_u8(v: u8) -> i8 {
    (v as i32 - 128) as i8
}

/// Packs u8 or i8 weights for the best kernel: output column `j`, reduction index `p` is
/// element `index(p, j)` of `w`; `zeros` from [`weight_zeros`].
pub(crate) fn pack_weights(w: &Tensor, k: usize, zeros: Vec<i8>, index: impl Fn(usize, usize) -> usize) -> Result<PackedI8> {
    let kernel = best_gemm_u8i8();
    Ok(match w.dtype() {
        DataType::I8 => {
            let values = w.as_slice::<i8>()?;
            PackedI8::from_fn(kernel, k, zeros, |p, j| values[index(p, j)])
        }
        _ => {
            let values = w.as_slice::<u8>()?;
            PackedI8::from_fn(kernel, k, zeros, |p, j| shift_u8(values[index(p, j)]))
        }
    })
}

fn pack_b(b: &Tensor, zero: Option<&Tensor>, transposed: bool) -> Result<PackedI8> {
    let (rows, cols) = (b.shape()[0], b.shape()[1]);
    let (k, n) = if transposed { (cols, rows) } else { (rows, cols) };
    pack_weights(b, k, weight_zeros(b.dtype(), zero, n)?, |p, j| if transposed { j * k + p } else { p * n + j })
}

/// Activations as the u8·i8 kernels take them: u8 in place, i8 shifted by +128 (zero point
/// too), which keeps every difference to the zero point.
pub(crate) fn activations_u8<'a>(a: &'a Tensor, zero: Option<&Tensor>) -> Result<(Cow<'a, [u8]>, u8)> {
    if let Some(z) = zero {
        ensure!(z.dtype() == a.dtype() && z.len() == 1, "activation zero point must be one {} value, got {z:?}", a.dtype());
    }
    Ok(match a.dtype() {
        DataType::U8 => (Cow::Borrowed(a.as_slice::<u8>()?), zero.map(|z| z.as_slice::<u8>().map(|v| v[0])).transpose()?.unwrap_or(0)),
        _ => {
            let z = zero.map(|z| z.as_slice::<i8>().map(|v| v[0])).transpose()?.unwrap_or(0);
            (Cow::Owned(a.as_slice::<i8>()?.iter().map(|&v| (v as i32 + 128) as u8).collect()), (z as i32 + 128) as u8)
        }
    })
}

impl Op for MatMulInteger {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::Work::macs(super::output_elements(outputs) * super::input_dim(inputs, 0, -1), true)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        expect_dtype(a, &[DataType::U8, DataType::I8], "A")?;
        expect_dtype(b, &[DataType::U8, DataType::I8], "B")?;
        ensure!(b.shape.len() == 2, "B must be 2-D (weights), got {:?}", b.shape);
        let (k, n) = self.b_dims(&b.shape);
        ensure!(a.shape.len() >= 2 && a.shape[a.shape.len() - 1] == k, "inner dims differ: A {:?} × B {:?}", a.shape, b.shape);
        if let Some(z) = optional(inputs, 2) {
            ensure!(
                z.dtype == a.dtype && z.shape.iter().product::<usize>() == 1,
                "a_zero_point must be one {} value (per-row zero points are not supported)",
                a.dtype
            );
        }
        let mut shape = a.shape.clone();
        *shape.last_mut().unwrap_or(&mut 0) = n;
        Ok(vec![Fact::new(DataType::I32, shape)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let shape = self.output_shape(inputs)?;
        let mut c = pool.overwritable(numel(&shape)?);
        self.gemm(inputs, &mut c, |_, _, acc, out| out.copy_from_slice(acc))?;
        Ok(vec![out(shape, c)?])
    }
}

impl MatMulInteger {
    /// `(K, N)` of weights of shape `b`.
    fn b_dims(&self, b: &[usize]) -> (usize, usize) {
        if self.b_transposed { (b[1], b[0]) } else { (b[0], b[1]) }
    }

    fn output_shape(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<usize>> {
        let mut shape = required(inputs, 0)?.shape().to_vec();
        *shape.last_mut().unwrap_or(&mut 0) = self.b_dims(required(inputs, 1)?.shape()).1;
        Ok(shape)
    }

    /// Runs the GEMM of inputs `(A, B, a_zero_point?, b_zero_point?)` into `c` through an
    /// epilogue (see [`gemm_u8i8_with`]); B is packed on first use and kept while it is the
    /// same constant.
    fn gemm<T: Send>(
        &self,
        inputs: &[Option<&Tensor>],
        c: &mut [T],
        epilogue: impl Fn(usize, usize, &[i32], &mut [T]) + Sync,
    ) -> Result<()> {
        let (a, b) = (required(inputs, 0)?, required(inputs, 1)?);
        let packed = self.packed.get(b, || pack_b(b, optional(inputs, 3), self.b_transposed))?;
        let (a_u8, a_zero) = activations_u8(a, optional(inputs, 2))?;
        gemm_u8i8_with(best_gemm_u8i8(), &a_u8, a_zero, &packed, c, epilogue);
        Ok(())
    }
}

/// `MatMulInteger → Cast(float) → Mul(scale) [→ Add(bias)]` as one step (the shape
/// onnxruntime's dynamic quantizer emits): `y = f32(acc) · scale[j] + bias[j]` applied to
/// each tile as it leaves the kernel, in the unfused graph's operation order, then its
/// [`Epilogue`], so the result is bit-identical to the unfused graph. Made by the planner's
/// fusion pass, not imported.
/// Inputs: `(A, B, a_zero_point?, b_zero_point?, scale, bias?, residual?)`, scale and bias
/// holding one value or one per column, the residual (the epilogue's) the output's shape.
#[derive(Debug)]
pub struct MatMulIntegerToFloat {
    /// The fused node's op (its packed weights are shared with it).
    pub matmul: Arc<MatMulInteger>,
    /// What follows the bias.
    pub epilogue: Epilogue,
}

impl Op for MatMulIntegerToFloat {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        self.matmul.work(inputs, outputs) + self.epilogue.work(super::output_elements(outputs))
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let facts = self.matmul.infer(&inputs[..4])?;
        let n = *facts[0].shape.last().unwrap_or(&1);
        for (i, what) in [(4, "scale"), (5, "bias")] {
            if let Some(f) = optional(inputs, i) {
                expect_dtype(f, &[DataType::F32], what)?;
                let len: usize = f.shape.iter().product();
                ensure!(len == 1 || len == n, "{what} holds {len} values for {n} columns");
            }
        }
        required(inputs, 4)?;
        self.epilogue.check_residual(optional(inputs, 6), &facts[0].shape)?;
        Ok(vec![Fact::new(DataType::F32, facts[0].shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let shape = self.matmul.output_shape(inputs)?;
        let n = *shape.last().unwrap_or(&1);
        let per_column = |t: Option<&Tensor>| -> Result<Vec<f32>> {
            Ok(match t {
                None => vec![0.0; n],
                Some(t) if t.len() == 1 => vec![t.as_slice::<f32>()?[0]; n],
                Some(t) => t.as_slice::<f32>()?.to_vec(),
            })
        };
        let (scale, bias) = (per_column(optional(inputs, 4))?, per_column(optional(inputs, 5))?);
        let residual = optional(inputs, 6).map(|r| r.as_slice::<f32>()).transpose()?;
        let mut y = pool.overwritable(numel(&shape)?);
        self.matmul.gemm(
            &inputs[..4],
            &mut y,
            #[inline(always)]
            |row, col0, acc, out| {
                for (((y, &v), &s), &b) in out.iter_mut().zip(acc).zip(&scale[col0..]).zip(&bias[col0..]) {
                    *y = v as f32 * s + b;
                }
                self.epilogue.apply(out, residual, row, col0, n);
            },
        )?;
        Ok(vec![out(shape, y)?])
    }
}

/// `QLinearMatMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale,
/// y_zero_point)`: the integer GEMM requantized in its epilogue,
/// `y = saturate(round_half_even(acc · a_scale · b_scale[j] / y_scale) + y_zero_point)`
/// (b_scale and b_zero_point per tensor or per column).
#[derive(Debug, Default)]
pub struct QLinearMatMul {
    matmul: MatMulInteger,
    /// A fused activation's float range (see [`Requantize::new`]).
    bounds: Bounds,
    /// Made by fusion from a QDQ MatMul whose result stays float: no output scale and zero
    /// point, f32 out.
    float_output: bool,
}

impl QLinearMatMul {
    /// The fused form (also of a QDQ Gemm): B stored `N × K` with `b_transposed`; a fused
    /// activation clamps the float result to `bounds` (Relu, Clip); with `float_output` the
    /// result is not quantized again. Takes an int32 bias as input 8.
    pub(crate) fn fused(b_transposed: bool, bounds: Bounds, float_output: bool) -> QLinearMatMul {
        QLinearMatMul { matmul: MatMulInteger { b_transposed, ..MatMulInteger::default() }, bounds, float_output }
    }
}

impl QLinearMatMul {
    /// The MatMulInteger inputs `(A, B, a_zero_point, b_zero_point)` (facts or tensors).
    fn gemm_inputs<T: Copy>(inputs: &[Option<T>]) -> [Option<T>; 4] {
        [optional(inputs, 0), optional(inputs, 3), optional(inputs, 2), optional(inputs, 5)]
    }
}

impl Op for QLinearMatMul {
    fn work(&self, inputs: &[Option<&Fact>], outputs: &[Fact]) -> super::Work {
        super::Work::macs(super::output_elements(outputs) * super::input_dim(inputs, 0, -1), true)
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let facts = self.matmul.infer(&Self::gemm_inputs(inputs))?;
        let n = *facts[0].shape.last().unwrap_or(&1);
        let scales: &[(usize, &str)] =
            if self.float_output { &[(1, "a_scale"), (4, "b_scale")] } else { &[(1, "a_scale"), (4, "b_scale"), (6, "y_scale")] };
        for &(i, what) in scales {
            let f = required(inputs, i)?;
            expect_dtype(f, &[DataType::F32], what)?;
            let len: usize = f.shape.iter().product();
            ensure!(len == 1 || (i == 4 && len == n), "{what} holds {len} values");
        }
        if let Some(b) = optional(inputs, 8) {
            expect_dtype(b, &[DataType::I32], "bias")?;
            ensure!(b.shape.iter().product::<usize>() == n, "bias {:?} should hold {n} values", b.shape);
        }
        if self.float_output {
            return Ok(vec![Fact::new(DataType::F32, facts[0].shape.clone())]);
        }
        let y_zero = required(inputs, 7)?;
        expect_dtype(y_zero, &[DataType::U8, DataType::I8], "y_zero_point")?;
        Ok(vec![Fact::new(y_zero.dtype, facts[0].shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        let gemm_inputs = Self::gemm_inputs(inputs);
        let shape = self.matmul.output_shape(&gemm_inputs)?;
        let n = *shape.last().unwrap_or(&1);
        let output = if self.float_output { None } else { Some((required(inputs, 6)?, required(inputs, 7)?)) };
        let requantize = Requantize::new(required(inputs, 1)?, required(inputs, 4)?, output, optional(inputs, 8), n, self.bounds)?;
        fn run<T: Requantized>(
            op: &QLinearMatMul,
            inputs: &[Option<&Tensor>],
            r: &Requantize,
            shape: Vec<usize>,
            pool: &mut BufferPool,
        ) -> Result<Tensor> {
            let mut y = pool.overwritable::<T>(numel(&shape)?);
            op.matmul.gemm(inputs, &mut y, |_, col0, acc, out| r.apply(col0, acc, out))?;
            out(shape, y)
        }
        Ok(vec![match requantize.dtype {
            DataType::U8 => run::<u8>(self, &gemm_inputs, &requantize, shape, pool)?,
            DataType::I8 => run::<i8>(self, &gemm_inputs, &requantize, shape, pool)?,
            _ => run::<f32>(self, &gemm_inputs, &requantize, shape, pool)?,
        }])
    }
}

/// The integer types DequantizeLinear reads.
pub(crate) trait StoredInt: Element {
    fn widen(self) -> i32;
}

/// The integer types QuantizeLinear and the QLinear ops produce, with their range.
pub(crate) trait QuantizedInt: StoredInt {
    const LO: i32;
    const HI: i32;
    /// `v` in `[LO, HI]` as this type.
    fn narrow(v: i32) -> Self;
}

macro_rules! quantized_ints {
    ($($t:ty),*) => {$(
        impl StoredInt for $t {
            #[inline(always)]
            fn widen(self) -> i32 {
                self as i32
            }
        }

        impl QuantizedInt for $t {
            const LO: i32 = <$t>::MIN as i32;
            const HI: i32 = <$t>::MAX as i32;
            #[inline(always)]
            fn narrow(v: i32) -> $t {
                v as $t
            }
        }
    )*};
}
quantized_ints!(u8, i8);

impl StoredInt for i32 {
    #[inline(always)]
    fn widen(self) -> i32 {
        self
    }
}

/// The float range a fused activation clamps to (`Relu`: from 0; `Clip`: its bounds).
pub(crate) type Bounds = (Option<f32>, Option<f32>);

/// The requantizing epilogue of the QLinear ops, as onnxruntime computes it:
/// `y[j] = saturate(round_half_even(f32(acc + bias[j]) · multiplier[j]) + y_zero)` with
/// `multiplier[j] = a_scale · w_scale[j] / y_scale` rounded to f32 once. Without an output
/// scale (a QDQ MatMul/Conv whose result stays float) `y[j] = f32(acc + bias[j]) · a_scale ·
/// w_scale[j]`.
#[derive(Debug)]
pub(crate) struct Requantize {
    multipliers: Vec<f32>,
    bias: Vec<i32>,
    zero: i32,
    /// The quantized range: the type's, narrowed by a fused activation.
    lo: i32,
    hi: i32,
    /// A fused activation's range for float outputs.
    float_bounds: (f32, f32),
    /// u8 or i8 (the zero point's), or f32 without an output scale.
    pub dtype: DataType,
}

/// What a requantizing epilogue writes: quantized u8/i8, or f32.
pub(crate) trait Requantized: Element {
    /// The output for the exact sum `v` (bias included) of a column with `multiplier`.
    fn finish(v: i32, multiplier: f32, r: &Requantize) -> Self;
}

impl<T: QuantizedInt> Requantized for T {
    #[inline(always)]
    fn finish(v: i32, multiplier: f32, r: &Requantize) -> T {
        T::narrow(quantize(v as f32 * multiplier, 1.0, r.zero, r.lo, r.hi))
    }
}

impl Requantized for f32 {
    #[inline(always)]
    fn finish(v: i32, multiplier: f32, r: &Requantize) -> f32 {
        (v as f32 * multiplier).max(r.float_bounds.0).min(r.float_bounds.1)
    }
}

impl Requantize {
    /// For `n` output columns: `a_scale` one value, `w_scale` one or `n`, `output` the output
    /// scale and u8/i8 zero point (one value each; `None`: float output), `bias` (int32) `n`
    /// values. A fused activation clamping the float result to `bounds` clamps a quantized
    /// one to the bounds' quantized values, which is exact: rounding is monotonic, so
    /// `q(clamp(y)) = clamp(q(y))`.
    pub(crate) fn new(
        a_scale: &Tensor,
        w_scale: &Tensor,
        output: Option<(&Tensor, &Tensor)>,
        bias: Option<&Tensor>,
        n: usize,
        bounds: Bounds,
    ) -> Result<Requantize> {
        let one = |t: &Tensor, what: &str| -> Result<f32> {
            ensure!(t.len() == 1, "{what} must be one value, got {t:?}");
            Ok(t.to_f32s()?[0])
        };
        let a_scale = one(a_scale, "input scale")?;
        let y_scale = output.map(|(s, _)| one(s, "output scale")).transpose()?;
        ensure!(y_scale.is_none_or(|s| s != 0.0 && s.is_finite()), "output scale is {y_scale:?}");
        let w_scale = w_scale.to_f32s()?;
        ensure!(w_scale.len() == 1 || w_scale.len() == n, "weight scale holds {} values for {n} output channels", w_scale.len());
        let multipliers = (0..n)
            .map(|j| {
                let scale = a_scale * w_scale[if w_scale.len() == 1 { 0 } else { j }];
                y_scale.map_or(scale, |y| scale / y)
            })
            .collect();
        let bias = match bias {
            None => vec![0; n],
            Some(b) => {
                ensure!(b.dtype() == DataType::I32 && b.len() == n, "bias must be {n} int32 values, got {b:?}");
                b.as_slice::<i32>()?.to_vec()
            }
        };
        let float_bounds = (bounds.0.unwrap_or(f32::NEG_INFINITY), bounds.1.unwrap_or(f32::INFINITY));
        let Some((y_scale, (_, y_zero))) = y_scale.zip(output) else {
            return Ok(Requantize { multipliers, bias, zero: 0, lo: 0, hi: 0, float_bounds, dtype: DataType::F32 });
        };
        ensure!(y_zero.len() == 1, "output zero point must be one value, got {y_zero:?}");
        let zero = match y_zero.dtype() {
            DataType::U8 => y_zero.as_slice::<u8>()?[0] as i32,
            DataType::I8 => y_zero.as_slice::<i8>()?[0] as i32,
            other => bail!("output zero point has dtype {other}, expected uint8 or int8"),
        };
        let (lo, hi) = if y_zero.dtype() == DataType::U8 { (0, 255) } else { (-128, 127) };
        let bound = |b: Option<f32>, default: i32| b.map_or(default, |b| quantize(b, y_scale, zero, lo, hi));
        Ok(Requantize { multipliers, bias, zero, lo: bound(bounds.0, lo), hi: bound(bounds.1, hi), float_bounds, dtype: y_zero.dtype() })
    }

    /// Requantizes the exact sums `acc` of columns `col0..` into `out`.
    #[inline(always)]
    pub(crate) fn apply<T: Requantized>(&self, col0: usize, acc: &[i32], out: &mut [T]) {
        for (((y, &v), &m), &b) in out.iter_mut().zip(acc).zip(&self.multipliers[col0..]).zip(&self.bias[col0..]) {
            *y = T::finish(v.wrapping_add(b), m, self);
        }
    }

    /// Requantizes sums that all belong to column `j` (a depthwise conv's plane).
    pub(crate) fn apply_to_column<T: Requantized>(&self, j: usize, acc: &[i32], out: &mut [T]) {
        let (m, b) = (self.multipliers[j], self.bias[j]);
        for (y, &v) in out.iter_mut().zip(acc) {
            *y = T::finish(v.wrapping_add(b), m, self);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    /// GatherBlockQuantized against its definition, `(data[idx][c] − zero[idx][c / block]) ·
    /// scale[idx][c / block]`: int4 with zero points and a short last block, uint4 without
    /// (zero 0), indices of rank 2 with a negative one and of rank 0; then the refusals.
    #[test]
    fn gather_block_quantized_matches_its_definition() {
        let (rows, cols, block) = (6usize, 40usize, 16usize);
        let blocks = cols.div_ceil(block);
        use crate::onnx::proto::{AttributeProto, NodeProto, attribute_proto::AttributeType};
        let import = |attrs: &[(&str, i64)]| {
            let attribute = attrs
                .iter()
                .map(|&(name, i)| AttributeProto {
                    name: Some(name.into()),
                    i: Some(i),
                    r#type: Some(AttributeType::Int as i32),
                    ..Default::default()
                })
                .collect();
            let node = NodeProto { attribute, ..Default::default() };
            let attrs = crate::onnx::attrs::Attrs::new(&node);
            GatherBlockQuantized::import(&ImportCtx { attrs, opset: 1, num_inputs: 4, num_outputs: 1 })
        };
        let gbq = |block: i64, quantize_axis: i64| import(&[("block_size", block), ("quantize_axis", quantize_axis)]).unwrap();
        for signed in [true, false] {
            let dtype = if signed { DataType::I4 } else { DataType::U4 };
            let value = |i: usize| if signed { (i * 7 % 16) as i32 - 8 } else { (i * 7 % 16) as i32 };
            let nibbles = |n: usize, f: &dyn Fn(usize) -> i32| -> Vec<u8> { (0..n).map(|i| f(i) as u8 & 15).collect() };
            let four_bit = |shape: Vec<usize>, v: Vec<u8>| Tensor::from_le_bytes(dtype, shape, crate::nibbles::pack_u4(&v).into()).unwrap();
            let data = four_bit(vec![rows, cols], nibbles(rows * cols, &value));
            let scales: Vec<f32> = (0..rows * blocks).map(|i| 0.25 * (1 + i % 5) as f32).collect();
            let zero = |i: usize| if signed { [0, -3, 7][i % 3] } else { 0 };
            let zeros = signed.then(|| four_bit(vec![rows, blocks], nibbles(rows * blocks, &zero)));
            for (shape, ids) in [(vec![2, 2], vec![5i64, 0, -1, 2]), (vec![], vec![3])] {
                let inputs = [
                    Some(data.clone()),
                    Some(Tensor::from_vec(shape.clone(), ids.clone()).unwrap()),
                    f32t(&[rows, blocks], &scales),
                    zeros.clone(),
                ];
                let y = run(gbq(block as i64, 1).as_ref(), &inputs).unwrap().remove(0);
                let mut want = Vec::new();
                for &i in &ids {
                    let r = i.rem_euclid(rows as i64) as usize;
                    let p = |c: usize| r * blocks + c / block;
                    want.extend((0..cols).map(|c| (value(r * cols + c) - zero(p(c))) as f32 * scales[p(c)]));
                }
                assert_eq!(y.shape(), [shape, vec![cols]].concat());
                assert_eq!(y.as_slice::<f32>().unwrap(), want, "signed {signed}, indices {ids:?}");
            }
        }
        let ids = Some(Tensor::from_vec(vec![1], vec![0i64]).unwrap());
        let error = |op: Box<dyn Op>, data: Tensor| {
            run(op.as_ref(), &[Some(data), ids.clone(), f32t(&[1, 1], &[1.0]), None]).unwrap_err().to_string()
        };
        let bytes = Tensor::from_vec(vec![1, 16], vec![0u8; 16]).unwrap();
        assert!(error(gbq(16, 1), bytes).contains("data has dtype uint8"));
        let int4 = Tensor::from_le_bytes(DataType::I4, vec![1, 16], vec![0u8; 8].into()).unwrap();
        assert!(error(gbq(16, 0), int4).contains("quantize_axis and gather_axis are the same axis"));
        for block in [8, 48] {
            let err = import(&[("block_size", block)]).unwrap_err().to_string();
            assert!(err.contains(&format!("block_size is {block}")), "{err}");
        }
        assert!(import(&[("bits", 8)]).unwrap_err().to_string().contains("bits is 8"));
    }

    #[test]
    fn quantize_dequantize_round_trip() {
        let x = f32t(&[5], &[-1.0, -0.26, 0.0, 0.25, 1.27]);
        let scale = f32t(&[], &[0.01]);
        let zero = Some(Tensor::scalar(-3i8));
        let q = run(&QuantizeLinear { axis: Axis { axis: 1, block: 0 } }, &[x, scale.clone(), zero.clone()]).unwrap();
        // −1/0.01 − 3 = −103; −26 − 3; 0 − 3; 25 − 3 (half to even: 25 exactly); 127 − 3.
        assert_eq!(q[0].as_slice::<i8>().unwrap(), &[-103, -29, -3, 22, 124]);
        let d = run(&DequantizeLinear { axis: Axis { axis: 1, block: 0 } }, &[Some(q[0].clone()), scale, zero]).unwrap();
        assert_close(&d[0], &[5], &[-1.0, -0.26, 0.0, 0.25, 1.27]);
        // Saturation and per-axis parameters.
        let q = run(
            &QuantizeLinear { axis: Axis { axis: 0, block: 0 } },
            &[f32t(&[2, 2], &[1000., -1000., 1., 1.]), f32t(&[2], &[1., 0.5]), Some(Tensor::from_vec(vec![2], vec![0u8, 10]).unwrap())],
        )
        .unwrap();
        assert_eq!(q[0].as_slice::<u8>().unwrap(), &[255, 0, 12, 12]);
    }

    #[test]
    fn blocked_dequantize_uses_one_scale_per_block() {
        // [2, 5] int4 values in blocks of 2 along axis 1: 3 blocks per row, the last one short.
        let x = Tensor::from_vec(vec![2, 5], vec![1i8, 2, 3, 4, 5, -1, -2, -3, -4, -8]).unwrap();
        let scale = f32t(&[2, 3], &[1., 10., 100., 0.5, 0.25, 2.]);
        let zero = Some(Tensor::from_vec(vec![2, 3], vec![0i8, 1, 2, 0, -1, 0]).unwrap());
        let y = run(&DequantizeLinear { axis: Axis { axis: 1, block: 2 } }, &[Some(x.clone()), scale, zero]).unwrap();
        assert_close(&y[0], &[2, 5], &[1., 2., 20., 30., 300., -0.5, -1., -0.5, -0.75, -16.]);
        // Along axis 0 (rows in blocks of 1 = per row, per column parameters).
        let scale = f32t(&[2, 5], &[1., 1., 1., 1., 1., 2., 2., 2., 2., 2.]);
        let y = run(&DequantizeLinear { axis: Axis { axis: 0, block: 1 } }, &[Some(x.clone()), scale, None]).unwrap();
        assert_close(&y[0], &[2, 5], &[1., 2., 3., 4., 5., -2., -4., -6., -8., -16.]);
        // A scale of the wrong shape is an error naming both shapes.
        let err = run(&DequantizeLinear { axis: Axis { axis: 1, block: 2 } }, &[Some(x), f32t(&[2, 2], &[1.; 4]), None]).unwrap_err();
        assert!(err.to_string().contains("[2, 3]"), "{err}");
    }

    /// Every layout's runs give each element the parameters the definition does: per axis
    /// `a`; blocked `(outer, a / block, inner)`.
    /// Found by the int4 fuzz target: a zero dim after the axis made the run stride 0.
    #[test]
    fn empty_tensors_dequantize_in_every_layout() {
        let x = Tensor::from_vec(vec![2, 0], Vec::<i8>::new()).unwrap();
        for (axis, block, scale_shape) in [(0, 0, vec![2]), (0, 1, vec![2, 0]), (1, 2, vec![2, 0])] {
            let n = scale_shape.iter().product();
            let scale = f32t(&scale_shape, &vec![1.0; n]);
            let y = run(&DequantizeLinear { axis: Axis { axis, block } }, &[Some(x.clone()), scale, None]).unwrap();
            assert_eq!(y[0].shape(), &[2, 0], "axis {axis} block {block}");
        }
    }

    #[test]
    fn runs_follow_the_definition_in_every_layout() {
        let shape = [2usize, 5, 3];
        let n: usize = shape.iter().product();
        let x: Vec<f32> = (0..n).map(|i| (i as f32 * 7.3) % 23.0 - 11.0).collect();
        let q: Vec<i8> = (0..n).map(|i| ((i * 37) % 256) as u8 as i8).collect();
        for (axis, block) in [(0usize, 0usize), (1, 0), (2, 0), (0, 1), (1, 2), (2, 2), (1, 3), (1, 5)] {
            let mut param_shape = shape.to_vec();
            param_shape[axis] = if block == 0 { shape[axis] } else { shape[axis].div_ceil(block) };
            let param_shape = if block == 0 { vec![shape[axis]] } else { param_shape };
            let count: usize = param_shape.iter().product();
            let scales: Vec<f32> = (0..count).map(|i| 0.25 + i as f32 * 0.125).collect();
            let zeros: Vec<i8> = (0..count).map(|i| (i as i8 % 7) - 3).collect();
            // The definition.
            let param = |i: usize| -> usize {
                let (outer, within) = (i / (shape[axis..].iter().product::<usize>()), i % shape[axis..].iter().product::<usize>());
                let inner: usize = shape[axis + 1..].iter().product();
                let (a, rest) = (within / inner, within % inner);
                a.checked_div(block).map_or(a, |b| (outer * param_shape[axis] + b) * inner + rest)
            };
            let op_axis = Axis { axis: axis as i64, block };
            let (st, zt) = (
                Tensor::from_vec(param_shape.clone(), scales.clone()).unwrap(),
                Tensor::from_vec(param_shape.clone(), zeros.clone()).unwrap(),
            );
            let y = run(
                &DequantizeLinear { axis: op_axis },
                &[Some(Tensor::from_vec(shape.to_vec(), q.clone()).unwrap()), Some(st.clone()), Some(zt.clone())],
            )
            .unwrap();
            let want: Vec<f32> = (0..n).map(|i| (q[i] as i32 - zeros[param(i)] as i32) as f32 * scales[param(i)]).collect();
            assert_eq!(y[0].as_slice::<f32>().unwrap(), want, "dequantize axis {axis} block {block}");
            let y =
                run(&QuantizeLinear { axis: op_axis }, &[Some(Tensor::from_vec(shape.to_vec(), x.clone()).unwrap()), Some(st), Some(zt)])
                    .unwrap();
            let want: Vec<i8> = (0..n).map(|i| quantize(x[i], scales[param(i)], zeros[param(i)] as i32, -128, 127) as i8).collect();
            assert_eq!(y[0].as_slice::<i8>().unwrap(), want, "quantize axis {axis} block {block}");
        }
    }

    #[test]
    fn qlinear_matmul_matches_the_spec_example() {
        // The ONNX spec's QLinearMatMul example (uint8).
        let a = Tensor::from_vec(vec![2, 4], vec![208u8, 236, 0, 238, 3, 214, 255, 29]).unwrap();
        let b = Tensor::from_vec(vec![4, 3], vec![152u8, 51, 244, 60, 26, 255, 0, 127, 246, 127, 254, 247]).unwrap();
        let s = |v: f32| Some(Tensor::scalar(v));
        let y = run(
            &QLinearMatMul::default(),
            &[
                Some(a),
                s(0.0066),
                Some(Tensor::scalar(113u8)),
                Some(b),
                s(0.00705),
                Some(Tensor::scalar(114u8)),
                s(0.0107),
                Some(Tensor::scalar(118u8)),
            ],
        )
        .unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[168, 115, 255, 1, 66, 151]);
    }

    #[test]
    fn dynamic_quantize_matches_the_spec_example() {
        // The ONNX spec's example: x = [0, 2, -3, -2.5, 1.34, 0.5].
        let y = run(&DynamicQuantizeLinear, &[f32t(&[6], &[0., 2., -3., -2.5, 1.34, 0.5])]).unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[153, 255, 0, 26, 221, 179]);
        assert!((y[1].as_slice::<f32>().unwrap()[0] - 0.019_607_844).abs() < 1e-9);
        assert_eq!(y[2].as_slice::<u8>().unwrap(), &[153]);
    }

    #[test]
    fn matmul_integer_all_dtype_combinations() {
        let a_u8 = Tensor::from_vec(vec![2, 3], vec![10u8, 200, 0, 255, 1, 128]).unwrap();
        let b_i8 = Tensor::from_vec(vec![3, 2], vec![1i8, -128, 127, 0, -5, 3]).unwrap();
        let (az, bz) = (7i32, [2i32, -1]);
        let want: Vec<i32> = (0..2)
            .flat_map(|i| {
                let (a, b) = (a_u8.as_slice::<u8>().unwrap(), b_i8.as_slice::<i8>().unwrap());
                (0..2).map(move |j| (0..3).map(|p| (a[i * 3 + p] as i32 - az) * (b[p * 2 + j] as i32 - bz[j])).sum()).collect::<Vec<i32>>()
            })
            .collect();
        let y = run(
            &MatMulInteger::default(),
            &[Some(a_u8.clone()), Some(b_i8.clone()), Some(Tensor::scalar(7u8)), Some(Tensor::from_vec(vec![2], vec![2i8, -1]).unwrap())],
        )
        .unwrap();
        assert_eq!(y[0].as_slice::<i32>().unwrap(), want.as_slice());
        // The same values as i8 activations and u8 weights (shifted by ∓128 with their zero points).
        let a_i8 = Tensor::from_vec(vec![2, 3], a_u8.as_slice::<u8>().unwrap().iter().map(|&v| (v as i32 - 128) as i8).collect()).unwrap();
        let b_u8 = Tensor::from_vec(vec![3, 2], b_i8.as_slice::<i8>().unwrap().iter().map(|&v| (v as i32 + 128) as u8).collect()).unwrap();
        let y = run(
            &MatMulInteger::default(),
            &[Some(a_i8), Some(b_u8), Some(Tensor::scalar((7 - 128) as i8)), Some(Tensor::from_vec(vec![2], vec![130u8, 127]).unwrap())],
        )
        .unwrap();
        assert_eq!(y[0].as_slice::<i32>().unwrap(), want.as_slice());
    }
}
