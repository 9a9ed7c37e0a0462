"""Relu/Clip and per-channel affine ops. Both exist only until a pass folds them into their producer.

Relu/Clip become the producer's activation range; one no producer can absorb is lowered to a clamp
table (ops/table.py). A per-channel affine (BatchNormalization, Mul/Add/Sub of a constant) folds into
the producing convolution or dense layer; one left standing is refused with a clear message.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import ImportContext, OnnxNodeView, OpHandler


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
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(node.inputs[0])], [ctx.tensor(node.outputs[0])],
                          attrs={"act": (lo, hi)}, origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]



class AffineHandler(OpHandler):
    """Per-channel y = scale * x + shift: BatchNormalization (inference), and Mul/Add/Sub of a constant."""

    op = "affine"
    onnx_ops = ("Sub", "Mul", "BatchNormalization")  # Add goes through ops/add.py, which delegates here

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        if node.op_type == "BatchNormalization":
            data = node.inputs[0]
            gamma, beta, mean, var = (ctx.const(i) for i in node.inputs[1:5])
            if any(v is None for v in (gamma, beta, mean, var)) or (len(node.outputs) > 1 and any(node.outputs[1:])):
                raise UnsupportedOpError("only inference-mode BatchNormalization with constant statistics is supported",
                                         node.where)
            scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + float(node.attr("epsilon", 1e-5)))
            shift = beta.astype(np.float64) - mean.astype(np.float64) * scale
        else:
            consts = [ctx.const(i) for i in node.inputs]
            if sum(c is not None for c in consts) != 1:
                raise UnsupportedOpError(f"{node.op_type} of two computed tensors (e.g. a residual add) is not "
                                         "supported yet", node.where)
            k = 0 if consts[0] is not None else 1
            data, const = node.inputs[1 - k], self._per_channel(consts[k], ctx.logical_shape(node.inputs[1 - k]), node)
            if node.op_type == "Sub" and k == 0:
                raise UnsupportedOpError("Sub of a tensor from a constant is not supported", node.where)
            one, zero = np.ones_like(const), np.zeros_like(const)
            scale, shift = {"Add": (one, const), "Sub": (one, -const), "Mul": (const, zero)}[node.op_type]
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(data)], [ctx.tensor(node.outputs[0])],
                          consts={"scale": np.asarray(scale, np.float64), "shift": np.asarray(shift, np.float64)},
                          origin=node.op_type))

    @staticmethod
    def _per_channel(const: np.ndarray, logical: tuple[int, ...], node: OnnxNodeView) -> np.ndarray:
        full = np.broadcast_to(const.astype(np.float64), (1, *logical)).reshape(logical)
        per_channel = full if len(logical) == 1 else full[:, 0]
        if len(logical) == 2 and not np.all(full == per_channel[:, None]):
            raise UnsupportedOpError(f"{node.op_type} of a constant that varies along time is not supported",
                                     node.where)
        return np.ascontiguousarray(per_channel)

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        raise UnsupportedOpError(
            f"this {node.origin} cannot be folded into a preceding Conv or Gemm/MatMul (the producer is another op, "
            "has a fused activation, or feeds other layers); a standalone per-channel scale/shift is not "
            "supported yet",
            f"node '{node.name}' ({node.origin})",
        )
