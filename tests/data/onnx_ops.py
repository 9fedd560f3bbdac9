"""Writes the small ONNX graphs of tests/onnx_ops.rs and their onnxruntime outputs.

Run from the repository root (needs onnx, onnxruntime, numpy):
    python3 tests/data/onnx_ops.py
Each graph exercises the shape and linear operators of the ONNX importer; expected.json holds,
per model, inputs drawn in [0, 1] and onnxruntime's float32 outputs.
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = os.path.join(os.path.dirname(__file__), "onnx_ops")
rng = np.random.default_rng(2026)


def const(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def ints(name, arr):
    return numpy_helper.from_array(np.asarray(arr, dtype=np.int64), name)


def w(*shape):
    return rng.normal(0, 0.5, size=shape).astype(np.float32)


def save(name, nodes, inits, in_shape, out_name, out_shape):
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(OUT, name + ".onnx")
    onnx.save(model, path)
    sess = ort.InferenceSession(path)
    shape = [1 if not isinstance(d, int) else d for d in in_shape]
    cases = []
    for _ in range(4):
        x = rng.uniform(0, 1, size=shape).astype(np.float32)
        y = sess.run(None, {"x": x})[0]
        cases.append({"x": x.flatten().astype(float).tolist(), "y": y.flatten().astype(float).tolist()})
    return name, cases


models = []
# Channels-last image: Transpose -> Conv -> Relu -> Transpose -> Reshape -> MatMul (Marabou's CIFAR nets).
models.append(save(
    "transpose_conv",
    [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "k", "kb"], ["c"], strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t2"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t2", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["y"]),
    ],
    [const("k", w(4, 3, 3, 3)), const("kb", w(4)), ints("shape", [-1, 36]), const("w", w(36, 5)), const("b", w(5))],
    [1, 7, 7, 3], "y", [1, 5],
))
# Zero Pad (and a non-zero one) before an AveragePool, then Flatten and Gemm (verivital).
models.append(save(
    "pad_pool",
    [
        helper.make_node("Conv", ["x", "k"], ["c"], kernel_shape=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Pad", ["r", "pads", "pv"], ["p"], mode="constant"),
        helper.make_node("AveragePool", ["p"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["a"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1),
    ],
    [const("k", w(3, 1, 2, 2)), ints("pads", [0, 0, 1, 0, 0, 0, 0, 1]), const("pv", [0.25]),
     const("w", w(4, 3 * 3 * 3)), const("b", w(4))],
    [1, 1, 6, 6], "y", [1, 4],
))
# Slice, Split, Concat of computed branches and a constant, Neg, ReduceSum/ReduceMean.
models.append(save(
    "slice_split_concat",
    [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Slice", ["r", "st", "en", "ax", "sp"], ["s"]),
        helper.make_node("Split", ["r", "split"], ["a", "b"], axis=1),
        helper.make_node("Neg", ["b"], ["nb"]),
        helper.make_node("Concat", ["s", "a", "c0", "nb"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["rs"]),
        helper.make_node("ReduceSum", ["rs", "rax"], ["sum"], keepdims=0),
        helper.make_node("ReduceMean", ["rs"], ["mean"], axes=[2], keepdims=0),
        helper.make_node("Concat", ["sum", "mean"], ["both"], axis=1),
        helper.make_node("Relu", ["both"], ["r2"]),
        helper.make_node("Gemm", ["r2", "w2"], ["y"]),
    ],
    [const("w1", w(8, 5)), const("b1", w(8)), ints("st", [1]), ints("en", [7]), ints("ax", [1]), ints("sp", [2]),
     ints("split", [3, 5]), const("c0", [[0.5, -1.0, 2.0, 0.0]]), ints("shape", [1, 3, 5]), ints("rax", [1]),
     const("w2", w(8, 3))],
    [1, 5], "y", [1, 3],
))
# Weights on the left (nn4sys): MatMul(W, x) on a 1-D input, Gemm with the computed tensor as B.
models.append(save(
    "weight_left",
    [
        helper.make_node("MatMul", ["w0", "x"], ["m0"]),
        helper.make_node("Add", ["m0", "b0"], ["h0"]),
        helper.make_node("Relu", ["h0"], ["r0"]),
        helper.make_node("Unsqueeze", ["r0", "uax"], ["col"]),
        helper.make_node("Gemm", ["w1", "col", "b1"], ["g"], alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["g"], ["r1"]),
        helper.make_node("Squeeze", ["r1", "sax"], ["v"]),
        helper.make_node("MatMul", ["v", "w2"], ["y"]),
    ],
    [const("w0", w(6, 3)), const("b0", w(6)), ints("uax", [1]), const("w1", w(4, 6)), const("b1", w(4, 1)),
     ints("sax", [1]), const("w2", w(4, 2))],
    [3], "y", [2],
))
# Gather with constant indices, a batched MatMul on a (2, 4) tensor, Shape arithmetic folded into a Reshape.
models.append(save(
    "gather_shape",
    [
        helper.make_node("Gather", ["x", "idx"], ["g"], axis=1),
        helper.make_node("Reshape", ["g", "s24"], ["g2"]),
        helper.make_node("MatMul", ["g2", "w"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
        helper.make_node("Shape", ["t"], ["sh"]),
        helper.make_node("Gather", ["sh", "zero"], ["d0"], axis=0),
        helper.make_node("Unsqueeze", ["d0", "uax"], ["d0u"]),
        helper.make_node("Concat", ["one", "minus"], ["target"], axis=0),
        helper.make_node("Reshape", ["t", "target"], ["f"]),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1),
    ],
    [ints("idx", [4, 0, 2, 2, 5, 1, 3, 0]), ints("s24", [2, 4]), const("w", w(4, 3)), ints("zero", 0),
     ints("uax", [0]), ints("one", [1]), ints("minus", [-1]), const("w2", w(3, 6)), const("b2", w(3))],
    [1, 6], "y", [1, 3],
))
json.dump({name: cases for name, cases in models}, open(os.path.join(OUT, "expected.json"), "w"), indent=0)
print("wrote", [name for name, _ in models])
