//! Bad input of every kind the foundation promises to reject: each gets a clear error naming
//! the problem, never a panic. Models are generated here with the builder, not hand-edited.

mod common;

use common::{assert_mentions, err_of, external_model, raw_tensor, temp_dir, with_initializer};
use distq_runtime::testing::{Attr, ModelBuilder, add_one_model};
use distq_runtime::{DataType, Model, Session, Tensor};
use prost::Message;

#[test]
fn truncated_file() {
    let bytes = add_one_model();
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        let msg = err_of(Model::from_bytes(bytes[..cut].to_vec()));
        assert_mentions(&msg, &["not a valid ONNX model"]);
    }
}

#[test]
fn garbage_and_empty_files() {
    let scratch = temp_dir("garbage");
    let dir = scratch.path();
    let path = dir.join("garbage.onnx");
    std::fs::write(&path, b"\x89PNG\r\n\x1a\n this is not a model at all \xff\xff\xff").unwrap();
    assert_mentions(&err_of(Model::load(&path)), &["garbage.onnx", "not a valid ONNX model"]);
    std::fs::write(&path, b"").unwrap();
    assert_mentions(&err_of(Model::load(&path)), &["garbage.onnx", "empty"]);
    // Valid protobuf, but not a model: a lone unknown field.
    assert_mentions(&err_of(Model::from_bytes(vec![0xf8, 0x01, 0x01])), &["no ir_version"]);
    assert_mentions(&err_of(Model::load(dir.join("missing.onnx"))), &["missing.onnx"]);
}

#[test]
fn bad_dims() {
    assert_mentions(&err_of(Model::from_bytes(with_initializer(raw_tensor(vec![-5], 8)))), &["tensor 'w'", "dim 0 is -5"]);
    assert_mentions(
        &err_of(Model::from_bytes(with_initializer(raw_tensor(vec![1 << 62], 8)))),
        &["tensor 'w'", "dim 0 is 4611686018427387904"],
    );
    // Each dim is allowed, their product is not.
    assert_mentions(&err_of(Model::from_bytes(with_initializer(raw_tensor(vec![1 << 40, 1 << 40], 8)))), &["tensor 'w'", "overflows"]);
    // A tensor claiming many more elements than its data holds.
    assert_mentions(
        &err_of(Model::from_bytes(with_initializer(raw_tensor(vec![1 << 30], 8)))),
        &["tensor 'w'", "needs 4294967296 bytes", "got 8"],
    );
    let bad_input = ModelBuilder::new(17).input("x", DataType::F32, &[2]).output("x", DataType::F32, &[2]).build();
    let mut bad_input = bad_input;
    if let Some(distq_runtime::onnx::proto::type_proto::Value::TensorType(t)) =
        bad_input.graph.as_mut().unwrap().input[0].r#type.as_mut().unwrap().value.as_mut()
    {
        t.shape.as_mut().unwrap().dim[0].value = Some(distq_runtime::onnx::proto::tensor_shape_proto::dimension::Value::DimValue(-5));
    }
    assert_mentions(&err_of(Model::from_bytes(bad_input.encode_to_vec())), &["value 'x'", "dim 0 is -5"]);
}

#[test]
fn graph_cycle_and_self_loop() {
    let cycle = ModelBuilder::new(17)
        .input("x", DataType::F32, &[2])
        .node("Add", &["x", "b"], &["a"], vec![])
        .node("Relu", &["a"], &["b"], vec![])
        .output("b", DataType::F32, &[2])
        .to_bytes();
    assert_mentions(&err_of(Model::from_bytes(cycle)), &["cycle", "node"]);
    let self_loop = ModelBuilder::new(17)
        .input("x", DataType::F32, &[2])
        .node("Add", &["x", "y"], &["y"], vec![])
        .output("y", DataType::F32, &[2])
        .to_bytes();
    assert_mentions(&err_of(Model::from_bytes(self_loop)), &["cycle", "n0_Add"]);
}

#[test]
fn dangling_duplicate_and_unsupported() {
    let dangling = ModelBuilder::new(17)
        .input("x", DataType::F32, &[2])
        .node("Relu", &["nowhere"], &["y"], vec![])
        .output("y", DataType::F32, &[2])
        .to_bytes();
    assert_mentions(&err_of(Model::from_bytes(dangling)), &["n0_Relu", "'nowhere'"]);
    let twice = ModelBuilder::new(17)
        .input("x", DataType::F32, &[2])
        .node("Relu", &["x"], &["y"], vec![])
        .node("Neg", &["x"], &["y"], vec![])
        .output("y", DataType::F32, &[2])
        .to_bytes();
    assert_mentions(&err_of(Model::from_bytes(twice)), &["'y'", "produced by both"]);
    let unknown = ModelBuilder::new(17)
        .input("x", DataType::F32, &[2])
        .node("FancyOp", &["x"], &["y"], vec![])
        .output("y", DataType::F32, &[2])
        .to_bytes();
    assert_mentions(&err_of(Model::from_bytes(unknown)), &["n0_FancyOp", "unsupported operator FancyOp"]);
    let bad_mode = ModelBuilder::new(17)
        .input("x", DataType::F32, &[1, 1, 2, 2])
        .node("Resize", &["x", "", "s"], &["y"], vec![("mode", Attr::Str("cubic".into()))])
        .output("y", DataType::F32, &[1, 1, 4, 4])
        .to_bytes();
    assert_mentions(&err_of(Model::from_bytes(bad_mode)), &["n0_Resize", "unsupported operator Resize", "cubic"]);
}

