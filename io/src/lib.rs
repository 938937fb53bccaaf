//! distq's file I/O, shared by the converter, the benches and the fuzz targets:
//! [`npz`] reads and writes numpy's arrays as runtime tensors, and [`atomic_file`] writes
//! files that readers see either whole or not at all.

pub mod atomic_file;
pub mod npz;
