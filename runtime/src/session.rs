//! Loading a model and running it: input validation, a plan per input-shape set or per
//! family of shapes that grow together (cached), and the executor that runs the plan's steps
//! and recycles buffers by liveness.

use crate::error::{Error, Result};
use crate::graph::{Dim, Graph, ValueInfo};
use crate::onnx::{OnnxFile, import::import_model};
use crate::ops::BufferPool;
use crate::plan::{OpMemo, Plan, PlanOptions, check_output, plan, plan_family};
use crate::tensor::{DataType, Tensor};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A loaded model: the graph IR with weights mapped from the file.
pub struct Model {
    graph: Graph,
    file: OnnxFile,
}

impl Model {
    /// Loads an ONNX file; weights stay in the file's memory map.
    ///
    /// ```no_run
    /// let model = distq_runtime::Model::load("model.onnx")?;
    /// println!("{} inputs", model.inputs().len());
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        let file = OnnxFile::open(path.as_ref())?;
        Self::from_file(file)
    }

    /// Loads a model held in memory (external data is refused: there is no folder).
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Result<Model> {
        Self::from_file(OnnxFile::decode(bytes.into(), None, "<bytes>".into())?)
    }

    fn from_file(file: OnnxFile) -> Result<Model> {
        let graph = import_model(&file)?;
        Ok(Model { graph, file })
    }

    /// This model with its graph rewritten (the weights stay where they are).
    pub(crate) fn with_graph(self, graph: Graph) -> Model {
        Model { graph, file: self.file }
    }

    /// The graph inputs the caller feeds.
    pub fn inputs(&self) -> &[ValueInfo] {
        &self.graph.inputs
    }

    /// The graph outputs.
    pub fn outputs(&self) -> &[ValueInfo] {
        &self.graph.outputs
    }

    /// The graph IR.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The decoded file (for inspection and re-encoding).
    pub fn file(&self) -> &OnnxFile {
        &self.file
    }
}

/// Runs a model. Plans are made per set of input shapes and cached; one session may be used
/// from several threads at once.
pub struct Session {
    model: Arc<Model>,
    plans: Mutex<PlanCache>,
    /// Plans made so far (each shape or family planned once).
    plans_made: AtomicUsize,
    /// Nanoseconds spent in [`Session::plan_for`].
    planning_nanos: AtomicU64,
    /// The ops of its plans, shared between them (with the weights they pack).
    ops: OpMemo,
    /// Dead activation buffers kept between runs, so steady-state runs allocate (and the OS
    /// zeroes pages) almost nothing. A run that finds it busy (another thread) uses its own.
    pool: Mutex<BufferPool>,
    /// Threads each run's kernels may use.
    threads: AtomicUsize,
    /// Largest tensor a plan may produce.
    max_tensor_bytes: AtomicUsize,
    /// The file's literal float arithmetic everywhere.
    exact: AtomicBool,
}

/// Default for [`Session::set_max_tensor_bytes`]: 1 GiB, beyond what a phone should give to
/// one activation (a MiniLM batch of 256 × 128 tokens needs 200 MB for its attention scores).
pub const DEFAULT_MAX_TENSOR_BYTES: usize = 1 << 30;

/// Dtype and shape of each input, in graph order: what a plan is made for.
type PlanKey = Vec<(DataType, Vec<usize>)>;

/// The plans of a session: per input shapes, and per family of shapes.
#[derive(Default)]
struct PlanCache {
    exact: HashMap<PlanKey, Arc<Plan>>,
    families: Vec<Family>,
}

/// A plan for the inputs `base + t·shift` (`shift` 0 or 1 per dim; every shifted dim at least
/// 2): a decoder's past and total lengths, token after token, or an encoder's sequence length.
struct Family {
    base: PlanKey,
    shift: Vec<Vec<bool>>,
    plan: Arc<Plan>,
}

impl Family {
    fn covers(&self, key: &PlanKey) -> bool {
        *key == self.base || growth(&self.base, key).is_some_and(|shift| shift == self.shift)
    }
}

