#!/usr/bin/env python3
"""Quantizes a model with onnxruntime's own quantizer (the peer the runtime must run).
Usage: ort_quantize.py KIND IN.onnx OUT.onnx, KIND one of
  dynamic   int8 per-channel weights, uint8 dynamic activations (MatMulInteger +
            DynamicQuantizeLinear; embeddings quantized too)
  int4      int4 block-32 weight-only MatMul weights, com.microsoft MatMulNBits
  int4-qdq  the same as opset-21 DequantizeLinear(int4, block_size 32) -> MatMul"""
import sys

import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer


def main(kind, src, dst):
    if kind == "dynamic":
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
