#!/usr/bin/env python3
"""Times a model in onnxruntime (CPU, 1 thread, default graph optimizations) for the bench
harness; prints one JSON line: load_ms, p50_ms, mean_ms, version.
Usage: ort_bench.py MODEL.onnx INPUTS.npz ITERS WARMUP"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main(model, inputs, iters, warmup):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    started = time.perf_counter()
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    load_ms = 1000 * (time.perf_counter() - started)
    feed = dict(np.load(inputs))
    for _ in range(int(warmup)):
        session.run(None, feed)
    runs = []
    for _ in range(int(iters)):
        t = time.perf_counter()
        session.run(None, feed)
        runs.append(1000 * (time.perf_counter() - t))
    print(json.dumps({"load_ms": load_ms, "p50_ms": float(np.median(runs)), "mean_ms": float(np.mean(runs)), "version": ort.__version__}))


if __name__ == "__main__":
    main(*sys.argv[1:])