/// When `to` is `from` with some dims all grown (or shrunk) by the same `t ≠ 0`, each of them
/// still at least 2 in both: which dims.
fn growth(from: &PlanKey, to: &PlanKey) -> Option<Vec<Vec<bool>>> {
    let mut t = None;
    let mut shift = Vec::with_capacity(from.len());
    if from.len() != to.len() {
        return None;
    }
    for ((dtype, a), (other, b)) in from.iter().zip(to) {
        if dtype != other || a.len() != b.len() {
            return None;
        }
        let mut dims = Vec::with_capacity(a.len());
        for (&x, &y) in a.iter().zip(b) {
            let d = y as i64 - x as i64;
            if d != 0 && (x < 2 || y < 2 || *t.get_or_insert(d) != d) {
                return None;
            }
            dims.push(d != 0);
        }
        shift.push(dims);
    }
    t.map(|_| shift)
}

/// Tensors with their names.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Plans kept per session before the cache is cleared (inputs of ever-new shapes would
/// otherwise grow it without bound).
const MAX_CACHED_PLANS: usize = 16;

impl Session {
    /// A session over a loaded model.
    pub fn new(model: Model) -> Session {
        Session {
            model: Arc::new(model),
            plans: Mutex::new(PlanCache::default()),
            plans_made: AtomicUsize::new(0),
            planning_nanos: AtomicU64::new(0),
            ops: OpMemo::default(),
            pool: Mutex::new(BufferPool::default()),
            threads: AtomicUsize::new(crate::performance_cores()),
            max_tensor_bytes: AtomicUsize::new(DEFAULT_MAX_TENSOR_BYTES),
            exact: AtomicBool::new(false),
        }
    }

    /// Refuses plans in which any step would produce a tensor larger than `bytes` (default
    /// [`DEFAULT_MAX_TENSOR_BYTES`]): sizes are known when planning, so a model (or inputs)
    /// asking for more fails with an error naming the node instead of exhausting memory.
    /// Plans cached earlier are dropped.
    ///
    /// ```
    /// use distq_runtime::{Model, Session, Tensor};
    /// let session = Session::new(Model::from_bytes(distq_runtime::testing::add_one_model())?);
    /// session.set_max_tensor_bytes(64);
    /// let small = Tensor::from_vec(vec![16], vec![0f32; 16])?;
    /// assert!(session.run(vec![("x", small)]).is_ok());
    /// let big = Tensor::from_vec(vec![17], vec![0f32; 17])?;
    /// let err = session.run(vec![("x", big)]).unwrap_err().to_string();
    /// assert!(err.contains("over the session's limit of 64 bytes"), "{err}");
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn set_max_tensor_bytes(&self, bytes: usize) {
        self.max_tensor_bytes.store(bytes, Ordering::Relaxed);
        *self.plans.lock().unwrap_or_else(|e| e.into_inner()) = PlanCache::default();
    }

    /// Runs every op by the file's literal float semantics (default `false`). By default, as
    /// onnxruntime does at its default accuracy level, a MatMul whose weights are 4-bit blocks
    /// (`DequantizeLinear` with `block_size`, opset 21) runs on the integer kernels, its
    /// activations quantized to int8 per row and block: faster, and within a few parts in a
    /// thousand of the float result. Exact sessions compute such layers in f32 instead.
    /// Plans cached earlier are dropped.
    ///
    /// ```
    /// use distq_runtime::testing::{Attr, ModelBuilder};
    /// use distq_runtime::{DataType, Model, Session, Tensor};
    /// // y = x · dequantize(q), q: 8 × 2 values 0..=15 in blocks of 4 along K, zero point 8.
    /// let q = Tensor::from_vec(vec![8, 2], (0..16u8).collect())?;
    /// let model = ModelBuilder::new(21)
    ///     .input("x", DataType::F32, &[1, 8])
    ///     .initializer("q", &q)
    ///     .initializer("scale", &Tensor::from_vec(vec![2, 2], vec![0.1f32, 0.2, 0.3, 0.4])?)
    ///     .initializer("zero", &Tensor::from_vec(vec![2, 2], vec![8u8; 4])?)
    ///     .node("DequantizeLinear", &["q", "scale", "zero"], &["w"], vec![("axis", Attr::Int(0)), ("block_size", Attr::Int(4))])
    ///     .node("MatMul", &["x", "w"], &["y"], vec![])
    ///     .output("y", DataType::F32, &[1, 2])
    ///     .to_bytes();
    /// let x = Tensor::from_vec(vec![1, 8], vec![0.3f32, -1.0, 0.7, 0.05, 2.0, -0.4, 0.9, 1.1])?;
    /// let run = |exact| -> distq_runtime::Result<Vec<f32>> {
    ///     let session = Session::new(Model::from_bytes(model.clone())?);
    ///     session.set_exact(exact);
    ///     Ok(session.run(vec![("x", x.clone())])?[0].1.as_slice::<f32>()?.to_vec())
    /// };
    /// let (fast, exact) = (run(false)?, run(true)?);
    /// assert_ne!(fast, exact);
    /// for (f, e) in fast.iter().zip(&exact) {
    ///     assert!((f - e).abs() < 0.01 * e.abs().max(1.0), "{f} vs {e}");
    /// }
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn set_exact(&self, exact: bool) {
        self.exact.store(exact, Ordering::Relaxed);
        *self.plans.lock().unwrap_or_else(|e| e.into_inner()) = PlanCache::default();
    }

