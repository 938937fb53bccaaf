//! Builds the graph IR from a decoded model: initializers (mapped), `Constant` nodes folded
//! into initializers, ops instantiated through the registry, `If` branches imported
//! recursively, nodes sorted. Unsupported ops fail here, at load time, naming the node.

use super::attrs::Attrs;
use super::proto::{GraphProto, NodeProto, ValueInfoProto, type_proto};
use super::{MAX_DIM, OnnxFile, WeightFiles, tensor_from_proto};
use crate::error::{Error, Result};
use crate::graph::{Dim, Graph, Node, NodeKind, ValueInfo, topological_sort};
use crate::ops::{ImportCtx, importer};
use crate::tensor::{DataType, Tensor, onnx_dtype_name};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Subgraph nesting beyond this is refused (real models nest 2–3 deep; a hostile file could
/// nest until the stack overflows).
const MAX_NESTING: usize = 16;

/// Imports the main graph of `file`.
pub fn import_model(file: &OnnxFile) -> Result<Graph> {
    let graph = file.proto.graph.as_ref().ok_or_else(|| Error::InvalidModel("no graph".into()))?;
    let mut ctx = Importer { opset: file.opset(), files: WeightFiles::new(file.base_dir.clone()), names: HashSet::new() };
    ctx.graph(graph, &HashSet::new(), 0)
}

struct Importer {
    opset: i64,
    files: WeightFiles,
    /// Node names seen so far, to make unnamed nodes unique.
    names: HashSet<String>,
}

impl Importer {
    fn graph(&mut self, g: &GraphProto, outer: &HashSet<String>, depth: usize) -> Result<Graph> {
        if depth > MAX_NESTING {
            return Err(Error::InvalidModel(format!("subgraphs nest deeper than {MAX_NESTING} levels")));
        }
        let mut initializers = HashMap::new();
        for t in &g.initializer {
            let name = t.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(Error::InvalidModel("an initializer has no name".into()));
            }
            let tensor = tensor_from_proto(t, &mut self.files)?;
            if initializers.insert(name.clone(), Arc::new(tensor)).is_some() {
                return Err(Error::InvalidModel(format!("initializer '{name}' is defined twice")));
            }
        }
        if !g.sparse_initializer.is_empty() {
            return Err(Error::InvalidModel("sparse initializers are not supported".into()));
        }
        // Before IR 4, initializers were also listed as inputs; they are not caller inputs.
        let inputs = g
            .input
            .iter()
            .filter(|i| !initializers.contains_key(i.name.as_deref().unwrap_or("")))
            .map(value_info)
            .collect::<Result<Vec<_>>>()?;
        let outputs = g.output.iter().map(value_info).collect::<Result<Vec<_>>>()?;
        let mut seen_inputs = HashSet::new();
        for i in &inputs {
            if !seen_inputs.insert(i.name.as_str()) {
                return Err(Error::InvalidModel(format!("graph input '{}' is declared twice", i.name)));
            }
        }

        let mut available: HashSet<String> = outer.clone();
        available.extend(initializers.keys().cloned());
        available.extend(inputs.iter().map(|i| i.name.clone()));
        // Subgraphs may read anything the enclosing graph defines.
        let mut scope = available.clone();
        for n in &g.node {
            scope.extend(n.output.iter().filter(|o| !o.is_empty()).cloned());
        }

        let mut nodes = Vec::with_capacity(g.node.len());
        for n in &g.node {
            let name = self.node_name(n);
            let op_type = n.op_type.clone().unwrap_or_default();
            let wrap = |e: Error| match e {
                e @ (Error::Op(_) | Error::UnsupportedFeature(_)) => e.in_node(&name, &op_type),
                other => other,
            };
            if op_type == "Constant" && is_default_domain(n) {
                let (out, tensor) = self.constant(n).map_err(wrap)?;
                if available.contains(&out) {
                    return Err(Error::InvalidModel(format!("value '{out}' of Constant node '{name}' is defined twice")));
                }
                initializers.insert(out.clone(), Arc::new(tensor));
                available.insert(out);
                continue;
            }
            let kind = self.node_kind(n, &name, &op_type, &scope, depth).map_err(wrap)?;
            nodes.push(Node { name, op_type, inputs: n.input.clone(), outputs: n.output.clone(), kind });
        }
        let nodes = topological_sort(nodes, &available)?;
        let graph = Graph { nodes, inputs, outputs, initializers };
        let mut defined: HashSet<&str> = available.iter().map(String::as_str).collect();
        for n in &graph.nodes {
            defined.extend(n.outputs.iter().map(String::as_str));
        }
        for o in &graph.outputs {
            if !defined.contains(o.name.as_str()) {
                return Err(Error::InvalidModel(format!("graph output '{}' is not produced by any node", o.name)));
            }
        }
        Ok(graph)
    }

    fn node_name(&mut self, n: &NodeProto) -> String {
        let base = match n.name.as_deref() {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => format!("{}#{}", n.op_type.as_deref().unwrap_or("?"), n.output.first().map(String::as_str).unwrap_or("")),
        };
        let mut name = base.clone();
        let mut k = 1;
        while !self.names.insert(name.clone()) {
            name = format!("{base}~{k}");
            k += 1;
        }
        name
    }

    fn node_kind(&mut self, n: &NodeProto, name: &str, op_type: &str, scope: &HashSet<String>, depth: usize) -> Result<NodeKind> {
        let unsupported = |detail: String| Error::Unsupported { node: name.to_string(), op: qualified(n), detail };
        if op_type == "If" && is_default_domain(n) {
            let branch = |this: &mut Self, key: &str| -> Result<Arc<Graph>> {
                let g = n
                    .attribute
                    .iter()
                    .find(|a| a.name.as_deref() == Some(key))
                    .and_then(|a| a.g.as_ref())
                    .ok_or_else(|| Error::Op(format!("attribute '{key}' (a graph) is missing")))?;
                Ok(Arc::new(this.graph(g, scope, depth + 1)?))
            };
            let (then_branch, else_branch) = (branch(self, "then_branch")?, branch(self, "else_branch")?);
            if then_branch.outputs.len() != n.output.len() || else_branch.outputs.len() != n.output.len() {
                return Err(Error::Op(format!(
                    "branches have {} and {} outputs, the node {}",
                    then_branch.outputs.len(),
                    else_branch.outputs.len(),
                    n.output.len()
                )));
            }
            return Ok(NodeKind::If { then_branch, else_branch });
        }
        let Some(build) = importer(&qualified(n)) else { return Err(unsupported(String::new())) };
        let ctx = ImportCtx { attrs: Attrs::new(n), opset: self.opset, num_inputs: n.input.len(), num_outputs: n.output.len() };
        let op = build(&ctx).map_err(|e| match e {
            Error::UnsupportedFeature(what) => unsupported(format!(": {what}")),
            other => other,
        })?;
        Ok(NodeKind::Op(Arc::from(op)))
    }

    /// A `Constant` node's output name and value.
    fn constant(&mut self, n: &NodeProto) -> Result<(String, Tensor)> {
        let out = n.output.first().cloned().filter(|o| !o.is_empty()).ok_or_else(|| Error::Op("Constant has no output".into()))?;
        let a = n.attribute.first().ok_or_else(|| Error::Op("Constant has no value attribute".into()))?;
        let attrs = Attrs::new(n);
        let key = a.name.as_deref().unwrap_or("");
        let tensor = match key {
            "value" => tensor_from_proto(a.t.as_ref().ok_or_else(|| Error::Op("Constant value holds no tensor".into()))?, &mut self.files)?,
            "value_float" => Tensor::scalar(attrs.float(key, 0.0)?),
            "value_int" => Tensor::scalar(attrs.int(key, 0)?),
            "value_floats" => {
                let v = attrs.floats_opt(key)?.unwrap_or_default();
                Tensor::from_vec(vec![v.len()], v)?
            }
            "value_ints" => {
                let v = attrs.ints_opt(key)?.unwrap_or_default();
                Tensor::from_vec(vec![v.len()], v)?
            }
            other => return Err(Error::UnsupportedFeature(format!("Constant attribute '{other}'"))),
        };
        Ok((out, tensor))
    }
}

