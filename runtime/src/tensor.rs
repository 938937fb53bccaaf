//! Tensors: a dtype, a shape and storage that is either owned or a zero-copy view into the
//! memory-mapped model file.

use crate::error::{Error, Result, bail, ensure};
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;

#[cfg(target_endian = "big")]
compile_error!("ONNX raw data is little-endian; big-endian targets are not supported");

/// Element types the runtime can hold. Numbering follows `onnx.TensorProto.DataType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataType {
    /// 32-bit float.
    F32,
    /// 8-bit unsigned integer.
    U8,
    /// 8-bit signed integer.
    I8,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// Boolean, one byte per element.
    Bool,
    /// 16-bit float (IEEE half), stored as raw bits.
    F16,
    /// 64-bit float.
    F64,
    /// 4-bit unsigned integer, two per byte, low nibble first (ONNX UINT4). Constants only:
    /// weights stay this compact, and ops that compute on them widen them to uint8.
    U4,
    /// 4-bit signed integer (ONNX INT4), stored like [`DataType::U4`]; widened to int8.
    I4,
}

impl DataType {
    /// Maps an ONNX `TensorProto.DataType` code; `None` for types the runtime cannot hold.
    pub fn from_onnx(code: i32) -> Option<DataType> {
        Some(match code {
            1 => DataType::F32,
            2 => DataType::U8,
            3 => DataType::I8,
            6 => DataType::I32,
            7 => DataType::I64,
            9 => DataType::Bool,
            10 => DataType::F16,
            11 => DataType::F64,
            21 => DataType::U4,
            22 => DataType::I4,
            _ => return None,
        })
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DataType::F32 => 1,
            DataType::U8 => 2,
            DataType::I8 => 3,
            DataType::I32 => 6,
            DataType::I64 => 7,
            DataType::Bool => 9,
            DataType::F16 => 10,
            DataType::F64 => 11,
            DataType::U4 => 21,
            DataType::I4 => 22,
        }
    }

    /// Bytes that `n` elements take (4-bit types: two per byte).
    ///
    /// ```
    /// use distq_runtime::DataType;
    /// assert_eq!(DataType::F32.bytes(3), 12);
    /// assert_eq!(DataType::U4.bytes(3), 2);
    /// ```
    pub fn bytes(self, n: usize) -> usize {
        match self {
            DataType::U4 | DataType::I4 => n.div_ceil(2),
            DataType::U8 | DataType::I8 | DataType::Bool => n,
            DataType::F16 => 2 * n,
            DataType::F32 | DataType::I32 => 4 * n,
            DataType::I64 | DataType::F64 => 8 * n,
        }
    }

    /// [`DataType::bytes`], or `None` when `n` elements could not be addressed.
    pub fn checked_bytes(self, n: usize) -> Option<usize> {
        // Eight bytes per element at most: when that fits, `bytes` cannot overflow.
        n.checked_mul(8).map(|_| self.bytes(n))
    }

    /// True for the 4-bit types, whose storage is packed.
    pub fn is_four_bit(self) -> bool {
        matches!(self, DataType::U4 | DataType::I4)
    }

    /// Lower-case name as used in ONNX docs (`float`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DataType::F32 => "float",
            DataType::U8 => "uint8",
            DataType::I8 => "int8",
            DataType::I32 => "int32",
            DataType::I64 => "int64",
            DataType::Bool => "bool",
            DataType::F16 => "float16",
            DataType::F64 => "double",
            DataType::U4 => "uint4",
            DataType::I4 => "int4",
        }
    }
}

/// Name of an ONNX dtype code, including the ones the runtime cannot hold (for messages).
pub fn onnx_dtype_name(code: i32) -> String {
    match DataType::from_onnx(code) {
        Some(dt) => dt.name().to_string(),
        None => format!("dtype code {code}"),
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of elements of `shape`, or an error if the product overflows `usize`.
pub fn checked_numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Op(format!("shape {shape:?} has more elements than fit in memory")))
}

/// A plain-old-data element type. Implemented only for types where every bit pattern is a
/// valid value, which is what makes the zero-copy views over file bytes sound.
pub trait Element: Copy + Default + Send + Sync + PartialEq + fmt::Debug + 'static {
    /// The dtype tag for this element type.
    const DTYPE: DataType;
    #[doc(hidden)]
    fn wrap(buf: Buffer<Self>) -> TensorData;
    #[doc(hidden)]
    fn view(data: &TensorData) -> Option<&Buffer<Self>>;
}

