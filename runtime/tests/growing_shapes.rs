//! Plans that serve shapes growing together along symbolic dims (a decoder's past length):
//! made once from the second size on, with the shape arithmetic on the growing dims run in
//! every run, and outputs identical to those of a plan made for each shape alone.

use distq_runtime::testing::{Attr, ModelBuilder};
use distq_runtime::{DataType, Model, Session, Tensor};

/// A decoder's shape arithmetic in miniature: `present = Concat(past, x)` along the sequence,
/// then positions `Range(0, len(present))` added to it, and the sum reshaped to
/// `[len(present), 1]` by a target computed from `Shape` (`Gather`, `Unsqueeze`, `Concat`).
/// With `branch_at`, an `If` on `len(present) > branch_at` negates the result or not.
fn decoder_like(branch_at: Option<i64>) -> Vec<u8> {
    let mut m = ModelBuilder::new(17)
        .input("x", DataType::F32, &[1, -1])
        .input("past", DataType::F32, &[1, -2])
        .initializer("zero", &Tensor::scalar(0i64))
        .initializer("one", &Tensor::scalar(1i64))
        .initializer("one_1d", &Tensor::from_vec(vec![1], vec![1i64]).unwrap())
        .initializer("axis0", &Tensor::from_vec(vec![1], vec![0i64]).unwrap())
        .node("Concat", &["past", "x"], &["present"], vec![("axis", Attr::Int(1))])
        .node("Shape", &["present"], &["shape"], vec![])
        .node("Gather", &["shape", "one"], &["len"], vec![("axis", Attr::Int(0))])
        .node("Range", &["zero", "len", "one"], &["positions_i64"], vec![])
        .node("Cast", &["positions_i64"], &["positions"], vec![("to", Attr::Int(1))])
        .node("Add", &["present", "positions"], &["sum"], vec![])
        .node("Unsqueeze", &["len", "axis0"], &["len_1d"], vec![])
        .node("Concat", &["len_1d", "one_1d"], &["target"], vec![("axis", Attr::Int(0))])
        .node("Reshape", &["sum", "target"], &["column"], vec![]);
    let out = match branch_at {
        None => "column",
        Some(at) => {
            let branch = |op: &str| {
                ModelBuilder::new(17)
                    .node(op, &["column"], &["branch_out"], vec![])
                    .output("branch_out", DataType::F32, &[-3, 1])
                    .build_graph()
            };
            m = m.initializer("at", &Tensor::scalar(at)).node("Greater", &["len", "at"], &["long"], vec![]).node(
                "If",
                &["long"],
                &["chosen"],
                vec![("then_branch", Attr::Graph(branch("Neg"))), ("else_branch", Attr::Graph(branch("Identity")))],
            );
            "chosen"
        }
    };
    m.output("present", DataType::F32, &[1, -3]).output(out, DataType::F32, &[-3, 1]).to_bytes()
}

fn inputs(s: usize, p: usize) -> Vec<(&'static str, Tensor)> {
    let x = Tensor::from_vec(vec![1, s], (0..s).map(|i| 0.5 + i as f32).collect()).unwrap();
    let past = Tensor::from_vec(vec![1, p], (0..p).map(|i| -(i as f32) / 4.0).collect()).unwrap();
    vec![("x", x), ("past", past)]
}

/// `present` and the output column, as the model defines them.
fn expected(s: usize, p: usize, negate_above: Option<usize>) -> (Vec<f32>, Vec<f32>) {
    let present: Vec<f32> = (0..p).map(|i| -(i as f32) / 4.0).chain((0..s).map(|i| 0.5 + i as f32)).collect();
    let sign = if negate_above.is_some_and(|at| p + s > at) { -1.0 } else { 1.0 };
    let column = present.iter().enumerate().map(|(i, v)| sign * (v + i as f32)).collect();
    (present, column)
}

fn check(session: &Session, s: usize, p: usize, negate_above: Option<usize>) {
    let out = session.run(inputs(s, p)).unwrap();
    let (present, column) = expected(s, p, negate_above);
    assert_eq!(out[0].1.shape(), [1, p + s]);
    assert_eq!(out[0].1.as_slice::<f32>().unwrap(), present, "present at s = {s}, p = {p}");
    assert_eq!(out[1].1.shape(), [p + s, 1]);
    assert_eq!(out[1].1.as_slice::<f32>().unwrap(), column, "output at s = {s}, p = {p}");
}

#[test]
fn a_growing_past_is_planned_once_from_its_second_length() {
    let session = Session::new(Model::from_bytes(decoder_like(None)).unwrap());
    // Token by token: the past grows by one, the new token stays one.
    for p in 2..40 {
        check(&session, 1, p, None);
        // The same shapes again: the plan that served them.
        check(&session, 1, p, None);
    }
    assert_eq!(session.plans_made(), 2, "one plan for the first length, one for every later one");
    let plan = session.plan_for(&[(DataType::F32, vec![1, 1]), (DataType::F32, vec![1, 100])]).unwrap();
    assert_eq!(session.plans_made(), 2, "a longer past still uses the family's plan");
    // The shape arithmetic on the growing length runs in every run; a plan for one length
    // folds it all into constants.
    let alone = Session::new(Model::from_bytes(decoder_like(None)).unwrap());
    let one = alone.plan_for(&[(DataType::F32, vec![1, 1]), (DataType::F32, vec![1, 100])]).unwrap();
    assert!(plan.num_steps() > one.num_steps(), "{} steps against {}", plan.num_steps(), one.num_steps());
    // A prompt of another length (past still empty) is another plan; so is a shrinking one
    // whose new length differs (a new family needs two members).
    check(&session, 5, 0, None);
    check(&session, 7, 0, None);
    check(&session, 9, 0, None);
    assert_eq!(session.plans_made(), 4, "prompts of 5, then 7 and more (one family)");
    // Growing two dims by different amounts is not in any family.
    check(&session, 3, 5, None);
    check(&session, 4, 7, None);
    assert_eq!(session.plans_made(), 6);
}

#[test]
fn a_condition_on_a_growing_dim_keeps_plans_per_length() {
    // The If's condition depends on the growing length: no family can hold both branches, so
    // each length is planned alone, and the branch flips where it should.
    let session = Session::new(Model::from_bytes(decoder_like(Some(10))).unwrap());
    for p in 2..16 {
        check(&session, 1, p, Some(10));
    }
    assert_eq!(session.plans_made(), 14);
}
