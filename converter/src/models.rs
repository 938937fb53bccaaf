//! Where the real models live, for tests, benches and the demo.

use std::path::PathBuf;

/// The workspace root (this crate's parent folder).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The folder holding `minilm/`, `ppocr/` and `silero_vad/`: `$DISTQ_MODELS_DIR`, else the
/// shared folder beside the checkout, else `models/cache` (filled by `models/fetch.sh`).
/// `None` when none exists.
pub fn models_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DISTQ_MODELS_DIR") {
        return Some(PathBuf::from(dir));
    }
    let root = workspace_root();
    [root.join("../shared/models"), root.join("models/cache")].into_iter().find(|d| d.is_dir())
}

/// A model under [`models_dir`], if present.
pub fn model_path(rel: &str) -> Option<PathBuf> {
    models_dir().map(|d| d.join(rel)).filter(|p| p.is_file())
}

/// A committed real input under `models/data`.
pub fn data_path(name: &str) -> PathBuf {
    workspace_root().join("models/data").join(name)
}
