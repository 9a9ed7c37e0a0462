"""Layout ops: views (Reshape, Flatten, Squeeze, Unsqueeze, Identity, Dropout) and 2D transposes.

The IR stores (C, W) model values channel-last as (W, C). A model reshape is defined on the model's
C-major order, so it lowers to: transpose to C-major (when both dims exceed 1), a byte view, and a
transpose back to channel-last for a 3-D result. Passes then drop identity transposes, cancel
pairs, and fold a transpose that feeds a dense layer into that layer's weight order, so a PyTorch
Flatten -> Linear costs no copy at all.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import ImportContext, KernelCall, OnnxNodeView, OpHandler


def needs_transpose(logical: tuple[int, ...]) -> bool:
    """A (C, W) value whose channel-last bytes differ from its C-major bytes."""
    return len(logical) == 2 and min(logical) > 1


class ReshapeHandler(OpHandler):
    """A byte view: the output aliases the input's storage; no code is emitted."""

    op = "reshape"
    onnx_ops = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        l_in = ctx.logical_shape(node.inputs[0])
        l_out = ctx.logical_shape(node.outputs[0])
        current = ctx.tensor(node.inputs[0])
        if needs_transpose(l_in):
            c_major = ctx.new_tensor(l_in, node.outputs[0] + "_cmajor")
            ctx.add_node(Node(node.name, "transpose", [current], [c_major], origin=node.op_type))
            current = c_major
        target = ctx.tensor(node.outputs[0])
        if needs_transpose(l_out):
            view = ctx.new_tensor(l_out, node.outputs[0] + "_view")
            ctx.add_node(Node(node.name, self.op, [current], [view], origin=node.op_type))
            ctx.add_node(Node(node.name, "transpose", [view], [target], origin=node.op_type))
        else:
            ctx.add_node(Node(node.name, self.op, [current], [target], origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        raise NotImplementedError("a view's shape is set by its producer")

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant

    def reference(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [inputs[0].reshape(graph.tensors[node.output].shape)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        return KernelCall(template="view.c.j2", kernel="none (view)")

    def aliases_input(self, node: Node) -> bool:
        return True


class TransposeHandler(OpHandler):
    """A physical (a, b) -> (b, a) byte transpose; an own loop (CMSIS-NN's snapshot has none)."""

    op = "transpose"

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        a, b = input_shapes[0]
        return [(b, a)]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant

    def reference(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.ascontiguousarray(inputs[0].T)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        rows, cols = graph.tensors[node.inputs[0]].shape
        return KernelCall(template="transpose.c.j2", kernel="own loop", context={"rows": rows, "cols": cols})
