//! Tensors across the ABI, running a session and reading its outputs, and benchmarks.

use super::borrow::{BorrowedInput, benchmark_borrowed, run_borrowed, shape_of};
use super::handles::Handles;
use super::session::{DistqSession, session_of};
use super::{DistqStatus, Failure, c_str, entry, out_ptr};
use crate::bench::{BenchOptions, EnergySource};
use crate::energy::Method;
use crate::{DataType, Tensor};
use std::ffi::{CString, c_char, c_void};
use std::sync::Arc;

/// `float` (ONNX dtype codes).
pub const DISTQ_DTYPE_FLOAT: i32 = 1;
/// `uint8`.
pub const DISTQ_DTYPE_UINT8: i32 = 2;
/// `int8`.
pub const DISTQ_DTYPE_INT8: i32 = 3;
/// `int32`.
pub const DISTQ_DTYPE_INT32: i32 = 6;
/// `int64`.
pub const DISTQ_DTYPE_INT64: i32 = 7;
/// `bool`, one byte (0 or 1) per element.
pub const DISTQ_DTYPE_BOOL: i32 = 9;
/// IEEE half, as raw 16-bit patterns.
pub const DISTQ_DTYPE_FLOAT16: i32 = 10;
/// `double`.
pub const DISTQ_DTYPE_DOUBLE: i32 = 11;

/// A tensor as the ABI passes it. As an input the caller fills it in and keeps the memory
/// valid for the call; as an output view the library fills it in, valid until the owning
/// `DistqOutputs` is freed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DistqTensor {
    /// The model input's or output's name (NUL-terminated UTF-8).
    pub name: *const c_char,
    /// Element type: one of the `DISTQ_DTYPE_*` codes.
    pub dtype: i32,
    /// `rank` dims (may be NULL when `rank` is 0).
    pub shape: *const i64,
    /// Number of dims.
    pub rank: usize,
    /// The elements, little-endian, row-major (may be NULL when `byte_len` is 0).
    pub data: *const c_void,
    /// Bytes at `data`: the product of the dims × the dtype's size.
    pub byte_len: usize,
}

/// The outputs of one run (opaque: a generation-checked handle, like `DistqSession*`), in the
/// model's output order. Free with `distq_outputs_free`.
pub struct DistqOutputs {
    entries: Vec<OwnedOutput>,
}

/// The live outputs.
static OUTPUTS: Handles<DistqOutputs> = Handles::new(2);

/// The outputs behind a handle (see `Handles::resolve`).
fn outputs_of(handle: *const DistqOutputs) -> Result<Arc<DistqOutputs>, Failure> {
    OUTPUTS.resolve(handle, "outputs")
}

struct OwnedOutput {
    name: CString,
    shape: Vec<i64>,
    tensor: Tensor,
}

impl OwnedOutput {
    fn view(&self) -> DistqTensor {
        let bytes = self.tensor.as_le_bytes();
        DistqTensor {
            name: self.name.as_ptr(),
            dtype: self.tensor.dtype().onnx_code(),
            shape: self.shape.as_ptr(),
            rank: self.shape.len(),
            data: bytes.as_ptr().cast(),
            byte_len: bytes.len(),
        }
    }
}

/// Dims of one input with their element type, read from a `DistqTensor`.
struct InputParts<'a> {
    name: &'a str,
    dtype: DataType,
    shape: Vec<usize>,
    data: &'a [u8],
}