fn relu_session() -> Session {
    let bytes = ModelBuilder::new(17)
        .input("x", DataType::F32, &[-1, 3])
        .input("mask", DataType::I64, &[-1, 3])
        .node("Relu", &["x"], &["y"], vec![])
        .output("y", DataType::F32, &[-1, 3])
        .to_bytes();
    Session::new(Model::from_bytes(bytes).unwrap())
}

#[test]
fn wrong_inputs_at_run_time() {
    let s = relu_session();
    let x = || Tensor::from_vec(vec![1, 3], vec![1f32, -2., 3.]).unwrap();
    let mask = || Tensor::from_vec(vec![1, 3], vec![1i64; 3]).unwrap();
    let msg = s.run(vec![("x", x()), ("mask", mask()), ("bogus", x())]).unwrap_err().to_string();
    assert_mentions(&msg, &["input 'bogus'", "not an input", "x, mask"]);
    let msg = s.run(vec![("x", x())]).unwrap_err().to_string();
    assert_mentions(&msg, &["input 'mask'", "missing"]);
    let msg = s.run(vec![("x", x()), ("mask", Tensor::from_vec(vec![1, 3], vec![1i32; 3]).unwrap())]).unwrap_err().to_string();
    assert_mentions(&msg, &["input 'mask'", "dtype int32", "int64"]);
    let msg = s.run(vec![("x", Tensor::from_vec(vec![1, 2], vec![1f32, 2.]).unwrap()), ("mask", mask())]).unwrap_err().to_string();
    assert_mentions(&msg, &["input 'x'", "dim 1 is 2", "declares 3"]);
    let msg = s.run(vec![("x", Tensor::from_vec(vec![2, 3], vec![0f32; 6]).unwrap()), ("mask", mask())]).unwrap_err().to_string();
    assert_mentions(&msg, &["input 'mask'", "'d1'", "input 'x'"]);
    assert_eq!(s.run(vec![("x", x()), ("mask", mask())]).unwrap()[0].1.as_slice::<f32>().unwrap(), &[1., 0., 3.]);
}

#[test]
fn op_errors_name_the_node() {
    let bytes = ModelBuilder::new(17)
        .input("a", DataType::F32, &[2, 3])
        .input("b", DataType::F32, &[4])
        .node("Add", &["a", "b"], &["y"], vec![])
        .output("y", DataType::F32, &[2, 3])
        .to_bytes();
    let s = Session::new(Model::from_bytes(bytes).unwrap());
    let msg = s
        .run(vec![("a", Tensor::from_vec(vec![2, 3], vec![0f32; 6]).unwrap()), ("b", Tensor::from_vec(vec![4], vec![0f32; 4]).unwrap())])
        .unwrap_err()
        .to_string();
    assert_mentions(&msg, &["node 'n0_Add' (Add)", "[2, 3]", "[4]", "cannot be broadcast"]);
}

#[test]
fn external_data_is_confined_and_bounded() {
    let scratch = temp_dir("external");
    let dir = scratch.path();
    let mut weights = vec![0u8; 64];
    weights.extend(1.5f32.to_le_bytes());
    weights.extend(2.5f32.to_le_bytes());
    std::fs::write(dir.join("weights.bin"), &weights).unwrap();
    // The good case: mapped in place from the aligned offset.
    let ok = Session::load(external_model(dir, "weights.bin", vec![2], 64, 8)).unwrap();
    let y = ok.run(vec![("x", Tensor::from_vec(vec![2], vec![1f32, 1.]).unwrap())]).unwrap();
    assert_eq!(y[0].1.as_slice::<f32>().unwrap(), &[2.5, 3.5]);

    let cases: Vec<(String, u64, u64, &[&str])> = vec![
        ("../../etc/passwd".into(), 0, 8, &["tensor 'w'", "escapes the model folder"]),
        ("/etc/passwd".into(), 0, 8, &["tensor 'w'", "escapes the model folder"]),
        ("weights.bin".into(), 64, 9, &["tensor 'w'", "runs past the end", "72 bytes"]),
        ("weights.bin".into(), u64::MAX, 8, &["tensor 'w'", "overflows"]),
        ("nope.bin".into(), 0, 8, &["tensor 'w'", "nope.bin"]),
    ];
    for (loc, off, len, parts) in cases {
        assert_mentions(&err_of(Model::load(external_model(dir, &loc, vec![2], off, len))), parts);
    }
    #[cfg(unix)]
    {
        let outside = temp_dir("outside");
        let outside = outside.path();
        std::fs::write(outside.join("secret.bin"), [0u8; 8]).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.bin"), dir.join("link.bin")).unwrap();
        assert_mentions(
            &err_of(Model::load(external_model(dir, "link.bin", vec![2], 0, 8))),
            &["tensor 'w'", "outside the model folder", "symlink"],
        );
    }
    // In-memory models have no folder to resolve against.
    let bytes = std::fs::read(external_model(dir, "weights.bin", vec![2], 64, 8)).unwrap();
    assert_mentions(&err_of(Model::from_bytes(bytes)), &["tensor 'w'", "loaded from memory"]);
}

