#!/usr/bin/env bash
# Instructions per MAC of every NEON kernel's hot loop, from the aarch64 disassembly (no ARM machine needed).
# Builds the runtime for aarch64-unknown-linux-gnu in release (rustup target, compile only; v0
# symbol mangling so each const-generic tile has its own symbol), disassembles the rlib with
# binutils' aarch64 objdump (apt: binutils-aarch64-linux-gnu) and counts with
# tools/neon_issue_rate.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
echo "=== must-show $(basename "$0"): $(date -u +%FT%TZ)"
target=aarch64-unknown-linux-gnu
dir=${DISTQ_NEON_TARGET_DIR:-/tmp/distq-neon-issue-rate}
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
command -v aarch64-linux-gnu-objdump >/dev/null || { echo "needs aarch64-linux-gnu-objdump (apt install binutils-aarch64-linux-gnu)" >&2; exit 1; }
RUSTFLAGS="-C symbol-mangling-version=v0" cargo build -q --release -p distq-runtime --lib --target "$target" --target-dir "$dir"
aarch64-linux-gnu-objdump -d -C --no-show-raw-insn "$dir/$target/release/libdistq_runtime.rlib" >"$dir/runtime.asm"
python3 tools/neon_issue_rate.py "$dir/runtime.asm"
