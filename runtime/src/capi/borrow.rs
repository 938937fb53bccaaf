//! Running on caller memory without copying it: inputs are views into buffers the caller
//! owns (a C array, a Java direct ByteBuffer) for the duration of one call.

use crate::bench::{BenchOptions, BenchReport};
use crate::error::{Error, Result};
use crate::session::NamedTensors;
use crate::{DataType, Session, Tensor};
use bytes::Bytes;
use std::sync::Arc;

/// One input as the caller holds it: little-endian element bytes of `dtype` in `shape`.
#[derive(Clone, Copy, Debug)]
pub struct BorrowedInput<'a> {
    /// The model input's name.
    pub name: &'a str,
    /// Element type.
    pub dtype: DataType,
    /// Dims.
    pub shape: &'a [usize],
    /// The elements (`shape`'s product × the dtype's size bytes).
    pub data: &'a [u8],
}

/// Dims as the ABIs pass them (signed, as in ONNX) as a shape; the error names the first
/// negative dim.
///
/// ```
/// use distq_runtime::capi::shape_of;
/// assert_eq!(shape_of(&[2, 3]), Ok(vec![2, 3]));
/// assert_eq!(shape_of(&[2, -1]), Err("dim 1 is -1".to_string()));
/// ```
pub fn shape_of(dims: &[i64]) -> std::result::Result<Vec<usize>, String> {
    dims.iter().enumerate().map(|(d, &v)| usize::try_from(v).map_err(|_| format!("dim {d} is {v}"))).collect()
}

/// Caller bytes seen as `Bytes` for the duration of one call. `alive` is shared by every
/// clone the runtime makes, so the call can check that none outlives it.
struct CallerBytes {
    ptr: *const u8,
    len: usize,
    _alive: Arc<()>,
}

// Safety: the bytes are only read, and only while the call that made them is running (the
// call checks that no view survives it, see `Lease::end`).
unsafe impl Send for CallerBytes {}
unsafe impl Sync for CallerBytes {}

impl AsRef<[u8]> for CallerBytes {
    fn as_ref(&self) -> &[u8] {
        // Safety: `ptr`/`len` come from a live `&[u8]` of the running call (see above).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The views made for one call.
struct Lease {
    alive: Arc<()>,
}

impl Lease {
    fn tensors(&self, inputs: &[BorrowedInput<'_>]) -> Result<Vec<(String, Tensor)>> {
        inputs
            .iter()
            .map(|input| {
                let bytes = Bytes::from_owner(CallerBytes { ptr: input.data.as_ptr(), len: input.data.len(), _alive: self.alive.clone() });
                let tensor = Tensor::from_le_bytes(input.dtype, input.shape.to_vec(), bytes)
                    .map_err(|e| Error::Input { name: input.name.to_string(), reason: e.to_string() })?;
                Ok((input.name.to_string(), tensor))
            })
            .collect()
    }

    /// Ends the lease: by now every view must be gone, or the caller's memory would be read
    /// after the call returned.
    fn end(self) {
        if Arc::strong_count(&self.alive) != 1 {
            // Unreachable unless the runtime keeps an input past `run`; reading freed caller
            // memory later would be worse than stopping here.
            eprintln!("distq: a view of caller memory outlived its call; aborting");
            std::process::abort();
        }
    }
}

/// Runs `session` on inputs that view caller memory; outputs never alias it (an output that
/// is an input, or a reshape of one, is copied).
///
/// ```
/// use distq_runtime::capi::{BorrowedInput, run_borrowed};
/// use distq_runtime::{DataType, Model, Session};
/// let session = Session::new(Model::from_bytes(distq_runtime::testing::add_one_model())?);
/// let x: Vec<u8> = [1f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
/// let input = BorrowedInput { name: "x", dtype: DataType::F32, shape: &[2], data: &x };
/// let outputs = run_borrowed(&session, &[input])?;
/// assert_eq!(outputs[0].1.as_slice::<f32>()?, &[2.0, 3.0]);
/// # Ok::<(), distq_runtime::Error>(())
/// ```
pub fn run_borrowed(session: &Session, inputs: &[BorrowedInput<'_>]) -> Result<NamedTensors> {
    let lease = Lease { alive: Arc::new(()) };
    let result = lease.tensors(inputs).and_then(|tensors| session.run(tensors));
    let outputs = result.map(|outputs| outputs.into_iter().map(|(name, t)| (name, t.detached())).collect());
    lease.end();
    outputs
}

/// [`Session::benchmark`] on inputs that view caller memory.
pub fn benchmark_borrowed(session: &Session, inputs: &[BorrowedInput<'_>], options: &BenchOptions) -> Result<BenchReport> {
    let lease = Lease { alive: Arc::new(()) };
    let report = lease.tensors(inputs).and_then(|tensors| session.benchmark(tensors, options));
    lease.end();
    report
}