/// Reads the caller's input array.
///
/// # Safety
/// `inputs` must be readable for `count` tensors whose pointers follow `DistqTensor`'s rules.
unsafe fn read_inputs<'a>(inputs: *const DistqTensor, count: usize) -> Result<Vec<InputParts<'a>>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if inputs.is_null() {
        return Err(Failure::new(DistqStatus::NullArgument, format!("inputs is NULL but count is {count}")));
    }
    // Safety: the caller's contract.
    let inputs = unsafe { std::slice::from_raw_parts(inputs, count) };
    inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            // Safety: the caller's contract, per field.
            let name = unsafe { c_str(t.name, &format!("inputs[{i}].name")) }?;
            let bad = |status, reason: String| Failure::new(status, format!("input '{name}': {reason}"));
            let dtype = DataType::from_onnx(t.dtype).filter(|d| !d.is_four_bit()).ok_or_else(|| {
                bad(DistqStatus::InvalidArgument, format!("dtype code {} is not one of the DISTQ_DTYPE_* codes", t.dtype))
            })?;
            let dims: &[i64] = match t.rank {
                0 => &[],
                _ if t.shape.is_null() => return Err(bad(DistqStatus::NullArgument, format!("shape is NULL but rank is {}", t.rank))),
                // Safety: the caller's contract.
                rank => unsafe { std::slice::from_raw_parts(t.shape, rank) },
            };
            let shape = shape_of(dims).map_err(|reason| bad(DistqStatus::InvalidArgument, reason))?;
            let data: &[u8] = match t.byte_len {
                0 => &[],
                _ if t.data.is_null() => {
                    return Err(bad(DistqStatus::NullArgument, format!("data is NULL but byte_len is {}", t.byte_len)));
                }
                // Safety: the caller's contract.
                len => unsafe { std::slice::from_raw_parts(t.data.cast(), len) },
            };
            Ok(InputParts { name, dtype, shape, data })
        })
        .collect()
}

fn borrowed<'a>(parts: &'a [InputParts<'a>]) -> Vec<BorrowedInput<'a>> {
    parts.iter().map(|p| BorrowedInput { name: p.name, dtype: p.dtype, shape: &p.shape, data: p.data }).collect()
}

/// Runs the model on `count` named inputs and gives the outputs through `out`. Inputs are
/// read in place during the call (no copy) and may be reused or freed when it returns.
///
/// # Safety
/// `inputs` must hold `count` valid `DistqTensor`s; `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_session_run(
    session: *const DistqSession,
    inputs: *const DistqTensor,
    count: usize,
    out: *mut *mut DistqOutputs,
) -> DistqStatus {
    entry(|| {
        // Safety: the caller's contract, for each pointer.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        let session = session_of(session)?;
        let parts = unsafe { read_inputs(inputs, count) }?;
        let outputs = run_borrowed(&session.session, &borrowed(&parts))?;
        let entries = outputs
            .into_iter()
            .map(|(name, tensor)| OwnedOutput {
                name: CString::new(name.replace('\0', "\\0")).unwrap_or_default(),
                shape: tensor.shape().iter().map(|&d| d as i64).collect(),
                tensor,
            })
            .collect();
        let handle =
            OUTPUTS.insert(DistqOutputs { entries }).ok_or_else(|| Failure::new(DistqStatus::InvalidArgument, "too many live outputs"))?;
        *out = handle as *mut DistqOutputs;
        Ok(())
    })
}

/// Frees the outputs of a run; their views become invalid. NULL and handles freed already
/// are ignored.
#[unsafe(no_mangle)]
pub extern "C" fn distq_outputs_free(outputs: *mut DistqOutputs) {
    // Dropping tensors does not panic, but nothing may unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| OUTPUTS.remove(outputs as usize)));
}

/// The number of outputs, through `out`.
///
/// # Safety
/// `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_outputs_count(outputs: *const DistqOutputs, out: *mut usize) -> DistqStatus {
    entry(|| {
        // Safety: the caller's contract.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = 0;
        *out = outputs_of(outputs)?.entries.len();
        Ok(())
    })
}

/// A view of output `index` through `out` (valid until the outputs are freed).
///
/// # Safety
/// `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_outputs_get(outputs: *const DistqOutputs, index: usize, out: *mut DistqTensor) -> DistqStatus {
    entry(|| {
        // Safety: the caller's contract.
        let out = unsafe { out_ptr(out, "out") }?;
        let outputs = outputs_of(outputs)?;
        let entries = &outputs.entries;
        let entry = entries.get(index).ok_or_else(|| {
            Failure::new(DistqStatus::InvalidArgument, format!("output index {index} is out of range: there are {}", entries.len()))
        })?;
        *out = entry.view();
        Ok(())
    })
}

