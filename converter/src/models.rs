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

/// A model under [`models_dir`], else under `models/cache` (the shared folder has no language
/// model: `models/fetch.sh DEST llm` fetches it there), if present.
pub fn model_path(rel: &str) -> Option<PathBuf> {
    models_dir().into_iter().chain([workspace_root().join("models/cache")]).map(|d| d.join(rel)).find(|p| p.is_file())
}

/// A committed real input under `models/data`.
pub fn data_path(name: &str) -> PathBuf {
    workspace_root().join("models/data").join(name)
}

/// The bundled Fashion-MNIST CNN (`models/fashion/teacher.onnx`) and its first `images`
/// validation images as the `image` input: a real model every checkout has.
///
/// ```
/// let (model, inputs) = distq_converter::models::bundled_cnn(2)?;
/// assert!(model.ends_with("teacher.onnx"));
/// assert_eq!(inputs[0].1.shape(), &[2, 1, 28, 28]);
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn bundled_cnn(images: usize) -> anyhow::Result<(PathBuf, distq_runtime::NamedTensors)> {
    let dir = workspace_root().join("models/fashion");
    let arrays = distq_io::npz::read_npz(&dir.join("fashion_val.npz"))?;
    let all = &arrays.iter().find(|(n, _)| n == "image").ok_or_else(|| anyhow::anyhow!("fashion_val.npz has no 'image'"))?.1;
    let rows: Vec<usize> = (0..images.min(all.shape()[0])).collect();
    Ok((dir.join("teacher.onnx"), vec![("image".to_string(), crate::distill::data::take_rows(all, &rows)?)]))
}
