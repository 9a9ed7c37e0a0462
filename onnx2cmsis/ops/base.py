"""The op-handler interface. Built-in ops and plugins implement exactly this.

A handler owns everything about one op family, so a reader finds it in one place:
  - import: `from_onnx` turns a model node into canonical IR nodes (through `ImportContext`, never a
    protobuf),
  - the shape rule: `output_shapes`,
  - quantization: `quantize` fixes output quantization and derives the integer parameters,
  - the integer reference: `reference`, numpy that is bit-exact with the CMSIS-NN arithmetic,
  - kernel choice and C emission: `emit` returns a `KernelCall` rendered by a template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.quant.rules import QuantParams, activation_quant, activation_range


@dataclass(frozen=True)
class OnnxNodeView:
    """A model node as handlers see it: attributes already decoded to Python values."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    @property
    def where(self) -> str:
        return f"node '{self.name}' ({self.op_type})"


class ImportContext(Protocol):
    """What the ONNX importer offers a handler's `from_onnx`."""

    def logical_shape(self, value: str) -> tuple[int, ...]:
        """The model's shape of a value without the batch dimension, e.g. (C, W) for NCW."""

    def const(self, value: str) -> np.ndarray | None:
        """The value as a float/int array when it is a constant, else None."""

    def tensor(self, value: str) -> str:
        """The IR tensor (physical, channel-last) that stands for a model value."""

    def new_tensor(self, shape: tuple[int, ...], hint: str, calib_name: str | None = None) -> str:
        """A fresh intermediate IR tensor: quantized by its producer, or from `calib_name`'s range."""

    def add_node(self, node: Node) -> None: ...


@dataclass
class CArray:
    """A constant array the generated C needs (weights, bias, multipliers, tables)."""

    suffix: str  # the C name is <layer identifier>_<suffix>
    ctype: str  # int8_t, int32_t, ...
    values: np.ndarray
    comment: str = ""
    guard: str | None = None  # a preprocessor condition, e.g. "defined(ARM_MATH_MVEI)"
    weights: bool = True  # counts as weight bytes in the report


@dataclass
class KernelCall:
    """How one node becomes C: a template under templates/ops/ and what it needs."""

    template: str
    kernel: str  # the function (or "own loop") that does the work, for the report
    context: dict[str, Any] = field(default_factory=dict)
    arrays: list[CArray] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)  # CMSIS-NN entry points called
    scratch_bytes: int = 0  # the largest over pure C, DSP and MVE builds
    macs: int = 0


class OpHandler:
    """Base class with the defaults most ops want; subclasses override what differs."""

    op: str = ""
    onnx_ops: tuple[str, ...] = ()

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        raise UnsupportedOpError(f"operator {node.op_type} is not supported", node.where)

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        """Default: each output takes the calibrated range of the model value it stands for."""
        for name in node.outputs:
            t = graph.tensors[name]
            if t.quant is None:
                t.quant = calibrated_quant(graph, name, ranges)

    def reference(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        raise NotImplementedError

    def aliases_input(self, node: Node) -> bool:
        """True when the output is the input's bytes (a view): no code, no arena."""
        return False


def calibrated_quant(graph: Graph, tensor: str, ranges: dict[str, tuple[float, float]]) -> QuantParams:
    t = graph.tensors[tensor]
    key = t.calib_name or t.name
    if key not in ranges:
        raise KeyError(f"no calibration range for tensor '{key}'")
    lo, hi = ranges[key]
    return activation_quant(lo, hi)


def fused_activation_range(node: Node, graph: Graph) -> tuple[int, int]:
    """The int8 clamp of a fused Relu/Clip (node.attrs["act"]) in the node's output quantization."""
    q = graph.tensors[node.output].quant
    assert q is not None
    lo, hi = node.attrs.get("act", (None, None))
    return activation_range(q, lo, hi)


def int_attr_list(node: OnnxNodeView, key: str, default: list[int], length: int) -> list[int]:
    v = node.attr(key)
    if v is None:
        return list(default)
    v = [int(i) for i in v]
    if len(v) != length:
        raise UnsupportedOpError(f"attribute {key}={v} has {len(v)} values, expected {length} (1D)", node.where)
    return v


def same_pads(in_w: int, kernel: int, stride: int, dilation: int, auto_pad: str) -> tuple[int, int]:
    """ONNX auto_pad SAME_UPPER/SAME_LOWER (TFLite SAME is SAME_UPPER: extra tap on the right)."""
    eff_k = (kernel - 1) * dilation + 1
    out = -(-in_w // stride)
    total = max((out - 1) * stride + eff_k - in_w, 0)
    small = total // 2
    return (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)


def explicit_pads(node: OnnxNodeView, in_w: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    auto_pad = node.attr("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(in_w, kernel, stride, dilation, auto_pad)
    if auto_pad == "VALID":
        return 0, 0
    pads = int_attr_list(node, "pads", [0, 0], 2)
    if min(pads) < 0:
        raise UnsupportedOpError(f"negative pads {pads} (cropping) are not supported", node.where)
    return pads[0], pads[1]


def check_uint16(where: str, **dims: int) -> None:
    """CMSIS-NN casts dimensions and padding to uint16: refuse what would be truncated."""
    for key, v in dims.items():
        if not 0 <= v <= 0xFFFF:
            raise UnsupportedOpError(f"{key}={v} exceeds the 65535 that CMSIS-NN's uint16 arguments hold", where)
