//! Preparing the fp32 graph for quantization, before layers are looked for:
//!
//! - `Constant` nodes holding tensors become initializers of the same name (exporters such
//!   as paddle2onnx put every weight in a Constant node);
//! - `Conv → BatchNormalization` (inference form, the Conv's output read only by the BN)
//!   folds into the Conv: `W' = W·s`, `b' = (b − mean)·s + B` with `s = scale / √(var + ε)`
//!   per output channel — one op less, and the BN's parameters stop taking space as floats;
//! - small initializers with equal contents merge into one (exporters emit a Constant per
//!   use of the same scalar: 80 on PP-OCR's classifier).
//!
//! The fp32 reference the quantized model is measured against stays the original graph, so
//! folding's own rounding is part of every reported metric.

use super::qdq::f32_tensor;
use anyhow::{Context, Result};
use distq_runtime::onnx::WeightFiles;
use distq_runtime::onnx::proto::tensor_proto::DataLocation;
use distq_runtime::onnx::proto::{GraphProto, ModelProto, NodeProto, TensorProto};
use distq_runtime::{DataType, Model};
use prost::Message;
use std::collections::{HashMap, HashSet};

/// The prepared model, or `None` when nothing changes.
pub fn prepare(model: &ModelProto) -> Option<ModelProto> {
    let mut out = model.clone();
    let graph = out.graph.as_mut()?;
    let changed = constants_as_initializers(graph) | fold_batch_norms(graph) | merge_equal_constants(graph);
    changed.then_some(out)
}

/// Turns every `Constant` node holding a tensor into an initializer; whether any was.
fn constants_as_initializers(graph: &mut GraphProto) -> bool {
    let is_tensor_constant = |n: &NodeProto| {
        n.op_type.as_deref() == Some("Constant")
            && matches!(n.domain.as_deref(), None | Some(""))
            && n.output.len() == 1
            && matches!(n.attribute.as_slice(), [a] if a.name.as_deref() == Some("value") && a.t.is_some())
    };
    if !graph.node.iter().any(is_tensor_constant) {
        return false;
    }
    let (constants, nodes): (Vec<NodeProto>, Vec<NodeProto>) = std::mem::take(&mut graph.node).into_iter().partition(is_tensor_constant);
    graph.node = nodes;
    for mut c in constants {
        if let Some(mut t) = c.attribute.remove(0).t {
            t.name = c.output.pop();
            graph.initializer.push(t);
        }
    }
    true
}

/// Initializers at most this large (encoded) are compared for merging.
const MERGE_MAX_BYTES: usize = 256;

/// Merges small initializers with equal type, shape and contents into the first of them;
/// whether any merged. Graph inputs and outputs keep theirs (a caller may bind them), and
/// graphs with subgraphs are left alone (a subgraph may read an outer name).
fn merge_equal_constants(graph: &mut GraphProto) -> bool {
    if graph.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())) {
        return false;
    }
    let bound: HashSet<String> = graph.input.iter().chain(&graph.output).filter_map(|v| v.name.clone()).collect();
    let mut first: HashMap<Vec<u8>, String> = HashMap::new();
    let mut alias: HashMap<String, String> = HashMap::new();
    graph.initializer.retain(|t| {
        let Some(name) = t.name.clone().filter(|n| !bound.contains(n) && t.encoded_len() <= MERGE_MAX_BYTES) else { return true };
        let contents = TensorProto { name: None, ..t.clone() }.encode_to_vec();
        match first.get(&contents) {
            Some(kept) => {
                alias.insert(name, kept.clone());
                false
            }
            None => {
                first.insert(contents, name);
                true
            }
        }
    });
    for input in graph.node.iter_mut().flat_map(|n| n.input.iter_mut()) {
        if let Some(kept) = alias.get(input.as_str()) {
            input.clone_from(kept);
        }
    }
    !alias.is_empty()
}

/// `model` with every initializer kept in an external data file read inline (the quantizer
/// builds and runs its candidates in memory), or `None` when all are inline already.
pub fn inline_external(model: &Model) -> Result<Option<ModelProto>> {
    let file = model.file();
    let external = DataLocation::External as i32;
    if !file.proto.graph.as_ref().is_some_and(|g| g.initializer.iter().any(|t| t.data_location == Some(external))) {
        return Ok(None);
    }
    let mut files = WeightFiles::new(file.base_dir.clone());
    let mut out = file.proto.clone();
    let initializers = &mut out.graph.as_mut().context("model has no graph")?.initializer;
    for t in initializers.iter_mut().filter(|t| t.data_location == Some(external)) {
        let name = t.name.clone().unwrap_or_default();
        let bytes = files.resolve(&name, &t.external_data).with_context(|| format!("{}: initializer '{name}'", file.origin))?;
        t.raw_data = Some(bytes);
        t.external_data.clear();
        t.data_location = None;
    }
    Ok(Some(out))
}

