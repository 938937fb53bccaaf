//! Hostile models: files built to escape the model folder, to make the loader allocate
//! without bound, to recurse, or to confuse names and dtypes. Each case must end in a clear
//! error naming the problem, without a panic, and with the process's peak resident memory
//! kept under a bound. The models are generated here, not hand-edited binaries.
//!
//! Runs without the test harness, one case after another in one thread, so that the kernel's
//! peak-RSS mark (reset before each case) belongs to that case alone.

mod common;

use common::{assert_mentions, external_model, raw_tensor, temp_dir, with_initializer};
use distq_runtime::onnx::proto::{GraphProto, TensorProto};
use distq_runtime::testing::{Attr, ModelBuilder};
use distq_runtime::{DataType, Model, Session, Tensor};
use std::path::{Path, PathBuf};

/// Growth of peak resident memory any one case may cause.
const RSS_BOUND_MB: u64 = 64;

/// A case: the model it builds (in its scratch folder, before measuring) and the parts the
/// error of loading it, or of running it on zeros, must mention.
struct Case {
    name: &'static str,
    model: fn(&Path) -> Source,
    mentions: &'static [&'static str],
}

enum Source {
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn main() {
    let cases = cases();
    // The libtest flags the test scripts pass: no case is `#[ignore]`d (a run of the ignored
    // tests runs none), and `--list` names them.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        cases.iter().for_each(|case| println!("{}: test", case.name));
        return;
    }
    if args.iter().any(|a| a == "--ignored") {
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; {} filtered out", cases.len());
        return;
    }
    let mut peak = PeakRss::start();
    for case in &cases {
        let scratch = temp_dir("hostile");
        let source = (case.model)(scratch.path());
        peak.reset();
        let before = peak.current_kb();
        let outcome = std::panic::catch_unwind(|| load_or_run_err(source));
        let grown_mb = peak.peak_kb().saturating_sub(before) / 1024;
        let msg = outcome.unwrap_or_else(|_| panic!("case '{}' panicked", case.name));
        assert_mentions(&msg, case.mentions);
        assert!(grown_mb <= RSS_BOUND_MB, "case '{}': peak RSS grew {grown_mb} MB (bound {RSS_BOUND_MB})", case.name);
        println!("ok   {:<44} +{grown_mb:>3} MB peak  {msg}", case.name);
    }
    // The meter itself, last (a mark that cannot be reset would keep it): touching 128 MB
    // must show, or the bounds above proved nothing.
    peak.reset();
    let before = peak.current_kb();
    let touched = std::hint::black_box(vec![1u8; 128 << 20]);
    let seen_mb = peak.peak_kb().saturating_sub(before) / 1024;
    drop(touched);
    assert!(seen_mb >= 120, "peak RSS shows {seen_mb} MB for 128 MB touched");
    println!("{} hostile models refused, each within +{RSS_BOUND_MB} MB of peak RSS ({})", cases.len(), peak.method());
    // libtest's closing line, so that the test scripts count the cases.
    println!("test result: ok. {} passed; 0 failed; 0 ignored; 0 measured; 0 filtered out", cases.len());
}

/// The process's peak resident memory (`VmHWM`). Linux lets a process reset the mark
/// (`clear_refs` 5); where it cannot (some emulators), the mark is never reset and each
/// case is measured against the start, which bounds every case at least as tightly.
struct PeakRss {
    resettable: bool,
    start_kb: u64,
}

impl PeakRss {
    fn start() -> PeakRss {
        let resettable = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let start_kb = status_kb("VmHWM:");
        assert!(start_kb > 0, "no VmHWM in /proc/self/status: peak RSS cannot be measured here");
        PeakRss { resettable, start_kb }
    }

    fn reset(&mut self) {
        if self.resettable {
            std::fs::write("/proc/self/clear_refs", "5").unwrap();
        }
    }

    fn current_kb(&self) -> u64 {
        if self.resettable { status_kb("VmRSS:") } else { self.start_kb }
    }

    fn peak_kb(&self) -> u64 {
        status_kb("VmHWM:")
    }

    fn method(&self) -> &'static str {
        if self.resettable { "peak reset per case" } else { "peak measured from the start" }
    }
}

fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

