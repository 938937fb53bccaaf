//! The graph IR: nodes with their ops, in topological order, referring to values by name
//! (names are unique across a model, subgraphs included, as ONNX requires).

use crate::error::{Error, Result};
use crate::ops::Op;
use crate::tensor::{DataType, Tensor};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// One declared dim of a graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named size (`batch`, `seq`), chosen by the caller's tensors.
    Symbolic(String),
    /// No information.
    Unknown,
}

/// A declared graph input or output.
#[derive(Clone, Debug)]
pub struct ValueInfo {
    /// Value name.
    pub name: String,
    /// Declared element type, if any.
    pub dtype: Option<DataType>,
    /// Declared dims, if the rank is known.
    pub dims: Option<Vec<Dim>>,
}

/// What a node does.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A plain operator.
    Op(Arc<dyn Op>),
    /// `If`: both branches; the planner inlines the one its (constant) condition selects.
    If {
        /// Taken when the condition is true.
        then_branch: Arc<Graph>,
        /// Taken when the condition is false.
        else_branch: Arc<Graph>,
    },
}

/// One node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node name (made unique when the file leaves it empty).
    pub name: String,
    /// ONNX op type (with `domain::` prefix outside the default domain).
    pub op_type: String,
    /// Input value names; `""` marks a skipped optional input.
    pub inputs: Vec<String>,
    /// Output value names; `""` marks an unused optional output.
    pub outputs: Vec<String>,
    /// The operator.
    pub kind: NodeKind,
}

/// A graph (the main one or a branch of an `If`).
#[derive(Debug, Default)]
pub struct Graph {
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Inputs the caller feeds (initializers excluded).
    pub inputs: Vec<ValueInfo>,
    /// Outputs.
    pub outputs: Vec<ValueInfo>,
    /// Weights and constants, by name.
    pub initializers: HashMap<String, Arc<Tensor>>,
}

impl Graph {
    /// Names this graph reads from an enclosing scope (for subgraphs), recursively.
    pub fn captured_names(&self) -> HashSet<String> {
        let mut defined: HashSet<&str> = self.initializers.keys().map(String::as_str).collect();
        defined.extend(self.inputs.iter().map(|i| i.name.as_str()));
        for n in &self.nodes {
            defined.extend(n.outputs.iter().map(String::as_str));
        }
        let mut captured = HashSet::new();
        for n in &self.nodes {
            for i in n.inputs.iter().filter(|i| !i.is_empty()).cloned().chain(n.branch_captures()) {
                if !defined.contains(i.as_str()) {
                    captured.insert(i);
                }
            }
        }
        for o in &self.outputs {
            if !defined.contains(o.name.as_str()) {
                captured.insert(o.name.clone());
            }
        }
        captured
    }

    /// Every node, including those inside branches, with its nesting depth.
    pub fn walk(&self, depth: usize, f: &mut dyn FnMut(&Node, usize)) {
        for n in &self.nodes {
            f(n, depth);
            if let NodeKind::If { then_branch, else_branch } = &n.kind {
                then_branch.walk(depth + 1, f);
                else_branch.walk(depth + 1, f);
            }
        }
    }
}

impl Node {
    /// Outer-scope names the node's branches read (empty for plain ops).
    pub fn branch_captures(&self) -> Vec<String> {
        match &self.kind {
            NodeKind::Op(_) => Vec::new(),
            NodeKind::If { then_branch, else_branch } => {
                then_branch.captured_names().into_iter().chain(else_branch.captured_names()).collect()
            }
        }
    }
}

/// Orders `nodes` so that each comes after the producers of its inputs (Kahn's algorithm).
/// `available` are names defined before any node runs (inputs, initializers, outer scope).
/// Fails on a cycle or on an input that nothing produces, naming the node.
pub fn topological_sort(nodes: Vec<Node>, available: &HashSet<String>) -> Result<Vec<Node>> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in n.outputs.iter().filter(|o| !o.is_empty()) {
            if available.contains(o) {
                return Err(Error::InvalidModel(format!(
                    "node '{}' ({}) writes '{o}', which is already a graph input or initializer",
                    n.name, n.op_type
                )));
            }
            if let Some(&other) = producer.get(o.as_str()) {
                return Err(Error::InvalidModel(format!(
                    "value '{o}' is produced by both node '{}' and node '{}'",
                    nodes[other].name, n.name
                )));
            }
            producer.insert(o, i);
        }
    }
    let deps: Vec<Vec<usize>> = nodes
        .iter()
        .map(|n| {
            let mut d = Vec::new();
            for i in n.inputs.iter().filter(|i| !i.is_empty()).cloned().chain(n.branch_captures()) {
                match producer.get(i.as_str()) {
                    Some(&p) => d.push(p),
                    None if available.contains(&i) => {}
                    None => {
                        return Err(Error::InvalidModel(format!(
                            "node '{}' ({}) reads '{i}', which no node, initializer or graph input defines",
                            n.name, n.op_type
                        )));
                    }
                }
            }
            Ok(d)
        })
        .collect::<Result<_>>()?;
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut pending: Vec<usize> = deps.iter().map(Vec::len).collect();
    for (i, d) in deps.iter().enumerate() {
        for &p in d {
            users[p].push(i);
        }
    }
    // Ready nodes in file order, so the common already-sorted case keeps its order.
    let mut ready: std::collections::BTreeSet<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() < nodes.len() {
        let stuck = (0..nodes.len()).find(|i| pending[*i] > 0).unwrap_or(0);
        return Err(Error::InvalidModel(format!("the graph has a cycle through node '{}' ({})", nodes[stuck].name, nodes[stuck].op_type)));
    }
    let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}
