//! Operators: one file per family, each with its importer (attributes → op struct), its
//! shape/dtype inference and its fp32 (or generic) evaluation, and case tables at the bottom.

pub mod array;
pub mod attention;
pub mod chain;
pub mod conv;
pub mod elementwise;
pub mod epilogue;
pub mod math;
pub mod matmul;
pub mod matmul_nbits;
pub mod norm;
pub mod pool;
pub mod qbinary;
pub mod qconv;
pub mod quant;
pub mod reduce;
pub mod resize;
pub mod rnn;
pub mod rotary;

use crate::error::{Error, Result, bail, ensure};
use crate::onnx::attrs::Attrs;
use crate::tensor::{DataType, Element, Tensor, checked_numel};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What the planner knows about a value before running: dtype, concrete shape, and the value
/// itself when it is a constant (initializers and folded shape computations).
#[derive(Clone, Debug)]
pub struct Fact {
    /// Element type.
    pub dtype: DataType,
    /// Concrete shape (plans are made for concrete input shapes).
    pub shape: Vec<usize>,
    /// The value, when known before running.
    pub value: Option<Arc<Tensor>>,
}

impl Fact {
    /// A fact with no known value.
    pub fn new(dtype: DataType, shape: Vec<usize>) -> Fact {
        Fact { dtype, shape, value: None }
    }

    /// The fact of a known tensor.
    pub fn of(t: Arc<Tensor>) -> Fact {
        Fact { dtype: t.dtype(), shape: t.shape().to_vec(), value: Some(t) }
    }

    /// The constant value as `i64`s; shape-determining inputs must be constant at plan time.
    pub fn const_i64s(&self, what: &str) -> Result<Vec<i64>> {
        match &self.value {
            Some(v) => v.to_i64s(),
            None => bail!("{what} must be known before running (it depends on input data, which is not supported)"),
        }
    }

    /// The constant value as `f32`s.
    pub fn const_f32s(&self, what: &str) -> Result<Vec<f32>> {
        match &self.value {
            Some(v) => v.to_f32s(),
            None => bail!("{what} must be known before running (it depends on input data, which is not supported)"),
        }
    }
}

/// Recycles the storage of dead activations so that later ops allocate less (the executor
/// returns each tensor here after its last use, as the plan's liveness says).
#[derive(Default)]
pub struct BufferPool {
    /// Dead buffers sorted by dtype code, element count and age (when given).
    free: Vec<((i32, usize, u64), Tensor)>,
    given: u64,
    free_bytes: usize,
    /// Most bytes kept for reuse (the plan's arena size): beyond it dead buffers are freed.
    budget: usize,
    /// Allocations served from recycled storage.
    pub reused: usize,
}

impl BufferPool {
    /// Lets the pool keep at least `budget` bytes (a session's pool grows to its largest plan's
    /// arena).
    pub fn raise_budget(&mut self, budget: usize) {
        self.budget = self.budget.max(budget);
    }

    /// A dead buffer of this dtype holding exactly `len` elements (up to 64 for smaller
    /// requests). Exactly: a larger buffer spent on a smaller request leaves the next request
    /// of its own size to a fresh allocation, and the pool then holds both (on MiniLM's
    /// int8/int4 model, up to 2× slack peaked 12 MB higher for no speed-up).
    fn recycled<T: Element>(&mut self, len: usize) -> Option<Vec<T>> {
        let code = T::DTYPE.onnx_code();
        let at = self.free.partition_point(|(key, _)| *key < (code, len, 0));
        let ((c, l, _), _) = self.free.get(at)?;
        if (*c, *l) > (code, len.max(64)) {
            return None;
        }
        let t = self.remove(at);
        let v = t.into_vec::<T>().ok()?;
        self.reused += 1;
        Some(v)
    }

    /// Takes the buffer at `at` out of the pool.
    fn remove(&mut self, at: usize) -> Tensor {
        let (_, t) = self.free.remove(at);
        self.free_bytes -= t.byte_len();
        t
    }

    /// An empty vector with room for at least `len` elements, recycled when possible.
    pub fn take<T: Element>(&mut self, len: usize) -> Vec<T> {
        match self.recycled(len) {
            Some(mut v) => {
                v.clear();
                v
            }
            None => Vec::with_capacity(len),
        }
    }

