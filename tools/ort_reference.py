#!/usr/bin/env python3
"""Runs a model in onnxruntime (CPU, 1 thread) and saves its outputs: the peer reference
for the parity tests. Usage: ort_reference.py MODEL.onnx INPUTS.npz OUTPUTS.npz [MODE]
MODE: optimized (the default), unoptimized (graph optimizations off, so Q/DQ pairs run as
written instead of fused integer kernels) or int8-compute (int4 DequantizeLinear -> MatMul
at onnxruntime's default accuracy level 4: int8 activations per block)"""
import sys

import numpy as np
import onnxruntime as ort


def main(model, inputs, outputs, mode="optimized"):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    # int4 DequantizeLinear -> MatMul is otherwise fused into MatMulNBits with 8-bit
    # activations; level 0 keeps it exact (f32), the semantics of an exact session of ours.
    if mode != "int8-compute":
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    opts.log_severity_level = 3
    if mode == "unoptimized":
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feed = dict(np.load(inputs))
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feed)
    np.savez(outputs, **dict(zip(names, results)))
    print(f"onnxruntime {ort.__version__}: {model}")


if __name__ == "__main__":
    main(*sys.argv[1:])
