//! ONNX file I/O: memory-map, decode with prost, and turn `TensorProto`s into tensors that
//! point into the map instead of copying weights.

pub mod attrs;
pub mod build;
pub mod import;
#[allow(missing_docs, clippy::all, clippy::pedantic)]
#[rustfmt::skip]
pub mod proto;
pub mod weight_files;

use crate::error::{Error, Result};
use crate::tensor::{DataType, Tensor, checked_numel, onnx_dtype_name};
use bytes::Bytes;
use prost::Message;
use std::path::{Path, PathBuf};

pub use proto::ModelProto;
pub use weight_files::{SharedMap, WeightFiles, release_pages};

/// Largest tensor dimension accepted from a file: beyond this no real model goes, and products
/// of such dims are where overflow bugs live.
pub const MAX_DIM: i64 = 1 << 40;

/// A decoded model together with the bytes it was decoded from (which own the mapping).
pub struct OnnxFile {
    /// The decoded protobuf; `raw_data` fields are slices of `bytes`.
    pub proto: ModelProto,
    /// Folder that external data locations are resolved against (`None` for in-memory models).
    pub base_dir: Option<PathBuf>,
    /// Where the model came from, for messages.
    pub origin: String,
}

impl OnnxFile {
    /// Memory-maps and decodes `path`.
    pub fn open(path: &Path) -> Result<OnnxFile> {
        let io_err = |source| Error::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io_err)?;
        // Safety: the map is read-only; a model file changed underneath us while mapped would
        // be undefined behaviour, the same contract every mmap-based loader has.
        let map = unsafe { weight_files::map_file(&file) }.map_err(io_err)?;
        let base_dir = path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() });
        Self::decode(Bytes::from_owner(SharedMap(map)), base_dir, path.display().to_string())
    }

    /// Decodes a model held in memory; external data is then resolved against `base_dir`.
    pub fn decode(bytes: Bytes, base_dir: Option<PathBuf>, origin: String) -> Result<OnnxFile> {
        let decode_err = |reason: String| Error::Decode { origin: origin.clone(), reason };
        if bytes.is_empty() {
            return Err(decode_err("the file is empty".into()));
        }
        let proto = ModelProto::decode(bytes).map_err(|e| {
            let e = e.to_string();
            // prost names every enclosing message; past its nesting limit that is a long echo.
            if e.ends_with("recursion limit reached") {
                decode_err("messages nest deeper than protobuf's limit of 100 (subgraphs within subgraphs)".into())
            } else {
                decode_err(format!("protobuf decoding failed ({e}); the file is truncated or not ONNX"))
            }
        })?;
        // Random bytes can parse as a protobuf made only of unknown fields: demand the parts
        // every ONNX model has.
        if proto.ir_version.unwrap_or(0) <= 0 {
            return Err(decode_err("no ir_version".into()));
        }
        if proto.graph.is_none() {
            return Err(decode_err("no graph".into()));
        }
        if proto.opset_import.is_empty() && proto.ir_version.unwrap_or(0) >= 3 {
            return Err(decode_err("no opset_import".into()));
        }
        Ok(OnnxFile { proto, base_dir, origin })
    }

    /// Encodes the model back to protobuf bytes.
    pub fn encode(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// Opset version of the default (`ai.onnx`) domain.
    pub fn opset(&self) -> i64 {
        self.proto
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
            .and_then(|o| o.version)
            .unwrap_or(1)
    }
}

/// A tensor over file bytes; when they had to be copied, their pages are released.
fn from_file_bytes(dtype: DataType, shape: Vec<usize>, bytes: Bytes) -> Result<Tensor> {
    let t = Tensor::from_le_bytes(dtype, shape, bytes.clone())?;
    if !t.is_mapped() {
        release_pages(&bytes);
    }
    Ok(t)
}

/// Converts declared dims (from a TensorProto) to sizes, rejecting negative and absurd ones.
pub fn checked_dims(dims: &[i64], what: &str) -> Result<Vec<usize>> {
    let shape = dims
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            if !(0..=MAX_DIM).contains(&d) {
                Err(Error::InvalidModel(format!("{what}: dim {i} is {d}, outside 0..=2^40")))
            } else {
                Ok(d as usize)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    checked_numel(&shape).map_err(|_| Error::InvalidModel(format!("{what}: shape {shape:?} overflows the element count")))?;
    Ok(shape)
}

/// Turns a `TensorProto` into a tensor: raw data in place, typed fields copied, external data
/// resolved through `files`.
pub fn tensor_from_proto(t: &proto::TensorProto, files: &mut WeightFiles) -> Result<Tensor> {
    let name = t.name.clone().unwrap_or_default();
    let what = format!("tensor '{name}'");
    let shape = checked_dims(&t.dims, &what)?;
    let code = t.data_type.unwrap_or(0);
    let dtype = DataType::from_onnx(code)
        .ok_or_else(|| Error::InvalidModel(format!("{what}: unsupported element type {}", onnx_dtype_name(code))))?;
    let in_node = |e: Error| match e {
        Error::Op(msg) => Error::InvalidModel(format!("{what}: {msg}")),
        other => other,
    };
    if t.data_location == Some(proto::tensor_proto::DataLocation::External as i32) {
        let bytes = files.resolve(&name, &t.external_data)?;
        return from_file_bytes(dtype, shape, bytes).map_err(in_node);
    }
    if let Some(raw) = &t.raw_data {
        return from_file_bytes(dtype, shape, raw.clone()).map_err(in_node);
    }
    let n = checked_numel(&shape).map_err(in_node)?;
    let count_err = |got: usize| Error::InvalidModel(format!("{what}: shape {shape:?} needs {n} elements, the typed data holds {got}"));
    let tensor = match dtype {
        DataType::F32 => Tensor::from_vec(shape.clone(), t.float_data.clone()),
        DataType::F64 => Tensor::from_vec(shape.clone(), t.double_data.clone()),
        DataType::I64 => Tensor::from_vec(shape.clone(), t.int64_data.clone()),
        DataType::I32 => Tensor::from_vec(shape.clone(), t.int32_data.clone()),
        DataType::I8 => Tensor::from_vec(shape.clone(), t.int32_data.iter().map(|&v| v as i8).collect()),
        DataType::U8 => Tensor::from_vec(shape.clone(), t.int32_data.iter().map(|&v| v as u8).collect()),
        DataType::F16 => Tensor::from_vec(shape.clone(), t.int32_data.iter().map(|&v| v as u16).collect()),
        DataType::Bool => Tensor::from_bools(shape.clone(), t.int32_data.iter().map(|&v| v != 0).collect()),
        DataType::U4 | DataType::I4 => {
            return Err(Error::InvalidModel(format!("{what}: 4-bit values stored outside raw_data are not supported")));
        }
    };
    let stored = match dtype {
        DataType::F32 => t.float_data.len(),
        DataType::F64 => t.double_data.len(),
        DataType::I64 => t.int64_data.len(),
        _ => t.int32_data.len(),
    };
    tensor.map_err(|_| count_err(stored))
}
