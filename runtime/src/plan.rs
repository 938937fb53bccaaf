//! The planner: for concrete input shapes, infers every value's dtype and shape, folds
//! constant subgraphs (shape arithmetic above all) and `If`s with known conditions, orders
//! the remaining steps, and computes buffer lifetimes and an arena layout from them.
//!
//! A plan may also serve a family of shapes whose symbolic dims grow together (a decoder's
//! past length, token after token): `plan_family` plans two members of the family to learn
//! which dims of which values change, then plans again keeping as run-time steps all shape
//! arithmetic that reads a changing dim (so a `Reshape` target or a `Range` limit is computed
//! from each run's shapes), and checks that the two members' plans are then the same, step
//! for step. The ops compute their outputs' shapes from their inputs when they run, so no
//! step is re-planned per shape.

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeKind};
use crate::ops::{BufferPool, Fact, Op, Work};
use crate::tensor::{DataType, Tensor, checked_numel};
use std::collections::HashMap;
use std::sync::Arc;

/// One op to run: input and output slots.
#[derive(Debug)]
pub(crate) struct Step {
    pub node: String,
    pub op_type: String,
    pub op: Arc<dyn Op>,
    pub inputs: Vec<Option<usize>>,
    /// `None` for outputs the graph never reads.
    pub outputs: Vec<Option<usize>>,
}

/// An executable plan for one set of input shapes.
#[derive(Debug)]
pub struct Plan {
    pub(crate) steps: Vec<Step>,
    /// Static facts of every slot.
    pub(crate) facts: Vec<Fact>,
    /// Slots holding constants (initializers and folded values).
    pub(crate) constants: Vec<Option<Arc<Tensor>>>,
    /// Slot of each graph input, in the graph's order.
    pub(crate) inputs: Vec<(String, usize)>,
    /// Slot of each graph output, in the graph's order.
    pub(crate) outputs: Vec<(String, usize)>,
    /// Slots whose last reader is step `i`: their buffers are recycled after it.
    pub(crate) free_after: Vec<Vec<usize>>,
    /// Bytes of the activation arena: every intermediate placed at an offset, buffers whose
    /// lifetimes do not overlap sharing space.
    pub arena_bytes: usize,
    /// Bytes all intermediates would take without sharing.
    pub unshared_bytes: usize,
    /// Nodes evaluated at plan time (constant folding, inlined branches).
    pub folded_nodes: usize,
    /// Per slot, the dims that change within the plan's family (empty for one shape): the
    /// executor checks only the others against each computed value.
    pub(crate) dynamic_dims: Vec<Vec<usize>>,
}

impl Plan {
    /// Number of ops that run per inference.
    pub fn num_steps(&self) -> usize {
        self.steps.len()
    }

    /// Shapes of the graph outputs.
    pub fn output_shapes(&self) -> Vec<(String, DataType, Vec<usize>)> {
        self.outputs.iter().map(|(n, s)| (n.clone(), self.facts[*s].dtype, self.facts[*s].shape.clone())).collect()
    }

    /// Op types of the steps, in order (for profiling tables).
    pub fn step_ops(&self) -> Vec<(&str, &str)> {
        self.steps.iter().map(|s| (s.node.as_str(), s.op_type.as_str())).collect()
    }

    /// What each step costs per run: its arithmetic and the bytes it reads and writes (none for
    /// a view, see [`Op::is_view`]).
    pub fn costs(&self) -> Vec<StepCost> {
        let bytes = |f: &Fact| f.dtype.bytes(f.shape.iter().product());
        self.steps
            .iter()
            .map(|step| {
                if step.op.is_view() {
                    let (node, op_type) = (step.node.clone(), step.op_type.clone());
                    return StepCost { node, op_type, work: Work::default(), weight_bytes: 0, activation_bytes: 0 };
                }
                let inputs: Vec<Option<&Fact>> = step.inputs.iter().map(|s| s.map(|s| &self.facts[s])).collect();
                let outputs: Vec<Fact> = step.outputs.iter().flatten().map(|&s| self.facts[s].clone()).collect();
                let (mut weight_bytes, mut activation_bytes) = (0, outputs.iter().map(bytes).sum());
                for &s in step.inputs.iter().flatten() {
                    match &self.constants[s] {
                        Some(t) => weight_bytes += t.byte_len(),
                        None => activation_bytes += bytes(&self.facts[s]),
                    }
                }
                let work = step.op.work(&inputs, &outputs);
                if let Some(read) = work.constant_bytes_read {
                    weight_bytes = weight_bytes.min(read as usize);
                }
                StepCost { node: step.node.clone(), op_type: step.op_type.clone(), work, weight_bytes, activation_bytes }
            })
            .collect()
    }
}

