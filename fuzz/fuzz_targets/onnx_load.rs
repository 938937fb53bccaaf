//! ONNX decoding, import and planning of arbitrary bytes: errors are fine, panics, hangs and
//! unbounded allocations are not.
#![no_main]

use distq_fuzz::{Bytes, declared_shapes};
use distq_runtime::{Model, Session};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The last byte picks the symbolic dims, so the model bytes stay as the corpus has them.
    let Some((&sizes, model)) = data.split_last() else { return };
    let Ok(model) = Model::from_bytes(model.to_vec()) else { return };
    let Some(shapes) = declared_shapes(&model, &mut Bytes(&[sizes; 16])) else { return };
    let session = Session::new(model);
    let inputs: Vec<_> = shapes.into_iter().map(|(_, dtype, dims)| (dtype, dims)).collect();
    let _ = session.plan_for(&inputs);
});
