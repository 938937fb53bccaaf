//! Writes a model file, optionally with its large initializers in an external data file at
//! 64-byte-aligned offsets (so a loader can use them in place, as ours does). Both files are
//! written to temporaries and renamed into place: a failure leaves no half-written output.

use anyhow::{Context, Result};
use distq_io::atomic_file::write_atomically;
use distq_runtime::onnx::proto::tensor_proto::DataLocation;
use distq_runtime::onnx::proto::{ModelProto, StringStringEntryProto};
use prost::Message;
use std::io::Write;
use std::path::Path;

/// Initializers at least this large go to the external data file.
const EXTERNAL_MIN_BYTES: usize = 1024;
/// Offset alignment in the external data file.
const ALIGN: usize = 64;

/// Writes `model` to `path`; with `external_data`, large initializers go to `<path>.data`
/// beside it. Returns the bytes written (both files).
pub fn write_model(path: &Path, model: &ModelProto, external_data: bool) -> Result<u64> {
    if !external_data {
        let bytes = model.encode_to_vec();
        write_atomically(path, |f| Ok(f.write_all(&bytes)?))?;
        return Ok(bytes.len() as u64);
    }
    let file_name = path.file_name().context("output is not a file path")?.to_string_lossy();
    let location = format!("{file_name}.data");
    let mut model = model.clone();
    let mut data: Vec<u8> = Vec::new();
    let entry = |key: &str, value: String| StringStringEntryProto { key: Some(key.into()), value: Some(value) };
    for t in model.graph.iter_mut().flat_map(|g| g.initializer.iter_mut()) {
        let Some(raw) = t.raw_data.take_if(|r| r.len() >= EXTERNAL_MIN_BYTES) else { continue };
        data.resize(data.len().next_multiple_of(ALIGN), 0);
        let offset = data.len();
        data.extend_from_slice(&raw);
        t.data_location = Some(DataLocation::External as i32);
        t.external_data =
            vec![entry("location", location.clone()), entry("offset", offset.to_string()), entry("length", raw.len().to_string())];
    }
    let bytes = model.encode_to_vec();
    write_atomically(&path.with_file_name(&location), |f| Ok(f.write_all(&data)?))?;
    write_atomically(path, |f| Ok(f.write_all(&bytes)?))?;
    Ok((bytes.len() + data.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use distq_runtime::testing::ModelBuilder;
    use distq_runtime::{DataType, Model, Session, Tensor};

    #[test]
    fn external_data_is_aligned_and_loads() {
        let w = Tensor::from_vec(vec![30, 20], (0..600).map(|i| i as f32 * 0.25).collect()).unwrap();
        let small = Tensor::from_vec(vec![3], vec![1f32, 2.0, 3.0]).unwrap();
        let model = ModelBuilder::new(17)
            .input("x", DataType::F32, &[2, 30])
            .initializer("w", &w)
            .initializer("b", &small)
            .initializer("w2", &w)
            .node("MatMul", &["x", "w"], &["y"], vec![])
            .output("y", DataType::F32, &[2, 20])
            .build();
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path();
        let path = dir.join("m.onnx");
        let written = write_model(&path, &model, true).unwrap();
        let data = std::fs::read(dir.join("m.onnx.data")).unwrap();
        assert_eq!(written, std::fs::metadata(&path).unwrap().len() + data.len() as u64);
        // Two 2400-byte weights: the second starts at the next multiple of 64.
        assert_eq!(data.len(), 2432 + 2400);
        let decoded = Model::load(&path).unwrap();
        let offsets: Vec<String> = decoded
            .file()
            .proto
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .flat_map(|t| t.external_data.iter())
            .filter(|e| e.key.as_deref() == Some("offset"))
            .map(|e| e.value.clone().unwrap())
            .collect();
        assert_eq!(offsets, ["0", "2432"]);
        let x = Tensor::from_vec(vec![2, 30], vec![1f32; 60]).unwrap();
        let y = Session::new(decoded).run(vec![("x", x)]).unwrap().remove(0).1;
        assert_eq!(y.as_slice::<f32>().unwrap()[0], (0..30).map(|r| (r * 20) as f32 * 0.25).sum::<f32>());
    }
}
