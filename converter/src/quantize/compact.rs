//! Short tensor names for size-critical outputs (`--compact-names`).
//!
//! Names are most of a small model's graph bytes: exporters name tensors after their layers
//! (`conv4_expand_weights`) and quantization adds suffixes to them. On PP-OCR's 0.59 MB
//! direction classifier at int8, names are 22 KB of a 197 KB file. Compacting renames every
//! tensor except the graph's inputs and outputs (which callers bind by name) to a short id
//! and drops node names and doc strings; the computation is unchanged.

use distq_runtime::onnx::proto::{GraphProto, ModelProto};
use std::collections::{HashMap, HashSet};

/// Renames `model`'s internal tensors (in subgraphs too) to short ids, consistently
/// everywhere a name appears, and drops node names and doc strings.
///
/// ```
/// use distq_converter::quantize::compact::compact_names;
/// use distq_runtime::testing::ModelBuilder;
/// use distq_runtime::{DataType, Tensor};
///
/// let mut model = ModelBuilder::new(17)
///     .input("x", DataType::F32, &[2])
///     .initializer("a_rather_long_weight_name", &Tensor::from_vec(vec![2], vec![1f32, 2.0]).unwrap())
///     .node("Add", &["x", "a_rather_long_weight_name"], &["y"], vec![])
///     .output("y", DataType::F32, &[2])
///     .build();
/// compact_names(&mut model);
/// let graph = model.graph.as_ref().unwrap();
/// assert_eq!(graph.node[0].input, ["x", "_0"]);
/// assert_eq!(graph.initializer[0].name.as_deref(), Some("_0"));
/// assert_eq!(graph.node[0].output, ["y"]);
/// ```
pub fn compact_names(model: &mut ModelProto) {
    let Some(graph) = model.graph.as_mut() else { return };
    let kept: HashSet<String> = graph.input.iter().chain(&graph.output).filter_map(|v| v.name.clone()).collect();
    let mut renamer = Renamer { kept, short: HashMap::new(), next: 0 };
    model.doc_string = None;
    renamer.graph(graph);
}

/// One name map for the whole model: names are unique across a model's graphs (subgraphs
/// read outer names), so one consistent map keeps every reference intact.
struct Renamer {
    kept: HashSet<String>,
    short: HashMap<String, String>,
    /// The next id to try.
    next: usize,
}

impl Renamer {
    fn name(&mut self, name: &mut String) {
        if name.is_empty() || self.kept.contains(name.as_str()) {
            return;
        }
        let (kept, next) = (&self.kept, &mut self.next);
        let short = self.short.entry(std::mem::take(name)).or_insert_with(|| {
            loop {
                // `_<n>`, skipping any id a kept name already uses.
                let id = format!("_{next}");
                *next += 1;
                if !kept.contains(&id) {
                    break id;
                }
            }
        });
        name.clone_from(short);
    }

    fn optional(&mut self, name: &mut Option<String>) {
        if let Some(n) = name.as_mut() {
            self.name(n);
        }
    }

    fn graph(&mut self, graph: &mut GraphProto) {
        graph.doc_string = None;
        for t in &mut graph.initializer {
            self.optional(&mut t.name);
            t.doc_string = None;
        }
        for s in &mut graph.sparse_initializer {
            for t in s.values.iter_mut().chain(s.indices.iter_mut()) {
                self.optional(&mut t.name);
            }
        }
        for v in graph.input.iter_mut().chain(&mut graph.output).chain(&mut graph.value_info) {
            self.optional(&mut v.name);
            v.doc_string = None;
        }
        for a in &mut graph.quantization_annotation {
            self.optional(&mut a.tensor_name);
            for e in &mut a.quant_parameter_tensor_names {
                self.optional(&mut e.value);
            }
        }
        for node in &mut graph.node {
            node.name = None;
            node.doc_string = None;
            node.input.iter_mut().chain(&mut node.output).for_each(|n| self.name(n));
            for attribute in &mut node.attribute {
                for g in attribute.g.iter_mut().chain(&mut attribute.graphs) {
                    self.graph(g);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distq_runtime::testing::{Attr, ModelBuilder};
    use distq_runtime::{DataType, Model, Session, Tensor};
    use prost::Message;

    #[test]
    fn compacted_model_computes_the_same_and_subgraphs_keep_their_references() {
        let w = Tensor::from_vec(vec![2], vec![0.5f32, -1.5]).unwrap();
        // The branch reads the outer initializer `outer_weight` by name.
        let branch = ModelBuilder::new(17)
            .node("Mul", &["x", "outer_weight"], &["branch_out"], vec![])
            .output("branch_out", DataType::F32, &[2])
            .build_graph();
        let cond = Tensor::from_bools(vec![], vec![true]).unwrap();
        let mut model = ModelBuilder::new(17)
            .input("x", DataType::F32, &[2])
            .initializer("outer_weight", &w)
            .initializer("always", &cond)
            .node("If", &["always"], &["chosen"], vec![("then_branch", Attr::Graph(branch.clone())), ("else_branch", Attr::Graph(branch))])
            .node("Add", &["chosen", "outer_weight"], &["_0"], vec![])
            .output("_0", DataType::F32, &[2])
            .build();
        let run = |m: &ModelProto| {
            let x = Tensor::from_vec(vec![2], vec![2f32, 3.0]).unwrap();
            Session::new(Model::from_bytes(m.encode_to_vec()).unwrap()).run(vec![("x", x)]).unwrap().remove(0)
        };
        let before = run(&model);
        let size = model.encoded_len();
        compact_names(&mut model);
        let after = run(&model);
        assert_eq!(before.0, after.0, "output names are kept");
        assert_eq!(before.1.as_slice::<f32>().unwrap(), after.1.as_slice::<f32>().unwrap());
        assert!(model.encoded_len() < size);
        let graph = model.graph.as_ref().unwrap();
        // `_0` is a kept output name: the generated ids skip it.
        let names: Vec<&str> = graph.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
        assert_eq!(names, ["_1", "_2"]);
        assert!(graph.node.iter().all(|n| n.name.is_none()));
    }
}
