//! Plan-time fusion: a chain of steps that one kernel pass can finish is replaced by one
//! step, so its intermediates never reach memory. Rules match planned steps (dtypes and
//! shapes known) and absorb a value only when the chain is its sole reader and it is not a
//! graph output. The fused step takes the place of the chain's last step, where all of its
//! inputs exist.

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
        if let Some((absorbed, fused)) = matmul_integer_to_float(&steps, i, facts, &readers) {
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
}
