#!/usr/bin/env bash
# android/build-aar.sh [--prebuilt DIR] [-o OUT.aar]
#
# Builds libdistq_jni.so for arm64-v8a, armeabi-v7a and x86_64 with the Android NDK
# ($ANDROID_NDK_HOME), compiles the dev.distq Java API, and assembles an AAR:
#   classes.jar  AndroidManifest.xml  R.txt  proguard.txt  jni/<abi>/libdistq_jni.so
# With --prebuilt DIR, the libraries are taken from DIR/<abi>/libdistq_jni.so instead (built
# elsewhere; any subset of ABIs) and no NDK is needed.
#
# Needs: a JDK (javac, jar); for building, the NDK (r23+) and the Rust targets
# (`rustup target add aarch64-linux-android armv7-linux-androideabi x86_64-linux-android`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/distq.aar
prebuilt=
while [ $# -gt 0 ]; do
  case "$1" in
    --prebuilt) prebuilt=$2; shift 2 ;;
    -o) out=$2; shift 2 ;;
    *) echo "usage: $0 [--prebuilt DIR] [-o OUT.aar]" >&2; exit 2 ;;
  esac
done
min_sdk=24
abis=(arm64-v8a armeabi-v7a x86_64)
declare -A rust_target=([arm64-v8a]=aarch64-linux-android [armeabi-v7a]=armv7-linux-androideabi [x86_64]=x86_64-linux-android)
declare -A clang_prefix=([arm64-v8a]=aarch64-linux-android [armeabi-v7a]=armv7a-linux-androideabi [x86_64]=x86_64-linux-android)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/aar/jni" "$stage/classes"

if [ -n "$prebuilt" ]; then
  for abi in "${abis[@]}"; do
    if [ -f "$prebuilt/$abi/libdistq_jni.so" ]; then
      mkdir -p "$stage/aar/jni/$abi"
      cp "$prebuilt/$abi/libdistq_jni.so" "$stage/aar/jni/$abi/"
    fi
  done
  [ -n "$(ls "$stage/aar/jni")" ] || { echo "no <abi>/libdistq_jni.so under $prebuilt" >&2; exit 1; }
else
  ndk=${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}
  [ -d "$ndk" ] || { echo "set ANDROID_NDK_HOME to an Android NDK (r23 or later), or pass --prebuilt DIR" >&2; exit 1; }
  bin=$(echo "$ndk"/toolchains/llvm/prebuilt/*/bin)
  for abi in "${abis[@]}"; do
    t=${rust_target[$abi]}
    var=CARGO_TARGET_$(echo "$t" | tr 'a-z-' 'A-Z_')
    # 16 KB pages: required for apps targeting Android 15 on 16 KB-page devices.
    env "${var}_LINKER=$bin/${clang_prefix[$abi]}$min_sdk-clang" "${var}_RUSTFLAGS=-C link-arg=-Wl,-z,max-page-size=16384" \
      cargo build --profile mobile -p distq-android --target "$t"
    mkdir -p "$stage/aar/jni/$abi"
    cp "target/$t/mobile/libdistq_jni.so" "$stage/aar/jni/$abi/"
  done
fi

# Java 8 bytecode: what every Android toolchain (D8) accepts.
javac -nowarn --release 8 -d "$stage/classes" android/java/dev/distq/*.java
jar cf "$stage/aar/classes.jar" -C "$stage/classes" .
cat > "$stage/aar/AndroidManifest.xml" <<XML
<?xml version="1.0" encoding="utf-8"?>
<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="dev.distq">
    <uses-sdk android:minSdkVersion="$min_sdk" />
</manifest>
XML
: > "$stage/aar/R.txt"
# Consumer rules for R8/ProGuard in the app: the JNI functions are found by class and method
# name, and the native side constructs DistqException(String) by name.
cat > "$stage/aar/proguard.txt" <<'RULES'
-keepclasseswithmembernames,includedescriptorclasses class dev.distq.** { native <methods>; }
-keep class dev.distq.DistqException { <init>(java.lang.String); }
RULES
mkdir -p "$(dirname "$out")"
# An AAR is a zip; jar's M flag writes it without a jar manifest.
jar cfM "$out.tmp" -C "$stage/aar" .
mv "$out.tmp" "$out"
echo "wrote $out:"
for so in "$stage"/aar/jni/*/libdistq_jni.so; do
  echo "  jni/$(basename "$(dirname "$so")")/libdistq_jni.so $(stat -c %s "$so") bytes"
done
