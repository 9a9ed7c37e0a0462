"""Elementwise functions as 256-entry lookup tables: Tanh, Sigmoid, LeakyRelu, HardSwish, standalone
Relu/Clip.

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
from onnx2cmsis.arith.hard_swish import hard_swish_table
from onnx2cmsis.arith.rules import (
    QuantParams,
    activation_range,
    divide_by_power_of_two,
    int_range,
    round_half_away,
    quantize_multiplier,
    requantize,
)
from onnx2cmsis.arith.sigmoid16 import input_scaling
from onnx2cmsis.errors import ConversionError, NotExportable
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
    file_quant_of,
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


def _float_tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x.astype(np.float64)).astype(np.float32)  # std::tanh on a float (one rounding)


def _float_logistic(x: np.ndarray) -> np.ndarray:
    """TFLite's float LOGISTIC (reference_ops::Logistic): its cutoffs, then float32 steps."""
    e = np.exp(-x.astype(np.float64)).astype(np.float32)
    inside = (np.float32(1.0) / (np.float32(1.0) + e)).astype(np.float32)
    low = np.exp(x.astype(np.float64)).astype(np.float32)
    return np.where(x > np.float32(16.619047164916992188), np.float32(1.0), np.where(x < np.float32(-9.0), low, inside))


@dataclass(frozen=True)
class FloatFunction:
    """A function TFLite runs at int8 with a fixed output quantization, and also in float."""

    evaluate: Callable[[np.ndarray], np.ndarray]  # float32 -> float32, as TFLite's float kernel
    tflite: str  # its TFLite operator
    quant8: QuantParams  # TFLite's int8 output quantization, which the integer table writes


FLOAT_FUNCTIONS = {"tanh": FloatFunction(_float_tanh, "TANH", TANH_QUANT),
                   "sigmoid": FloatFunction(_float_logistic, "LOGISTIC", SIGMOID_QUANT)}


def through_float(fn: str, q_out: QuantParams) -> bool:
    """The int8 function writes a quantization other than TFLite's fixed one (a model file's)."""
    return fn in FLOAT_FUNCTIONS and q_out.bits == 8 and q_out != FLOAT_FUNCTIONS[fn].quant8


def float_table(fn: str, q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
    """An int8 table through the float function, for an output scale the model file fixed (a QDQ
    model), as TFLite-Micro's DEQUANTIZE -> float op -> QUANTIZE computes it: dequantize (double
    product, rounded to float), the float function, then quantize (float division, halves away from
    zero, where ONNX Runtime rounds them to even: the two differ only on exact ties)."""
    codes = np.arange(-128, 128, dtype=np.int64)
    x = (np.float64(np.float32(q_in.scale)) * (codes - q_in.zero_point)).astype(np.float32)
    y = FLOAT_FUNCTIONS[fn].evaluate(x)
    q = round_half_away((y / np.float32(q_out.scale)).astype(np.float32)) + q_out.zero_point
    return np.clip(q, -128, 127).astype(np.int8)


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
    """TFLite's fixed output quantization, or at int8 the one a quantized model's file gives the
    output (the table is then computed through the float function: float_table)."""
    def choose(node: Node, q_in: QuantParams, graph: Graph, ranges: dict[str, tuple[float, float]]) -> QuantParams:
        pinned = file_quant_of(graph, node.output)
        if q_in.bits == 8 and pinned is not None and pinned.bits == 8:
            return pinned
        return quant16 if q_in.bits == 16 else quant8
    return choose


def _table(fn: str, integer_table: Callable[[QuantParams], np.ndarray]):
    return lambda node, q_in, q_out: float_table(fn, q_in, q_out) if through_float(fn, q_out) else integer_table(q_in)


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


def _hard_swish_table(node: Node, q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
    try:
        return hard_swish_table(q_in, q_out)
    except ValueError as exc:
        raise ConversionError(str(exc), node.where) from None


def _no_int16(what: str):
    def refuse(node: Node, q_in: QuantParams, q_out: QuantParams) -> ElementwiseKernel:
        raise ConversionError(f"{what} has no 16x8 form (TFLite-Micro's kernel is int8 only): convert it at int8",
                              node.where)
    return refuse


FUNCTIONS: dict[str, TableFunction] = {
    "tanh": TableFunction(_fixed(TANH_QUANT, UNIT_QUANT_S16), _table("tanh", tanh_table),
                          _sigmoid_s16("tanh"), _plain("TANH")),
    "sigmoid": TableFunction(_fixed(SIGMOID_QUANT, UNIT_QUANT_S16), _table("sigmoid", sigmoid_table),
                             _sigmoid_s16("sigmoid"), _plain("LOGISTIC")),
    "leaky_relu": TableFunction(_calibrated, lambda node, q_in, q_out: leaky_relu_table(q_in, q_out, node.attrs["alpha"]),
                                _leaky_relu_s16, _leaky_relu_tflite),
    "hard_swish": TableFunction(_calibrated, _hard_swish_table, _no_int16("HardSwish"), _plain("HARD_SWISH")),
    # a Relu/Clip that could not be fused keeps the input's quantization
    "clamp": TableFunction(lambda node, q_in, graph, ranges: q_in,
                           lambda node, q_in, q_out: clamp_table(q_in, *node.attrs["act"]),
                           lambda node, q_in, q_out: RequantizeLoop("clamp", activation_range(q_in, *node.attrs["act"])),
                           _clamp_tflite),
}


class LookupTableHandler(OpHandler):
    op = "lut"
    activation_bits = (8, 16)
    onnx_ops = ("Tanh", "Sigmoid", "LeakyRelu", "HardSwish")

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return TimeGeometry()  # column by column

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        fn = {"Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyRelu": "leaky_relu", "HardSwish": "hard_swish"}[node.op_type]
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

    def writes_in_place(self, node: Node) -> bool:
        return True  # every form is an own loop (elementwise_kernels), element by element

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fn = node.attrs["fn"]
        if through_float(fn, ex.graph.tensors[node.output].quant):
            self._export_through_float(ex, node, FLOAT_FUNCTIONS[fn].tflite)
            return
        code, options_type, options = FUNCTIONS[node.attrs["fn"]].tflite(ex.fb, node)
        ex.op(code, [ex.activation(node.inputs[0])], [ex.activation(node.output)], options_type, options)

    @staticmethod
    def _export_through_float(ex: TfliteContext, node: Node, code: str) -> None:
        """float_table's arithmetic as TFLite-Micro runs it: DEQUANTIZE, the float op, QUANTIZE."""
        shape = list(ex.activation(node.inputs[0]).shape)
        a, b = (ex.me.Tensor(shape=shape, dtype=ex.fb.TensorType.FLOAT32, name=f"{node.output}_{k}")
                for k in ("float_in", "float_out"))
        ex.op(ex.fb.BuiltinOperator.DEQUANTIZE, [ex.activation(node.inputs[0])], [a])
        ex.op(getattr(ex.fb.BuiltinOperator, code), [a], [b])
        ex.op(ex.fb.BuiltinOperator.QUANTIZE, [b], [ex.activation(node.output)])

