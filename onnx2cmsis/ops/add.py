"""Add of two computed tensors (residual connections) -> arm_elementwise_add_s8 (_s16 at 16x8).

TFLite-Micro's int8 ADD: both inputs are brought to a common scale (2 * the larger input scale)
with 20 bits of headroom (15 at int16), summed, and requantized to the output. The parameters are
computed the way its Prepare does (float32 scales, the larger one taken before widening to double).
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (
    ImportContext,
    KernelCall,
    OnnxNodeView,
    OpHandler,
    TfliteContext,
    TimeGeometry,
    elementwise_io,
    fused_activation_range,
)
from onnx2cmsis.arith.rules import add_params, saturate, tflite_add
from onnx2cmsis.ops.binary_const import OP as BINARY_CONST, file_constant_operand

class AddHandler(OpHandler):
    op = "add"
    activation_bits = (8, 16)
    onnx_ops = ("Add",)
    fuses_activation = free_output_quant = True

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return TimeGeometry()  # column by column

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        if file_constant_operand(node, ctx):  # a quantized file's constant: TFLite's own ADD
            ctx.delegate(BINARY_CONST, node)
            return
        if any(ctx.const(i) is not None for i in node.inputs):
            ctx.delegate("affine", node)  # a bias or shift: folded into its producer later
            return
        inputs, output = elementwise_io(node, ctx, list(node.inputs))
        ctx.add_node(Node(node.name, self.op, inputs, [output], origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        super().quantize(node, graph, ranges)
        q1, q2 = (graph.tensors[t].quant for t in node.inputs)
        q_out = graph.tensors[node.output].quant
        node.qparams = {**add_params(q1.scale, q2.scale, q_out.scale, q_out.bits),
                        "act_range": fused_activation_range(node, graph)}

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        qp = node.qparams
        q1, q2 = (graph.tensors[t].quant for t in node.inputs)
        q_out = graph.tensors[node.output].quant
        y = tflite_add(inputs[0].astype(np.int64) - q1.zero_point, inputs[1].astype(np.int64) - q2.zero_point, qp)
        return [saturate(y + q_out.zero_point, q_out.bits, *qp["act_range"])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        q1, q2 = (graph.tensors[t].quant for t in node.inputs)
        qp = node.qparams
        kernel = f"arm_elementwise_add_s{graph.tensors[node.output].quant.bits}"
        return KernelCall(
            template="add.c.j2",
            kernel=kernel,
            context={**{k: v for k, v in qp.items() if k != "act_range"}, "offset1": -q1.zero_point,
                     "offset2": -q2.zero_point, "kernel": kernel,
                     "out_offset": graph.tensors[node.output].quant.zero_point, "act_min": qp["act_range"][0],
                     "act_max": qp["act_range"][1], "size": graph.tensors[node.output].size},
            functions=[kernel],
        )

    def writes_in_place(self, node: Node) -> bool:
        # arm_elementwise_add_s8/_s16 (every API level, DSP, MVE and plain C) read a block of both
        # inputs, then write the same block of the output: an output over either input is safe
        return True

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        opts = ex.fb.AddOptionsT()
        opts.fusedActivationFunction = ex.fused(node)
        ex.op(ex.fb.BuiltinOperator.ADD, [ex.activation(t) for t in node.inputs], [ex.activation(node.output)],
              ex.fb.BuiltinOptions.AddOptions, opts)
