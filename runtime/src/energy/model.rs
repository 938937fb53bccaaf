//! The energy model, for devices without a readable meter: each step's multiply-accumulates
//! by precision, its other operations, and the bytes it moves, times per-operation energies
//! from M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014
//! (45 nm, 0.9 V). Absolute joules on a phone's 4–7 nm cores are lower; the ratios between
//! two models (what `distq bench --vs` reports) are what the model is for.

use crate::plan::Plan;

/// The published energies, pJ.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    /// An f32 multiply-accumulate: fp32 multiply (3.7) + fp32 add (0.9).
    pub f32_mac: f64,
    /// An 8-bit multiply with 32-bit accumulation: int8 multiply (0.2) + int32 add (0.1).
    pub int8_mac: f64,
    /// Any other operation on one element, priced as an fp32 add (0.9).
    pub other_op: f64,
    /// A byte from a 1 MB SRAM (100 pJ per 64-bit access).
    pub sram_byte: f64,
    /// A byte from DRAM (1.3–2.6 nJ per 64-bit access; the low end).
    pub dram_byte: f64,
    /// Working sets above this many bytes are priced at DRAM rates (the table's largest SRAM).
    pub sram_bytes: usize,
}

/// Horowitz, ISSCC 2014.
pub const HOROWITZ_45NM: Table =
    Table { f32_mac: 4.6, int8_mac: 0.3, other_op: 0.9, sram_byte: 100.0 / 8.0, dram_byte: 1300.0 / 8.0, sram_bytes: 1 << 20 };

/// The citation printed with model-based figures.
pub const SOURCE: &str = "energy model: Horowitz, ISSCC 2014, 45 nm (f32 MAC 4.6 pJ, int8 MAC 0.3 pJ, SRAM 12.5 pJ/B, DRAM 162.5 pJ/B)";

/// One inference's estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    /// Total joules.
    pub joules: f64,
    /// Joules of arithmetic.
    pub compute_joules: f64,
    /// Joules of memory traffic.
    pub memory_joules: f64,
    /// f32 multiply-accumulates.
    pub f32_macs: u64,
    /// 8-bit multiply-accumulates.
    pub int8_macs: u64,
    /// Other element operations.
    pub other_ops: u64,
    /// Bytes of weights read.
    pub weight_bytes: u64,
    /// Bytes of activations read and written.
    pub activation_bytes: u64,
}

