"""Elementwise int8 functions as 256-entry lookup tables: Tanh, Sigmoid, LeakyRelu, standalone Relu/Clip.

CMSIS-NN has no int8 tanh/sigmoid; TFLite-Micro runs reference integer kernels. An int8 -> int8
function has only 256 inputs, so the table is computed at conversion time by the very integer
algorithm TFLite-Micro runs (gemmlowp fixed point, re-implemented below on Python integers with
32-bit wrap-around) and the C is one indexed load per element: exact by construction, and fast.
"""

from __future__ import annotations

import math

import numpy as np

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import CArray, ImportContext, KernelCall, OnnxNodeView, OpHandler, calibrated_quant
from onnx2cmsis.quant.rules import QuantParams, activation_range, quantize_multiplier, requantize

INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
TANH_QUANT = QuantParams(1.0 / 128.0, 0)
SIGMOID_QUANT = QuantParams(1.0 / 256.0, -128)


# ------------------------------------------------------------ gemmlowp fixed point on Python ints


def _w(x: int) -> int:
    return ((x + 2**31) % 2**32) - 2**31


def _mul(a: int, b: int) -> int:
    """SaturatingRoundingDoublingHighMul."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    s = ab + nudge
    return _w(s // (1 << 31) if s >= 0 else -((-s) // (1 << 31)))


def _rdiv(x: int, e: int) -> int:
    """RoundingDivideByPOT."""
    mask = (1 << e) - 1
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if (x & mask) > threshold else 0)


def _pot(x: int, e: int) -> int:
    """SaturatingRoundingMultiplyByPOT<e>."""
    if e == 0:
        return x
    if e < 0:
        return _rdiv(x, -e)
    threshold = (1 << (31 - e)) - 1
    if x > threshold:
        return INT32_MAX
    if x < -threshold:
        return INT32_MIN
    return _w(x << e)


def _exp_quarter_interval(a: int) -> int:
    """exp(a) for a in [-1/4, 0), Q0.31."""
    x = _w(a + (1 << 28))
    x2 = _mul(x, x)
    x3 = _mul(x2, x)
    x4 = _mul(x2, x2)
    poly = _pot(_w(_mul(_w(_pot(x4, -2) + x3), 715827883) + x2), -1)
    return _w(1895147668 + _mul(1895147668, _w(x + poly)))


def _exp_on_negative(a: int, integer_bits: int) -> int:
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = _w((a & (quarter - 1)) - quarter)
    result = _exp_quarter_interval(_pot(a_mod, integer_bits))
    remainder = _w(a_mod - a)
    barrel = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401),
              (4, 242))
    for exponent, multiplier in barrel:
        if integer_bits > exponent and remainder & (1 << (frac + exponent)):
            result = _mul(result, multiplier)
    if integer_bits > 5 and a < -(1 << (36 - integer_bits)):
        result = 0
    return INT32_MAX if a == 0 else result


def _newton_reciprocal(a: int) -> int:
    """x ~ 1 / half_denominator in Q2.29 (gemmlowp's three Newton-Raphson steps), with half_den."""
    s = a + INT32_MAX  # RoundingHalfSum(a, One): (sum + sign) / 2, truncating like C
    num = s + (1 if s >= 0 else -1)
    half = num // 2 if num >= 0 else -((-num) // 2)
    x = _w(1515870810 + _mul(half, -1010580540))
    for _ in range(3):
        x = _w(x + _pot(_mul(x, _w((1 << 29) - _mul(half, x))), 2))
    return x


def _tanh_q0(a: int, integer_bits: int = 4) -> int:
    if a == 0:
        return 0
    n = a if a < 0 else _w(-a)
    e = _exp_on_negative(n, integer_bits + 1)  # ExactMulByPot<1>: same raw, one more integer bit
    t = _pot(_w(_newton_reciprocal(e) - (1 << 29)), 2)  # (1 - e) / (1 + e)
    return _w(-t) if a < 0 else t


def _logistic_q0(a: int, integer_bits: int = 4) -> int:
    if a == 0:
        return 1 << 30
    pos = _pot(_newton_reciprocal(_exp_on_negative(_w(-abs(a)), integer_bits)), 1)  # 1 / (1 + e)
    return pos if a > 0 else _w(INT32_MAX - pos)


def _input_scaling(scale: float) -> tuple[int, int, int]:
    """(multiplier, left shift, range radius) as TFLite-Micro's tanh/logistic Prepare computes them."""
    q, shift = math.frexp(float(np.float32(scale)) * float(1 << 27))
    mult = int(np.floor(abs(q) * 2**31 + 0.5)) * (1 if q >= 0 else -1)
    radius = int(math.floor(((1 << 4) - 1) * (1 << 27) / (1 << shift)))
    return mult, shift, radius


def _fixed_point_table(q_in: QuantParams, fn_q0, out_shift: int, out_offset: int) -> np.ndarray:
    """TFLite-Micro's int8 tanh/logistic: saturate beyond the input radius, else evaluate `fn_q0` on the
    input rescaled to Q4.27 and round its Q0.31 result down to the output code."""
    mult, shift, radius = _input_scaling(q_in.scale)
    out = []
    for code in range(-128, 128):
        x = code - q_in.zero_point
        if x <= -radius:
            out.append(-128)
        elif x >= radius:
            out.append(127)
        else:
            q4 = int(requantize(np.array([x]), mult, shift)[0])
            out.append(min(max(_rdiv(fn_q0(q4), out_shift) + out_offset, -128), 127))
    return np.array(out, np.int8)


def tanh_table(q_in: QuantParams) -> np.ndarray:
    return _fixed_point_table(q_in, _tanh_q0, 24, 0)  # output scale 1/128: Q0.31 -> Q0.7


def sigmoid_table(q_in: QuantParams) -> np.ndarray:
    return _fixed_point_table(q_in, _logistic_q0, 23, -128)  # output scale 1/256, zero point -128


def leaky_relu_table(q_in: QuantParams, q_out: QuantParams, alpha: float) -> np.ndarray:
    """TFLite-Micro LEAKY_RELU; its Prepare computes both ratios in float32 before widening."""
    s_in, s_out, a = np.float32(q_in.scale), np.float32(q_out.scale), np.float32(alpha)
    m_id, sh_id = quantize_multiplier(float(s_in / s_out))
    m_alpha, sh_alpha = quantize_multiplier(float(s_in * a / s_out))
    x = np.arange(-128, 128, dtype=np.int64) - q_in.zero_point
    pos = requantize(x, m_id, sh_id)
    neg = requantize(x, abs(m_alpha), sh_alpha) * (-1 if m_alpha < 0 else 1)
    return np.clip(q_out.zero_point + np.where(x >= 0, pos, neg), -128, 127).astype(np.int8)


def requantize_table(q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
    """TFLite-Micro QUANTIZE int8 -> int8 (its Requantize): the ratio of the scales widened to double."""
    m, sh = quantize_multiplier(float(q_in.scale) / float(q_out.scale))
    x = np.arange(-128, 128, dtype=np.int64) - q_in.zero_point
    return np.clip(requantize(x, m, sh) + q_out.zero_point, -128, 127).astype(np.int8)


def clamp_table(q: QuantParams, lo: float | None, hi: float | None) -> np.ndarray:
    """Relu/Clip in the input's own quantization (what TFLite-Micro's RELU/RELU6 compute then)."""
    amin, amax = activation_range(q, lo, hi)
    return np.clip(np.arange(-128, 128), amin, amax).astype(np.int8)


class LookupTableHandler(OpHandler):
    op = "lut"
    onnx_ops = ("Tanh", "Sigmoid", "LeakyRelu")

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        fn = {"Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyRelu": "leaky_relu"}[node.op_type]
        attrs = {"fn": fn}
        if fn == "leaky_relu":
            attrs["alpha"] = float(node.attr("alpha", 0.01))
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(node.inputs[0])], [ctx.tensor(node.outputs[0])],
                          attrs=attrs, origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        q_in = graph.tensors[node.inputs[0]].quant
        out = graph.tensors[node.output]
        fn = node.attrs["fn"]
        if fn == "tanh":
            out.quant, table = TANH_QUANT, tanh_table(q_in)
        elif fn == "sigmoid":
            out.quant, table = SIGMOID_QUANT, sigmoid_table(q_in)
        elif fn == "requantize":
            out.quant = calibrated_quant(graph, node.output, ranges)
            if out.quant == q_in:  # already in the wanted quantization: the bytes can stay where they are
                node.op = "reshape"
                return
            table = requantize_table(q_in, out.quant)
        elif fn == "leaky_relu":
            out.quant = calibrated_quant(graph, node.output, ranges)
            table = leaky_relu_table(q_in, out.quant, node.attrs["alpha"])
        else:  # "clamp": a Relu/Clip that could not be fused keeps the input's quantization
            out.quant = q_in
            table = clamp_table(q_in, *node.attrs["act"])
        node.qparams = {"table": table}

    def reference(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [node.qparams["table"][inputs[0].astype(np.int16) + 128]]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        return KernelCall(
            template="lut.c.j2",
            kernel="own loop (256-entry table)",
            context={"size": graph.tensors[node.output].size, "fn": node.attrs["fn"]},
            arrays=[CArray("table", "int8_t", node.qparams["table"], f"{node.attrs['fn']}: output code for input code - 128")],
        )
