//! `ios/include/distq.h` must be what cbindgen makes of the runtime's C ABI today, and the
//! Swift tests' model what the runtime's testing module builds.
//! `DISTQ_BLESS=1 cargo test -p distq-ios --test header` rewrites both.

use std::path::Path;

#[test]
fn committed_header_is_current() {
    let ios = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(ios.join("cbindgen.toml")).expect("ios/cbindgen.toml");
    let bindings =
        cbindgen::Builder::new().with_crate(ios.join("../runtime")).with_config(config).generate().expect("cbindgen over distq-runtime");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("UTF-8 header");
    let path = ios.join("include/distq.h");
    if std::env::var_os("DISTQ_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write ios/include/distq.h");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "ios/include/distq.h is stale: the C ABI changed. Run `DISTQ_BLESS=1 cargo test -p distq-ios --test header` and commit it."
    );
}

#[test]
fn swift_test_model_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Swift/Tests/DistqTests/add_one.onnx");
    let fresh = distq_runtime::testing::add_one_model();
    if std::env::var_os("DISTQ_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write the Swift tests' model");
    }
    assert!(
        std::fs::read(&path).unwrap_or_default() == fresh,
        "{} is stale: run `DISTQ_BLESS=1 cargo test -p distq-ios --test header` and commit it",
        path.display()
    );
}
