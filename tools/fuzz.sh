#!/usr/bin/env bash
# tools/fuzz.sh — runs the cargo-fuzz targets (fuzz/fuzz_targets) on their committed seed
# corpus (fuzz/corpus/<target>), each in its own scratch corpus so the committed one stays
# as it is. Any crash, timeout (10 s), or RSS over 2 GB fails the run; the input that did it is
# kept under fuzz/artifacts/<target>/.
#   tools/fuzz.sh                  every target for 30 s (CI), one per core at a time
#   tools/fuzz.sh --seconds S      every target for S seconds
#   tools/fuzz.sh --runs N         every target for N executions (the local long runs)
#   tools/fuzz.sh --build          build (and lint) only
#   tools/fuzz.sh ... TARGET...    only these targets
# The build lints the fuzz crate too: clippy-driver wraps its rustc (warnings denied), as
# tools/test.sh's build does for the workspace, so no separate check build is needed.
# Needs cargo-fuzz and a nightly toolchain (sanitizer flags); without nightly, the stable
# toolchain is used with RUSTC_BOOTSTRAP=1 (its standard library ships the ASan runtime).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
limit=(-max_total_time=30)
build_only=
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    --build) build_only=1; shift ;;
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
# The same wrapper for the build and the runs (cargo rebuilds a crate whose wrapper changed);
# it reaches only the fuzz crate (the runtime and io are linted by the workspace build).
driver="$(rustc $toolchain --print sysroot)/bin/clippy-driver"
[ -x "$driver" ] || { echo "tools/fuzz.sh: no clippy-driver in the ${toolchain#+} toolchain (rustup component add clippy)" >&2; exit 1; }
export RUSTC_WORKSPACE_WRAPPER=$driver CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
cargo $toolchain fuzz build -O
[ -z "$build_only" ] || exit 0
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
