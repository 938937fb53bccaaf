#!/usr/bin/env python3
"""Rewrites a quantized model's int8 weights as the equal uint8 weights (w + 128 with zero
point zp + 128), so that onnxruntime computes its integer products exactly on every x86 host.
Usage: ort_exact_weights.py IN.onnx OUT.onnx

Why: on x86 without VNNI, onnxruntime's u8·s8 kernels (MatMulInteger, QLinearConv and the QDQ
fusions) add pairs of products with `vpmaddubsw`, which saturates at i16: 255·127 + 255·127
comes out 32767, not 64770 (measured with onnxruntime 1.32 on an AVX2 EPYC). Its u8·u8
kernels widen first and are exact. The rewritten model means the same numbers, so it is the
reference the tests compare the runtime's (exact) integer path with.

Rewritten: int8 initializers whose every consumer is MatMulInteger / ConvInteger (as B / W)
or DequantizeLinear (as its input), with their zero points (created where absent)."""
import sys

import numpy as np
import onnx
from onnx import numpy_helper

# op type -> (index of the quantized weight, index of its zero point)
WEIGHT_SLOTS = {"MatMulInteger": (1, 3), "ConvInteger": (1, 3), "DequantizeLinear": (0, 2)}


def main(src, dst):
    model = onnx.load(src)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, slot))

    def int8_init(name):
        t = inits.get(name)
        return t if t is not None and t.data_type == onnx.TensorProto.INT8 else None

    weights = []
    for name, uses in consumers.items():
        if int8_init(name) is None:
            continue
        if all(node.op_type in WEIGHT_SLOTS and WEIGHT_SLOTS[node.op_type][0] == slot for node, slot in uses):
            weights.append((name, uses))

    shifted = set()

    def shift(name):
        if name in shifted:
            return
        t = inits[name]
        values = numpy_helper.to_array(t).astype(np.int16) + 128
        t.CopyFrom(numpy_helper.from_array(values.astype(np.uint8), name))
        shifted.add(name)

    count = 0
    for name, uses in weights:
        for node, _ in uses:
            zp_slot = WEIGHT_SLOTS[node.op_type][1]
            zp = node.input[zp_slot] if len(node.input) > zp_slot else ""
            if zp:
                if int8_init(zp) is None and zp not in shifted:
                    sys.exit(f"{node.name or node.op_type}: zero point {zp} is not an int8 initializer")
                if any(n.op_type not in WEIGHT_SLOTS or slot != WEIGHT_SLOTS[n.op_type][1] for n, slot in consumers[zp]):
                    sys.exit(f"zero point {zp} is also used as something other than a weight's zero point")
                shift(zp)
            else:
                # No zero point means 0 of the weight's type; uint8 weights need 128. Its
                # shape is the scale's (per tensor, per axis or per block).
                scale = inits.get(node.input[WEIGHT_SLOTS[node.op_type][0] + 1]) if node.op_type == "DequantizeLinear" else None
                shape = list(scale.dims) if scale is not None else []
                zp = f"{name}_zero_point_u8_{count}"
                graph.initializer.append(numpy_helper.from_array(np.full(shape, 128, np.uint8), zp))
                inits[zp] = graph.initializer[-1]
                while len(node.input) < zp_slot:
                    node.input.append("")
                node.input.append(zp)
                shifted.add(zp)
        shift(name)
        count += 1
    onnx.save(model, dst)
    print(f"{count} int8 weight tensors rewritten as uint8 + 128", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:])
