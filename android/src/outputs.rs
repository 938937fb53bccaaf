//! `dev.distq.Outputs`'s native methods: the outputs of one run, read by index and copied
//! once into direct buffers the Java side allocates.

use crate::throw::{Failure, ThrowJava};
use distq_runtime::NamedTensors;
use jni::EnvUnowned;
use jni::objects::{JByteBuffer, JClass, JLongArray, JString};
use jni::sys::{jint, jlong};

pub(crate) fn into_handle(outputs: NamedTensors) -> jlong {
    Box::into_raw(Box::new(outputs)) as jlong
}

/// Output `index` of the outputs behind `handle`.
fn output<'a>(handle: jlong, index: jint) -> Result<&'a (String, distq_runtime::Tensor), Failure> {
    // Safety: the Java class passes only handles from `nativeRun` that it has not freed.
    let outputs = unsafe { (handle as *const NamedTensors).as_ref() }.ok_or(Failure::Closed("outputs"))?;
    usize::try_from(index)
        .ok()
        .and_then(|i| outputs.get(i))
        .ok_or_else(|| Failure::Argument(format!("output index {index} is out of range: there are {}", outputs.len())))
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Outputs_nativeCount<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
) -> jint {
    env.with_env(|_| -> Result<jint, Failure> {
        // Safety: as in `output`.
        let outputs = unsafe { (handle as *const NamedTensors).as_ref() }.ok_or(Failure::Closed("outputs"))?;
        Ok(outputs.len() as jint)
    })
    .resolve::<ThrowJava>()
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Outputs_nativeName<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    index: jint,
) -> JString<'caller> {
    env.with_env(|env| -> Result<_, Failure> { Ok(JString::from_str(env, &output(handle, index)?.0)?) }).resolve::<ThrowJava>()
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Outputs_nativeDtype<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    index: jint,
) -> jint {
    env.with_env(|_| -> Result<jint, Failure> { Ok(output(handle, index)?.1.dtype().onnx_code()) }).resolve::<ThrowJava>()
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Outputs_nativeShape<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    index: jint,
) -> JLongArray<'caller> {
    env.with_env(|env| -> Result<_, Failure> {
        let dims: Vec<jlong> = output(handle, index)?.1.shape().iter().map(|&d| d as jlong).collect();
        let array = JLongArray::new(env, dims.len())?;
        array.set_region(env, 0, &dims)?;
        Ok(array)
    })
    .resolve::<ThrowJava>()
}

/// Copies output `index` into `target`, a direct buffer of exactly its byte length.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Outputs_nativeCopy<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    handle: jlong,
    index: jint,
    target: JByteBuffer<'caller>,
) {
    env.with_env(|env| -> Result<(), Failure> {
        let (name, tensor) = output(handle, index)?;
        let bytes = tensor.as_le_bytes();
        let address =
            env.get_direct_buffer_address(&target).map_err(|_| Failure::Argument("the target ByteBuffer is not direct".into()))?;
        let capacity = env.get_direct_buffer_capacity(&target)?;
        if capacity != bytes.len() {
            return Err(Failure::Argument(format!("output '{name}' has {} bytes, the target buffer {capacity}", bytes.len())));
        }
        // Safety: the target is a live direct buffer (an argument) of exactly this length.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), address, bytes.len()) };
        Ok(())
    })
    .resolve::<ThrowJava>()
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_distq_Outputs_nativeFree<'caller>(_env: EnvUnowned<'caller>, _class: JClass<'caller>, handle: jlong) {
    if handle != 0 {
        // Safety: the Java class frees each handle once.
        drop(unsafe { Box::from_raw(handle as *mut NamedTensors) });
    }
}