/// Storage of one dtype: an owned vector or an aligned slice of the mapped model file.
#[derive(Clone)]
pub enum Buffer<T> {
    /// Computed at run time, or copied because the file bytes were misaligned or few (see
    /// `MAPPED_MIN_BYTES`). Shared, so that reshapes and identities are free; taken back out
    /// only when unshared.
    Owned(Arc<Vec<T>>),
    /// Bytes of the model file (or its external data file), used in place.
    Mapped(Bytes),
}

/// Tensors of fewer bytes are copied rather than used in place. Small constants (biases,
/// norms, scales) are read on every run, and each read of a mapped page also maps the cached
/// pages around it (the kernel's fault-around, 64 KiB): the pages of packed weights nearby,
/// which were handed back to the OS, would count in the process's memory again.
const MAPPED_MIN_BYTES: usize = 64 << 10;

impl<T: Element> Buffer<T> {
    fn from_le_bytes(bytes: Bytes) -> Result<Buffer<T>> {
        let size = std::mem::size_of::<T>();
        ensure!(bytes.len().is_multiple_of(size), "raw data of {} bytes is not a whole number of {}-byte elements", bytes.len(), size);
        if bytes.len() >= MAPPED_MIN_BYTES && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()) {
            Ok(Buffer::Mapped(bytes))
        } else {
            let mut v = vec![T::default(); bytes.len() / size];
            // Safety: T is plain old data (see `Element`) and the lengths match exactly.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len()) };
            Ok(Buffer::Owned(Arc::new(v)))
        }
    }

    fn as_slice(&self) -> &[T] {
        match self {
            Buffer::Owned(v) => v.as_slice(),
            // Safety: `from_le_bytes` checked alignment and length; every bit pattern is a valid
            // T (see `Element`), and Bytes keeps the mapping alive as long as the slice.
            Buffer::Mapped(b) => unsafe { std::slice::from_raw_parts(b.as_ptr() as *const T, b.len() / std::mem::size_of::<T>()) },
        }
    }
}

macro_rules! elements {
    ($($t:ty => $variant:ident),* $(,)?) => {
        /// Type-tagged storage of a tensor.
        #[derive(Clone)]
        pub enum TensorData { $(
            #[doc = concat!("Elements of type `", stringify!($t), "`.")]
            $variant(Buffer<$t>),
        )*
            /// Booleans (always owned).
            Bool(Vec<Bool>),
            /// 4-bit integers packed two per byte (see [`crate::nibbles`]); the length is the
            /// tensor's element count.
            Nibbles {
                /// int4 (else uint4).
                signed: bool,
                /// `⌈len / 2⌉` bytes.
                packed: Buffer<u8>,
            },
        }
        $(impl Element for $t {
            const DTYPE: DataType = DataType::$variant;
            fn wrap(buf: Buffer<Self>) -> TensorData { TensorData::$variant(buf) }
            fn view(data: &TensorData) -> Option<&Buffer<Self>> {
                match data { TensorData::$variant(b) => Some(b), #[allow(unreachable_patterns)] _ => None }
            }
        })*
        impl TensorData {
            fn dtype(&self) -> DataType {
                match self {
                    $(TensorData::$variant(_) => DataType::$variant,)*
                    TensorData::Bool(_) => DataType::Bool,
                    TensorData::Nibbles { signed: true, .. } => DataType::I4,
                    TensorData::Nibbles { signed: false, .. } => DataType::U4,
                }
            }
            /// Elements held (for 4-bit storage, the tensor's shape says how many).
            fn len(&self) -> Option<usize> {
                match self { $(TensorData::$variant(b) => Some(b.as_slice().len()),)* TensorData::Bool(v) => Some(v.len()), TensorData::Nibbles { .. } => None }
            }
            fn is_mapped(&self) -> bool {
                match self {
                    $(TensorData::$variant(b) => matches!(b, Buffer::Mapped(_)),)*
                    TensorData::Bool(_) => false,
                    TensorData::Nibbles { packed, .. } => matches!(packed, Buffer::Mapped(_)),
                }
            }
            fn as_le_bytes(&self) -> &[u8] {
                // Safety: every element type is plain old data (`Bool` is repr(transparent) over
                // u8), so its storage may be viewed as bytes; on little-endian targets (checked
                // above) those are the ONNX raw-data bytes.
                fn bytes<T>(s: &[T]) -> &[u8] { unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) } }
                match self { $(TensorData::$variant(b) => bytes(b.as_slice()),)* TensorData::Bool(v) => bytes(v), TensorData::Nibbles { packed, .. } => packed.as_slice() }
            }
            fn detached(&self) -> TensorData {
                match self {
                    $(TensorData::$variant(b @ Buffer::Mapped(_)) => TensorData::$variant(Buffer::Owned(Arc::new(b.as_slice().to_vec()))),)*
                    TensorData::Nibbles { signed, packed: b @ Buffer::Mapped(_) } => {
                        TensorData::Nibbles { signed: *signed, packed: Buffer::Owned(Arc::new(b.as_slice().to_vec())) }
                    }
                    owned => owned.clone(),
                }
            }
            fn from_le_bytes(dtype: DataType, bytes: Bytes) -> Result<TensorData> {
                match dtype {
                    $(DataType::$variant => Ok(TensorData::$variant(Buffer::from_le_bytes(bytes)?)),)*
                    DataType::Bool => bail!("bool tensors are decoded elementwise"),
                    DataType::U4 | DataType::I4 => Ok(TensorData::Nibbles { signed: dtype == DataType::I4, packed: Buffer::from_le_bytes(bytes)? }),
                }
            }
        }
    };
}

