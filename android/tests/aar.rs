//! `android/build-aar.sh --prebuilt` assembles an AAR with the layout Gradle expects:
//! classes.jar (the dev.distq API as Java 8 bytecode), AndroidManifest.xml, R.txt, the R8
//! keep rules (proguard.txt) and jni/<abi>/libdistq_jni.so. The NDK build itself needs an
//! NDK, which CI does not have; the host-built library stands in for an ABI here.

use std::io::Read;
use std::path::Path;
use std::process::Command;

#[test]
fn build_aar_packages_the_java_api_and_the_native_libraries() {
    let android = Path::new(env!("CARGO_MANIFEST_DIR"));
    let library = distq_converter::native_lib::build("distq-android", "libdistq_jni.so").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("prebuilt/x86_64")).unwrap();
    std::fs::copy(&library, dir.path().join("prebuilt/x86_64/libdistq_jni.so")).unwrap();
    let aar = dir.path().join("distq.aar");
    let output = Command::new(android.join("build-aar.sh"))
        .arg("--prebuilt")
        .arg(dir.path().join("prebuilt"))
        .arg("-o")
        .arg(&aar)
        .output()
        .expect("bash runs");
    assert!(output.status.success(), "build-aar.sh failed:\n{}", String::from_utf8_lossy(&output.stderr));

    let mut archive = zip::ZipArchive::new(std::fs::File::open(&aar).unwrap()).unwrap();
    let names: Vec<String> = archive.file_names().map(String::from).collect();
    for wanted in ["AndroidManifest.xml", "R.txt", "proguard.txt", "classes.jar", "jni/x86_64/libdistq_jni.so"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} missing from the AAR: {names:?}");
    }
    let mut manifest = String::new();
    archive.by_name("AndroidManifest.xml").unwrap().read_to_string(&mut manifest).unwrap();
    assert!(manifest.contains("package=\"dev.distq\"") && manifest.contains("minSdkVersion"), "{manifest}");
    let mut rules = String::new();
    archive.by_name("proguard.txt").unwrap().read_to_string(&mut rules).unwrap();
    assert!(rules.contains("native <methods>") && rules.contains("DistqException"), "{rules}");
    assert_eq!(archive.by_name("jni/x86_64/libdistq_jni.so").unwrap().size(), std::fs::metadata(&library).unwrap().len());

    let mut jar = Vec::new();
    archive.by_name("classes.jar").unwrap().read_to_end(&mut jar).unwrap();
    let mut classes = zip::ZipArchive::new(std::io::Cursor::new(jar)).unwrap();
    for class in ["Session", "Tensor", "Tensor$DType", "Outputs", "DistqException", "BenchmarkResult"] {
        let mut bytes = Vec::new();
        classes
            .by_name(&format!("dev/distq/{class}.class"))
            .unwrap_or_else(|_| panic!("{class}.class missing"))
            .read_to_end(&mut bytes)
            .unwrap();
        // Class file major version 52 = Java 8, which every Android toolchain accepts.
        assert_eq!((&bytes[..4], u16::from_be_bytes([bytes[6], bytes[7]])), (&[0xca, 0xfe, 0xba, 0xbe][..], 52), "{class}");
    }
}
