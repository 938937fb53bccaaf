//! Students derived from a teacher.
//!
//! `layers=K` keeps K of a transformer's N layers, evenly spaced and always the first and
//! the last (DistilBERT's initialization from the teacher), with the embeddings and
//! everything after the encoder: a kept layer reads the previous kept layer's output, and
//! what the dropped layers alone needed is pruned. Layers are found by `layer.<i>` /
//! `layers.<i>` in node or weight names (PyTorch exports and our own both name them so).
//!
//! `width=F` narrows an MLP or CNN: every hidden layer (Conv, Gemm, MatMul with a weight
//! initializer) keeps `ceil(F·channels)` of its output channels, the ones with the largest
//! L1 weight norm, and the layers reading them keep the matching input channels (through
//! activations, pooling, batch norm, per-channel constants and Flatten, where one channel is
//! a run of `H·W` features). The layers that produce the graph's outputs keep their outputs,
//! so the student answers in the teacher's format. Weights start from the teacher's.

use anyhow::{Context, Result, bail, ensure};
use distq_runtime::onnx::proto::{ModelProto, NodeProto, TensorProto};
use distq_runtime::onnx::{OnnxFile, WeightFiles, tensor_from_proto};
use distq_runtime::testing::tensor_proto;
use std::collections::{HashMap, HashSet};

/// Which channels of a value survive, and how many there were.
#[derive(Clone, Debug, PartialEq)]
struct Kept {
    channels: usize,
    keep: Vec<usize>,
}

/// Ops that carry a value's channels through unchanged.
const CHANNEL_PRESERVING: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Erf",
    "Identity",
    "Dropout",
    "Cast",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
];

fn is_layer(op: &str) -> bool {
    matches!(op, "Conv" | "Gemm" | "MatMul")
}

/// A float initializer as (values, shape).
struct Weights<'a> {
    values: HashMap<String, (Vec<f32>, Vec<usize>)>,
    protos: &'a [TensorProto],
}

impl Weights<'_> {
    fn get(&self, name: &str) -> Option<&(Vec<f32>, Vec<usize>)> {
        self.values.get(name)
    }

    fn is_init(&self, name: &str) -> bool {
        self.protos.iter().any(|t| t.name.as_deref() == Some(name))
    }
}

/// Keeps entries `keep` of `axis` (each a run of `run` consecutive positions on that axis).
fn select(values: &[f32], shape: &[usize], axis: usize, keep: &[usize], run: usize) -> (Vec<f32>, Vec<usize>) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * keep.len() * run * inner);
    for o in 0..outer {
        for &k in keep {
            for r in 0..run {
                let at = (o * shape[axis] + k * run + r) * inner;
                out.extend_from_slice(&values[at..at + inner]);
            }
        }
    }
    let mut new_shape = shape.to_vec();
    new_shape[axis] = keep.len() * run;
    (out, new_shape)
}

/// The `count` indices along `axis` with the largest L1 norm, in ascending order.
fn strongest(values: &[f32], shape: &[usize], axis: usize, count: usize) -> Vec<usize> {
    let n = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut norms = vec![0f64; n];
    for (i, v) in values.iter().enumerate() {
        norms[(i / inner) % n] += f64::from(v.abs());
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| norms[b].total_cmp(&norms[a]).then(a.cmp(&b)));
    let mut keep: Vec<usize> = order.into_iter().take(count).collect();
    keep.sort_unstable();
    keep
}

/// The layers whose outputs reach a graph output without passing another layer.
fn final_layers(nodes: &[NodeProto], outputs: &[String]) -> HashSet<usize> {
    let producer: HashMap<&str, usize> =
        nodes.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let mut finals = HashSet::new();
    let mut stack: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    while let Some(v) = stack.pop() {
        let Some(&i) = producer.get(v) else { continue };
        if !seen.insert(i) {
            continue;
        }
        if is_layer(nodes[i].op_type.as_deref().unwrap_or("")) {
            finals.insert(i);
        } else {
            stack.extend(nodes[i].input.iter().map(String::as_str));
        }
    }
    finals
}

