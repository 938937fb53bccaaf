# Sourced by the must-show scripts: the validators' venv and the real models, as
# tools/test.sh sets them up (run tools/test.sh once first, or set DISTQ_PYTHON and
# DISTQ_MODELS_DIR yourself).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export DISTQ_PYTHON=${DISTQ_PYTHON:-$(pwd)/.venv/bin/python}
[ -x "$DISTQ_PYTHON" ] || { echo "no Python at $DISTQ_PYTHON: run tools/test.sh once (it makes .venv)" >&2; exit 1; }
if [ -z "${DISTQ_MODELS_DIR:-}" ]; then
  if [ -d ../shared/models ]; then
    DISTQ_MODELS_DIR=$(cd ../shared/models && pwd)
  else
    [ -f models/cache/minilm/all-MiniLM-L6-v2.onnx ] || models/fetch.sh models/cache
    DISTQ_MODELS_DIR=$(pwd)/models/cache
  fi
  export DISTQ_MODELS_DIR
fi
echo "=== must-show $(basename "$0"): models $DISTQ_MODELS_DIR, python $DISTQ_PYTHON, $(date -u +%FT%TZ), $(nproc) cores"
