# Sourced by tools/cross-test.sh and tools/mobile-build.sh: installs (once) and selects Debian's
# Rust toolchain for the aarch64 Linux builds — rustc-web 1.96 with the arm64 std, the aarch64
# GNU linker and qemu-user — through env vars only; rustup's toolchain stays the default
# everywhere else.
export DEBIAN_FRONTEND=noninteractive
if ! command -v qemu-aarch64 >/dev/null || [ ! -x /usr/bin/rustc ] || ! dpkg -s libstd-rust-web-dev:arm64 >/dev/null 2>&1; then
  echo "=== installing the cross toolchain (Debian rustc-web, arm64 std, qemu-user)"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends rustc-web cargo-web libstd-rust-web-dev libstd-rust-web-dev:arm64 \
    gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi
CARGO=/usr/bin/cargo
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# No -L /usr/aarch64-linux-gnu: mixing the cross ld.so with multiarch libc hangs threads.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
echo "=== $($RUSTC --version), $(qemu-aarch64 --version | head -1)"
