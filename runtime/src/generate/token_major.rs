//! A decoder's KV cache made token-major, so that a token's keys and values are appended to
//! it in place rather than the whole cache copied on every run.
//!
//! Optimum's layout `[batch, kv_heads, past, head_dim]` puts the growing axis inside the
//! heads: `Concat(past, new, axis 2)` must copy every head's rows to make room. In
//! `[past, batch, kv_heads, head_dim]` the same concatenation is an append, which the
//! executor does in the past's own storage (see `Concat`'s `eval_taking_first`). The graph's
//! readers of the cache see it in their layout again through a `Transpose`, which fusion
//! folds into the attention MatMuls as a strided read.

use crate::graph::{Graph, Node, NodeKind, ValueInfo};
use crate::ops::Op;
use crate::ops::array::{Concat, Transpose};
use std::sync::Arc;

/// Optimum's cache axes → token-major (`[past, batch, heads, head_dim]`).
pub(crate) const TO_TOKEN_MAJOR: [usize; 4] = [2, 0, 1, 3];
/// Token-major → Optimum's cache axes.
const TO_HEADS_MAJOR: [usize; 4] = [1, 2, 0, 3];

/// `graph` with every `past_key_values.{i}.{key,value}` → `present.{i}.*` pair token-major, or
/// `None` when some pair is not the plain `Concat(past, new, axis 2)` this rewrite knows, or
/// its past has other readers (the graph then keeps its layout).
pub(crate) fn token_major(graph: &Graph, layers: usize) -> Option<Graph> {
    let mut nodes = graph.nodes.clone();
    let (mut inputs, mut outputs) = (graph.inputs.clone(), graph.outputs.clone());
    for layer in 0..layers {
        for kind in ["key", "value"] {
            let (past, present) = (format!("past_key_values.{layer}.{kind}"), format!("present.{layer}.{kind}"));
            let at = nodes.iter().position(|n| n.outputs.first() == Some(&present))?;
            let concat = &nodes[at];
            let NodeKind::Op(op) = &concat.kind else { return None };
            let axis = (op.as_ref() as &dyn std::any::Any).downcast_ref::<Concat>()?.axis();
            let [first, new] = &concat.inputs[..] else { return None };
            if first != &past || !matches!(axis, 2 | -2) || readers(&nodes, &past) != 1 {
                return None;
            }
            let new = new.clone();
            let (appended, heads_major) = (format!("{present}.token_major_rows"), format!("{present}.heads_major"));
            let node = |name: String, op: Arc<dyn Op>, op_type: &str, inputs: Vec<String>, output: String| Node {
                name,
                op_type: op_type.into(),
                inputs,
                outputs: vec![output],
                kind: NodeKind::Op(op),
            };
            let name = concat.name.clone();
            for n in nodes.iter_mut() {
                for i in n.inputs.iter_mut().filter(|i| **i == present) {
                    *i = heads_major.clone();
                }
            }
            nodes.splice(
                at..=at,
                [
                    node(format!("{name}/rows"), Arc::new(Transpose::new(&TO_TOKEN_MAJOR)), "Transpose", vec![new], appended.clone()),
                    node(name.clone(), Arc::new(Concat::new(0)), "Concat", vec![past.clone(), appended], present.clone()),
                    node(
                        format!("{name}/heads"),
                        Arc::new(Transpose::new(&TO_HEADS_MAJOR)),
                        "Transpose",
                        vec![present.clone()],
                        heads_major,
                    ),
                ],
            );
            permute_dims(inputs.iter_mut().find(|i| i.name == past)?)?;
            permute_dims(outputs.iter_mut().find(|o| o.name == present)?)?;
        }
    }
    Some(Graph { nodes, inputs, outputs, initializers: graph.initializers.clone() })
}

/// Nodes reading `name`, in their inputs or their branches.
fn readers(nodes: &[Node], name: &str) -> usize {
    nodes.iter().filter(|n| n.inputs.iter().any(|i| i == name) || n.branch_captures().iter().any(|c| c == name)).count()
}

/// Declared rank-4 dims in Optimum's cache layout → token-major.
fn permute_dims(info: &mut ValueInfo) -> Option<()> {
    let dims = info.dims.as_mut()?;
    if dims.len() != 4 {
        return None;
    }
    *dims = TO_TOKEN_MAJOR.iter().map(|&d| dims[d].clone()).collect();
    Some(())
}