    /// Whether runs follow the file's literal float arithmetic ([`Session::set_exact`]).
    pub fn exact(&self) -> bool {
        self.exact.load(Ordering::Relaxed)
    }

    /// Lets the kernels of later runs split their work over `threads` threads (default: the
    /// performance cores, [`performance_cores`](crate::performance_cores); 0 counts as 1). Outputs do not depend on it: every output element is computed by one
    /// thread in the same order as with one.
    ///
    /// ```
    /// use distq_runtime::{Model, Session};
    /// let session = Session::new(Model::from_bytes(distq_runtime::testing::add_one_model())?);
    /// session.set_threads(4);
    /// assert_eq!(session.threads(), 4);
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn set_threads(&self, threads: usize) {
        self.threads.store(threads.max(1), Ordering::Relaxed);
    }

    /// Threads each run's kernels may use.
    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    /// Loads `path` and makes a session.
    ///
    /// ```no_run
    /// use distq_runtime::{Session, Tensor};
    /// let session = Session::load("model.onnx")?;
    /// let x = Tensor::from_vec(vec![1, 4], vec![0.5f32; 4])?;
    /// let outputs = session.run(vec![("x", x)])?;
    /// println!("{:?}", outputs[0].1.shape());
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Session> {
        Ok(Session::new(Model::load(path)?))
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Checks named inputs against the graph's declarations; returns them in graph order.
    pub(crate) fn order_inputs<N: AsRef<str>>(&self, inputs: Vec<(N, Tensor)>) -> Result<Vec<Tensor>> {
        let declared = self.model.inputs();
        let mut by_name: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in inputs {
            let name = name.as_ref();
            if !declared.iter().any(|d| d.name == name) {
                let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
                return Err(Error::Input {
                    name: name.into(),
                    reason: format!("is not an input of this model (its inputs are: {})", names.join(", ")),
                });
            }
            if by_name.insert(name.to_string(), t).is_some() {
                return Err(Error::Input { name: name.into(), reason: "is given twice".into() });
            }
        }
        let mut symbols: HashMap<&str, (usize, &str)> = HashMap::new();
        let mut ordered = Vec::with_capacity(declared.len());
        for d in declared {
            let t = by_name.remove(&d.name).ok_or_else(|| Error::Input { name: d.name.clone(), reason: "is missing".into() })?;
            let bad = |reason: String| Error::Input { name: d.name.clone(), reason };
            if let Some(dt) = d.dtype
                && dt != t.dtype()
            {
                return Err(bad(format!("has dtype {}, the model declares {dt}", t.dtype())));
            }
            if let Some(dims) = &d.dims {
                if dims.len() != t.shape().len() {
                    return Err(bad(format!(
                        "has shape {:?} (rank {}), the model declares rank {}",
                        t.shape(),
                        t.shape().len(),
                        dims.len()
                    )));
                }
                for (i, (dim, &size)) in dims.iter().zip(t.shape()).enumerate() {
                    match dim {
                        Dim::Fixed(f) if *f != size => {
                            return Err(bad(format!("dim {i} is {size}, the model declares {f} (shape {:?})", t.shape())));
                        }
                        Dim::Symbolic(s) => match symbols.get(s.as_str()) {
                            Some(&(v, other)) if v != size => {
                                return Err(bad(format!("dim {i} ('{s}') is {size}, but input '{other}' has '{s}' = {v}")));
                            }
                            _ => {
                                symbols.insert(s, (size, &d.name));
                            }
                        },
                        _ => {}
                    }
                }
            }
            ordered.push(t);
        }
        Ok(ordered)
    }

    /// The plan for inputs of these dtypes and shapes, made once, then cached. When the
    /// shapes are those of an earlier plan with some symbolic dims grown together (a
    /// decoder's past length, say), the plan made serves every later growth as well: see
    /// [`Session::plans_made`].
    pub fn plan_for(&self, inputs: &[(DataType, Vec<usize>)]) -> Result<Arc<Plan>> {
        let started = std::time::Instant::now();
        let plan = self.cached_or_new_plan(inputs);
        self.planning_nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        plan
    }

    /// The time runs have spent finding or making their plans. Once a decoder's growing past
    /// has its family plan, each token's share is a cache lookup.
    pub fn planning_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.planning_nanos.load(Ordering::Relaxed))
    }

    fn cached_or_new_plan(&self, inputs: &[(DataType, Vec<usize>)]) -> Result<Arc<Plan>> {
        let key = inputs.to_vec();
        let partner = {
            let cache = self.plans.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = cache.exact.get(&key) {
                return Ok(p.clone());
            }
            if let Some(f) = cache.families.iter().find(|f| f.covers(&key)) {
                return Ok(f.plan.clone());
            }
            cache
                .exact
                .values()
                .zip(cache.exact.keys())
                .find_map(|(p, k)| growth(k, &key).filter(|shift| self.symbolic(shift)).map(|shift| (p.clone(), shift)))
        };
        let options = PlanOptions { max_tensor_bytes: self.max_tensor_bytes.load(Ordering::Relaxed), exact: self.exact(), ops: &self.ops };
        // A family when the model's shape arithmetic allows it, else a plan for these shapes.
        let family = partner.and_then(|(other, shift)| Some((plan_family(&self.model.graph, &key, &other, options).ok()?, shift)));
        let (plan, shift) = match family {
            Some((p, shift)) => (Arc::new(p), Some(shift)),
            None => (Arc::new(plan(&self.model.graph, inputs, options)?), None),
        };
        self.plans_made.fetch_add(1, Ordering::Relaxed);
        let mut cache = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if cache.exact.len() + cache.families.len() >= MAX_CACHED_PLANS {
            *cache = PlanCache::default();
        }
        match shift {
            Some(shift) => cache.families.push(Family { base: key, shift, plan: plan.clone() }),
            None => {
                cache.exact.insert(key, plan.clone());
            }
        }
        Ok(plan)
    }

    /// Whether every shifted dim is declared symbolic (or unknown) by the model.
    fn symbolic(&self, shift: &[Vec<bool>]) -> bool {
        self.model.inputs().iter().zip(shift).all(|(info, shift)| {
            shift
                .iter()
                .enumerate()
                .all(|(d, &s)| !s || info.dims.as_ref().is_some_and(|dims| matches!(dims.get(d), Some(Dim::Symbolic(_) | Dim::Unknown))))
        })
    }

    /// How many plans this session has made: one per set of input shapes, except that shapes
    /// growing together along symbolic dims share one plan from their second size on.
    ///
    /// ```
    /// use distq_runtime::testing::ModelBuilder;
    /// use distq_runtime::{DataType, Model, Session, Tensor};
    /// // y = x + 1 over a sequence of any length.
    /// let model = ModelBuilder::new(17)
    ///     .input("x", DataType::F32, &[-1])
    ///     .initializer("one", &Tensor::scalar(1f32))
    ///     .node("Add", &["x", "one"], &["y"], vec![])
    ///     .output("y", DataType::F32, &[-1])
    ///     .to_bytes();
    /// let session = Session::new(Model::from_bytes(model)?);
    /// for len in 2..40 {
    ///     let y = session.run(vec![("x", Tensor::from_vec(vec![len], vec![0f32; len])?)])?;
    ///     assert_eq!(y[0].1.shape(), [len]);
    /// }
    /// assert_eq!(session.plans_made(), 2);
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn plans_made(&self) -> usize {
        self.plans_made.load(Ordering::Relaxed)
    }

    /// Runs the model on named inputs; returns the outputs in graph order with their names.
    pub fn run<N: AsRef<str>>(&self, inputs: Vec<(N, Tensor)>) -> Result<NamedTensors> {
        Ok(self.run_profiled(inputs, false)?.0)
    }

    /// Like [`Session::run`], also returning each step's node, op type and time when `profile`
    /// is set.
    pub fn run_profiled<N: AsRef<str>>(&self, inputs: Vec<(N, Tensor)>, profile: bool) -> Result<(NamedTensors, Vec<StepTime>)> {
        let inputs = self.order_inputs(inputs)?;
        let key: Vec<(DataType, Vec<usize>)> = inputs.iter().map(|t| (t.dtype(), t.shape().to_vec())).collect();
        let plan = self.plan_for(&key)?;
        let mut times = Vec::new();
        let mut own = BufferPool::default();
        let mut shared = self.pool.try_lock().ok();
        let pool = shared.as_deref_mut().unwrap_or(&mut own);
        // Dead buffers up to twice the arena: with only one arena's worth, buffers whose size
        // no later op asks for crowd out the ones it does, and big allocations go back to the OS.
        pool.raise_budget(2 * plan.arena_bytes);
        let outputs = crate::threads::with(self.threads(), || execute(&plan, inputs, pool, profile.then_some(&mut times)))?;
        Ok((outputs, times))
    }
}

