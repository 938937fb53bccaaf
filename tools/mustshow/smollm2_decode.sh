#!/usr/bin/env bash
# tools/mustshow/smollm2_decode.sh — SmolLM2-135M-Instruct's decode and prompt speed, the way
# llama-bench reports it (a prompt of 64 tokens, 32 generated), at 1 and 2 threads:
#   * f32: `distq import` of the Q4_1 GGUF, against onnxruntime on the same ONNX file (same
#     prompt, same greedy loop: tools/ort_generate.py);
#   * with LLAMA_CPP_BIN set (a llama.cpp build's bin/, built outside the repo: issue 22 says
#     how), at matched precision: llama-quantize makes Q8_0, Q4_0 and F32 files from the
#     Q4_1, `distq import --weights int8|int4|f32` imports each exactly, and distq bench and
#     llama-bench run on them in the same sitting, one after the other;
#   * peak RSS of 512 generated tokens.
# Release build (speed targets are measured here, never in tests). Quiet machine wanted:
# about 5 minutes on 2 cores.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cargo build -q --release -p distq-converter --bin distq
distq=target/release/distq
gguf=smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "models/cache/$gguf" ] || models/fetch.sh models/cache llm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bench() { # model threads: one line, pp64 and tg32 tokens/s
  $distq bench "$1" --prompt-tokens 64 --gen-tokens 32 --iters 3 --warmup 1 --threads "$2" --json |
    "$DISTQ_PYTHON" -c 'import json,sys; r=json.load(sys.stdin); print("pp64 %7.1f  tg32 %6.1f  ttft %6.1f ms  planning %5.1f µs/token  plans after warm-up %d  in place %s" % (r["pp_tokens_per_s"], r["tg_tokens_per_s"], r["time_to_first_token_ms"], r["planning_us_per_decode_step"], r["plans_made_after_warmup"], r["cache_appended_in_place"]))'
}
$distq import "models/cache/$gguf" -o "$work/f32" >"$work/import.txt"
tail -1 "$work/import.txt"
prompt=$(seq 0 63 | awk '{ printf "%s%d", (NR > 1 ? "," : ""), 100 + ($1 * 7919) % 10000 }')
for threads in 1 2; do
  echo "=== f32, $threads thread(s)"
  echo "distq:       $(bench "$work/f32/model.onnx" "$threads")"
  for run in 1 2 3; do
    echo "onnxruntime: $("$DISTQ_PYTHON" tools/ort_generate.py "$work/f32/model.onnx" "$prompt" 33 "$work/ort.npz" "$threads" | tail -1)"
  done
done
if [ -n "${LLAMA_CPP_BIN:-}" ]; then
  for pair in Q8_0:int8 Q4_0:int4 F32:f32; do
    type=${pair%%:*} weights=${pair##*:}
    "$LLAMA_CPP_BIN/llama-quantize" --allow-requantize "models/cache/$gguf" "$work/$type.gguf" "$type" >"$work/quantize.txt" 2>&1
    $distq import "$work/$type.gguf" -o "$work/$type" --weights "$weights" >"$work/import.txt"
    { grep -c "exact" "$work/import.txt" || true; } | xargs echo "=== $type: llama.cpp's file imported as $weights; tensor kinds read exactly as blocks:"
    for threads in 1 2; do
      echo "distq     $threads thread(s): $(bench "$work/$type/model.onnx" "$threads")"
      "$LLAMA_CPP_BIN/llama-bench" -m "$work/$type.gguf" -p 64 -n 32 -t "$threads" -o csv 2>/dev/null |
        awk -F, -v t="$threads" 'NR > 1 { gsub(/"/, ""); v[$0 ~ /,64,0,/ ? "pp64" : "tg32"] = $(NF - 1) } END { printf "llama.cpp %s thread(s): pp64 %7.1f  tg32 %6.1f\n", t, v["pp64"], v["tg32"] }'
    done
  done
else
  echo "(LLAMA_CPP_BIN not set: the matched-precision comparison with llama.cpp is skipped)"
  $distq import "models/cache/$gguf" -o "$work/Q8_0" --weights int8 >/dev/null
fi
echo "=== peak RSS generating 512 tokens (1 thread; weights on disk, then the run)"
for model in "$work/Q8_0" "$work/f32"; do
  du -cb "$model"/model.onnx* | tail -1 | awk '{ printf "%s: weights %.1f MB, ", "'"$(basename "$model")"'", $1 / 1e6 }'
  $distq bench "$model/model.onnx" --prompt-tokens 64 --gen-tokens 512 --iters 1 --warmup 0 --threads 1 --json |
    "$DISTQ_PYTHON" -c 'import json,sys; r=json.load(sys.stdin); print("peak RSS %.1f MB, tg512 %.1f tokens/s" % (r["peak_rss_bytes"] / 1e6, r["tg_tokens_per_s"]))'
done