/// The error of loading, or failing that of running once on zeros of the declared shapes.
fn load_or_run_err(source: Source) -> String {
    let loaded = match source {
        Source::Bytes(bytes) => Model::from_bytes(bytes),
        Source::File(path) => Model::load(path),
    };
    let model = match loaded {
        Ok(m) => m,
        Err(e) => return e.to_string(),
    };
    let inputs: Vec<(String, Tensor)> = model
        .inputs()
        .iter()
        .map(|i| {
            let dims: Vec<usize> =
                i.dims.iter().flatten().map(|d| if let distq_runtime::graph::Dim::Fixed(n) = d { *n } else { 1 }).collect();
            let n = dims.iter().product();
            (i.name.clone(), Tensor::from_vec(dims, vec![0f32; n]).unwrap())
        })
        .collect();
    match Session::new(model).run(inputs) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// A graph whose `If` nests `depth` deep through its then-branches, conditions constant.
fn nested_if(depth: usize) -> GraphProto {
    let leaf = ModelBuilder::new(17).node("Identity", &["x"], &["out"], vec![]).output("out", DataType::F32, &[2]).build_graph();
    (0..depth).fold(leaf.clone(), |inner, _| {
        ModelBuilder::new(17)
            .initializer("c", &Tensor::from_bools(vec![], vec![true]).unwrap())
            .node("If", &["c"], &["out"], vec![("then_branch", Attr::Graph(inner)), ("else_branch", Attr::Graph(leaf.clone()))])
            .output("out", DataType::F32, &[2])
            .build_graph()
    })
}

/// A model whose graph nests `depth` subgraphs in the wire format itself (graph → node →
/// attribute → graph …), written inside out as bytes: prost's encoder recomputes every nested
/// length at every level, quadratic in the depth (minutes for 10 000 levels of `nested_if`).
fn nested_graph_bytes(depth: usize) -> Vec<u8> {
    // A length-delimited field: key (field number, wire type 2), length, bytes.
    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 12);
        prost::encoding::encode_varint(number << 3 | 2, &mut out);
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }
    // GraphProto.node = 1, NodeProto.attribute = 5, AttributeProto.g = 6.
    let graph = (0..depth).fold(Vec::new(), |inner, _| field(1, &field(5, &field(6, &inner))));
    let mut model = ModelBuilder::new(17).build();
    model.graph = None;
    let mut bytes = prost::Message::encode_to_vec(&model);
    bytes.extend(field(7, &graph)); // ModelProto.graph = 7
    bytes
}

fn with_graph(g: GraphProto) -> Vec<u8> {
    let mut m = ModelBuilder::new(17).input("x", DataType::F32, &[2]).output("out", DataType::F32, &[2]).build();
    let graph = m.graph.as_mut().unwrap();
    graph.node = g.node;
    graph.initializer = g.initializer;
    prost::Message::encode_to_vec(&m)
}

/// An INT4 tensor `q` of `dims` with `bytes` bytes, dequantized with a float scale.
fn int4_model(dims: Vec<i64>, bytes: usize, scale: Tensor, zero: Option<TensorProto>) -> Vec<u8> {
    let q = TensorProto {
        name: Some("q".into()),
        dims: dims.clone(),
        data_type: Some(22),
        raw_data: Some(vec![0x21u8; bytes].into()),
        ..Default::default()
    };
    let mut b = ModelBuilder::new(21).initializer_proto(q).initializer("scale", &scale);
    let inputs: &[&str] = if let Some(z) = zero {
        b = b.initializer_proto(z);
        &["q", "scale", "zero"]
    } else {
        &["q", "scale"]
    };
    b.node("DequantizeLinear", inputs, &["y"], vec![]).output("y", DataType::F32, &dims).to_bytes()
}

