#!/usr/bin/env bash
# tools/mustshow/minilm_quantize.sh — `distq quantize` on MiniLM-L6 at ≤ 17 MB, calibrated on
# the 8000 shared training sentences and evaluated on the 1000 test sentences (about 5
# minutes on 2 cores; needs ../shared/data); prints the size, the precisions per layer and
# the pooled cosine to fp32 in our runtime and in onnxruntime last. CI runs the same check on
# the committed 256-sentence subsets.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cargo test -p distq-converter --test quantize_minilm -- --ignored --nocapture --exact \
  mustshow_minilm_mixed_precision_within_17_mb_on_the_shared_sentences
