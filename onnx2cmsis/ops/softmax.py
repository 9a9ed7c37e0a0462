"""Softmax -> arm_softmax_s8. Output quantization is fixed by TFLite: scale 1/256, zero point -128.

The reference re-implements CMSIS-NN's fixed-point algorithm (gemmlowp exp on negative values,
a Newton-Raphson reciprocal: arith/fixedpoint.py) with numpy integer arrays.

At 16x8: arm_softmax_s16 with TFLite's two 513-entry int16 tables (exp and 1 / (1 + x), arith/lut16.py),
output scale 1/32768, zero point 0.
"""

from __future__ import annotations

import math

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import CArray, ImportContext, KernelCall, OnnxNodeView, OpHandler, TfliteContext
from onnx2cmsis.arith.lut16 import lookup, softmax_tables
from onnx2cmsis.arith.fixedpoint import exp_on_negative_values, one_over_one_plus_x
from onnx2cmsis.arith.rules import (
    QuantParams,
    divide_by_power_of_two,
    doubling_high_mult,
    quantize_multiplier,
    requantize,
    wrap32,
)

SCALED_DIFF_INTEGER_BITS = 5
ACCUM_BITS = 12
OUTPUT_QUANT = QuantParams(1.0 / 256.0, -128)
OUTPUT_QUANT_S16 = QuantParams(1.0 / 32768.0, 0, 16)
# How far below its row's maximum a softmax input still matters (input_floor): TFLite's 16x8 exp table
# covers [-10, 0] and clamps below it. The int8 kernel sums exp over every class down to its diff_min
# (about -16 to -31), so N classes raised to the floor add up to N * exp(-span) to a row's total: the
# span is also at least ln(512 N), half an int8 output step (1/256) however many classes. A floor
# this far under the lowest row maximum calibration gives changes no output of a row whose maximum
# calibration reached; a row whose maximum lies below every calibration sample's gets its classes
# that far below raised, each to at most exp(-(span - shortfall)).
SOFTMAX_SPAN = 10.0


def softmax_span(classes: int) -> float:
    return max(SOFTMAX_SPAN, math.log(512.0 * classes))


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


def softmax_s16_params(input_scale: float, beta: float = 1.0) -> tuple[int, int]:
    """(mult, shift) mapping an input difference to the exp table's [-10, 0] over 65535 steps."""
    return quantize_multiplier(float(input_scale) * beta / (10.0 / 65535.0))


def softmax_s16(x: np.ndarray, mult: int, shift: int, exp_table: np.ndarray, reciprocal_table: np.ndarray) -> np.ndarray:
    """TFLite's SoftmaxInt16 (== arm_softmax_s16) over the last axis of an int16 array."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.int64)
    diff = rows - rows.max(axis=1, keepdims=True)
    scaled = np.clip(requantize(diff, mult, shift) + 32767, -32768, 32767)
    e = lookup(scaled, exp_table).astype(np.int64)
    total = e.sum(axis=1, keepdims=True)  # > 0: the row's maximum contributes exp(0)
    headroom = np.array([[32 - int(t).bit_length()] for t in total[:, 0]], np.int64)  # leading zeros
    shifted = ((total << (headroom - 1)) + (1 << 13)) >> 14
    reciprocal = lookup(np.clip(shifted - 98304, -32768, 32767), reciprocal_table).astype(np.int64)
    right = 31 - headroom
    out = (e * reciprocal + (np.int64(1) << (right - 1))) >> right
    return np.clip(out, 0, 32767).astype(np.int16).reshape(x.shape)


class SoftmaxHandler(OpHandler):
    op = "softmax"
    activation_bits = (8, 16)
    onnx_ops = ("Softmax",)
    floors_input = True

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
        q_in = graph.tensors[node.inputs[0]].quant
        if q_in.bits == 16:
            graph.tensors[node.output].quant = OUTPUT_QUANT_S16
            mult, shift = softmax_s16_params(q_in.scale)
            exp_table, reciprocal_table = softmax_tables()
            node.qparams = {"mult": mult, "shift": shift, "exp_table": exp_table, "reciprocal_table": reciprocal_table}
            return
        graph.tensors[node.output].quant = OUTPUT_QUANT
        mult, shift, diff_min = softmax_params(q_in.scale)
        node.qparams = {"mult": mult, "shift": shift, "diff_min": diff_min}

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        qp = node.qparams  # over the last axis: the batch's samples are rows like any other
        if "exp_table" in qp:
            return [softmax_s16(inputs[0], qp["mult"], qp["shift"], qp["exp_table"], qp["reciprocal_table"])]
        return [softmax_s8(inputs[0], qp["mult"], qp["shift"], qp["diff_min"])]

    def input_floor(self, node: Node, x: np.ndarray) -> float | None:
        rows = np.asarray(x, np.float64).reshape(-1, np.shape(x)[-1])
        return float(rows.max(axis=1).min()) - softmax_span(rows.shape[1]) if rows.size else None

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        shape = graph.tensors[node.inputs[0]].shape
        row = shape[-1]
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        qp = node.qparams
        if "exp_table" in qp:
            return KernelCall(
                template="softmax_s16.c.j2",
                kernel="arm_softmax_s16",
                context={"rows": rows, "row_size": row, "mult": qp["mult"], "shift": qp["shift"]},
                arrays=[CArray("exp_table", "int16_t", qp["exp_table"], "exp over [-10, 0], 513 entries (TFLite's)"),
                        CArray("reciprocal_table", "int16_t", qp["reciprocal_table"],
                               "1 / (1 + x) over [0, 1], 513 entries (TFLite's)")],
                functions=["arm_softmax_s16"],
            )
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
