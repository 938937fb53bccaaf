//! Raising a graph's default-domain opset to what its quantized form needs (13 for per-axis
//! int8 `DequantizeLinear`, 21 for int4 blocks), rewriting the ops whose signature changed
//! on the way so the graph computes the same thing:
//!
//! - `Squeeze`, `Unsqueeze` (13), `ReduceSum` (13) and the other `Reduce*` (18): the `axes`
//!   attribute becomes an int64 input;
//! - `Split` (13): the `split` attribute becomes an input; from 18 an equal split names its
//!   `num_outputs`;
//! - `Softmax`, `LogSoftmax`, `Hardmax` (13): before 13 they worked on the input coerced to
//!   2-D at `axis` (default 1); unless `axis` is −1 (the same either way), that is spelled
//!   out as `Flatten(axis) → op(axis = −1) → Reshape(Shape(x))`.
//!
//! Ops with any other incompatible change refuse with the node named.

use super::qdq::{int_attr, raw_tensor};
use anyhow::{Context, Result, bail};
use distq_runtime::DataType;
use distq_runtime::onnx::proto::{AttributeProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};

fn is_default(domain: &Option<String>) -> bool {
    matches!(domain.as_deref(), None | Some("") | Some("ai.onnx"))
}

/// The default domain's opset.
pub fn default_opset(model: &ModelProto) -> i64 {
    model.opset_import.iter().find(|o| is_default(&o.domain)).and_then(|o| o.version).unwrap_or(1)
}

/// Removes attribute `name` from `node`, returning its ints.
fn take_ints(node: &mut NodeProto, name: &str) -> Option<Vec<i64>> {
    let at = node.attribute.iter().position(|a| a.name.as_deref() == Some(name))?;
    Some(node.attribute.remove(at).ints)
}

fn int_attr_value(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name.as_deref() == Some(name)).and_then(|a| a.i)
}

/// An int64 1-D initializer.
fn ints_tensor(name: &str, values: &[i64]) -> TensorProto {
    raw_tensor(name.into(), &[values.len()], DataType::I64.onnx_code(), values.iter().flat_map(|v| v.to_le_bytes()).collect())
}

/// Opset at which each rewritable op changed.
fn changed_at(op: &str) -> Option<i64> {
    Some(match op {
        "Squeeze" | "Unsqueeze" | "ReduceSum" | "Split" | "Softmax" | "LogSoftmax" | "Hardmax" => 13,
        "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceLogSum" | "ReduceLogSumExp"
        | "ReduceSumSquare" => 18,
        _ => return None,
    })
}

/// Ops that changed incompatibly with no rewrite here, and when.
const REFUSED: &[(&str, i64)] = &[("GroupNormalization", 21), ("Dropout", 12), ("Upsample", 10), ("Resize", 11), ("Pad", 11), ("Clip", 11)];

