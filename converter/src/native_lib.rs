//! The wrappers' native libraries (`libdistq.a`, `libdistq_jni.so`) for their tests.
//! `cargo test` builds them (an integration test's library unit keeps its staticlib and
//! cdylib crate types) but leaves them under a hashed name in `deps/`. `tools/test.sh` reads
//! their paths from that same build's JSON messages and passes them as `DISTQ_LIBDISTQ_A`
//! and `DISTQ_LIBDISTQ_JNI_SO`, so no crate is compiled twice. A bare `cargo test` has no such
//! variable: the library is then built here, with a nested cargo in its own target folder
//! (the outer cargo holds the main one).

use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// The path of `package`'s artifact `file` (e.g. `libdistq.a`): the one named by
/// `DISTQ_<FILE>` (uppercase, `.` as `_`), else built now (test profile: optimized, like
/// the tests).
pub fn build(package: &str, file: &str) -> Result<PathBuf> {
    let variable = format!("DISTQ_{}", file.to_uppercase().replace('.', "_"));
    if let Some(path) = std::env::var_os(&variable) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("${variable} = {}: no such file", path.display());
        }
        return Ok(path);
    }
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
