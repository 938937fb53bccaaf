#!/usr/bin/env python3
"""Quantizes a model with onnxruntime's own quantizer (the peer the runtime must run).
Usage: ort_quantize.py dynamic IN.onnx OUT.onnx   (int8 per-channel weights, uint8 dynamic
activations: MatMulInteger + DynamicQuantizeLinear, embeddings quantized too)"""
import sys

from onnxruntime.quantization import QuantType, quantize_dynamic


def main(kind, src, dst):
    if kind != "dynamic":
        sys.exit(f"unknown kind {kind}")
    quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)


if __name__ == "__main__":
    main(*sys.argv[1:])
