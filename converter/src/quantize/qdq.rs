//! The quantizable weights of a model and the standard-ONNX form of a quantized one: each
//! lowered weight becomes its stored initializer(s) plus a `DequantizeLinear` (int8 per axis,
//! int4 with `block_size`, opset 21) or a `Cast` (float16) whose output keeps the weight's
//! name, so every consumer is unchanged. This is the form onnxruntime and our runtime both
//! recognize (our planner keeps such weights compact in memory). An int8 MatMul runs on
//! integers instead, its input quantized at run time ([`quantize_inputs_at_run_time`]), and
//! with a static observer every int8 layer's input gets a QDQ pair
//! ([`quantize_activations`]).

use super::observe::ActivationQuant;
use super::weights::{Layout, Precision, Quantized, Stored};
use anyhow::{Context, Result, ensure};
use distq_runtime::nibbles::pack_u4;
use distq_runtime::onnx::proto::attribute_proto::AttributeType;
use distq_runtime::onnx::proto::{AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};
use distq_runtime::onnx::{WeightFiles, tensor_from_proto};
use distq_runtime::{DataType, Model};
use std::collections::{HashMap, HashSet};

/// Weights smaller than this stay float: a scale per channel would cost about as much as it
/// saves.
pub const MIN_VALUES: usize = 256;

/// Where a layer's bias lives, for bias correction.
#[derive(Debug, Clone)]
pub enum BiasSite {
    /// The layer's own input 2: a Conv's or Gemm's bias (absent: zeros).
    Input2,
    /// Input `input` of the `Add` (producing `add_output`) that follows a MatMul.
    Add {
        /// The Add's output, which names it.
        add_output: String,
        /// Which of its inputs is the bias.
        input: usize,
    },
}

/// A layer's bias: where it is and its fp32 values.
#[derive(Debug, Clone)]
pub struct Bias {
    /// Where.
    pub site: BiasSite,
    /// The values (one per output channel).
    pub values: Vec<f32>,
}

/// One quantizable weight and the op that consumes it.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The initializer's name.
    pub name: String,
    /// The consuming op (`MatMul`, `Gemm`, `Conv`, `Gather`).
    pub op: String,
    /// The consuming node's first output (unique: it names the node).
    pub node_output: String,
    /// The activation the weight multiplies (the consumer's input 0; for Gather, the indices).
    pub activation: String,
    /// Conv groups (1 otherwise).
    pub groups: usize,
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// Its axes' roles.
    pub layout: Layout,
    /// Its values.
    pub values: Vec<f32>,
    /// Its bias, where a correction of its mean output shift can go: a Conv's, a plain
    /// Gemm's (alpha = beta = 1, no transA), or the Add of a per-column constant after a
    /// MatMul.
    pub bias: Option<Bias>,
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
            Precision::Int4 { block, .. } => self.shape[self.layout.reduction_axis] >= block,
            Precision::F16 => self.values.iter().all(|v| v.abs() <= half::f16::MAX.to_f32()),
            Precision::Int8 | Precision::F32 => true,
        }
    }

    /// The bias that cancels the mean output shift `quantized − original` weights cause on
    /// inputs with per-channel means `means` (bias correction): `b − Σ ΔW · mean`.
    pub fn corrected_bias(&self, dequantized: &[f32], means: &[f32]) -> Option<Vec<f32>> {
        let bias = self.bias.as_ref()?;
        let mut out = bias.values.clone();
        match self.op.as_str() {
            "Conv" => {
                // [M, C/groups, kh, kw]: output m reads input channels of its group.
                let (m, c) = (self.shape[0], self.shape[1]);
                let inner = self.values.len() / (m * c).max(1);
                let per_group = m / self.groups;
                if means.len() != c * self.groups {
                    return None;
                }
                for (i, (&q, &w)) in dequantized.iter().zip(&self.values).enumerate() {
                    let (o, ci) = (i / (c * inner), i / inner % c);
                    out[o] -= (q - w) * means[(o / per_group) * c + ci];
                }
            }
            "MatMul" | "Gemm" => {
                // 2-D: output channel c sums over the input's last axis k; the layout says
                // which axis is which ([K, N], or [N, K] for a Gemm with transB).
                let cols = self.shape[1];
                if means.len() != self.shape[self.layout.reduction_axis] {
                    return None;
                }
                for (i, (&q, &w)) in dequantized.iter().zip(&self.values).enumerate() {
                    let (row, col) = (i / cols, i % cols);
                    let (c, k) = if self.layout.channel_axis == 1 { (col, row) } else { (row, col) };
                    out[c] -= (q - w) * means[k];
                }
            }
            _ => return None,
        }
        Some(out)
    }
}