/// Raises the default opset of `model` to `target` (no-op when already there).
pub fn raise(model: &mut ModelProto, target: i64) -> Result<()> {
    let current = default_opset(model);
    if current >= target {
        return Ok(());
    }
    let graph = model.graph.as_mut().context("model has no graph")?;
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut tensors = Vec::new();
    for mut node in std::mem::take(&mut graph.node) {
        let op = node.op_type.clone().unwrap_or_default();
        let name = node.name.clone().unwrap_or_else(|| node.output.first().cloned().unwrap_or_default());
        if !is_default(&node.domain) {
            nodes.push(node);
            continue;
        }
        if let Some(&(_, at)) = REFUSED.iter().find(|(o, at)| *o == op && current < *at && *at <= target) {
            bail!("node '{name}' ({op}) changed meaning at opset {at}; the model is at opset {current}, the quantized form needs {target}");
        }
        if !changed_at(&op).is_some_and(|at| current < at && at <= target) {
            nodes.push(node);
            continue;
        }
        match op.as_str() {
            "Softmax" | "LogSoftmax" | "Hardmax" => {
                let axis = int_attr_value(&node, "axis").unwrap_or(1);
                if axis == -1 {
                    nodes.push(node);
                    continue;
                }
                let (x, y) = (node.input[0].clone(), node.output[0].clone());
                let part = |s: &str| format!("{name}_{s}");
                let step = |op: &str, inputs: Vec<String>, output: String, attribute: Vec<AttributeProto>| NodeProto {
                    name: Some(format!("{name}_{op}")),
                    op_type: Some(op.into()),
                    input: inputs,
                    output: vec![output],
                    attribute,
                    ..Default::default()
                };
                nodes.push(step("Shape", vec![x.clone()], part("shape"), vec![]));
                nodes.push(step("Flatten", vec![x], part("2d"), vec![int_attr("axis", axis)]));
                node.attribute.retain(|a| a.name.as_deref() != Some("axis"));
                node.attribute.push(int_attr("axis", -1));
                node.input = vec![part("2d")];
                node.output = vec![part("out_2d")];
                nodes.push(node);
                nodes.push(step("Reshape", vec![part("out_2d"), part("shape")], y, vec![]));
            }
            "Split" => {
                match take_ints(&mut node, "split") {
                    Some(split) => {
                        tensors.push(ints_tensor(&format!("{name}_split"), &split));
                        node.input.truncate(1);
                        node.input.push(format!("{name}_split"));
                    }
                    None if target >= 18 => node.attribute.push(int_attr("num_outputs", node.output.len() as i64)),
                    None => {}
                }
                nodes.push(node);
            }
            // Squeeze, Unsqueeze and the reductions: `axes` moves to input 1.
            _ => {
                if let Some(axes) = take_ints(&mut node, "axes") {
                    tensors.push(ints_tensor(&format!("{name}_axes"), &axes));
                    node.input.truncate(1);
                    node.input.push(format!("{name}_axes"));
                }
                nodes.push(node);
            }
        }
    }
    graph.node = nodes;
    graph.initializer.extend(tensors);
    for o in model.opset_import.iter_mut().filter(|o| is_default(&o.domain)) {
        o.version = Some(target);
    }
    if !model.opset_import.iter().any(|o| is_default(&o.domain)) {
        model.opset_import.push(OperatorSetIdProto { domain: Some(String::new()), version: Some(target) });
    }
    // INT4/UINT4 and opset 21 arrived with IR version 10; per-axis QDQ needs IR 7.
    let ir = if target >= 21 { 10 } else { 7 };
    model.ir_version = Some(model.ir_version.unwrap_or(ir).max(ir));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use distq_runtime::testing::{Attr, ModelBuilder};
    use distq_runtime::{DataType, Model, Session, Tensor};
    use prost::Message;

    /// An opset-11 graph using every rewritten op: Unsqueeze, Squeeze, Split, ReduceSum,
    /// ReduceMean and a 2-D-coerced Softmax on a rank-3 input.
    fn old_graph() -> ModelProto {
        ModelBuilder::new(11)
            .input("x", DataType::F32, &[2, 3, 4])
            .node("Unsqueeze", &["x"], &["u"], vec![("axes", Attr::Ints(vec![0]))])
            .node("Squeeze", &["u"], &["s"], vec![("axes", Attr::Ints(vec![0]))])
            .node("Split", &["s"], &["a", "b"], vec![("axis", Attr::Int(2)), ("split", Attr::Ints(vec![1, 3]))])
            .node("Split", &["s"], &["c", "d"], vec![("axis", Attr::Int(2))])
            .node("ReduceSum", &["b"], &["rs"], vec![("axes", Attr::Ints(vec![-1]))])
            .node("ReduceMean", &["c"], &["rm"], vec![("axes", Attr::Ints(vec![1])), ("keepdims", Attr::Int(0))])
            .node("Softmax", &["s"], &["soft"], vec![])
            .output("a", DataType::F32, &[2, 3, 1])
            .output("d", DataType::F32, &[2, 3, 2])
            .output("rs", DataType::F32, &[2, 3, 1])
            .output("rm", DataType::F32, &[2, 2])
            .output("soft", DataType::F32, &[2, 3, 4])
            .build()
    }

    #[test]
    fn raised_graphs_compute_the_same() {
        let x = Tensor::from_vec(vec![2, 3, 4], (0..24).map(|i| (i as f32 * 0.37).sin() * 3.0).collect()).unwrap();
        let run = |m: &ModelProto| Session::new(Model::from_bytes(m.encode_to_vec()).unwrap()).run(vec![("x", x.clone())]).unwrap();
        let want = run(&old_graph());
        // The old Softmax normalizes over the last 2 axes together (12 values per batch).
        let soft = want.iter().find(|(n, _)| n == "soft").unwrap().1.as_slice::<f32>().unwrap().to_vec();
        assert!((soft[..12].iter().sum::<f32>() - 1.0).abs() < 1e-5);
        for target in [13, 18, 21] {
            let mut m = old_graph();
            raise(&mut m, target).unwrap();
            assert_eq!(default_opset(&m), target);
            let ops: Vec<&str> = m.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_deref().unwrap()).collect();
            assert!(ops.contains(&"Flatten") && ops.contains(&"Reshape"), "{ops:?}");
            let got = run(&m);
            for ((name, a), (_, b)) in want.iter().zip(&got) {
                assert_eq!(a.shape(), b.shape(), "{name} at opset {target}");
                assert_eq!(a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap(), "{name} at opset {target}");
            }
        }
        let mut m = ModelBuilder::new(11)
            .input("x", DataType::F32, &[2])
            .node("GroupNormalization", &["x"], &["y"], vec![])
            .output("y", DataType::F32, &[2])
            .build();
        let err = raise(&mut m, 21).unwrap_err().to_string();
        assert!(err.contains("GroupNormalization") && err.contains("opset 21"), "{err}");
    }
}
