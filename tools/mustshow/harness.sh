#!/usr/bin/env bash
# tools/mustshow/harness.sh [ARGS] — the speed table: the real models side by side in distq,
# onnxruntime and tract, one thread each, p50 of 20 runs (benches/benches/harness.rs). Quiet
# machine wanted; prints the table last.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cargo bench -p distq-benches --bench harness -- "$@"