/// Estimates one run of `plan` with `table`. Weights that do not fit the SRAM together cannot
/// stay cached between inferences and are read from DRAM; each step's activations come from
/// SRAM unless the step's own inputs and outputs exceed it.
///
/// ```
/// use distq_runtime::energy::model::{HOROWITZ_45NM, estimate};
/// use distq_runtime::{Model, Session, Tensor, DataType};
/// let session = Session::new(Model::from_bytes(distq_runtime::testing::add_one_model())?);
/// let plan = session.plan_for(&[(DataType::F32, vec![4])])?;
/// let e = estimate(&plan, &HOROWITZ_45NM);
/// assert_eq!(e.other_ops, 4); // one add per element
/// assert!(e.joules > 0.0);
/// # Ok::<(), distq_runtime::Error>(())
/// ```
pub fn estimate(plan: &Plan, table: &Table) -> Estimate {
    let costs = plan.costs();
    let weight_total: usize = costs.iter().map(|c| c.weight_bytes).sum();
    let weight_rate = if weight_total > table.sram_bytes { table.dram_byte } else { table.sram_byte };
    let mut e = Estimate::default();
    for c in &costs {
        let activation_rate = if c.activation_bytes > table.sram_bytes { table.dram_byte } else { table.sram_byte };
        e.f32_macs += c.work.f32_macs;
        e.int8_macs += c.work.int8_macs;
        e.other_ops += c.work.other_ops;
        e.weight_bytes += c.weight_bytes as u64;
        e.activation_bytes += c.activation_bytes as u64;
        e.memory_joules += (c.weight_bytes as f64 * weight_rate + c.activation_bytes as f64 * activation_rate) * 1e-12;
    }
    e.compute_joules =
        (e.f32_macs as f64 * table.f32_mac + e.int8_macs as f64 * table.int8_mac + e.other_ops as f64 * table.other_op) * 1e-12;
    e.joules = e.compute_joules + e.memory_joules;
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Attr, ModelBuilder};
    use crate::{DataType, Model, Session, Tensor};

    fn plan_of(bytes: Vec<u8>, input: Vec<usize>) -> std::sync::Arc<Plan> {
        Session::new(Model::from_bytes(bytes).unwrap()).plan_for(&[(DataType::F32, input)]).unwrap()
    }

    #[test]
    fn matmul_and_conv_count_their_macs_and_weights() {
        let w = Tensor::from_vec(vec![16, 8], vec![0.5f32; 128]).unwrap();
        let matmul = ModelBuilder::new(17)
            .input("x", DataType::F32, &[3, 16])
            .initializer("w", &w)
            .node("MatMul", &["x", "w"], &["y"], vec![])
            .output("y", DataType::F32, &[3, 8])
            .to_bytes();
        let e = estimate(&plan_of(matmul, vec![3, 16]), &HOROWITZ_45NM);
        assert_eq!((e.f32_macs, e.int8_macs, e.weight_bytes, e.activation_bytes), (3 * 8 * 16, 0, 128 * 4, (48 + 24) * 4));
        let expected = 384.0 * 4.6e-12 + (512.0 + 288.0) * 12.5e-12;
        assert!((e.joules - expected).abs() < 1e-18, "{} vs {expected}", e.joules);

        // A grouped 3×3 conv: 2 groups of 2 input channels, 4 filters, 6×6 output.
        let k = Tensor::from_vec(vec![4, 2, 3, 3], vec![0.1f32; 72]).unwrap();
        let conv = ModelBuilder::new(17)
            .input("x", DataType::F32, &[1, 4, 6, 6])
            .initializer("k", &k)
            .node("Conv", &["x", "k"], &["y"], vec![("group", Attr::Int(2)), ("pads", Attr::Ints(vec![1, 1, 1, 1]))])
            .output("y", DataType::F32, &[1, 4, 6, 6])
            .to_bytes();
        let e = estimate(&plan_of(conv, vec![1, 4, 6, 6]), &HOROWITZ_45NM);
        assert_eq!(e.f32_macs, 4 * 36 * 2 * 9);
    }

    #[test]
    fn large_weights_are_priced_at_dram_rates() {
        let n = 1024;
        let w = Tensor::from_vec(vec![n, n], vec![0f32; n * n]).unwrap();
        let big = ModelBuilder::new(17)
            .input("x", DataType::F32, &[1, n as i64])
            .initializer("w", &w)
            .node("MatMul", &["x", "w"], &["y"], vec![])
            .output("y", DataType::F32, &[1, n as i64])
            .to_bytes();
        let e = estimate(&plan_of(big, vec![1, n]), &HOROWITZ_45NM);
        let weights = (n * n * 4) as f64 * 162.5e-12;
        assert!((e.memory_joules - weights - (2 * n * 4) as f64 * 12.5e-12).abs() < 1e-15);
    }

    #[test]
    fn views_move_nothing() {
        // Reshape relabels its input's storage; the Relu after it reads and writes every value.
        let shape = Tensor::from_vec(vec![2], vec![4i64, 6]).unwrap();
        let bytes = ModelBuilder::new(17)
            .input("x", DataType::F32, &[24])
            .initializer("shape", &shape)
            .node("Reshape", &["x", "shape"], &["r"], vec![])
            .node("Relu", &["r"], &["y"], vec![])
            .output("y", DataType::F32, &[4, 6])
            .to_bytes();
        let plan = plan_of(bytes, vec![24]);
        assert_eq!(plan.step_ops().iter().map(|(_, op)| *op).collect::<Vec<_>>(), ["Reshape", "Relu"]);
        let e = estimate(&plan, &HOROWITZ_45NM);
        assert_eq!((e.other_ops, e.activation_bytes, e.weight_bytes), (24, 2 * 24 * 4, 0));
    }

    #[test]
    fn a_gather_reads_only_its_rows() {
        let table = Tensor::from_vec(vec![1000, 8], vec![0.25f32; 8000]).unwrap();
        let ids = ModelBuilder::new(17)
            .input("ids", DataType::I64, &[3])
            .initializer("table", &table)
            .node("Gather", &["table", "ids"], &["rows"], vec![])
            .output("rows", DataType::F32, &[3, 8])
            .to_bytes();
        let plan = Session::new(Model::from_bytes(ids).unwrap()).plan_for(&[(DataType::I64, vec![3])]).unwrap();
        let e = estimate(&plan, &HOROWITZ_45NM);
        assert_eq!((e.weight_bytes, e.other_ops), (3 * 8 * 4, 24));
    }
}
