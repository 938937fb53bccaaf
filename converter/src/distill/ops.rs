//! ONNX operators as candle operations, so gradients flow through a student graph.
//!
//! The op set covers MLPs, CNNs and BERT-style encoders as exported by PyTorch: dense and
//! convolutional layers, pooling, normalization, activations, attention's softmax, and the
//! integer shape arithmetic (`Shape → Gather → Concat → Reshape`) that exporters emit around
//! them. Integer tensors are I64; floats use the graph's training dtype. Each op is checked
//! against finite differences and against the runtime in `tests.rs`.

use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, DType, Device, Tensor};
use distq_runtime::onnx::attrs::Attrs;
use distq_runtime::onnx::proto::NodeProto;

/// Ops whose outputs never carry gradient (integer shape arithmetic and comparisons).
const NON_DIFFERENTIABLE: &[&str] =
    &["Shape", "ConstantOfShape", "Range", "Equal", "GreaterOrEqual", "Greater", "Less", "And", "Or", "Not"];

/// Every op [`apply`] knows.
pub const SUPPORTED: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Erf",
    "Tanh",
    "Sigmoid",
    "Relu",
    "LeakyRelu",
    "Gelu",
    "Softmax",
    "LogSoftmax",
    "Identity",
    "Dropout",
    "Cast",
    "MatMul",
    "Gemm",
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "LayerNormalization",
    "Flatten",
    "Reshape",
    "Transpose",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Gather",
    "Slice",
    "Expand",
    "Where",
    "ReduceMean",
    "ReduceSum",
    "Constant",
    "Shape",
    "ConstantOfShape",
    "Range",
    "Equal",
    "GreaterOrEqual",
    "Greater",
    "Less",
    "And",
    "Or",
    "Not",
];

/// True when `op`'s outputs are integer/boolean bookkeeping, not values to differentiate.
pub fn non_differentiable(op: &str) -> bool {
    NON_DIFFERENTIABLE.contains(&op)
}

