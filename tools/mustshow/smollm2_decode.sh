#!/usr/bin/env bash
# tools/mustshow/smollm2_decode.sh — SmolLM2-135M-Instruct imported from its Q4_1 GGUF by
# `distq import` (f32 weights), then `distq bench` the way llama-bench reports it (a prompt of
# 64 tokens, 32 generated) on 1 and 2 threads, and onnxruntime on the same ONNX file with the
# same prompt and greedy decode loop (tools/ort_generate.py). Release build, as users run it
# (speed targets are measured here, never in tests). About 2 minutes on 2 cores; quiet machine
# wanted. llama.cpp's figures are in ../shared/anchors.md and issue 22 (built outside the repo).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cargo build -q --release -p distq-converter --bin distq
distq=target/release/distq
gguf=smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "models/cache/$gguf" ] || models/fetch.sh models/cache llm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$distq import "models/cache/$gguf" -o "$work/smollm2" >"$work/import.txt"
tail -1 "$work/import.txt"
for threads in 1 2; do
  echo "=== distq bench, $threads thread(s)"
  $distq bench "$work/smollm2/model.onnx" --prompt-tokens 64 --gen-tokens 32 --iters 3 --warmup 1 --threads "$threads"
done
prompt=$(seq 0 63 | awk '{ printf "%s%d", (NR > 1 ? "," : ""), 100 + ($1 * 7919) % 10000 }')
for threads in 1 2; do
  echo "=== onnxruntime, $threads thread(s), the same prompt and 32 greedy tokens (best of 3)"
  for run in 1 2 3; do
    "$DISTQ_PYTHON" tools/ort_generate.py "$work/smollm2/model.onnx" "$prompt" 33 "$work/ort.npz" "$threads" | tail -1
  done
done