elements!(f32 => F32, u8 => U8, i8 => I8, i32 => I32, i64 => I64, u16 => F16, f64 => F64);

/// The vector itself when unshared, else a copy.
fn unshare<T: Clone>(v: Arc<Vec<T>>) -> Vec<T> {
    Arc::try_unwrap(v).unwrap_or_else(|shared| shared.as_ref().clone())
}

/// A bool is not plain old data (only 0 and 1 are valid), so bool tensors are always owned
/// and built through [`Tensor::from_bools`]; ops see them as `u8` 0/1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bool(pub u8);

impl Element for Bool {
    const DTYPE: DataType = DataType::Bool;
    fn wrap(buf: Buffer<Self>) -> TensorData {
        match buf {
            Buffer::Owned(v) => TensorData::Bool(unshare(v)),
            Buffer::Mapped(_) => unreachable!("bool tensors are never mapped"),
        }
    }
    fn view(_: &TensorData) -> Option<&Buffer<Self>> {
        None
    }
}

/// An n-dimensional array. Cheap to clone (storage is shared), except for bool tensors.
#[derive(Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// `Tensor<f32>[2, 3]`; with `{:#?}` also a hash of the values, so that an op's alternate
/// Debug form tells ops holding different constants apart (the planner compares ops by it).
impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor<{}>{:?}", self.dtype(), self.shape)?;
        if f.alternate() {
            write!(f, "#{:016x}", fnv1a(self.as_le_bytes()))?;
        }
        Ok(())
    }
}

impl Tensor {
    /// Builds a tensor from a vector; fails if the element count does not match the shape.
    ///
    /// ```
    /// use distq_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    /// assert_eq!(t.shape(), &[2, 2]);
    /// assert_eq!(t.as_slice::<f32>().unwrap()[3], 4.0);
    /// ```
    pub fn from_vec<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Result<Tensor> {
        let n = checked_numel(&shape)?;
        ensure!(n == data.len(), "shape {shape:?} needs {n} elements, got {}", data.len());
        Ok(Tensor { shape, data: T::wrap(Buffer::Owned(Arc::new(data))) })
    }

    /// A bool tensor from 0/1 bytes.
    pub fn from_bools(shape: Vec<usize>, data: Vec<bool>) -> Result<Tensor> {
        let n = checked_numel(&shape)?;
        ensure!(n == data.len(), "shape {shape:?} needs {n} elements, got {}", data.len());
        Ok(Tensor { shape, data: TensorData::Bool(data.into_iter().map(|b| Bool(b as u8)).collect()) })
    }

    /// A tensor of one element.
    pub fn scalar<T: Element>(value: T) -> Tensor {
        Tensor { shape: vec![], data: T::wrap(Buffer::Owned(Arc::new(vec![value]))) }
    }