/// A view of the output called `name` through `out` (valid until the outputs are freed).
///
/// # Safety
/// `name` must be NUL-terminated; `out` writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_outputs_find(outputs: *const DistqOutputs, name: *const c_char, out: *mut DistqTensor) -> DistqStatus {
    entry(|| {
        // Safety: the caller's contract.
        let out = unsafe { out_ptr(out, "out") }?;
        let outputs = outputs_of(outputs)?;
        let entries = &outputs.entries;
        let name = unsafe { c_str(name, "name") }?;
        let entry = entries.iter().find(|e| e.name.to_bytes() == name.as_bytes()).ok_or_else(|| {
            let names: Vec<_> = entries.iter().map(|e| e.name.to_string_lossy()).collect();
            Failure::new(DistqStatus::InvalidArgument, format!("no output is called '{name}' (the outputs are: {})", names.join(", ")))
        })?;
        *out = entry.view();
        Ok(())
    })
}

/// Where a benchmark's energy figure came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DistqEnergyMethod {
    /// The energy model (operation counts × per-operation energies): no sensor was readable.
    Model = 0,
    /// Linux powercap RAPL counters.
    Rapl = 1,
    /// A battery's current × voltage.
    PowerSupply = 2,
    /// Pixel on-device power-monitor rails.
    Odpm = 3,
}

impl From<Method> for DistqEnergyMethod {
    fn from(method: Method) -> DistqEnergyMethod {
        match method {
            Method::Model => DistqEnergyMethod::Model,
            Method::Rapl => DistqEnergyMethod::Rapl,
            Method::PowerSupply => DistqEnergyMethod::PowerSupply,
            Method::Odpm => DistqEnergyMethod::Odpm,
        }
    }
}

/// A benchmark's results. Latencies in milliseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DistqBenchmark {
    /// Median latency.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean latency.
    pub mean_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
    /// Inferences per second over the timed runs.
    pub throughput_per_s: f64,
    /// Energy per inference, joules.
    pub joules_per_inference: f64,
    /// Where `joules_per_inference` came from (a `DistqEnergyMethod`).
    pub energy_method: i32,
    /// Peak resident memory of the process during the runs (0 where unknown).
    pub peak_rss_bytes: u64,
    /// The plan's activation arena.
    pub arena_bytes: u64,
    /// Timed runs.
    pub iters: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// Threads the kernels used.
    pub threads: usize,
}

/// Runs the model `warmup` times untimed, then `iters` times timed, and reports latency,
/// throughput, memory and energy per inference (the best readable power sensor, else the
/// energy model).
///
/// # Safety
/// As for `distq_session_run`; `out` must point to a writable `DistqBenchmark`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_session_benchmark(
    session: *const DistqSession,
    inputs: *const DistqTensor,
    count: usize,
    iters: usize,
    warmup: usize,
    out: *mut DistqBenchmark,
) -> DistqStatus {
    entry(|| {
        // Safety: the caller's contract, for each pointer.
        let out = unsafe { out_ptr(out, "out") }?;
        *out = DistqBenchmark::default();
        let session = session_of(session)?;
        let parts = unsafe { read_inputs(inputs, count) }?;
        let options = BenchOptions { iters, warmup, energy: EnergySource::Auto, ..Default::default() };
        let r = benchmark_borrowed(&session.session, &borrowed(&parts), &options)?;
        *out = DistqBenchmark {
            p50_ms: r.latency.p50,
            p90_ms: r.latency.p90,
            p99_ms: r.latency.p99,
            mean_ms: r.latency.mean,
            min_ms: r.latency.min,
            max_ms: r.latency.max,
            throughput_per_s: r.throughput_per_s,
            joules_per_inference: r.energy.joules_per_inference,
            energy_method: DistqEnergyMethod::from(r.energy.method) as i32,
            peak_rss_bytes: r.peak_rss_bytes.unwrap_or(0),
            arena_bytes: r.arena_bytes as u64,
            iters: r.iters,
            warmup: r.warmup,
            threads: r.threads,
        };
        Ok(())
    })
}