/// Attribute `name` of `node`.
fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

/// The axes of the weight input of `op`, when `op` takes one there.
fn weight_layout(node: &NodeProto, input: usize, rank: usize) -> Option<Layout> {
    let attr = |name: &str| attribute(node, name).and_then(|a| a.i).unwrap_or(0);
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
    let mut readers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for node in &graph.node {
        for input in &node.input {
            readers.entry(input.as_str()).or_default().push(node);
        }
    }
    let mut files = WeightFiles::new(file.base_dir.clone());
    let mut floats = |name: &str| -> Result<Option<Vec<f32>>> {
        let Some(t) = initializers.get(name).filter(|t| t.data_type == Some(DataType::F32.onnx_code())) else { return Ok(None) };
        let tensor = tensor_from_proto(t, &mut files).with_context(|| format!("{}: tensor '{name}'", file.origin))?;
        Ok(Some(tensor.as_slice::<f32>()?.to_vec()))
    };
    let (mut layers, mut seen) = (Vec::new(), HashSet::new());
    for node in &graph.node {
        for (input, name) in node.input.iter().enumerate() {
            let Some(t) = initializers.get(name.as_str()) else { continue };
            if t.data_type != Some(DataType::F32.onnx_code()) || !seen.insert(name.clone()) {
                continue;
            }
            let Some(layout) = weight_layout(node, input, t.dims.len()) else { continue };
            let Some(values) = floats(name)?.filter(|v| v.len() >= MIN_VALUES) else { continue };
            let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            let op = node.op_type.clone().unwrap_or_default();
            let node_output = node.output.first().cloned().unwrap_or_default();
            let channels = shape[layout.channel_axis];
            let bias = match op.as_str() {
                // Gemms only when plain: alpha and beta would scale the shift, transA moves K.
                "Conv" | "Gemm"
                    if op == "Conv"
                        || (["alpha", "beta"].iter().all(|a| attribute(node, a).and_then(|a| a.f).is_none_or(|v| v == 1.0))
                            && attribute(node, "transA").and_then(|a| a.i).unwrap_or(0) == 0) =>
                {
                    match node.input.get(2).filter(|b| !b.is_empty()) {
                        Some(b) => floats(b)?.filter(|v| v.len() == channels).map(|values| Bias { site: BiasSite::Input2, values }),
                        None => Some(Bias { site: BiasSite::Input2, values: vec![0.0; channels] }),
                    }
                }
                "MatMul" => match readers.get(node_output.as_str()).map(Vec::as_slice) {
                    Some([add]) if add.op_type.as_deref() == Some("Add") && add.input.len() == 2 => {
                        let input = usize::from(add.input[0] == node_output);
                        let site = BiasSite::Add { add_output: add.output.first().cloned().unwrap_or_default(), input };
                        floats(&add.input[input])?.filter(|v| v.len() == channels).map(|values| Bias { site, values })
                    }
                    _ => None,
                },
                _ => None,
            };
            let groups = attribute(node, "group").and_then(|a| a.i).unwrap_or(1).max(1) as usize;
            let activation = node.input.first().cloned().unwrap_or_default();
            layers.push(Layer { name: name.clone(), op, node_output, activation, groups, shape, layout, values, bias });
        }
    }
    Ok(layers)
}

