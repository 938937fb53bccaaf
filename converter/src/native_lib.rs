//! The wrappers' native libraries (`libdistq.a`, `libdistq_jni.so`) for their tests.
//! `cargo test` builds only the rlib of a library crate, never its staticlib or cdylib, so a
//! test that links C or loads a library from Java builds it here, up to date, with a nested
//! cargo in its own target folder (the outer cargo holds the main one).

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// Builds `package` (test profile: optimized, like the tests) and returns the path of its
/// artifact `file` (e.g. `libdistq.a`).
pub fn build(package: &str, file: &str) -> Result<PathBuf> {
    let target = crate::models::workspace_root().join("target/wrapper-libs");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["build", "--quiet", "--profile", "test", "-p", package, "--target-dir"])
        .arg(&target)
        .output()
        .with_context(|| format!("cannot run {}", cargo.to_string_lossy()))?;
    if !output.status.success() {
        bail!("cargo build -p {package} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let path = target.join("debug").join(file);
    if !path.is_file() {
        bail!("cargo build -p {package} made no {}", path.display());
    }
    Ok(path)
}
