#!/usr/bin/env python3
"""Regenerates models/data/*.npz: real inputs for the shared models (committed; run once).

Sources: the tokenized test sentences and speech.wav of ../shared/data, and scikit-image's
`page.png` (scanned page, BSD-3-Clause) and `text.png` (public domain) from its `skimage/data`
folder (e.g. unzip the wheel of `pip download --no-deps scikit-image`).
Needs numpy, pillow and onnxruntime (the VAD state is carried over real speech chunks).
Usage: make_test_inputs.py SHARED_DIR SKIMAGE_DATA_DIR OUT_DIR
"""
import sys
import wave
from pathlib import Path

import numpy as np
from PIL import Image


def det_input(img):
    # PP-OCR detector preprocessing: RGB, sides multiple of 32, ImageNet mean/std, NCHW.
    im = img.convert("RGB").resize((384, 192), Image.BILINEAR)
    x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def line_input(img, box, width):
    # PP-OCR cls/rec preprocessing: a text line resized to height 48, (x/255 - 0.5) / 0.5.
    crop = img.convert("RGB").crop(box)
    w = min(width, max(1, round(crop.width * 48 / crop.height)))
    crop = crop.resize((w, 48), Image.BILINEAR)
    x = np.zeros((48, width, 3), np.float32)
    x[:, :w] = (np.asarray(crop, dtype=np.float32) / 255.0 - 0.5) / 0.5
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def main(shared, skimage_data, out):
    shared, out = Path(shared), Path(out)
    out.mkdir(parents=True, exist_ok=True)

    s = np.load(shared / "data/sentences_test.npz")
    np.savez(out / "minilm_8x64.npz", **{k: s[k][:8].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    # Calibration / evaluation subsets for the quantizer's real-model test in a checkout
    # without ../shared (256 sentences each; the test uses the full sets when present).
    for split in ("train", "test"):
        t = np.load(shared / f"data/sentences_{split}.npz")
        arrays = {k: t[k][:256].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        np.savez_compressed(out / f"sentences_{split}_256.npz", **arrays)

    np.savez(out / "ppocr_det.npz", x=det_input(Image.open(Path(skimage_data) / "page.png")))
    img = Image.open(Path(skimage_data) / "text.png")
    # The first printed line of text.png (x 0..448, y 10..58).
    np.savez(out / "ppocr_cls.npz", x=line_input(img, (0, 10, 448, 58), 192))
    np.savez(out / "ppocr_rec.npz", x=line_input(img, (0, 10, 448, 58), 320))

    import onnxruntime as ort

    with wave.open(str(shared / "data/speech.wav")) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    # The file is 22.05 kHz despite its description; the VAD wants 16 kHz (linear resampling).
    t16 = np.arange(int(len(audio) * 16000 / rate)) / 16000.0
    audio = np.interp(t16, np.arange(len(audio)) / rate, audio).astype(np.float32)
    vad = ort.InferenceSession(str(shared / "models/silero_vad/silero_vad_16k_op15.onnx"))
    state, sr = np.zeros((2, 1, 128), np.float32), np.array(16000, np.int64)
    chunk = 512
    start = 20 * chunk  # into the speech, with state carried over the chunks before
    for i in range(0, start, chunk):
        _, state = vad.run(None, {"input": audio[None, i : i + chunk], "state": state, "sr": sr})
    np.savez(out / "silero_vad.npz", input=audio[None, start : start + chunk], state=state, sr=sr)


if __name__ == "__main__":
    main(*sys.argv[1:])