/// Runs one node. `inputs` holds the node's inputs in order (`None` for an omitted optional
/// input); `float` is the dtype floats are computed in.
pub fn apply(node: &NodeProto, inputs: &[Option<Tensor>], float: DType) -> Result<Vec<Tensor>> {
    let op = node.op_type.as_deref().unwrap_or("");
    let attrs = Attrs::new(node);
    let input = |i: usize| -> Result<&Tensor> {
        inputs.get(i).and_then(Option::as_ref).with_context(|| format!("{op} needs input {i}, which is missing"))
    };
    let int = |name: &str, default: i64| attrs.int(name, default).map_err(anyhow::Error::from);
    let ints = |name: &str| attrs.ints_opt(name).map_err(anyhow::Error::from);
    let float_attr = |name: &str, default: f32| attrs.float(name, default).map_err(anyhow::Error::from);
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        "Add" => one(input(0)?.broadcast_add(input(1)?)?),
        "Sub" => one(input(0)?.broadcast_sub(input(1)?)?),
        "Mul" => one(input(0)?.broadcast_mul(input(1)?)?),
        "Div" => one(divide(input(0)?, input(1)?)?),
        "Pow" => {
            // Exponents are constants in the graphs we train (x² in hand-written norms).
            let e = scalar_f64(input(1)?).context("Pow: the exponent must be a constant scalar")?;
            one(if e == 2.0 { input(0)?.sqr()? } else { input(0)?.powf(e)? })
        }
        "Sqrt" => one(input(0)?.sqrt()?),
        "Exp" => one(input(0)?.exp()?),
        "Log" => one(input(0)?.log()?),
        "Neg" => one(input(0)?.neg()?),
        "Abs" => one(input(0)?.abs()?),
        "Erf" => one(input(0)?.erf()?),
        "Tanh" => one(input(0)?.tanh()?),
        // 1 / (1 + e^-x) from primitives, whose gradients candle has.
        "Sigmoid" => one(input(0)?.neg()?.exp()?.affine(1.0, 1.0)?.recip()?),
        "Relu" => one(input(0)?.relu()?),
        "LeakyRelu" => {
            let x = input(0)?;
            let alpha = f64::from(float_attr("alpha", 0.01)?);
            one((x.relu()? - x.neg()?.relu()?.affine(alpha, 0.0)?)?)
        }
        "Gelu" => match attrs.string("approximate", "none")?.as_str() {
            "tanh" => one(input(0)?.gelu()?),
            _ => one(input(0)?.gelu_erf()?),
        },
        "Softmax" | "LogSoftmax" => {
            let x = input(0)?;
            let axis = axis(int("axis", -1)?, x.rank())?;
            one(if op == "Softmax" { candle_nn::ops::softmax(x, axis)? } else { candle_nn::ops::log_softmax(x, axis)? })
        }
        "Identity" | "Dropout" => one(input(0)?.clone()),
        "Cast" => one(cast(input(0)?, int("to", 1)?, float)?),
        "MatMul" => one(matmul(input(0)?, input(1)?)?),
        "Gemm" => one(gemm(input(0)?, input(1)?, inputs.get(2).and_then(Option::as_ref), &attrs)?),
        "Conv" => one(conv(input(0)?, input(1)?, inputs.get(2).and_then(Option::as_ref), &attrs)?),
        "MaxPool" | "AveragePool" => one(pool(op, input(0)?, &attrs)?),
        "GlobalAveragePool" => {
            let x = input(0)?;
            let dims: Vec<usize> = (2..x.rank()).collect();
            one(x.mean_keepdim(dims)?)
        }
        "BatchNormalization" => {
            // Inference form: the running statistics are constants (the graph loader freezes
            // them), scale and bias train.
            let (x, scale, bias, mean, var) = (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
            let eps = f64::from(float_attr("epsilon", 1e-5)?);
            let per_channel = |t: &Tensor| -> Result<Tensor> {
                let mut shape = vec![1; x.rank()];
                shape[1] = t.elem_count();
                Ok(t.reshape(shape)?)
            };
            let inv_std = per_channel(&var.affine(1.0, eps)?.sqrt()?.recip()?)?;
            let y = x.broadcast_sub(&per_channel(mean)?)?.broadcast_mul(&inv_std)?;
            one(y.broadcast_mul(&per_channel(scale)?)?.broadcast_add(&per_channel(bias)?)?)
        }
        "LayerNormalization" => {
            let x = input(0)?;
            let first = axis(int("axis", -1)?, x.rank())?;
            let eps = f64::from(float_attr("epsilon", 1e-5)?);
            let dims: Vec<usize> = (first..x.rank()).collect();
            let centered = x.broadcast_sub(&x.mean_keepdim(dims.clone())?)?;
            let inv_std = centered.sqr()?.mean_keepdim(dims)?.affine(1.0, eps)?.sqrt()?.recip()?;
            let mut y = centered.broadcast_mul(&inv_std)?.broadcast_mul(input(1)?)?;
            if let Some(b) = inputs.get(2).and_then(Option::as_ref) {
                y = y.broadcast_add(b)?;
            }
            one(y)
        }
        "Flatten" => {
            let x = input(0)?;
            let a = if x.rank() == 0 { 0 } else { axis(int("axis", 1)?, x.rank() + 1)? };
            let outer: usize = x.dims()[..a].iter().product();
            one(x.reshape((outer, x.elem_count() / outer.max(1)))?)
        }
        "Reshape" => {
            let x = input(0)?;
            let spec = int_values(input(1)?)?;
            one(x.reshape(reshape_dims(x.dims(), &spec, int("allowzero", 0)? != 0)?)?)
        }
        "Transpose" => {
            let x = input(0)?;
            let perm: Vec<usize> = match ints("perm")? {
                Some(p) => p.iter().map(|&a| axis(a, x.rank())).collect::<Result<_>>()?,
                None => (0..x.rank()).rev().collect(),
            };
            one(x.permute(perm)?.contiguous()?)
        }
        "Unsqueeze" | "Squeeze" => {
            let x = input(0)?;
            let axes = match inputs.get(1).and_then(Option::as_ref) {
                Some(t) => Some(int_values(t)?),
                None => ints("axes")?,
            };
            one(if op == "Unsqueeze" { unsqueeze(x, &axes.context("Unsqueeze needs axes")?)? } else { squeeze(x, axes)? })
        }
        "Concat" => {
            let parts: Vec<&Tensor> = inputs.iter().flatten().collect();
            ensure!(!parts.is_empty(), "Concat has no inputs");
            let a = axis(int("axis", 0)?, parts[0].rank())?;
            one(Tensor::cat(&parts, a)?)
        }
        "Gather" => one(gather(input(0)?, input(1)?, int("axis", 0)?)?),
        "Slice" => {
            let starts = int_values(input(1)?)?;
            let ends = int_values(input(2)?)?;
            let opt = |i: usize| inputs.get(i).and_then(Option::as_ref).map(int_values).transpose();
            one(slice(input(0)?, &starts, &ends, opt(3)?, opt(4)?)?)
        }
        "Expand" => {
            let x = input(0)?;
            let target = to_usizes(&int_values(input(1)?)?)?;
            one(x.broadcast_as(broadcast_shape(x.dims(), &target)?)?.contiguous()?)
        }
        "Where" => {
            let (cond, a, b) = (input(0)?, input(1)?, input(2)?);
            let shape = broadcast_shape(&broadcast_shape(cond.dims(), a.dims())?, b.dims())?;
            one(cond.broadcast_as(shape.clone())?.where_cond(&a.broadcast_as(shape.clone())?, &b.broadcast_as(shape)?)?)
        }
        "ReduceMean" | "ReduceSum" => {
            let x = input(0)?;
            let axes = match inputs.get(1).and_then(Option::as_ref) {
                Some(t) => Some(int_values(t)?),
                None => ints("axes")?,
            };
            let dims: Vec<usize> = match axes {
                Some(a) if !a.is_empty() => a.iter().map(|&v| axis(v, x.rank())).collect::<Result<_>>()?,
                _ => (0..x.rank()).collect(),
            };
            let y = if op == "ReduceMean" { x.mean_keepdim(dims.clone())? } else { x.sum_keepdim(dims.clone())? };
            one(if int("keepdims", 1)? != 0 { y } else { squeeze(&y, Some(dims.iter().map(|&d| d as i64).collect()))? })
        }
        "Constant" => {
            let t = attrs
                .tensor_opt("value")?
                .context("Constant: only the 'value' attribute is supported (not value_float, value_ints, sparse_value)")?;
            one(from_runtime(&t, float)?)
        }
        "Shape" => {
            // Opset 15's start / end pick a range of dims (negative counts from the back).
            let dims: Vec<i64> = input(0)?.dims().iter().map(|&d| d as i64).collect();
            let rank = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank) as usize;
            let (start, end) = (clamp(int("start", 0)?), clamp(int("end", rank)?));
            let picked = dims[start..end.max(start)].to_vec();
            one(Tensor::from_vec(picked.clone(), picked.len(), &Device::Cpu)?)
        }
        "ConstantOfShape" => {
            let shape = to_usizes(&int_values(input(0)?)?)?;
            let value = match attrs.tensor_opt("value")? {
                Some(v) => from_runtime(&v, float)?.flatten_all()?,
                None => Tensor::zeros(1, float, &Device::Cpu)?,
            };
            one(value.reshape(())?.broadcast_as(shape)?.contiguous()?)
        }
        "Range" => {
            let (start, limit, delta) = (scalar_f64(input(0)?)?, scalar_f64(input(1)?)?, scalar_f64(input(2)?)?);
            ensure!(delta != 0.0, "Range: delta is 0");
            let n = ((limit - start) / delta).ceil().max(0.0) as usize;
            let values: Vec<f64> = (0..n).map(|i| start + i as f64 * delta).collect();
            one(Tensor::from_vec(values, n, &Device::Cpu)?.to_dtype(input(0)?.dtype())?)
        }
        "Equal" => one(compare(input(0)?, input(1)?, candle_core::op::CmpOp::Eq)?),
        "GreaterOrEqual" => one(compare(input(0)?, input(1)?, candle_core::op::CmpOp::Ge)?),
        "Greater" => one(compare(input(0)?, input(1)?, candle_core::op::CmpOp::Gt)?),
        "Less" => one(compare(input(0)?, input(1)?, candle_core::op::CmpOp::Lt)?),
        "And" => one(input(0)?.broadcast_mul(input(1)?)?),
        "Or" => one(input(0)?.broadcast_maximum(input(1)?)?),
        "Not" => one(input(0)?.ones_like()?.sub(input(0)?)?),
        other => bail!("op {other} is not supported for training (supported: {})", SUPPORTED.join(", ")),
    }
}

