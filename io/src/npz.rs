//! `.npz` / `.npy` reading and writing (numpy's formats) for model inputs and outputs.

use crate::atomic_file::write_atomically;
use anyhow::{Context, Result, bail, ensure};
use distq_runtime::{DataType, Tensor};
use npyz::WriterBuilder;
use std::io::{Read, Seek};
use std::path::Path;

/// Reads every array of an `.npz` file as tensors, sorted by name (the zip reader lists
/// names in hash order, which differs from run to run).
///
/// ```
/// use distq_io::npz::{read_npz, write_npz};
/// use distq_runtime::Tensor;
/// let path = std::env::temp_dir().join(format!("doc-{}.npz", std::process::id()));
/// let t = Tensor::from_vec(vec![2], vec![1.5f32, -2.0])?;
/// write_npz(&path, &[("x".to_string(), t)])?;
/// let back = read_npz(&path)?;
/// assert_eq!(back[0].0, "x");
/// assert_eq!(back[0].1.as_slice::<f32>()?, &[1.5, -2.0]);
/// # std::fs::remove_file(path)?;
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn read_npz(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    read_npz_from(std::io::BufReader::new(file)).with_context(|| path.display().to_string())
}

/// Reads every array of an `.npz` archive held by `reader`, sorted by name. Memory stays
/// within twice the data actually present, whatever sizes the headers claim.
///
/// ```
/// use distq_io::npz::read_npz_from;
/// let err = read_npz_from(std::io::Cursor::new(b"PK\x03\x04 not really".to_vec())).unwrap_err();
/// assert!(format!("{err:#}").contains("not a .npz"));
/// ```
pub fn read_npz_from<R: Read + Seek>(reader: R) -> Result<Vec<(String, Tensor)>> {
    let mut archive = zip::ZipArchive::new(reader).context("not a .npz (zip) archive")?;
    let mut arrays = Vec::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).with_context(|| format!("zip entry {index}"))?;
        let Some(name) = npyz::npz::array_name_from_file_name(entry.name()).map(str::to_string) else {
            continue;
        };
        // The declared size may lie: it only caps the first allocation, the data decides.
        let mut bytes = Vec::with_capacity((entry.size() as usize).min(1 << 24));
        entry.read_to_end(&mut bytes).with_context(|| format!("array '{name}': cannot read"))?;
        let t = npy_to_tensor(&bytes).with_context(|| format!("array '{name}'"))?;
        arrays.push((name, t));
    }
    arrays.sort_by(|a, b| a.0.cmp(&b.0));
    if arrays.is_empty() {
        bail!("the archive holds no arrays");
    }
    if let Some(w) = arrays.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("array '{}' appears twice", w[0].0);
    }
    Ok(arrays)
}

/// Reads one `.npy` file as a tensor.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot open", path.display()))?;
    npy_to_tensor(&bytes).with_context(|| path.display().to_string())
}

/// The array in `.npy` bytes. The header's shape is checked against the bytes present
/// before anything is allocated for it.
fn npy_to_tensor(bytes: &[u8]) -> Result<Tensor> {
    let npy = npyz::NpyFile::new(bytes).context("not a .npy array")?;
    if npy.order() == npyz::Order::Fortran {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| usize::try_from(d)).collect::<Result<_, _>>()?;
    let descr = npy.dtype().descr();
    let kind = descr.trim_matches('\'').trim_start_matches(['<', '|', '=']);
    let item_bytes: usize = match kind {
        "f8" | "i8" => 8,
        "f4" | "i4" => 4,
        "f2" => 2,
        "i1" | "u1" | "b1" => 1,
        _ => bail!("unsupported dtype '{descr}' (supported: float32/64/16, int64/32/8, uint8, bool, little-endian)"),
    };
    let needed = shape.iter().try_fold(item_bytes, |acc, &d| acc.checked_mul(d));
    ensure!(
        needed.is_some_and(|n| n <= bytes.len()),
        "shape {shape:?} of '{descr}' needs more bytes than the {} the array holds",
        bytes.len()
    );
    let t = match kind {
        "f4" => Tensor::from_vec(shape, npy.into_vec::<f32>()?)?,
        "f8" => Tensor::from_vec(shape, npy.into_vec::<f64>()?)?,
        "f2" => Tensor::from_vec(shape, npy.into_vec::<half::f16>()?.into_iter().map(|h| h.to_bits()).collect())?,
        "i8" => Tensor::from_vec(shape, npy.into_vec::<i64>()?)?,
        "i4" => Tensor::from_vec(shape, npy.into_vec::<i32>()?)?,
        "i1" => Tensor::from_vec(shape, npy.into_vec::<i8>()?)?,
        "u1" => Tensor::from_vec(shape, npy.into_vec::<u8>()?)?,
        _ => Tensor::from_bools(shape, npy.into_vec::<bool>()?)?,
    };
    Ok(t)
}

/// Writes tensors as an `.npz` archive, atomically (a temp file renamed into place).
pub fn write_npz(path: &Path, arrays: &[(String, Tensor)]) -> Result<()> {
    write_atomically(path, |file| {
        // npyz's own NpzWriter would need its `npz` feature, which turns on every compressor of
        // zip (zstd and bzip2 in C, AES): the arrays are stored uncompressed anyway.
        let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(file));
        for (name, t) in arrays {
            let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
            let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
            zip.start_file(npyz::npz::file_name_from_array_name(name), opts)?;
            macro_rules! put {
                ($ty:ty, $data:expr) => {{
                    let mut w = npyz::WriteOptions::<$ty>::new().default_dtype().shape(&shape).writer(&mut zip).begin_nd()?;
                    w.extend($data)?;
                    w.finish()?;
                }};
            }
            match t.dtype() {
                DataType::F32 => put!(f32, t.as_slice::<f32>()?.iter().copied()),
                DataType::F64 => put!(f64, t.as_slice::<f64>()?.iter().copied()),
                DataType::F16 => put!(half::f16, t.as_slice::<u16>()?.iter().map(|&b| half::f16::from_bits(b))),
                DataType::I64 => put!(i64, t.as_slice::<i64>()?.iter().copied()),
                DataType::I32 => put!(i32, t.as_slice::<i32>()?.iter().copied()),
                DataType::I8 => put!(i8, t.as_slice::<i8>()?.iter().copied()),
                DataType::U8 => put!(u8, t.as_slice::<u8>()?.iter().copied()),
                DataType::Bool => put!(bool, t.as_bools()?.iter().map(|&b| b != 0)),
                other => bail!("cannot write {other} arrays"),
            }
        }
        zip.finish()?;
        Ok(())
    })
}
