#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpus (fuzz/corpus/<target>/) from real models and data.

Real models are shrunk to windows of a few consecutive nodes whose weights are small, so
seeds keep real operators, attributes and weights at a few KB each. Run from the repo root:
    python fuzz/make_corpus.py MODEL.onnx... (e.g. ../shared/models/*/*.onnx, quantized ones)
"""
import hashlib
import io
import os
import struct
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

OUT = "fuzz/corpus"
MAX_WEIGHT_BYTES = 6000
WINDOWS_PER_MODEL = 12


def tensor_bytes(t):
    return len(t.raw_data) or 4 * (len(t.float_data) + len(t.int64_data) + len(t.int32_data))


def attr_bytes(node):
    return sum(tensor_bytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)


def windows(model):
    """Small models over runs of consecutive nodes, one per distinct op sequence."""
    try:
        model = shape_inference.infer_shapes(model)
    except Exception:
        pass
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    types = {v.name: v for v in list(g.input) + list(g.value_info) + list(g.output)}
    seen, found = set(), []
    for size in (2, 3, 5):
        for start in range(len(g.node) - size + 1):
            nodes = g.node[start:start + size]
            produced = {o for n in nodes for o in n.output}
            consumed = [i for n in nodes for i in n.input if i]
            used = sorted({i for i in consumed if i in inits})
            if sum(tensor_bytes(inits[i]) for i in used) + sum(attr_bytes(n) for n in nodes) > MAX_WEIGHT_BYTES:
                continue
            outer = sorted({i for i in consumed if i not in produced and i not in inits})
            if any(i not in types for i in outer):
                continue
            later = {i for n in g.node[start + size:] for i in n.input} | {o.name for o in g.output}
            outs = [o for n in nodes for o in n.output if o and (o in later or o not in consumed)]
            if not outs or any(o not in types for o in outs):
                continue
            key = tuple(n.op_type for n in nodes)
            if key in seen:
                continue
            seen.add(key)
            graph = helper.make_graph(
                list(nodes), f"window{start}", [types[i] for i in outer], [types[o] for o in outs],
                [inits[i] for i in used])
            small = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
            found.append(small.SerializeToString())
    # Spread the picks over the model rather than taking its first layers.
    step = max(1, len(found) // WINDOWS_PER_MODEL)
    return found[::step][:WINDOWS_PER_MODEL]


def put(target, data):
    os.makedirs(f"{OUT}/{target}", exist_ok=True)
    with open(f"{OUT}/{target}/{hashlib.sha1(data).hexdigest()[:16]}", "wb") as f:
        f.write(data)


def npz_seeds():
    fashion = np.load("models/fashion/fashion_val.npz")
    sentences = np.load("models/data/sentences_test.npz")
    sets = [
        {k: fashion[k][:2] for k in fashion.files},
        {k: sentences[k][:2, :16] for k in sentences.files},
        {"x": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "h": np.ones(3, np.float16),
         "d": np.arange(4.0), "b": np.array([True, False]), "i": np.arange(3, dtype=np.int32),
         "s": np.int8(-3)},
    ]
    for arrays in sets:
        for save in (np.savez, np.savez_compressed):
            buf = io.BytesIO()
            save(buf, **arrays)
            put("npz_read", buf.getvalue())


def int4_seeds():
    rng = np.random.default_rng(7)
    for selector in range(3):
        for n in (1, 24, 200):
            put("int4_unpack", bytes([selector]) + struct.pack("<H", n) + rng.integers(0, 256, n).astype(np.uint8).tobytes())


def main(paths):
    for path in paths:
        model = onnx.load(path, load_external_data=False)
        for small in windows(model):
            put("onnx_load", small + b"\x03")
            # capi_run: [mode][u16 length][model][symbolic dims, then input data]
            put("capi_run", b"\x00" + struct.pack("<H", len(small)) + small + bytes(range(64)))
        print(f"{path}: {len(windows(model))} windows")
    npz_seeds()
    int4_seeds()


if __name__ == "__main__":
    main(sys.argv[1:])