/// The external-data file: 64 zero bytes then two floats.
fn weights(dir: &Path) {
    let mut w = vec![0u8; 64];
    w.extend(1.5f32.to_le_bytes());
    w.extend(2.5f32.to_le_bytes());
    std::fs::write(dir.join("weights.bin"), w).unwrap();
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "external data: relative path out of the folder",
            model: |dir| {
                let inner = dir.join("model");
                std::fs::create_dir(&inner).unwrap();
                std::fs::write(dir.join("secret.bin"), [7u8; 8]).unwrap();
                Source::File(external_model(&inner, "../secret.bin", vec![2], 0, 8))
            },
            mentions: &["tensor 'w'", "escapes the model folder"],
        },
        Case {
            name: "external data: absolute path",
            model: |dir| {
                std::fs::write(dir.join("secret.bin"), [7u8; 8]).unwrap();
                let absolute = dir.join("secret.bin").to_string_lossy().into_owned();
                Source::File(external_model(dir, &absolute, vec![2], 0, 8))
            },
            mentions: &["tensor 'w'", "escapes the model folder"],
        },
        Case {
            name: "external data: symlink out of the folder",
            model: |dir| {
                let inner = dir.join("model");
                std::fs::create_dir(&inner).unwrap();
                std::fs::write(dir.join("secret.bin"), [7u8; 8]).unwrap();
                std::os::unix::fs::symlink(dir.join("secret.bin"), inner.join("link.bin")).unwrap();
                Source::File(external_model(&inner, "link.bin", vec![2], 0, 8))
            },
            mentions: &["tensor 'w'", "outside the model folder", "symlink"],
        },
        Case {
            name: "external data: offset past the end",
            model: |dir| {
                weights(dir);
                Source::File(external_model(dir, "weights.bin", vec![2], 4096, 8))
            },
            mentions: &["tensor 'w'", "runs past the end", "72 bytes"],
        },
        Case {
            name: "external data: length past the end",
            model: |dir| {
                weights(dir);
                Source::File(external_model(dir, "weights.bin", vec![2], 64, 1 << 40))
            },
            mentions: &["tensor 'w'", "runs past the end"],
        },
        Case {
            name: "external data: 2^40 elements in a 72-byte file",
            model: |dir| {
                weights(dir);
                Source::File(external_model(dir, "weights.bin", vec![1 << 20, 1 << 20], 64, 8))
            },
            mentions: &["tensor 'w'", "needs 4398046511104 bytes"],
        },
        Case {
            name: "raw data: 2^40 elements in a 1 KB file",
            model: |_| Source::Bytes(with_initializer(raw_tensor(vec![1 << 20, 1 << 20], 900))),
            mentions: &["tensor 'w'", "needs 4398046511104 bytes", "got 900"],
        },
        Case {
            name: "float_data: 2^40 elements from 4 values",
            model: |_| {
                let t = TensorProto {
                    name: Some("w".into()),
                    dims: vec![1 << 40],
                    data_type: Some(1),
                    float_data: vec![1.0; 4],
                    ..Default::default()
                };
                Source::Bytes(with_initializer(t))
            },
            mentions: &["tensor 'w'", "1099511627776"],
        },
        Case {
            name: "negative dim",
            model: |_| Source::Bytes(with_initializer(raw_tensor(vec![2, -3], 8))),
            mentions: &["tensor 'w'", "dim 1 is -3"],
        },
        Case {
            name: "huge dim",
            model: |_| Source::Bytes(with_initializer(raw_tensor(vec![i64::MAX], 8))),
            mentions: &["tensor 'w'", "dim 0 is 9223372036854775807"],
        },
        Case {
            name: "shape product overflows",
            model: |_| Source::Bytes(with_initializer(raw_tensor(vec![1 << 31, 1 << 31, 1 << 31], 8))),
            mentions: &["tensor 'w'", "overflows"],
        },
        Case {
            name: "raw data one byte short",
            model: |_| Source::Bytes(with_initializer(raw_tensor(vec![2], 7))),
            mentions: &["tensor 'w'", "needs 8 bytes", "got 7"],
        },
        Case {
            name: "ConstantOfShape asking for 2^40 floats",
            model: |_| {
                let shape = Tensor::from_vec(vec![2], vec![1i64 << 20, 1 << 20]).unwrap();
                Source::Bytes(
                    ModelBuilder::new(17)
                        .input("x", DataType::F32, &[2])
                        .initializer("shape", &shape)
                        .node("ConstantOfShape", &["shape"], &["big"], vec![])
                        .node("Add", &["big", "x"], &["y"], vec![])
                        .output("y", DataType::F32, &[-1, -1])
                        .to_bytes(),
                )
            },
            mentions: &["ConstantOfShape", "bytes"],
        },
        Case {
            name: "subgraphs nested 10 000 deep (decoder bomb)",
            model: |_| Source::Bytes(nested_graph_bytes(10_000)),
            mentions: &["not a valid ONNX model", "nest deeper than protobuf's limit"],
        },
        Case {
            name: "subgraphs nested 20 deep",
            model: |_| Source::Bytes(with_graph(nested_if(20))),
            mentions: &["subgraphs nest deeper than"],
        },
        Case {
            name: "a chain of 30 000 nodes, then a bad Add",
            model: |_| {
                let names: Vec<String> = (0..=30_000).map(|i| if i == 0 { "x".to_string() } else { format!("v{i}") }).collect();
                // Planned node by node to the end, where [2] + [3] cannot broadcast.
                let three = Tensor::from_vec(vec![3], vec![0f32; 3]).unwrap();
                let mut b = ModelBuilder::new(17).input("x", DataType::F32, &[2]).initializer("three", &three);
                for w in names.windows(2) {
                    b = b.node("Relu", &[&w[0]], &[&w[1]], vec![]);
                }
                Source::Bytes(b.node("Add", &["v30000", "three"], &["y"], vec![]).output("y", DataType::F32, &[2]).to_bytes())
            },
            mentions: &["n30000_Add", "cannot be broadcast"],
        },
        Case {
            name: "two initializers with one name",
            model: |_| {
                let t = Tensor::from_vec(vec![2], vec![1f32, 2.]).unwrap();
                Source::Bytes(
                    ModelBuilder::new(17)
                        .input("x", DataType::F32, &[2])
                        .initializer("w", &t)
                        .initializer("w", &t)
                        .node("Add", &["x", "w"], &["y"], vec![])
                        .output("y", DataType::F32, &[2])
                        .to_bytes(),
                )
            },
            mentions: &["'w'", "twice"],
        },
        Case {
            name: "two inputs with one name",
            model: |_| {
                Source::Bytes(
                    ModelBuilder::new(17)
                        .input("x", DataType::F32, &[2])
                        .input("x", DataType::F32, &[3])
                        .node("Relu", &["x"], &["y"], vec![])
                        .output("y", DataType::F32, &[2])
                        .to_bytes(),
                )
            },
            mentions: &["'x'", "twice"],
        },
        Case {
            name: "a node producing a graph input",
            model: |_| {
                Source::Bytes(
                    ModelBuilder::new(17)
                        .input("x", DataType::F32, &[2])
                        .node("Relu", &["x"], &["x"], vec![])
                        .output("x", DataType::F32, &[2])
                        .to_bytes(),
                )
            },
            mentions: &["'x'", "n0_Relu"],
        },
        Case {
            name: "a node consuming its own output",
            model: |_| {
                Source::Bytes(
                    ModelBuilder::new(17)
                        .input("x", DataType::F32, &[2])
                        .node("Mul", &["x", "y"], &["y"], vec![])
                        .output("y", DataType::F32, &[2])
                        .to_bytes(),
                )
            },
            mentions: &["cycle", "n0_Mul"],
        },
        Case {
            name: "int4 data of odd length (3 bytes for 4 values)",
            model: |_| Source::Bytes(int4_model(vec![4], 3, Tensor::scalar(0.5f32), None)),
            mentions: &["tensor 'q'", "shape [4] of int4 needs 2 bytes", "got 3"],
        },
        Case {
            name: "int4 data short (1 byte for 3 values)",
            model: |_| Source::Bytes(int4_model(vec![3], 1, Tensor::scalar(0.5f32), None)),
            mentions: &["tensor 'q'", "shape [3] of int4 needs 2 bytes", "got 1"],
        },
        Case {
            name: "scale of dtype int64",
            model: |_| Source::Bytes(int4_model(vec![4], 2, Tensor::scalar(3i64), None)),
            mentions: &["DequantizeLinear", "scale", "int64"],
        },
        Case {
            name: "zero point of dtype float",
            model: |_| {
                let zero = common_tensor("zero", &Tensor::scalar(1.0f32));
                Source::Bytes(int4_model(vec![4], 2, Tensor::scalar(0.5f32), Some(zero)))
            },
            mentions: &["DequantizeLinear", "zero point has dtype float"],
        },
        Case {
            name: "zero point of another integer type than the data",
            model: |_| {
                let zero = common_tensor("zero", &Tensor::scalar(3u8));
                Source::Bytes(int4_model(vec![4], 2, Tensor::scalar(0.5f32), Some(zero)))
            },
            mentions: &["DequantizeLinear", "zero point", "uint8"],
        },
    ]
}

fn common_tensor(name: &str, t: &Tensor) -> TensorProto {
    distq_runtime::testing::tensor_proto(name, t)
}
