#!/usr/bin/env python3
"""Writes ONNX's backend node test cases, regenerated from the installed onnx package's own
case definitions (onnx.backend.test.case.node.collect_testcases), for the conformance test
(converter/tests/onnx_conformance.rs).
Usage: onnx_node_cases.py OUT_DIR

Per case, OUT_DIR/<case>/ holds:
  generated.onnx      the model as generated (every input stays an input)
  <k>_inputs.npz, <k>_outputs.npz   data set k
  <k>_constants.onnx, <k>_first_input.npz   data set k with every input but the first an
                      initializer, as tract's runner makes them (cases of several inputs)
  case.json           rtol, atol, the data sets, or why the case cannot be written as arrays
                      ("skip": a sequence, optional or string value, or a dtype numpy lacks)
"""
import json
import os
import sys
import warnings

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.case.node import collect_testcases


# numpy's own dtypes; onnx stores bfloat16, float8, int4 and int2 values as ml_dtypes types.
NUMPY_KINDS = {"f": (2, 4, 8), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "b": (1,)}


def array(v):
    """A value as a numpy array (TensorProtos carry the dtypes numpy lacks)."""
    return numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else np.asarray(v)


def why_not_arrays(values):
    """Why these input or output values cannot go into an .npz as the runner reads it."""
    for v in values:
        if isinstance(v, list):
            return "sequence value"
        if v is None:
            return "optional value"
        a = array(v)
        if a.dtype.kind in "OUS":
            return "string value"
        if a.dtype.itemsize not in NUMPY_KINDS.get(a.dtype.kind, ()):
            return "dtype %s (numpy has none)" % a.dtype.name
    return None


def constants_model(model, inputs):
    """`model` with every input but the first an initializer holding its value."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for info, value in list(zip(g.input, inputs))[1:]:
        g.initializer.append(numpy_helper.from_array(array(value), info.name))
    del g.input[1:]
    return m


def main(out_dir):
    warnings.simplefilter("ignore")
    np.seterr(all="ignore")
    cases = [c for c in collect_testcases() if c.kind == "node"]
    for case in cases:
        d = os.path.join(out_dir, case.name)
        os.makedirs(d, exist_ok=True)
        meta = {"rtol": case.rtol, "atol": case.atol, "data_sets": 0}
        onnx.save(case.model, os.path.join(d, "generated.onnx"))
        names_in = [i.name for i in case.model.graph.input]
        names_out = [o.name for o in case.model.graph.output]
        for k, (inputs, outputs) in enumerate(case.data_sets):
            skip = why_not_arrays(list(inputs) + list(outputs))
            if skip:
                meta["skip"] = skip
                break
            ins = {n: array(v) for n, v in zip(names_in, inputs)}
            np.savez(os.path.join(d, "%d_inputs.npz" % k), **ins)
            np.savez(os.path.join(d, "%d_outputs.npz" % k), **{n: array(v) for n, v in zip(names_out, outputs)})
            if len(names_in) > 1:
                np.savez(os.path.join(d, "%d_first_input.npz" % k), **{names_in[0]: ins[names_in[0]]})
                onnx.save(constants_model(case.model, inputs), os.path.join(d, "%d_constants.onnx" % k))
            meta["data_sets"] = k + 1
        with open(os.path.join(d, "case.json"), "w") as f:
            json.dump(meta, f)
    print("%d node cases written to %s (onnx %s)" % (len(cases), out_dir, onnx.__version__))


if __name__ == "__main__":
    main(sys.argv[1])