/// A runtime tensor as a candle tensor: floats in `float`, integers as I64, bools as U8.
pub fn from_runtime(t: &distq_runtime::Tensor, float: DType) -> Result<Tensor> {
    use distq_runtime::DataType as R;
    let t = &t.widened()?;
    let shape = t.shape().to_vec();
    let dev = &Device::Cpu;
    Ok(match t.dtype() {
        R::F32 => Tensor::from_slice(t.as_slice::<f32>()?, shape, dev)?.to_dtype(float)?,
        R::F64 => Tensor::from_slice(t.as_slice::<f64>()?, shape, dev)?.to_dtype(float)?,
        R::F16 => Tensor::from_vec(t.to_f32s()?, shape, dev)?.to_dtype(float)?,
        R::I64 | R::I32 | R::I8 => Tensor::from_vec(t.to_i64s()?, shape, dev)?,
        R::U8 => Tensor::from_slice(t.as_slice::<u8>()?, shape, dev)?,
        R::Bool => Tensor::from_slice(t.as_bools()?, shape, dev)?,
        other => bail!("{other} tensors are not supported for training"),
    })
}

/// A float candle tensor back as an f32 runtime tensor.
pub fn to_runtime_f32(t: &Tensor) -> Result<distq_runtime::Tensor> {
    let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(distq_runtime::Tensor::from_vec(t.dims().to_vec(), data)?)
}

fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    ensure!((-r..r).contains(&a), "axis {a} is out of range for rank {rank}");
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

fn int_values(t: &Tensor) -> Result<Vec<i64>> {
    Ok(t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?)
}

fn scalar_f64(t: &Tensor) -> Result<f64> {
    ensure!(t.elem_count() == 1, "expected a scalar, got shape {:?}", t.dims());
    Ok(t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0])
}

fn to_usizes(v: &[i64]) -> Result<Vec<usize>> {
    v.iter().map(|&d| usize::try_from(d).with_context(|| format!("negative dim {d} in {v:?}"))).collect()
}

/// Division; integer tensors divide exactly as ONNX does (truncating), floats by candle.
fn divide(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() != DType::I64 {
        return Ok(a.broadcast_div(b)?);
    }
    let shape = broadcast_shape(a.dims(), b.dims())?;
    let (x, y) = (int_values(&a.broadcast_as(shape.clone())?)?, int_values(&b.broadcast_as(shape.clone())?)?);
    ensure!(y.iter().all(|&v| v != 0), "Div: integer division by zero");
    Ok(Tensor::from_vec(x.iter().zip(&y).map(|(p, q)| p / q).collect::<Vec<i64>>(), shape, &Device::Cpu)?)
}

fn cast(x: &Tensor, to: i64, float: DType) -> Result<Tensor> {
    use distq_runtime::DataType as R;
    let to = i32::try_from(to).ok().and_then(R::from_onnx).with_context(|| format!("Cast: unsupported target type {to}"))?;
    Ok(match to {
        R::F32 | R::F64 | R::F16 => x.to_dtype(float)?,
        R::I64 | R::I32 | R::I8 => {
            // ONNX truncates toward zero; candle's float → int conversion does too.
            x.to_dtype(DType::I64)?
        }
        R::U8 => x.to_dtype(DType::U8)?,
        R::Bool => x.ne(&x.zeros_like()?)?,
        other => bail!("Cast to {other} is not supported for training"),
    })
}

fn compare(a: &Tensor, b: &Tensor, op: candle_core::op::CmpOp) -> Result<Tensor> {
    let shape = broadcast_shape(a.dims(), b.dims())?;
    let b = b.to_dtype(a.dtype())?;
    Ok(a.broadcast_as(shape.clone())?.cmp(&b.broadcast_as(shape)?, op)?)
}

/// numpy broadcasting of two shapes.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 };
    (0..rank)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            (x, y) => bail!("shapes {a:?} and {b:?} do not broadcast (dim {i}: {x} vs {y})"),
        })
        .collect()
}

/// ONNX MatMul: numpy semantics for 1-D operands, broadcast batch dims.
fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (a1, b1) = (a.rank() == 1, b.rank() == 1);
    let a = if a1 { a.unsqueeze(0)? } else { a.clone() };
    let b = if b1 { b.unsqueeze(1)? } else { b.clone() };
    let mut y = if a.rank() == 2 && b.rank() == 2 {
        a.matmul(&b)?
    } else if b.rank() == 2 {
        // [.., m, k] · [k, n]: one GEMM over the folded batch.
        let (k, n) = b.dims2()?;
        let mut lead = a.dims()[..a.rank() - 1].to_vec();
        let rows: usize = lead.iter().product();
        let y = a.reshape((rows, k))?.matmul(&b)?;
        lead.push(n);
        y.reshape(lead)?
    } else {
        a.broadcast_matmul(&b)?
    };
    if b1 {
        y = y.squeeze(D::Minus1)?;
    }
    if a1 {
        y = y.squeeze(if b1 { y.rank() - 1 } else { y.rank() - 2 })?;
    }
    Ok(y)
}

