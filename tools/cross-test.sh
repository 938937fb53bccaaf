#!/usr/bin/env bash
# tools/cross-test.sh [package...] — runs the packages' tests on aarch64 under qemu, once with
# QEMU_CPU=max (dotprod + i8mm kernels run) and once with cortex-a72 (plain NEON only). qemu
# timings mean nothing; correctness does. Default package: distq-runtime (its kernel test
# table). The mobile targets are built by tools/mobile-build.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=("${@:-distq-runtime}")
source tools/cross-env.sh
tdir=target/cross

for pkg in "${packages[@]}"; do
  for cpu in max cortex-a72; do
    echo "=== test $pkg on aarch64 under qemu (QEMU_CPU=$cpu)"
    log=$(mktemp)
    if ! QEMU_CPU=$cpu $CARGO test -p "$pkg" --lib --profile qemu --target aarch64-unknown-linux-gnu --target-dir "$tdir" -- --nocapture >"$log" 2>&1; then
      cat "$log"; rm -f "$log"; exit 1
    fi
    grep -E "^test result|kernels on this CPU" "$log"; rm -f "$log"
  done
done
echo "=== cross-test OK: ${packages[*]}"
