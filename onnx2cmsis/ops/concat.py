"""Concat along channels or time -> an own copy loop.

TFLite-Micro's int8 CONCATENATION requires every input to share the output's quantization. The importer
puts a requantize (ops/requantize.py) before each input, calibrated on the concat's output range.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.requantize import requantize_node
from onnx2cmsis.ops.base import (ImportContext, KernelCall, OnnxNodeView, OpHandler, TfliteContext, TimeGeometry,
                                  calibrated_quant)

AXIS_OF = {"channel": 1, "time": 0, "flat": 0}  # physical axis of the (W, C) or (F,) IR tensors


class ConcatHandler(OpHandler):
    op = "concat"
    activation_bits = (8, 16)
    onnx_ops = ("Concat",)

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return TimeGeometry() if node.attrs["kind"] == "channel" else None  # along time: the head

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        rank = len(ctx.full_shape(node.outputs[0]))
        axis = int(node.attr("axis", 1)) % rank

        def join(arrays: list[np.ndarray]) -> list[np.ndarray]:
            return [np.concatenate(arrays, axis=axis)]

        if ctx.move(node.outputs[:1], list(node.inputs), join):
            return  # pieces of one tensor put back together (tf_keras' Split + Concat upsampling): movement
        shapes = [ctx.logical_shape(v) for v in node.inputs]
        if any(ctx.const(v) is not None for v in node.inputs):
            raise UnsupportedOpError("Concat with a constant input is not supported", node.where)
        if any(len(s) != rank - 1 for s in shapes) or rank not in (2, 3) or axis == 0:
            raise UnsupportedOpError(f"Concat of shapes {shapes} on axis {axis} is not supported", node.where)
        if rank == 2:
            kind, axes = "flat", (0,)
        else:
            axes = ctx.layout(node.inputs[0])
            axes = axes if len(axes) == 2 else (1, 0)
            kind = "time" if axes[0] == axis - 1 else "channel"
        requantized = []
        for v in node.inputs:
            src = ctx.tensor(v, axes)
            rq = ctx.new_tensor(ctx.physical_shape(src), f"{v}_for_concat", calib_name=node.outputs[0])
            ctx.add_node(requantize_node(node.name, src, rq, origin="Concat requantize"))
            requantized.append(rq)
        ctx.add_node(Node(node.name, self.op, requantized, [ctx.tensor(node.outputs[0], axes)], attrs={"kind": kind},
                          origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        axis = AXIS_OF[node.attrs["kind"]]
        out = list(input_shapes[0])
        out[axis] = sum(s[axis] for s in input_shapes)
        return [tuple(out)]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        q = calibrated_quant(graph, node.output, ranges)
        assert all(graph.tensors[t].quant == q for t in node.inputs), "concat inputs were not requantized"
        graph.tensors[node.output].quant = q

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.concatenate(inputs, axis=1 + AXIS_OF[node.attrs["kind"]])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        shapes = [graph.tensors[t].shape for t in node.inputs]
        kind = node.attrs["kind"]
        if kind == "channel":
            context = {"kind": kind, "steps": shapes[0][0], "widths": [s[1] for s in shapes]}
        else:
            context = {"kind": kind, "sizes": [int(np.prod(s)) for s in shapes]}
        return KernelCall(template="concat.c.j2", kernel="own loop", context=context)

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        opts = ex.fb.ConcatenationOptionsT()
        opts.axis = {"channel": 3, "time": 2, "flat": 1}[node.attrs["kind"]]
        ex.op(ex.fb.BuiltinOperator.CONCATENATION, [ex.activation(t) for t in node.inputs], [ex.activation(node.output)],
              ex.fb.BuiltinOptions.ConcatenationOptions, opts)