/// One step's cost per run (see [`Plan::costs`]).
#[derive(Clone, Debug)]
pub struct StepCost {
    /// Node name.
    pub node: String,
    /// Op type (fused steps name their parts).
    pub op_type: String,
    /// Its arithmetic.
    pub work: Work,
    /// Bytes of constant inputs (weights) it reads.
    pub weight_bytes: usize,
    /// Bytes of computed inputs it reads and of outputs it writes.
    pub activation_bytes: usize,
}

struct Planner<'a> {
    env: HashMap<String, usize>,
    facts: Vec<Fact>,
    constants: Vec<Option<Arc<Tensor>>>,
    steps: Vec<Step>,
    folded: usize,
    /// DequantizeLinear and float16 → float32 Cast nodes of constants, by output slot: fusion
    /// reads the compact constants behind a float weight from them. Large ones are deferred:
    /// their float values are computed only if a step still reads them after fusion.
    expanded: HashMap<usize, Step>,
    /// The output slots of the deferred expansions.
    deferred: Vec<usize>,
    /// 4-bit constants widened to bytes for the ops that compute on bytes, by slot.
    widened: HashMap<usize, usize>,
    /// Largest tensor a step may produce (see `Session::set_max_tensor_bytes`).
    max_tensor_bytes: usize,
    /// Per slot, the dims that change within the family of shapes planned for (none when
    /// planning one shape).
    changing: &'a [Vec<usize>],
    /// Per slot: its value is derived from changing dims, so it is computed in every run
    /// (what the planner holds is only the planned shapes' value, to infer what follows).
    tainted: Vec<bool>,
}

/// What a session asks of its plans.
#[derive(Clone, Copy)]
pub(crate) struct PlanOptions<'a> {
    /// Largest tensor a step may produce (see `Session::set_max_tensor_bytes`).
    pub max_tensor_bytes: usize,
    /// The file's literal float arithmetic everywhere (see `Session::set_exact`).
    pub exact: bool,
    /// The session's ops, shared by its plans (see [`OpMemo`]).
    pub ops: &'a OpMemo,
}

/// The ops of a session's plans by node, op type and alternate Debug form (which shows every
/// attribute and constant): a plan whose fusion makes an op equal to an earlier plan's takes
/// that op, and with it the weights it packed. A decoder's prefill and decode plans, or an
/// encoder's plans for two lengths, so hold one packed copy of each weight.
pub(crate) type OpMemo = std::sync::Mutex<HashMap<(String, String, String), Arc<dyn Op>>>;