/// The f32 values of an inline initializer (external data is left alone).
fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != Some(DataType::F32.onnx_code()) || !t.external_data.is_empty() {
        return None;
    }
    match &t.raw_data {
        Some(raw) if raw.len() % 4 == 0 => Some(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
        Some(_) => None,
        None => Some(t.float_data.clone()),
    }
}

/// Folds each `Conv → BatchNormalization` pair; whether any was.
fn fold_batch_norms(graph: &mut GraphProto) -> bool {
    let initializers: HashMap<String, TensorProto> =
        graph.initializer.iter().map(|t| (t.name.clone().unwrap_or_default(), t.clone())).collect();
    let mut reads: HashMap<String, usize> = HashMap::new();
    for input in graph.node.iter().flat_map(|n| n.input.iter()).chain(graph.output.iter().filter_map(|o| o.name.as_ref())) {
        *reads.entry(input.clone()).or_default() += 1;
    }
    let writer: HashMap<String, usize> =
        graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i))).collect();
    let attr = |n: &NodeProto, name: &str| n.attribute.iter().find(|a| a.name.as_deref() == Some(name)).cloned();
    let mut folded: Vec<(usize, usize, Vec<TensorProto>)> = Vec::new();
    for (b, bn) in graph.node.iter().enumerate() {
        if bn.op_type.as_deref() != Some("BatchNormalization") || bn.output.len() != 1 || bn.input.len() != 5 {
            continue;
        }
        if attr(bn, "training_mode").and_then(|a| a.i).unwrap_or(0) != 0 {
            continue;
        }
        let Some(&c) = writer.get(&bn.input[0]) else { continue };
        let conv = &graph.node[c];
        if conv.op_type.as_deref() != Some("Conv") || reads.get(&bn.input[0]) != Some(&1) || conv.input.len() < 2 {
            continue;
        }
        let get = |name: &str| initializers.get(name).and_then(floats);
        let (Some(w), Some(scale), Some(shift), Some(mean), Some(var)) =
            (get(&conv.input[1]), get(&bn.input[1]), get(&bn.input[2]), get(&bn.input[3]), get(&bn.input[4]))
        else {
            continue;
        };
        let m = scale.len();
        let bias = match conv.input.get(2).filter(|s| !s.is_empty()) {
            Some(name) => match get(name) {
                Some(v) => v,
                None => continue,
            },
            None => vec![0.0; m],
        };
        if m == 0 || [shift.len(), mean.len(), var.len(), bias.len()].iter().any(|&l| l != m) || w.len() % m != 0 {
            continue;
        }
        let epsilon = attr(bn, "epsilon").and_then(|a| a.f).unwrap_or(1e-5) as f64;
        let s: Vec<f64> = scale.iter().zip(&var).map(|(&g, &v)| g as f64 / (v as f64 + epsilon).sqrt()).collect();
        let per = w.len() / m;
        let w2: Vec<f32> = w.iter().enumerate().map(|(i, &v)| (v as f64 * s[i / per]) as f32).collect();
        let b2: Vec<f32> = (0..m).map(|j| ((bias[j] as f64 - mean[j] as f64) * s[j] + shift[j] as f64) as f32).collect();
        let dims: Vec<usize> = initializers[&conv.input[1]].dims.iter().map(|&d| d as usize).collect();
        let tensors = vec![
            f32_tensor(format!("{}_bn_folded", conv.input[1]), &dims, &w2),
            f32_tensor(format!("{}_bias_bn_folded", bn.output[0]), &[m], &b2),
        ];
        folded.push((c, b, tensors));
    }
    if folded.is_empty() {
        return false;
    }
    let mut dropped = HashSet::new();
    for (c, b, tensors) in folded {
        let y = graph.node[b].output[0].clone();
        let conv = &mut graph.node[c];
        conv.input.resize(3, String::new());
        conv.input[1] = tensors[0].name.clone().unwrap_or_default();
        conv.input[2] = tensors[1].name.clone().unwrap_or_default();
        conv.output[0] = y;
        graph.initializer.extend(tensors);
        dropped.insert(b);
    }
    let mut index = 0;
    graph.node.retain(|_| {
        index += 1;
        !dropped.contains(&(index - 1))
    });
    // Initializers nothing reads any more (the unfolded weights, the BN parameters).
    let read: HashSet<&String> =
        graph.node.iter().flat_map(|n| n.input.iter()).chain(graph.output.iter().filter_map(|o| o.name.as_ref())).collect();
    let keep: Vec<bool> = graph.initializer.iter().map(|t| t.name.as_ref().is_some_and(|n| read.contains(n))).collect();
    let mut keep = keep.into_iter();
    graph.initializer.retain(|_| keep.next().unwrap_or(true));
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use distq_runtime::testing::{Attr, ModelBuilder, tensor_proto};
    use distq_runtime::{Model, Session, Tensor};
    use prost::Message;

    #[test]
    fn conv_batch_norm_folds_and_computes_the_same() {
        let t = |shape: Vec<usize>, f: &dyn Fn(usize) -> f32| {
            Tensor::from_vec(shape.clone(), (0..shape.iter().product()).map(f).collect()).unwrap()
        };
        let model = ModelBuilder::new(11)
            .input("x", DataType::F32, &[1, 4, 6, 6])
            .initializer("w", &t(vec![6, 2, 3, 3], &|i| ((i * 37) % 19) as f32 / 10.0 - 0.9))
            .initializer("gamma", &t(vec![6], &|i| 0.5 + i as f32 * 0.3))
            .initializer("beta", &t(vec![6], &|i| i as f32 * 0.1 - 0.2))
            .initializer("mean", &t(vec![6], &|i| i as f32 * 0.05))
            .initializer("var", &t(vec![6], &|i| 0.2 + i as f32))
            .node("Conv", &["x", "w"], &["c"], vec![("group", Attr::Int(2)), ("pads", Attr::Ints(vec![1, 1, 1, 1]))])
            .node("BatchNormalization", &["c", "gamma", "beta", "mean", "var"], &["y"], vec![("epsilon", Attr::Float(1e-3))])
            .output("y", DataType::F32, &[1, 6, 6, 6])
            .build();
        let folded = prepare(&model).unwrap();
        let graph = folded.graph.as_ref().unwrap();
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_deref().unwrap()).collect();
        assert_eq!(ops, ["Conv"]);
        assert_eq!(graph.initializer.len(), 2, "only the folded weight and bias remain");
        let x = t(vec![1, 4, 6, 6], &|i| ((i * 13) % 7) as f32 - 3.0);
        let run =
            |m: &ModelProto| Session::new(Model::from_bytes(m.encode_to_vec()).unwrap()).run(vec![("x", x.clone())]).unwrap().remove(0).1;
        let (want, got) = (run(&model), run(&folded));
        for (a, b) in want.as_slice::<f32>().unwrap().iter().zip(got.as_slice::<f32>().unwrap()) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        assert!(prepare(&folded).is_none(), "nothing left to prepare");
    }

    #[test]
    fn equal_constants_merge_and_bound_names_stay() {
        let constant = |v: f32| vec![("value", Attr::Tensor(tensor_proto("", &Tensor::scalar(v))))];
        let model = ModelBuilder::new(17)
            .input("x", DataType::F32, &[2])
            .initializer("three_out", &Tensor::scalar(3f32))
            .node("Constant", &[], &["three_a"], constant(3.0))
            .node("Constant", &[], &["three_b"], constant(3.0))
            .node("Constant", &[], &["six"], constant(6.0))
            .node("Add", &["x", "three_a"], &["a"], vec![])
            .node("Mul", &["a", "three_b"], &["b"], vec![])
            .node("Div", &["b", "six"], &["y"], vec![])
            .output("y", DataType::F32, &[2])
            .output("three_out", DataType::F32, &[])
            .build();
        let merged = prepare(&model).unwrap();
        let graph = merged.graph.as_ref().unwrap();
        let names: Vec<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        assert_eq!(names, ["three_out", "three_a", "six"], "the output keeps its own copy");
        assert_eq!(graph.node[1].input, ["a", "three_a"]);
        let x = Tensor::from_vec(vec![2], vec![1f32, -9.0]).unwrap();
        let run =
            |m: &ModelProto| Session::new(Model::from_bytes(m.encode_to_vec()).unwrap()).run(vec![("x", x.clone())]).unwrap().remove(0).1;
        assert_eq!(run(&model).as_slice::<f32>().unwrap(), run(&merged).as_slice::<f32>().unwrap());
    }
}