/// A copy of `file`'s model with every hidden layer narrowed to `factor` of its width.
pub fn narrow_width(file: &OnnxFile, factor: f64) -> Result<ModelProto> {
    ensure!(factor > 0.0 && factor <= 1.0, "derive width={factor}: the factor must lie in (0, 1]");
    let mut model = file.proto.clone();
    let graph = model.graph.as_mut().context("the model has no graph")?;
    let mut files = WeightFiles::new(file.base_dir.clone());
    let mut values = HashMap::new();
    for t in &graph.initializer {
        let name = t.name.clone().unwrap_or_default();
        let tensor = tensor_from_proto(t, &mut files)?;
        if tensor.dtype() == distq_runtime::DataType::F32 {
            values.insert(name, (tensor.to_f32s()?, tensor.shape().to_vec()));
        }
    }
    let weights = Weights { values, protos: &graph.initializer };
    let outputs: Vec<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let finals = final_layers(&graph.node, &outputs);
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let mut kept: HashMap<String, Kept> = HashMap::new();
    let mut replaced: HashMap<String, (Vec<f32>, Vec<usize>)> = HashMap::new();
    let mut narrowed_layers = 0;
    for (index, node) in graph.node.iter().enumerate() {
        let op = node.op_type.clone().unwrap_or_default();
        let what = format!("derive width: node {index} '{}' ({op})", node.name.as_deref().unwrap_or(""));
        let selected: Vec<(usize, Kept)> = node.input.iter().enumerate().filter_map(|(i, n)| kept.get(n).map(|k| (i, k.clone()))).collect();
        let weight = |replaced: &HashMap<String, (Vec<f32>, Vec<usize>)>, i: usize| -> Result<(String, Vec<f32>, Vec<usize>)> {
            let name = node.input.get(i).cloned().unwrap_or_default();
            let (v, s) = replaced
                .get(&name)
                .or_else(|| weights.get(&name))
                .with_context(|| format!("{what}: input {i} is not a float initializer"))?;
            ensure!(uses.get(name.as_str()) == Some(&1), "{what}: initializer '{name}' is shared by several nodes");
            Ok((name, v.clone(), s.clone()))
        };
        if is_layer(&op) && weights.get(node.input.get(1).map_or("", String::as_str)).is_some() {
            let (w_name, mut w, mut w_shape) = weight(&replaced, 1)?;
            let trans_b = op == "Gemm" && node.attribute.iter().any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1));
            // Axes of the weight holding input and output channels.
            let (in_axis, out_axis) = match op.as_str() {
                "Conv" => (1, 0),
                _ if trans_b => (1, 0),
                _ => (0, 1),
            };
            ensure_not_selected(&selected, 0, &what)?;
            if let Some((_, k)) = selected.first() {
                if op == "Conv" {
                    let group = node.attribute.iter().find(|a| a.name.as_deref() == Some("group")).and_then(|a| a.i).unwrap_or(1);
                    ensure!(group == 1, "{what}: grouped convolution is not supported");
                }
                let features = w_shape[in_axis];
                ensure!(features.is_multiple_of(k.channels), "{what}: {features} input features do not split into {} channels", k.channels);
                (w, w_shape) = select(&w, &w_shape, in_axis, &k.keep, features / k.channels);
            }
            let out_channels = w_shape[out_axis];
            if !finals.contains(&index) {
                let count = ((out_channels as f64 * factor).ceil() as usize).clamp(1, out_channels);
                let keep = strongest(&w, &w_shape, out_axis, count);
                (w, w_shape) = select(&w, &w_shape, out_axis, &keep, 1);
                if node.input.len() > 2 && !node.input[2].is_empty() {
                    let (b_name, b, b_shape) = weight(&replaced, 2)?;
                    let axis = b_shape.len().saturating_sub(1);
                    ensure!(b_shape.get(axis) == Some(&out_channels), "{what}: bias shape {b_shape:?} is not per output channel");
                    replaced.insert(b_name, select(&b, &b_shape, axis, &keep, 1));
                }
                kept.insert(node.output[0].clone(), Kept { channels: out_channels, keep });
                narrowed_layers += 1;
            }
            replaced.insert(w_name, (w, w_shape));
            continue;
        }
        if selected.is_empty() {
            continue;
        }
        let (_, k) = selected[0].clone();
        if CHANNEL_PRESERVING.contains(&op.as_str()) {
            ensure_not_selected(&selected, 0, &what)?;
            kept.insert(node.output[0].clone(), k);
        } else if op == "BatchNormalization" {
            for i in 1..5 {
                let (name, v, s) = weight(&replaced, i)?;
                replaced.insert(name, select(&v, &s, 0, &k.keep, 1));
            }
            kept.insert(node.output[0].clone(), k);
        } else if matches!(op.as_str(), "Add" | "Sub" | "Mul" | "Div") && selected.len() == 1 {
            let other = 1 - selected[0].0;
            let name = node.input[other].clone();
            ensure!(weights.is_init(&name), "{what}: the other operand '{name}' must be a constant to narrow it");
            let (name, v, s) = weight(&replaced, other)?;
            // A per-channel constant is [C], [C,1,1] (NCHW) or [1,C,1,1]: find its channel axis.
            let axis = s.iter().position(|&d| d == k.channels && d > 1);
            match axis {
                Some(a) => {
                    replaced.insert(name, select(&v, &s, a, &k.keep, 1));
                }
                None => ensure!(v.len() == 1, "{what}: constant '{name}' {s:?} is neither a scalar nor per channel"),
            }
            kept.insert(node.output[0].clone(), k);
        } else {
            bail!(
                "{what}: this op reads a narrowed value and cannot be narrowed (supported: layers, {}, BatchNormalization, Add/Sub/Mul/Div by a constant)",
                CHANNEL_PRESERVING.join(", ")
            );
        }
    }
    ensure!(narrowed_layers > 0, "derive width: the model has no hidden layer to narrow");
    for t in &mut graph.initializer {
        let Some(name) = t.name.clone() else { continue };
        if let Some((v, s)) = replaced.remove(&name) {
            *t = tensor_proto(&name, &distq_runtime::Tensor::from_vec(s, v)?);
        }
    }
    // Shapes of intermediate values changed: let loaders infer them again.
    graph.value_info.clear();
    Ok(model)
}

