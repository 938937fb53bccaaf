//! The C ABI's load and run path, driven the way a C caller drives it: session from bytes,
//! names queried, tensors described by raw pointers and lengths (which may disagree with
//! each other or with the model), outputs read and freed. Every call must return a status.
#![no_main]

use distq_fuzz::{Bytes, declared_shapes};
use distq_runtime::capi::*;
use distq_runtime::{DataType, Model};
use libfuzzer_sys::fuzz_target;
use std::ffi::CStr;

fuzz_target!(|data: &[u8]| {
    // [mode][model length: u16][model][per input: dims and data choices...]
    let mut bytes = Bytes(data);
    let mode = bytes.byte();
    let model_len = bytes.u16() as usize;
    let model = bytes.take(model_len);
    let mut session: *mut DistqSession = std::ptr::null_mut();
    // Safety: valid pointers and lengths throughout, as the ABI's contract asks; what varies
    // is what they describe.
    unsafe {
        if distq_session_from_bytes(model.as_ptr(), model.len(), &mut session) != DistqStatus::Ok {
            assert!(session.is_null());
            return;
        }
        let mut count = 0usize;
        assert_eq!(distq_session_input_count(session, &mut count), DistqStatus::Ok);
        let mut names = Vec::new();
        for i in 0..count {
            let mut name = std::ptr::null();
            assert_eq!(distq_session_input_name(session, i, &mut name), DistqStatus::Ok);
            names.push(CStr::from_ptr(name).to_owned());
        }
        // Shapes as declared (symbolic dims from the input), or when mode says so, dims and
        // dtype codes straight from the input.
        let declared = Model::from_bytes(model.to_vec()).ok().and_then(|m| declared_shapes(&m, &mut bytes));
        let mut shapes = Vec::new();
        let mut storage = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let (code, dims) = match (&declared, mode & 1) {
                (Some(d), 0) => (d[i].1.onnx_code(), d[i].2.iter().map(|&d| d as i64).collect()),
                _ => {
                    let rank = bytes.byte() % 5;
                    let dims: Vec<i64> = (0..rank).map(|_| bytes.byte() as i8 as i64).collect();
                    (bytes.byte() as i32 % 12, dims)
                }
            };
            let elements: usize = dims.iter().map(|&d| d.max(0) as usize).product();
            let right_len = DataType::from_onnx(code).map_or(0, |d| d.bytes(elements));
            // Mostly the right byte length; sometimes one off.
            let wrong = (mode & 2 != 0 && i == 0) as usize;
            let byte_len = (right_len + wrong).min(1 << 20);
            let mut fill = bytes.take(byte_len).to_vec();
            fill.resize(byte_len, 0);
            shapes.push(dims);
            storage.push((name.as_ptr(), code, fill));
        }
        let tensors: Vec<DistqTensor> = storage
            .iter()
            .zip(&shapes)
            .map(|((name, code, fill), dims)| DistqTensor {
                name: *name,
                dtype: *code,
                shape: dims.as_ptr(),
                rank: dims.len(),
                data: fill.as_ptr().cast(),
                byte_len: fill.len(),
            })
            .collect();
        let mut outputs: *mut DistqOutputs = std::ptr::null_mut();
        if distq_session_run(session, tensors.as_ptr(), tensors.len(), &mut outputs) == DistqStatus::Ok {
            let mut n = 0usize;
            assert_eq!(distq_outputs_count(outputs, &mut n), DistqStatus::Ok);
            for i in 0..n {
                let mut view = std::mem::zeroed::<DistqTensor>();
                assert_eq!(distq_outputs_get(outputs, i, &mut view), DistqStatus::Ok);
                // Reading every byte of every output must be in bounds.
                let out = std::slice::from_raw_parts(view.data.cast::<u8>(), view.byte_len);
                std::hint::black_box(out.iter().fold(0u8, |a, &b| a ^ b));
                assert!(distq_outputs_find(outputs, view.name, &mut view) == DistqStatus::Ok);
            }
            distq_outputs_free(outputs);
            // A second free of the same handle is refused by its generation, not a double free.
            distq_outputs_free(outputs);
        } else {
            assert!(outputs.is_null());
        }
        distq_session_free(session);
        let mut after = 0usize;
        assert_ne!(distq_session_input_count(session, &mut after), DistqStatus::Ok);
    }
});
