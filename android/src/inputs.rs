//! Inputs from Java: parallel arrays of names, dtype codes, ranks, flattened dims and direct
//! ByteBuffers, read in place.

use crate::throw::Failure;
use distq_runtime::DataType;
use distq_runtime::capi::{BorrowedInput, shape_of};
use jni::Env;
use jni::objects::{JByteBuffer, JIntArray, JLongArray, JObjectArray, JString};

/// The inputs of one call, as Java passed them.
pub(crate) struct JavaInputs<'call> {
    /// Names, dtypes and shapes, owned.
    parts: Vec<(String, DataType, Vec<usize>)>,
    /// The buffers' bytes, valid while the native call runs (the buffers are its arguments).
    data: Vec<&'call [u8]>,
}

/// The Java arrays a run or benchmark receives.
pub(crate) struct InputArrays<'a, 'local> {
    pub names: &'a JObjectArray<'local, JString<'local>>,
    pub dtypes: &'a JIntArray<'local>,
    pub ranks: &'a JIntArray<'local>,
    pub dims: &'a JLongArray<'local>,
    pub buffers: &'a JObjectArray<'local, JByteBuffer<'local>>,
}

impl<'call> JavaInputs<'call> {
    pub(crate) fn read(env: &mut Env<'_>, arrays: &InputArrays<'_, '_>) -> Result<JavaInputs<'call>, Failure> {
        let count = arrays.names.len(env)?;
        let mut dtypes = vec![0; count];
        let mut ranks = vec![0; count];
        if arrays.dtypes.len(env)? != count || arrays.ranks.len(env)? != count || arrays.buffers.len(env)? != count {
            return Err(Failure::Argument(format!("{count} input names but dtypes, ranks and buffers of other lengths")));
        }
        arrays.dtypes.get_region(env, 0, &mut dtypes)?;
        arrays.ranks.get_region(env, 0, &mut ranks)?;
        let mut dims = vec![0; arrays.dims.len(env)?];
        arrays.dims.get_region(env, 0, &mut dims)?;
        let (mut parts, mut data, mut next_dim) = (Vec::with_capacity(count), Vec::with_capacity(count), 0usize);
        for i in 0..count {
            let name = arrays.names.get_element(env, i)?.try_to_string(env)?;
            let bad = |reason: String| Failure::Argument(format!("input '{name}': {reason}"));
            let dtype = DataType::from_onnx(dtypes[i]).ok_or_else(|| bad(format!("dtype code {} is unknown", dtypes[i])))?;
            let rank = usize::try_from(ranks[i]).map_err(|_| bad(format!("rank {}", ranks[i])))?;
            let shape =
                shape_of(dims.get(next_dim..next_dim + rank).ok_or_else(|| bad("the dims array is too short".into()))?).map_err(bad)?;
            next_dim += rank;
            let buffer = arrays.buffers.get_element(env, i)?;
            let address = env.get_direct_buffer_address(&buffer).map_err(|_| bad("its ByteBuffer is not direct".into()))?;
            let capacity = env.get_direct_buffer_capacity(&buffer)?;
            // Safety: a direct buffer's memory stays valid while the buffer object is reachable,
            // and it is (an element of an argument array) until this native call returns.
            data.push(if capacity == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(address as *const u8, capacity) } });
            parts.push((name, dtype, shape));
        }
        Ok(JavaInputs { parts, data })
    }

    pub(crate) fn borrowed(&self) -> Vec<BorrowedInput<'_>> {
        self.parts.iter().zip(&self.data).map(|((name, dtype, shape), data)| BorrowedInput { name, dtype: *dtype, shape, data }).collect()
    }
}
