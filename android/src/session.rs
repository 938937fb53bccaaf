//! `dev.distq.Session`'s native methods: load, names, threads, run, benchmark, free.

use crate::inputs::{InputArrays, JavaInputs};
use crate::outputs::into_handle;
use crate::throw::{Failure, ThrowJava};
use distq_runtime::bench::{BenchOptions, EnergySource};
use distq_runtime::capi::{DistqEnergyMethod, benchmark_borrowed, run_borrowed};
use distq_runtime::{Model, Session};
use jni::EnvUnowned;
use jni::objects::{JByteBuffer, JClass, JDoubleArray, JIntArray, JLongArray, JObjectArray, JString};
use jni::sys::{jboolean, jint, jlong};

/// The session behind a handle from `nativeLoad`/`nativeFromBytes`.
fn session<'a>(handle: jlong) -> Result<&'a Session, Failure> {
    // Safety: the Java class passes only handles it got from this library and has not freed
    // (it zeroes its handle on close, under a lock that excludes running calls).
    unsafe { (handle as *const Session).as_ref() }.ok_or(Failure::Closed("session"))
}

fn into_session_handle(session: Session) -> jlong {
    Box::into_raw(Box::new(session)) as jlong
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Session_nativeLoad<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    path: JString<'caller>,
) -> jlong {
    env.with_env(|env| -> Result<jlong, Failure> {
        let path = path.try_to_string(env)?;
        Ok(into_session_handle(Session::load(path)?))
    })
    .resolve::<ThrowJava>()
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Session_nativeFromBytes<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    model: JByteBuffer<'caller>,
) -> jlong {
    env.with_env(|env| -> Result<jlong, Failure> {
        let address = env.get_direct_buffer_address(&model).map_err(|_| Failure::Argument("the model ByteBuffer is not direct".into()))?;
        let len = env.get_direct_buffer_capacity(&model)?;
        // Safety: the direct buffer is an argument of this call, so its memory is live; the
        // bytes are copied before returning.
        let bytes = if len == 0 { Vec::new() } else { unsafe { std::slice::from_raw_parts(address as *const u8, len) }.to_vec() };
        Ok(into_session_handle(Session::new(Model::from_bytes(bytes)?)))
    })
    .resolve::<ThrowJava>()
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Session_nativeFree<'caller>(_env: EnvUnowned<'caller>, _class: JClass<'caller>, handle: jlong) {
    if handle != 0 {
        // Safety: see `session`; the Java class frees each handle once.
        drop(unsafe { Box::from_raw(handle as *mut Session) });
    }
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Session_nativeSetThreads<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    threads: jint,
) {
    env.with_env(|_| -> Result<(), Failure> {
        session(handle)?.set_threads(threads.max(1) as usize);
        Ok(())
    })
    .resolve::<ThrowJava>()
}

/// The model's input (`outputs` false) or output names.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Session_nativeNames<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    outputs: jboolean,
) -> JObjectArray<'caller, JString<'caller>> {
    env.with_env(|env| -> Result<_, Failure> {
        let model = session(handle)?.model();
        let infos = if outputs { model.outputs() } else { model.inputs() };
        let names = JObjectArray::<JString>::new(env, infos.len(), JString::null())?;
        for (i, info) in infos.iter().enumerate() {
            let name = JString::from_str(env, &info.name)?;
            names.set_element(env, i, &name)?;
        }
        Ok(names)
    })
    .resolve::<ThrowJava>()
}

/// Runs the session; returns a handle to the outputs (`dev.distq.Outputs`).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_distq_Session_nativeRun<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    names: JObjectArray<'caller, JString<'caller>>,
    dtypes: JIntArray<'caller>,
    ranks: JIntArray<'caller>,
    dims: JLongArray<'caller>,
    buffers: JObjectArray<'caller, JByteBuffer<'caller>>,
) -> jlong {
    env.with_env(|env| -> Result<jlong, Failure> {
        let session = session(handle)?;
        let inputs = JavaInputs::read(env, &InputArrays { names: &names, dtypes: &dtypes, ranks: &ranks, dims: &dims, buffers: &buffers })?;
        Ok(into_handle(run_borrowed(session, &inputs.borrowed())?))
    })
    .resolve::<ThrowJava>()
}

/// Benchmarks the session; returns `[p50, p90, p99, mean, min, max (ms), throughput (/s),
/// joules per inference, energy method (0 model, 1 rapl, 2 power supply, 3 odpm), peak RSS
/// bytes (0 unknown), arena bytes, iters, warmup, threads]`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_distq_Session_nativeBenchmark<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    names: JObjectArray<'caller, JString<'caller>>,
    dtypes: JIntArray<'caller>,
    ranks: JIntArray<'caller>,
    dims: JLongArray<'caller>,
    buffers: JObjectArray<'caller, JByteBuffer<'caller>>,
    iters: jint,
    warmup: jint,
) -> JDoubleArray<'caller> {
    env.with_env(|env| -> Result<_, Failure> {
        let session = session(handle)?;
        let inputs = JavaInputs::read(env, &InputArrays { names: &names, dtypes: &dtypes, ranks: &ranks, dims: &dims, buffers: &buffers })?;
        let count = |n: jint, what: &str| usize::try_from(n).map_err(|_| Failure::Argument(format!("{what} is {n}")));
        let options = BenchOptions {
            iters: count(iters, "iterations")?,
            warmup: count(warmup, "warmup")?,
            energy: EnergySource::Auto,
            ..Default::default()
        };
        let r = benchmark_borrowed(session, &inputs.borrowed(), &options)?;
        let l = r.latency;
        let values = [
            l.p50,
            l.p90,
            l.p99,
            l.mean,
            l.min,
            l.max,
            r.throughput_per_s,
            r.energy.joules_per_inference,
            DistqEnergyMethod::from(r.energy.method) as i32 as f64,
            r.peak_rss_bytes.unwrap_or(0) as f64,
            r.arena_bytes as f64,
            r.iters as f64,
            r.warmup as f64,
            r.threads as f64,
        ];
        let array = JDoubleArray::new(env, values.len())?;
        array.set_region(env, 0, &values)?;
        Ok(array)
    })
    .resolve::<ThrowJava>()
}
