//! File output that never leaves a half-written file behind.

use anyhow::{Context, Result};
use std::fs::File;
use std::path::Path;

/// Writes `path` by filling a temporary file in the same folder and renaming it into place,
/// so readers see either the old file or the complete new one.
pub fn write_atomically(path: &Path, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
        fill(&mut file)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))
    })();
    if result.is_err() {
        std::fs::remove_file(&tmp).ok();
    }
    result
}

/// [`write_atomically`] of `text` (a JSON report, a config, an SVG).
pub fn write_text_atomically(path: &Path, text: &str) -> Result<()> {
    write_atomically(path, |f| Ok(std::io::Write::write_all(f, text.as_bytes())?))
}