impl Planner<'_> {
    /// A new slot; `constant`: its value (if any) is a constant of the plan, not only a
    /// representative for inferring what follows.
    fn slot(&mut self, fact: Fact, constant: bool) -> usize {
        self.constants.push(fact.value.clone().filter(|_| constant));
        self.tainted.push(!constant && fact.value.is_some());
        self.facts.push(fact);
        self.facts.len() - 1
    }

    /// Whether slot `s` has dims that change within the planned family.
    fn changes(&self, s: usize) -> bool {
        self.changing.get(s).is_some_and(|d| !d.is_empty())
    }

    /// `slot`, or for a 4-bit constant a slot of its values widened to bytes (made once).
    fn byte_wide(&mut self, slot: usize) -> Result<usize> {
        if !self.facts[slot].dtype.is_four_bit() {
            return Ok(slot);
        }
        if let Some(&w) = self.widened.get(&slot) {
            return Ok(w);
        }
        let value = self.constants[slot].as_ref().ok_or_else(|| Error::Op("4-bit values are supported in constants only".into()))?;
        let w = self.slot(Fact::of(Arc::new(value.widened()?)), true);
        self.widened.insert(slot, w);
        Ok(w)
    }

    fn lookup(&self, name: &str, node: &str) -> Result<usize> {
        self.env.get(name).copied().ok_or_else(|| Error::InvalidModel(format!("node '{node}' reads '{name}', which is not defined")))
    }

    fn graph(&mut self, g: &Graph) -> Result<()> {
        for (name, t) in &g.initializers {
            let s = self.slot(Fact::of(t.clone()), true);
            self.env.insert(name.clone(), s);
        }
        for node in &g.nodes {
            let inputs = node
                .inputs
                .iter()
                .map(|i| if i.is_empty() { Ok(None) } else { self.lookup(i, &node.name).map(Some) })
                .collect::<Result<Vec<_>>>()?;
            match &node.kind {
                NodeKind::If { then_branch, else_branch } => {
                    let cond = inputs.first().copied().flatten().and_then(|s| self.constants[s].clone());
                    let cond = match cond {
                        Some(c) if c.len() == 1 && c.dtype() == DataType::Bool => c.as_bools()?[0] != 0,
                        Some(c) => return Err(Error::Op(format!("condition must be one bool, got {c:?}")).in_node(&node.name, "If")),
                        None => {
                            return Err(Error::Op(
                                "the condition depends on input data; only conditions known from shapes and constants are supported".into(),
                            )
                            .in_node(&node.name, "If"));
                        }
                    };
                    let branch = if cond { then_branch } else { else_branch };
                    self.graph(branch)?;
                    for (out, bo) in node.outputs.iter().zip(&branch.outputs) {
                        let s = self.lookup(&bo.name, &node.name)?;
                        self.env.insert(out.clone(), s);
                    }
                    self.folded += 1;
                }
                NodeKind::Op(op) => self
                    .op(node.name.as_str(), node.op_type.as_str(), op, inputs, &node.outputs)
                    .map_err(|e| e.in_node(&node.name, &node.op_type))?,
            }
        }
        Ok(())
    }

    fn op(&mut self, name: &str, op_type: &str, op: &Arc<dyn Op>, inputs: Vec<Option<usize>>, outputs: &[String]) -> Result<()> {
        let inputs = match op.reads_four_bit() {
            true => inputs,
            false => inputs.into_iter().map(|s| s.map(|s| self.byte_wide(s)).transpose()).collect::<Result<_>>()?,
        };
        let in_facts: Vec<Option<&Fact>> = inputs.iter().map(|s| s.map(|s| &self.facts[s])).collect();
        let mut out_facts = op.infer(&in_facts)?;
        // A value inferred from a computed input can only come from its shape (`Shape`, `Size`).
        let from_changing_shape = out_facts.iter().any(|f| f.value.is_some())
            && inputs.iter().flatten().any(|&s| self.facts[s].value.is_none() && self.changes(s));
        for (i, f) in out_facts.iter().enumerate() {
            // Sizes are known here, before anything is allocated: a hostile model asking for
            // 2^40 elements is refused instead of aborting the process on allocation.
            let bytes = checked_numel(&f.shape).ok().and_then(|n| f.dtype.checked_bytes(n));
            if bytes.is_none_or(|b| b > self.max_tensor_bytes) {
                return Err(Error::Op(format!(
                    "output {i} would be {}{:?}, {} bytes, over the session's limit of {} bytes per tensor",
                    f.dtype,
                    f.shape,
                    bytes.map_or("too many".to_string(), |b| b.to_string()),
                    self.max_tensor_bytes
                )));
            }
        }
        if outputs.len() > out_facts.len() {
            return Err(Error::Op(format!("the node declares {} outputs, the op produces {}", outputs.len(), out_facts.len())));
        }
        out_facts.truncate(outputs.len());
        let known = inputs.iter().flatten().all(|&s| self.facts[s].value.is_some());
        let all_const = inputs.iter().flatten().all(|&s| self.constants[s].is_some());
        // Weights expanded from compact constants: a large one waits for fusion, which mostly
        // runs its readers on the compact form, so its float values never exist at all.
        let from_f16 = inputs.first().copied().flatten().is_some_and(|s| self.facts[s].dtype == DataType::F16);
        let expands = match (op_type, out_facts.as_slice()) {
            ("DequantizeLinear", [_]) => true,
            ("Cast", [f]) => from_f16 && f.dtype == DataType::F32,
            _ => false,
        };
        let defer = all_const && expands && out_facts[0].shape.iter().product::<usize>() >= DEFERRED_VALUES;
        if known && !defer {
            for (f, v) in out_facts.iter_mut().zip(self.evaluate(op, &inputs)?) {
                check_output(f, &[], &v)?;
                f.value = Some(Arc::new(v));
            }
        }
        // Shape arithmetic on changing dims is evaluated (what follows is inferred from it)
        // but runs again in every run.
        let runs = from_changing_shape || inputs.iter().flatten().any(|&s| self.tainted[s]);
        let folded = !runs && (defer || out_facts.iter().all(|f| f.value.is_some()));
        let mut out_slots = Vec::with_capacity(outputs.len());
        for (o, f) in outputs.iter().zip(out_facts) {
            if o.is_empty() {
                out_slots.push(None);
                continue;
            }
            let s = self.slot(f, folded);
            self.env.insert(o.clone(), s);
            out_slots.push(Some(s));
        }
        let step = Step { node: name.to_string(), op_type: op_type.to_string(), op: op.clone(), inputs, outputs: out_slots };
        if !folded {
            self.steps.push(step);
            return Ok(());
        }
        self.folded += 1;
        if let (true, [Some(s)]) = (expands, step.outputs.as_slice()) {
            if defer {
                self.deferred.push(*s);
            }
            self.expanded.insert(*s, step);
        }
        Ok(())
    }

    /// `op` on known `inputs` (constants, or values that represent the run's).
    fn evaluate(&self, op: &Arc<dyn Op>, inputs: &[Option<usize>]) -> Result<Vec<Tensor>> {
        let tensors: Vec<Option<&Tensor>> =
            inputs.iter().map(|s| s.map(|s| self.facts[s].value.as_deref().expect("a known input"))).collect();
        op.eval(&tensors, &mut BufferPool::default())
    }

    /// After fusion: computes the deferred expansions that steps (or the graph's outputs)
    /// still read, then folds the steps that read only constants as a result (a Transpose of
    /// such a weight, say).
    fn materialize(&mut self, graph_outputs: &[usize]) -> Result<()> {
        let read: Vec<usize> = self.steps.iter().flat_map(|s| s.inputs.iter().flatten()).chain(graph_outputs).copied().collect();
        for s in std::mem::take(&mut self.deferred) {
            if !read.contains(&s) {
                continue;
            }
            let step = &self.expanded[&s];
            let value = self.evaluate(&step.op, &step.inputs).map_err(|e| e.in_node(&step.node, &step.op_type))?.remove(0);
            check_output(&self.facts[s], &[], &value)?;
            let value = Arc::new(value);
            (self.constants[s], self.facts[s].value) = (Some(value.clone()), Some(value));
        }
        for step in std::mem::take(&mut self.steps) {
            if !step.inputs.iter().flatten().all(|&s| self.constants[s].is_some()) {
                self.steps.push(step);
                continue;
            }
            let values = self.evaluate(&step.op, &step.inputs).map_err(|e| e.in_node(&step.node, &step.op_type))?;
            for (&s, v) in step.outputs.iter().zip(values).filter_map(|(s, v)| Some((s.as_ref()?, v))) {
                check_output(&self.facts[s], &[], &v)?;
                let v = Arc::new(v);
                (self.constants[s], self.facts[s].value) = (Some(v.clone()), Some(v));
            }
            self.folded += 1;
        }
        Ok(())
    }
}

