//! Training checkpoints that survive being killed at any instant.
//!
//! A checkpoint is `state.json` (counters, history, the name of its tensor file and that
//! file's length and FNV-1a checksum) plus `state-<step>.safetensors` (parameters, Adam
//! moments, best parameters). The tensor file is written first under a new name, then
//! `state.json` is replaced atomically, then the old tensor file is removed: whenever the
//! process dies, `state.json` names a complete tensor file. A truncated or altered file is
//! detected by the length and checksum and reported, never loaded.

use anyhow::{Context, Result, bail, ensure};
use candle_core::{Device, Tensor};
use distq_io::atomic_file::write_atomically;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// One epoch's summary.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Validation loss, when a validation set was given.
    pub val_loss: Option<f64>,
    /// Validation top-1 accuracy against true labels, when labels were given.
    pub val_accuracy: Option<f64>,
    /// Optimizer steps per second over the epoch.
    pub steps_per_s: f64,
}

/// Counters and history: everything but the tensors.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch in progress (from 0).
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub batch: usize,
    /// Sum of that epoch's batch losses so far.
    pub epoch_loss_sum: f64,
    /// Finished epochs.
    pub history: Vec<EpochRecord>,
    /// Epoch (from 1) whose parameters are kept as the best, and its score.
    pub best: Option<(usize, f64)>,
    /// What the run was started with (model, data and settings): a resume must match.
    pub fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    progress: Progress,
    tensors: String,
    length: u64,
    checksum: u64,
}

/// Tensors of a checkpoint.
pub struct State {
    /// Parameter values, in graph order.
    pub params: Vec<Tensor>,
    /// Adam moments ([`super::optim::Adam::state`]).
    pub moments: Vec<Tensor>,
    /// The best parameters so far, if any.
    pub best: Option<Vec<Tensor>>,
}

/// FNV-1a's starting value.
pub(crate) const FNV_START: u64 = 0xCBF2_9CE4_8422_2325;

/// FNV-1a of `bytes`, continuing from `hash` ([`FNV_START`] for a fresh one): checkpoint
/// checksums and the teacher cache's key.
pub(crate) fn fnv_extend(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

fn fnv(bytes: &[u8]) -> u64 {
    fnv_extend(FNV_START, bytes)
}

/// Writes a checkpoint into `dir` (created if needed).
pub fn save(dir: &Path, progress: &Progress, state: &State) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the checkpoint folder", dir.display()))?;
    let mut named: HashMap<String, Tensor> = HashMap::new();
    let groups = [("param", Some(&state.params)), ("moment", Some(&state.moments)), ("best", state.best.as_ref())];
    for (prefix, tensors) in groups {
        for (i, t) in tensors.into_iter().flatten().enumerate() {
            named.insert(format!("{prefix}.{i}"), t.clone());
        }
    }
    let file = format!("state-{}.safetensors", progress.step);
    let tmp = dir.join(format!(".{file}.tmp-{}", std::process::id()));
    candle_core::safetensors::save(&named, &tmp).with_context(|| format!("{}: cannot write", tmp.display()))?;
    let bytes = std::fs::read(&tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join(&file))?;
    let previous = read_manifest(dir).ok().map(|m| m.tensors);
    let manifest = Manifest { progress: progress.clone(), tensors: file.clone(), length: bytes.len() as u64, checksum: fnv(&bytes) };
    let json = serde_json::to_vec_pretty(&manifest)?;
    write_atomically(&dir.join("state.json"), |f| Ok(f.write_all(&json)?))?;
    if let Some(old) = previous.filter(|old| *old != file) {
        std::fs::remove_file(dir.join(old)).ok();
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("state.json");
    let text = std::fs::read(&path).with_context(|| format!("{}: no checkpoint here", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: the checkpoint manifest is truncated or corrupt", path.display()))
}

/// True when `dir` holds a checkpoint manifest.
pub fn exists(dir: &Path) -> bool {
    dir.join("state.json").is_file()
}

/// Reads the checkpoint in `dir`, verifying its tensor file's length and checksum.
pub fn load(dir: &Path) -> Result<(Progress, State)> {
    let manifest = read_manifest(dir)?;
    let path = dir.join(&manifest.tensors);
    ensure!(!manifest.tensors.contains(['/', '\\']), "{}: bad tensor file name '{}'", dir.display(), manifest.tensors);
    let bytes = std::fs::read(&path).with_context(|| format!("{}: the checkpoint's tensor file is missing", path.display()))?;
    if bytes.len() as u64 != manifest.length {
        bail!("{}: truncated checkpoint: {} bytes, the manifest says {}", path.display(), bytes.len(), manifest.length);
    }
    if fnv(&bytes) != manifest.checksum {
        bail!("{}: corrupt checkpoint: the checksum does not match the manifest", path.display());
    }
    let mut named =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).with_context(|| format!("{}: unreadable", path.display()))?;
    let mut take = |prefix: &str| -> Vec<Tensor> { (0..).map_while(|i| named.remove(&format!("{prefix}.{i}"))).collect() };
    let params = take("param");
    let moments = take("moment");
    let best = Some(take("best")).filter(|b| !b.is_empty());
    Ok((manifest.progress, State { params, moments, best }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(v: f32) -> State {
        let t = |x: f32| Tensor::from_slice(&[x, x + 1.0], 2, &Device::Cpu).unwrap();
        State { params: vec![t(v)], moments: vec![t(0.0), t(0.5)], best: None }
    }

    #[test]
    fn round_trips_and_replaces_the_previous_tensor_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut progress = Progress { step: 5, epoch: 1, batch: 2, fingerprint: "x".into(), ..Default::default() };
        save(dir.path(), &progress, &state(1.0)).unwrap();
        progress.step = 10;
        save(dir.path(), &progress, &state(2.0)).unwrap();
        let (back, s) = load(dir.path()).unwrap();
        assert_eq!(back, progress);
        assert_eq!(s.params[0].to_vec1::<f32>().unwrap(), [2.0, 3.0]);
        assert_eq!(s.moments.len(), 2);
        let files: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(files.len(), 2, "state.json and one tensor file: {files:?}");
    }

    #[test]
    fn truncated_or_corrupt_checkpoints_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let progress = Progress { step: 3, ..Default::default() };
        save(dir.path(), &progress, &state(1.0)).unwrap();
        let tensors = dir.path().join("state-3.safetensors");
        let bytes = std::fs::read(&tensors).unwrap();
        std::fs::write(&tensors, &bytes[..bytes.len() - 7]).unwrap();
        let err = format!("{:#}", load(dir.path()).err().unwrap());
        assert!(err.contains("truncated checkpoint"), "{err}");
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&tensors, &flipped).unwrap();
        assert!(format!("{:#}", load(dir.path()).err().unwrap()).contains("checksum"));
        let json = std::fs::read(dir.path().join("state.json")).unwrap();
        std::fs::write(dir.path().join("state.json"), &json[..json.len() / 2]).unwrap();
        assert!(format!("{:#}", load(dir.path()).err().unwrap()).contains("manifest is truncated or corrupt"));
    }
}
