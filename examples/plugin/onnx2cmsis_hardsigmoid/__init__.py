"""ONNX HardSigmoid, y = max(0, min(1, alpha * x + beta)), as an int8 lookup table.

A complete onnx2cmsis op handler outside the core: import (`from_onnx`), shape rule, quantization
(the output takes [0, 1] at scale 1/256, zero point -128, like TFLite's LOGISTIC), integer
reference, and C emission through this package's own template (templates/ops/hardsigmoid.c.j2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import CArray, ImportContext, KernelCall, OnnxNodeView, OpHandler, elementwise_io
from onnx2cmsis.arith.rules import QuantParams, round_half_away

OUTPUT_QUANT = QuantParams(1.0 / 256.0, -128)


def hardsigmoid_table(q_in: QuantParams, alpha: float, beta: float) -> np.ndarray:
    """out[c + 128] for every int8 input code c, in OUTPUT_QUANT."""
    codes = np.arange(-128, 128, dtype=np.float64)
    x = (codes - q_in.zero_point) * q_in.scale
    y = np.clip(alpha * x + beta, 0.0, 1.0)
    q = round_half_away(y / OUTPUT_QUANT.scale) + OUTPUT_QUANT.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


class HardSigmoidHandler(OpHandler):
    op = "hardsigmoid"
    onnx_ops = ("HardSigmoid",)
    template_dir = Path(__file__).resolve().parent / "templates"

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        (x,), y = elementwise_io(node, ctx)  # elementwise: any layout, no copy
        ctx.add_node(Node(node.name, self.op, [x], [y], origin=node.op_type,
                          attrs={"alpha": float(node.attr("alpha", 0.2)), "beta": float(node.attr("beta", 0.5))}))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        q_in = graph.tensors[node.inputs[0]].quant
        graph.tensors[node.output].quant = OUTPUT_QUANT
        node.qparams = {"table": hardsigmoid_table(q_in, node.attrs["alpha"], node.attrs["beta"])}

    def reference(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [node.qparams["table"][inputs[0].astype(np.int64) + 128]]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        return KernelCall(
            template="hardsigmoid.c.j2",
            kernel="own loop (table)",
            context={"size": graph.tensors[node.inputs[0]].size},
            arrays=[CArray("table", "int8_t", node.qparams["table"], "hard sigmoid of every int8 input code")],
        )
