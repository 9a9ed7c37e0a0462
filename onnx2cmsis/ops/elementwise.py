"""Relu/Clip and Add-a-constant. Both exist only until a pass folds them into their producer.

Relu/Clip become the producer's activation range; one no producer can absorb is lowered to a clamp
table (ops/table.py). An Add of a per-channel constant becomes the producer's bias; one left standing
is refused with a clear message.
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



class BiasAddHandler(OpHandler):
    op = "bias_add"
    onnx_ops = ("Add",)

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        consts = [ctx.const(i) for i in node.inputs]
        if sum(c is not None for c in consts) != 1:
            raise UnsupportedOpError("Add of two computed tensors (residual add) is not supported yet", node.where)
        k = 0 if consts[0] is not None else 1
        data, const = node.inputs[1 - k], consts[k]
        logical = ctx.logical_shape(data)
        full = np.broadcast_to(const.astype(np.float32), (1, *logical)).reshape(logical)
        per_channel = full if len(logical) == 1 else full[:, 0]
        if len(logical) == 2 and not np.all(full == per_channel[:, None]):
            raise UnsupportedOpError("Add of a constant that varies along time is not supported", node.where)
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(data)], [ctx.tensor(node.outputs[0])],
                          consts={"bias": np.ascontiguousarray(per_channel)}, origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        raise UnsupportedOpError(
            "this Add of a constant cannot be folded into a preceding Conv or Gemm/MatMul bias; "
            "standalone Add is not supported yet",
            f"node '{node.name}' ({node.origin})",
        )
