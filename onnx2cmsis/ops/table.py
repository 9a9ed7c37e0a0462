"""Elementwise int8 functions as 256-entry lookup tables: Tanh, Sigmoid, LeakyRelu, standalone Relu/Clip.

CMSIS-NN has no int8 tanh/sigmoid; TFLite-Micro runs reference integer kernels. An int8 -> int8
function has only 256 inputs, so the table is computed at conversion time by the very integer
algorithm TFLite-Micro runs (gemmlowp fixed point: arith/fixedpoint.py) and the C is one indexed load
per element: exact by construction, and fast.

At int16 a table would take 128 KiB: LeakyRelu, requantize and the clamp are then an own loop with
TFLite-Micro's arithmetic (`elementwise_loop.c.j2`, also the requantize between int8 and int16 of a
mixed-precision model), Tanh and Sigmoid TFLite's 16x8 algorithm with its
interpolated sigmoid table (arith/sigmoid16.py, `sigmoid_s16.c.j2`).
"""

from __future__ import annotations

import math

import numpy as np

from onnx2cmsis.errors import NotExportable
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (
    CArray,
    ImportContext,
    KernelCall,
    OnnxNodeView,
    OpHandler,
    TfliteContext,
    TimeGeometry,
    calibrated_quant,
    elementwise_io,
)
from onnx2cmsis.arith.sigmoid16 import SIGMOID_TABLE, input_scaling, sigmoid_s16, tanh_s16
from onnx2cmsis.arith.fixedpoint import logistic_q0, tanh_q0
from onnx2cmsis.arith.rules import (
    QuantParams,
    activation_range,
    divide_by_power_of_two,
    quantize_multiplier,
    int_range,
    requantize,
    saturate,
)
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


def requantize_multiplier(q_in: QuantParams, q_out: QuantParams) -> tuple[int, int]:
    """TFLite-Micro QUANTIZE's (its Requantize) multiplier: the ratio of the scales widened to double."""
    return quantize_multiplier(float(q_in.scale) / float(q_out.scale))


def leaky_relu_table(q_in: QuantParams, q_out: QuantParams, alpha: float) -> np.ndarray:
    """TFLite-Micro LEAKY_RELU for all 256 int8 codes."""
    (m_id, sh_id), (m_alpha, sh_alpha) = leaky_relu_multipliers(q_in, q_out, alpha)
    x = np.arange(-128, 128, dtype=np.int64) - q_in.zero_point
    pos = requantize(x, m_id, sh_id)
    neg = requantize(x, abs(m_alpha), sh_alpha) * (-1 if m_alpha < 0 else 1)
    return np.clip(q_out.zero_point + np.where(x >= 0, pos, neg), -128, 127).astype(np.int8)


