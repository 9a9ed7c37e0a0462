"""Softmax -> arm_softmax_s8. Output quantization is fixed by TFLite: scale 1/256, zero point -128.

The reference re-implements CMSIS-NN's fixed-point algorithm (gemmlowp exp on negative values,
a Newton-Raphson reciprocal: quant/fixedpoint.py) with numpy integer arrays.
"""

from __future__ import annotations

import math

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import ImportContext, KernelCall, OnnxNodeView, OpHandler, TfliteContext
from onnx2cmsis.quant.fixedpoint import exp_on_negative_values, one_over_one_plus_x
from onnx2cmsis.quant.rules import QuantParams, divide_by_power_of_two, doubling_high_mult, quantize_multiplier, wrap32

SCALED_DIFF_INTEGER_BITS = 5
ACCUM_BITS = 12
OUTPUT_QUANT = QuantParams(1.0 / 256.0, -128)


def softmax_params(input_scale: float, beta: float = 1.0) -> tuple[int, int, int]:
    """(mult, shift, diff_min) as TFLite-Micro's softmax Prepare computes them."""
    real = min(beta * float(input_scale) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)), float(2**31 - 1))
    mult, shift = quantize_multiplier(real)
    radius = ((1 << SCALED_DIFF_INTEGER_BITS) - 1) * (1 << (31 - SCALED_DIFF_INTEGER_BITS)) / (1 << shift)
    return mult, shift, -int(math.floor(radius))


def softmax_s8(x: np.ndarray, mult: int, shift: int, diff_min: int) -> np.ndarray:
    """arm_softmax_s8 over the last axis of an int8 array."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.int64)
    diff = rows - rows.max(axis=1, keepdims=True)
    valid = diff >= diff_min
    e = exp_on_negative_values(doubling_high_mult(wrap32(diff * (1 << shift)), mult), SCALED_DIFF_INTEGER_BITS)
    total = wrap32(np.where(valid, divide_by_power_of_two(e, ACCUM_BITS), 0).sum(axis=1, keepdims=True))
    headroom = np.array([[32 - int(t).bit_length() if t > 0 else 32] for t in total[:, 0]], np.int64)
    shifted = one_over_one_plus_x(wrap32(np.where(total > 0, wrap32(total << headroom), 0) - (1 << 31)))
    res = divide_by_power_of_two(doubling_high_mult(shifted, e), ACCUM_BITS - headroom + 23) - 128
    out = np.where(valid, np.clip(res, -128, 127), -128)
    return out.astype(np.int8).reshape(x.shape)


class SoftmaxHandler(OpHandler):
    op = "softmax"
    onnx_ops = ("Softmax",)

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        shape = ctx.logical_shape(node.inputs[0])
        axis = int(node.attr("axis", -1))
        axis = (axis % (len(shape) + 1)) - 1  # logical, batch excluded
        others = [a for a in range(len(shape)) if a != axis and shape[a] > 1]
        if axis < 0 or len(others) > 1:
            raise UnsupportedOpError(f"softmax over axis {axis + 1} of shape {[1, *shape]} is not supported",
                                     node.where)
        # Softmax runs over the innermost axis of (rows, classes): put the softmax axis there.
        axes = (*others, axis)
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(node.inputs[0], axes)], [ctx.tensor(node.outputs[0], axes)],
                          origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = OUTPUT_QUANT
        mult, shift, diff_min = softmax_params(graph.tensors[node.inputs[0]].quant.scale)
        node.qparams = {"mult": mult, "shift": shift, "diff_min": diff_min}

    def reference(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        qp = node.qparams
        return [softmax_s8(inputs[0], qp["mult"], qp["shift"], qp["diff_min"])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        shape = graph.tensors[node.inputs[0]].shape
        row = shape[-1]
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        return KernelCall(
            template="softmax.c.j2",
            kernel="arm_softmax_s8",
            context={"rows": rows, "row_size": row, **node.qparams},
            functions=["arm_softmax_s8"],
        )

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        opts = ex.fb.SoftmaxOptionsT()
        opts.beta = 1.0
        ex.op(ex.fb.BuiltinOperator.SOFTMAX, [ex.activation(node.inputs[0])], [ex.activation(node.output)],
              ex.fb.BuiltinOptions.SoftmaxOptions, opts)
