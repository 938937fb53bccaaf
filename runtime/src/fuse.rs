//! Plan-time fusion: a chain of steps that one kernel pass can finish is replaced by one
//! step, so its intermediates never reach memory. Rules match planned steps (dtypes and
//! shapes known) and absorb a value only when the chain is its sole reader and it is not a
//! graph output. The fused step takes the place of the chain's last step, where all of its
//! inputs exist.

use crate::ops::array::{Concat, Gather, Transpose, Unsqueeze};
use crate::ops::chain::{Chain, ChainStep, chains_binary};
use crate::ops::conv::Conv;
use crate::ops::elementwise::{Binary, Clip, Unary};
use crate::ops::epilogue::Epilogue;
use crate::ops::matmul::{Gemm, MatMul, PackedMatMul, View};
use crate::ops::matmul_nbits::BlockQuantizedMatMul;
use crate::ops::norm::{LayerNorm, MaskedSoftmax, Softmax};
use crate::ops::qbinary::QLinearBinary;
use crate::ops::qconv::QLinearConv;
use crate::ops::quant::{Bounds, CompactWeights, DequantizeLinear, DequantizedGather, MatMulInteger, MatMulIntegerToFloat, QLinearMatMul};
use crate::ops::reduce::Reduce;
use crate::ops::rotary::RotaryHalves;
use crate::ops::{Fact, Op, normalize_axis};
use crate::plan::Step;
use crate::tensor::DataType;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

/// Who reads each slot (the one step that reads it exactly once, if so) and which step
/// writes it.
struct Readers {
    sole: Vec<Option<usize>>,
    writer: Vec<Option<usize>>,
}

impl Readers {
    fn new(steps: &[Option<Step>], slots: usize, graph_outputs: &[usize]) -> Readers {
        let mut count = vec![0usize; slots];
        let (mut reader, mut writer) = (vec![None; slots], vec![None; slots]);
        for (i, step) in steps.iter().enumerate() {
            for &s in step.iter().flat_map(|s| s.inputs.iter().flatten()) {
                count[s] += 1;
                reader[s] = Some(i);
            }
            for &s in step.iter().flat_map(|s| s.outputs.iter().flatten()) {
                writer[s] = Some(i);
            }
        }
        for &s in graph_outputs {
            count[s] += 1;
        }
        Readers { sole: reader.into_iter().zip(count).map(|(r, c)| if c == 1 { r } else { None }).collect(), writer }
    }
}

/// What the rules read: the steps (absorbed ones already `None`), every slot's facts, who
/// reads and writes each slot, the folded DequantizeLinear / float16 Cast steps by slot, and
/// whether the session asks for the file's literal float arithmetic (`Session::set_exact`).
struct Planned<'a> {
    steps: &'a [Option<Step>],
    facts: &'a [Fact],
    readers: &'a Readers,
    expanded: &'a HashMap<usize, Step>,
    exact: bool,
}

/// Applies every rule; returns the steps in their new order.
/// `expanded` holds the folded DequantizeLinear and float16 Cast steps by output slot; with
/// `exact`, no rule changes the arithmetic (the approximating ones stay off).
pub(crate) fn fuse(steps: Vec<Step>, facts: &[Fact], graph_outputs: &[usize], expanded: &HashMap<usize, Step>, exact: bool) -> Vec<Step> {
    let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    let readers = Readers::new(&steps, facts.len(), graph_outputs);
    for i in 0..steps.len() {
        let g = Planned { steps: &steps, facts, readers: &readers, expanded, exact };
        let rules = [
            qdq_to_integer,
            qdq_binary,
            dequantized_gather,
            block_quantized_matmul,
            packed_matmul,
            compact_weights,
            matmul_integer_to_float,
            viewed_matmul_operand,
            rms_norm,
            rotary_halves,
            masked_softmax,
            elementwise_chain,
        ];
        let fused = rules.iter().find_map(|rule| rule(&g, i).filter(|(_, step)| infers_as_planned(step, facts)));
        if let Some((absorbed, fused)) = fused {
            for &j in &absorbed {
                steps[j] = None;
            }
            steps[*absorbed.last().expect("a chain")] = Some(fused);
        }
    }
    steps.into_iter().flatten().collect()
}

/// Whether a fused step accepts its inputs and produces exactly the planned outputs: rules
/// match patterns, and this keeps a pattern the fused op cannot take (a 1-D MatMul operand,
/// say) on the steps it came from.
fn infers_as_planned(step: &Step, facts: &[Fact]) -> bool {
    let inputs: Vec<Option<&Fact>> = step.inputs.iter().map(|s| s.map(|s| &facts[s])).collect();
    step.op.infer(&inputs).is_ok_and(|out| {
        out.len() >= step.outputs.len()
            && out.iter().zip(&step.outputs).all(|(f, s)| s.is_none_or(|s| f.dtype == facts[s].dtype && f.shape == facts[s].shape))
    })
}

/// The step that is the sole reader of `slot`, with the given op type.
fn sole_reader<'a>(steps: &'a [Option<Step>], readers: &Readers, slot: usize, op_type: &str) -> Option<(usize, &'a Step)> {
    let i = readers.sole[slot]?;
    steps[i].as_ref().filter(|s| s.op_type == op_type).map(|s| (i, s))
}

/// For a binary step reading `x`: its other input, when that holds one value or one per
/// column of `x` (so broadcasting keeps `x`'s shape), and its output slot.
fn per_column_operand(step: &Step, x: usize, facts: &[Fact]) -> Option<(usize, usize)> {
    let other = match step.inputs.as_slice() {
        [Some(a), Some(b)] if *a == x && *b != x => *b,
        [Some(a), Some(b)] if *b == x && *a != x => *a,
        _ => return None,
    };
    let (xf, of, out) = (&facts[x], &facts[other], step.outputs.first().copied().flatten()?);
    let n = *xf.shape.last()?;
    let per_column = of.shape.iter().product::<usize>() == 1 || (of.shape.last() == Some(&n) && of.shape.iter().product::<usize>() == n);
    (of.dtype == DataType::F32 && per_column && of.shape.len() <= xf.shape.len() && facts[out].shape == xf.shape).then_some((other, out))
}

/// `MatMulInteger → Cast(float) → Mul(scale) [→ Add(bias)]` and what its [`Epilogue`]
/// takes after them → [`MatMulIntegerToFloat`].
fn matmul_integer_to_float(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, readers) = (g.steps, g.facts, g.readers);
    let step = steps[i].as_ref()?;
    let op: Arc<dyn Any + Send + Sync> = step.op.clone();
    let matmul = op.downcast::<MatMulInteger>().ok()?;
    let acc = step.outputs.first().copied().flatten()?;
    let (c, cast) = sole_reader(steps, readers, acc, "Cast")?;
    let float = cast.outputs.first().copied().flatten().filter(|&s| facts[s].dtype == DataType::F32)?;
    let (m, mul) = sole_reader(steps, readers, float, "Mul")?;
    let (scale, mut out) = per_column_operand(mul, float, facts)?;
    let mut absorbed = vec![i, c, m];
    let mut bias = None;
    if let Some((a, add)) = sole_reader(steps, readers, out, "Add")
        && let Some((b, add_out)) = per_column_operand(add, out, facts)
    {
        absorbed.push(a);
        bias = Some(b);
        out = add_out;
    }
    let tail = Tail::after(g, out);
    let mut inputs = step.inputs.clone();
    inputs.resize(4, None);
    inputs.extend([Some(scale), bias, tail.residual]);
    absorbed.extend(&tail.absorbed);
    let op_type = format!("MatMulIntegerToFloat{}", tail.name);
    let fused: Arc<dyn Op> = Arc::new(MatMulIntegerToFloat { matmul, epilogue: tail.epilogue });
    Some((absorbed, Step { node: step.node.clone(), op_type, op: fused, inputs, outputs: vec![Some(tail.out)] }))
}

/// The step after a fused matmul's output that its [`Epilogue`] takes: an Add of a
/// full-shape f32 value (a residual connection), when it is the output's sole reader.
struct Tail {
    epilogue: Epilogue,
    absorbed: Vec<usize>,
    residual: Option<usize>,
    /// The Add's output (the matmul's own without a tail).
    out: usize,
    /// What the fused op type appends: `→Add(residual)`.
    name: &'static str,
}

impl Tail {
    fn after(g: &Planned, out: usize) -> Tail {
        let mut tail = Tail { epilogue: Epilogue::default(), absorbed: Vec::new(), residual: None, out, name: "" };
        if let Some(j) = g.readers.sole[out]
            && let Some(add) = g.steps[j].as_ref().filter(|s| (s.op.as_ref() as &dyn Any).downcast_ref::<Binary>() == Some(&Binary::Add))
            && let [Some(a), Some(b)] = add.inputs[..]
            && (a == out) != (b == out)
            && let Some(sum) = add.outputs.first().copied().flatten()
        {
            let residual = if a == out { b } else { a };
            let (rf, of) = (&g.facts[residual], &g.facts[out]);
            if rf.dtype == DataType::F32 && rf.shape == of.shape && g.facts[sum].shape == of.shape {
                tail = Tail {
                    epilogue: Epilogue { residual: true },
                    absorbed: vec![j],
                    residual: Some(residual),
                    out: sum,
                    name: "→Add(residual)",
                };
            }
        }
        tail
    }
}

/// A slot holding one constant value (a per-tensor scale or zero point).
fn one_constant(facts: &[Fact], slot: usize) -> Option<usize> {
    facts[slot].value.as_ref().filter(|v| v.len() == 1).map(|_| slot)
}

/// The folded DequantizeLinear step that made constant `slot`, if one did.
fn folded_dequantize(expanded: &HashMap<usize, Step>, slot: usize) -> Option<&Step> {
    expanded.get(&slot).filter(|s| s.op_type == "DequantizeLinear")
}

/// The `(quantized, scale, zero point?)` inputs of a DequantizeLinear step.
fn dequantize_inputs(step: &Step) -> Option<(usize, usize, Option<usize>)> {
    match step.inputs.as_slice() {
        [Some(q), Some(s)] => Some((*q, *s, None)),
        [Some(q), Some(s), z] => Some((*q, *s, *z)),
        _ => None,
    }
}