    /// Interprets little-endian bytes (ONNX `raw_data`) as `dtype` elements, in place when the
    /// bytes are suitably aligned.
    pub fn from_le_bytes(dtype: DataType, shape: Vec<usize>, bytes: Bytes) -> Result<Tensor> {
        let n = checked_numel(&shape)?;
        let expected = dtype.checked_bytes(n).ok_or_else(|| Error::Op(format!("shape {shape:?} is too large")))?;
        ensure!(bytes.len() == expected, "shape {shape:?} of {dtype} needs {expected} bytes of raw data, got {}", bytes.len());
        if dtype == DataType::Bool {
            ensure!(bytes.iter().all(|&b| b <= 1), "bool raw data holds a byte other than 0 or 1");
            return Ok(Tensor { shape, data: TensorData::Bool(bytes.iter().map(|&b| Bool(b)).collect()) });
        }
        Ok(Tensor { shape, data: TensorData::from_le_bytes(dtype, bytes)? })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The element type.
    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len().unwrap_or_else(|| self.shape.iter().product())
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of element data.
    pub fn byte_len(&self) -> usize {
        self.dtype().bytes(self.len())
    }

    /// True when the data is read in place from the model file.
    pub fn is_mapped(&self) -> bool {
        self.data.is_mapped()
    }

    /// The element data as little-endian bytes (ONNX `raw_data` layout; bools as 0/1 bytes).
    ///
    /// ```
    /// use distq_runtime::Tensor;
    /// let t = Tensor::from_vec(vec![2], vec![1i32, -1])?;
    /// assert_eq!(t.as_le_bytes(), &[1, 0, 0, 0, 255, 255, 255, 255]);
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn as_le_bytes(&self) -> &[u8] {
        self.data.as_le_bytes()
    }

    /// The same tensor with storage of its own: data read in place from the model file or
    /// from caller memory is copied, owned storage is shared as by `clone`.
    pub fn detached(&self) -> Tensor {
        Tensor { shape: self.shape.clone(), data: self.data.detached() }
    }

    /// The elements, if the dtype is `T`.
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        if T::DTYPE == DataType::Bool
            && let TensorData::Bool(v) = &self.data
        {
            // Safety: T is Bool here (the only Element with DTYPE Bool).
            return Ok(unsafe { std::slice::from_raw_parts(v.as_ptr() as *const T, v.len()) });
        }
        match T::view(&self.data) {
            Some(buf) => Ok(buf.as_slice()),
            None => bail!("expected a {} tensor, got {}", T::DTYPE, self.dtype()),
        }
    }

    /// The packed bytes of a 4-bit tensor (two values per byte, low nibble first).
    pub fn as_nibbles(&self) -> Result<&[u8]> {
        match &self.data {
            TensorData::Nibbles { packed, .. } => Ok(packed.as_slice()),
            _ => bail!("expected a 4-bit tensor, got {}", self.dtype()),
        }
    }

    /// A 4-bit tensor widened to one byte per value (int4 → int8, uint4 → uint8), the form ops
    /// compute on; any other tensor as it is.
    ///
    /// ```
    /// use distq_runtime::{DataType, Tensor};
    /// let t = Tensor::from_le_bytes(DataType::I4, vec![3], vec![0xf7, 0x08].into())?;
    /// assert_eq!(t.widened()?.as_slice::<i8>()?, [7, -1, -8]);
    /// # Ok::<(), distq_runtime::Error>(())
    /// ```
    pub fn widened(&self) -> Result<Tensor> {
        let shape = self.shape.clone();
        match &self.data {
            TensorData::Nibbles { signed: true, packed } => {
                Tensor::from_vec(shape, crate::nibbles::unpack_i4(packed.as_slice(), self.len())?)
            }
            TensorData::Nibbles { signed: false, packed } => {
                Tensor::from_vec(shape, crate::nibbles::unpack_u4(packed.as_slice(), self.len())?)
            }
            _ => Ok(self.clone()),
        }
    }

    /// A 4-bit tensor whose last dim is even as the uint8 tensor of its packed bytes, shape
    /// `[.., last / 2]`, sharing its storage: whole rows of bytes, which gathers and slices
    /// along the other axes move without widening anything.
    pub(crate) fn packed_rows(&self) -> Option<Tensor> {
        let TensorData::Nibbles { packed, .. } = &self.data else { return None };
        let (&last, outer) = self.shape.split_last()?;
        last.is_multiple_of(2).then(|| Tensor { shape: [outer, &[last / 2]].concat(), data: TensorData::U8(packed.clone()) })
    }

    /// The inverse of [`Tensor::packed_rows`]: uint8 rows of packed bytes as the `dtype`
    /// (4-bit) tensor of shape `[.., 2 · last]`.
    pub(crate) fn from_packed_rows(rows: Tensor, dtype: DataType) -> Result<Tensor> {
        ensure!(dtype.is_four_bit(), "{dtype} is not a 4-bit type");
        let TensorData::U8(packed) = rows.data else { bail!("expected uint8 rows of packed 4-bit values, got {}", rows.dtype()) };
        let mut shape = rows.shape;
        if let Some(last) = shape.last_mut() {
            *last *= 2;
        }
        Ok(Tensor { shape, data: TensorData::Nibbles { signed: dtype == DataType::I4, packed } })
    }

