//! Builds small ONNX models in code, for tests, docs and hostile-input suites.
//!
//! ```
//! use distq_runtime::testing::ModelBuilder;
//! use distq_runtime::{DataType, Model};
//! let bytes = ModelBuilder::new(17)
//!     .input("x", DataType::F32, &[2])
//!     .node("Relu", &["x"], &["y"], vec![])
//!     .output("y", DataType::F32, &[2])
//!     .to_bytes();
//! assert_eq!(Model::from_bytes(bytes)?.inputs()[0].name, "x");
//! # Ok::<(), distq_runtime::Error>(())
//! ```

use crate::onnx::proto::{
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
    let shape = TensorShapeProto {
        dim: dims
            .iter()
            .map(|&d| tensor_shape_proto::Dimension {
                value: Some(if d >= 0 {
                    tensor_shape_proto::dimension::Value::DimValue(d)
                } else {
                    tensor_shape_proto::dimension::Value::DimParam(format!("d{}", -d))
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

/// `y = x + 1` over a float vector `x` of symbolic length.
pub fn add_one_model() -> Vec<u8> {
    ModelBuilder::new(17)
        .input("x", DataType::F32, &[-1])
        .initializer("one", &Tensor::scalar(1.0f32))
        .node("Add", &["x", "one"], &["y"], vec![])
        .output("y", DataType::F32, &[-1])
        .to_bytes()
}

/// Writes named tensors to `dir` in the plain format the C and Java wrapper tests read and
/// write: `dir/<manifest>` has one line per tensor, `name dtype-code rank dims… file`, and
/// each file holds the raw little-endian elements.
///
/// ```
/// use distq_runtime::Tensor;
/// use distq_runtime::testing::{read_raw_tensors, write_raw_tensors};
/// let dir = std::env::temp_dir().join(format!("distq-raw-doc-{}", std::process::id()));
/// let t = vec![("x".to_string(), Tensor::from_vec(vec![2], vec![1i64, 2])?)];
/// write_raw_tensors(&dir, "inputs.txt", &t).unwrap();
/// let back = read_raw_tensors(&dir, "inputs.txt").unwrap();
/// assert_eq!(back[0].1.as_slice::<i64>()?, &[1, 2]);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), distq_runtime::Error>(())
/// ```
pub fn write_raw_tensors(dir: &std::path::Path, manifest: &str, tensors: &[(String, Tensor)]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let stem = manifest.trim_end_matches(".txt");
    let mut lines = String::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let file = format!("{stem}{i}.bin");
        std::fs::write(dir.join(&file), t.as_le_bytes())?;
        let dims: Vec<String> = t.shape().iter().map(|d| d.to_string()).collect();
        lines += &format!("{name} {} {} {} {file}\n", t.dtype().onnx_code(), t.shape().len(), dims.join(" "));
    }
    std::fs::write(dir.join(manifest), lines)
}

/// Reads what [`write_raw_tensors`] (or a wrapper test) wrote.
pub fn read_raw_tensors(dir: &std::path::Path, manifest: &str) -> std::io::Result<Vec<(String, Tensor)>> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {what}", dir.join(manifest).display()));
    let text = std::fs::read_to_string(dir.join(manifest))?;
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<usize>().ok()).ok_or_else(|| bad(format!("bad line '{line}'")));
            let dtype = fields
                .get(1)
                .and_then(|f| f.parse().ok())
                .and_then(DataType::from_onnx)
                .ok_or_else(|| bad(format!("bad dtype in '{line}'")))?;
            let rank = number(2)?;
            let shape = (0..rank).map(|d| number(3 + d)).collect::<std::io::Result<Vec<usize>>>()?;
            let file = fields.get(3 + rank).ok_or_else(|| bad(format!("no file in '{line}'")))?;
            let bytes = std::fs::read(dir.join(file))?;
            let t = Tensor::from_le_bytes(dtype, shape, bytes.into()).map_err(|e| bad(e.to_string()))?;
            Ok((fields[0].to_string(), t))
        })
        .collect()
}
