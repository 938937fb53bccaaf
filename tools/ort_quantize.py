#!/usr/bin/env python3
"""Quantizes a model with onnxruntime's own quantizer (the peer the runtime must run).
Usage: ort_quantize.py KIND IN.onnx OUT.onnx, KIND one of
  dynamic   int8 per-channel weights, uint8 dynamic activations (MatMulInteger +
            DynamicQuantizeLinear; embeddings quantized too)
  int4      int4 block-32 weight-only MatMul weights, com.microsoft MatMulNBits
  int4-qdq  the same as opset-21 DequantizeLinear(int4, block_size 32) -> MatMul
  static    int8 static QDQ, per-channel weights, calibrated (MinMax) on the inputs in
            CALIB.npz (an extra argument): ort_quantize.py static IN OUT CALIB.npz"""
import sys

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer


class NpzReader(CalibrationDataReader):
    """Every array of the npz as one calibration sample."""

    def __init__(self, path):
        self.samples = iter([dict(np.load(path))])

    def get_next(self):
        return next(self.samples, None)


def main(kind, src, dst, calib=None):
    if kind == "static":
        quantize_static(src, dst, NpzReader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    elif kind == "dynamic":
        quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
    elif kind in ("int4", "int4-qdq"):
        fmt = QuantFormat.QDQ if kind == "int4-qdq" else QuantFormat.QOperator
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, quant_format=fmt)
        quantizer = MatMulNBitsQuantizer(onnx.load(src), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(dst, use_external_data_format=False)
    else:
        sys.exit(f"unknown kind {kind}")


if __name__ == "__main__":
    main(*sys.argv[1:])
