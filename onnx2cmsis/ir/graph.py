"""The canonical 1D graph: the contract between frontends, passes, quantization and codegen.

Shapes are *physical*: the batch dimension is gone (the C processes one sample) and activations are
channel-last, so a 1D feature map is (W, C), a vector (F,). Float parameters (weights, bias) live in
`Node.consts`; the integer parameters quantization derives from them live in `Node.qparams`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnx2cmsis.ir.target import DEFAULT_API, CmsisApi
from onnx2cmsis.ir.tensor import FileQuantization, QuantParams, Tensor

__all__ = ["DENSE_WEIGHTS", "WEIGHT_GRANULARITIES", "Graph", "Node", "QuantOptions", "QuantParams", "Tensor", "FileQuantization"]


@dataclass
class Node:
    name: str  # as the model names it: untrusted text, sanitized by codegen
    op: str  # canonical op: the key of a handler in the registry
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    qparams: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # the model op type(s) this node stands for, for reports
    # Model values inside the op whose float ranges its quantization needs (an LSTM's cell state at
    # every step): computed beside it in the float model calibration runs (its handler's
    # `float_internals`), calibrated like any model value.
    internal_values: tuple[str, ...] = ()

    @property
    def output(self) -> str:
        return self.outputs[0]

    @property
    def where(self) -> str:
        """How errors name the node: its model name and the model op(s) it stands for."""
        return f"node '{self.name}' ({self.origin})"


@dataclass(frozen=True)
class QuantOptions:
    """How the user asked the model to be quantized (read by handlers in `quantize`)."""

    # "per-tensor": one weight scale per dense layer; "per-channel": one per output feature, as TFLite
    # 2.21's converter writes FULLY_CONNECTED; "auto": per layer, whichever gives the smaller output
    # error on the calibration set (tuning/search.py writes the choice to node.attrs["weights"]).
    dense_weights: str = "auto"
    # How each value's float range is chosen from the calibration samples (quant/ranges.py).
    calibration_method: str = "minmax"
    # The activations' width: "int8" (TFLite int8) or "int16" (TFLite 16x8: int16 activations with
    # zero point 0, int8 weights, int64 biases), or "auto" (per layer: Tensor.bits, chosen by
    # tuning/auto_precision.py). Weights are int8 either way.
    precision: str = "int8"
    # Let a value's range start where its reader stops telling values apart (OpHandler.input_floor: a
    # softmax's input), not at the lowest value calibration saw (tuning/range_floors.py).
    range_floors: bool = True

    @property
    def activation_bits(self) -> int:
        return 16 if self.precision == "int16" else 8

    def weights_of(self, node: Node) -> str:
        """The weight granularity a node is quantized with: its own (chosen by a search), else the option."""
        chosen = node.attrs.get("weights")
        if chosen:
            return chosen
        if self.dense_weights != "auto":
            return self.dense_weights
        # where auto's search starts: what TFLite's converter writes at 16x8, where int8 weight rounding
        # is most of the error; per tensor at int8, where it is not
        return "per-channel" if self.precision == "int16" else "per-tensor"


WEIGHT_GRANULARITIES = ("per-tensor", "per-channel")
DENSE_WEIGHTS = (*WEIGHT_GRANULARITIES, "auto")


@dataclass
class Graph:
    tensors: dict[str, Tensor]
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    model_input_shapes: list[tuple[int, ...]] = field(default_factory=list)  # as the model declares
    model_output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    # the model's own names of its inputs and outputs, in its order (untrusted text: comments and
    # NAME.json only; how .npz samples name the inputs)
    model_input_names: list[str] = field(default_factory=list)
    model_output_names: list[str] = field(default_factory=list)
    # How each model input holds a (steps, channels) window, in input order: "time-major" (W, C)
    # (channels interleaved, as sensors deliver them; Keras), "channel-major" (C, W) (PyTorch), or
    # "flat" (one channel, or no time axis).
    input_layouts: list[str] = field(default_factory=list)
    # The CMSIS-NN API level the C is emitted for; handlers whose call or scratch size differs between
    # levels ask its capabilities in emit() (e.g. cmsis_api.conv_upscale_dims), never its name.
    cmsis_api: CmsisApi = DEFAULT_API
    quant_options: QuantOptions = QuantOptions()
    # What a quantized model file (QDQ) fixed: each model value's quantization by name (a tensor
    # takes its calib_name's instead of a calibrated range's) and the quantized constants; None for
    # a float model.
    file_quant: FileQuantization | None = None

    @property
    def input_layout(self) -> str:
        """The first input's layout: what a single-input model's window and stream are described by."""
        return self.input_layouts[0] if self.input_layouts else "flat"

    @property
    def single_io(self) -> bool:
        """One input and one output: the C interface of docs/c-interface.md's first form."""
        return len(self.inputs) == 1 and len(self.outputs) == 1

    @property
    def input_names(self) -> list[str]:
        return self.model_input_names or list(self.inputs)

    @property
    def output_names(self) -> list[str]:
        return self.model_output_names or list(self.outputs)

    def producer(self, tensor: str) -> Node | None:
        for n in self.nodes:
            if tensor in n.outputs:
                return n
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def is_boundary(self, tensor: str) -> bool:
        return tensor in self.inputs or tensor in self.outputs

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer (and the graph outputs) read `new` instead of `old`."""
        for n in self.nodes:
            n.inputs = [new if t == old else t for t in n.inputs]
        self.outputs = [new if t == old else t for t in self.outputs]

    def remove_unused_tensors(self) -> None:
        used = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            used.update(n.inputs)
            used.update(n.outputs)
        self.tensors = {k: v for k, v in self.tensors.items() if k in used}
