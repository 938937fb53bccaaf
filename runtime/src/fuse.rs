//! Plan-time fusion: a chain of steps that one kernel pass can finish is replaced by one
//! step, so its intermediates never reach memory. Rules match planned steps (dtypes and
//! shapes known) and absorb a value only when the chain is its sole reader and it is not a
//! graph output. The fused step takes the place of the chain's last step, where all of its
//! inputs exist.

use crate::ops::chain::{Chain, ChainStep, chains_binary};
use crate::ops::elementwise::{Binary, Unary};
use crate::ops::quant::{MatMulInteger, MatMulIntegerToFloat};
use crate::ops::{Fact, Op};
use crate::plan::Step;
use crate::tensor::DataType;
use std::any::Any;
use std::sync::Arc;

/// Who reads each slot: the one step that reads it exactly once, if so.
struct Readers {
    sole: Vec<Option<usize>>,
}

impl Readers {
    fn new(steps: &[Option<Step>], slots: usize, graph_outputs: &[usize]) -> Readers {
        let mut count = vec![0usize; slots];
        let mut reader = vec![None; slots];
        for (i, step) in steps.iter().enumerate() {
            for &s in step.iter().flat_map(|s| s.inputs.iter().flatten()) {
                count[s] += 1;
                reader[s] = Some(i);
            }
        }
        for &s in graph_outputs {
            count[s] += 1;
        }
        Readers { sole: reader.into_iter().zip(count).map(|(r, c)| if c == 1 { r } else { None }).collect() }
    }
}

/// Applies every rule; returns the steps in their new order.
pub(crate) fn fuse(steps: Vec<Step>, facts: &[Fact], graph_outputs: &[usize]) -> Vec<Step> {
    let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    let readers = Readers::new(&steps, facts.len(), graph_outputs);
    for i in 0..steps.len() {
        let fused = matmul_integer_to_float(&steps, i, facts, &readers).or_else(|| elementwise_chain(&steps, i, facts, &readers));
        if let Some((absorbed, fused)) = fused {
            for &j in &absorbed {
                steps[j] = None;
            }
            steps[*absorbed.last().expect("a chain")] = Some(fused);
        }
    }
    steps.into_iter().flatten().collect()
}

/// The step that is the sole reader of `slot`, with the given op type.
fn sole_reader<'a>(steps: &'a [Option<Step>], readers: &Readers, slot: usize, op_type: &str) -> Option<(usize, &'a Step)> {
    let i = readers.sole[slot]?;
    steps[i].as_ref().filter(|s| s.op_type == op_type).map(|s| (i, s))
}

/// For a binary step reading `x`: its other input, when that holds one value or one per
/// column of `x` (so broadcasting keeps `x`'s shape), and its output slot.
fn per_column_operand(step: &Step, x: usize, facts: &[Fact]) -> Option<(usize, usize)> {
    let other = match step.inputs.as_slice() {
        [Some(a), Some(b)] if *a == x && *b != x => *b,
        [Some(a), Some(b)] if *b == x && *a != x => *a,
        _ => return None,
    };
    let (xf, of, out) = (&facts[x], &facts[other], step.outputs.first().copied().flatten()?);
    let n = *xf.shape.last()?;
    let per_column = of.shape.iter().product::<usize>() == 1 || (of.shape.last() == Some(&n) && of.shape.iter().product::<usize>() == n);
    (of.dtype == DataType::F32 && per_column && of.shape.len() <= xf.shape.len() && facts[out].shape == xf.shape).then_some((other, out))
}

/// `MatMulInteger → Cast(float) → Mul(scale) [→ Add(bias)]` → [`MatMulIntegerToFloat`].
fn matmul_integer_to_float(steps: &[Option<Step>], i: usize, facts: &[Fact], readers: &Readers) -> Option<(Vec<usize>, Step)> {
    let step = steps[i].as_ref()?;
    let op: Arc<dyn Any + Send + Sync> = step.op.clone();
    let matmul = op.downcast::<MatMulInteger>().ok()?;
    let acc = step.outputs.first().copied().flatten()?;
    let (c, cast) = sole_reader(steps, readers, acc, "Cast")?;
    let float = cast.outputs.first().copied().flatten().filter(|&s| facts[s].dtype == DataType::F32)?;
    let (m, mul) = sole_reader(steps, readers, float, "Mul")?;
    let (scale, mut out) = per_column_operand(mul, float, facts)?;
    let mut absorbed = vec![i, c, m];
    let mut bias = None;
    if let Some((a, add)) = sole_reader(steps, readers, out, "Add")
        && let Some((b, add_out)) = per_column_operand(add, out, facts)
    {
        absorbed.push(a);
        bias = Some(b);
        out = add_out;
    }
    let mut inputs = step.inputs.clone();
    inputs.resize(4, None);
    inputs.extend([Some(scale), bias]);
    let fused: Arc<dyn Op> = Arc::new(MatMulIntegerToFloat { matmul });
    Some((absorbed, Step { node: step.node.clone(), op_type: "MatMulIntegerToFloat".into(), op: fused, inputs, outputs: vec![Some(out)] }))
}

