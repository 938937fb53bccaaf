//! The quantizable weights of a model and the standard-ONNX form of a quantized one: each
//! lowered weight becomes its stored initializer(s) plus a `DequantizeLinear` (int8 per axis,
//! int4 with `block_size`, opset 21) or a `Cast` (float16) whose output keeps the weight's
//! name, so every consumer is unchanged. This is the form onnxruntime and our runtime both
//! recognize (our planner keeps such weights compact in memory).

use super::weights::{Layout, Precision, Quantized, Stored};
use anyhow::{Context, Result, bail};
use distq_runtime::nibbles::pack_u4;
use distq_runtime::onnx::proto::attribute_proto::AttributeType;
use distq_runtime::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use distq_runtime::onnx::{WeightFiles, tensor_from_proto};
use distq_runtime::{DataType, Model};
use std::collections::{HashMap, HashSet};

/// Weights smaller than this stay float: their bytes do not matter and the runtime keeps
/// them folded anyway.
pub const MIN_VALUES: usize = 4096;

/// One quantizable weight and the op that consumes it.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The initializer's name.
    pub name: String,
    /// The consuming op (`MatMul`, `Gemm`, `Conv`, `Gather`).
    pub op: String,
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// Its axes' roles.
    pub layout: Layout,
    /// Its values.
    pub values: Vec<f32>,
}

impl Layer {
    /// Parameters (elements).
    pub fn params(&self) -> usize {
        self.values.len()
    }

    /// Whether `precision` fits this weight: int4 needs at least one whole block along the
    /// reduction axis, float16 values within ±65504.
    pub fn accepts(&self, precision: Precision) -> bool {
        match precision {
            Precision::Int4 { block } => self.shape[self.layout.reduction_axis] >= block,
            Precision::F16 => self.values.iter().all(|v| v.abs() <= half::f16::MAX.to_f32()),
            Precision::Int8 | Precision::F32 => true,
        }
    }
}

/// The axes of the weight input of `op`, when `op` takes one there.
fn weight_layout(node: &NodeProto, input: usize, rank: usize) -> Option<Layout> {
    let attr = |name: &str| node.attribute.iter().find(|a| a.name.as_deref() == Some(name)).and_then(|a| a.i).unwrap_or(0);
    match (node.op_type.as_deref()?, input, rank) {
        ("MatMul", 1, 2) => Some(Layout { channel_axis: 1, reduction_axis: 0 }),
        ("Gemm", 1, 2) if attr("transB") != 0 => Some(Layout { channel_axis: 0, reduction_axis: 1 }),
        ("Gemm", 1, 2) => Some(Layout { channel_axis: 1, reduction_axis: 0 }),
        ("Conv", 1, 3..) => Some(Layout { channel_axis: 0, reduction_axis: 1 }),
        // An embedding table: one scale per row, blocks along the embedding.
        ("Gather", 0, 2) if attr("axis") == 0 => Some(Layout { channel_axis: 0, reduction_axis: 1 }),
        _ => None,
    }
}

/// The model's quantizable weights: float initializers of at least [`MIN_VALUES`] values read
/// as the weight of a MatMul, Gemm or Conv, or as the table of a Gather, in graph order.
pub fn quantizable_layers(model: &Model) -> Result<Vec<Layer>> {
    let file = model.file();
    let graph = file.proto.graph.as_ref().context("model has no graph")?;
    let initializers: HashMap<&str, &TensorProto> = graph.initializer.iter().map(|t| (t.name.as_deref().unwrap_or(""), t)).collect();
    let mut files = WeightFiles::new(file.base_dir.clone(), file.map.clone());
    let (mut layers, mut seen) = (Vec::new(), HashSet::new());
    for node in &graph.node {
        for (input, name) in node.input.iter().enumerate() {
            let Some(t) = initializers.get(name.as_str()) else { continue };
            if t.data_type != Some(DataType::F32.onnx_code()) || !seen.insert(name.clone()) {
                continue;
            }
            let Some(layout) = weight_layout(node, input, t.dims.len()) else { continue };
            let tensor = tensor_from_proto(t, &mut files).with_context(|| format!("{}: weight '{name}'", file.origin))?;
            if tensor.len() >= MIN_VALUES {
                let values = tensor.as_slice::<f32>()?.to_vec();
                layers.push(Layer {
                    name: name.clone(),
                    op: node.op_type.clone().unwrap_or_default(),
                    shape: tensor.shape().to_vec(),
                    layout,
                    values,
                });
            }
        }
    }
    Ok(layers)
}

/// Ops whose inputs or attributes changed meaning at the given opset: a model older than that
/// cannot simply be relabelled to the newer opset the quantized form needs.
const CHANGED_AT: &[(&str, i64)] = &[
    ("Softmax", 13),
    ("LogSoftmax", 13),
    ("Hardmax", 13),
    ("Squeeze", 13),
    ("Unsqueeze", 13),
    ("Split", 13),
    ("ReduceSum", 13),
    ("ReduceMean", 18),
    ("ReduceMax", 18),
    ("ReduceMin", 18),
    ("ReduceProd", 18),
    ("ReduceL1", 18),
    ("ReduceL2", 18),
    ("ReduceLogSum", 18),
    ("ReduceLogSumExp", 18),
    ("ReduceSumSquare", 18),
    ("GroupNormalization", 21),
];