def requantize_table(q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
    """TFLite-Micro QUANTIZE int8 -> int8 for all 256 codes."""
    m, sh = requantize_multiplier(q_in, q_out)
    x = np.arange(-128, 128, dtype=np.int64) - q_in.zero_point
    return np.clip(requantize(x, m, sh) + q_out.zero_point, -128, 127).astype(np.int8)


def clamp_table(q: QuantParams, lo: float | None, hi: float | None) -> np.ndarray:
    """Relu/Clip in the input's own quantization (what TFLite-Micro's RELU/RELU6 compute then)."""
    amin, amax = activation_range(q, lo, hi)
    return np.clip(np.arange(-128, 128), amin, amax).astype(np.int8)


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
        q_in = graph.tensors[node.inputs[0]].quant
        out = graph.tensors[node.output]
        fn = node.attrs["fn"]
        if fn == "requantize":
            out.quant = calibrated_quant(graph, node.output, ranges)
            if out.quant == q_in:  # already in the wanted quantization: the bytes can stay where they are
                node.op = "reshape"
                return
        if q_in.bits == 16 or out.bits == 16:
            self._quantize_s16(node, graph, ranges)
            return
        if fn == "tanh":
            out.quant, table = TANH_QUANT, tanh_table(q_in)
        elif fn == "sigmoid":
            out.quant, table = SIGMOID_QUANT, sigmoid_table(q_in)
        elif fn == "requantize":
            table = requantize_table(q_in, out.quant)
        elif fn == "leaky_relu":
            out.quant = calibrated_quant(graph, node.output, ranges)
            table = leaky_relu_table(q_in, out.quant, node.attrs["alpha"])
        else:  # "clamp": a Relu/Clip that could not be fused keeps the input's quantization
            out.quant = q_in
            table = clamp_table(q_in, *node.attrs["act"])
        node.qparams = {"table": table}

    def _quantize_s16(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        """int16 -> int16 (and a requantize between int8 and int16, TFLite's QUANTIZE) as multipliers for
        the own loop: y = requantize(x - zp_in) + zp_out on each side of 0 (one multiplier for both
        unless LeakyRelu), clamped to `range`."""
        q_in = graph.tensors[node.inputs[0]].quant
        out = graph.tensors[node.output]
        fn = node.attrs["fn"]
        if fn in ("tanh", "sigmoid"):
            out.quant = UNIT_QUANT_S16
            node.qparams = {"scaling": input_scaling(q_in.scale, fn)}
            return
        if fn == "clamp":
            out.quant = q_in
            node.qparams = {"identity": None, "range": activation_range(q_in, *node.attrs["act"])}
            return
        out.quant = calibrated_quant(graph, node.output, ranges)
        if fn == "leaky_relu":  # rounded as the int8 tables round them
            identity, negative = leaky_relu_multipliers(q_in, out.quant, node.attrs["alpha"])
        else:
            identity = negative = requantize_multiplier(q_in, out.quant)
        node.qparams = {"identity": identity, "negative": negative, "range": int_range(out.quant.bits)}

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if "table" in node.qparams:  # elementwise throughout: a batch is one more axis
            return [node.qparams["table"][inputs[0].astype(np.int16) + 128]]
        qp = node.qparams
        if "scaling" in qp:
            fn = tanh_s16 if node.attrs["fn"] == "tanh" else sigmoid_s16
            return [fn(inputs[0], *qp["scaling"])]
        q_in, q_out = graph.tensors[node.inputs[0]].quant, graph.tensors[node.output].quant
        x = inputs[0].astype(np.int64) - q_in.zero_point
        if qp["identity"] is not None:
            (m_id, sh_id), (m_neg, sh_neg) = qp["identity"], qp["negative"]
            neg = requantize(x, abs(m_neg), sh_neg) * (-1 if m_neg < 0 else 1)
            x = np.where(x >= 0, requantize(x, m_id, sh_id), neg)
        return [saturate(x + q_out.zero_point, q_out.bits, *qp["range"])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        if "scaling" in node.qparams:
            multiplier, shift = node.qparams["scaling"]
            return KernelCall(
                template="sigmoid_s16.c.j2", kernel="own loop (interpolated table)",
                context={"size": graph.tensors[node.output].size, "fn": node.attrs["fn"], "multiplier": multiplier,
                         "shift": shift, "rounding": (1 << (shift - 1)) if shift else 0},
                arrays=[CArray("sigmoid", "uint16_t", SIGMOID_TABLE, "sigmoid(i / 24) in Q0.16 (TFLite's)")])
        if "table" not in node.qparams:
            qp = node.qparams
            context = {"size": graph.tensors[node.output].size, "fn": node.attrs["fn"], "act_min": qp["range"][0],
                       "act_max": qp["range"][1], "identity": qp["identity"],
                       "in_offset": -graph.tensors[node.inputs[0]].quant.zero_point,
                       "out_offset": graph.tensors[node.output].quant.zero_point}
            if qp["identity"] is not None:
                m_neg, sh_neg = qp["negative"]
                context.update(negative=(abs(m_neg), sh_neg), negate=m_neg < 0)
            return KernelCall(template="elementwise_loop.c.j2", kernel="own loop", context=context)
        return KernelCall(
            template="lut.c.j2",
            kernel="own loop (256-entry table)",
            context={"size": graph.tensors[node.output].size, "fn": node.attrs["fn"]},
            arrays=[CArray("table", "int8_t", node.qparams["table"], f"{node.attrs['fn']}: output code for input code - 128")],
        )

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb, fn = ex.fb, node.attrs["fn"]
        io = ([ex.activation(node.inputs[0])], [ex.activation(node.output)])
        if fn == "tanh":
            ex.op(fb.BuiltinOperator.TANH, *io)
        elif fn == "sigmoid":
            ex.op(fb.BuiltinOperator.LOGISTIC, *io)
        elif fn == "leaky_relu":
            opts = fb.LeakyReluOptionsT()
            opts.alpha = node.attrs["alpha"]
            ex.op(fb.BuiltinOperator.LEAKY_RELU, *io, fb.BuiltinOptions.LeakyReluOptions, opts)
        elif fn == "requantize":
            ex.op(fb.BuiltinOperator.QUANTIZE, *io)
        else:
            # TFLite-Micro has no RELU_N1_TO_1 kernel
            codes = {(0.0, None): fb.BuiltinOperator.RELU, (0.0, 6.0): fb.BuiltinOperator.RELU6}
            lo, hi = node.attrs["act"]
            key = (None if lo is None else float(lo), None if hi is None else float(hi))
            if key not in codes:
                raise NotExportable(f"clip range [{lo}, {hi}] has no TFLite operator", node.name)
            ex.op(codes[key], *io)