/// The layer index in a name containing `layer.<i>` or `layers.<i>` (dots or slashes after).
fn layer_index(name: &str) -> Option<usize> {
    for key in ["layers.", "layer."] {
        let mut rest = name;
        while let Some(at) = rest.find(key) {
            let after = &rest[at + key.len()..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            let boundary = after[digits.len()..].chars().next().is_none_or(|c| matches!(c, '.' | '/' | '_'));
            if !digits.is_empty() && boundary && (at == 0 || !rest[..at].ends_with(|c: char| c.is_ascii_alphanumeric())) {
                return digits.parse().ok();
            }
            rest = after;
        }
    }
    None
}

/// Which of `n` layers to keep for `k`: evenly spaced, first and last included.
///
/// ```
/// use distq_converter::distill::derive::evenly_spaced;
/// assert_eq!(evenly_spaced(6, 2), [0, 5]);
/// assert_eq!(evenly_spaced(6, 3), [0, 3, 5]);
/// assert_eq!(evenly_spaced(12, 6), [0, 2, 4, 7, 9, 11]);
/// ```
pub fn evenly_spaced(n: usize, k: usize) -> Vec<usize> {
    if k <= 1 {
        return vec![n.saturating_sub(1)];
    }
    (0..k).map(|j| ((j * (n - 1)) as f64 / (k - 1) as f64).round() as usize).collect()
}

/// A copy of `file`'s model keeping `k` of its transformer layers ([`evenly_spaced`]).
pub fn keep_layers(file: &OnnxFile, k: usize) -> Result<ModelProto> {
    let mut model = file.proto.clone();
    let graph = model.graph.as_mut().context("the model has no graph")?;
    let initializers: HashSet<String> = graph.initializer.iter().filter_map(|t| t.name.clone()).collect();
    let tags: Vec<Option<usize>> = graph
        .node
        .iter()
        .map(|n| {
            n.name
                .as_deref()
                .and_then(layer_index)
                .or_else(|| n.input.iter().filter(|i| initializers.contains(*i)).find_map(|i| layer_index(i)))
        })
        .collect();
    let n = tags.iter().flatten().max().map_or(0, |&m| m + 1);
    ensure!(n >= 2, "derive layers: found {n} numbered layers (names with 'layer.<i>'); need at least 2");
    ensure!((1..=n).contains(&k), "derive layers={k}: the teacher has {n} layers");
    let first: Vec<usize> =
        (0..n).map(|l| tags.iter().position(|t| *t == Some(l))).collect::<Option<_>>().context("derive layers: a layer has no nodes")?;
    let last: Vec<usize> = (0..n).map(|l| tags.iter().rposition(|t| *t == Some(l)).unwrap_or(0)).collect();
    for l in 1..n {
        ensure!(last[l - 1] < first[l], "derive layers: the nodes of layers {} and {l} interleave", l - 1);
    }
    // Layer l spans node indices start[l]..=last[l]; its output is its last node's.
    let start: Vec<usize> = (0..n).map(|l| if l == 0 { first[0] } else { last[l - 1] + 1 }).collect();
    let produced_in = |range: std::ops::RangeInclusive<usize>| -> HashSet<String> {
        graph.node[range].iter().flat_map(|node| node.output.iter().cloned()).collect()
    };
    let external = |l: usize| -> HashSet<String> {
        let inside = produced_in(start[l]..=last[l]);
        graph.node[start[l]..=last[l]]
            .iter()
            .flat_map(|node| node.input.iter())
            .filter(|i| !i.is_empty() && !inside.contains(*i) && !initializers.contains(*i))
            .cloned()
            .collect()
    };
    let output: Vec<String> = (0..n).map(|l| graph.node[last[l]].output[0].clone()).collect();
    // The hidden state entering layer 0: what it reads from outside that layer 1 does not
    // (both read the shared attention mask; layer 1 reads layer 0's output instead).
    let (ext0, ext1) = (external(0), external(1));
    ensure!(ext1.contains(&output[0]), "derive layers: layer 1 does not read layer 0's output '{}'", output[0]);
    // Exporters also hoist shape arithmetic out of layer 0: of the candidates, the hidden
    // state is the one read only as layer 1 reads layer 0's output (by the same ops, in the
    // same slots; layer 1 may read it in more ways, such as Shape).
    let readers = |l: usize, value: &str| -> Vec<(String, usize)> {
        let mut uses: Vec<(String, usize)> = graph.node[start[l]..=last[l]]
            .iter()
            .flat_map(|node| {
                node.input.iter().enumerate().filter(|(_, i)| *i == value).map(|(slot, _)| (node.op_type.clone().unwrap_or_default(), slot))
            })
            .collect();
        uses.sort();
        uses
    };
    let pattern = readers(1, &output[0]);
    let entering: Vec<&String> = ext0
        .iter()
        .filter(|v| !ext1.contains(*v))
        .filter(|v| {
            let uses = readers(0, v);
            !uses.is_empty() && uses.iter().all(|u| pattern.contains(u))
        })
        .collect();
    let [input0] = entering.as_slice() else {
        bail!("derive layers: cannot tell which value enters layer 0 (read like layer 0's output is read by layer 1: {entering:?})");
    };
    let mut inputs: Vec<String> = vec![(*input0).clone()];
    inputs.extend(output[..n - 1].iter().cloned());
    let kept = evenly_spaced(n, k);
    let rename = |node: &mut NodeProto, from: &str, to: &str| {
        for i in node.input.iter_mut().filter(|i| *i == from) {
            *i = to.to_string();
        }
    };
    for (j, &l) in kept.iter().enumerate() {
        let previous = if j == 0 { inputs[0].clone() } else { output[kept[j - 1]].clone() };
        for node in &mut graph.node[start[l]..=last[l]] {
            rename(node, &inputs[l], &previous);
        }
    }
    let final_output = output[*kept.last().context("no layer kept")?].clone();
    for node in &mut graph.node[last[n - 1] + 1..] {
        rename(node, &output[n - 1], &final_output);
    }
    for o in graph.output.iter_mut().filter(|o| o.name.as_deref() == Some(output[n - 1].as_str())) {
        o.name = Some(final_output.clone());
    }
    // Drop what no output needs any more.
    let mut needed: HashSet<String> = graph.output.iter().filter_map(|o| o.name.clone()).collect();
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().cloned());
        }
    }
    let mut index = 0;
    graph.node.retain(|_| {
        index += 1;
        keep[index - 1]
    });
    graph.initializer.retain(|t| t.name.as_ref().is_some_and(|n| needed.contains(n)));
    graph.value_info.clear();
    Ok(model)
}