/// Static QDQ: `DequantizeLinear(xq) → Conv | MatMul | Gemm [→ Relu | Clip] [→
/// QuantizeLinear]`, the weights (and a Conv's or Gemm's bias) constants dequantized from
/// int8 (int32) → one
/// [`QLinearConv`] / [`QLinearMatMul`] step on `xq` and the integer weights, as onnxruntime
/// fuses them; without the QuantizeLinear the step writes the float result. Activations per
/// tensor; weights per tensor or per output channel.
fn qdq_to_integer(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, readers, expanded) = (g.steps, g.facts, g.readers, g.expanded);
    let step = steps[i].as_ref()?;
    // Which op, and for the products whether B is stored `N × K`.
    let (conv, b_transposed) = match step.op_type.as_str() {
        "Conv" => (true, false),
        "MatMul" => (false, false),
        "Gemm" => (false, (step.op.as_ref() as &dyn Any).downcast_ref::<Gemm>()?.plain()?),
        _ => return None,
    };
    let (x, w) = (step.inputs.first().copied().flatten()?, step.inputs.get(1).copied().flatten()?);
    // Activations: a DequantizeLinear step run per inference, one scale and zero point.
    let x_dq = readers.writer[x]?;
    let (xq, x_scale, x_zero) = dequantize_inputs(steps[x_dq].as_ref().filter(|s| s.op_type == "DequantizeLinear")?)?;
    one_constant(facts, x_scale)?;
    if let Some(z) = x_zero {
        one_constant(facts, z)?;
    }
    // Weights: a folded DequantizeLinear of an 8-bit constant, per tensor or per output channel.
    let w_dq = folded_dequantize(expanded, w)?;
    let (wq, w_scale, w_zero) = dequantize_inputs(w_dq)?;
    let w_shape = &facts[wq].shape;
    let (channels, channel_axis) = if conv || b_transposed { (*w_shape.first()?, 0) } else { (*w_shape.get(1)?, 1) };
    let per_channel = match facts[w_scale].value.as_ref()?.len() {
        1 => true,
        len => {
            len == channels
                && (w_dq.op.as_ref() as &dyn Any)
                    .downcast_ref::<DequantizeLinear>()?
                    .per_axis()
                    .and_then(|a| normalize_axis(a, w_shape.len()).ok())
                    == Some(channel_axis)
        }
    };
    if !per_channel || !matches!(facts[wq].dtype, DataType::U8 | DataType::I8) || (!conv && w_shape.len() != 2) {
        return None;
    }
    // A Conv's or Gemm's bias: int32 dequantized with zero point 0 (its scale is x_scale ·
    // w_scale).
    let bias = match step.inputs.get(2).copied().flatten() {
        None => None,
        Some(b) => {
            let (bq, _, b_zero) = dequantize_inputs(folded_dequantize(expanded, b)?)?;
            let zero_is_0 = b_zero
                .is_none_or(|z| facts[z].value.as_ref().is_some_and(|v| v.as_slice::<i32>().is_ok_and(|v| v.iter().all(|&z| z == 0))));
            let per_channel = facts[bq].shape.iter().product::<usize>() == channels;
            (facts[bq].dtype == DataType::I32 && zero_is_0 && per_channel).then_some(bq)?;
            Some(bq)
        }
    };
    // Output: through an optional Relu or Clip, quantized again by its sole reader (one
    // scale and zero point), or else left float.
    let mut absorbed = if readers.sole[x] == Some(i) { vec![x_dq, i] } else { vec![i] };
    let mut y = step.outputs.first().copied().flatten()?;
    let activation = activation_bounds(g, y);
    if let Some((a, _, out)) = activation {
        absorbed.push(a);
        y = out;
    }
    let (y_scale, y_zero, float_output) = match per_tensor_quantize(g, y) {
        Some((q, y_scale, y_zero, yq)) => {
            absorbed.push(q);
            y = yq;
            (Some(y_scale), Some(y_zero), false)
        }
        None => (None, None, true),
    };
    let inputs = vec![Some(xq), Some(x_scale), x_zero, Some(wq), Some(w_scale), w_zero, y_scale, y_zero, bias];
    let bounds = activation.map_or((None, None), |a| a.1);
    let (mut op_type, op): (String, Arc<dyn Op>) = if conv {
        let geometry = (step.op.as_ref() as &dyn Any).downcast_ref::<Conv>()?.geometry().clone();
        ("QLinearConv".into(), Arc::new(QLinearConv::fused(geometry, bounds, float_output)))
    } else {
        ("QLinearMatMul".into(), Arc::new(QLinearMatMul::fused(b_transposed, bounds, float_output)))
    };
    if let Some((a, _, _)) = activation {
        op_type = format!("{op_type}+{}", steps[a].as_ref()?.op_type);
    }
    if float_output {
        op_type.push_str("→f32");
    }
    Some((absorbed, Step { node: step.node.clone(), op_type, op, inputs, outputs: vec![Some(y)] }))
}

/// The DequantizeLinear writing `slot` with one constant scale and zero point — a step run
/// per inference (its index) or folded at plan time (`None`) — and its `(quantized, scale,
/// zero point)`.
fn per_tensor_dequantize(g: &Planned, slot: usize) -> Option<(Option<usize>, [usize; 3])> {
    let (steps, facts, readers, expanded) = (g.steps, g.facts, g.readers, g.expanded);
    let (i, step) = match readers.writer[slot] {
        Some(i) => (Some(i), steps[i].as_ref().filter(|s| s.op_type == "DequantizeLinear")?),
        None => (None, folded_dequantize(expanded, slot)?),
    };
    let (q, scale, zero) = dequantize_inputs(step)?;
    let zero = zero?;
    (matches!(facts[q].dtype, DataType::U8 | DataType::I8) && one_constant(facts, scale).is_some() && one_constant(facts, zero).is_some())
        .then_some((i, [q, scale, zero]))
}

/// The QuantizeLinear that is the sole reader of `y`, with one constant scale and zero point:
/// its index, scale, zero point and output.
fn per_tensor_quantize(g: &Planned, y: usize) -> Option<(usize, usize, usize, usize)> {
    let (q, quantize) = sole_reader(g.steps, g.readers, y, "QuantizeLinear")?;
    match quantize.inputs.as_slice() {
        [Some(_), Some(s), Some(z)] => {
            Some((q, one_constant(g.facts, *s)?, one_constant(g.facts, *z)?, quantize.outputs.first().copied().flatten()?))
        }
        _ => None,
    }
}

/// Static QDQ elementwise arithmetic: `DequantizeLinear(a), DequantizeLinear(b) → Add | Sub |
/// Mul | Div → QuantizeLinear`, all per tensor (an operand may be a constant folded out of
/// its DequantizeLinear) → one [`QLinearBinary`] step on the quantized tensors.
fn qdq_binary(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, readers) = (g.steps, g.readers);
    let step = steps[i].as_ref()?;
    let op = *(step.op.as_ref() as &dyn Any).downcast_ref::<Binary>().filter(|&&b| chains_binary(b))?;
    let (a, b) = match step.inputs.as_slice() {
        [Some(a), Some(b)] => (*a, *b),
        _ => return None,
    };
    let (a_dq, a_params) = per_tensor_dequantize(g, a)?;
    let (b_dq, b_params) = per_tensor_dequantize(g, b)?;
    let y = step.outputs.first().copied().flatten()?;
    let (q, y_scale, y_zero, yq) = per_tensor_quantize(g, y)?;
    let mut absorbed: Vec<usize> =
        [(a, a_dq), (b, b_dq)].iter().filter(|&&(slot, _)| readers.sole[slot] == Some(i)).filter_map(|&(_, dq)| dq).collect();
    absorbed.sort_unstable();
    absorbed.dedup();
    absorbed.extend([i, q]);
    let inputs: Vec<Option<usize>> = a_params.iter().chain(&b_params).chain(&[y_scale, y_zero]).map(|&s| Some(s)).collect();
    let fused: Arc<dyn Op> = Arc::new(QLinearBinary { op });
    let op_type = format!("QLinear{}", step.op_type);
    Some((absorbed, Step { node: step.node.clone(), op_type, op: fused, inputs, outputs: vec![Some(yq)] }))
}

/// A Relu or Clip (constant bounds) that is the sole reader of `y`: its step, the float
/// range it clamps to, and its output.
fn activation_bounds(g: &Planned, y: usize) -> Option<(usize, Bounds, usize)> {
    let (steps, facts, readers) = (g.steps, g.facts, g.readers);
    let a = readers.sole[y]?;
    let step = steps[a].as_ref()?;
    let out = step.outputs.first().copied().flatten()?;
    let op: &dyn Any = step.op.as_ref();
    if op.downcast_ref::<Unary>() == Some(&Unary::Relu) {
        return Some((a, (Some(0.0), None), out));
    }
    Some((a, clip_bounds(step, facts)?, out))
}

/// The bounds of a Clip step whose bounds are constant (attributes or constant inputs).
fn clip_bounds(step: &Step, facts: &[Fact]) -> Option<Bounds> {
    let clip = (step.op.as_ref() as &dyn Any).downcast_ref::<Clip>()?;
    let (mut lo, mut hi) = clip.attribute_bounds();
    for (i, bound) in [(1, &mut lo), (2, &mut hi)] {
        if let Some(s) = step.inputs.get(i).copied().flatten() {
            *bound = Some(facts[s].value.as_ref()?.as_slice::<f32>().ok()?.first().copied()?);
        }
    }
    Some((lo, hi))
}

/// `Gather` from a table folded out of `DequantizeLinear(constant)` → [`DequantizedGather`]
/// on the quantized table (which then leaves the plan: only the quantized one stays in memory).
fn dequantized_gather(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, expanded) = (g.steps, g.facts, g.expanded);
    let step = steps[i].as_ref().filter(|s| s.op_type == "Gather")?;
    let (table, indices) = match step.inputs.as_slice() {
        [Some(t), Some(i)] => (*t, *i),
        _ => return None,
    };
    let dq = folded_dequantize(expanded, table)?;
    let (q, scale, zero) = dequantize_inputs(dq)?;
    let gather = (step.op.clone() as Arc<dyn Any + Send + Sync>).downcast::<Gather>().ok()?;
    let dequantize = (dq.op.as_ref() as &dyn Any).downcast_ref::<DequantizeLinear>()?;
    let per_tensor = facts[scale].value.as_ref()?.len() == 1;
    let op = DequantizedGather::new(gather, dequantize, per_tensor, &facts[q].shape, facts[indices].shape.len())?;
    let inputs = vec![Some(q), Some(scale), zero, Some(indices)];
    Some((
        vec![i],
        Step { node: step.node.clone(), op_type: "DequantizedGather".into(), op: Arc::new(op), inputs, outputs: step.outputs.clone() },
    ))
}

/// `MatMul(A, DequantizeLinear(constant K × N, blocks along K))`, or `Gemm(A,
/// DequantizeLinear(constant), C?)` with 8- or 4-bit weights blocked along K (`N × K` with
/// `transB`) →
/// [`BlockQuantizedMatMul`], the integer GEMM with activations quantized per row and block
/// (onnxruntime's int8 compute for this form). Changes the arithmetic: off in exact sessions,
/// which keep the folded float weights.
fn block_quantized_matmul(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let step = g.steps[i].as_ref().filter(|_| !g.exact)?;
    let transposed = match step.op_type.as_str() {
        "MatMul" => false,
        "Gemm" => (step.op.as_ref() as &dyn Any).downcast_ref::<Gemm>()?.plain()?,
        _ => return None,
    };
    let (a, w, c) = match step.inputs.as_slice() {
        [Some(a), Some(w)] => (*a, *w, None),
        [Some(a), Some(w), c] if step.op_type == "Gemm" => (*a, *w, *c),
        _ => return None,
    };
    let dq = folded_dequantize(g.expanded, w)?;
    let (q, scale, zero) = dequantize_inputs(dq)?;
    let (axis, block) = (dq.op.as_ref() as &dyn Any).downcast_ref::<DequantizeLinear>()?.blocked()?;
    let op = BlockQuantizedMatMul::new(block, transposed)?;
    let zero_value = match zero {
        Some(z) => Some(g.facts[z].value.as_deref()?),
        None => None,
    };
    let q_value = g.facts[q].value.as_deref()?;
    let op = op.per_column_if_exact(q_value, g.facts[scale].value.as_deref()?, zero_value);
    let k_axis = if transposed { 1 } else { 0 };
    (g.facts[a].dtype == DataType::F32 && normalize_axis(axis, 2).ok()? == k_axis).then_some(())?;
    let (mut absorbed, mut inputs, mut out) =
        (vec![i], vec![Some(a), Some(q), Some(scale), zero], step.outputs.first().copied().flatten()?);
    let n = *g.facts[out].shape.last()?;
    let per_column = |bias: usize| g.facts[bias].value.as_ref().is_some_and(|b| b.len() == n && g.facts[bias].shape.last() == Some(&n));
    match c {
        // The Gemm's C: one constant per column.
        Some(c) => {
            per_column(c).then_some(())?;
            inputs.push(Some(c));
        }
        // A bias Add after it, with one constant per column.
        None => {
            if let Some((j, add)) = sole_reader(g.steps, g.readers, out, "Add")
                && let Some((bias, sum)) = per_column_operand(add, out, g.facts)
                && per_column(bias)
            {
                absorbed.push(j);
                inputs.push(Some(bias));
                out = sum;
            }
        }
    }
    let biased = inputs.len() > 4;
    let tail = Tail::after(g, out);
    inputs.resize(5, None);
    inputs.push(tail.residual);
    absorbed.extend(&tail.absorbed);
    let kind = if op.is_per_column() { "Int8" } else { "BlockQuantized" };
    let op_type = match (step.op_type.as_str(), biased) {
        ("MatMul", true) => format!("DequantizeLinear→{kind}MatMul→Add{}", tail.name),
        (op_type, _) => format!("DequantizeLinear→{kind}{op_type}{}", tail.name),
    };
    let op = Arc::new(op.with_epilogue(tail.epilogue));
    Some((absorbed, Step { node: step.node.clone(), op_type, op, inputs, outputs: vec![Some(tail.out)] }))
}