/// Points the layer's bias site at a new initializer holding `values` (the old bias tensor
/// may be shared, so it is left alone).
pub fn apply_bias(graph: &mut GraphProto, layer: &Layer, values: &[f32]) -> Result<()> {
    let Some(bias) = &layer.bias else { return Ok(()) };
    let name = format!("{}_bias_corrected", layer.name);
    let tensor = f32_tensor(name.clone(), &[values.len()], values);
    graph.initializer.retain(|t| t.name.as_deref() != Some(name.as_str()));
    graph.initializer.push(tensor);
    let (output, input) = match &bias.site {
        BiasSite::Input2 => (&layer.node_output, 2),
        BiasSite::Add { add_output, input } => (add_output, *input),
    };
    replace_input(graph, output, input, name)
}

/// Points input `input` of the node writing `output` at `name`, dropping the initializer it
/// read before unless something else still reads it.
fn replace_input(graph: &mut GraphProto, output: &str, input: usize, name: String) -> Result<()> {
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.output.first().map(String::as_str) == Some(output))
        .with_context(|| format!("no node writes '{output}'"))?;
    if node.input.len() <= input {
        node.input.resize(input + 1, String::new());
    }
    let old = std::mem::replace(&mut node.input[input], name);
    let read = graph.node.iter().any(|n| n.input.contains(&old)) || graph.output.iter().any(|o| o.name.as_deref() == Some(old.as_str()));
    if !read {
        graph.initializer.retain(|t| t.name.as_deref() != Some(old.as_str()));
    }
    Ok(())
}

/// Static activation quantization: each quantized activation gets one `QuantizeLinear →
/// DequantizeLinear` pair (uint8, per tensor) read by the lowered layers that quantize it,
/// placed just before the first of them; other readers keep the float value. A Conv's or
/// Gemm's float bias becomes int32 at scale `x_scale · w_scale` (the form integer kernels and
/// onnxruntime's QDQ fusions take).
fn quantize_activations(graph: &mut GraphProto, lowered: &[Lowered]) -> Result<()> {
    let mut done: HashMap<&str, String> = HashMap::new();
    for l in lowered {
        let Some(q) = l.activation else { continue };
        let act = l.layer.activation.as_str();
        let restored = match done.get(act) {
            Some(name) => name.clone(),
            None => {
                let (scale, zero, quantized, restored) =
                    (format!("{act}_act_scale"), format!("{act}_act_zero_point"), format!("{act}_quantized"), format!("{act}_dequantized"));
                let taken = |n: &String| {
                    graph.initializer.iter().any(|t| t.name.as_ref() == Some(n)) || graph.node.iter().any(|x| x.output.contains(n))
                };
                ensure!(!taken(&quantized) && !taken(&restored), "activation '{act}': the names of its quantized forms are taken");
                graph.initializer.push(f32_tensor(scale.clone(), &[], &[q.scale]));
                graph.initializer.push(raw_tensor(zero.clone(), &[], DataType::U8.onnx_code(), vec![q.zero_point]));
                let node = |op: &str, input: &str, output: &str| NodeProto {
                    name: Some(format!("{act}_{op}")),
                    op_type: Some(op.into()),
                    input: vec![input.into(), scale.clone(), zero.clone()],
                    output: vec![output.into()],
                    ..Default::default()
                };
                let pair = [node("QuantizeLinear", act, &quantized), node("DequantizeLinear", &quantized, &restored)];
                // Before the first layer reading the activation: after whatever writes it.
                let first = graph
                    .node
                    .iter()
                    .position(|n| {
                        n.input.first().map(String::as_str) == Some(act)
                            && lowered.iter().any(|x| x.activation.is_some() && n.output.first() == Some(&x.layer.node_output))
                    })
                    .with_context(|| format!("no lowered layer reads activation '{act}'"))?;
                graph.node.splice(first..first, pair);
                done.insert(act, restored.clone());
                restored
            }
        };
        replace_input(graph, &l.layer.node_output, 0, restored)?;
        if matches!(l.layer.op.as_str(), "Conv" | "Gemm") {
            integer_bias(graph, l, q)?;
        }
    }
    Ok(())
}

