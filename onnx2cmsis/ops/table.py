"""Elementwise functions as 256-entry lookup tables: Tanh, Sigmoid, LeakyRelu, standalone Relu/Clip.

CMSIS-NN has no int8 tanh/sigmoid; TFLite-Micro runs reference integer kernels. An int8 -> int8
function has only 256 inputs, so the table is computed at conversion time by the very integer
algorithm TFLite-Micro runs (gemmlowp fixed point: arith/fixedpoint.py) and the C is one indexed load
per element: exact by construction, and fast.

At int16 a table would take 128 KiB: LeakyRelu and the clamp are then an own loop with
TFLite-Micro's arithmetic (`elementwise_loop.c.j2`), Tanh and Sigmoid TFLite's 16x8 algorithm with its
interpolated sigmoid table (arith/sigmoid16.py, `sigmoid_s16.c.j2`). Each function is one
`TableFunction` below: its output quantization, its int8 table, its 16-bit kernel, its TFLite
operator; the handler only dispatches (ops/elementwise_kernels.py holds the kernels' reference and C).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx2cmsis.arith.fixedpoint import logistic_q0, tanh_q0
from onnx2cmsis.arith.rules import (
    QuantParams,
    activation_range,
    divide_by_power_of_two,
    int_range,
    quantize_multiplier,
    requantize,
)
from onnx2cmsis.arith.sigmoid16 import input_scaling
from onnx2cmsis.errors import NotExportable
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (
    ImportContext,
    KernelCall,
    OnnxNodeView,
    OpHandler,
    TfliteContext,
    TimeGeometry,
    calibrated_quant,
    elementwise_io,
)
from onnx2cmsis.ops.elementwise_kernels import CodeTable, ElementwiseKernel, RequantizeLoop, SigmoidS16, run_kernel

TANH_QUANT = QuantParams(1.0 / 128.0, 0)
SIGMOID_QUANT = QuantParams(1.0 / 256.0, -128)
UNIT_QUANT_S16 = QuantParams(1.0 / 32768.0, 0, 16)  # TFLite's 16x8 tanh and logistic outputs


def _input_scaling(scale: float) -> tuple[int, int, int]:
    """(multiplier, left shift, range radius) as TFLite-Micro's tanh/logistic Prepare computes them."""
    q, shift = math.frexp(float(np.float32(scale)) * float(1 << 27))
    mult = int(np.floor(abs(q) * 2**31 + 0.5)) * (1 if q >= 0 else -1)
    radius = int(math.floor(((1 << 4) - 1) * (1 << 27) / (1 << shift)))
    return mult, shift, radius


def _fixed_point_table(q_in: QuantParams, fn_q0, out_shift: int, out_offset: int) -> np.ndarray:
    """TFLite-Micro's int8 tanh/logistic for all 256 codes: saturate beyond the input radius, else
    evaluate `fn_q0` on the input rescaled to Q4.27 and round its Q0.31 result down to the code."""
    mult, shift, radius = _input_scaling(q_in.scale)
    x = np.arange(-128, 128, dtype=np.int64) - q_in.zero_point
    inside = np.abs(x) < radius
    q4 = requantize(np.where(inside, x, 0), mult, shift)
    y = np.clip(divide_by_power_of_two(fn_q0(q4, 4), out_shift) + out_offset, -128, 127)
    return np.where(inside, y, np.where(x < 0, -128, 127)).astype(np.int8)


def tanh_table(q_in: QuantParams) -> np.ndarray:
    return _fixed_point_table(q_in, tanh_q0, 24, 0)  # output scale 1/128: Q0.31 -> Q0.7


def sigmoid_table(q_in: QuantParams) -> np.ndarray:
    return _fixed_point_table(q_in, logistic_q0, 23, -128)  # output scale 1/256, zero point -128


