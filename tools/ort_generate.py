#!/usr/bin/env python3
"""Greedy generation in onnxruntime (CPU, 1 thread) with an ONNX decoder in Optimum's names
(input_ids, attention_mask, position_ids, past_key_values.{i}.key/.value → logits,
present.{i}.key/.value): the peer reference for the decoder tests. Prefill of the prompt in
one run, then one run per token with the KV cache fed back.
Usage: ort_generate.py MODEL.onnx TOKENS N OUT.npz [THREADS]
TOKENS: the prompt's token ids, comma-separated; N: tokens to generate. OUT.npz holds
`tokens` (int64 [N]) and `logits` (float32 [N, vocab], the logits each token was picked from).
Prints the prompt's tokens/s (prefill) and the generated tokens/s (decode) as JSON last."""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main(model, tokens, count, out, threads="1"):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Blocked int8/int4 DequantizeLinear -> MatMul would become MatMulNBits with 8-bit
    # activations; level 0 keeps the weights' dequantized f32 arithmetic (the reference).
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    past = {i.name: np.zeros([d if isinstance(d, int) else (1 if "batch" in d else 0) for d in i.shape], np.float32)
            for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    ids = np.array([[int(t) for t in tokens.split(",")]], np.int64)
    total, picked, logits, times = 0, [], [], []
    for _ in range(int(count)):
        total += ids.shape[1]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, total), np.int64),
                "position_ids": np.arange(total - ids.shape[1], total, dtype=np.int64)[None], **past}
        started = time.perf_counter()
        outputs = dict(zip(names, session.run(names, feed)))
        times.append(time.perf_counter() - started)
        past = {k: outputs[k.replace("past_key_values.", "present.")] for k in past}
        logits.append(outputs["logits"][0, -1])
        picked.append(int(logits[-1].argmax()))
        ids = np.array([[picked[-1]]], np.int64)
    np.savez(out, tokens=np.array(picked, np.int64), logits=np.stack(logits))
    print(f"onnxruntime {ort.__version__}: {model}, {count} tokens")
    prompt = len(tokens.split(","))
    print(json.dumps({"pp_tokens_per_s": prompt / times[0], "tg_tokens_per_s": (len(times) - 1) / max(sum(times[1:]), 1e-9)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
