#!/usr/bin/env bash
# tools/mobile-build.sh — cross-compiles the mobile wrappers with std built from source
# (Debian's rustc-web with -Zbuild-std; no NDK or Xcode here):
#   distq-android (JNI) compiled for aarch64-linux-android; type-checked (`cargo check`) for
#                       armv7-linux-androideabi and x86_64-linux-android, whose code differs
#                       from arm64's only in the cfg'd kernels, which check proves compile
#   distq-ios (C ABI)   for aarch64-apple-ios
# Android libraries are compiled and archived, not linked: linking a .so needs the NDK's
# linker (android/build-aar.sh does that where an NDK is installed). Then it builds the
# `mobile` profile libraries this machine can produce and prints their sizes:
#   libdistq_jni.so for aarch64 Linux: the Android arm64 library's code, linked against glibc
#     instead of bionic (the closest link possible without an NDK);
#   libdistq.a for aarch64-apple-ios (an archive of objects: the app's linker dead-strips it).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/cross-env.sh
export RUSTC_BOOTSTRAP=1  # -Zbuild-std on a stable toolchain
tdir=target/cross-std

echo "=== compile distq-android for aarch64-linux-android (std from source)"
$CARGO rustc -q -Zbuild-std -p distq-android --lib --crate-type staticlib --target aarch64-linux-android --target-dir "$tdir"
for t in armv7-linux-androideabi x86_64-linux-android; do
  echo "=== type-check distq-android for $t (std from source)"
  $CARGO check -q -Zbuild-std -p distq-android --lib --target "$t" --target-dir "$tdir"
done
echo "=== compile distq-ios for aarch64-apple-ios, mobile profile (std from source)"
$CARGO build -q -Zbuild-std --profile mobile -p distq-ios --target aarch64-apple-ios --target-dir "$tdir"

echo "=== link libdistq_jni.so (mobile profile) for aarch64 Linux"
$CARGO build -q --profile mobile -p distq-android --target aarch64-unknown-linux-gnu --target-dir target/cross

size() { stat -c %s "$1" | awk -v f="$1" '{ printf "%-58s %9d bytes (%.2f MB)\n", f, $1, $1 / 1048576 }'; }
echo "=== sizes (stripped: the mobile profile strips symbols)"
size target/cross/aarch64-unknown-linux-gnu/mobile/libdistq_jni.so
size "$tdir/aarch64-apple-ios/mobile/libdistq.a"
limit=$((2 * 1024 * 1024))
arm64=$(stat -c %s target/cross/aarch64-unknown-linux-gnu/mobile/libdistq_jni.so)
if [ "$arm64" -gt "$limit" ]; then
  echo "the arm64 JNI library is $arm64 bytes, over the 2 MB budget" >&2
  exit 1
fi
echo "=== mobile-build OK"
