//! distq for Android: `libdistq_jni.so`, the native half of the `dev.distq` Java API
//! (`android/java`). The Java classes hold opaque handles (a boxed session, a boxed set of
//! outputs) as `long`s; every native method here turns failures into Java exceptions (see
//! [`throw`]) and catches panics, so nothing unwinds into the JVM.
//!
//! Inputs are read in place from the caller's direct `ByteBuffer`s for the duration of the
//! call (no copy of large inputs); outputs are copied once into direct buffers the Java side
//! allocates.

mod inputs;
mod outputs;
mod session;
mod throw;
