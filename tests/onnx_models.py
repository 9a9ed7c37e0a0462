"""Writing small ONNX models for the tests (onnx.helper): the graph wrapper every builder uses, a
one-input model saved to a file, and a lone dense layer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def make_model(nodes: list, inputs: list, outputs: list, inits: list, opset: int = OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "case", inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def save_one_input_model(path: Path, nodes: list, shape: list[int], inits: list) -> str:
    """x (float, `shape`) -> nodes -> y (shape left to inference), opset 13, saved at `path`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    onnx.save(make_model(nodes, [x], [y], inits, opset=13), str(path))
    return str(path)


def gemm_model(weight: np.ndarray) -> onnx.ModelProto:
    """x (1, F_in) -> Gemm with `weight` (F_in, F_out) and a zero bias -> y."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], [x], [y],
                      [numpy_helper.from_array(weight, "w"),
                       numpy_helper.from_array(np.zeros(weight.shape[1], np.float32), "b")])