    /// The elements as `u8` 0/1, if the dtype is bool.
    pub fn as_bools(&self) -> Result<&[u8]> {
        match &self.data {
            // Safety: Bool is repr(transparent) over u8.
            TensorData::Bool(v) => Ok(unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len()) }),
            _ => bail!("expected a bool tensor, got {}", self.dtype()),
        }
    }

    /// Elements the storage has room for without moving: an owned vector's capacity (at
    /// least [`Tensor::len`]).
    pub fn capacity(&self) -> usize {
        macro_rules! capacity {
            ($($v:ident),*) => {
                match &self.data {
                    $(TensorData::$v(Buffer::Owned(v)) => v.capacity(),)*
                    TensorData::Bool(v) => v.capacity(),
                    _ => self.len(),
                }
            };
        }
        capacity!(F32, U8, I8, I32, I64, F16, F64)
    }

    /// Whether the storage is owned by this tensor alone (not mapped, not shared with a
    /// reshaped alias): only such storage may be recycled.
    pub fn is_unique(&self) -> bool {
        macro_rules! unique {
            ($($v:ident),*) => {
                match &self.data {
                    $(TensorData::$v(Buffer::Owned(v)) => Arc::strong_count(v) == 1,)*
                    TensorData::Bool(_) => true,
                    _ => false,
                }
            };
        }
        unique!(F32, U8, I8, I32, I64, F16, F64)
    }

    /// Takes the elements out as an owned vector (copies mapped or shared storage).
    pub fn into_vec<T: Element>(self) -> Result<Vec<T>> {
        ensure!(self.dtype() == T::DTYPE, "expected a {} tensor, got {}", T::DTYPE, self.dtype());
        if self.is_mapped() {
            return Ok(self.as_slice::<T>()?.to_vec());
        }
        fn same_type<U, T>(v: Vec<U>) -> Vec<T> {
            assert!(std::mem::size_of::<U>() == std::mem::size_of::<T>() && std::mem::align_of::<U>() == std::mem::align_of::<T>());
            let mut v = std::mem::ManuallyDrop::new(v);
            // Safety: the dtype check above proves U and T are the same element type.
            unsafe { Vec::from_raw_parts(v.as_mut_ptr() as *mut T, v.len(), v.capacity()) }
        }
        Ok(match self.data {
            TensorData::F32(Buffer::Owned(v)) => same_type(unshare(v)),
            TensorData::U8(Buffer::Owned(v)) => same_type(unshare(v)),
            TensorData::I8(Buffer::Owned(v)) => same_type(unshare(v)),
            TensorData::I32(Buffer::Owned(v)) => same_type(unshare(v)),
            TensorData::I64(Buffer::Owned(v)) => same_type(unshare(v)),
            TensorData::F16(Buffer::Owned(v)) => same_type(unshare(v)),
            TensorData::F64(Buffer::Owned(v)) => same_type(unshare(v)),
            TensorData::Bool(v) => same_type(v),
            _ => unreachable!("mapped storage handled above"),
        })
    }

    /// Reinterprets with a new shape of the same element count (no copy).
    pub fn reshaped(self, shape: Vec<usize>) -> Result<Tensor> {
        let n = checked_numel(&shape)?;
        ensure!(n == self.len(), "cannot reshape {:?} ({} elements) to {shape:?} ({n} elements)", self.shape, self.len());
        Ok(Tensor { shape, data: self.data })
    }

    /// The elements converted to `i64` (for index-like inputs: shapes, axes, indices).
    pub fn to_i64s(&self) -> Result<Vec<i64>> {
        Ok(match self.dtype() {
            DataType::I64 => self.as_slice::<i64>()?.to_vec(),
            DataType::I32 => self.as_slice::<i32>()?.iter().map(|&v| v as i64).collect(),
            other => bail!("expected an int64 or int32 tensor, got {other}"),
        })
    }

    /// The elements converted to `f32` (for scale-like inputs).
    pub fn to_f32s(&self) -> Result<Vec<f32>> {
        Ok(match self.dtype() {
            DataType::F32 => self.as_slice::<f32>()?.to_vec(),
            DataType::F64 => self.as_slice::<f64>()?.iter().map(|&v| v as f32).collect(),
            other => bail!("expected a float tensor, got {other}"),
        })
    }
}

/// FNV-1a over 8-byte words (then the tail bytes): a quick 64-bit fingerprint of values.
fn fnv1a(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ bytes.len() as u64;
    let words = bytes.chunks_exact(8);
    let tail = words.remainder();
    for w in words {
        h = (h ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))).wrapping_mul(PRIME);
    }
    for &b in tail {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    h
}