/// `step` as a chain step on the running value `v`, given the chain's input `x` (`None` for
/// the first step): f32 in, same shape out; binary ops need a scalar constant or `x` as their
/// other operand.
fn as_chain_step(step: &Step, v: usize, x: Option<usize>, facts: &[Fact]) -> Option<ChainStep> {
    let out = match step.outputs.as_slice() {
        [Some(o)] => *o,
        _ => return None,
    };
    if facts[v].dtype != DataType::F32 || facts[out].dtype != DataType::F32 || facts[out].shape != facts[v].shape {
        return None;
    }
    let op: &dyn Any = step.op.as_ref();
    if let Some(&u) = op.downcast_ref::<Unary>() {
        return (u.takes_f32() && step.inputs == [Some(v)]).then_some(ChainStep::Unary(u));
    }
    let op = *op.downcast_ref::<Binary>().filter(|&&b| chains_binary(b))?;
    let (w, other_first) = match step.inputs.as_slice() {
        [Some(a), Some(b)] if *a == v && *b != v => (*b, false),
        [Some(a), Some(b)] if *b == v && *a != v => (*a, true),
        _ => return None,
    };
    match &facts[w].value {
        Some(c) if c.dtype() == DataType::F32 && c.len() == 1 => {
            Some(ChainStep::Scalar { op, value: c.as_slice::<f32>().ok()?[0], scalar_first: other_first })
        }
        _ if Some(w) == x => Some(ChainStep::Input { op, input_first: other_first }),
        _ => None,
    }
}

/// Two or more elementwise f32 steps in a row, each the sole reader of the last → [`Chain`].
fn elementwise_chain(steps: &[Option<Step>], i: usize, facts: &[Fact], readers: &Readers) -> Option<(Vec<usize>, Step)> {
    let first = steps[i].as_ref()?;
    let (x, head) = first.inputs.iter().flatten().find_map(|&v| Some((v, as_chain_step(first, v, None, facts)?)))?;
    let (mut chain, mut absorbed, mut value) = (vec![head], vec![i], first.outputs[0]?);
    while let Some(j) = readers.sole[value] {
        let Some(next) = steps[j].as_ref() else { break };
        let Some(step) = as_chain_step(next, value, Some(x), facts) else { break };
        chain.push(step);
        absorbed.push(j);
        value = next.outputs[0]?;
    }
    if chain.len() < 2 {
        return None;
    }
    let ops: Vec<&str> = absorbed.iter().filter_map(|&j| steps[j].as_ref().map(|s| s.op_type.as_str())).collect();
    let fused: Arc<dyn Op> = Arc::new(Chain::new(chain));
    let step = Step {
        node: first.node.clone(),
        op_type: format!("Chain({})", ops.join("→")),
        op: fused,
        inputs: vec![Some(x)],
        outputs: vec![Some(value)],
    };
    Some((absorbed, step))
}

#[cfg(test)]
mod tests {
    use crate::testing::ModelBuilder;
    use crate::{DataType, Model, Session, Tensor};