fn ensure_not_selected(selected: &[(usize, Kept)], allowed: usize, what: &str) -> Result<()> {
    if let Some((i, _)) = selected.iter().find(|(i, _)| *i != allowed) {
        bail!("{what}: input {i} comes from a narrowed layer; joining narrowed branches is not supported");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distill::zoo::{CnnWidths, image_cnn};
    use distq_runtime::{DataType, Model, Session, Tensor};
    use prost::Message;

    fn run(model: &ModelProto, image: &Tensor) -> Vec<f32> {
        let session = Session::new(Model::from_bytes(model.encode_to_vec()).unwrap());
        session.run(vec![("image", image.clone())]).unwrap().remove(0).1.to_f32s().unwrap()
    }

    /// Zeroes the odd output channels of every hidden layer: those are then the weakest and
    /// carry nothing, so the half-width student must compute exactly the teacher's logits.
    #[test]
    fn narrowing_drops_exactly_the_weakest_channels() {
        let mut teacher = image_cnn(CnnWidths { conv1: 4, conv2: 6, hidden: 8 }, 3).unwrap();
        for t in &mut teacher.graph.as_mut().unwrap().initializer {
            let name = t.name.clone().unwrap();
            if !["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"].contains(&name.as_str()) {
                continue;
            }
            let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
            let mut v: Vec<f32> = t.raw_data.as_ref().unwrap().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            let per_channel = v.len() / dims[0];
            for (i, x) in v.iter_mut().enumerate() {
                if (i / per_channel) % 2 == 1 {
                    *x = 0.0;
                }
            }
            *t = tensor_proto(&name, &Tensor::from_vec(dims, v).unwrap());
        }
        let file = OnnxFile::decode(teacher.encode_to_vec().into(), None, "teacher".into()).unwrap();
        let student = narrow_width(&file, 0.5).unwrap();
        let shapes: HashMap<String, Vec<i64>> =
            student.graph.as_ref().unwrap().initializer.iter().map(|t| (t.name.clone().unwrap(), t.dims.clone())).collect();
        assert_eq!(shapes["conv1.weight"], [2, 1, 3, 3]);
        assert_eq!(shapes["conv2.weight"], [3, 2, 3, 3]);
        assert_eq!(shapes["fc1.weight"], [4, 3 * 49]);
        assert_eq!(shapes["fc2.weight"], [10, 4], "the output layer keeps its 10 classes");
        let pixels: Vec<u8> = (0..2 * 784).map(|i| ((i * 37) % 256) as u8).collect();
        let image = Tensor::from_vec(vec![2, 1, 28, 28], pixels).unwrap();
        let (want, got) = (run(&teacher, &image), run(&student, &image));
        assert_eq!(want.len(), got.len());
        for (a, b) in want.iter().zip(&got) {
            assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
        }
        // Width 1 is the teacher itself.
        assert_eq!(run(&narrow_width(&file, 1.0).unwrap(), &image), want);
    }

    #[test]
    fn unsupported_structures_are_named() {
        let file = |bytes: Vec<u8>| OnnxFile::decode(bytes.into(), None, "m".into()).unwrap();
        let w = Tensor::from_vec(vec![3, 3], vec![1f32; 9]).unwrap();
        let branchy = distq_runtime::testing::ModelBuilder::new(17)
            .input("x", DataType::F32, &[1, 3])
            .initializer("w1", &w)
            .initializer("w2", &w)
            .initializer("w3", &w)
            .node("MatMul", &["x", "w1"], &["a"], vec![])
            .node("MatMul", &["x", "w2"], &["b"], vec![])
            .node("Add", &["a", "b"], &["c"], vec![])
            .node("MatMul", &["c", "w3"], &["y"], vec![])
            .output("y", DataType::F32, &[1, 3])
            .to_bytes();
        let err = format!("{:#}", narrow_width(&file(branchy), 0.5).err().unwrap());
        assert!(err.contains("node 2") && err.contains("Add"), "{err}");
        assert!(
            format!("{:#}", narrow_width(&file(distq_runtime::testing::add_one_model()), 0.5).err().unwrap()).contains("no hidden layer")
        );
        assert!(narrow_width(&file(distq_runtime::testing::add_one_model()), 1.5).is_err());
    }
}

#[cfg(test)]
mod layer_tests {
    use super::*;
    use distq_runtime::testing::ModelBuilder;
    use distq_runtime::{DataType, Model, Session, Tensor};
    use prost::Message;

    /// Four "layers" `h ← relu(h·W_l + s)` sharing a value `s` computed before them, then a
    /// head; keeping 2 must compute layer 0 then layer 3.
    #[test]
    fn keeps_first_and_last_layers_and_rewires_them() {
        let w = |l: usize| Tensor::from_vec(vec![2, 2], vec![1.0 + l as f32, 0.5, -0.25 * l as f32, 1.0]).unwrap();
        let mut b = ModelBuilder::new(17).input("x", DataType::F32, &[1, 2]).node("Neg", &["x"], &["s"], vec![]);
        let mut h = "x".to_string();
        for l in 0..4 {
            b = b
                .initializer(&format!("enc.layer.{l}.w"), &w(l))
                .node("MatMul", &[&h, &format!("enc.layer.{l}.w")], &[&format!("m{l}")], vec![])
                .node("Add", &[&format!("m{l}"), "s"], &[&format!("a{l}")], vec![])
                .node("Relu", &[&format!("a{l}")], &[&format!("h{l}")], vec![]);
            h = format!("h{l}");
        }
        let mut toy = b.node("Neg", &[&h], &["y"], vec![]).output("y", DataType::F32, &[1, 2]).build();
        // Exporters name every node of a layer after it (`m2`, `a2`, `h2` → layer 2).
        for node in &mut toy.graph.as_mut().unwrap().node {
            let out = &node.output[0];
            if out.len() == 2 && out.starts_with(['m', 'a', 'h']) {
                node.name = Some(format!("/enc/layer.{}/{}", &out[1..], node.op_type.as_deref().unwrap()));
            }
        }
        let file = OnnxFile::decode(toy.encode_to_vec().into(), None, "toy".into()).unwrap();
        let x = [0.3f32, -0.7];
        let layer = |l: usize, h: [f32; 2]| {
            let w = w(l).to_f32s().unwrap();
            let v = [h[0] * w[0] + h[1] * w[2] - x[0], h[0] * w[1] + h[1] * w[3] - x[1]];
            [v[0].max(0.0), v[1].max(0.0)]
        };
        let want = layer(3, layer(0, x)).map(|v| -v);
        let student = keep_layers(&file, 2).unwrap();
        let graph = student.graph.as_ref().unwrap();
        assert_eq!(graph.initializer.len(), 2, "the dropped layers' weights are gone");
        assert_eq!(graph.node.len(), 1 + 2 * 3 + 1);
        let y = Session::new(Model::from_bytes(student.encode_to_vec()).unwrap())
            .run(vec![("x", Tensor::from_vec(vec![1, 2], x.to_vec()).unwrap())])
            .unwrap()
            .remove(0)
            .1;
        assert_eq!(y.to_f32s().unwrap(), want);
        assert_eq!(keep_layers(&file, 4).unwrap(), file.proto, "keeping every layer changes nothing");
        assert!(format!("{:#}", keep_layers(&file, 5).err().unwrap()).contains("has 4 layers"));
        assert_eq!(layer_index("/m/encoder/layer.10/attention/MatMul"), Some(10));
        assert_eq!(layer_index("m.encoder.layers.3.w"), Some(3));
        assert_eq!(layer_index("player.3.w"), None);
    }
}
