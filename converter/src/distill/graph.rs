//! An ONNX graph whose float initializers are trainable candle `Var`s.
//!
//! The graph runs node by node in candle (see [`super::ops`]), so a loss on its outputs has
//! gradients for every weight; after training, [`TrainableGraph::write_into`] puts the trained
//! values back into the same `ModelProto`, which stays a plain ONNX model our runtime runs.

use super::ops;
use super::qat::{FakeQuant, straight_through};
use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor, Var};
use distq_runtime::onnx::proto::{ModelProto, NodeProto};
use distq_runtime::onnx::{OnnxFile, WeightFiles, tensor_from_proto};
use std::collections::{HashMap, HashSet};

/// One float initializer.
pub struct Param {
    /// The initializer's name.
    pub name: String,
    /// Its current value.
    pub var: Var,
    /// False for frozen parameters (by pattern, or batch-norm running statistics).
    pub trainable: bool,
}

/// A model ready to train.
pub struct TrainableGraph {
    nodes: Vec<NodeProto>,
    inputs: Vec<String>,
    outputs: Vec<String>,
    params: Vec<Param>,
    constants: HashMap<String, Tensor>,
    fake_quant: HashMap<String, FakeQuant>,
    dtype: DType,
}

/// Which parameters stay frozen: names containing any of these substrings.
#[derive(Clone, Debug, Default)]
pub struct Freeze(pub Vec<String>);

impl Freeze {
    /// Parses `a,b,c`.
    pub fn parse(patterns: &str) -> Freeze {
        Freeze(patterns.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect())
    }

    fn matches(&self, name: &str) -> bool {
        self.0.iter().any(|p| name.contains(p.as_str()))
    }
}

impl TrainableGraph {
    /// Loads `file`'s graph: float initializers become `Var`s in `dtype` (F32 for training,
    /// F64 for gradient checks), others constants. Fails naming the first node whose op is
    /// not translated or whose input is not defined before it.
    pub fn new(file: &OnnxFile, dtype: DType, freeze: &Freeze) -> Result<TrainableGraph> {
        let graph = file.proto.graph.as_ref().context("the model has no graph")?;
        let mut files = WeightFiles::new(file.base_dir.clone());
        // Batch-norm running statistics are not parameters: gradient steps would corrupt them.
        let statistics: HashSet<&str> = graph
            .node
            .iter()
            .filter(|n| n.op_type.as_deref() == Some("BatchNormalization"))
            .flat_map(|n| n.input.iter().skip(3).take(2).map(String::as_str))
            .collect();
        let mut params = Vec::new();
        let mut constants = HashMap::new();
        for init in &graph.initializer {
            let name = init.name.clone().unwrap_or_default();
            let t = tensor_from_proto(init, &mut files).with_context(|| format!("{}: initializer '{name}'", file.origin))?;
            let value = ops::from_runtime(&t, dtype)?;
            if value.dtype() == dtype {
                let trainable = !freeze.matches(&name) && !statistics.contains(name.as_str());
                params.push(Param { name, var: Var::from_tensor(&value)?, trainable });
            } else {
                constants.insert(name, value);
            }
        }
        let initialized: HashSet<String> = graph.initializer.iter().filter_map(|t| t.name.clone()).collect();
        let inputs: Vec<String> = graph.input.iter().filter_map(|v| v.name.clone()).filter(|n| !initialized.contains(n)).collect();
        let mut defined: HashSet<String> = initialized.iter().cloned().chain(inputs.iter().cloned()).collect();
        for (i, node) in graph.node.iter().enumerate() {
            let op = node.op_type.as_deref().unwrap_or("");
            let what = || format!("{}: node {i} '{}' ({op})", file.origin, node.name.as_deref().unwrap_or(""));
            if node.domain.as_deref().is_some_and(|d| !d.is_empty() && d != "ai.onnx") {
                bail!("{}: domain '{}' is not supported for training", what(), node.domain.as_deref().unwrap_or(""));
            }
            ensure!(ops::SUPPORTED.contains(&op), "{}: op {op} is not supported for training", what());
            if let Some(missing) = node.input.iter().find(|n| !n.is_empty() && !defined.contains(*n)) {
                bail!("{}: input '{missing}' is not defined before the node (graph not in topological order, or a cycle)", what());
            }
            defined.extend(node.output.iter().cloned());
        }
        let outputs: Vec<String> = graph.output.iter().filter_map(|v| v.name.clone()).collect();
        if let Some(missing) = outputs.iter().find(|o| !defined.contains(*o)) {
            bail!("{}: graph output '{missing}' is produced by no node", file.origin);
        }
        Ok(TrainableGraph { nodes: graph.node.clone(), inputs, outputs, params, constants, fake_quant: HashMap::new(), dtype })
    }

    /// The graph's input names (initializers excluded).
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// The graph's output names.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Every float initializer.
    pub fn params(&self) -> &[Param] {
        &self.params
    }

