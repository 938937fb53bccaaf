//! `distq inspect MODEL [--json]`.

use super::say;
use anyhow::Result;
use distq_runtime::graph::Dim;
use distq_runtime::onnx::OnnxFile;
use distq_runtime::onnx::proto::{GraphProto, TensorProto, ValueInfoProto, tensor_shape_proto::dimension, type_proto};
use distq_runtime::tensor::onnx_dtype_name;
use distq_runtime::{DataType, Model};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The ONNX model.
    model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Value {
    name: String,
    dtype: String,
    shape: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct Report {
    path: String,
    file_bytes: u64,
    ir_version: i64,
    opset: i64,
    producer: String,
    inputs: Vec<Value>,
    outputs: Vec<Value>,
    nodes: usize,
    ops: BTreeMap<String, usize>,
    parameters: u64,
    bytes_by_dtype: BTreeMap<String, u64>,
    /// Whether the runtime can load it, and if not why.
    loadable: bool,
    load_error: Option<String>,
}

fn value(v: &ValueInfoProto) -> Value {
    let mut out = Value { name: v.name.clone().unwrap_or_default(), dtype: "?".into(), shape: Vec::new() };
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        out.dtype = onnx_dtype_name(t.elem_type.unwrap_or(0));
        for d in t.shape.iter().flat_map(|s| &s.dim) {
            out.shape.push(match &d.value {
                Some(dimension::Value::DimValue(v)) => (*v).into(),
                Some(dimension::Value::DimParam(p)) => p.clone().into(),
                None => "?".into(),
            });
        }
    }
    out
}

fn walk(g: &GraphProto, ops: &mut BTreeMap<String, usize>, nodes: &mut usize, tensors: &mut Vec<TensorProto>) {
    tensors.extend(g.initializer.iter().cloned());
    for n in &g.node {
        *nodes += 1;
        let op = match n.domain.as_deref() {
            None | Some("") | Some("ai.onnx") => n.op_type.clone().unwrap_or_default(),
            Some(d) => format!("{d}::{}", n.op_type.as_deref().unwrap_or("")),
        };
        *ops.entry(op).or_default() += 1;
        // Some exporters (paddle2onnx) store weights as Constant nodes, not initializers.
        if n.op_type.as_deref() == Some("Constant") {
            tensors.extend(n.attribute.iter().filter_map(|a| a.t.clone()));
        }
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                walk(sub, ops, nodes, tensors);
            }
        }
    }
}

fn report(path: &PathBuf) -> Result<Report> {
    let file = OnnxFile::open(path)?;
    let graph = file.proto.graph.as_ref().expect("decode checks the graph");
    let (mut ops, mut nodes, mut tensors) = (BTreeMap::new(), 0, Vec::new());
    walk(graph, &mut ops, &mut nodes, &mut tensors);
    let init_names: std::collections::HashSet<_> = graph.initializer.iter().filter_map(|t| t.name.clone()).collect();
    let mut bytes_by_dtype = BTreeMap::new();
    let mut parameters = 0u64;
    for t in &tensors {
        let n: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
        parameters += n;
        let code = t.data_type.unwrap_or(0);
        let bytes = DataType::from_onnx(code).map_or(0, |d| d.bytes(n as usize) as u64);
        *bytes_by_dtype.entry(onnx_dtype_name(code)).or_default() += bytes;
    }
    let (loadable, load_error) = match Model::load(path) {
        Ok(_) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    };
    Ok(Report {
        path: path.display().to_string(),
        file_bytes: std::fs::metadata(path)?.len(),
        ir_version: file.proto.ir_version.unwrap_or(0),
        opset: file.opset(),
        producer: format!("{} {}", file.proto.producer_name.as_deref().unwrap_or(""), file.proto.producer_version.as_deref().unwrap_or(""))
            .trim()
            .to_string(),
        inputs: graph.input.iter().filter(|i| !init_names.contains(i.name.as_deref().unwrap_or(""))).map(value).collect(),
        outputs: graph.output.iter().map(value).collect(),
        nodes,
        ops,
        parameters,
        bytes_by_dtype,
        loadable,
        load_error,
    })
}

fn shape_text(shape: &[serde_json::Value]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string)).collect();
    format!("[{}]", dims.join(", "))
}

pub fn run(args: Args) -> Result<()> {
    let r = report(&args.model)?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    say!(
        "{}  ({:.1} MB, IR {}, opset {}, {})",
        r.path,
        r.file_bytes as f64 / 1e6,
        r.ir_version,
        r.opset,
        if r.producer.is_empty() { "unknown producer" } else { &r.producer }
    );
    for (kind, values) in [("input ", &r.inputs), ("output", &r.outputs)] {
        for v in values {
            say!("  {kind} {:<28} {:<8} {}", v.name, v.dtype, shape_text(&v.shape));
        }
    }
    say!("  {} nodes, {} parameters", r.nodes, r.parameters);
    for (dtype, bytes) in &r.bytes_by_dtype {
        say!("  weights {dtype:<8} {:>12} bytes", bytes);
    }
    let mut ops: Vec<_> = r.ops.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let line: Vec<String> = ops.iter().map(|(op, n)| format!("{op}×{n}")).collect();
    say!("  ops: {}", line.join(" "));
    match &r.load_error {
        None => say!("  runtime: loads"),
        Some(e) => say!("  runtime: cannot load: {e}"),
    }
    Ok(())
}

/// Renders declared dims of the runtime's IR (for `run`'s messages).
pub fn dims_text(dims: &Option<Vec<Dim>>) -> String {
    match dims {
        None => "?".into(),
        Some(d) => format!(
            "[{}]",
            d.iter()
                .map(|d| match d {
                    Dim::Fixed(n) => n.to_string(),
                    Dim::Symbolic(s) => s.clone(),
                    Dim::Unknown => "?".into(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