/// `MatMul(A, W)` or `Gemm(A, W)` (plain, `transB`, no C) with constant weights, float32 or
/// `Cast(float16 constant)` → [`PackedMatMul`]: the weights packed once into the f32
/// kernel's panels, instead of expanded and packed again on every run (and by every
/// thread). Small constants (under 4 Ki values) are left as they are.
fn packed_matmul(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let step = g.steps[i].as_ref()?;
    let transposed = match step.op_type.as_str() {
        "MatMul" => (step.op.as_ref() as &dyn Any).downcast_ref::<MatMul>().filter(|m| m.is_plain()).map(|_| false)?,
        "Gemm" => (step.op.as_ref() as &dyn Any).downcast_ref::<Gemm>()?.plain().filter(|&t| t)?,
        _ => return None,
    };
    let (a, w) = match step.inputs.as_slice() {
        [Some(a), Some(w)] => (*a, *w),
        _ => return None,
    };
    // A float32 constant of the file, or the float16 one a folded Cast expands (weights
    // folded out of DequantizeLinear are left to the compact forms).
    let (source, fused) = match g.expanded.get(&w) {
        Some(cast) if cast.op_type == "Cast" => {
            (cast.inputs.first().copied().flatten().filter(|&s| g.facts[s].dtype == DataType::F16)?, "Cast→PackedMatMul")
        }
        Some(_) => return None,
        None => (w, "PackedMatMul"),
    };
    let facts = &g.facts[source];
    let big = facts.shape.len() == 2 && facts.shape.iter().product::<usize>() >= 4096;
    (big && facts.value.is_some() && g.facts[a].dtype == DataType::F32).then_some(())?;
    let op_type = if transposed { format!("{fused}(transB)") } else { fused.to_string() };
    let inputs = vec![Some(a), Some(source)];
    Some((
        vec![i],
        Step { node: step.node.clone(), op_type, op: Arc::new(PackedMatMul::new(transposed)), inputs, outputs: step.outputs.clone() },
    ))
}

/// Weight-only quantization and float16 weights: `MatMul | Gemm | Conv` whose weights were
/// folded out of `DequantizeLinear(8-bit constant)` or `Cast(float16 constant)` →
/// [`CompactWeights`], so only the compact weights stay in memory. Small constants (under
/// 4 Ki values) are left folded.
fn compact_weights(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, expanded) = (g.steps, g.facts, g.expanded);
    let step = steps[i].as_ref().filter(|s| matches!(s.op_type.as_str(), "MatMul" | "Gemm" | "Conv"))?;
    let weight = 1;
    let source = expanded.get(&step.inputs.get(weight).copied().flatten()?)?;
    let compact: Vec<Option<usize>> = if source.op_type == "DequantizeLinear" {
        let (q, scale, zero) = dequantize_inputs(source)?;
        matches!(facts[q].dtype, DataType::U8 | DataType::I8 | DataType::U4 | DataType::I4).then_some(vec![Some(q), Some(scale), zero])?
    } else {
        source.inputs.clone()
    };
    if facts[compact.first().copied().flatten()?].shape.iter().product::<usize>() < crate::plan::DEFERRED_VALUES {
        return None;
    }
    let inputs = [&step.inputs[..weight], &compact, &step.inputs[weight + 1..]].concat();
    let op = CompactWeights { expand: source.op.clone(), expand_inputs: compact.len(), op: step.op.clone(), weight };
    let op_type = format!("{}→{}", source.op_type, step.op_type);
    Some((vec![i], Step { node: step.node.clone(), op_type, op: Arc::new(op), inputs, outputs: step.outputs.clone() }))
}

/// `step` as a chain step on the running value `v`, given the chain's input `x` (`None` for
/// the first step): f32 in, same shape out; binary ops need a scalar constant or `x` as their
/// other operand.
fn as_chain_step(step: &Step, v: usize, x: Option<usize>, facts: &[Fact]) -> Option<ChainStep> {
    let out = match step.outputs.as_slice() {
        [Some(o)] => *o,
        _ => return None,
    };
    if facts[v].dtype != DataType::F32 || facts[out].dtype != DataType::F32 || facts[out].shape != facts[v].shape {
        return None;
    }
    let op: &dyn Any = step.op.as_ref();
    if let Some(&u) = op.downcast_ref::<Unary>() {
        return (u.takes_f32() && step.inputs == [Some(v)]).then_some(ChainStep::Unary(u));
    }
    if op.is::<Clip>() {
        let (lo, hi) = clip_bounds(step, facts)?;
        return (step.inputs.first() == Some(&Some(v))).then_some(ChainStep::Clamp { lo, hi });
    }
    let op = *op.downcast_ref::<Binary>().filter(|&&b| chains_binary(b))?;
    let (w, other_first) = match step.inputs.as_slice() {
        [Some(a), Some(b)] if *a == v && *b != v => (*b, false),
        [Some(a), Some(b)] if *b == v && *a != v => (*a, true),
        _ => return None,
    };
    match &facts[w].value {
        Some(c) if c.dtype() == DataType::F32 && c.len() == 1 => {
            Some(ChainStep::Scalar { op, value: c.as_slice::<f32>().ok()?[0], scalar_first: other_first })
        }
        _ if Some(w) == x => Some(ChainStep::Input { op, input_first: other_first }),
        _ => None,
    }
}

/// Two or more elementwise f32 steps in a row, each the sole reader of the last → [`Chain`].
fn elementwise_chain(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, readers) = (g.steps, g.facts, g.readers);
    let first = steps[i].as_ref()?;
    let (x, head) = first.inputs.iter().flatten().find_map(|&v| Some((v, as_chain_step(first, v, None, facts)?)))?;
    let (mut chain, mut absorbed, mut value) = (vec![head], vec![i], first.outputs[0]?);
    while let Some(j) = readers.sole[value] {
        let Some(next) = steps[j].as_ref() else { break };
        let Some(step) = as_chain_step(next, value, Some(x), facts) else { break };
        chain.push(step);
        absorbed.push(j);
        value = next.outputs[0]?;
    }
    if chain.len() < 2 {
        return None;
    }
    let ops: Vec<&str> = absorbed.iter().filter_map(|&j| steps[j].as_ref().map(|s| s.op_type.as_str())).collect();
    let fused: Arc<dyn Op> = Arc::new(Chain::new(chain));
    let step = Step {
        node: first.node.clone(),
        op_type: format!("Chain({})", ops.join("→")),
        op: fused,
        inputs: vec![Some(x)],
        outputs: vec![Some(value)],
    };
    Some((absorbed, step))
}

/// The op type of a MatMul that reads an operand through a view.
const VIEWED_MATMUL: &str = "Transpose→MatMul";

/// `Transpose | Unsqueeze`, each the sole reader of the last, with a Transpose among them →
/// `MatMul` (either operand) → the MatMul reading the first step's input through their
/// [`View`] (no copy: attention's head splits, and a token-major KV cache read in the
/// graph's `[batch, heads, past, head_dim]`).
fn viewed_matmul_operand(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, readers) = (g.steps, g.facts, g.readers);
    let src = steps[i].as_ref()?.inputs.first().copied().flatten()?;
    let (mut view, mut absorbed, mut transposes) = (View::identity(facts[src].shape.len()), Vec::new(), 0);
    let (mut j, mut value) = (i, src);
    let reader = loop {
        let step = steps[j].as_ref()?;
        let input = step.inputs.first().copied().flatten()?;
        let op = step.op.as_ref() as &dyn Any;
        if let Some(t) = op.downcast_ref::<Transpose>() {
            view = view.transposed(&t.perm(facts[input].shape.len()).ok()?);
            transposes += 1;
        } else if let Some(u) = op.downcast_ref::<Unsqueeze>() {
            let axes = step.inputs.get(1).copied().flatten().map(|a| &facts[a]);
            view = view.unsqueezed(&u.inserted_axes(facts[input].shape.len(), axes).ok()?);
        } else if absorbed.is_empty() {
            return None;
        } else if step.op_type == "MatMul" || step.op_type == VIEWED_MATMUL {
            break step;
        } else {
            return None;
        }
        absorbed.push(j);
        value = step.outputs.first().copied().flatten()?;
        j = readers.sole[value]?;
    };
    let matmul = (reader.op.as_ref() as &dyn Any).downcast_ref::<MatMul>()?;
    let which = reader.inputs.iter().position(|&s| s == Some(value)).filter(|&w| w < 2 && facts[value].shape.len() >= 2)?;
    if transposes == 0 {
        return None;
    }
    let mut inputs = reader.inputs.clone();
    inputs[which] = Some(src);
    absorbed.push(j);
    let op: Arc<dyn Op> = Arc::new(matmul.with_view(which, view));
    Some((absorbed, Step { node: reader.node.clone(), op_type: VIEWED_MATMUL.into(), op, inputs, outputs: reader.outputs.clone() }))
}

/// A decoder's RMSNorm spelled out, `Mul(x, x) | Pow(x, 2) → ReduceMean(last axis) → Add(ε)
/// → Sqrt → Div(x, ·) → Mul(weight)`, each the sole reader of the last → one
/// RMSNormalization step ([`LayerNorm`] uncentered). It multiplies by 1/root instead of
/// dividing by the root, and sums in lanes: off in exact sessions.
fn rms_norm(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, readers) = (g.steps, g.facts, g.readers);
    if g.exact {
        return None;
    }
    let op = |s: &Step| (s.op.as_ref() as &dyn Any).downcast_ref::<Binary>().copied();
    let output = |s: &Step| s.outputs.first().copied().flatten();
    let scalar = |slot: usize| facts[slot].value.as_ref().filter(|v| v.len() == 1).and_then(|v| v.to_f32s().ok()).map(|v| v[0]);
    let square = steps[i].as_ref()?;
    let x = match (op(square)?, &square.inputs[..]) {
        (Binary::Mul, [Some(a), Some(b)]) if a == b => *a,
        (Binary::Pow, [Some(a), Some(e)]) if scalar(*e) == Some(2.0) => *a,
        _ => return None,
    };
    let rank = facts[x].shape.len();
    (facts[x].dtype == DataType::F32 && rank > 0).then_some(())?;
    let next = |slot: usize| readers.sole[slot].and_then(|j| Some((j, steps[j].as_ref()?)));
    let (mean_at, mean) = next(output(square)?)?;
    let reduce = (mean.op.as_ref() as &dyn Any).downcast_ref::<Reduce>()?;
    reduce.is_mean_over_last_axis(rank, mean.inputs.get(1).copied().flatten().map(|a| &facts[a])).then_some(())?;
    let (add_at, add) = next(output(mean)?)?;
    let epsilon = match (op(add)?, &add.inputs[..]) {
        (Binary::Add, [Some(m), Some(e)]) | (Binary::Add, [Some(e), Some(m)]) if Some(*m) == output(mean) => scalar(*e)?,
        _ => return None,
    };
    let (sqrt_at, sqrt) = next(output(add)?)?;
    ((sqrt.op.as_ref() as &dyn Any).downcast_ref::<Unary>() == Some(&Unary::Sqrt)).then_some(())?;
    let (div_at, div) = next(output(sqrt)?)?;
    (op(div)? == Binary::Div && div.inputs[..] == [Some(x), output(sqrt)]).then_some(())?;
    let (scale_at, scale) = next(output(div)?)?;
    let weight = match (op(scale)?, &scale.inputs[..]) {
        (Binary::Mul, [Some(n), Some(w)]) | (Binary::Mul, [Some(w), Some(n)]) if Some(*n) == output(div) => *w,
        _ => return None,
    };
    (facts[weight].value.is_some() && facts[weight].shape.iter().product::<usize>() == facts[x].shape[rank - 1]).then_some(())?;
    let op: Arc<dyn Op> = Arc::new(LayerNorm::rms_over_last_axis(epsilon));
    let step = Step {
        node: scale.node.clone(),
        op_type: "RMSNormalization".into(),
        op,
        inputs: vec![Some(x), Some(weight)],
        outputs: vec![output(scale), None, None],
    };
    Some((vec![i, mean_at, add_at, sqrt_at, div_at, scale_at], step))
}