/// Values from which an expanded constant is deferred to after fusion (smaller ones fold at
/// once: their float form costs little, and shape arithmetic may need it).
pub(crate) const DEFERRED_VALUES: usize = 4096;

/// Checks a computed tensor against the planned fact (guards against inference bugs), all but
/// its `dynamic` dims.
pub(crate) fn check_output(fact: &Fact, dynamic: &[usize], t: &Tensor) -> Result<()> {
    let dims_agree = || fact.shape.iter().zip(t.shape()).enumerate().all(|(d, (f, t))| f == t || dynamic.contains(&d));
    if fact.dtype != t.dtype() || fact.shape.len() != t.shape().len() || !dims_agree() {
        return Err(Error::Op(format!("computed {t:?} but planned {}{:?}", fact.dtype, fact.shape)));
    }
    Ok(())
}

/// Plans `graph` for inputs of the given dtypes and shapes (in graph input order).
pub(crate) fn plan(graph: &Graph, inputs: &[(DataType, Vec<usize>)], options: PlanOptions) -> Result<Plan> {
    plan_with(graph, inputs, options, &[])
}

/// Plans `graph` for the family of input shapes `a + t·(b − a)` (`t` an integer, every dim
/// that changes at least 2), from two members: `a`, and `b` as `b_alone` (its plan for its
/// shapes alone, which the session has made already). Planned alone, they show which
/// dims of which values change; planned again with every value derived from a changing dim
/// computed at run time, the two plans must agree in every step, op and constant, and in
/// every dim but the changing ones, which become the plan's dynamic dims. Their sizes are
/// `a`'s in the plan's facts (its costs and arena are `a`'s).
///
/// Errors (the caller then plans `a` alone) when the plans differ in more than that: an `If`
/// whose condition depends on the changing dims, a fused op that took one of them as a
/// constant, a different fusion.
pub(crate) fn plan_family(graph: &Graph, a: &[(DataType, Vec<usize>)], b_alone: &Plan, options: PlanOptions) -> Result<Plan> {
    let b: Vec<(DataType, Vec<usize>)> =
        b_alone.inputs.iter().map(|&(_, s)| (b_alone.facts[s].dtype, b_alone.facts[s].shape.clone())).collect();
    let differs = |what: String| Error::Op(format!("the plans of {a:?} and {b:?} differ in {what}"));
    let a_alone = plan_with(graph, a, options, &[])?;
    if a_alone.facts.len() != b_alone.facts.len() {
        return Err(differs("their values".into()));
    }
    let changing: Vec<Vec<usize>> = a_alone.facts.iter().zip(&b_alone.facts).map(|(x, y)| changed_dims(x, y)).collect();
    let mut plan = plan_with(graph, a, options, &changing)?;
    let other = plan_with(graph, &b, options, &changing)?;
    if plan.steps.len() != other.steps.len() || plan.facts.len() != other.facts.len() || plan.folded_nodes != other.folded_nodes {
        return Err(differs("their steps".into()));
    }
    for (x, y) in plan.steps.iter().zip(&other.steps) {
        // An op's attributes include anything fusion took from the facts; ops equal in all
        // of them are one op already (the session's memo, see `OpMemo`).
        if x.node != y.node || x.inputs != y.inputs || x.outputs != y.outputs || !Arc::ptr_eq(&x.op, &y.op) {
            return Err(differs(format!("step '{}' ({})", x.node, x.op_type)));
        }
    }
    if plan.inputs != other.inputs || plan.outputs != other.outputs || plan.free_after != other.free_after {
        return Err(differs("their inputs, outputs or buffer lifetimes".into()));
    }
    for (s, (x, y)) in plan.facts.iter().zip(&other.facts).enumerate() {
        if x.dtype != y.dtype || x.shape.len() != y.shape.len() || !same_value(plan.constants[s].as_ref(), other.constants[s].as_ref()) {
            return Err(differs(format!("value {s}: {}{:?} against {}{:?}", x.dtype, x.shape, y.dtype, y.shape)));
        }
        plan.dynamic_dims[s] = changed_dims(x, y);
    }
    Ok(plan)
}