    /// `len` elements with unspecified values (a dead buffer's, or zeros), for outputs the op
    /// writes completely: skips the fill of [`BufferPool::filled`].
    pub fn overwritable<T: Element>(&mut self, len: usize) -> Vec<T> {
        match self.recycled(len) {
            Some(mut v) => {
                v.truncate(len);
                v
            }
            None => vec![T::default(); len],
        }
    }

    /// A vector of `len` copies of `value`, recycled when possible.
    pub fn filled<T: Element>(&mut self, len: usize, value: T) -> Vec<T> {
        let mut v = self.take(len);
        v.resize(len, value);
        v
    }

    /// Hands a dead tensor's storage back (mapped or still shared storage is simply dropped);
    /// the oldest buffers are freed to keep the pool within its budget.
    pub fn give(&mut self, t: Tensor) {
        if !t.is_unique() || t.len() < 64 || t.byte_len() > self.budget {
            return;
        }
        // The oldest buffers make room: a decoder's sizes grow every token, and sizes no op
        // asks for again would otherwise fill the pool (and every lookup would pass them).
        while self.free_bytes + t.byte_len() > self.budget
            && let Some(oldest) = self.free.iter().enumerate().min_by_key(|(_, ((_, _, age), _))| *age).map(|(i, _)| i)
        {
            self.remove(oldest);
        }
        self.given += 1;
        let key = (t.dtype().onnx_code(), t.len(), self.given);
        self.free_bytes += t.byte_len();
        let at = self.free.partition_point(|(k, _)| *k < key);
        self.free.insert(at, (key, t));
    }
}

/// One operator instance with its attributes.
/// `Any` lets plan-time passes recognize an op's concrete type (fusion).
pub trait Op: std::any::Any + Send + Sync + std::fmt::Debug {
    /// Output dtypes and shapes from the inputs' (absent optional inputs are `None`).
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>>;
    /// Computes the outputs.
    fn eval(&self, inputs: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>>;
    /// The arithmetic one evaluation does, for the energy model. The default suits
    /// elementwise and data-movement ops: one simple operation per output element. Ops with
    /// multiply-accumulate loops override it.
    fn work(&self, _inputs: &[Option<&Fact>], outputs: &[Fact]) -> Work {
        Work { other_ops: outputs.iter().map(|o| o.shape.iter().product::<usize>() as u64).sum(), ..Work::default() }
    }
    /// True when the output is the input's storage under another shape (Reshape, Flatten,
    /// Squeeze, Unsqueeze, Identity): the step reads and writes no element, and the energy
    /// model counts no work and no bytes for it.
    fn is_view(&self) -> bool {
        false
    }
    /// True when the op can write its output into input 0's storage when it is handed over
    /// (see [`Op::eval_taking_first`]).
    fn reuses_first_input(&self) -> bool {
        false
    }
    /// [`Op::eval`] with input 0 given by value: the executor hands it over when this step is
    /// its last reader and [`Op::reuses_first_input`] says so (only then is this called).
    /// `rest` holds inputs 1 onwards.
    fn eval_taking_first(&self, first: Tensor, rest: &[Option<&Tensor>], pool: &mut BufferPool) -> Result<Vec<Tensor>> {
        // Every op type has this body: kept to a call, out of line (a phone's library size).
        let _ = (first, rest, pool);
        Err(not_taking_first_input())
    }
    /// True when the op takes 4-bit constants packed as they are (see [`DataType::U4`]); the
    /// planner widens them to bytes for every other op.
    fn reads_four_bit(&self) -> bool {
        false
    }
}

/// The error of [`Op::eval_taking_first`] on an op that does not take its input by value.
#[cold]
fn not_taking_first_input() -> Error {
    Error::Op("the op was handed its first input by value, which it does not take (executor bug)".into())
}

/// Arithmetic of one op evaluation, by the precision the runtime computes it in (fp16
/// weights are expanded and multiplied in f32; int4 weights at int8 compute count as int8).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// f32 multiply-accumulates.
    pub f32_macs: u64,
    /// 8-bit multiply-accumulates (32-bit accumulation).
    pub int8_macs: u64,
    /// Other operations (elementwise, reductions, data movement), one per element.
    pub other_ops: u64,
    /// Bytes of its constant inputs it reads, when not all of them (a Gather reads only the
    /// rows it gathers).
    pub constant_bytes_read: Option<u64>,
}

