//! Session handles: load from a path or bytes, threads, the model's input and output names.

use super::handles::Handles;
use super::{DistqStatus, Failure, c_str, entry, out_ptr};
use crate::{Model, Session};
use std::ffi::{CString, c_char};
use std::sync::Arc;

/// A loaded model ready to run (opaque: a `DistqSession*` is a generation-checked handle,
/// not an address). Create with `distq_session_load` or `distq_session_from_bytes`; free with
/// `distq_session_free`.
pub struct DistqSession {
    pub(crate) session: Session,
    input_names: Vec<CString>,
    output_names: Vec<CString>,
}

impl DistqSession {
    fn new(session: Session) -> DistqSession {
        let names = |infos: &[crate::graph::ValueInfo]| -> Vec<CString> {
            infos.iter().map(|i| CString::new(i.name.replace('\0', "\\0")).unwrap_or_default()).collect()
        };
        let input_names = names(session.model().inputs());
        let output_names = names(session.model().outputs());
        DistqSession { session, input_names, output_names }
    }
}

/// The live sessions.
static SESSIONS: Handles<DistqSession> = Handles::new(1);

/// The session behind a handle (see `Handles::resolve`).
pub(crate) fn session_of(handle: *const DistqSession) -> Result<Arc<DistqSession>, Failure> {
    SESSIONS.resolve(handle, "session")
}

/// Publishes a new session through `out` (set to NULL first, so failures leave NULL).
fn create(out: *mut *mut DistqSession, load: impl FnOnce() -> Result<Session, Failure>) -> DistqStatus {
    entry(|| {
        // Safety: `out` points to writable storage (checked for NULL).
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null_mut();
        let handle = SESSIONS
            .insert(DistqSession::new(load()?))
            .ok_or_else(|| Failure::new(DistqStatus::InvalidArgument, "too many live sessions"))?;
        *out = handle as *mut DistqSession;
        Ok(())
    })
}

/// Loads the ONNX model at `path` (weights stay memory-mapped) into a new session.
///
/// # Safety
/// `path` must be a NUL-terminated string; `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_session_load(path: *const c_char, out: *mut *mut DistqSession) -> DistqStatus {
    create(out, || {
        // Safety: the caller's contract.
        let path = unsafe { c_str(path, "path") }?;
        Ok(Session::load(path)?)
    })
}

/// Makes a session from an ONNX model held in memory (`len` bytes at `data`, copied; models
/// with external data files need `distq_session_load`).
///
/// # Safety
/// `data` must be readable for `len` bytes; `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_session_from_bytes(data: *const u8, len: usize, out: *mut *mut DistqSession) -> DistqStatus {
    create(out, || {
        if data.is_null() {
            return Err(Failure::new(DistqStatus::NullArgument, "data is NULL"));
        }
        // Safety: the caller's contract.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        Ok(Session::new(Model::from_bytes(bytes)?))
    })
}

/// Frees a session. NULL and handles freed already are ignored; calls still running on
/// other threads finish first (the memory goes when the last one returns), later calls with
/// the handle fail with `DISTQ_STATUS_INVALID_ARGUMENT`.
#[unsafe(no_mangle)]
pub extern "C" fn distq_session_free(session: *mut DistqSession) {
    // Dropping a session does not panic, but nothing may unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| SESSIONS.remove(session as usize)));
}

/// Lets later runs of `session` split each kernel over `threads` threads (default: the
/// performance cores, the big ones of a big.LITTLE phone; 0 counts as 1). Outputs do not
/// depend on it.
#[unsafe(no_mangle)]
pub extern "C" fn distq_session_set_threads(session: *const DistqSession, threads: usize) -> DistqStatus {
    entry(|| {
        session_of(session)?.session.set_threads(threads);
        Ok(())
    })
}

/// Reports how many names a list has, through `out`.
fn count(session: *const DistqSession, out: *mut usize, list: fn(&DistqSession) -> &[CString]) -> DistqStatus {
    entry(|| {
        // Safety: the callers' contract (writable `out`).
        let out = unsafe { out_ptr(out, "out") }?;
        *out = 0;
        *out = list(&*session_of(session)?).len();
        Ok(())
    })
}

/// Gives the `index`-th name of a list through `out`.
fn name(session: *const DistqSession, index: usize, out: *mut *const c_char, list: fn(&DistqSession) -> &[CString]) -> DistqStatus {
    entry(|| {
        // Safety: the callers' contract (writable `out`).
        let out = unsafe { out_ptr(out, "out") }?;
        *out = std::ptr::null();
        let session = session_of(session)?;
        let names = list(&session);
        let name = names.get(index).ok_or_else(|| {
            Failure::new(DistqStatus::InvalidArgument, format!("index {index} is out of range: the model has {} of them", names.len()))
        })?;
        *out = name.as_ptr();
        Ok(())
    })
}

/// The number of model inputs, through `out`.
///
/// # Safety
/// `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_session_input_count(session: *const DistqSession, out: *mut usize) -> DistqStatus {
    count(session, out, |s| &s.input_names)
}

/// The name of input `index`, through `out` (owned by the session, valid until it is freed).
///
/// # Safety
/// `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_session_input_name(session: *const DistqSession, index: usize, out: *mut *const c_char) -> DistqStatus {
    name(session, index, out, |s| &s.input_names)
}

/// The number of model outputs, through `out`.
///
/// # Safety
/// `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_session_output_count(session: *const DistqSession, out: *mut usize) -> DistqStatus {
    count(session, out, |s| &s.output_names)
}

/// The name of output `index`, through `out` (owned by the session, valid until it is freed).
///
/// # Safety
/// `out` must point to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn distq_session_output_name(session: *const DistqSession, index: usize, out: *mut *const c_char) -> DistqStatus {
    name(session, index, out, |s| &s.output_names)
}
