#!/usr/bin/env bash
# tools/fuzz.sh — runs the cargo-fuzz targets (fuzz/fuzz_targets) on their committed seed
# corpus (fuzz/corpus/<target>), each in its own scratch corpus so the committed one stays
# as it is. Any crash, timeout (10 s), or RSS over 2 GB fails the run; the input that did it is
# kept under fuzz/artifacts/<target>/.
#   tools/fuzz.sh                  every target for 30 s (CI), one per core at a time
#   tools/fuzz.sh --seconds S      every target for S seconds
#   tools/fuzz.sh --runs N         every target for N executions (the local long runs)
#   tools/fuzz.sh ... TARGET...    only these targets
# Needs cargo-fuzz and a nightly toolchain (sanitizer flags); without nightly, the stable
# toolchain is used with RUSTC_BOOTSTRAP=1 (its standard library ships the ASan runtime).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
limit=(-max_total_time=30)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(onnx_load npz_read int4_unpack capi_run)
if rustup toolchain list | grep -q '^nightly'; then
  toolchain=+nightly
else
  toolchain=+stable
  export RUSTC_BOOTSTRAP=1
  echo "=== no nightly toolchain: stable with RUSTC_BOOTSTRAP=1"
fi
cargo $toolchain fuzz build -O
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# One target per core at a time (each libFuzzer run is single-threaded).
fuzz_target() {  # fuzz_target TARGET: runs it, prints its summary; fails on any finding
  local t=$1 start runs rss
  mkdir -p "$work/$t"
  start=$(date +%s)
  if ! cargo $toolchain fuzz run -O "$t" "$work/$t" "corpus/$t" -- "${limit[@]}" -rss_limit_mb=2048 -timeout=10 \
      -print_final_stats=1 >"$work/$t.log" 2>&1; then
    tail -60 "$work/$t.log"
    echo "=== fuzz $t FAILED: the input is under fuzz/artifacts/$t/" >&2
    touch "$work/failed"
    return 1
  fi
  runs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$work/$t.log")
  rss=$(awk '/stat::peak_rss_mb/ { print $2 }' "$work/$t.log")
  echo "=== fuzz $t: $runs executions in $(( $(date +%s) - start )) s, 0 crashes, peak RSS $rss MB, corpus $(ls "corpus/$t" | wc -l) seeds -> $(( $(ls "corpus/$t" | wc -l) + $(ls "$work/$t" | wc -l) )) inputs"
}
slots=$(nproc)
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$slots" ]; do wait -n || true; done
  fuzz_target "$t" &
done
wait
[ ! -e "$work/failed" ] || exit 1
