#!/usr/bin/env bash
# ios/build-xcframework.sh — on a Mac with Xcode and rustup: builds libdistq.a (the `mobile`
# profile) for iOS devices, the iOS simulator (arm64 + x86_64) and macOS (arm64 + x86_64, for
# `swift test`), and bundles them with include/distq.h and its module map as
# ios/Swift/DistqC.xcframework, the binary target of the Swift package in ios/Swift.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(uname)" = Darwin ] || { echo "build-xcframework.sh needs macOS with Xcode (xcodebuild, lipo)" >&2; exit 1; }
targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
rustup target add "${targets[@]}"
export IPHONEOS_DEPLOYMENT_TARGET=13.0 MACOSX_DEPLOYMENT_TARGET=11.0
for t in "${targets[@]}"; do
  cargo build --profile mobile -p distq-ios --target "$t"
done
lib() { echo "target/$1/mobile/libdistq.a"; }
out=target/xcframework
rm -rf "$out" ios/Swift/DistqC.xcframework
mkdir -p "$out/ios-sim" "$out/macos"
lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" -output "$out/ios-sim/libdistq.a"
lipo -create "$(lib aarch64-apple-darwin)" "$(lib x86_64-apple-darwin)" -output "$out/macos/libdistq.a"
xcodebuild -create-xcframework \
  -library "$(lib aarch64-apple-ios)" -headers ios/include \
  -library "$out/ios-sim/libdistq.a" -headers ios/include \
  -library "$out/macos/libdistq.a" -headers ios/include \
  -output ios/Swift/DistqC.xcframework
ls -l "$(lib aarch64-apple-ios)"
echo "wrote ios/Swift/DistqC.xcframework; now: cd ios/Swift && swift test"