fn gemm(a: &Tensor, b: &Tensor, c: Option<&Tensor>, attrs: &Attrs) -> Result<Tensor> {
    let a = if attrs.int("transA", 0)? != 0 { a.t()?.contiguous()? } else { a.clone() };
    let b = if attrs.int("transB", 0)? != 0 { b.t()?.contiguous()? } else { b.clone() };
    let (alpha, beta) = (f64::from(attrs.float("alpha", 1.0)?), f64::from(attrs.float("beta", 1.0)?));
    let mut y = a.matmul(&b)?;
    if alpha != 1.0 {
        y = y.affine(alpha, 0.0)?;
    }
    if let Some(c) = c {
        let c = if beta != 1.0 { c.affine(beta, 0.0)? } else { c.clone() };
        y = y.broadcast_add(&c)?;
    }
    Ok(y)
}

/// Two equal values of a per-spatial-dim attribute, which is what candle's 2-D ops take.
fn square(values: &[i64], what: &str) -> Result<usize> {
    ensure!(values.len() == 2 && values[0] == values[1], "{what} {values:?}: only equal values for both spatial dims are supported");
    usize::try_from(values[0]).with_context(|| format!("{what} {values:?} is negative"))
}

fn explicit_pads(attrs: &Attrs, what: &str) -> Result<Vec<i64>> {
    let auto_pad = attrs.string("auto_pad", "NOTSET")?;
    ensure!(auto_pad == "NOTSET" || auto_pad == "VALID", "{what}: auto_pad {auto_pad} is not supported for training");
    let pads = attrs.ints_opt("pads")?.unwrap_or_else(|| vec![0; 4]);
    ensure!(pads.len() == 4 && pads.iter().all(|&p| p >= 0), "{what}: pads {pads:?} must be 4 non-negative values");
    Ok(pads)
}

fn conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, attrs: &Attrs) -> Result<Tensor> {
    ensure!(x.rank() == 4 && w.rank() == 4, "Conv: only 2-D convolution (rank-4 input and weight) is supported");
    let pads = explicit_pads(attrs, "Conv")?;
    let stride = square(&attrs.ints_opt("strides")?.unwrap_or(vec![1, 1]), "Conv strides")?;
    let dilation = square(&attrs.ints_opt("dilations")?.unwrap_or(vec![1, 1]), "Conv dilations")?;
    let groups = usize::try_from(attrs.int("group", 1)?).context("Conv: negative group")?;
    // Symmetric padding is candle's; anything else is padded explicitly first.
    let (x, padding) = if pads[0] == pads[1] && pads[1] == pads[2] && pads[2] == pads[3] {
        (x.clone(), pads[0] as usize)
    } else {
        let x = x.pad_with_zeros(2, pads[0] as usize, pads[2] as usize)?;
        (x.pad_with_zeros(3, pads[1] as usize, pads[3] as usize)?, 0)
    };
    let mut y = x.conv2d(w, padding, stride, dilation, groups)?;
    if let Some(b) = b {
        y = y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?;
    }
    Ok(y)
}

fn pool(op: &str, x: &Tensor, attrs: &Attrs) -> Result<Tensor> {
    ensure!(x.rank() == 4, "{op}: only 2-D pooling (rank-4 input) is supported");
    let pads = explicit_pads(attrs, op)?;
    ensure!(pads.iter().all(|&p| p == 0), "{op}: padding is not supported for training");
    ensure!(attrs.int("ceil_mode", 0)? == 0, "{op}: ceil_mode is not supported for training");
    let kernel = attrs.ints_opt("kernel_shape")?.with_context(|| format!("{op} needs kernel_shape"))?;
    let k = square(&kernel, &format!("{op} kernel_shape"))?;
    let strides = attrs.ints_opt("strides")?.unwrap_or(vec![1, 1]);
    let s = square(&strides, &format!("{op} strides"))?;
    let windows = pool_windows(x, k, s).with_context(|| format!("{op} with kernel {k}, stride {s} on {:?}", x.dims()))?;
    Ok(if op == "MaxPool" { windows.max(0)? } else { windows.mean(0)? })
}