fn is_default_domain(n: &NodeProto) -> bool {
    matches!(n.domain.as_deref(), None | Some("") | Some("ai.onnx"))
}

fn qualified(n: &NodeProto) -> String {
    let op = n.op_type.as_deref().unwrap_or("?");
    match n.domain.as_deref() {
        None | Some("") | Some("ai.onnx") => op.to_string(),
        Some(d) => format!("{d}::{op}"),
    }
}

fn value_info(v: &ValueInfoProto) -> Result<ValueInfo> {
    let name = v.name.clone().unwrap_or_default();
    let mut info = ValueInfo { name: name.clone(), dtype: None, dims: None };
    let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else { return Ok(info) };
    if let Some(code) = t.elem_type.filter(|&c| c != 0) {
        info.dtype = Some(
            DataType::from_onnx(code)
                .ok_or_else(|| Error::InvalidModel(format!("value '{name}' has unsupported element type {}", onnx_dtype_name(code))))?,
        );
    }
    if let Some(shape) = &t.shape {
        let dims = shape
            .dim
            .iter()
            .enumerate()
            .map(|(i, d)| match &d.value {
                Some(super::proto::tensor_shape_proto::dimension::Value::DimValue(v)) => {
                    if !(0..=MAX_DIM).contains(v) {
                        // A few exporters write -1 for "dynamic"; treat it as unknown.
                        if *v == -1 {
                            return Ok(Dim::Unknown);
                        }
                        return Err(Error::InvalidModel(format!("value '{name}': dim {i} is {v}, outside 0..=2^40")));
                    }
                    Ok(Dim::Fixed(*v as usize))
                }
                // "?" (and "") is how some exporters spell "unknown", not a shared symbol.
                Some(super::proto::tensor_shape_proto::dimension::Value::DimParam(p)) if p.is_empty() || p == "?" => Ok(Dim::Unknown),
                Some(super::proto::tensor_shape_proto::dimension::Value::DimParam(p)) => Ok(Dim::Symbolic(p.clone())),
                None => Ok(Dim::Unknown),
            })
            .collect::<Result<Vec<_>>>()?;
        info.dims = Some(dims);
    }
    Ok(info)
}