/// Hugging Face's rotary embedding spelled out: `Slice(x, half..) → Neg`, `Slice(x, ..half)`,
/// `Concat(−x₂, x₁, last axis) → Mul(sin)`, `Mul(x, cos)`, `Add` → one [`RotaryHalves`] step
/// (matched from the Neg; the same arithmetic, so exact sessions fuse it too).
fn rotary_halves(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, readers) = (g.steps, g.facts, g.readers);
    let output = |s: &Step| s.outputs.first().copied().flatten();
    let binary = |s: &Step| (s.op.as_ref() as &dyn Any).downcast_ref::<Binary>().copied();
    let neg = steps[i].as_ref().filter(|s| (s.op.as_ref() as &dyn Any).downcast_ref::<Unary>() == Some(&Unary::Neg))?;
    let ints = |slot: Option<usize>| slot.and_then(|s| facts[s].value.as_ref()?.to_i64s().ok());
    // A Slice of x's last axis from `start`, step 1, writing `slot` (read only by the pattern).
    let half_of = |slot: usize, start: i64| -> Option<(usize, usize)> {
        let at = readers.writer[slot]?;
        let slice = steps[at].as_ref().filter(|s| s.op_type == "Slice")?;
        let x = slice.inputs.first().copied().flatten()?;
        let (rank, width) = (facts[x].shape.len(), *facts[x].shape.last()?);
        let last_axis = matches!(ints(slice.inputs.get(3).copied().flatten())?[..], [a] if a == -1 || a == rank as i64 - 1);
        let unit_steps = slice.inputs.get(4).copied().flatten().is_none_or(|s| ints(Some(s)).as_deref() == Some(&[1]));
        let halves = facts[slot].shape[..] == [&facts[x].shape[..rank - 1], &[width / 2]].concat() && width % 2 == 0;
        (ints(slice.inputs.get(1).copied().flatten())? == [start] && last_axis && unit_steps && halves).then_some((at, x))
    };
    let neg_out = output(neg)?;
    let width = *facts[neg_out].shape.last()? * 2;
    let second_half = neg.inputs.first().copied().flatten().filter(|&h| readers.sole[h] == Some(i))?;
    let (second_at, x) = half_of(second_half, (width / 2) as i64)?;
    let concat_at = readers.sole[neg_out]?;
    let concat = steps[concat_at].as_ref().filter(|s| s.op_type == "Concat")?;
    let [Some(negated), Some(first_half)] = concat.inputs[..] else { return None };
    let axis = (concat.op.as_ref() as &dyn Any).downcast_ref::<Concat>()?.axis();
    (negated == neg_out && (axis == -1 || axis == facts[x].shape.len() as i64 - 1)).then_some(())?;
    let (first_at, x1_source) = half_of(first_half, 0)?;
    (x1_source == x && readers.sole[first_half] == Some(concat_at)).then_some(())?;
    let rotated = output(concat)?;
    let sin_at = readers.sole[rotated]?;
    let sin_mul = steps[sin_at].as_ref().filter(|s| binary(s) == Some(Binary::Mul))?;
    let sin = match sin_mul.inputs[..] {
        [Some(r), Some(s)] if r == rotated => s,
        _ => return None,
    };
    let add_at = readers.sole[output(sin_mul)?]?;
    let add = steps[add_at].as_ref().filter(|s| binary(s) == Some(Binary::Add))?;
    let [Some(a), Some(b)] = add.inputs[..] else { return None };
    let cos_product = if Some(b) == output(sin_mul) { a } else { b };
    let cos_at = readers.writer[cos_product]?;
    let cos_mul = steps[cos_at].as_ref().filter(|s| binary(s) == Some(Binary::Mul) && readers.sole[cos_product] == Some(add_at))?;
    let cos = match cos_mul.inputs[..] {
        [Some(v), Some(c)] if v == x => c,
        _ => return None,
    };
    let step = Step {
        node: add.node.clone(),
        op_type: "RotaryEmbedding(halves)".into(),
        op: Arc::new(RotaryHalves),
        inputs: vec![Some(x), Some(cos), Some(sin)],
        outputs: add.outputs.clone(),
    };
    let mut absorbed = vec![first_at, second_at, i, concat_at, sin_at, cos_at, add_at];
    absorbed.sort_unstable();
    Some((absorbed, step))
}

/// `[elementwise steps →] Add(mask) → Softmax(last axis)`, or the steps without the mask →
/// one [`MaskedSoftmax`] (attention's `Mul(1/√d) → Add(mask) → Softmax`).
fn masked_softmax(g: &Planned, i: usize) -> Option<(Vec<usize>, Step)> {
    let (steps, facts, readers) = (g.steps, g.facts, g.readers);
    let first = steps[i].as_ref()?;
    let output = |s: &Step| s.outputs.first().copied().flatten();
    let (mut prologue, mut absorbed) = (Vec::new(), Vec::new());
    // The scores `x` and the value the prologue leaves (`x` itself without a prologue).
    let (x, mut value) = match first.inputs.iter().flatten().find_map(|&v| Some((v, as_chain_step(first, v, None, facts)?))) {
        Some((x, head)) => {
            prologue.push(head);
            absorbed.push(i);
            let mut value = output(first)?;
            while let Some(j) = readers.sole[value]
                && let Some(next) = steps[j].as_ref()
                && let Some(step) = as_chain_step(next, value, Some(x), facts)
            {
                prologue.push(step);
                absorbed.push(j);
                value = output(next)?;
            }
            (x, value)
        }
        // No prologue: the chain starts at the Add, on its full-shape input.
        None => {
            let out = output(first)?;
            let x = first.inputs.iter().flatten().copied().find(|&v| facts[v].shape == facts[out].shape)?;
            (x, x)
        }
    };
    let mut inputs = vec![Some(x)];
    let next = readers.sole[value].filter(|_| !absorbed.is_empty()).unwrap_or(i);
    let mut j = next;
    if let Some(add) = steps[next].as_ref().filter(|s| (s.op.as_ref() as &dyn Any).downcast_ref::<Binary>() == Some(&Binary::Add))
        && let [Some(a), Some(b)] = add.inputs[..]
        && (a == value) != (b == value)
    {
        let mask = if a == value { b } else { a };
        let (mf, vf) = (&facts[mask], &facts[value]);
        let fits = mf.dtype == DataType::F32 && mf.shape.len() <= vf.shape.len() && output(add).is_some_and(|o| facts[o].shape == vf.shape);
        if fits {
            inputs.push(Some(mask));
            absorbed.push(next);
            value = output(add)?;
            j = readers.sole[value]?;
        }
    }
    let softmax = steps[j].as_ref().filter(|s| s.op_type == "Softmax")?;
    let rank = facts[value].shape.len();
    let last_axis = (softmax.op.as_ref() as &dyn Any).downcast_ref::<Softmax>().is_some_and(|s| s.over_last_axis(rank));
    if !last_axis || absorbed.is_empty() || softmax.inputs != [Some(value)] {
        return None;
    }
    absorbed.push(j);
    let masked = inputs.len() == 2;
    let mut parts: Vec<&str> = absorbed.iter().filter_map(|&k| steps[k].as_ref().map(|s| s.op_type.as_str())).collect();
    parts.pop();
    let op: Arc<dyn Op> = Arc::new(MaskedSoftmax::new(prologue, masked));
    Some((
        absorbed,
        Step {
            node: softmax.node.clone(), op_type: format!("Softmax({})", parts.join("→")), op, inputs, outputs: softmax.outputs.clone()
        },
    ))
}

#[cfg(test)]
mod tests {
    use crate::plan::Plan;
    use crate::testing::{Attr, ModelBuilder};
    use crate::{DataType, Model, Session, Tensor};
    use std::sync::Arc;

