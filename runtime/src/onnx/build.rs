//! Assembles ONNX models in code: the importers' output (a decoder from GGUF weights), and
//! small models for tests, docs and hostile-input suites.
//!
//! ```
//! use distq_runtime::onnx::build::ModelBuilder;
//! use distq_runtime::{DataType, Model};
//! let bytes = ModelBuilder::new(17)
//!     .input("x", DataType::F32, &[2])
//!     .node("Relu", &["x"], &["y"], vec![])
//!     .output("y", DataType::F32, &[2])
//!     .to_bytes();
//! assert_eq!(Model::from_bytes(bytes)?.inputs()[0].name, "x");
//! # Ok::<(), distq_runtime::Error>(())
//! ```

use super::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_shape_proto, type_proto,
};
use crate::tensor::{DataType, Tensor};
use prost::Message;

/// Incrementally assembles a `ModelProto`.
pub struct ModelBuilder {
    model: ModelProto,
}

/// A node attribute value.
pub enum Attr {
    /// An int.
    Int(i64),
    /// A float.
    Float(f32),
    /// Ints.
    Ints(Vec<i64>),
    /// A string.
    Str(String),
    /// A tensor.
    Tensor(TensorProto),
    /// A subgraph.
    Graph(GraphProto),
}

fn value_info(name: &str, dtype: DataType, dims: &[i64]) -> ValueInfoProto {
    let named: Vec<String> = dims.iter().map(|&d| if d >= 0 { d.to_string() } else { format!("d{}", -d) }).collect();
    named_value_info(name, dtype, &named.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A value's declaration; each dim a number (fixed) or a name (symbolic).
fn named_value_info(name: &str, dtype: DataType, dims: &[&str]) -> ValueInfoProto {
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| tensor_shape_proto::Dimension {
                value: Some(match d.parse::<i64>() {
                    Ok(size) => tensor_shape_proto::dimension::Value::DimValue(size),
                    Err(_) => tensor_shape_proto::dimension::Value::DimParam(d.to_string()),
                }),
                ..Default::default()
            })
            .collect(),
    };
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: Some(dtype.onnx_code()), shape: Some(shape) })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A `TensorProto` with raw little-endian data.
pub fn tensor_proto(name: &str, t: &Tensor) -> TensorProto {
    let raw = t.as_le_bytes().to_vec();
    TensorProto {
        name: Some(name.into()),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(t.dtype().onnx_code()),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

impl ModelBuilder {
    /// An empty model importing the default domain at `opset`.
    pub fn new(opset: i64) -> ModelBuilder {
        ModelBuilder {
            model: ModelProto {
                ir_version: Some(8),
                producer_name: Some("distq-testing".into()),
                opset_import: vec![OperatorSetIdProto { domain: Some(String::new()), version: Some(opset) }],
                graph: Some(GraphProto { name: Some("test".into()), ..Default::default() }),
                ..Default::default()
            },
        }
    }

    fn graph(&mut self) -> &mut GraphProto {
        self.model.graph.get_or_insert_with(Default::default)
    }

    /// Declares an input; negative dims become symbolic (`-1` → `d1`).
    pub fn input(mut self, name: &str, dtype: DataType, dims: &[i64]) -> Self {
        self.graph().input.push(value_info(name, dtype, dims));
        self
    }

    /// Declares an output.
    pub fn output(mut self, name: &str, dtype: DataType, dims: &[i64]) -> Self {
        self.graph().output.push(value_info(name, dtype, dims));
        self
    }

    /// Declares an input whose dims are numbers (fixed) or names (symbolic): `&["batch", "64"]`.
    pub fn input_named(mut self, name: &str, dtype: DataType, dims: &[&str]) -> Self {
        self.graph().input.push(named_value_info(name, dtype, dims));
        self
    }

    /// Declares an output whose dims are numbers (fixed) or names (symbolic).
    pub fn output_named(mut self, name: &str, dtype: DataType, dims: &[&str]) -> Self {
        self.graph().output.push(named_value_info(name, dtype, dims));
        self
    }

    /// Adds an initializer.
    pub fn initializer(mut self, name: &str, t: &Tensor) -> Self {
        self.graph().initializer.push(tensor_proto(name, t));
        self
    }

    /// Adds an initializer given as a raw proto (for malformed-data tests).
    pub fn initializer_proto(mut self, t: TensorProto) -> Self {
        self.graph().initializer.push(t);
        self
    }

    /// Adds a node.
    pub fn node(mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attr)>) -> Self {
        let n = self.graph().node.len();
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                let mut p = AttributeProto { name: Some(name.into()), ..Default::default() };
                let ty = match a {
                    Attr::Int(i) => {
                        p.i = Some(i);
                        AttributeType::Int
                    }
                    Attr::Float(f) => {
                        p.f = Some(f);
                        AttributeType::Float
                    }
                    Attr::Ints(v) => {
                        p.ints = v;
                        AttributeType::Ints
                    }
                    Attr::Str(s) => {
                        p.s = Some(s.into_bytes().into());
                        AttributeType::String
                    }
                    Attr::Tensor(t) => {
                        p.t = Some(t);
                        AttributeType::Tensor
                    }
                    Attr::Graph(g) => {
                        p.g = Some(g);
                        AttributeType::Graph
                    }
                };
                p.r#type = Some(ty as i32);
                p
            })
            .collect();
        self.graph().node.push(NodeProto {
            name: Some(format!("n{n}_{op}")),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute,
            ..Default::default()
        });
        self
    }

    /// The model proto.
    pub fn build(self) -> ModelProto {
        self.model
    }

    /// The graph alone (for `If` branches).
    pub fn build_graph(self) -> GraphProto {
        self.model.graph.unwrap_or_default()
    }

    /// The encoded model.
    pub fn to_bytes(self) -> Vec<u8> {
        self.model.encode_to_vec()
    }
}