def leaky_relu_multipliers(q_in: QuantParams, q_out: QuantParams,
                           alpha: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """TFLite-Micro LEAKY_RELU's (identity, alpha) multipliers: its Prepare computes both ratios in
    float32 before widening."""
    s_in, s_out, a = np.float32(q_in.scale), np.float32(q_out.scale), np.float32(alpha)
    return quantize_multiplier(float(s_in / s_out)), quantize_multiplier(float(s_in * a / s_out))


def leaky_relu_table(q_in: QuantParams, q_out: QuantParams, alpha: float) -> np.ndarray:
    """TFLite-Micro LEAKY_RELU for all 256 int8 codes."""
    (m_id, sh_id), (m_alpha, sh_alpha) = leaky_relu_multipliers(q_in, q_out, alpha)
    x = np.arange(-128, 128, dtype=np.int64) - q_in.zero_point
    pos = requantize(x, m_id, sh_id)
    neg = requantize(x, abs(m_alpha), sh_alpha) * (-1 if m_alpha < 0 else 1)
    return np.clip(q_out.zero_point + np.where(x >= 0, pos, neg), -128, 127).astype(np.int8)


def clamp_table(q: QuantParams, lo: float | None, hi: float | None) -> np.ndarray:
    """Relu/Clip in the input's own quantization (what TFLite-Micro's RELU/RELU6 compute then)."""
    amin, amax = activation_range(q, lo, hi)
    return np.clip(np.arange(-128, 128), amin, amax).astype(np.int8)


@dataclass(frozen=True)
class TableFunction:
    """One elementwise function: how its output is quantized, and its kernel at 8 and at 16 bits."""

    # the output quantization from (node, input quantization, graph, ranges)
    output_quant: Callable[[Node, QuantParams, Graph, dict[str, tuple[float, float]]], QuantParams]
    int8_table: Callable[[Node, QuantParams, QuantParams], np.ndarray]
    int16_kernel: Callable[[Node, QuantParams, QuantParams], ElementwiseKernel]
    # its TFLite operator: (schema module, node) -> (BuiltinOperator, options type, options)
    tflite: Callable[[object, Node], tuple[int, int, object]]


def _calibrated(node: Node, q_in: QuantParams, graph: Graph, ranges: dict[str, tuple[float, float]]) -> QuantParams:
    return calibrated_quant(graph, node.output, ranges)


def _fixed(quant8: QuantParams, quant16: QuantParams):
    return lambda node, q_in, graph, ranges: quant16 if q_in.bits == 16 else quant8


def _sigmoid_s16(fn: str) -> Callable[[Node, QuantParams, QuantParams], ElementwiseKernel]:
    return lambda node, q_in, q_out: SigmoidS16(fn, *input_scaling(q_in.scale, fn))


def _leaky_relu_s16(node: Node, q_in: QuantParams, q_out: QuantParams) -> ElementwiseKernel:
    identity, negative = leaky_relu_multipliers(q_in, q_out, node.attrs["alpha"])  # as the int8 tables round them
    return RequantizeLoop("leaky_relu", int_range(q_out.bits), identity, negative)


def _plain(code: str):
    return lambda fb, node: (getattr(fb.BuiltinOperator, code), 0, None)


def _leaky_relu_tflite(fb, node: Node) -> tuple[int, int, object]:
    opts = fb.LeakyReluOptionsT()
    opts.alpha = node.attrs["alpha"]
    return fb.BuiltinOperator.LEAKY_RELU, fb.BuiltinOptions.LeakyReluOptions, opts


def _clamp_tflite(fb, node: Node) -> tuple[int, int, object]:
    codes = {(0.0, None): "RELU", (0.0, 6.0): "RELU6"}  # TFLite-Micro has no RELU_N1_TO_1 kernel
    lo, hi = node.attrs["act"]
    key = (None if lo is None else float(lo), None if hi is None else float(hi))
    if key not in codes:
        raise NotExportable(f"clip range [{lo}, {hi}] has no TFLite operator", node.name)
    return getattr(fb.BuiltinOperator, codes[key]), 0, None


FUNCTIONS: dict[str, TableFunction] = {
    "tanh": TableFunction(_fixed(TANH_QUANT, UNIT_QUANT_S16), lambda node, q_in, q_out: tanh_table(q_in),
                          _sigmoid_s16("tanh"), _plain("TANH")),
    "sigmoid": TableFunction(_fixed(SIGMOID_QUANT, UNIT_QUANT_S16), lambda node, q_in, q_out: sigmoid_table(q_in),
                             _sigmoid_s16("sigmoid"), _plain("LOGISTIC")),
    "leaky_relu": TableFunction(_calibrated, lambda node, q_in, q_out: leaky_relu_table(q_in, q_out, node.attrs["alpha"]),
                                _leaky_relu_s16, _leaky_relu_tflite),
    # a Relu/Clip that could not be fused keeps the input's quantization
    "clamp": TableFunction(lambda node, q_in, graph, ranges: q_in,
                           lambda node, q_in, q_out: clamp_table(q_in, *node.attrs["act"]),
                           lambda node, q_in, q_out: RequantizeLoop("clamp", activation_range(q_in, *node.attrs["act"])),
                           _clamp_tflite),
}


class LookupTableHandler(OpHandler):
    op = "lut"
    activation_bits = (8, 16)
    onnx_ops = ("Tanh", "Sigmoid", "LeakyRelu")

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return TimeGeometry()  # column by column

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        fn = {"Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyRelu": "leaky_relu"}[node.op_type]
        attrs = {"fn": fn}
        if fn == "leaky_relu":
            attrs["alpha"] = float(node.attr("alpha", 0.01))
        (x,), y = elementwise_io(node, ctx)
        ctx.add_node(Node(node.name, self.op, [x], [y], attrs=attrs, origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        function = FUNCTIONS[node.attrs["fn"]]
        q_in = graph.tensors[node.inputs[0]].quant
        out = graph.tensors[node.output]
        out.quant = function.output_quant(node, q_in, graph, ranges)
        if q_in.bits == 16 or out.quant.bits == 16:
            node.qparams = {"kernel": function.int16_kernel(node, q_in, out.quant)}
        else:
            node.qparams = {"kernel": CodeTable(node.attrs["fn"], function.int8_table(node, q_in, out.quant))}

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [run_kernel(node, graph, inputs[0])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        return node.qparams["kernel"].call(node, graph)

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        code, options_type, options = FUNCTIONS[node.attrs["fn"]].tflite(ex.fb, node)
        ex.op(code, [ex.activation(node.inputs[0])], [ex.activation(node.output)], options_type, options)