    /// `MatMulInteger → Cast → Mul(scale) → Add(bias)`; with `expose`, the Cast output is
    /// also a graph output, which must block the fusion.
    fn dynamic_matmul(expose: bool) -> Session {
        let (k, n) = (5, 3);
        let b: Vec<i8> = (0..k * n).map(|i| ((i * 37) % 100) as i8 - 50).collect();
        let mut m = ModelBuilder::new(17)
            .input("a", DataType::U8, &[2, k as i64])
            .input("scale", DataType::F32, &[n as i64])
            .initializer("b", &Tensor::from_vec(vec![k, n], b).unwrap())
            .initializer("az", &Tensor::scalar(7u8))
            .initializer("bias", &Tensor::from_vec(vec![n], vec![0.5f32, -1.25, 3.0]).unwrap())
            .node("MatMulInteger", &["a", "b", "az"], &["acc"], vec![])
            .node("Cast", &["acc"], &["accf"], vec![("to", crate::testing::Attr::Int(1))])
            .node("Mul", &["accf", "scale"], &["scaled"], vec![])
            .node("Add", &["bias", "scaled"], &["y"], vec![])
            .output("y", DataType::F32, &[2, n as i64]);
        if expose {
            m = m.output("accf", DataType::F32, &[2, n as i64]);
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn matmul_integer_epilogue_fuses_bit_identically() {
        let a = Tensor::from_vec(vec![2, 5], vec![0u8, 255, 7, 100, 3, 9, 18, 250, 1, 128]).unwrap();
        let scale = Tensor::from_vec(vec![3], vec![0.013f32, 1.7e-3, 0.25]).unwrap();
        let run = |s: &Session| s.run(vec![("a", a.clone()), ("scale", scale.clone())]).unwrap().remove(0).1;
        let (fused, unfused) = (dynamic_matmul(false), dynamic_matmul(true));
        let shapes = [(DataType::U8, vec![2, 5]), (DataType::F32, vec![3])];
        let ops = |s: &Session| s.plan_for(&shapes).unwrap().step_ops().iter().map(|(_, op)| op.to_string()).collect::<Vec<_>>();
        assert_eq!(ops(&fused), ["MatMulIntegerToFloat"]);
        assert_eq!(ops(&unfused), ["MatMulInteger", "Cast", "Mul", "Add"]);
        let (y, want) = (run(&fused), run(&unfused));
        assert_eq!(y.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap(), "fused vs step by step");
        // And the value itself: row 0, column 0 by hand.
        let b0: Vec<i32> = (0..5).map(|p| (p * 3 * 37) % 100 - 50).collect();
        let acc: i32 = [0, 255, 7, 100, 3].iter().zip(&b0).map(|(&a, &b)| (a - 7) * b).sum();
        assert_eq!(y.as_slice::<f32>().unwrap()[0], acc as f32 * 0.013 + 0.5);
    }

    /// GELU as exported from PyTorch; with `expose`, the Erf output is also a graph output,
    /// which must split the chain.
    fn gelu(expose: bool) -> Session {
        let c = |v: f32| Tensor::scalar(v);
        let mut m = ModelBuilder::new(17)
            .input("x", DataType::F32, &[3, 700])
            .initializer("sqrt2", &c(std::f32::consts::SQRT_2))
            .initializer("one", &c(1.0))
            .initializer("half", &c(0.5))
            .node("Div", &["x", "sqrt2"], &["d"], vec![])
            .node("Erf", &["d"], &["e"], vec![])
            .node("Add", &["e", "one"], &["a"], vec![])
            .node("Mul", &["x", "a"], &["m"], vec![])
            .node("Mul", &["m", "half"], &["y"], vec![])
            .output("y", DataType::F32, &[3, 700]);
        if expose {
            m = m.output("e", DataType::F32, &[3, 700]);
        }
        Session::new(Model::from_bytes(m.to_bytes()).unwrap())
    }

    #[test]
    fn elementwise_chains_fuse_bit_identically() {
        let x = Tensor::from_vec(vec![3, 700], (0..2100).map(|i| (i as f32 - 1000.0) * 0.007).collect()).unwrap();
        let shapes = [(DataType::F32, vec![3, 700])];
        let ops = |s: &Session| s.plan_for(&shapes).unwrap().step_ops().iter().map(|(_, op)| op.to_string()).collect::<Vec<_>>();
        let (fused, split) = (gelu(false), gelu(true));
        assert_eq!(ops(&fused), ["Chain(Div→Erf→Add→Mul→Mul)"]);
        assert_eq!(ops(&split), ["Chain(Div→Erf)", "Add", "Mul", "Mul"]);
        let y = fused.run(vec![("x", x.clone())]).unwrap().remove(0).1;
        let want = split.run(vec![("x", x)]).unwrap().remove(0).1;
        assert_eq!(y.as_slice::<f32>().unwrap(), want.as_slice::<f32>().unwrap());
    }
}
