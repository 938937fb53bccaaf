#!/usr/bin/env python3
"""Runs onnx's full checker (with shape inference) on a model: exit 0 and "ok" when it
passes, the checker's message and exit 1 when not. Usage: check_onnx.py MODEL.onnx"""
import sys

import onnx


def main(path):
    try:
        onnx.checker.check_model(path, full_check=True)
    except onnx.checker.ValidationError as e:
        print(f"{path}: onnx.checker: {e}")
        sys.exit(1)
    print(f"onnx {onnx.__version__} full check ok: {path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
