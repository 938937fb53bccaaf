//! distq's converter: model inspection and I/O today; distillation, calibration and
//! mixed-precision quantization build on it. The `distq` binary is a thin shell over [`cli`].

pub mod cli;
pub mod fsutil;
pub mod models;
pub mod npz;
pub mod quantize;
pub mod sysinfo;