#[test]
fn data_dependent_if_is_rejected_clearly() {
    let branch = |v: f32| {
        ModelBuilder::new(17)
            .initializer("c", &Tensor::scalar(v))
            .node("Identity", &["c"], &["out"], vec![])
            .output("out", DataType::F32, &[])
            .build_graph()
    };
    let bytes = ModelBuilder::new(17)
        .input("cond", DataType::Bool, &[])
        .node("If", &["cond"], &["y"], vec![("then_branch", Attr::Graph(branch(1.0))), ("else_branch", Attr::Graph(branch(2.0)))])
        .output("y", DataType::F32, &[])
        .to_bytes();
    let s = Session::new(Model::from_bytes(bytes).unwrap());
    let msg = s.run(vec![("cond", Tensor::from_bools(vec![], vec![true]).unwrap())]).unwrap_err().to_string();
    assert_mentions(&msg, &["node 'n0_If'", "depends on input data"]);
}

#[test]
fn if_with_shape_condition_is_inlined() {
    // cond = (Size(x) == 2): known once x's shape is, so the planner folds the branch away.
    let branch = |op: &str| ModelBuilder::new(17).node(op, &["x"], &["out"], vec![]).output("out", DataType::F32, &[-1]).build_graph();
    let bytes = ModelBuilder::new(17)
        .input("x", DataType::F32, &[-1])
        .initializer("two", &Tensor::scalar(2i64))
        .node("Size", &["x"], &["n"], vec![])
        .node("Equal", &["n", "two"], &["cond"], vec![])
        .node("If", &["cond"], &["y"], vec![("then_branch", Attr::Graph(branch("Neg"))), ("else_branch", Attr::Graph(branch("Relu")))])
        .output("y", DataType::F32, &[-1])
        .to_bytes();
    let s = Session::new(Model::from_bytes(bytes).unwrap());
    let two = s.run(vec![("x", Tensor::from_vec(vec![2], vec![1f32, -1.]).unwrap())]).unwrap();
    assert_eq!(two[0].1.as_slice::<f32>().unwrap(), &[-1., 1.]);
    let three = s.run(vec![("x", Tensor::from_vec(vec![3], vec![1f32, -1., 2.]).unwrap())]).unwrap();
    assert_eq!(three[0].1.as_slice::<f32>().unwrap(), &[1., 0., 2.]);
    let plan = s.plan_for(&[(DataType::F32, vec![3])]).unwrap();
    assert_eq!(plan.num_steps(), 1, "only the chosen branch's Relu runs");
}

/// Found by the onnx_load fuzz target: an axis on a rank-0 input passed the axis check and
/// then sliced past the shape.
#[test]
fn axis_ops_on_a_scalar_are_refused() {
    let bytes = ModelBuilder::new(17)
        .input("i", DataType::I64, &[1])
        .initializer("s", &Tensor::scalar(1.5f32))
        .node("Gather", &["s", "i"], &["y"], vec![])
        .output("y", DataType::F32, &[1])
        .to_bytes();
    let s = Session::new(Model::from_bytes(bytes).unwrap());
    let msg = s.run(vec![("i", Tensor::from_vec(vec![1], vec![0i64]).unwrap())]).unwrap_err().to_string();
    assert_mentions(&msg, &["n0_Gather", "axis 0 is out of range for rank 0"]);
}

/// Found by the onnx_load fuzz target: a Range bound holding no value was indexed.
#[test]
fn range_with_an_empty_bound_is_refused() {
    let bytes = ModelBuilder::new(17)
        .input("x", DataType::F32, &[1])
        .initializer("start", &Tensor::from_vec(vec![0], Vec::<i64>::new()).unwrap())
        .initializer("limit", &Tensor::scalar(4i64))
        .initializer("delta", &Tensor::scalar(1i64))
        .node("Range", &["start", "limit", "delta"], &["y"], vec![])
        .output("y", DataType::I64, &[-1])
        .to_bytes();
    let s = Session::new(Model::from_bytes(bytes).unwrap());
    let msg = s.run(vec![("x", Tensor::from_vec(vec![1], vec![0f32]).unwrap())]).unwrap_err().to_string();
    assert_mentions(&msg, &["n0_Range", "Range input 0 holds 0 values"]);
}
