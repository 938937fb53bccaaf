//! distq's runtime: loads ONNX models with their weights memory-mapped, plans them for the
//! given input shapes (shape inference, constant folding, buffer reuse by liveness), and runs
//! them.
//!
//! ```
//! use distq_runtime::{Session, Tensor};
//! # fn tiny_model() -> Vec<u8> { distq_runtime::testing::add_one_model() }
//! // A model computing y = x + 1, as ONNX bytes.
//! let session = Session::new(distq_runtime::Model::from_bytes(tiny_model())?);
//! let x = Tensor::from_vec(vec![2], vec![1.0f32, 2.0])?;
//! let outputs = session.run(vec![("x", x)])?;
//! assert_eq!(outputs[0].1.as_slice::<f32>()?, &[2.0, 3.0]);
//! # Ok::<(), distq_runtime::Error>(())
//! ```

#![warn(missing_docs)]

pub mod bench;
#[cfg(feature = "capi")]
pub mod capi;
mod cores;
pub mod energy;
pub mod error;
mod fuse;
pub mod generate;
pub mod graph;
pub mod kernels;
pub mod nibbles;
pub mod onnx;
pub mod ops;
pub mod plan;
mod session;
mod simd;
pub mod tensor;
pub mod testing;
mod threads;

pub use cores::performance_cores;
pub use error::{Error, Result};
pub use plan::Plan;
pub use session::{DEFAULT_MAX_TENSOR_BYTES, Model, NamedTensors, Session, StepTime};
pub use tensor::{DataType, Tensor};
