#!/usr/bin/env bash
# tools/mustshow/minilm_distill.sh — the distillation must-show (about 15 minutes on 2 cores):
# MiniLM-L6 distilled to 2 layers on the 7500 shared training sentences (feature KD on the
# pooled sentence embeddings, 2 epochs), then `distq convert` to a quarter of the student's
# size with QAT; prints the pooled cosine to the teacher over the 1000 test sentences in our
# runtime and in onnxruntime, and the sizes, last. Not in CI (tools/test.sh leaves the
# `mustshow_` tests to these scripts and says so).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cargo test -p distq-converter --test distill_minilm -- --ignored --nocapture --exact \
  mustshow_minilm_distills_to_two_layers_and_converts_at_a_quarter_of_its_size
