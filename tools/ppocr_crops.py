#!/usr/bin/env python3
"""Real text-line crops for the PP-OCR classifier and recognizer, cut from scikit-image's
scanned page (page.png, BSD-3-Clause): the text lines are found by a horizontal ink profile,
and each line gives the whole line plus windows of 1/2 and 1/3 of it at several offsets.
Lines 0-2 are the calibration split, lines 3+ the evaluation split (disjoint text). For the
classifier every crop also appears rotated by 180° (its second class).

Usage: ppocr_crops.py cls|rec calib|eval OUT.npz   (array `x`, float32 [N, 3, 48, W],
W = 192 for cls and 320 for rec, normalized (x/255 - 0.5)/0.5 like PaddleOCR)"""
import sys

import numpy as np
import skimage.data
from PIL import Image
from skimage.filters import threshold_sauvola


def text_lines(gray):
    """(top, bottom, left, right) of each line of dark text: rows with enough ink (against a
    local Sauvola threshold: the page's shading defeats a global one) make a line's core,
    grown by the thin rows of ascenders and descenders around it."""
    ink = gray < threshold_sauvola(gray, window_size=25, k=0.2)
    count = ink.sum(1)
    lines, top = [], None
    for y, on in enumerate(list(count > 18) + [False]):
        if on and top is None:
            top = y
        elif not on and top is not None:
            bottom = y
            while top > 0 and 3 < count[top - 1] <= 18:
                top -= 1
            while bottom < len(count) and 3 < count[bottom] <= 18:
                bottom += 1
            if bottom - top >= 8:
                cols = np.where(ink[top:bottom].any(0))[0]
                lines.append((max(top - 1, 0), min(bottom + 1, gray.shape[0]), cols[0], cols[-1] + 1))
            top = None
    return lines


def windows(left, right):
    """The whole span, halves and thirds at quarter / sixth offsets."""
    width = right - left
    spans = [(left, right)]
    for parts in (2, 3):
        w = width // parts
        for k in range(2 * parts - 1):
            start = left + k * w // 2
            spans.append((start, min(start + w, right)))
    return spans


def crop_input(gray, box, width):
    crop = Image.fromarray(gray).crop(box).convert("RGB")
    w = min(width, max(1, round(crop.width * 48 / crop.height)))
    crop = crop.resize((w, 48), Image.BILINEAR)
    x = np.zeros((48, width, 3), np.float32)
    x[:, :w] = (np.asarray(crop, dtype=np.float32) / 255.0 - 0.5) / 0.5
    return x.transpose(2, 0, 1)


def main(kind, split, out):
    gray = skimage.data.page()
    lines = text_lines(gray)
    chosen = lines[:3] if split == "calib" else lines[3:]
    width = 192 if kind == "cls" else 320
    crops = []
    for top, bottom, left, right in chosen:
        for a, b in windows(left, right):
            x = crop_input(gray, (a, top, b, bottom), width)
            crops.append(x)
            if kind == "cls":
                crops.append(crop_input(np.ascontiguousarray(gray[::-1, ::-1]), (gray.shape[1] - b, gray.shape[0] - bottom, gray.shape[1] - a, gray.shape[0] - top), width))
    np.savez(out, x=np.stack(crops).astype(np.float32))
    print(f"{len(crops)} {kind} crops from {len(chosen)} of {len(lines)} lines of page.png -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