/// Replaces the float bias (input 2) of the lowered Conv or Gemm `l`, whose input is quantized
/// by `q`, with int32 values dequantized at `q.scale · w_scale` per output channel.
fn integer_bias(graph: &mut GraphProto, l: &Lowered, q: ActivationQuant) -> Result<()> {
    let node = graph.node.iter().find(|n| n.output.first() == Some(&l.layer.node_output)).context("lowered node vanished")?;
    let Some(bias) = node.input.get(2).filter(|b| !b.is_empty()).cloned() else { return Ok(()) };
    let Some(tensor) = graph.initializer.iter().find(|t| t.name.as_ref() == Some(&bias)) else { return Ok(()) };
    // Quantized models are built in memory: every tensor is inline.
    let values = tensor_from_proto(tensor, &mut WeightFiles::new(None))
        .and_then(|t| t.to_f32s())
        .with_context(|| format!("layer '{}': bias '{bias}'", l.layer.name))?;
    let w_scales = &l.quantized.scales;
    let scales: Vec<f32> =
        (0..values.len()).map(|c| q.scale * w_scales[if w_scales.len() == 1 { 0 } else { c.min(w_scales.len() - 1) }]).collect();
    let ints: Vec<u8> = values
        .iter()
        .zip(&scales)
        .flat_map(|(&b, &s)| ((b as f64 / s as f64).round().clamp(i32::MIN as f64, i32::MAX as f64) as i32).to_le_bytes())
        .collect();
    let name = &l.layer.name;
    let (quantized, scale, restored) = (format!("{name}_bias_quantized"), format!("{name}_bias_scale"), format!("{name}_bias_dequantized"));
    graph.initializer.push(raw_tensor(quantized.clone(), &[values.len()], DataType::I32.onnx_code(), ints));
    graph.initializer.push(f32_tensor(scale.clone(), &[values.len()], &scales));
    // It reads only initializers: first in the graph, it keeps the graph sorted.
    graph.node.insert(
        0,
        NodeProto {
            name: Some(format!("{name}_bias_DequantizeLinear")),
            op_type: Some("DequantizeLinear".into()),
            input: vec![quantized, scale],
            output: vec![restored.clone()],
            attribute: vec![int_attr("axis", 0)],
            ..Default::default()
        },
    );
    replace_input(graph, &l.layer.node_output, 2, restored)
}

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

