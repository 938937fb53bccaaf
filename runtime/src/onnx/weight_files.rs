//! The files weights come from: the model file and its external data files
//! (`location` / `offset` / `length`), each memory-mapped once and bounds-checked.
//!
//! Tensors whose bytes are suitably aligned are used in place. Misaligned ones (protobuf
//! puts raw_data wherever it falls) are copied, and their pages of the map are then dropped
//! from memory (`MADV_DONTNEED`) so that resident memory stays near the file size.
//!
//! A model file is untrusted input: onnx's own loader had path-traversal CVEs here
//! (CVE-2022-25882, CVE-2024-27318). A location must be a relative path that stays inside the
//! model's folder after resolving `..` and symlinks, and offset + length must lie in the file.

use super::proto::StringStringEntryProto;
use crate::error::{Error, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

/// A shared memory map that `Bytes` can own.
#[derive(Clone)]
pub struct SharedMap(pub Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps external data files (each once) and releases pages of copied tensors.
pub struct WeightFiles {
    base_dir: Option<PathBuf>,
    maps: HashMap<PathBuf, Bytes>,
    /// Every map weights may come from, the model file's included.
    all_maps: Vec<Arc<memmap2::Mmap>>,
}

impl WeightFiles {
    /// `base_dir` is the model's folder (`None` forbids external data: in-memory models);
    /// `main` is the model file's map, if it was mapped.
    pub fn new(base_dir: Option<PathBuf>, main: Option<Arc<memmap2::Mmap>>) -> WeightFiles {
        WeightFiles { base_dir, maps: HashMap::new(), all_maps: main.into_iter().collect() }
    }

    /// Tells the OS that `bytes` (a slice of one of our maps, now copied) will not be read
    /// again, so their pages stop counting as resident. Only whole pages inside the slice.
    pub fn release(&self, bytes: &[u8]) {
        #[cfg(unix)]
        for map in &self.all_maps {
            let base = map.as_ptr() as usize;
            let start = bytes.as_ptr() as usize;
            if start < base || start + bytes.len() > base + map.len() {
                continue;
            }
            const PAGE: usize = 4096;
            let (lo, hi) = ((start - base).next_multiple_of(PAGE), (start - base + bytes.len()) / PAGE * PAGE);
            if hi > lo {
                // Safety: the map is a read-only shared file mapping; DONTNEED only drops its
                // page cache residency, and a later read would fault the pages back in.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
            }
            return;
        }
    }

    /// The bytes of one tensor's external data.
    pub fn resolve(&mut self, tensor: &str, entries: &[StringStringEntryProto]) -> Result<Bytes> {
        let err = |reason: String| Error::ExternalData { tensor: tensor.to_string(), reason };
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for e in entries {
            let value = e.value.as_deref().unwrap_or("");
            let number = || {
                value.parse::<u64>().map_err(|_| err(format!("{} '{value}' is not a non-negative integer", e.key.as_deref().unwrap_or(""))))
            };
            match e.key.as_deref() {
                Some("location") => location = Some(value.to_string()),
                Some("offset") => offset = number()?,
                Some("length") => length = Some(number()?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| err("has no location".into()))?;
        let base =
            self.base_dir.clone().ok_or_else(|| err(format!("location '{location}' cannot be resolved for a model loaded from memory")))?;
        let path = confined_path(&base, &location).map_err(err)?;
        let bytes = match self.maps.get(&path) {
            Some(b) => b.clone(),
            None => {
                let file = std::fs::File::open(&path).map_err(|e| err(format!("file '{location}': {e}")))?;
                // Safety: read-only map of a file inside the model folder (see OnnxFile::open).
                let map = Arc::new(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("file '{location}': {e}")))?);
                self.all_maps.push(map.clone());
                let b = Bytes::from_owner(SharedMap(map));
                self.maps.insert(path.clone(), b.clone());
                b
            }
        };
        let file_len = bytes.len() as u64;
        let length = length.unwrap_or(file_len.saturating_sub(offset));
        let end = offset.checked_add(length).ok_or_else(|| err(format!("offset {offset} + length {length} overflows")))?;
        if end > file_len {
            return Err(err(format!("offset {offset} + length {length} runs past the end of '{location}' ({file_len} bytes)")));
        }
        Ok(bytes.slice(offset as usize..end as usize))
    }
}

/// Joins `location` to `base`, refusing anything that could leave `base`.
fn confined_path(base: &Path, location: &str) -> std::result::Result<PathBuf, String> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Err("location is empty".into());
    }
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("location '{location}' escapes the model folder (absolute or '..' paths are refused)"));
    }
    let base = base.canonicalize().map_err(|e| format!("model folder {}: {e}", base.display()))?;
    let full = base.join(rel).canonicalize().map_err(|e| format!("file '{location}': {e}"))?;
    // A symlink inside the folder may still point outside it.
    if !full.starts_with(&base) {
        return Err(format!("location '{location}' resolves to {} outside the model folder (symlink)", full.display()));
    }
    Ok(full)
}
