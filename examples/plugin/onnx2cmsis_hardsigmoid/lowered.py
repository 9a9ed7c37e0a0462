"""ONNX HardSigmoid the other way: lowered into built-in ops instead of a kernel of its own.

y = max(0, min(1, alpha * x + beta)) is a per-channel affine (alpha, beta on every channel) followed
by a clamp to [0, 1], and the core has both: `lower` returns those two nodes, and the passes treat them
as they treat a BatchNormalization and a Relu. After a convolution both vanish (the affine folds into
its weights, the clamp becomes its fused activation), so the op costs nothing at run time; elsewhere
they become a 1-tap depthwise convolution with the clamp fused. Their quantization, reference, C and
int16 support are the built-in ops' own: nothing of that is written here.

Choose this form when built-in ops compose your op exactly; the table in `__init__.py` when none do.
Both claim ONNX HardSigmoid, so load this one in place of the installed one:
`--plugin onnx2cmsis_hardsigmoid.lowered:HardSigmoidLowering --allow-override`.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.ir.graph import Graph, Node, Tensor
from onnx2cmsis.ops.base import ImportContext, OnnxNodeView, OpHandler, elementwise_io
from onnx2cmsis.ops.elementwise import AffineHandler, ClipHandler


class HardSigmoidLowering(OpHandler):
    op = "hardsigmoid_lowered"
    onnx_ops = ("HardSigmoid",)
    activation_bits = (8, 16)  # what it lowers into handles both widths

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        (x,), y = elementwise_io(node, ctx)
        ctx.add_node(Node(node.name, self.op, [x], [y], origin=node.op_type,
                          attrs={"alpha": float(node.attr("alpha", 0.2)), "beta": float(node.attr("beta", 0.5))}))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def lower(self, node: Node, graph: Graph) -> list[Node] | None:
        x, y = node.inputs[0], node.output
        out = graph.tensors[y]
        channels = out.shape[-1]
        # The affine's output has no model value to calibrate on. It takes the output's range: the
        # clamp that follows keeps only [0, 1] of it, and saturating into a range inside [0, 1] is
        # what quantizing the clamped value does anyway.
        mid = f"{y}_before_clamp"
        graph.tensors[mid] = Tensor(mid, out.shape, calib_name=out.calib_name, calib_index=out.calib_index,
                                    bits=out.bits)
        scale = np.full(channels, node.attrs["alpha"], np.float64)
        shift = np.full(channels, node.attrs["beta"], np.float64)
        return [Node(node.name, AffineHandler.op, [x], [mid], consts={"scale": scale, "shift": shift},
                     origin=node.origin),
                Node(node.name, ClipHandler.op, [mid], [y], attrs={"act": (0.0, 1.0)}, origin=node.origin)]
