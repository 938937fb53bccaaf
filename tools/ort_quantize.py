#!/usr/bin/env python3
"""Quantizes a model with onnxruntime's own quantizer (the peer the runtime must run).
Usage: ort_quantize.py KIND IN.onnx OUT.onnx, KIND one of
  dynamic   int8 per-channel weights, uint8 dynamic activations (MatMulInteger +
            DynamicQuantizeLinear; embeddings quantized too)
  int4      int4 block-32 weight-only MatMul weights, com.microsoft MatMulNBits
  int4-qdq  the same as opset-21 DequantizeLinear(int4, block_size 32) -> MatMul
  int4-int8 MatMulNBits with accuracy_level 4 (int8 activations per block, integer dots)
  static    int8 static QDQ, per-channel weights, calibrated (MinMax) on the inputs in
            CALIB.npz (an extra argument): ort_quantize.py static IN OUT CALIB.npz"""
import os
import sys
import tempfile

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer


class NpzReader(CalibrationDataReader):
    """Every array of the npz as one calibration sample."""

    def __init__(self, path):
        self.samples = iter([dict(np.load(path))])

    def get_next(self):
        return next(self.samples, None)


def prepare_for_static(src, dst):
    """Moves Constant-node tensors into initializers: onnxruntime's quantizer only treats
    initializers as weights (PP-OCR's exports hold their weights in Constant nodes, which it
    would quantize per tensor as activations). Lifts opsets below 13, where per-axis
    QuantizeLinear does not exist (its quantizer would write an invalid model)."""
    model = onnx.load(src)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 13:
        model = onnx.version_converter.convert_version(model, 13)
    graph = model.graph
    kept = []
    for node in graph.node:
        value = [a for a in node.attribute if a.name == "value"]
        if node.op_type == "Constant" and value:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, dst)


def main(kind, src, dst, calib=None):
    if kind == "static":
        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "weights_as_initializers.onnx")
            prepare_for_static(src, weights)
            quantize_static(weights, dst, NpzReader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    elif kind == "dynamic":
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
    elif kind in ("int4", "int4-qdq", "int4-int8"):
        fmt = QuantFormat.QDQ if kind == "int4-qdq" else QuantFormat.QOperator
        accuracy_level = 4 if kind == "int4-int8" else None
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, accuracy_level=accuracy_level, quant_format=fmt)
        quantizer = MatMulNBitsQuantizer(onnx.load(src), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(dst, use_external_data_format=False)
    else:
        sys.exit(f"unknown kind {kind}")


if __name__ == "__main__":
    main(*sys.argv[1:])
