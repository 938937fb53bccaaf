//! Helpers the bad-input suites share: models with one hand-made initializer, external-data
//! models, error-message checks and scratch folders.
#![allow(dead_code)] // each test binary uses its own subset

use distq_runtime::onnx::proto::{StringStringEntryProto, TensorProto, tensor_proto::DataLocation};
use distq_runtime::testing::ModelBuilder;
use distq_runtime::{DataType, Error, Model};
use std::path::{Path, PathBuf};

/// The error of a load that must fail.
pub fn err_of(r: Result<Model, Error>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

pub fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error message {msg:?} should mention {p:?}");
    }
}

/// A scratch folder, removed when the returned guard drops (also when the test fails).
pub fn temp_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("distq-bad-{tag}-")).tempdir().unwrap()
}

/// `y = x + w` over 2 floats, with `w` as given.
pub fn with_initializer(t: TensorProto) -> Vec<u8> {
    ModelBuilder::new(17)
        .input("x", DataType::F32, &[2])
        .initializer_proto(t)
        .node("Add", &["x", "w"], &["y"], vec![])
        .output("y", DataType::F32, &[2])
        .to_bytes()
}

/// A float tensor `w` with `bytes` zero bytes of raw data, whatever its dims say.
pub fn raw_tensor(dims: Vec<i64>, bytes: usize) -> TensorProto {
    TensorProto { name: Some("w".into()), dims, data_type: Some(1), raw_data: Some(vec![0u8; bytes].into()), ..Default::default() }
}

/// Writes `dir/model.onnx` whose initializer `w` (dims) lives at `location`/`offset`/`length`.
pub fn external_model(dir: &Path, location: &str, dims: Vec<i64>, offset: u64, length: u64) -> PathBuf {
    let t = TensorProto {
        name: Some("w".into()),
        dims,
        data_type: Some(1),
        data_location: Some(DataLocation::External as i32),
        external_data: [("location", location.to_string()), ("offset", offset.to_string()), ("length", length.to_string())]
            .into_iter()
            .map(|(k, v)| StringStringEntryProto { key: Some(k.into()), value: Some(v) })
            .collect(),
        ..Default::default()
    };
    let path = dir.join("model.onnx");
    std::fs::write(&path, with_initializer(t)).unwrap();
    path
}