/// The dims in which two facts of one value differ.
fn changed_dims(x: &Fact, y: &Fact) -> Vec<usize> {
    (0..x.shape.len().min(y.shape.len())).filter(|&d| x.shape[d] != y.shape[d]).collect()
}

/// Same presence, dtype, shape and bytes (weights are mostly the same tensor).
fn same_value(x: Option<&Arc<Tensor>>, y: Option<&Arc<Tensor>>) -> bool {
    match (x, y) {
        (None, None) => true,
        (Some(x), Some(y)) => Arc::ptr_eq(x, y) || (x.dtype() == y.dtype() && x.shape() == y.shape() && x.as_le_bytes() == y.as_le_bytes()),
        _ => false,
    }
}

/// Plans `graph` for these inputs; `changing`: per slot, the dims that change within the
/// family of shapes planned for (empty for these shapes alone).
fn plan_with(graph: &Graph, inputs: &[(DataType, Vec<usize>)], options: PlanOptions, changing: &[Vec<usize>]) -> Result<Plan> {
    let mut p = Planner {
        env: HashMap::new(),
        facts: Vec::new(),
        constants: Vec::new(),
        steps: Vec::new(),
        folded: 0,
        expanded: HashMap::new(),
        deferred: Vec::new(),
        widened: HashMap::new(),
        max_tensor_bytes: options.max_tensor_bytes,
        changing,
        tainted: Vec::new(),
    };
    let mut input_slots = Vec::new();
    for (info, (dtype, shape)) in graph.inputs.iter().zip(inputs) {
        let s = p.slot(Fact::new(*dtype, shape.clone()), false);
        p.env.insert(info.name.clone(), s);
        input_slots.push((info.name.clone(), s));
    }
    p.graph(graph)?;
    // Values that only represent a run's are not the plan's to use: fusion sees the slot as
    // computed.
    for (f, c) in p.facts.iter_mut().zip(&p.constants) {
        if c.is_none() {
            f.value = None;
        }
    }
    let outputs = graph.outputs.iter().map(|o| Ok((o.name.clone(), p.lookup(&o.name, "<graph output>")?))).collect::<Result<Vec<_>>>()?;
    let output_slots: Vec<usize> = outputs.iter().map(|o| o.1).collect();
    p.steps = crate::fuse::fuse(std::mem::take(&mut p.steps), &p.facts, &output_slots, &p.expanded, options.exact);
    p.materialize(&output_slots)?;
    {
        let mut ops = options.ops.lock().unwrap_or_else(|e| e.into_inner());
        for step in &mut p.steps {
            let key = (step.node.clone(), step.op_type.clone(), format!("{:#?}", step.op));
            step.op = ops.entry(key).or_insert_with(|| step.op.clone()).clone();
        }
    }
    // Constants no step reads any more (float weights replaced by their integer form) are
    // dropped, so the plan does not keep both.
    let mut read = vec![false; p.facts.len()];
    for &s in p.steps.iter().flat_map(|s| s.inputs.iter().flatten()).chain(&output_slots) {
        read[s] = true;
    }
    for (s, (c, f)) in p.constants.iter_mut().zip(&mut p.facts).enumerate() {
        if !read[s] {
            (*c, f.value) = (None, None);
        }
    }

    // Lifetimes: a slot lives from the step that writes it (inputs: before step 0) to the
    // last step that reads it; graph outputs live to the end.
    let n = p.steps.len();
    let mut first = vec![usize::MAX; p.facts.len()];
    let mut last = vec![0usize; p.facts.len()];
    for &(_, s) in &input_slots {
        first[s] = 0;
    }
    for (i, step) in p.steps.iter().enumerate() {
        for &s in step.outputs.iter().flatten() {
            first[s] = i;
            last[s] = last[s].max(i);
        }
        for &s in step.inputs.iter().flatten() {
            last[s] = last[s].max(i);
        }
    }
    let is_output: Vec<bool> = (0..p.facts.len()).map(|s| outputs.iter().any(|o| o.1 == s)).collect();
    let mut free_after = vec![Vec::new(); n];
    let mut intervals = Vec::new();
    for s in 0..p.facts.len() {
        if first[s] == usize::MAX || p.constants[s].is_some() {
            continue;
        }
        let end = if is_output[s] { n } else { last[s] };
        if !is_output[s] && n > 0 {
            free_after[last[s].min(n - 1)].push(s);
        }
        let bytes = p.facts[s].dtype.bytes(p.facts[s].shape.iter().product());
        intervals.push((first[s], end, bytes.next_multiple_of(64)));
    }
    let unshared_bytes = intervals.iter().map(|i| i.2).sum();
    let arena_bytes = arena_layout(&mut intervals);
    let dynamic_dims = vec![Vec::new(); p.facts.len()];
    Ok(Plan {
        steps: p.steps,
        facts: p.facts,
        constants: p.constants,
        inputs: input_slots,
        outputs,
        free_after,
        arena_bytes,
        unshared_bytes,
        folded_nodes: p.folded,
        dynamic_dims,
    })
}

