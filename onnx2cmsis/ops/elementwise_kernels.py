"""The three integer forms an elementwise function takes, shared by the table and requantize handlers.

A handler's `quantize` picks one and stores it as `node.qparams["kernel"]`; its reference and its C
then come from that one object, so neither handler branches on what it computed:
  - `CodeTable`: int8 -> int8, a 256-entry table indexed by the input code (one load per element),
  - `SigmoidS16`: TFLite's 16x8 tanh/logistic, the interpolated sigmoid table (arith/sigmoid16.py),
  - `RequantizeLoop`: an own loop with TFLite-Micro's arithmetic, y = requantize(x - zp_in) + zp_out
    with one multiplier for each sign of x (LeakyRelu; the same for a requantize), clamped; without
    multipliers, a clamp in the input's own quantization.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx2cmsis.arith.rules import QuantParams, requantize, saturate
from onnx2cmsis.arith.sigmoid16 import SIGMOID_TABLE, sigmoid_s16, tanh_s16
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import CArray, KernelCall


@dataclass(frozen=True, eq=False)
class CodeTable:
    fn: str  # what the C comment calls it
    table: np.ndarray  # int8[256]: the output code of input code - 128

    def reference(self, x: np.ndarray, q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
        return self.table[x.astype(np.int16) + 128]  # elementwise: a batch is one more axis

    def call(self, node: Node, graph: Graph) -> KernelCall:
        return KernelCall(template="lut.c.j2", kernel="own loop (256-entry table)",
                          context={"size": graph.tensors[node.output].size, "fn": self.fn},
                          arrays=[CArray("table", "int8_t", self.table, f"{self.fn}: output code for input code - 128")])


@dataclass(frozen=True)
class SigmoidS16:
    fn: str  # "tanh" or "sigmoid"
    multiplier: int  # TFLite-Micro's input scaling (arith.sigmoid16.input_scaling)
    shift: int

    def reference(self, x: np.ndarray, q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
        return (tanh_s16 if self.fn == "tanh" else sigmoid_s16)(x, self.multiplier, self.shift)

    def call(self, node: Node, graph: Graph) -> KernelCall:
        return KernelCall(
            template="sigmoid_s16.c.j2", kernel="own loop (interpolated table)",
            context={"size": graph.tensors[node.output].size, "fn": self.fn, "multiplier": self.multiplier,
                     "shift": self.shift, "rounding": (1 << (self.shift - 1)) if self.shift else 0},
            arrays=[CArray("sigmoid", "uint16_t", SIGMOID_TABLE, "sigmoid(i / 24) in Q0.16 (TFLite's)")])


@dataclass(frozen=True)
class RequantizeLoop:
    fn: str
    clamp: tuple[int, int]  # the output codes' range
    identity: tuple[int, int] | None = None  # (multiplier, shift) for x >= 0; None: no rescaling at all
    negative: tuple[int, int] | None = None  # for x < 0 (a negative multiplier negates)

    def reference(self, x: np.ndarray, q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
        x = x.astype(np.int64) - q_in.zero_point
        if self.identity is not None and self.negative is not None:
            (m_id, sh_id), (m_neg, sh_neg) = self.identity, self.negative
            neg = requantize(x, abs(m_neg), sh_neg) * (-1 if m_neg < 0 else 1)
            x = np.where(x >= 0, requantize(x, m_id, sh_id), neg)
        return saturate(x + q_out.zero_point, q_out.bits, *self.clamp)

    def call(self, node: Node, graph: Graph) -> KernelCall:
        context = {"size": graph.tensors[node.output].size, "fn": self.fn, "act_min": self.clamp[0],
                   "act_max": self.clamp[1], "identity": self.identity,
                   "in_offset": -graph.tensors[node.inputs[0]].quant.zero_point,
                   "out_offset": graph.tensors[node.output].quant.zero_point}
        if self.identity is not None and self.negative is not None:
            m_neg, sh_neg = self.negative
            context.update(negative=(abs(m_neg), sh_neg), negate=m_neg < 0)
        return KernelCall(template="elementwise_loop.c.j2", kernel="own loop", context=context)


ElementwiseKernel = CodeTable | SigmoidS16 | RequantizeLoop


def run_kernel(node: Node, graph: Graph, x: np.ndarray) -> np.ndarray:
    """The node's stored kernel on a batch of input codes."""
    kernel: ElementwiseKernel = node.qparams["kernel"]
    return kernel.reference(x, graph.tensors[node.inputs[0]].quant, graph.tensors[node.output].quant)
