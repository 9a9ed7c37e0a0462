"""ONNX (static, batch 1) -> the canonical IR. Handlers translate nodes; this file keeps the books.

Model values become IR tensors with physical, channel-last shapes: (C, W) -> (W, C), (F,) -> (F,).
A (C, W) graph input or output whose bytes differ between the two orders gets an explicit transpose
so that the C interface takes and returns the model's own layout.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.frontends.onnx_model import value_shapes
from onnx2cmsis.ir.graph import Graph, Node, Tensor
from onnx2cmsis.ops.base import OnnxNodeView
from onnx2cmsis.ops.layout import needs_transpose
from onnx2cmsis.ops.registry import Registry


def physical_shape(logical: tuple[int, ...], where: str) -> tuple[int, ...]:
    if len(logical) == 0:
        return (1,)
    if len(logical) == 1:
        return logical
    if len(logical) == 2:
        return (logical[1], logical[0])
    raise UnsupportedOpError(f"tensors of rank {len(logical) + 1} (2D data) are not supported; 1D models only", where)


def _attrs(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


class GraphBuilder:
    """Implements ops.base.ImportContext for one model."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.source = source
        self.shapes = value_shapes(model)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.tensors: dict[str, Tensor] = {}
        self.value_to_tensor: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.where = source

    # --- ImportContext
    def logical_shape(self, value: str) -> tuple[int, ...]:
        shape = self.shapes.get(value)
        if shape is None:
            raise ConversionError(f"value '{value}' has no static shape", self.where)
        if value in self.consts:
            return tuple(shape)
        if not shape or shape[0] != 1:
            raise ConversionError(f"value '{value}' has shape {list(shape)}: expected batch 1 first", self.where)
        if 0 in shape:
            raise ConversionError(f"value '{value}' has a zero-size dimension {list(shape)}", self.where)
        return tuple(shape[1:])

    def const(self, value: str) -> np.ndarray | None:
        c = self.consts.get(value)
        return None if c is None else np.asarray(c)

    def tensor(self, value: str) -> str:
        if value not in self.value_to_tensor:
            name = self._unique(value)
            self.tensors[name] = Tensor(name, physical_shape(self.logical_shape(value), self.where), calib_name=value)
            self.value_to_tensor[value] = name
        return self.value_to_tensor[value]

    def new_tensor(self, shape: tuple[int, ...], hint: str, calib_name: str | None = None) -> str:
        name = self._unique(hint)
        self.tensors[name] = Tensor(name, tuple(shape), calib_name=calib_name)
        return name

    def add_node(self, node: Node) -> None:
        self.nodes.append(node)

    # --- helpers
    def _unique(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.tensors:
            name, i = f"{hint}_{i}", i + 1
        return name


def import_onnx(model: onnx.ModelProto, registry: Registry, source: str) -> Graph:
    b = GraphBuilder(model, source)
    g = model.graph
    inits = {i.name for i in g.initializer}
    model_in = next(i for i in g.input if i.name not in inits)
    model_out = g.output[0]

    in_logical = b.logical_shape(model_in.name)
    if needs_transpose(in_logical):
        raw = b.new_tensor(in_logical, model_in.name + "_model_layout")
        b.tensors[raw].calib_name = model_in.name
        b.add_node(Node("input layout", "transpose", [raw], [b.tensor(model_in.name)], origin="(C,W)->(W,C)"))
        graph_inputs = [raw]
    else:
        graph_inputs = [b.tensor(model_in.name)]

    for proto in g.node:
        view = OnnxNodeView(proto.name or f"{proto.op_type}_{len(b.nodes)}", proto.op_type,
                            list(proto.input), list(proto.output), _attrs(proto))
        b.where = f"{source}: {view.where}"
        if proto.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"operator {proto.domain}.{proto.op_type} is not supported", b.where)
        if proto.op_type == "Constant":
            b.consts[proto.output[0]] = _constant_value(view, b.where)
            b.shapes[proto.output[0]] = b.consts[proto.output[0]].shape
            continue
        registry.for_onnx(proto.op_type, b.where).from_onnx(view, b)

    b.where = source
    out_logical = b.logical_shape(model_out.name)
    result = b.tensor(model_out.name)
    if needs_transpose(out_logical):
        raw = b.new_tensor(out_logical, model_out.name + "_model_layout")
        b.add_node(Node("output layout", "transpose", [result], [raw], origin="(W,C)->(C,W)"))
        result = raw
    return Graph(
        tensors=b.tensors,
        nodes=b.nodes,
        inputs=graph_inputs,
        outputs=[result],
        model_input_shapes=[(1, *in_logical)],
        model_output_shapes=[(1, *out_logical)],
    )


def _constant_value(view: OnnxNodeView, where: str) -> np.ndarray:
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in view.attrs:
            return np.asarray(view.attrs[key])
    raise UnsupportedOpError("Constant node without a numeric value", where)
