//! The frozen teacher's outputs on the training set: computed once in our runtime and cached
//! on disk, so big teachers never run per epoch (or again after `--resume`).

use super::Progress;
use super::checkpoint::{FNV_START, fnv_extend};
use super::data::{Arrays, concat_rows};
use super::loss::masked_mean;
use super::ops::{from_runtime, to_runtime_f32};
use crate::quantize::calibrate::with_outputs;
use anyhow::{Context, Result};
use candle_core::DType;
use distq_io::npz::{read_npz, write_npz};
use distq_runtime::{Model, Session};
use prost::Message;
use std::path::{Path, PathBuf};

/// Samples per teacher run.
const BATCH: usize = 32;

/// FNV-1a over files' bytes and a few strings: the cache key.
fn fingerprint(files: &[&Path], extra: &[&str]) -> Result<u64> {
    let mut h = FNV_START;
    for f in files {
        h = fnv_extend(h, &std::fs::read(f).with_context(|| format!("{}: cannot read", f.display()))?);
    }
    for s in extra {
        h = fnv_extend(fnv_extend(h, s.as_bytes()), &[0]);
    }
    Ok(h)
}

/// The cache file for `teacher`'s `outputs` on `data` (pooled over `pool`'s tokens, if
/// given) inside `dir`.
pub fn cache_path(dir: &Path, teacher: &Path, data: &Path, outputs: &[String], pool: Option<&str>) -> Result<PathBuf> {
    let mut names: Vec<&str> = outputs.iter().map(String::as_str).collect();
    names.push(pool.unwrap_or("unpooled"));
    Ok(dir.join(format!("teacher-{:016x}.npz", fingerprint(&[teacher, data], &names)?)))
}

/// The teacher's `outputs` (graph outputs or intermediate values) for every sample of
/// `data`, mean-pooled over the tokens the input `pool` marks when given (token states
/// would be too big to keep), read from `cache` when present, else computed and written
/// there.
pub fn outputs(teacher: &Path, data: &Arrays, outputs: &[String], pool: Option<&str>, cache: &Path, progress: Progress) -> Result<Arrays> {
    if cache.is_file() {
        // A cache from an older run that does not match is recomputed, never trusted.
        if let Ok(cached) = read_npz(cache).and_then(|a| Arrays::new(a, cache.display().to_string()))
            && cached.samples() == data.samples()
            && outputs.iter().all(|o| cached.get(o).is_ok())
        {
            return Ok(cached);
        }
    }
    let mut model = Model::load(teacher).with_context(|| format!("teacher {}", teacher.display()))?;
    let declared: Vec<String> = model.outputs().iter().map(|o| o.name.clone()).collect();
    if outputs.iter().any(|o| !declared.contains(o)) {
        // Intermediate values (feature distillation) become extra outputs.
        let names: Vec<&str> = outputs.iter().map(String::as_str).collect();
        model = Model::from_bytes(with_outputs(&model.file().proto, &names)?.encode_to_vec())
            .with_context(|| format!("teacher {}", teacher.display()))?;
    }
    let inputs: Vec<String> = model.inputs().iter().map(|i| i.name.clone()).collect();
    let session = Session::new(model);
    // The teacher runs once per cache key; all cores make that pass several times faster.
    session.set_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut parts: Vec<Vec<distq_runtime::Tensor>> = vec![Vec::new(); outputs.len()];
    let total = data.samples();
    for start in (0..total).step_by(BATCH) {
        progress("teacher outputs", start, total, "");
        let rows: Vec<usize> = (start..(start + BATCH).min(total)).collect();
        let feeds = data.rows(&inputs, &rows).with_context(|| format!("teacher {}", teacher.display()))?;
        let result = session.run(feeds).with_context(|| format!("teacher {} on samples {start}..", teacher.display()))?;
        for (i, name) in outputs.iter().enumerate() {
            let t = result
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.detached())
                .with_context(|| format!("teacher output '{name}' missing"))?;
            let t = match pool {
                Some(mask) => {
                    let pooled = masked_mean(&from_runtime(&t, DType::F32)?, &data.batch(mask, &rows, DType::F32)?);
                    to_runtime_f32(&pooled.with_context(|| format!("pooling teacher output '{name}'"))?)?
                }
                None => t,
            };
            parts[i].push(t);
        }
    }
    progress("teacher outputs", total, total, "");
    let arrays: Vec<(String, distq_runtime::Tensor)> =
        outputs.iter().cloned().zip(parts.iter().map(|p| concat_rows(p))).map(|(n, t)| Ok((n, t?))).collect::<Result<_>>()?;
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    }
    write_npz(cache, &arrays)?;
    Arrays::new(arrays, cache.display().to_string())
}
