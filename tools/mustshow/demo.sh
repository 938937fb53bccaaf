#!/usr/bin/env bash
# tools/mustshow/demo.sh — the README's first command, whose table the README quotes (about a
# minute in a release build on 2 cores): the bundled Fashion-MNIST teacher, a distilled
# quarter-width student (8 epochs), its mixed-precision form and the same student trained
# without a teacher, measured in the runtime on the 2000 held-out images; prints the table
# last. CI runs the same pipeline at 2 epochs (`demo_prints_its_table_after_two_epochs`).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cargo run -q --release -p distq-converter --bin distq -- demo "$@"
