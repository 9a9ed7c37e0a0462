"""Relu/Clip and per-channel affine ops. Both exist only until a pass folds them into their producer.

Relu/Clip become the producer's activation range; one no producer can absorb is lowered to a clamp
table (ops/table.py). A per-channel affine (BatchNormalization, Mul/Add/Sub of a constant) folds into
the producing convolution or dense layer; one left standing is lowered to a 1-tap depthwise
convolution (ops/depthwise.py), which is exact.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ir.window import Window
from onnx2cmsis.ops.base import ImportContext, OnnxNodeView, OpHandler, elementwise_io
from onnx2cmsis.ops.binary_const import OP as BINARY_CONST, file_constant_operand
from onnx2cmsis.ops.depthwise import DepthwiseConv1DHandler
from onnx2cmsis.ops.roles import ChannelAffine, Clamp, Role
from onnx2cmsis.ops.table import LookupTableHandler


class ClipHandler(OpHandler):
    op = "clip"
    onnx_ops = ("Relu", "Clip")

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        lo: float | None = 0.0
        hi: float | None = None
        if node.op_type == "Clip":
            lo, hi = node.attr("min"), node.attr("max")  # opset < 11
            for idx, slot in ((1, "lo"), (2, "hi")):
                if len(node.inputs) > idx and node.inputs[idx]:
                    c = ctx.const(node.inputs[idx])
                    if c is None:
                        raise UnsupportedOpError("Clip bounds must be constant", node.where)
                    if slot == "lo":
                        lo = float(c.reshape(-1)[0])
                    else:
                        hi = float(c.reshape(-1)[0])
        (x,), y = elementwise_io(node, ctx)
        ctx.add_node(Node(node.name, self.op, [x], [y], attrs={"act": (lo, hi)}, origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def role(self, node: Node) -> Role | None:
        return Clamp(*node.attrs["act"])

    def lower(self, node: Node, graph: Graph) -> list[Node] | None:
        """No producer took it as its activation: a clamp table in its input's quantization."""
        return [replace(node, op=LookupTableHandler.op, attrs={**node.attrs, "fn": "clamp"})]


class AffineHandler(OpHandler):
    """Per-channel y = scale * x + shift: BatchNormalization (inference), and Mul/Add/Sub of a constant."""

    op = "affine"
    onnx_ops = ("Sub", "Mul", "BatchNormalization")  # Add goes through ops/add.py, which delegates here
    folds_affine = True  # two scale/shift steps compose into one

    def fold_affine(self, node: Node, scale: np.ndarray, shift: np.ndarray) -> bool:
        node.consts = {"scale": node.consts["scale"] * scale, "shift": node.consts["shift"] * scale + shift}
        return True

    def role(self, node: Node) -> Role | None:
        return ChannelAffine(node.consts["scale"], node.consts["shift"])

    def lower(self, node: Node, graph: Graph) -> list[Node] | None:
        """No producer could fold it: a 1-tap depthwise convolution, which is exact."""
        return [Node(node.name, DepthwiseConv1DHandler.op, list(node.inputs), list(node.outputs),
                     attrs={"window": Window()},
                     consts={"weight": node.consts["scale"].astype(np.float32).reshape(-1, 1),
                             "bias": node.consts["shift"].astype(np.float32).reshape(-1)},
                     origin=node.origin + " as depthwise 1x1")]

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        if node.op_type == "BatchNormalization":
            data = node.inputs[0]
            gamma, beta, mean, var = (ctx.const(i) for i in node.inputs[1:5])
            if any(v is None for v in (gamma, beta, mean, var)) or (len(node.outputs) > 1 and any(node.outputs[1:])):
                raise UnsupportedOpError("only inference-mode BatchNormalization with constant statistics is supported",
                                         node.where)
            scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + float(node.attr("epsilon", 1e-5)))
            shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
            channel = 0  # BatchNormalization normalizes axis 1 of (N, C, ...)
        elif node.op_type in ("Mul", "Sub") and file_constant_operand(node, ctx):  # a quantized file's: TFLite's
            ctx.delegate(BINARY_CONST, node)
            return
        else:
            consts = [ctx.const(i) for i in node.inputs]
            if sum(c is not None for c in consts) != 1:
                raise UnsupportedOpError(f"{node.op_type} of two computed tensors (e.g. a residual add) is not "
                                         "supported yet", node.where)
            k = 0 if consts[0] is not None else 1
            if node.op_type == "Sub" and k == 0:
                raise UnsupportedOpError("Sub of a tensor from a constant is not supported", node.where)
            data = node.inputs[1 - k]
            channel, const = self._per_channel(consts[k], ctx.logical_shape(data), node)
            one, zero = np.ones_like(const), np.zeros_like(const)
            scale, shift = {"Add": (one, const), "Sub": (one, -const), "Mul": (const, zero)}[node.op_type]
        shape = ctx.logical_shape(data)
        if channel is None:  # a scalar: any layout, broadcast over its last axis
            axes = ctx.layout(data)
            width = ctx.physical_shape(ctx.tensor(data, axes))[-1]
            scale, shift = np.broadcast_to(scale, (width,)), np.broadcast_to(shift, (width,))
        else:
            axes = tuple(a for a in range(len(shape)) if a != channel and shape[a] > 1) + (channel,)
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(data, axes)], [ctx.tensor(node.outputs[0], axes)],
                          consts={"scale": np.array(scale, np.float64), "shift": np.array(shift, np.float64)},
                          origin=node.op_type))

    @staticmethod
    def _per_channel(const: np.ndarray, logical: tuple[int, ...], node: OnnxNodeView) -> tuple[int | None, np.ndarray]:
        """The one logical axis a constant varies along (None for a scalar) and its values there."""
        full = np.broadcast_to(const.astype(np.float64), (1, *logical)).reshape(logical)
        if full.size == 0 or np.all(full == full.reshape(-1)[0]):
            return None, np.array([full.reshape(-1)[0]]) if full.size else np.zeros(1)
        varying = [a for a in range(len(logical)) if not np.all(full == np.take(full, [0], axis=a))]
        non_unit = [a for a in range(len(logical)) if logical[a] > 1]
        if len(varying) != 1 or len(non_unit) > 2:
            raise UnsupportedOpError(f"{node.op_type} of a constant that varies along {len(varying)} axes is not "
                                     "supported (only per channel)", node.where)
        axis = varying[0]
        return axis, np.ascontiguousarray(np.moveaxis(full, axis, -1).reshape(-1, logical[axis])[0])

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]