impl Work {
    /// `macs` multiply-accumulates in f32 (`int8` false) or 8-bit integers.
    pub fn macs(macs: usize, int8: bool) -> Work {
        let macs = macs as u64;
        if int8 { Work { int8_macs: macs, ..Work::default() } } else { Work { f32_macs: macs, ..Work::default() } }
    }
}

impl std::ops::Add for Work {
    type Output = Work;
    fn add(self, o: Work) -> Work {
        let constant_bytes_read = match (self.constant_bytes_read, o.constant_bytes_read) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        Work {
            f32_macs: self.f32_macs + o.f32_macs,
            int8_macs: self.int8_macs + o.int8_macs,
            other_ops: self.other_ops + o.other_ops,
            constant_bytes_read,
        }
    }
}

/// A gather's work: one move per output element, reading only the gathered rows of its
/// table (input 0, elements of `table_dtype`).
pub(crate) fn gather_work(table_dtype: Option<DataType>, outputs: &[Fact]) -> Work {
    let elements = output_elements(outputs);
    Work { other_ops: elements as u64, constant_bytes_read: table_dtype.map(|d| d.bytes(elements) as u64), ..Work::default() }
}

/// Elements of the first output: the count a MAC loop's outer loops run over.
pub(crate) fn output_elements(outputs: &[Fact]) -> usize {
    outputs.first().map_or(0, |o| o.shape.iter().product())
}

/// The size of dim `axis` (from the end when negative) of input `i`, 0 when absent.
pub(crate) fn input_dim(inputs: &[Option<&Fact>], i: usize, axis: isize) -> usize {
    inputs
        .get(i)
        .copied()
        .flatten()
        .and_then(|f| f.shape.get(if axis < 0 { f.shape.len().wrapping_add_signed(axis) } else { axis as usize }))
        .copied()
        .unwrap_or(0)
}

/// Weight values per output channel of a convolution weight (`M × C/g × k…`) at input `i`.
pub(crate) fn per_filter(inputs: &[Option<&Fact>], i: usize) -> usize {
    inputs.get(i).copied().flatten().map_or(0, |w| w.shape.iter().skip(1).product())
}

/// What an importer gets: the node's attributes, its input count and the model's opset.
pub struct ImportCtx<'a> {
    /// The node's attributes.
    pub attrs: Attrs<'a>,
    /// Opset version of the node's domain.
    pub opset: i64,
    /// Number of inputs (including empty names for skipped optional ones).
    pub num_inputs: usize,
    /// Number of outputs the node declares.
    pub num_outputs: usize,
}

/// Builds an op from a node.
pub type Importer = fn(&ImportCtx) -> Result<Box<dyn Op>>;

fn registry() -> &'static HashMap<&'static str, Importer> {
    static REGISTRY: OnceLock<HashMap<&'static str, Importer>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut map = HashMap::new();
        for family in [
            elementwise::OPS,
            matmul::OPS,
            conv::OPS,
            pool::OPS,
            norm::OPS,
            reduce::OPS,
            array::OPS,
            attention::OPS,
            resize::OPS,
            rnn::OPS,
            quant::OPS,
            qconv::OPS,
            matmul_nbits::OPS,
            rotary::OPS,
        ] {
            for &(name, importer) in family {
                map.insert(name, importer);
            }
        }
        map
    })
}

/// The importer of an op type (`domain::Op` outside the default domain), if the runtime
/// implements it.
pub fn importer(op_type: &str) -> Option<Importer> {
    registry().get(op_type).copied()
}

/// Every op type the runtime implements (sorted), for `inspect` and docs.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<_> = registry().keys().copied().collect();
    v.push("Constant");
    v.push("If");
    v.sort_unstable();
    v
}

// ---- helpers shared by the op families ----

/// Weights prepared once from a constant input (packed, dequantized) and kept while the
/// input is the same tensor (same storage address and length), so every plan and run of a
/// session shares them.
pub(crate) struct PreparedWeights<T>(Mutex<Option<(SourceKey, Arc<T>)>>);

/// Address and length of a source tensor's storage.
type SourceKey = (usize, usize);

impl<T> std::fmt::Debug for PreparedWeights<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PreparedWeights")
    }
}

impl<T> Default for PreparedWeights<T> {
    fn default() -> Self {
        PreparedWeights(Mutex::new(None))
    }
}