    /// `MatMulInteger → Cast → Mul(scale) → Add(bias)`; with `expose`, the Cast output is
    /// also a graph output, which must block the fusion.
    fn dynamic_matmul(expose: bool) -> Session {
        let (k, n) = (5, 3);
        let b: Vec<i8> = (0..k * n).map(|i| ((i * 37) % 100) as i8 - 50).collect();
        let mut m = ModelBuilder::new(17)
            .input("a", DataType::U8, &[2, k as i64])
            .input("scale", DataType::F32, &[n as i64])
            .initializer("b", &Tensor::from_vec(vec![k, n], b).unwrap())
            .initializer("az", &Tensor::scalar(7u8))
            .initializer("bias", &Tensor::from_vec(vec![n], vec![0.5f32, -1.25, 3.0]).unwrap())
            .node("MatMulInteger", &["a", "b", "az"], &["acc"], vec![])
            .node("Cast", &["acc"], &["accf"], vec![("to", Attr::Int(1))])
            .node("Mul", &["accf", "scale"], &["scaled"], vec![])
            .node("Add", &["bias", "scaled"], &["y"], vec![])
            .output("y", DataType::F32, &[2, n as i64]);
        if expose {
            m = m.output("accf", DataType::F32, &[2, n as i64]);
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn matmul_integer_epilogue_fuses_bit_identically() {
        let a = Tensor::from_vec(vec![2, 5], vec![0u8, 255, 7, 100, 3, 9, 18, 250, 1, 128]).unwrap();
        let scale = Tensor::from_vec(vec![3], vec![0.013f32, 1.7e-3, 0.25]).unwrap();
        let run = |s: &Session| s.run(vec![("a", a.clone()), ("scale", scale.clone())]).unwrap().remove(0).1;
        let (fused, unfused) = (dynamic_matmul(false), dynamic_matmul(true));
        let shapes = [(DataType::U8, vec![2, 5]), (DataType::F32, vec![3])];
        let ops = |s: &Session| s.plan_for(&shapes).unwrap().step_ops().iter().map(|(_, op)| op.to_string()).collect::<Vec<_>>();
        assert_eq!(ops(&fused), ["MatMulIntegerToFloat"]);
        assert_eq!(ops(&unfused), ["MatMulInteger", "Cast", "Mul", "Add"]);
        let (y, want) = (run(&fused), run(&unfused));
        assert_eq!(y.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap(), "fused vs step by step");
        // And the value itself: row 0, column 0 by hand.
        let b0: Vec<i32> = (0..5).map(|p| (p * 3 * 37) % 100 - 50).collect();
        let acc: i32 = [0, 255, 7, 100, 3].iter().zip(&b0).map(|(&a, &b)| (a - 7) * b).sum();
        assert_eq!(y.as_slice::<f32>().unwrap()[0], acc as f32 * 0.013 + 0.5);
    }

    /// GELU as exported from PyTorch; with `expose`, the Erf output is also a graph output,
    /// which must split the chain.
    fn gelu(expose: bool) -> Session {
        let c = |v: f32| Tensor::scalar(v);
        let mut m = ModelBuilder::new(17)
            .input("x", DataType::F32, &[3, 700])
            .initializer("sqrt2", &c(std::f32::consts::SQRT_2))
            .initializer("one", &c(1.0))
            .initializer("half", &c(0.5))
            .node("Div", &["x", "sqrt2"], &["d"], vec![])
            .node("Erf", &["d"], &["e"], vec![])
            .node("Add", &["e", "one"], &["a"], vec![])
            .node("Mul", &["x", "a"], &["m"], vec![])
            .node("Mul", &["m", "half"], &["y"], vec![])
            .output("y", DataType::F32, &[3, 700]);
        if expose {
            m = m.output("e", DataType::F32, &[3, 700]);
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn elementwise_chains_fuse_bit_identically() {
        let x = Tensor::from_vec(vec![3, 700], (0..2100).map(|i| (i as f32 - 1000.0) * 0.007).collect()).unwrap();
        let shapes = [(DataType::F32, vec![3, 700])];
        let ops = |s: &Session| s.plan_for(&shapes).unwrap().step_ops().iter().map(|(_, op)| op.to_string()).collect::<Vec<_>>();
        let (fused, split) = (gelu(false), gelu(true));
        assert_eq!(ops(&fused), ["Chain(Div→Erf→Add→Mul→Mul)"]);
        assert_eq!(ops(&split), ["Chain(Div→Erf)", "Add", "Mul", "Mul"]);
        let y = fused.run(vec![("x", x.clone())]).unwrap().remove(0).1;
        let want = split.run(vec![("x", x)]).unwrap().remove(0).1;
        assert_eq!(y.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
    }

    /// HardSwish as paddle2onnx exports it, `x · Clip(x + 3, 0, 6) / 6`, with both bounds or
    /// only the lower one; with `expose` the Clip output is also a graph output (the reference).
    fn hard_swish(upper: bool, expose: bool) -> Session {
        let clip_inputs: &[&str] = if upper { &["a", "zero", "six"] } else { &["a", "zero"] };
        let mut m = ModelBuilder::new(13)
            .input("x", DataType::F32, &[2, 900])
            .initializer("three", &Tensor::scalar(3f32))
            .initializer("zero", &Tensor::scalar(0f32))
            .initializer("six", &Tensor::scalar(6f32))
            .node("Add", &["x", "three"], &["a"], vec![])
            .node("Clip", clip_inputs, &["c"], vec![])
            .node("Mul", &["x", "c"], &["m"], vec![])
            .node("Div", &["m", "six"], &["y"], vec![])
            .output("y", DataType::F32, &[2, 900]);
        if expose {
            m = m.output("c", DataType::F32, &[2, 900]);
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn clip_joins_chains_bit_identically() {
        let mut v: Vec<f32> = (0..1800).map(|i| (i as f32 - 900.0) * 0.011).collect();
        v[7] = f32::NAN;
        let x = Tensor::from_vec(vec![2, 900], v).unwrap();
        let shapes = [(DataType::F32, vec![2, 900])];
        for upper in [true, false] {
            let (fused, split) = (hard_swish(upper, false), hard_swish(upper, true));
            assert_eq!(plan_ops(&fused, &shapes), ["Chain(Add→Clip→Mul→Div)"]);
            assert_eq!(plan_ops(&split, &shapes), ["Chain(Add→Clip)", "Mul", "Div"]);
            let y = fused.run(vec![("x", x.clone())]).unwrap().remove(0).1;
            let want = split.run(vec![("x", x.clone())]).unwrap().remove(0).1;
            let (y, want) = (y.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
            assert!(y.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "upper bound {upper}");
            assert!(y[7].is_nan() && y[0] == 0.0, "NaN passes, values below -3 clip to 0");
        }
    }

    /// Pseudo-random values in about [-4, 4).
    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 250.0 - 4.0).collect()
    }

    /// Op types of the plan for these input shapes.
    fn plan_ops(s: &Session, shapes: &[(DataType, Vec<usize>)]) -> Vec<String> {
        s.plan_for(shapes).unwrap().step_ops().iter().map(|(_, op)| op.to_string()).collect()
    }

    /// Attention's `Mul(scale) → Add(mask) → Softmax`; exposing the Mul and Add outputs keeps
    /// every op on its own (the reference).
    fn attention_softmax(scores: &[usize], mask: &[usize], mask_first: bool, expose: bool) -> Session {
        let dims = |d: &[usize]| d.iter().map(|&v| v as i64).collect::<Vec<_>>();
        let add_inputs = if mask_first { ["mask", "scaled"] } else { ["scaled", "mask"] };
        let mut m = ModelBuilder::new(17)
            .input("x", DataType::F32, &dims(scores))
            .input("mask", DataType::F32, &dims(mask))
            .initializer("scale", &Tensor::scalar(0.125f32))
            .node("Mul", &["x", "scale"], &["scaled"], vec![])
            .node("Add", &add_inputs, &["masked"], vec![])
            .node("Softmax", &["masked"], &["y"], vec![("axis", Attr::Int(-1))])
            .output("y", DataType::F32, &dims(scores));
        if expose {
            m = m.output("scaled", DataType::F32, &dims(scores)).output("masked", DataType::F32, &dims(scores));
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn masked_softmax_fuses_bit_identically() {
        for len in [5usize, 1500] {
            let scores = [2, 3, 4, len];
            for (mask, mask_first) in
                [(vec![2, 1, 1, len], true), (vec![2, 3, 4, 1], false), (vec![2, 3, 4, len], false), (vec![len], true)]
            {
                let (x, w) = (values(scores.iter().product(), 1), values(mask.iter().product(), 2));
                let x = Tensor::from_vec(scores.to_vec(), x.iter().map(|v| v * 9.0).collect()).unwrap();
                let w = Tensor::from_vec(mask.clone(), w.iter().map(|&v| if v < -3.0 { f32::MIN } else { v }).collect()).unwrap();
                let shapes = [(DataType::F32, scores.to_vec()), (DataType::F32, mask.clone())];
                let (fused, split) =
                    (attention_softmax(&scores, &mask, mask_first, false), attention_softmax(&scores, &mask, mask_first, true));
                assert_eq!(plan_ops(&fused, &shapes), ["Softmax(Mul→Add)"]);
                assert_eq!(plan_ops(&split, &shapes), ["Mul", "Add", "Softmax"]);
                let run = |s: &Session| s.run(vec![("x", x.clone()), ("mask", w.clone())]).unwrap().remove(0).1;
                assert_eq!(run(&fused).as_slice::<f32>().unwrap(), run(&split).as_slice::<f32>().unwrap(), "len {len}, mask {mask:?}");
            }
        }
    }

    /// Attention's head split: `Transpose(q) × Transpose(k)` and a transposed 2-D operand
    /// times a constant; with `expose` the transposes are graph outputs (the reference).
    fn transposed_matmuls(expose: bool) -> Session {
        let perm = |p: &[i64]| vec![("perm", Attr::Ints(p.to_vec()))];
        let w = Tensor::from_vec(vec![6, 3], values(18, 3)).unwrap();
        let mut m = ModelBuilder::new(17)
            .input("q", DataType::F32, &[2, 5, 3, 4])
            .input("k", DataType::F32, &[2, 7, 3, 4])
            .input("x", DataType::F32, &[6, 9])
            .initializer("w", &w)
            .node("Transpose", &["q"], &["qt"], perm(&[0, 2, 1, 3]))
            .node("Transpose", &["k"], &["kt"], perm(&[0, 2, 3, 1]))
            .node("MatMul", &["qt", "kt"], &["scores"], vec![])
            .node("Transpose", &["x"], &["xt"], vec![])
            .node("MatMul", &["xt", "w"], &["y"], vec![])
            .output("scores", DataType::F32, &[2, 3, 5, 7])
            .output("y", DataType::F32, &[9, 3]);
        if expose {
            m = m.output("qt", DataType::F32, &[2, 3, 5, 4]).output("kt", DataType::F32, &[2, 3, 4, 7]).output(
                "xt",
                DataType::F32,
                &[9, 6],
            );
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn transposed_matmul_operands_fuse_bit_identically() {
        let shapes = [(DataType::F32, vec![2, 5, 3, 4]), (DataType::F32, vec![2, 7, 3, 4]), (DataType::F32, vec![6, 9])];
        let (fused, split) = (transposed_matmuls(false), transposed_matmuls(true));
        assert_eq!(plan_ops(&fused, &shapes), ["Transpose→MatMul", "Transpose→MatMul"]);
        assert_eq!(plan_ops(&split, &shapes), ["Transpose", "Transpose", "MatMul", "Transpose", "MatMul"]);
        let inputs: Vec<(&str, Tensor)> = shapes
            .iter()
            .zip(["q", "k", "x"])
            .enumerate()
            .map(|(i, ((_, s), n))| (n, Tensor::from_vec(s.clone(), values(s.iter().product(), i)).unwrap()))
            .collect();
        let (got, want) = (fused.run(inputs.clone()).unwrap(), split.run(inputs).unwrap());
        for name in ["scores", "y"] {
            let pick = |r: &[(String, Tensor)]| r.iter().find(|(n, _)| n == name).unwrap().1.clone();
            assert_eq!(pick(&got).as_slice::<f32>().unwrap(), pick(&want).as_slice::<f32>().unwrap(), "{name}");
        }
    }

    /// A decoder's RMSNorm spelled out (`Mul(x, x)` or `Pow(x, 2)`, ReduceMean with axes as
    /// an attribute or an input), over `[2, 3, 8]`.
    fn spelled_rms_norm(pow: bool, opset: i64) -> Session {
        let weight = Tensor::from_vec(vec![8], values(8, 5)).unwrap();
        let mut m = ModelBuilder::new(opset)
            .input("x", DataType::F32, &[2, 3, 8])
            .initializer("w", &weight)
            .initializer("eps", &Tensor::scalar(1e-5f32))
            .initializer("two", &Tensor::scalar(2f32))
            .initializer("last", &Tensor::from_vec(vec![1], vec![-1i64]).unwrap());
        m = if pow { m.node("Pow", &["x", "two"], &["sq"], vec![]) } else { m.node("Mul", &["x", "x"], &["sq"], vec![]) };
        m = if opset >= 18 {
            m.node("ReduceMean", &["sq", "last"], &["mean"], vec![])
        } else {
            m.node("ReduceMean", &["sq"], &["mean"], vec![("axes", Attr::Ints(vec![2]))])
        };
        let m = m
            .node("Add", &["eps", "mean"], &["shifted"], vec![])
            .node("Sqrt", &["shifted"], &["root"], vec![])
            .node("Div", &["x", "root"], &["normed"], vec![])
            .node("Mul", &["normed", "w"], &["y"], vec![])
            .output("y", DataType::F32, &[2, 3, 8]);
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn spelled_out_rms_norms_fuse_into_one_step() {
        let shapes = [(DataType::F32, vec![2, 3, 8])];
        let x = Tensor::from_vec(vec![2, 3, 8], values(48, 1)).unwrap();
        for (pow, opset) in [(false, 21), (true, 17)] {
            let (fused, exact) = (spelled_rms_norm(pow, opset), spelled_rms_norm(pow, opset));
            exact.set_exact(true);
            assert_eq!(plan_ops(&fused, &shapes), ["RMSNormalization"]);
            assert!(!plan_ops(&exact, &shapes).contains(&"RMSNormalization".to_string()), "exact sessions keep the steps");
            let run = |s: &Session| s.run(vec![("x", x.clone())]).unwrap()[0].1.as_slice::<f32>().unwrap().to_vec();
            for (f, e) in run(&fused).iter().zip(run(&exact)) {
                assert!((f - e).abs() <= 1e-6 * e.abs().max(1.0), "{f} vs {e}");
            }
        }
    }

    /// Hugging Face's rotary embedding as `distq import` writes it, on `[2, 3, 4, 8]` with cos
    /// and sin `[2, 1, 4, 8]`; with `expose` the rotated halves are a graph output (the
    /// reference: nothing fuses).
    fn spelled_rotary(expose: bool) -> Session {
        let ints = |v: &[i64]| Tensor::from_vec(vec![v.len()], v.to_vec()).unwrap();
        let mut m = ModelBuilder::new(17)
            .input("x", DataType::F32, &[2, 3, 4, 8])
            .input("cos", DataType::F32, &[2, 1, 4, 8])
            .input("sin", DataType::F32, &[2, 1, 4, 8])
            .initializer("zero", &ints(&[0]))
            .initializer("mid", &ints(&[4]))
            .initializer("end", &ints(&[i64::MAX]))
            .initializer("last", &ints(&[-1]))
            .node("Slice", &["x", "zero", "mid", "last"], &["x1"], vec![])
            .node("Slice", &["x", "mid", "end", "last"], &["x2"], vec![])
            .node("Neg", &["x2"], &["neg"], vec![])
            .node("Concat", &["neg", "x1"], &["rot"], vec![("axis", Attr::Int(-1))])
            .node("Mul", &["x", "cos"], &["a"], vec![])
            .node("Mul", &["rot", "sin"], &["b"], vec![])
            .node("Add", &["a", "b"], &["y"], vec![])
            .output("y", DataType::F32, &[2, 3, 4, 8]);
        if expose {
            m = m.output("rot", DataType::F32, &[2, 3, 4, 8]);
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn spelled_out_rotary_embeddings_fuse_bit_identically() {
        let shapes = [(DataType::F32, vec![2, 3, 4, 8]), (DataType::F32, vec![2, 1, 4, 8]), (DataType::F32, vec![2, 1, 4, 8])];
        let (fused, split) = (spelled_rotary(false), spelled_rotary(true));
        assert_eq!(plan_ops(&fused, &shapes), ["RotaryEmbedding(halves)"]);
        assert!(plan_ops(&split, &shapes).len() >= 6);
        let inputs: Vec<(&str, Tensor)> = shapes
            .iter()
            .zip(["x", "cos", "sin"])
            .enumerate()
            .map(|(i, ((_, s), n))| (n, Tensor::from_vec(s.clone(), values(s.iter().product(), i + 2)).unwrap()))
            .collect();
        let y = |s: &Session| s.run(inputs.clone()).unwrap().iter().find(|(n, _)| n == "y").unwrap().1.as_slice::<f32>().unwrap().to_vec();
        assert_eq!(y(&fused), y(&split));
    }

    /// Static QDQ as onnxruntime's quantizer writes it: `Q → DQ → Conv|MatMul → Q → DQ`,
    /// weights int8 per output channel, the Conv's bias int32. With `float_weights` the
    /// weights and bias are the same values as plain f32 initializers, which keeps the float
    /// path (the reference); with `expose` the Conv/MatMul result is also a graph output.
    fn static_qdq(op: &str, float_weights: bool, expose: bool, activation: &str) -> Session {
        let (channels, k) = (5usize, 3usize);
        let conv = op == "Conv";
        let (w_shape, scale_axis): (Vec<usize>, i64) = match op {
            "Conv" => (vec![channels, k, 3, 3], 0),
            "Gemm" => (vec![channels, k], 0),
            _ => (vec![k, channels], 1),
        };
        let w: Vec<i8> = (0..w_shape.iter().product::<usize>()).map(|i| ((i * 53) % 255) as i8).collect();
        let w_scales: Vec<f32> = (0..channels).map(|j| 0.004 + 0.001 * j as f32).collect();
        let inner = w.len() / channels;
        let channel = |i: usize| if scale_axis == 0 { i / inner } else { i % channels };
        let (x_dims, y_dims): (Vec<i64>, Vec<i64>) = match op {
            "Conv" => (vec![1, k as i64, 6, 7], vec![1, channels as i64, 6, 7]),
            "Gemm" => (vec![8, k as i64], vec![8, channels as i64]),
            _ => (vec![2, 4, k as i64], vec![2, 4, channels as i64]),
        };
        let mut m = ModelBuilder::new(21)
            .input("x", DataType::F32, &x_dims)
            .initializer("xs", &Tensor::scalar(0.02f32))
            .initializer("xz", &Tensor::scalar(120u8))
            .initializer("ys", &Tensor::scalar(0.05f32))
            .initializer("yz", &Tensor::scalar(128u8))
            .node("QuantizeLinear", &["x", "xs", "xz"], &["xq"], vec![])
            .node("DequantizeLinear", &["xq", "xs", "xz"], &["xd"], vec![]);
        m = if float_weights {
            let wd: Vec<f32> = w.iter().enumerate().map(|(i, &q)| q as f32 * w_scales[channel(i)]).collect();
            m.initializer("wd", &Tensor::from_vec(w_shape.clone(), wd).unwrap())
        } else {
            m.initializer("wq", &Tensor::from_vec(w_shape.clone(), w).unwrap())
                .initializer("ws", &Tensor::from_vec(vec![channels], w_scales.clone()).unwrap())
                .node("DequantizeLinear", &["wq", "ws"], &["wd"], vec![("axis", Attr::Int(scale_axis))])
        };
        m = if op != "MatMul" {
            let bias: Vec<i32> = (0..channels as i32).map(|j| (j - 2) * 700).collect();
            let bias_scales: Vec<f32> = (0..channels).map(|j| 0.02 * w_scales[j]).collect();
            m = if float_weights {
                let bd: Vec<f32> = bias.iter().zip(&bias_scales).map(|(&b, &s)| b as f32 * s).collect();
                m.initializer("bd", &Tensor::from_vec(vec![channels], bd).unwrap())
            } else {
                m.initializer("bq", &Tensor::from_vec(vec![channels], bias).unwrap())
                    .initializer("bs", &Tensor::from_vec(vec![channels], bias_scales).unwrap())
                    .node("DequantizeLinear", &["bq", "bs"], &["bd"], vec![("axis", Attr::Int(0))])
            };
            if conv {
                m.node("Conv", &["xd", "wd", "bd"], &["y"], vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))])
            } else {
                m.node("Gemm", &["xd", "wd", "bd"], &["y"], vec![("transB", Attr::Int(1))])
            }
        } else {
            m.node("MatMul", &["xd", "wd"], &["y"], vec![])
        };
        m = match activation {
            "Relu" => m.node("Relu", &["y"], &["act"], vec![]),
            "Clip" => m.initializer("lo", &Tensor::scalar(-0.5f32)).initializer("hi", &Tensor::scalar(1.0f32)).node(
                "Clip",
                &["y", "lo", "hi"],
                &["act"],
                vec![],
            ),
            _ => m,
        };
        m = m
            .node("QuantizeLinear", &[if activation.is_empty() { "y" } else { "act" }, "ys", "yz"], &["yq"], vec![])
            .node("DequantizeLinear", &["yq", "ys", "yz"], &["out"], vec![])
            .output("out", DataType::F32, &y_dims);
        if expose {
            m = m.output("y", DataType::F32, &y_dims);
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn static_qdq_runs_on_integer_kernels() {
        for (op, activation, integer_op) in [
            ("Conv", "", "QLinearConv"),
            ("MatMul", "", "QLinearMatMul"),
            ("Gemm", "", "QLinearMatMul"),
            ("Conv", "Relu", "QLinearConv+Relu"),
            ("Conv", "Clip", "QLinearConv+Clip"),
            ("MatMul", "Relu", "QLinearMatMul+Relu"),
        ] {
            let shape = match op {
                "Conv" => vec![1, 3, 6, 7],
                "Gemm" => vec![8, 3],
                _ => vec![2, 4, 3],
            };
            let n: usize = shape.iter().product();
            let x = Tensor::from_vec(shape.clone(), (0..n).map(|i| ((i * 29) % 97) as f32 * 0.05 - 2.4).collect()).unwrap();
            let (fused, float) = (static_qdq(op, false, false, activation), static_qdq(op, true, false, activation));
            let ops = |s: &Session| {
                s.plan_for(&[(DataType::F32, shape.clone())]).unwrap().step_ops().iter().map(|(_, op)| op.to_string()).collect::<Vec<_>>()
            };
            assert_eq!(ops(&fused), ["QuantizeLinear", integer_op, "DequantizeLinear"]);
            assert!(ops(&float).contains(&op.to_string()), "{:?}", ops(&float));
            let run = |s: &Session| s.run(vec![("x", x.clone())]).unwrap();
            let (y, want) = (run(&fused).remove(0).1, run(&float).remove(0).1);
            let (y, want) = (y.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
            // Integer sums are exact where float ones round: at most one output step apart
            // (at a rounding boundary), and almost everywhere equal.
            let apart = y.iter().zip(want).filter(|(a, b)| a != b).count();
            assert!(y.iter().zip(want).all(|(a, b)| (a - b).abs() <= 0.05 * 1.001), "{integer_op}: {y:?}\n{want:?}");
            assert!(apart * 50 <= y.len(), "{integer_op}: {apart} of {} differ", y.len());
            assert!(y.iter().any(|&v| v != 0.0) && y.iter().any(|&v| v != y[0]), "degenerate test data");
            match activation {
                "Relu" => assert!(y.iter().all(|&v| v >= 0.0) && want.contains(&0.0), "{integer_op}: {y:?}"),
                "Clip" => assert!(y.iter().all(|&v| (-0.5..=1.0).contains(&v)) && y.contains(&1.0), "{integer_op}: {y:?}"),
                _ => (),
            }
            if !activation.is_empty() {
                continue;
            }
            // The result also read in float (a graph output): the integer step writes f32,
            // equal to the float path up to its rounding.
            let exposed = static_qdq(op, false, true, activation);
            assert_eq!(ops(&exposed), ["QuantizeLinear", &format!("{integer_op}→f32"), "QuantizeLinear", "DequantizeLinear"]);
            let (y, want) = (run(&exposed).remove(1).1, run(&static_qdq(op, true, true, activation)).remove(1).1);
            for (a, b) in y.as_slice::<f32>().unwrap().iter().zip(want.as_slice::<f32>().unwrap()) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{integer_op}→f32: {a} vs {b}");
            }
        }
    }

    /// An int8 and a uint4 table dequantized then gathered, with per-column scales and zero
    /// points, with them in blocks of 4 along each row (as int4 embeddings are stored), and per
    /// row. The 4-bit table stays packed: its rows are gathered as bytes.
    #[test]
    fn quantized_tables_stay_quantized() {
        for four_bit in [false, true] {
            quantized_table_stays_quantized(four_bit);
        }
    }

    fn quantized_table_stays_quantized(four_bit: bool) {
        let (rows, cols, block) = (10usize, 8usize, 4usize);
        let modulus = if four_bit { 16 } else { 256 };
        let q: Vec<i32> = (0..rows * cols).map(|i| ((i * 37) % modulus) as u8 as i8 as i32).collect();
        // int8 values and zero points, or the same as uint4.
        let stored = |shape: Vec<usize>, values: &[i32]| match four_bit {
            false => Tensor::from_vec(shape, values.iter().map(|&v| v as i8).collect()).unwrap(),
            true => {
                let nibbles: Vec<u8> = values.iter().map(|&v| v as u8).collect();
                Tensor::from_le_bytes(DataType::U4, shape, crate::nibbles::pack_u4(&nibbles).into()).unwrap()
            }
        };
        // (parameter shape, block size, parameter index of element (r, c))
        type Layout = (Vec<usize>, i64, fn(usize, usize) -> usize);
        let per_column: Layout = (vec![cols], 0, |_, c| c);
        let blocked: Layout = (vec![rows, cols / block], block as i64, |r, c| r * 2 + c / 4);
        // Per row: axis 0, the gathered one.
        let per_row: Layout = (vec![rows], -1, |r, _| r);
        for (shape, block, index) in [per_column, blocked, per_row] {
            let attrs = match block {
                -1 => vec![("axis", Attr::Int(0))],
                _ => vec![("axis", Attr::Int(1)), ("block_size", Attr::Int(block))],
            };
            let n: usize = shape.iter().product();
            let scales: Vec<f32> = (0..n).map(|i| [0.5f32, 0.25, 2.0, 0.125][i % 4] * (1 + i / 4) as f32).collect();
            let zeros: Vec<i32> = (0..n).map(|i| if four_bit { [0, 3, 7, 15][i % 4] } else { [0, -3, 7, 127][i % 4] }).collect();
            let m = ModelBuilder::new(21)
                .input("ids", DataType::I64, &[2, 3])
                .initializer("q", &stored(vec![rows, cols], &q))
                .initializer("s", &Tensor::from_vec(shape.clone(), scales.clone()).unwrap())
                .initializer("z", &stored(shape.clone(), &zeros))
                .node("DequantizeLinear", &["q", "s", "z"], &["table"], attrs)
                .node("Gather", &["table", "ids"], &["y"], vec![])
                .output("y", DataType::F32, &[2, 3, cols as i64]);
            let session = Session::new(Model::from_bytes(m.to_bytes()).unwrap());
            let shapes = [(DataType::I64, vec![2, 3])];
            let plan = session.plan_for(&shapes).unwrap();
            assert_eq!(plan.step_ops().iter().map(|(_, op)| *op).collect::<Vec<_>>(), ["DequantizedGather"]);
            assert!(
                plan.constants.iter().flatten().all(|c| c.dtype() != DataType::F32 || c.len() == n),
                "the f32 table is still in the plan"
            );
            let table_dtypes: Vec<DataType> =
                plan.constants.iter().flatten().filter(|c| c.len() == rows * cols).map(|c| c.dtype()).collect();
            assert_eq!(table_dtypes, [if four_bit { DataType::U4 } else { DataType::I8 }], "one table, as stored");
            let ids = [9i64, 0, -1, 3, 3, 5];
            let y = session.run(vec![("ids", Tensor::from_vec(vec![2, 3], ids.to_vec()).unwrap())]).unwrap().remove(0).1;
            let mut want = Vec::new();
            for &i in &ids {
                let r = i.rem_euclid(rows as i64) as usize;
                want.extend((0..cols).map(|c| (q[r * cols + c] - zeros[index(r, c)]) as f32 * scales[index(r, c)]));
            }
            assert_eq!(y.shape(), [2, 3, cols]);
            assert_eq!(y.as_slice::<f32>().unwrap(), want, "parameters of shape {shape:?}, 4-bit {four_bit}");
        }
    }

    /// `x · w` with `w` made by `expand` (from compact constants) against the same product
    /// with `weights` as a plain f32 initializer: in an exact session (`exact`), the plan runs
    /// one `fused_op` step and the outputs are equal; otherwise they are within `tolerance`
    /// of the largest output. Returns the compact model's plan.
    fn compact_close_to_float(
        expand: impl FnOnce(ModelBuilder) -> ModelBuilder,
        weights: Tensor,
        x: &Tensor,
        fused_op: &str,
        exact: bool,
        tolerance: f32,
    ) -> Arc<Plan> {
        let (m, k, n) = (x.shape()[0], weights.shape()[0], weights.shape()[1]);
        let matmul = |b: ModelBuilder| {
            b.input("x", DataType::F32, &[m as i64, k as i64]).node("MatMul", &["x", "w"], &["y"], vec![]).output(
                "y",
                DataType::F32,
                &[m as i64, n as i64],
            )
        };
        let compact = Session::new(Model::from_bytes(matmul(expand(ModelBuilder::new(21))).to_bytes()).unwrap());
        compact.set_exact(exact);
        let float = Session::new(Model::from_bytes(matmul(ModelBuilder::new(21).initializer("w", &weights)).to_bytes()).unwrap());
        let plan = compact.plan_for(&[(DataType::F32, vec![m, k])]).unwrap();
        assert_eq!(plan.step_ops().iter().map(|(_, op)| *op).collect::<Vec<_>>(), [fused_op]);
        let run = |s: &Session| s.run(vec![("x", x.clone())]).unwrap().remove(0).1;
        let (got, want) = (run(&compact), run(&float));
        let (got, want) = (got.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
        if exact {
            assert_eq!(got, want);
        }
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tolerance * scale, "{g} vs {w} (outputs up to {scale})");
        }
        assert_ne!(exact, got != want, "only exact sessions give the float arithmetic");
        plan
    }

    /// Blocked weights (int4-style blocks of 32 along K), as int8 differences from their
    /// zero points.
    fn blocked_weights_model(k: usize, n: usize, block: usize) -> (impl FnOnce(ModelBuilder) -> ModelBuilder, Tensor) {
        let blocks = k.div_ceil(block);
        let q: Vec<i8> = (0..k * n).map(|i| ((i * 7) % 15) as i8 - 8).collect();
        let scales: Vec<f32> = (0..blocks * n).map(|i| 0.01 + 0.001 * i as f32).collect();
        let dequantized: Vec<f32> = (0..k * n).map(|i| q[i] as f32 * scales[(i / n / block) * n + i % n]).collect();
        let expand = move |b: ModelBuilder| {
            b.initializer("q", &Tensor::from_vec(vec![k, n], q).unwrap())
                .initializer("s", &Tensor::from_vec(vec![blocks, n], scales).unwrap())
                .node("DequantizeLinear", &["q", "s"], &["w"], vec![("axis", Attr::Int(0)), ("block_size", Attr::Int(block as i64))])
        };
        (expand, Tensor::from_vec(vec![k, n], dequantized).unwrap())
    }

    /// Weight-only blocked weights feeding a MatMul stay quantized: in an exact session they
    /// give exactly what the same weights dequantized ahead of time give; by default they run
    /// on the integer kernels, close to it. Neither plan holds the f32 weights.
    #[test]
    fn weight_only_quantized_matmul_keeps_weights_quantized() {
        // 5 rows: a prompt's, which the float weights' packed tiles and the expanded weights'
        // GEMM sum alike (a token's few rows stream expanded weights in another order).
        let (k, n, block) = (80usize, 64usize, 32usize);
        let x = Tensor::from_vec(vec![5, k], (0..5 * k).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap();
        for (exact, fused_op, tolerance) in [(true, "DequantizeLinear→MatMul", 0.0), (false, "DequantizeLinear→BlockQuantizedMatMul", 0.01)]
        {
            let (expand, dequantized) = blocked_weights_model(k, n, block);
            let plan = compact_close_to_float(expand, dequantized, &x, fused_op, exact, tolerance);
            assert!(
                plan.constants.iter().flatten().all(|c| c.dtype() != DataType::F32 || c.len() < k * n),
                "the f32 weights are still in the plan"
            );
        }
    }

    /// A bias Add after a MatMul of blocked weights joins its step, with the same result as
    /// adding it to the unfused product.
    #[test]
    fn block_quantized_matmul_takes_its_bias() {
        let (k, n) = (64usize, 48usize);
        let x = Tensor::from_vec(vec![5, k], (0..5 * k).map(|i| (i as f32 * 0.29).cos()).collect()).unwrap();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.125 - 2.0).collect();
        let run = |with_bias: bool| {
            let (expand, _) = blocked_weights_model(k, n, 32);
            let mut b = expand(ModelBuilder::new(21)).input("x", DataType::F32, &[5, k as i64]).node("MatMul", &["x", "w"], &["y"], vec![]);
            if with_bias {
                b = b.initializer("bias", &Tensor::from_vec(vec![n], bias.clone()).unwrap()).node("Add", &["bias", "y"], &["z"], vec![]);
            }
            let b = b.output(if with_bias { "z" } else { "y" }, DataType::F32, &[5, n as i64]);
            let session = Session::new(Model::from_bytes(b.to_bytes()).unwrap());
            let ops: Vec<String> =
                session.plan_for(&[(DataType::F32, vec![5, k])]).unwrap().step_ops().iter().map(|(_, op)| op.to_string()).collect();
            (ops, session.run(vec![("x", x.clone())]).unwrap().remove(0).1)
        };
        let ((ops, fused), (_, product)) = (run(true), run(false));
        assert_eq!(ops, ["DequantizeLinear→BlockQuantizedMatMul→Add"]);
        let want: Vec<f32> = product.as_slice::<f32>().unwrap().iter().enumerate().map(|(i, &y)| bias[i % n] + y).collect();
        assert_eq!(fused.as_slice::<f32>().unwrap(), want);
    }

    /// Appends PyTorch's GELU of `x` (with `gelu`) and then an Add of the input `r` (with
    /// `residual_first`, `r` is the Add's first operand) to `b`, ending in `z`.
    fn gelu_then_residual(mut b: ModelBuilder, x: &str, gelu: bool, residual_first: bool) -> ModelBuilder {
        let c = |v: f32| Tensor::scalar(v);
        if gelu {
            b = b
                .initializer("sqrt2", &c(std::f32::consts::SQRT_2))
                .initializer("one", &c(1.0))
                .initializer("half", &c(0.5))
                .node("Div", &[x, "sqrt2"], &["d"], vec![])
                .node("Erf", &["d"], &["e"], vec![])
                .node("Add", &["e", "one"], &["a"], vec![])
                .node("Mul", &[x, "a"], &["m"], vec![])
                .node("Mul", &["m", "half"], &["g"], vec![]);
        }
        let g = if gelu { "g" } else { x };
        let sum = if residual_first { ["r", g] } else { [g, "r"] };
        b.node("Add", &sum, &["z"], vec![])
    }

    /// The residual Add after an integer matmul's bias runs in its epilogue, bit for bit what
    /// it gives as a step of its own (the reference exposes the matmul's output, which keeps
    /// it out), for both integer GEMMs: onnxruntime's dynamic form and the block-scaled one. A
    /// GELU between them stays a chain of its own, and blocks the residual's fusion.
    #[test]
    fn integer_matmul_epilogues_fuse_bit_identically() {
        let (m, k, n) = (19, 64, 40);
        let x = Tensor::from_vec(vec![m, k], values(m * k, 3)).unwrap();
        let r = Tensor::from_vec(vec![m, n], values(m * n, 5)).unwrap();
        let bias = Tensor::from_vec(vec![n], values(n, 7)).unwrap();
        for (block_scaled, residual_first, gelu) in [(false, false, false), (false, true, false), (true, false, false), (true, true, true)]
        {
            let run = |expose: bool| {
                let mut b = ModelBuilder::new(21)
                    .input("x", DataType::F32, &[m as i64, k as i64])
                    .input("r", DataType::F32, &[m as i64, n as i64])
                    .initializer("bias", &bias);
                if block_scaled {
                    b = blocked_weights_model(k, n, 32).0(b).node("MatMul", &["x", "w"], &["p"], vec![]);
                } else {
                    let w: Vec<i8> = (0..k * n).map(|i| ((i * 37) % 255) as i8).collect();
                    b = b
                        .initializer("w", &Tensor::from_vec(vec![k, n], w).unwrap())
                        .node("DynamicQuantizeLinear", &["x"], &["xq", "xs", "xz"], vec![])
                        .node("MatMulInteger", &["xq", "w", "xz"], &["acc"], vec![])
                        .node("Cast", &["acc"], &["accf"], vec![("to", Attr::Int(1))])
                        .node("Mul", &["accf", "xs"], &["p"], vec![]);
                }
                b = gelu_then_residual(b.node("Add", &["p", "bias"], &["y"], vec![]), "y", gelu, residual_first).output(
                    "z",
                    DataType::F32,
                    &[m as i64, n as i64],
                );
                if expose {
                    b = b.output("y", DataType::F32, &[m as i64, n as i64]);
                }
                let session = Session::new(Model::from_bytes(b.to_bytes()).unwrap());
                let shapes = [(DataType::F32, vec![m, k]), (DataType::F32, vec![m, n])];
                let z = session.run(vec![("x", x.clone()), ("r", r.clone())]).unwrap().remove(0).1;
                (plan_ops(&session, &shapes), z)
            };
            let ((ops, fused), (reference_ops, want)) = (run(false), run(true));
            let matmul = if block_scaled { "DequantizeLinear→BlockQuantizedMatMul→Add" } else { "MatMulIntegerToFloat" };
            let (fused_tail, unfused_tail) = if gelu {
                (
                    vec![matmul.to_string(), "Chain(Div→Erf→Add→Mul→Mul)".into(), "Add".into()],
                    vec![matmul, "Chain(Div→Erf→Add→Mul→Mul)", "Add"],
                )
            } else {
                (vec![format!("{matmul}→Add(residual)")], vec![matmul, "Add"])
            };
            assert_eq!(ops[ops.len() - fused_tail.len()..], fused_tail);
            assert_eq!(reference_ops[reference_ops.len() - unfused_tail.len()..], unfused_tail);
            assert_eq!(fused.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap(), "block-scaled {block_scaled}");
            assert!(fused.as_slice::<f32>().unwrap().iter().any(|&v| v != 0.0));
        }
    }

    /// `Gemm(x, DequantizeLinear(uint4 N × K, blocks along K), C)` with `transB` runs as the
    /// block-scaled integer GEMM with C as its bias, bit for bit what the same weights stored
    /// `K × N` give under `MatMul → Add`.
    #[test]
    fn block_quantized_gemm_reads_transposed_weights() {
        let (m, k, n, block) = (3usize, 96usize, 20usize, 32usize);
        let blocks = k / block;
        let x = Tensor::from_vec(vec![m, k], (0..m * k).map(|i| (i as f32 * 0.31).sin()).collect()).unwrap();
        let bias = Tensor::from_vec(vec![n], (0..n).map(|j| j as f32 * 0.25 - 1.0).collect()).unwrap();
        // Values of (p, j) and parameters of (blk, j), stored K × N or N × K.
        let q = |p: usize, j: usize| ((p * n + j) * 7 % 16) as u8;
        let zero = |blk: usize, j: usize| ((blk * 3 + j) % 16) as u8;
        // Free block scales, or (`pow2`) each column's base times 1, 2, 4 or 8.
        let base = |j: usize| 0.003 + 0.0001 * j as f32;
        let scale = |blk: usize, j: usize, pow2: bool| {
            if pow2 { base(j) * (1 << ((blk + j) % 4)) as f32 } else { 0.01 + 0.002 * (blk * n + j) as f32 }
        };
        let u4 = |shape: Vec<usize>, values: Vec<u8>| {
            Tensor::from_le_bytes(DataType::U4, shape, crate::nibbles::pack_u4(&values).into()).unwrap()
        };
        let run = |transposed: bool, pow2: bool| {
            let (w_shape, p_shape) = if transposed { (vec![n, k], vec![n, blocks]) } else { (vec![k, n], vec![blocks, n]) };
            let weights: Vec<u8> =
                if transposed { (0..n * k).map(|i| q(i % k, i / k)).collect() } else { (0..k * n).map(|i| q(i / n, i % n)).collect() };
            let at = |i: usize| if transposed { (i % blocks, i / blocks) } else { (i / n, i % n) };
            let zeros: Vec<u8> = (0..blocks * n).map(|i| zero(at(i).0, at(i).1)).collect();
            let scales: Vec<f32> = (0..blocks * n).map(|i| scale(at(i).0, at(i).1, pow2)).collect();
            let b = ModelBuilder::new(21)
                .input("x", DataType::F32, &[m as i64, k as i64])
                .initializer("q", &u4(w_shape, weights))
                .initializer("s", &Tensor::from_vec(p_shape.clone(), scales).unwrap())
                .initializer("z", &u4(p_shape, zeros))
                .initializer("bias", &bias)
                .node(
                    "DequantizeLinear",
                    &["q", "s", "z"],
                    &["w"],
                    vec![("axis", Attr::Int(transposed as i64)), ("block_size", Attr::Int(block as i64))],
                );
            let b = match transposed {
                true => b.node("Gemm", &["x", "w", "bias"], &["y"], vec![("transB", Attr::Int(1))]),
                false => b.node("MatMul", &["x", "w"], &["xw"], vec![]).node("Add", &["xw", "bias"], &["y"], vec![]),
            };
            let session = Session::new(Model::from_bytes(b.output("y", DataType::F32, &[m as i64, n as i64]).to_bytes()).unwrap());
            let plan = session.plan_for(&[(DataType::F32, vec![m, k])]).unwrap();
            let ops: Vec<String> = plan.step_ops().iter().map(|(_, op)| op.to_string()).collect();
            (ops, session.run(vec![("x", x.clone())]).unwrap().remove(0).1)
        };
        for pow2 in [false, true] {
            let ((gemm_ops, gemm), (matmul_ops, matmul)) = (run(true, pow2), run(false, pow2));
            let kind = if pow2 { "Int8" } else { "BlockQuantized" };
            assert_eq!(
                (gemm_ops, matmul_ops),
                (vec![format!("DequantizeLinear→{kind}Gemm")], vec![format!("DequantizeLinear→{kind}MatMul→Add")])
            );
            assert_eq!(gemm.as_slice::<f32>().unwrap(), matmul.as_slice::<f32>().unwrap());
            if pow2 {
                // As int8 per column: each row of x quantized symmetrically as one block, the
                // weights (q − zero) · 2^e exact in i32, one scale product per column.
                let x = x.as_slice::<f32>().unwrap();
                for (r, row) in x.chunks_exact(k).enumerate() {
                    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let qa: Vec<i32> = row.iter().map(|&v| (v * (127.0 / max)).round_ties_even() as i32).collect();
                    for j in 0..n {
                        let acc: i32 =
                            (0..k).map(|p| qa[p] * ((q(p, j) as i32 - zero(p / block, j) as i32) << ((p / block + j) % 4))).sum();
                        let want = acc as f32 * (max / 127.0 * base(j)) + bias.as_slice::<f32>().unwrap()[j];
                        assert_eq!(matmul.as_slice::<f32>().unwrap()[r * n + j], want, "row {r}, column {j}");
                    }
                }
            }
        }
    }

    /// A weight expanded from compact constants that no rule can keep compact (its Transpose
    /// read as MatMul's operand) is computed after fusion, once, and the product is the
    /// same as with the float weights as given. (Six rows: the packed GEMM, which sums the
    /// same in any operand layout; products of a few rows sum in their layout's order.)
    #[test]
    fn deferred_weights_are_computed_when_a_step_still_reads_them() {
        let (k, n) = (80usize, 64usize);
        let (expand, dequantized) = blocked_weights_model(n, k, 32);
        let x = Tensor::from_vec(vec![6, k], (0..6 * k).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap();
        let model = |b: ModelBuilder| {
            b.input("x", DataType::F32, &[6, k as i64])
                .node("Transpose", &["w"], &["wt"], vec![])
                .node("MatMul", &["x", "wt"], &["y"], vec![])
                .output("y", DataType::F32, &[6, n as i64])
                .to_bytes()
        };
        let run = |bytes| Session::new(Model::from_bytes(bytes).unwrap()).run(vec![("x", x.clone())]).unwrap().remove(0).1;
        let compact = run(model(expand(ModelBuilder::new(21))));
        let float = run(model(ModelBuilder::new(21).initializer("w", &dequantized)));
        assert_eq!(compact.as_slice::<f32>().unwrap(), float.as_slice::<f32>().unwrap());
    }

    /// float16 weights behind a Cast stay float16 in memory and give exactly what the same
    /// weights in float32 give.
    #[test]
    fn float16_weights_stay_float16() {
        let (k, n) = (72usize, 64usize);
        let weights: Vec<f32> = (0..k * n).map(|i| ((i * 31 % 97) as f32 - 48.0) / 64.0).collect();
        let bits: Vec<u16> = weights.iter().map(|&w| half::f16::from_f32(w).to_bits()).collect();
        let exact: Vec<f32> = bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
        let x = Tensor::from_vec(vec![5, k], (0..5 * k).map(|i| (i as f32 * 0.21).cos()).collect()).unwrap();
        let expand = |b: ModelBuilder| {
            b.initializer("w16", &Tensor::from_vec(vec![k, n], bits).unwrap()).node("Cast", &["w16"], &["w"], vec![("to", Attr::Int(1))])
        };
        let plan = compact_close_to_float(expand, Tensor::from_vec(vec![k, n], exact).unwrap(), &x, "Cast→PackedMatMul", true, 0.0);
        assert!(plan.constants.iter().flatten().all(|c| c.dtype() != DataType::F32), "the f32 weights are still in the plan");
    }

    /// `Q → DQ` on both operands of Add/Sub/Mul/Div and `Q → DQ` after, as onnxruntime's
    /// quantizer writes elementwise ops; with `expose` the float result is also an output,
    /// which keeps the steps apart.
    fn qdq_binary_model(op: &str, b_shape: &[i64], signed: bool, expose: bool) -> Session {
        let zero = |z: i32| if signed { Tensor::scalar(z as i8) } else { Tensor::scalar((z + 128) as u8) };
        let mut m = ModelBuilder::new(21)
            .input("a", DataType::F32, &[2, 3, 4, 5])
            .input("b", DataType::F32, b_shape)
            .initializer("sa", &Tensor::scalar(0.031f32))
            .initializer("za", &zero(-7))
            .initializer("sb", &Tensor::scalar(0.017f32))
            .initializer("zb", &zero(12))
            .initializer("sy", &Tensor::scalar(0.043f32))
            .initializer("zy", &zero(3))
            .node("QuantizeLinear", &["a", "sa", "za"], &["aq"], vec![])
            .node("DequantizeLinear", &["aq", "sa", "za"], &["ad"], vec![])
            .node("QuantizeLinear", &["b", "sb", "zb"], &["bq"], vec![])
            .node("DequantizeLinear", &["bq", "sb", "zb"], &["bd"], vec![])
            .node(op, &["ad", "bd"], &["y"], vec![])
            .node("QuantizeLinear", &["y", "sy", "zy"], &["yq"], vec![])
            .node("DequantizeLinear", &["yq", "sy", "zy"], &["out"], vec![])
            .output("out", DataType::F32, &[2, 3, 4, 5]);
        if expose {
            m = m.output("y", DataType::F32, &[2, 3, 4, 5]);
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn qdq_elementwise_ops_run_on_quantized_tensors_bit_identically() {
        for (op, b_shape, signed) in
            [("Add", [2, 3, 4, 5], false), ("Mul", [1, 3, 1, 1], false), ("Sub", [2, 3, 4, 5], true), ("Div", [2, 3, 4, 5], false)]
        {
            let a = Tensor::from_vec(vec![2, 3, 4, 5], (0..120).map(|i| (i as f32 * 0.37).sin() * 3.0).collect()).unwrap();
            let n: usize = b_shape.iter().product();
            let b_dims: Vec<usize> = b_shape.to_vec();
            let b = Tensor::from_vec(
                b_dims.clone(),
                (0..n).map(|i| (i as f32 * 0.71).cos() * 2.0 + if op == "Div" { 2.5 } else { 0.0 }).collect(),
            )
            .unwrap();
            let b_i64: Vec<i64> = b_shape.iter().map(|&d| d as i64).collect();
            let (fused, apart) = (qdq_binary_model(op, &b_i64, signed, false), qdq_binary_model(op, &b_i64, signed, true));
            let shapes = [(DataType::F32, vec![2, 3, 4, 5]), (DataType::F32, b_dims)];
            let ops = |s: &Session| s.plan_for(&shapes).unwrap().step_ops().iter().map(|(_, op)| op.to_string()).collect::<Vec<_>>();
            assert_eq!(ops(&fused), ["QuantizeLinear", "QuantizeLinear", &format!("QLinear{op}"), "DequantizeLinear"]);
            assert!(ops(&apart).contains(&op.to_string()));
            let run = |s: &Session| s.run(vec![("a", a.clone()), ("b", b.clone())]).unwrap().remove(0).1;
            let (y, want) = (run(&fused), run(&apart));
            assert_eq!(y.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap(), "{op}");
            assert!(y.as_slice::<f32>().unwrap().iter().filter(|&&v| v != 0.0).count() > 60, "{op}: degenerate data");
        }
    }

    /// A pattern the fused op cannot take (QLinearMatMul needs a matrix, the graph has a
    /// vector) stays on its own steps and runs.
    #[test]
    fn patterns_the_fused_op_rejects_stay_unfused() {
        let m = ModelBuilder::new(21)
            .input("x", DataType::F32, &[3])
            .initializer("s", &Tensor::scalar(0.1f32))
            .initializer("z", &Tensor::scalar(128u8))
            .initializer("wq", &Tensor::from_vec(vec![3, 2], vec![1i8, -2, 3, -4, 5, -6]).unwrap())
            .initializer("ws", &Tensor::scalar(0.5f32))
            .node("QuantizeLinear", &["x", "s", "z"], &["xq"], vec![])
            .node("DequantizeLinear", &["xq", "s", "z"], &["xd"], vec![])
            .node("DequantizeLinear", &["wq", "ws"], &["w"], vec![])
            .node("MatMul", &["xd", "w"], &["y"], vec![])
            .node("QuantizeLinear", &["y", "s", "z"], &["yq"], vec![])
            .node("DequantizeLinear", &["yq", "s", "z"], &["out"], vec![])
            .output("out", DataType::F32, &[2]);
        let session = Session::new(Model::from_bytes(m.to_bytes()).unwrap());
        let plan = session.plan_for(&[(DataType::F32, vec![3])]).unwrap();
        assert!(plan.step_ops().iter().any(|(_, op)| *op == "MatMul"), "{:?}", plan.step_ops());
        let y = session.run(vec![("x", Tensor::from_vec(vec![3], vec![1.0f32, 2.0, 3.0]).unwrap())]).unwrap().remove(0).1;
        // x·w = [1·0.5 + 2·1.5 + 3·2.5, 1·−1 + 2·−2 + 3·−3] = [11, −14]; quantized with scale
        // 0.1 around 128: 238, and −14 saturates to 0.
        assert_eq!(y.as_slice::<f32>().unwrap(), [(238 - 128) as f32 * 0.1, (0 - 128) as f32 * 0.1]);
    }
}