/// Greedy offset assignment (largest first, lowest free offset): returns the arena size.
fn arena_layout(intervals: &mut [(usize, usize, usize)]) -> usize {
    intervals.sort_by_key(|i| std::cmp::Reverse(i.2));
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new(); // (start, end, offset, bytes)
    let mut total = 0;
    for &(start, end, bytes) in intervals.iter() {
        let mut overlapping: Vec<(usize, usize)> = placed.iter().filter(|p| p.0 <= end && start <= p.1).map(|p| (p.2, p.3)).collect();
        overlapping.sort_unstable();
        let mut offset = 0;
        for (o, b) in overlapping {
            if offset + bytes <= o {
                break;
            }
            offset = offset.max(o + b);
        }
        placed.push((start, end, offset, bytes));
        total = total.max(offset + bytes);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::{OpMemo, PlanOptions, arena_layout, plan};
    use crate::testing::{Attr, ModelBuilder};
    use crate::{DataType, Model, Tensor};
    use std::sync::Arc;

    fn options(ops: &OpMemo) -> PlanOptions<'_> {
        PlanOptions { max_tensor_bytes: 1 << 30, exact: false, ops }
    }

    #[test]
    fn plans_of_a_session_share_equal_ops_and_their_weights() {
        // f16 weights (4096 values, so their expansion is deferred and fused away), packed by
        // the op on first use: plans for 2 and 5 rows take the same op.
        let w = Tensor::from_vec(vec![64, 64], vec![0x3c00u16; 4096]).unwrap();
        let bytes = ModelBuilder::new(17)
            .input("x", DataType::F32, &[-1, 64])
            .initializer("w16", &w)
            .node("Cast", &["w16"], &["w"], vec![("to", Attr::Int(1))])
            .node("MatMul", &["x", "w"], &["y"], vec![])
            .output("y", DataType::F32, &[-1, 64])
            .to_bytes();
        let model = Model::from_bytes(bytes).unwrap();
        let memo = OpMemo::default();
        let two = plan(model.graph(), &[(DataType::F32, vec![2, 64])], options(&memo)).unwrap();
        let five = plan(model.graph(), &[(DataType::F32, vec![5, 64])], options(&memo)).unwrap();
        assert_eq!(two.steps[0].op_type, "Cast→PackedMatMul");
        assert!(Arc::ptr_eq(&two.steps[0].op, &five.steps[0].op));
        let other_session = plan(model.graph(), &[(DataType::F32, vec![2, 64])], options(&OpMemo::default())).unwrap();
        assert!(!Arc::ptr_eq(&two.steps[0].op, &other_session.steps[0].op));
    }

    #[test]
    fn ops_holding_different_constants_are_not_shared() {
        // y = x · Size(x) + 1: each shape folds its own size into the fused chain, a
        // constant of the same shape but another value.
        let bytes = ModelBuilder::new(17)
            .input("x", DataType::F32, &[-1])
            .initializer("one", &Tensor::scalar(1f32))
            .node("Size", &["x"], &["n"], vec![])
            .node("Cast", &["n"], &["scale"], vec![("to", Attr::Int(1))])
            .node("Mul", &["x", "scale"], &["scaled"], vec![])
            .node("Add", &["scaled", "one"], &["y"], vec![])
            .output("y", DataType::F32, &[-1])
            .to_bytes();
        let model = Model::from_bytes(bytes).unwrap();
        let memo = OpMemo::default();
        for n in [2usize, 3] {
            let plan = plan(model.graph(), &[(DataType::F32, vec![n])], options(&memo)).unwrap();
            let x = Tensor::from_vec(vec![n], vec![1f32; n]).unwrap();
            let y = crate::session::execute(&plan, vec![x], &mut Default::default(), None).unwrap();
            assert_eq!(y[0].1.as_slice::<f32>().unwrap(), vec![n as f32 + 1.0; n], "{:?}", plan.step_ops());
        }
    }

    #[test]
    fn arena_reuses_dead_buffers() {
        // a chain x0 -> x1 -> x2 -> x3: each buffer dies once the next is computed.
        let mut chain = vec![(0, 1, 100), (1, 2, 100), (2, 3, 100), (3, 3, 100)];
        assert_eq!(arena_layout(&mut chain), 200);
        // Everything alive at once cannot share.
        let mut all = vec![(0, 3, 64), (0, 3, 128), (1, 3, 64)];
        assert_eq!(arena_layout(&mut all), 256);
    }
}