/// The `k·k` strided views of `x` that a `k×k` pooling window with stride `s` covers, stacked
/// on a new first axis: pooling is then a max or mean over it. Built from `index_select`
/// rather than candle's pooling ops, whose max-pool gradient is scaled by 1/k² and whose
/// average-pool gradient needs stride = kernel.
fn pool_windows(x: &Tensor, k: usize, s: usize) -> Result<Tensor> {
    let (h, w) = (x.dims()[2], x.dims()[3]);
    ensure!(k >= 1 && s >= 1 && h >= k && w >= k, "the window does not fit");
    let (oh, ow) = ((h - k) / s + 1, (w - k) / s + 1);
    let at = |offset: usize, count: usize| {
        Tensor::from_vec((0..count).map(|o| (o * s + offset) as u32).collect::<Vec<_>>(), count, &Device::Cpu)
    };
    let mut views = Vec::with_capacity(k * k);
    for i in 0..k {
        let rows = x.index_select(&at(i, oh)?, 2)?;
        for j in 0..k {
            views.push(rows.index_select(&at(j, ow)?, 3)?);
        }
    }
    Ok(Tensor::stack(&views, 0)?)
}

fn reshape_dims(input: &[usize], spec: &[i64], allow_zero: bool) -> Result<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut dims = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 => {
                ensure!(infer.is_none(), "Reshape: more than one -1 in {spec:?}");
                infer = Some(i);
                dims.push(1);
            }
            0 if !allow_zero => dims.push(*input.get(i).with_context(|| format!("Reshape: 0 at {i} has no input dim to copy"))?),
            d => dims.push(usize::try_from(d).with_context(|| format!("Reshape: dim {d} in {spec:?}"))?),
        }
    }
    if let Some(i) = infer {
        let known: usize = dims.iter().product();
        ensure!(known > 0 && total.is_multiple_of(known), "Reshape: cannot infer -1 in {spec:?} for {total} elements");
        dims[i] = total / known;
    }
    ensure!(dims.iter().product::<usize>() == total, "Reshape: {spec:?} does not hold {input:?}");
    Ok(dims)
}

fn unsqueeze(x: &Tensor, axes: &[i64]) -> Result<Tensor> {
    let rank = x.rank() + axes.len();
    let mut axes: Vec<usize> = axes.iter().map(|&a| axis(a, rank)).collect::<Result<_>>()?;
    axes.sort_unstable();
    let mut y = x.clone();
    for a in axes {
        y = y.unsqueeze(a)?;
    }
    Ok(y)
}

fn squeeze(x: &Tensor, axes: Option<Vec<i64>>) -> Result<Tensor> {
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&v| axis(v, x.rank())).collect::<Result<_>>()?,
        None => (0..x.rank()).filter(|&d| x.dims()[d] == 1).collect(),
    };
    let dims: Vec<usize> = x.dims().iter().enumerate().filter(|(d, _)| !axes.contains(d)).map(|(_, &s)| s).collect();
    Ok(x.reshape(dims)?)
}

fn gather(data: &Tensor, indices: &Tensor, axis_attr: i64) -> Result<Tensor> {
    let a = axis(axis_attr, data.rank())?;
    let n = data.dims()[a] as i64;
    let idx = int_values(indices)?;
    let idx: Vec<u32> = idx
        .iter()
        .map(|&i| {
            let j = if i < 0 { i + n } else { i };
            ensure!((0..n).contains(&j), "Gather: index {i} is out of range for dim {a} of size {n}");
            Ok(j as u32)
        })
        .collect::<Result<_>>()?;
    let flat = Tensor::from_vec(idx, indices.elem_count(), &Device::Cpu)?;
    let picked = data.index_select(&flat, a)?;
    let mut shape = data.dims()[..a].to_vec();
    shape.extend_from_slice(indices.dims());
    shape.extend_from_slice(&data.dims()[a + 1..]);
    Ok(picked.reshape(shape)?)
}

fn slice(x: &Tensor, starts: &[i64], ends: &[i64], axes: Option<Vec<i64>>, steps: Option<Vec<i64>>) -> Result<Tensor> {
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    ensure!(starts.len() == ends.len() && axes.len() == starts.len(), "Slice: starts, ends and axes differ in length");
    ensure!(steps.as_ref().is_none_or(|s| s.iter().all(|&v| v == 1)), "Slice: only step 1 is supported for training");
    let mut y = x.clone();
    for ((&s, &e), &a) in starts.iter().zip(ends).zip(&axes) {
        let a = axis(a, x.rank())?;
        let n = x.dims()[a] as i64;
        let clamp = |v: i64| (if v < 0 { v + n } else { v }).clamp(0, n);
        let (s, e) = (clamp(s), clamp(e));
        y = y.narrow(a, s as usize, (e - s).max(0) as usize)?;
    }
    Ok(y)
}
