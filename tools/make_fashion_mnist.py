"""Cuts the bundled Fashion-MNIST subset (models/fashion/) from Debian's dataset-fashion-mnist.

Fashion-MNIST (Zalando Research, MIT license) ships as idx files; the demo needs a small,
class-balanced, fixed subset: train (first 600 of each class from the official training
split, 6000 images), val (the next 100 of each class, 1000) and test (first 200 of each class
of the official test split, 2000). Images stay uint8 [N, 1, 28, 28] (the models scale them),
labels int64 [N]. Deterministic: the same files every run. It also writes the full official
training split minus the validation images (59000) to fashion_train_full.npz in the system
temp folder: the bundled teacher was trained on it (`distq demo --retrain-teacher
--teacher-data ...`), so it knows more than the 6000 labelled images its students see, and
the validation images stay unseen by teacher and students alike.

    python3 tools/make_fashion_mnist.py [/usr/share/datasets/fashion-mnist] [models/fashion]
"""
import gzip
import os
import sys
import tempfile

import numpy as np


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def per_class(labels, start, count):
    picked = []
    for c in range(10):
        where = np.flatnonzero(labels == c)
        picked.extend(where[start : start + count])
    return np.sort(np.array(picked))


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    dst = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "models", "fashion")
    x_train, y_train = idx(f"{src}/train-images-idx3-ubyte.gz"), idx(f"{src}/train-labels-idx1-ubyte.gz")
    x_test, y_test = idx(f"{src}/t10k-images-idx3-ubyte.gz"), idx(f"{src}/t10k-labels-idx1-ubyte.gz")
    splits = {
        "train": (x_train, y_train, per_class(y_train, 0, 600)),
        "val": (x_train, y_train, per_class(y_train, 600, 100)),
        "test": (x_test, y_test, per_class(y_test, 0, 200)),
    }
    os.makedirs(dst, exist_ok=True)
    for name, (x, y, rows) in splits.items():
        path = os.path.join(dst, f"fashion_{name}.npz")
        np.savez_compressed(path, image=x[rows][:, None, :, :], label=y[rows].astype(np.int64))
        print(f"{path}: {len(rows)} images")
    full = os.path.join(tempfile.gettempdir(), "fashion_train_full.npz")
    rows = np.setdiff1d(np.arange(len(y_train)), splits["val"][2])
    np.savez_compressed(full, image=x_train[rows][:, None, :, :], label=y_train[rows].astype(np.int64))
    print(f"{full}: {len(rows)} images (not bundled)")


if __name__ == "__main__":
    main()
