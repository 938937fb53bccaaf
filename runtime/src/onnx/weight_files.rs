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
use std::sync::{Arc, Mutex, Weak};

/// A shared memory map that `Bytes` can own.
#[derive(Clone)]
pub struct SharedMap(pub Arc<memmap2::Mmap>);

impl AsRef<[u8]> for SharedMap {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Every live file map weights are read from, so that pages no longer needed can be handed
/// back: those of tensors copied at load (misaligned) or packed into kernel panels. Weak, so
/// a map still goes when its last tensor does.
static FILE_MAPS: Mutex<Vec<Weak<memmap2::Mmap>>> = Mutex::new(Vec::new());

/// Maps `file` read-only and registers the map for [`release_pages`].
///
/// # Safety
/// As for `memmap2::Mmap::map`: the file must not change while mapped, the contract every
/// mmap-based loader has.
pub(crate) unsafe fn map_file(file: &std::fs::File) -> std::io::Result<Arc<memmap2::Mmap>> {
    // Safety: passed on to the caller.
    let map = Arc::new(unsafe { memmap2::Mmap::map(file) }?);
    let mut maps = FILE_MAPS.lock().unwrap_or_else(|e| e.into_inner());
    maps.retain(|m| m.strong_count() > 0);
    maps.push(Arc::downgrade(&map));
    Ok(map)
}

/// Tells the OS that `bytes` will not be read again soon, so that their pages stop counting
/// as resident, when they are a slice of a mapped model or weight file (heap bytes are left
/// alone: dropping those would zero them). Only whole pages inside the slice; a later read
/// faults them back in from the file.
pub fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        let maps = FILE_MAPS.lock().unwrap_or_else(|e| e.into_inner());
        let start = bytes.as_ptr() as usize;
        for map in maps.iter().filter_map(Weak::upgrade) {
            let base = map.as_ptr() as usize;
            if start < base || start + bytes.len() > base + map.len() {
                continue;
            }
            const PAGE: usize = 4096;
            let (lo, hi) = ((start - base).next_multiple_of(PAGE), (start - base + bytes.len()) / PAGE * PAGE);
            if hi > lo {
                // Safety: the map is a read-only file mapping; DONTNEED only drops its
                // resident pages, which a later read faults back in from the file.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
            }
            return;
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// Maps external data files (each once).
pub struct WeightFiles {
    base_dir: Option<PathBuf>,
    maps: HashMap<PathBuf, Bytes>,
}

impl WeightFiles {
    /// `base_dir` is the model's folder (`None` forbids external data: in-memory models).
    pub fn new(base_dir: Option<PathBuf>) -> WeightFiles {
        WeightFiles { base_dir, maps: HashMap::new() }
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
                let map = unsafe { map_file(&file) }.map_err(|e| err(format!("file '{location}': {e}")))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident kB of the mapping that starts at `base`, from /proc/self/smaps.
    #[cfg(target_os = "linux")]
    fn resident_kb(base: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let range = line.split_whitespace().next().unwrap_or("");
            let Some((start, _)) = range.split_once('-') else { continue };
            if usize::from_str_radix(start, 16) != Ok(base) {
                continue;
            }
            let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
            return rss.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
        panic!("mapping at {base:#x} not in /proc/self/smaps")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn released_file_pages_stop_counting_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let map = unsafe { map_file(&std::fs::File::open(&path).unwrap()) }.unwrap();
        let sum = |m: &[u8]| m.iter().map(|&b| b as u64).sum::<u64>();
        assert_eq!(sum(&map), sum(&data));
        let base = map.as_ptr() as usize;
        assert!(resident_kb(base) >= 1000, "every page was read");
        // A slice from mid-page to mid-page: the whole pages inside it go.
        release_pages(&map[100..(1 << 20) - 100]);
        assert!(resident_kb(base) <= 8, "{} kB still resident", resident_kb(base));
        assert_eq!(sum(&map), sum(&data), "the pages read back from the file");
        // Heap bytes are never dropped (that would zero them).
        let heap = data.clone();
        release_pages(&heap);
        assert_eq!(heap, data);
    }
}
