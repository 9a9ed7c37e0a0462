"""Requantize: the same real values in another quantization (TFLite's QUANTIZE between integer types).

Two things put one in the graph: a concat's inputs must share its output quantization (TFLite-Micro's
CONCATENATION requires it; ops/concat.py), and a mixed-precision model changes width between int8
and int16 layers (quant/precision.py). A pass lets a producer whose output quantization is free write
in the requantize's quantization directly (`OpHandler.free_output_quant`); one whose input turns out
to have the wanted quantization already is a view, no code; what remains is an exact int8 -> int8
table or, where a side is int16, an own loop with TFLite-Micro's arithmetic.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.arith.rules import QuantParams, int_range, quantize_multiplier, requantize
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (VIEW_KERNEL, ImportContext, KernelCall, OnnxNodeView, OpHandler, TfliteContext,
                                 TimeGeometry, calibrated_quant)
from onnx2cmsis.ops.elementwise_kernels import CodeTable, RequantizeLoop, run_kernel
from onnx2cmsis.ops.roles import Requantize, Role

OP = "requantize"


def requantize_node(name: str, src: str, dst: str, origin: str) -> Node:
    """A node writing `src`'s values into `dst` in `dst`'s quantization (its calibrated range)."""
    return Node(name, OP, [src], [dst], origin=origin)


def requantize_multiplier(q_in: QuantParams, q_out: QuantParams) -> tuple[int, int]:
    """TFLite-Micro QUANTIZE's (its Requantize) multiplier: the ratio of the scales widened to double."""
    return quantize_multiplier(float(q_in.scale) / float(q_out.scale))


def requantize_table(q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
    """TFLite-Micro QUANTIZE int8 -> int8 for all 256 codes."""
    m, sh = requantize_multiplier(q_in, q_out)
    x = np.arange(-128, 128, dtype=np.int64) - q_in.zero_point
    return np.clip(requantize(x, m, sh) + q_out.zero_point, -128, 127).astype(np.int8)


class RequantizeHandler(OpHandler):
    op = OP
    activation_bits = (8, 16)

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return TimeGeometry()  # column by column

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def role(self, node: Node) -> Role | None:
        return Requantize()

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        """An Identity between two quantizations of a quantized file (a .tflite's QUANTIZE int8 -> int8,
        ops/movement.py delegates it): TFLite-Micro's requantization into the output's."""
        axes = ctx.layout(node.inputs[0])
        ctx.add_node(requantize_node(node.name, ctx.tensor(node.inputs[0], axes), ctx.tensor(node.outputs[0], axes),
                                     origin=node.op_type))

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        q_in = graph.tensors[node.inputs[0]].quant
        q_out = graph.tensors[node.output].quant = calibrated_quant(graph, node.output, ranges)
        if q_out == q_in:  # already in the wanted quantization: the bytes can stay where they are
            node.qparams = {"kernel": None}
        elif q_in.bits == 16 or q_out.bits == 16:
            m = requantize_multiplier(q_in, q_out)
            node.qparams = {"kernel": RequantizeLoop("requantize", int_range(q_out.bits), m, m)}
        else:
            node.qparams = {"kernel": CodeTable("requantize", requantize_table(q_in, q_out))}

    def aliases_input(self, node: Node) -> bool:
        return node.qparams.get("kernel", False) is None

    def writes_in_place(self, node: Node) -> bool:
        return node.qparams.get("kernel") is not None  # an own loop (elementwise_kernels), element by element

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self.aliases_input(node):
            return [inputs[0]]
        return [run_kernel(node, graph, inputs[0])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        if self.aliases_input(node):
            return KernelCall(template="view.c.j2", kernel=VIEW_KERNEL)
        return node.qparams["kernel"].call(node, graph)

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        if self.aliases_input(node):
            ex.reshape(ex.activation(node.inputs[0]), ex.activation(node.output))
        else:
            ex.op(ex.fb.BuiltinOperator.QUANTIZE, [ex.activation(node.inputs[0])], [ex.activation(node.output)])