impl<T> PreparedWeights<T> {
    /// The prepared form of `source`, made by `prepare` on first use. The source's pages in
    /// the model file are then handed back to the OS: the op reads only its prepared form
    /// (should anything read the source again, its pages fault back in from the file).
    pub(crate) fn get(&self, source: &Tensor, prepare: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        let key = (source.as_le_bytes().as_ptr() as usize, source.len());
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match cache.as_ref() {
            Some((k, prepared)) if *k == key => Ok(prepared.clone()),
            _ => {
                let prepared = Arc::new(prepare()?);
                if source.is_mapped() {
                    crate::onnx::release_pages(source.as_le_bytes());
                }
                *cache = Some((key, prepared.clone()));
                Ok(prepared)
            }
        }
    }
}

/// The `i`-th input, which the op requires.
pub(crate) fn required<T: Copy>(inputs: &[Option<T>], i: usize) -> Result<T> {
    match inputs.get(i) {
        Some(Some(x)) => Ok(*x),
        _ => bail!("required input {i} is missing"),
    }
}

/// The `i`-th input if present.
pub(crate) fn optional<T: Copy>(inputs: &[Option<T>], i: usize) -> Option<T> {
    inputs.get(i).copied().flatten()
}

/// Resolves a possibly negative axis against `rank`.
pub(crate) fn normalize_axis(axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    ensure!((-r..r).contains(&axis), "axis {axis} is out of range for rank {rank}");
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

/// Numpy-style broadcast of two shapes.
pub(crate) fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => bail!("shapes {a:?} and {b:?} cannot be broadcast together (dim {i}: {da} vs {db})"),
        };
    }
    Ok(out)
}

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides that read `shape` as if broadcast to `out` (0 stride on broadcast dims).
pub(crate) fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let s = strides(shape);
    let pad = out.len() - shape.len();
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { s[i - pad] }).collect()
}

/// Gathers `src`, read from `base` with (possibly negative or zero) `src_strides`, into a
/// dense row-major array of shape `out` appended to `dst`.
pub(crate) fn strided_copy<T: Copy>(src: &[T], base: usize, out: &[usize], src_strides: &[isize], dst: &mut Vec<T>) {
    if out.contains(&0) {
        return;
    }
    if out.is_empty() {
        dst.push(src[base]);
        return;
    }
    let rank = out.len();
    let inner = out[rank - 1];
    let inner_stride = src_strides[rank - 1];
    let mut idx = vec![0usize; rank - 1];
    let mut offset = base as isize;
    loop {
        let o = offset as usize;
        if inner_stride == 1 {
            dst.extend_from_slice(&src[o..o + inner]);
        } else {
            dst.extend((0..inner).map(|j| src[(offset + j as isize * inner_stride) as usize]));
        }
        // Odometer over the outer dims.
        let mut d = rank - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            offset += src_strides[d];
            if idx[d] < out[d] {
                break;
            }
            offset -= src_strides[d] * idx[d] as isize;
            idx[d] = 0;
        }
    }
}

/// Checks that an input's dtype is one of `allowed`.
pub(crate) fn expect_dtype(f: &Fact, allowed: &[DataType], what: &str) -> Result<()> {
    ensure!(
        allowed.contains(&f.dtype),
        "{what} has dtype {}, expected one of {:?}",
        f.dtype,
        allowed.iter().map(|d| d.name()).collect::<Vec<_>>()
    );
    Ok(())
}

/// Builds an output tensor, checking the element count.
pub(crate) fn out<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Result<Tensor> {
    Tensor::from_vec(shape, data)
}

/// Checks the element count of a planned shape against memory limits early.
pub(crate) fn numel(shape: &[usize]) -> Result<usize> {
    checked_numel(shape)
}

/// Matches a tensor's dtype against the listed `DataType => element type` arms, binding
/// `$x: &[T]` with `T` the element type in `$body`; other dtypes go to `$fallback`.
macro_rules! dispatch_dtype {
    ($t:expr, |$x:ident: &[$T:ident]| $body:expr, [$($dt:ident => $ty:ty),*], $other:ident => $fallback:expr) => {{
        use $crate::tensor::DataType;
        match $t.dtype() {
            $(DataType::$dt => {
                #[allow(dead_code)]
                type $T = $ty;
                let $x = $t.as_slice::<$ty>()?;
                $body
            })*
            #[allow(unreachable_patterns)]
            $other => $fallback,
        }
    }};
}
pub(crate) use dispatch_dtype;