/// An initializer of element type `dtype` holding `raw` little-endian bytes.
pub(super) fn raw_tensor(name: String, dims: &[usize], dtype: i32, raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

/// An f32 initializer.
pub(super) fn f32_tensor(name: String, dims: &[usize], values: &[f32]) -> TensorProto {
    raw_tensor(name, dims, DataType::F32.onnx_code(), values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// An int attribute.
pub(super) fn int_attr(name: &str, value: i64) -> AttributeProto {
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

/// One lowered layer as written: its stored weight, its corrected bias, and for static
/// activation quantization its input's quantization.
#[derive(Clone, Copy)]
pub struct Lowered<'a> {
    /// The layer.
    pub layer: &'a Layer,
    /// Its weight as stored.
    pub quantized: &'a Quantized,
    /// Its corrected bias.
    pub bias: Option<&'a [f32]>,
    /// Its input's uint8 quantization (`None`: the input stays float).
    pub activation: Option<ActivationQuant>,
}

/// `model` with each lowered layer's weight stored compactly and restored in the graph, its
/// bias corrected and its input quantized as `lowered` says.
pub fn rewrite(model: &ModelProto, lowered: &[Lowered]) -> Result<ModelProto> {
    let mut out = model.clone();
    super::opset::raise(&mut out, opset_needed(lowered.iter().map(|l| l.quantized.precision)))?;
    let graph: &mut GraphProto = out.graph.as_mut().context("model has no graph")?;
    let names: HashSet<&str> = lowered.iter().map(|l| l.layer.name.as_str()).collect();
    graph.initializer.retain(|t| !names.contains(t.name.as_deref().unwrap_or("")));
    // Old models also list initializers as graph inputs; the restored value replaces both.
    graph.input.retain(|v| !names.contains(v.name.as_deref().unwrap_or("")));
    let dynamic: Vec<&Lowered> = lowered.iter().filter(|l| runs_on_integers(graph, l)).collect();
    let gathered: Vec<&Lowered> = lowered.iter().filter(|l| gathers_blocks(graph, l)).collect();
    let mut nodes = Vec::with_capacity(graph.node.len() + lowered.len());
    for l in lowered {
        let (tensors, node) = restore(&l.layer.name, l.quantized);
        graph.initializer.extend(tensors);
        // Layers on the integer path and 4-bit lookups read their stored weight directly.
        if ![&dynamic, &gathered].iter().any(|set| set.iter().any(|d| d.layer.name == l.layer.name)) {
            nodes.push(node);
        }
    }
    for l in &gathered {
        gather_blocks(graph, l)?;
    }
    if !gathered.is_empty() && !out.opset_import.iter().any(|o| o.domain.as_deref() == Some(MICROSOFT)) {
        out.opset_import.push(OperatorSetIdProto { domain: Some(MICROSOFT.into()), version: Some(1) });
    }
    let graph: &mut GraphProto = out.graph.as_mut().context("model has no graph")?;
    // Restoring nodes read only initializers: placed first, the graph stays sorted.
    nodes.append(&mut graph.node);
    graph.node = nodes;
    for l in lowered {
        if let Some(values) = l.bias {
            apply_bias(graph, l.layer, values)?;
        }
    }
    quantize_activations(graph, lowered)
        .with_context(|| format!("static activation quantization of {}", graph.name.as_deref().unwrap_or("the graph")))?;
    quantize_inputs_at_run_time(graph, &dynamic)
        .with_context(|| format!("dynamic activation quantization of {}", graph.name.as_deref().unwrap_or("the graph")))?;
    Ok(out)
}

/// The domain of onnxruntime's contrib ops.
const MICROSOFT: &str = "com.microsoft";

/// Whether the lowered layer `l` is a lookup in a 4-bit table that `GatherBlockQuantized`
/// can hold: blocks of a power of two of at least 16 along its rows (onnxruntime's rule), the
/// table read by that Gather alone. Standard ONNX has no gather of 4-bit values, and
/// `DequantizeLinear → Gather` makes onnxruntime dequantize the whole table on every run
/// (MiniLM's word embeddings alone: 29.7 ms a run, 2.1 ms as GatherBlockQuantized).
fn gathers_blocks(graph: &GraphProto, l: &Lowered) -> bool {
    let Precision::Int4 { block, pow2_scales: false } = l.quantized.precision else { return false };
    l.layer.op == "Gather"
        && block >= 16
        && block.is_power_of_two()
        && graph.node.iter().filter(|n| n.input.contains(&l.layer.name)).count() == 1
}

/// Replaces the Gather of lowered table `l` by `com.microsoft::GatherBlockQuantized` on its
/// stored form (see [`gathers_blocks`]).
fn gather_blocks(graph: &mut GraphProto, l: &Lowered) -> Result<()> {
    let name = &l.layer.name;
    let gather = graph
        .node
        .iter_mut()
        .find(|n| n.output.first() == Some(&l.layer.node_output))
        .with_context(|| format!("layer '{name}': no node writes '{}'", l.layer.node_output))?;
    let indices = gather.input.get(1).cloned().with_context(|| format!("layer '{name}': its Gather has no indices"))?;
    gather.op_type = Some("GatherBlockQuantized".into());
    gather.domain = Some(MICROSOFT.into());
    gather.input = vec![format!("{name}_quantized"), indices, format!("{name}_scale"), format!("{name}_zero_point")];
    gather.attribute = vec![
        int_attr("gather_axis", 0),
        int_attr("quantize_axis", l.quantized.axis as i64),
        int_attr("block_size", l.quantized.block.unwrap_or(0) as i64),
        int_attr("bits", 4),
    ];
    Ok(())
}

/// Whether the lowered layer `l` runs on integer kernels with its input quantized at run time:
/// an int8 MatMul weight whose input has no static quantization, read by that MatMul alone.
fn runs_on_integers(graph: &GraphProto, l: &Lowered) -> bool {
    l.quantized.precision == Precision::Int8
        && l.activation.is_none()
        && l.layer.op == "MatMul"
        && graph.node.iter().filter(|n| n.input.contains(&l.layer.name)).count() == 1
}

/// Dynamic activation quantization, in the form onnxruntime's dynamic quantizer writes, which
/// it and our runtime both run on integer GEMMs (ours fuses the chain into one, see the
/// runtime's `MatMulIntegerToFloat`): each layer's `MatMul(x, W)` becomes
/// `MatMulInteger(x_q, W_q, x_zero_point) → Cast(float) → Mul(x_scale · W_scale)`, writing the
/// MatMul's output, with one `DynamicQuantizeLinear(x) → (x_q, x_scale, x_zero_point)` (uint8,
/// per tensor) per activation, shared by the layers that read it (an attention block's
/// query, key and value projections).
fn quantize_inputs_at_run_time(graph: &mut GraphProto, layers: &[&Lowered]) -> Result<()> {
    let mut done: HashMap<String, [String; 3]> = HashMap::new();
    let taken = |graph: &GraphProto, n: &String| {
        graph.initializer.iter().any(|t| t.name.as_ref() == Some(n)) || graph.node.iter().any(|x| x.output.contains(n))
    };
    let node = |name: String, op: &str, input: Vec<String>, output: Vec<String>, attribute: Vec<AttributeProto>| NodeProto {
        name: Some(name),
        op_type: Some(op.into()),
        input,
        output,
        attribute,
        ..Default::default()
    };
    let position = |graph: &GraphProto, output: &str| graph.node.iter().position(|n| n.output.first().map(String::as_str) == Some(output));
    for l in layers {
        let (name, out) = (&l.layer.name, &l.layer.node_output);
        let at = position(graph, out).with_context(|| format!("layer '{name}': no node writes '{out}'"))?;
        let x = graph.node[at].input.first().cloned().with_context(|| format!("layer '{name}': its MatMul has no input"))?;
        let [x_q, x_scale, x_zero] = match done.get(&x) {
            Some(names) => names.clone(),
            None => {
                let names = [format!("{x}_dynamic_quantized"), format!("{x}_dynamic_scale"), format!("{x}_dynamic_zero_point")];
                ensure!(!names.iter().any(|n| taken(graph, n)), "activation '{x}': the names of its quantized forms are taken");
                // Before the first layer reading the activation: after whatever writes it.
                let first = graph
                    .node
                    .iter()
                    .position(|n| n.input.first() == Some(&x) && layers.iter().any(|d| n.output.first() == Some(&d.layer.node_output)))
                    .with_context(|| format!("no lowered layer reads activation '{x}'"))?;
                graph.node.insert(
                    first,
                    node(format!("{x}_DynamicQuantizeLinear"), "DynamicQuantizeLinear", vec![x.clone()], names.to_vec(), vec![]),
                );
                done.insert(x.clone(), names.clone());
                names
            }
        };
        let at = position(graph, out).context("lowered node vanished")?;
        let (acc, float, scale) = (format!("{out}_int32"), format!("{out}_float"), format!("{out}_scale"));
        ensure!(![&acc, &float, &scale].iter().any(|n| taken(graph, n)), "layer '{name}': the names of its integer path are taken");
        let chain = [
            node(
                format!("{out}_MatMulInteger"),
                "MatMulInteger",
                vec![x_q, format!("{name}_quantized"), x_zero],
                vec![acc.clone()],
                vec![],
            ),
            node(format!("{out}_Cast"), "Cast", vec![acc], vec![float.clone()], vec![int_attr("to", DataType::F32.onnx_code() as i64)]),
            node(format!("{out}_scale_Mul"), "Mul", vec![x_scale, format!("{name}_scale")], vec![scale.clone()], vec![]),
            node(format!("{out}_Mul"), "Mul", vec![float, scale], vec![out.clone()], vec![]),
        ];
        graph.node.splice(at..=at, chain);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantize::weights::quantize;
    use distq_runtime::testing::ModelBuilder;
    use distq_runtime::{Session, Tensor};
    use prost::Message;

    /// Two int8 MatMuls reading one activation (as an attention block's projections), one
    /// with a bias Add: one DynamicQuantizeLinear serves both, each runs MatMulInteger, and
    /// the outputs are the integer arithmetic's, `(Σ (x_q − x_zero) · w_q) · x_scale · w_scale`.
    #[test]
    fn int8_matmuls_run_on_integers_with_their_input_quantized_once() {
        let (k, n) = (64, 16);
        let w = |seed: usize| {
            Tensor::from_vec(vec![k, n], (0..k * n).map(|i| (((i + seed) * 7919) % 211) as f32 / 100.0 - 1.05).collect()).unwrap()
        };
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let model = ModelBuilder::new(13)
            .input("x", DataType::F32, &[2, 3, k as i64])
            .initializer("wa", &w(0))
            .initializer("wb", &w(5))
            .initializer("bias", &Tensor::from_vec(vec![n], bias.clone()).unwrap())
            .node("MatMul", &["x", "wa"], &["ya"], vec![])
            .node("Add", &["bias", "ya"], &["a"], vec![])
            .node("MatMul", &["x", "wb"], &["b"], vec![])
            .output("a", DataType::F32, &[2, 3, n as i64])
            .output("b", DataType::F32, &[2, 3, n as i64])
            .build();
        let layers = quantizable_layers(&Model::from_bytes(model.encode_to_vec()).unwrap()).unwrap();
        assert_eq!(layers.len(), 2);
        let quantized: Vec<Quantized> = layers.iter().map(|l| quantize(&l.values, &l.shape, Precision::Int8, l.layout).unwrap()).collect();
        let lowered: Vec<Lowered> =
            layers.iter().zip(&quantized).map(|(layer, quantized)| Lowered { layer, quantized, bias: None, activation: None }).collect();
        let out = rewrite(&model, &lowered).unwrap();
        let ops: Vec<&str> = out.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_deref().unwrap()).collect();
        assert_eq!(ops, ["DynamicQuantizeLinear", "MatMulInteger", "Cast", "Mul", "Mul", "Add", "MatMulInteger", "Cast", "Mul", "Mul"]);

        let x: Vec<f32> = (0..2 * 3 * k).map(|i| (i as f32 * 0.37).sin() * 3.0 - 0.5).collect();
        let got = Session::new(Model::from_bytes(out.encode_to_vec()).unwrap())
            .run(vec![("x", Tensor::from_vec(vec![2, 3, k], x.clone()).unwrap())])
            .unwrap();
        // DynamicQuantizeLinear's definition: uint8 over the range widened to include 0.
        let (lo, hi) = x.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let x_scale = (hi - lo) / 255.0;
        let x_zero = (-lo / x_scale).round_ties_even().clamp(0.0, 255.0);
        let x_q: Vec<f32> = x.iter().map(|&v| ((v / x_scale).round_ties_even() + x_zero).clamp(0.0, 255.0) - x_zero).collect();
        for (output, q, b) in [(&got[0].1, &quantized[0], Some(&bias)), (&got[1].1, &quantized[1], None)] {
            let Stored::I8(w_q) = &q.values else { panic!("int8 weights") };
            let y = output.as_slice::<f32>().unwrap();
            for (r, row) in x_q.chunks(k).enumerate() {
                for j in 0..n {
                    let acc: f32 = (0..k).map(|p| row[p] * w_q[p * n + j] as f32).sum();
                    let want = acc * (x_scale * q.scales[j]) + b.map_or(0.0, |b| b[j]);
                    assert!((y[r * n + j] - want).abs() <= 1e-4 * want.abs().max(1.0), "row {r} column {j}: {} vs {want}", y[r * n + j]);
                }
            }
        }
    }

    fn layer(op: &str, shape: Vec<usize>, groups: usize, layout: Layout) -> Layer {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 211) as f32 / 100.0 - 1.05).collect();
        let channels = shape[layout.channel_axis];
        let bias = Some(Bias { site: BiasSite::Input2, values: (0..channels).map(|c| c as f32 * 0.1).collect() });
        Layer { name: "w".into(), op: op.into(), node_output: "y".into(), activation: "x".into(), groups, shape, layout, values, bias }
    }

    /// Σ over an output channel's weights times the mean of the input channel each reads, plus
    /// the bias: the mean output the correction must preserve.
    fn mean_outputs(l: &Layer, w: &[f32], bias: &[f32], means: &[f32]) -> Vec<f32> {
        let mut out = bias.to_vec();
        for (i, &v) in w.iter().enumerate() {
            let (o, input) = match l.op.as_str() {
                "Conv" => {
                    let (m, c) = (l.shape[0], l.shape[1]);
                    let inner = w.len() / (m * c);
                    let o = i / (c * inner);
                    (o, (o / (m / l.groups)) * c + i / inner % c)
                }
                _ if l.layout.channel_axis == 0 => (i / l.shape[1], i % l.shape[1]),
                _ => (i % l.shape[1], i / l.shape[1]),
            };
            out[o] += v * means[input];
        }
        out
    }

    #[test]
    fn bias_correction_restores_the_mean_output() {
        let cases = [
            (layer("Conv", vec![6, 4, 3, 3], 1, Layout { channel_axis: 0, reduction_axis: 1 }), 4),
            (layer("Conv", vec![6, 2, 3, 3], 3, Layout { channel_axis: 0, reduction_axis: 1 }), 6),
            (layer("MatMul", vec![40, 5], 1, Layout { channel_axis: 1, reduction_axis: 0 }), 40),
            (layer("Gemm", vec![40, 5], 1, Layout { channel_axis: 1, reduction_axis: 0 }), 40),
            (layer("Gemm", vec![5, 40], 1, Layout { channel_axis: 0, reduction_axis: 1 }), 40),
        ];
        for (l, inputs) in cases {
            let means: Vec<f32> = (0..inputs).map(|i| 0.5 + i as f32 * 0.37).collect();
            let q = quantize(&l.values, &l.shape, Precision::Int4 { block: 16, pow2_scales: false }, l.layout)
                .unwrap_or_else(|_| quantize(&l.values, &l.shape, Precision::Int8, l.layout).unwrap());
            let restored = q.dequantized();
            let corrected = l.corrected_bias(&restored, &means).unwrap();
            let bias = &l.bias.as_ref().unwrap().values;
            let (want, got, uncorrected) = (
                mean_outputs(&l, &l.values, bias, &means),
                mean_outputs(&l, &restored, &corrected, &means),
                mean_outputs(&l, &restored, bias, &means),
            );
            for ((w, g), u) in want.iter().zip(&got).zip(&uncorrected) {
                assert!((w - g).abs() < 1e-4, "{} {:?}: mean output {g} vs fp32 {w}", l.op, l.shape);
                assert!((w - u).abs() > (w - g).abs(), "the correction changes something");
            }
            assert!(l.corrected_bias(&restored, &means[1..]).is_none(), "means of the wrong length are refused");
        }
    }
}