/// The opset a set of precisions needs: 21 for int4 blocks, 13 for per-axis int8.
fn opset_needed(precisions: impl Iterator<Item = Precision>) -> i64 {
    precisions
        .map(|p| match p {
            Precision::Int4 { .. } => 21,
            Precision::Int8 => 13,
            Precision::F16 | Precision::F32 => 1,
        })
        .max()
        .unwrap_or(1)
}

/// Moves the default domain to `opset` when it is older, refusing when an op in the graph
/// changed meaning in between.
fn raise_opset(model: &mut ModelProto, opset: i64) -> Result<()> {
    let default = |d: &Option<String>| matches!(d.as_deref(), None | Some("") | Some("ai.onnx"));
    let current = model.opset_import.iter().find(|o| default(&o.domain)).and_then(|o| o.version).unwrap_or(1);
    if current >= opset {
        return Ok(());
    }
    let graph = model.graph.as_ref().context("model has no graph")?;
    for node in graph.node.iter().filter(|n| default(&n.domain)) {
        let op = node.op_type.as_deref().unwrap_or("");
        if let Some(&(_, at)) = CHANGED_AT.iter().find(|(name, at)| *name == op && current < *at && *at <= opset) {
            bail!(
                "node '{}' ({op}) changed meaning at opset {at}; the model is at opset {current} and the quantized form needs {opset} \
                 (int4 blocks need 21, per-channel int8 13): convert the model's opset first, or choose a precision that needs less",
                node.name.as_deref().unwrap_or("?")
            );
        }
    }
    for o in model.opset_import.iter_mut().filter(|o| default(&o.domain)) {
        o.version = Some(opset);
    }
    if !model.opset_import.iter().any(|o| default(&o.domain)) {
        model.opset_import.push(distq_runtime::onnx::proto::OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) });
    }
    // INT4/UINT4 and opset 21 arrived with IR version 10; per-axis QDQ needs IR 7.
    let ir = if opset >= 21 { 10 } else { 7 };
    model.ir_version = Some(model.ir_version.unwrap_or(ir).max(ir));
    Ok(())
}

fn raw_tensor(name: String, dims: &[usize], dtype: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

fn int_attr(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: Some(name.into()), r#type: Some(AttributeType::Int as i32), i: Some(value), ..Default::default() }
}

/// ONNX element type codes.
const UINT4: i32 = 21;

/// The initializers and the node that restore `name` from `q`.
fn restore(name: &str, q: &Quantized) -> (Vec<TensorProto>, NodeProto) {
    let node = |op: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>| NodeProto {
        name: Some(format!("{name}_{op}")),
        op_type: Some(op.into()),
        input: inputs,
        output: vec![name.into()],
        attribute,
        ..Default::default()
    };
    let scale = || {
        raw_tensor(
            format!("{name}_scale"),
            &q.scale_shape,
            DataType::F32.onnx_code(),
            q.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
        )
    };
    match &q.values {
        Stored::F16(bits) => {
            let t = raw_tensor(
                format!("{name}_fp16"),
                &q.shape,
                DataType::F16.onnx_code(),
                bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
            );
            let cast = node("Cast", vec![format!("{name}_fp16")], vec![int_attr("to", DataType::F32.onnx_code() as i64)]);
            (vec![t], cast)
        }
        Stored::I8(values) => {
            let t = raw_tensor(format!("{name}_quantized"), &q.shape, DataType::I8.onnx_code(), values.iter().map(|&v| v as u8).collect());
            let inputs = vec![format!("{name}_quantized"), format!("{name}_scale")];
            (vec![t, scale()], node("DequantizeLinear", inputs, vec![int_attr("axis", q.axis as i64)]))
        }
        Stored::U4(values) => {
            let t = raw_tensor(format!("{name}_quantized"), &q.shape, UINT4, pack_u4(values));
            let zero = raw_tensor(format!("{name}_zero_point"), &q.scale_shape, UINT4, pack_u4(&q.zero_points));
            let inputs = vec![format!("{name}_quantized"), format!("{name}_scale"), format!("{name}_zero_point")];
            let attrs = vec![int_attr("axis", q.axis as i64), int_attr("block_size", q.block.unwrap_or(0) as i64)];
            (vec![t, scale(), zero], node("DequantizeLinear", inputs, attrs))
        }
    }
}

/// `model` with each `(weight name, quantized)` stored compactly and restored in the graph.
pub fn rewrite(model: &ModelProto, quantized: &[(&str, &Quantized)]) -> Result<ModelProto> {
    let mut out = model.clone();
    raise_opset(&mut out, opset_needed(quantized.iter().map(|(_, q)| q.precision)))?;
    let graph: &mut GraphProto = out.graph.as_mut().context("model has no graph")?;
    let names: HashSet<&str> = quantized.iter().map(|(n, _)| *n).collect();
    graph.initializer.retain(|t| !names.contains(t.name.as_deref().unwrap_or("")));
    // Old models also list initializers as graph inputs; the restored value replaces both.
    graph.input.retain(|v| !names.contains(v.name.as_deref().unwrap_or("")));
    let mut nodes = Vec::with_capacity(graph.node.len() + quantized.len());
    for (name, q) in quantized {
        let (tensors, node) = restore(name, q);
        graph.initializer.extend(tensors);
        nodes.push(node);
    }
    // Restoring nodes read only initializers: placed first, the graph stays sorted.
    nodes.append(&mut graph.node);
    graph.node = nodes;
    Ok(out)
}
