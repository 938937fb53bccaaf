//! distq's converter: model inspection and I/O, calibration and mixed-precision quantization,
//! and benchmarking; distillation builds on it. The `distq` binary is a thin shell over [`cli`].

pub mod cli;
pub mod distill;
pub mod import;
pub mod inputs;
pub mod models;
pub mod native_lib;
pub mod quantize;
pub mod reference;
