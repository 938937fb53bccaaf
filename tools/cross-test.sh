#!/usr/bin/env bash
# tools/cross-test.sh [package...] — runs the packages' tests on aarch64 under qemu, once with
# QEMU_CPU=max (dotprod + i8mm kernels run) and once with cortex-a72 (plain NEON only), and
# build-checks aarch64-linux-android and aarch64-apple-ios. Installs what it needs from
# Debian (rustc-web 1.96 with arm64 std, the aarch64 linker, qemu-user). qemu timings mean
# nothing; correctness does. Default package: distq-runtime (its kernel test table).
set -euo pipefail
cd "$(dirname "$0")/.."
packages=("${@:-distq-runtime}")
export DEBIAN_FRONTEND=noninteractive

if ! command -v qemu-aarch64 >/dev/null || [ ! -x /usr/bin/rustc ] || ! dpkg -s libstd-rust-web-dev:arm64 >/dev/null 2>&1; then
  echo "=== installing the aarch64 cross toolchain (Debian rustc-web, arm64 std, qemu-user)"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends rustc-web cargo-web libstd-rust-web-dev libstd-rust-web-dev:arm64 rust-web-src \
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi

# Debian's toolchain through env vars only; rustup's stays the default everywhere else.
CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# No -L /usr/aarch64-linux-gnu: mixing the cross ld.so with multiarch libc hangs threads.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
tdir=target/cross
echo "=== $($RUSTC --version), $(qemu-aarch64 --version | head -1)"

for pkg in "${packages[@]}"; do
  for cpu in max cortex-a72; do
    echo "=== test $pkg on aarch64 under qemu (QEMU_CPU=$cpu)"
    log=$(mktemp)
    if ! QEMU_CPU=$cpu $CARGO test -p "$pkg" --lib --target aarch64-unknown-linux-gnu --target-dir "$tdir" -- --nocapture >"$log" 2>&1; then
      cat "$log"; rm -f "$log"; exit 1
    fi
    grep -E "^test result|kernels on this CPU" "$log"; rm -f "$log"
  done
  for t in aarch64-linux-android aarch64-apple-ios; do
    echo "=== build-only $pkg for $t (std built from source)"
    RUSTC_BOOTSTRAP=1 $CARGO rustc -q -Zbuild-std -p "$pkg" --lib --crate-type staticlib --target "$t" --target-dir "$tdir-std"
  done
done
echo "=== cross-test OK: ${packages[*]}"
