//! External tensor data (`location` / `offset` / `length`), memory-mapped and bounds-checked.
//!
//! A model file is untrusted input: onnx's own loader had path-traversal CVEs here
//! (CVE-2022-25882, CVE-2024-27318). A location must be a relative path that stays inside the
//! model's folder after resolving `..` and symlinks, and offset + length must lie in the file.

use super::proto::StringStringEntryProto;
use crate::error::{Error, Result};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// Resolves and maps external data files, each mapped once.
pub struct ExternalData {
    base_dir: Option<PathBuf>,
    maps: HashMap<PathBuf, Bytes>,
}

impl ExternalData {
    /// `base_dir` is the model's folder; `None` forbids external data (in-memory models).
    pub fn new(base_dir: Option<PathBuf>) -> ExternalData {
        ExternalData { base_dir, maps: HashMap::new() }
    }

    /// The bytes of one tensor's external data.
    pub fn resolve(&mut self, tensor: &str, entries: &[StringStringEntryProto]) -> Result<Bytes> {
        let err = |reason: String| Error::ExternalData { tensor: tensor.to_string(), reason };
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for e in entries {
            let value = e.value.as_deref().unwrap_or("");
            let number = || value.parse::<u64>().map_err(|_| err(format!("{} '{value}' is not a non-negative integer", e.key.as_deref().unwrap_or(""))));
            match e.key.as_deref() {
                Some("location") => location = Some(value.to_string()),
                Some("offset") => offset = number()?,
                Some("length") => length = Some(number()?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| err("has no location".into()))?;
        let base = self.base_dir.clone().ok_or_else(|| err(format!("location '{location}' cannot be resolved for a model loaded from memory")))?;
        let path = confined_path(&base, &location).map_err(err)?;
        let bytes = match self.maps.get(&path) {
            Some(b) => b.clone(),
            None => {
                let file = std::fs::File::open(&path).map_err(|e| err(format!("file '{location}': {e}")))?;
                // Safety: read-only map of a file inside the model folder (see OnnxFile::open).
                let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("file '{location}': {e}")))?;
                let b = Bytes::from_owner(map);
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