/// How long one step took.
#[derive(Debug, Clone)]
pub struct StepTime {
    /// Node name.
    pub node: String,
    /// Op type.
    pub op_type: String,
    /// Wall time.
    pub duration: std::time::Duration,
}

/// Runs `plan` on inputs given in graph order.
pub(crate) fn execute(
    plan: &Plan,
    inputs: Vec<Tensor>,
    pool: &mut BufferPool,
    mut profile: Option<&mut Vec<StepTime>>,
) -> Result<Vec<(String, Tensor)>> {
    let mut values: Vec<Option<Tensor>> = vec![None; plan.facts.len()];
    for ((_, slot), t) in plan.inputs.iter().zip(inputs) {
        values[*slot] = Some(t);
    }
    for (i, step) in plan.steps.iter().enumerate() {
        let started = std::time::Instant::now();
        // Input 0 by value when this step is its last reader (and reads it once): an op may
        // then write into its storage (a KV cache's Concat appends in place).
        let first = match step.inputs.first() {
            Some(&Some(s))
                if step.op.reuses_first_input()
                    && plan.free_after[i].contains(&s)
                    && step.inputs.iter().filter(|&&x| x == Some(s)).count() == 1 =>
            {
                values[s].take()
            }
            _ => None,
        };
        let outputs = {
            let skip = first.is_some() as usize;
            let args: Vec<Option<&Tensor>> = step.inputs[skip..]
                .iter()
                .map(|s| {
                    s.map(|s| {
                        values[s]
                            .as_ref()
                            .or(plan.constants[s].as_deref())
                            .ok_or_else(|| Error::Op(format!("slot {s} has no value (planner bug)")))
                    })
                    .transpose()
                })
                .collect::<Result<_>>()?;
            match first {
                Some(first) => step.op.eval_taking_first(first, &args, pool),
                None => step.op.eval(&args, pool),
            }
            .map_err(|e| e.in_node(&step.node, &step.op_type))?
        };
        if let Some(times) = profile.as_deref_mut() {
            times.push(StepTime { node: step.node.clone(), op_type: step.op_type.clone(), duration: started.elapsed() });
        }
        for (slot, t) in step.outputs.iter().zip(outputs) {
            if let Some(s) = *slot {
                check_output(&plan.facts[s], &plan.dynamic_dims[s], &t).map_err(|e| e.in_node(&step.node, &step.op_type))?;
                values[s] = Some(t);
            }
        }
        for &s in &plan.free_after[i] {
            if let Some(t) = values[s].take() {
                pool.give(t);
            }
        }
    }
    plan.outputs
        .iter()
        .enumerate()
        .map(|(j, (name, s))| {
            let repeated = plan.outputs[j + 1..].iter().any(|o| o.1 == *s);
            let t = match if repeated { values[*s].clone() } else { values[*s].take() } {
                Some(t) => t,
                // Outputs that are constants or inputs passed straight through.
                None => plan.constants[*s].as_deref().cloned().ok_or_else(|| Error::Op(format!("output '{name}' was not computed")))?,
            };
            Ok((name.clone(), t))
        })
        .collect()
}