    /// The `Var`s the optimizer updates.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.params.iter().filter(|p| p.trainable).map(|p| p.var.clone()).collect()
    }

    /// Makes `forward` see these parameters fake-quantized ([`super::qat`]). Frozen ones
    /// never change, so they are quantized once here (a frozen embedding table would
    /// otherwise be re-quantized every step).
    pub fn fake_quantize(&mut self, weights: Vec<(String, FakeQuant)>) -> Result<()> {
        for (name, fq) in weights {
            let p = self
                .params
                .iter()
                .find(|p| p.name == name)
                .with_context(|| format!("fake quantization: no float parameter named '{name}'"))?;
            if p.trainable {
                self.fake_quant.insert(name, fq);
            } else {
                let fixed = straight_through(&p.var.as_tensor().detach(), fq).with_context(|| format!("parameter '{name}'"))?;
                self.constants.insert(name, fixed.detach());
            }
        }
        Ok(())
    }

    /// The dtype floats are computed in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Runs the graph on `feeds` (name → value) and returns the values named in `wanted`
    /// (graph outputs or any intermediate value, for feature distillation). Nodes nothing
    /// wanted depends on are skipped.
    pub fn forward(&self, feeds: &[(&str, Tensor)], wanted: &[&str]) -> Result<Vec<Tensor>> {
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        for (name, t) in feeds {
            ensure!(self.inputs.iter().any(|i| i == name), "'{name}' is not an input of the model (inputs: {:?})", self.inputs);
            values.insert(name, t.clone());
        }
        // Constants go last: a frozen fake-quantized parameter is one, replacing its value.
        for p in &self.params {
            let t = p.var.as_tensor();
            let t = if p.trainable { t.clone() } else { t.detach() };
            let t = match self.fake_quant.get(&p.name) {
                Some(fq) => straight_through(&t, *fq).with_context(|| format!("parameter '{}'", p.name))?,
                None => t,
            };
            values.insert(&p.name, t);
        }
        for (name, t) in &self.constants {
            values.insert(name, t.clone());
        }
        for node in self.needed_nodes(wanted) {
            let op = node.op_type.as_deref().unwrap_or("");
            let args = node
                .input
                .iter()
                .map(|n| {
                    if n.is_empty() {
                        return Ok(None);
                    }
                    values.get(n.as_str()).cloned().map(Some).with_context(|| format!("input '{n}' was not fed"))
                })
                .collect::<Result<Vec<_>>>()
                .with_context(|| format!("node '{}' ({op})", node.name.as_deref().unwrap_or("")))?;
            let outs =
                ops::apply(node, &args, self.dtype).with_context(|| format!("node '{}' ({op})", node.name.as_deref().unwrap_or("")))?;
            for (name, t) in node.output.iter().zip(outs) {
                values.insert(name, if ops::non_differentiable(op) { t.detach() } else { t });
            }
        }
        wanted.iter().map(|w| values.get(w).cloned().with_context(|| format!("value '{w}' is not computed by the graph"))).collect()
    }

    /// The nodes `wanted` depends on, in graph order.
    fn needed_nodes(&self, wanted: &[&str]) -> Vec<&NodeProto> {
        let mut needed: HashSet<&str> = wanted.iter().copied().collect();
        let mut keep = vec![false; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate().rev() {
            if node.output.iter().any(|o| needed.contains(o.as_str())) {
                keep[i] = true;
                needed.extend(node.input.iter().map(String::as_str));
            }
        }
        self.nodes.iter().zip(keep).filter(|(_, k)| *k).map(|(n, _)| n).collect()
    }

    /// Replaces `model`'s float initializers with the current parameter values (in each
    /// initializer's own dtype; stored inline: the writer moves large ones to external data).
    pub fn write_into(&self, model: &mut ModelProto) -> Result<()> {
        let values: HashMap<&str, &Param> = self.params.iter().map(|p| (p.name.as_str(), p)).collect();
        let graph = model.graph.as_mut().context("the model has no graph")?;
        for init in &mut graph.initializer {
            let Some(p) = init.name.as_deref().and_then(|n| values.get(n)) else { continue };
            let t = ops::to_runtime_f32(p.var.as_tensor())?;
            let code = init.data_type.unwrap_or(1);
            let t = if code == distq_runtime::DataType::F16.onnx_code() {
                let halves: Vec<u16> = t.as_slice::<f32>()?.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
                distq_runtime::Tensor::from_vec(t.shape().to_vec(), halves)?
            } else {
                t
            };
            let name = init.name.clone().unwrap_or_default();
            *init = distq_runtime::testing::tensor_proto(&name, &t);
        }
        Ok(())
    }

    /// Snapshot of every parameter's value (for best-checkpoint keeping).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        Ok(self.params.iter().map(|p| p.var.as_tensor().copy()).collect::<candle_core::Result<_>>()?)
    }

    /// Sets every parameter from a [`snapshot`](Self::snapshot) or checkpoint, in order.
    pub fn restore(&self, values: &[Tensor]) -> Result<()> {
        ensure!(values.len() == self.params.len(), "{} values for {} parameters", values.len(), self.params.len());
        for (p, v) in self.params.iter().zip(values) {
            ensure!(p.var.dims() == v.dims(), "parameter '{}': shape {:?}, value {:?}", p.name, p.var.dims(), v.dims());
            p.var.set(&v.to_dtype(self.dtype)?)?;
        }
        Ok(())
    }
}
