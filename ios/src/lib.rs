//! distq for iOS (and any C or C++ app): `libdistq.a` exports the runtime's C ABI, declared in
//! `ios/include/distq.h`. See [`distq_runtime::capi`] for the conventions (status codes,
//! per-thread error messages, ownership, thread safety) and `ios/README.md` for the Swift
//! package and the XCFramework.
//!
//! ```
//! use distq::{DistqStatus, distq_session_from_bytes, distq_session_free};
//! let model = distq_runtime::testing::add_one_model();
//! let mut session = std::ptr::null_mut();
//! // Safety: valid bytes and out pointer.
//! let status = unsafe { distq_session_from_bytes(model.as_ptr(), model.len(), &mut session) };
//! assert_eq!(status, DistqStatus::Ok);
//! unsafe { distq_session_free(session) };
//! ```

pub use distq_runtime::capi::*;
