#!/usr/bin/env bash
# tools/mustshow/smollm2_aarch64.sh [TOKENS] — SmolLM2-135M-Instruct on aarch64 under qemu gives
# the same greedy tokens as on this x86 machine: `distq import` of the Q4_1 GGUF as f32, int8
# and int4 blocks, then the runtime's `greedy` example (token ids in, ids out; no tokenizer)
# built for x86 and for aarch64, run on x86 and under qemu as a CPU with dotprod and i8mm
# (`max`: the sdot block tiles) and as a plain NEON one (`cortex-a72`: the generic ones).
# TOKENS (default 16) greedy tokens after a fixed prompt of 5 ids. qemu timings mean nothing;
# correctness does. About 10 minutes on 2 cores (the emulated runs are the bulk).
set -euo pipefail
source "$(dirname "$0")/env.sh"
tokens=${1:-16}
prompt=504,3575,282,4649,314
cargo build -q --release -p distq-converter --bin distq
cargo build -q --release -p distq-runtime --example greedy
source tools/cross-env.sh
$CARGO build -q --release -p distq-runtime --example greedy --target aarch64-unknown-linux-gnu --target-dir target/cross
gguf=smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "models/cache/$gguf" ] || models/fetch.sh models/cache llm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0
for weights in f32 int8 int4; do
  target/release/distq import "models/cache/$gguf" -o "$work/$weights" --weights "$weights" >/dev/null
  x86=$(target/release/examples/greedy "$work/$weights/model.onnx" "$prompt" "$tokens")
  echo "$weights x86-64:               $x86"
  for cpu in max cortex-a72; do
    arm=$(QEMU_CPU=$cpu qemu-aarch64 target/cross/aarch64-unknown-linux-gnu/release/examples/greedy "$work/$weights/model.onnx" "$prompt" "$tokens")
    same=$([ "$arm" = "$x86" ] && echo identical || echo DIFFERENT)
    printf '%-4s aarch64 (%-10s): %s  %s\n' "$weights" "$cpu" "$arm" "$same"
    [ "$arm" = "$x86" ] || status=1
  done
done
exit $status