/// Calls `$body` with `$x` bound to the elements of any-dtype tensor `$t`, as `&[T]`, with
/// `T` the element type (for data-movement ops that do not care about the dtype).
macro_rules! with_elements {
    ($t:expr, |$x:ident: &[$T:ident]| $body:expr) => {
        $crate::ops::dispatch_dtype!($t, |$x: &[$T]| $body,
            [F32 => f32, U8 => u8, I8 => i8, I32 => i32, I64 => i64, F16 => u16, F64 => f64, Bool => $crate::tensor::Bool],
            other => unreachable!("every dtype is listed, {other:?} too"))
    };
}
pub(crate) use with_elements;

/// Error for an attribute value the runtime does not implement.
pub(crate) fn unsupported_attr(what: String) -> Error {
    Error::UnsupportedFeature(what)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// Runs an op's inference and evaluation on the given inputs and checks they agree.
    pub fn run(op: &dyn Op, inputs: &[Option<Tensor>]) -> Result<Vec<Tensor>> {
        let facts: Vec<Option<Fact>> = inputs.iter().map(|t| t.as_ref().map(|t| Fact::new(t.dtype(), t.shape().to_vec()))).collect();
        let fact_refs: Vec<Option<&Fact>> = facts.iter().map(|f| f.as_ref()).collect();
        let inferred = op.infer(&fact_refs);
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
        let outputs = op.eval(&refs, &mut BufferPool::default())?;
        if let Ok(inferred) = inferred {
            for (f, t) in inferred.iter().zip(&outputs) {
                assert_eq!((f.dtype, f.shape.as_slice()), (t.dtype(), t.shape()), "inference disagrees with evaluation");
            }
        }
        Ok(outputs)
    }

    /// Like [`run`] with constant facts, for ops whose shapes depend on input values.
    pub fn run_const(op: &dyn Op, inputs: &[Option<Tensor>]) -> Result<Vec<Tensor>> {
        let facts: Vec<Option<Fact>> = inputs.iter().map(|t| t.as_ref().map(|t| Fact::of(Arc::new(t.clone())))).collect();
        let fact_refs: Vec<Option<&Fact>> = facts.iter().map(|f| f.as_ref()).collect();
        let inferred = op.infer(&fact_refs)?;
        let refs: Vec<Option<&Tensor>> = inputs.iter().map(|t| t.as_ref()).collect();
        let outputs = op.eval(&refs, &mut BufferPool::default())?;
        for (f, t) in inferred.iter().zip(&outputs) {
            assert_eq!((f.dtype, f.shape.as_slice()), (t.dtype(), t.shape()), "inference disagrees with evaluation");
        }
        Ok(outputs)
    }

    pub fn f32t(shape: &[usize], v: &[f32]) -> Option<Tensor> {
        Some(Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap())
    }

    pub fn i64t(shape: &[usize], v: &[i64]) -> Option<Tensor> {
        Some(Tensor::from_vec(shape.to_vec(), v.to_vec()).unwrap())
    }

    pub fn assert_close(t: &Tensor, shape: &[usize], expected: &[f32]) {
        assert_eq!(t.shape(), shape);
        let got = t.as_slice::<f32>().unwrap();
        for (i, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!((g - e).abs() <= 1e-5 * (1.0 + e.abs()), "element {i}: got {g}, expected {e}\n got {got:?}");
        }
        assert_eq!(got.len(), expected.len());
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn the_pool_recycles_buffers_of_the_exact_length_only() {
        let mut pool = BufferPool::default();
        pool.raise_budget(1 << 20);
        pool.give(Tensor::from_vec(vec![1000], vec![1f32; 1000]).unwrap());
        // A smaller request does not take the larger buffer, which stays for its own size.
        let smaller: Vec<f32> = pool.take(600);
        assert_eq!(pool.reused, 0);
        let same: Vec<f32> = pool.overwritable(1000);
        assert_eq!((pool.reused, same.len()), (1, 1000));
        // Another dtype of the same length is not served either; small requests share 64.
        pool.give(Tensor::from_vec(vec![1000], same).unwrap());
        let _: Vec<u8> = pool.take(1000);
        assert_eq!(pool.reused, 1);
        pool.give(Tensor::from_vec(vec![64], vec![0f32; 64]).unwrap());
        let _: Vec<f32> = pool.take(10);
        assert_eq!(pool.reused, 2);
        drop(smaller);
    }
}
