//! Every translated op against finite differences (gradients) and against our runtime
//! (forward values), one shared table.

use super::data::normal_values;
use super::graph::{Freeze, TrainableGraph};
use candle_core::{DType, Device, Tensor};
use distq_runtime::onnx::OnnxFile;
use distq_runtime::testing::{Attr, ModelBuilder};
use distq_runtime::{DataType, Model, Session};

/// How an operand's values are drawn.
#[derive(Clone, Copy)]
enum Values {
    /// Normal(0, 1): differentiable everywhere the op is.
    Normal,
    /// In [0.5, 2): for Sqrt, Log, denominators.
    Positive,
    /// Distinct values spread apart: max pooling and ReLU kinks stay out of ε's reach.
    Spread,
    /// A constant integer tensor (indices, shapes, axes).
    Ints(&'static [i64]),
    /// A constant boolean tensor.
    Bools(&'static [bool]),
}

struct Case {
    op: &'static str,
    operands: Vec<(&'static [usize], Values)>,
    attrs: fn() -> Vec<(&'static str, Attr)>,
    opset: i64,
}

fn case(op: &'static str, operands: Vec<(&'static [usize], Values)>) -> Case {
    Case { op, operands, attrs: Vec::new, opset: 17 }
}

fn with(mut c: Case, attrs: fn() -> Vec<(&'static str, Attr)>) -> Case {
    c.attrs = attrs;
    c
}

fn cases() -> Vec<Case> {
    use Values::*;
    let unary = |op| case(op, vec![(&[2, 3], Normal)]);
    let positive = |op| case(op, vec![(&[2, 3], Positive)]);
    let spread = |op| case(op, vec![(&[2, 3], Spread)]);
    vec![
        case("Add", vec![(&[2, 3], Normal), (&[3], Normal)]),
        case("Sub", vec![(&[2, 1], Normal), (&[2, 3], Normal)]),
        case("Mul", vec![(&[2, 3], Normal), (&[2, 3], Normal)]),
        case("Div", vec![(&[2, 3], Normal), (&[3], Positive)]),
        case("Pow", vec![(&[2, 3], Normal), (&[], Ints(&[2]))]),
        positive("Sqrt"),
        unary("Exp"),
        positive("Log"),
        unary("Neg"),
        spread("Abs"),
        unary("Erf"),
        unary("Tanh"),
        unary("Sigmoid"),
        spread("Relu"),
        with(spread("LeakyRelu"), || vec![("alpha", Attr::Float(0.1))]),
        with(unary("Softmax"), || vec![("axis", Attr::Int(-1))]),
        with(unary("LogSoftmax"), || vec![("axis", Attr::Int(0))]),
        unary("Identity"),
        case("MatMul", vec![(&[2, 3, 4], Normal), (&[4, 5], Normal)]),
        case("MatMul", vec![(&[2, 3, 4], Normal), (&[2, 4, 2], Normal)]),
        case("MatMul", vec![(&[4], Normal), (&[4, 3], Normal)]),
        with(case("Gemm", vec![(&[2, 3], Normal), (&[4, 3], Normal), (&[4], Normal)]), || {
            vec![("transB", Attr::Int(1)), ("alpha", Attr::Float(0.5)), ("beta", Attr::Float(2.0))]
        }),
        with(case("Gemm", vec![(&[3, 2], Normal), (&[3, 4], Normal), (&[1, 4], Normal)]), || vec![("transA", Attr::Int(1))]),
        with(case("Conv", vec![(&[2, 3, 5, 5], Normal), (&[4, 3, 3, 3], Normal), (&[4], Normal)]), || {
            vec![("pads", Attr::Ints(vec![1, 1, 1, 1]))]
        }),
        with(case("Conv", vec![(&[1, 2, 6, 5], Normal), (&[3, 2, 3, 2], Normal)]), || {
            vec![("pads", Attr::Ints(vec![0, 1, 1, 0])), ("strides", Attr::Ints(vec![2, 2]))]
        }),
        with(case("Conv", vec![(&[1, 4, 5, 5], Normal), (&[4, 1, 3, 3], Normal)]), || {
            vec![("group", Attr::Int(4)), ("dilations", Attr::Ints(vec![2, 2]))]
        }),
        with(case("MaxPool", vec![(&[1, 2, 4, 4], Spread)]), || {
            vec![("kernel_shape", Attr::Ints(vec![2, 2])), ("strides", Attr::Ints(vec![2, 2]))]
        }),
        with(case("AveragePool", vec![(&[1, 2, 5, 5], Normal)]), || vec![("kernel_shape", Attr::Ints(vec![3, 3]))]),
        case("GlobalAveragePool", vec![(&[2, 3, 4, 4], Normal)]),
        case("BatchNormalization", vec![(&[2, 3, 2, 2], Normal), (&[3], Normal), (&[3], Normal), (&[3], Normal), (&[3], Positive)]),
        with(case("LayerNormalization", vec![(&[2, 3, 4], Normal), (&[4], Normal), (&[4], Normal)]), || {
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(1e-3))]
        }),
        with(case("Flatten", vec![(&[2, 3, 2], Normal)]), || vec![("axis", Attr::Int(2))]),
        case("Reshape", vec![(&[2, 3, 2], Normal), (&[2], Ints(&[0, -1]))]),
        with(case("Transpose", vec![(&[2, 3, 4], Normal)]), || vec![("perm", Attr::Ints(vec![1, 2, 0]))]),
        case("Unsqueeze", vec![(&[2, 3], Normal), (&[2], Ints(&[0, -1]))]),
        case("Squeeze", vec![(&[2, 1, 3], Normal), (&[1], Ints(&[1]))]),
        with(case("Concat", vec![(&[2, 3], Normal), (&[2, 1], Normal)]), || vec![("axis", Attr::Int(1))]),
        case("Gather", vec![(&[5, 3], Normal), (&[2, 2], Ints(&[4, 0, -1, 2]))]),
        with(case("Gather", vec![(&[2, 4], Normal), (&[3], Ints(&[3, 1, 1]))]), || vec![("axis", Attr::Int(1))]),
        case("Slice", vec![(&[3, 5], Normal), (&[1], Ints(&[1])), (&[1], Ints(&[-1])), (&[1], Ints(&[1]))]),
        case("Expand", vec![(&[3, 1], Normal), (&[3], Ints(&[2, 3, 4]))]),
        case("Where", vec![(&[3], Bools(&[true, false, true])), (&[2, 3], Normal), (&[3], Normal)]),
        // Axes as an input: opset 18 (before, an attribute).
        Case {
            opset: 18,
            ..with(case("ReduceMean", vec![(&[2, 3, 4], Normal), (&[1], Ints(&[-1]))]), || vec![("keepdims", Attr::Int(0))])
        },
        case("ReduceSum", vec![(&[2, 3, 4], Normal), (&[2], Ints(&[0, 2]))]),
    ]
}

/// The case as a model: float operands are initializers (the parameters), int and bool ones
/// constants; the single output is `y`.
fn model(c: &Case, salt: u64) -> (Vec<u8>, Vec<(String, distq_runtime::Tensor)>) {
    let mut b = ModelBuilder::new(c.opset);
    let mut names = Vec::new();
    let mut floats = Vec::new();
    for (i, (shape, values)) in c.operands.iter().enumerate() {
        let name = format!("in{i}");
        let n: usize = shape.iter().product();
        let t = match values {
            Values::Normal => distq_runtime::Tensor::from_vec(shape.to_vec(), normal_values(n, 1.0, salt + i as u64)),
            Values::Positive => distq_runtime::Tensor::from_vec(
                shape.to_vec(),
                normal_values(n, 1.0, salt + i as u64).iter().map(|v| 0.5 + 1.5 * (0.5 + 0.5 * v.tanh())).collect(),
            ),
            Values::Spread => {
                // A shuffled ramp with steps of 0.25, centred on zero.
                let mut ramp: Vec<f32> = (0..n).map(|k| (k as f32 - n as f32 / 2.0 + 0.5) * 0.25).collect();
                let order = super::data::epoch_order(n, salt, i);
                ramp = order.iter().map(|&k| ramp[k]).collect();
                distq_runtime::Tensor::from_vec(shape.to_vec(), ramp)
            }
            Values::Ints(v) => distq_runtime::Tensor::from_vec(shape.to_vec(), v.to_vec()),
            Values::Bools(v) => distq_runtime::Tensor::from_bools(shape.to_vec(), v.to_vec()),
        }
        .unwrap();
        if t.dtype() == DataType::F32 {
            floats.push((name.clone(), t.clone()));
        }
        b = b.initializer(&name, &t);
        names.push(name);
    }
    let inputs: Vec<&str> = names.iter().map(String::as_str).collect();
    let bytes = b.node(c.op, &inputs, &["y"], (c.attrs)()).output("y", DataType::F32, &[]).to_bytes();
    (bytes, floats)
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

#[test]
fn every_op_matches_the_runtime_and_finite_differences() {
    let mut failures = Vec::new();
    for (k, c) in cases().iter().enumerate() {
        let (bytes, _) = model(c, 100 + k as u64);
        let label = format!("case {k} ({})", c.op);
        let file = OnnxFile::decode(bytes.clone().into(), None, label.clone()).unwrap();
        let graph = TrainableGraph::new(&file, DType::F64, &Freeze::default()).unwrap();
        if c.op == "BatchNormalization" {
            assert_eq!(graph.params().iter().filter(|p| !p.trainable).count(), 2, "running statistics are frozen");
        }
        let y = graph.forward(&[], &["y"]).unwrap().remove(0);
        // Forward: the runtime's f32 result.
        let runtime = Session::new(Model::from_bytes(bytes).unwrap()).run(Vec::<(&str, _)>::new()).unwrap().remove(0).1;
        assert_eq!(y.dims(), runtime.shape(), "{label}: shape");
        let ours = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        for (a, b) in ours.iter().zip(runtime.to_f32s().unwrap()) {
            if (a - f64::from(b)).abs() > 1e-4 * (1.0 + a.abs()) {
                failures.push(format!("{label}: forward {a} vs runtime {b}"));
                break;
            }
        }
        // Backward: d(Σ y·r)/dθ against central differences, for every float parameter.
        let r = Tensor::from_vec(
            normal_values(y.elem_count(), 1.0, 7).iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            y.dims(),
            &Device::Cpu,
        )
        .unwrap();
        let objective = |g: &TrainableGraph| g.forward(&[], &["y"]).unwrap().remove(0).mul(&r).unwrap().sum_all().unwrap();
        let grads = match objective(&graph).backward() {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{label}: backward failed: {e}"));
                continue;
            }
        };
        for p in graph.params().iter().filter(|p| p.trainable) {
            let analytic = grads.get(&p.var).map(|g| g.flatten_all().unwrap().to_vec1::<f64>().unwrap());
            let base = p.var.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let eps = 1e-6;
            for i in 0..base.len() {
                let at = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    p.var.set(&Tensor::from_vec(v, p.var.dims(), &Device::Cpu).unwrap()).unwrap();
                    scalar(&objective(&graph))
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                p.var.set(&Tensor::from_vec(base.clone(), p.var.dims(), &Device::Cpu).unwrap()).unwrap();
                let got = analytic.as_ref().map_or(0.0, |a| a[i]);
                if (got - numeric).abs() > 1e-5 * (1.0 + numeric.abs()) {
                    failures.push(format!("{label}: d/d{}[{i}] = {got}, finite differences {numeric}", p.name));
                    break;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

/// Shape's opset-15 range attributes (integer output: outside the float table).
#[test]
fn shape_takes_a_range_of_dims() {
    let bytes = ModelBuilder::new(17)
        .input("x", DataType::F32, &[2, 3, 4])
        .node("Shape", &["x"], &["y"], vec![("start", Attr::Int(1)), ("end", Attr::Int(-1))])
        .output("y", DataType::I64, &[1])
        .to_bytes();
    let graph =
        TrainableGraph::new(&OnnxFile::decode(bytes.into(), None, "shape".into()).unwrap(), DType::F32, &Freeze::default()).unwrap();
    let x = Tensor::zeros((2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let y = graph.forward(&[("x", x)], &["y"]).unwrap().remove(0);
    assert_eq!(y.to_vec1::<i64>().unwrap(), [3]);
}
