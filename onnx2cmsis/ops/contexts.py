"""What a handler's import and export see: the model node (`OnnxNodeView`), the importer
(`ImportContext`) and the TFLite writer (`TfliteContext`). Part of the handler interface
(ops/base.py, which re-exports them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.arith.rules import QuantParams
from onnx2cmsis.ir.tensor import ConstQuant


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
    """What the ONNX importer offers a handler's `from_onnx`.

    Logical shapes and axes leave out the batch dimension: (C, W) for an NCW value. A handler asks
    for each input in the physical layout it computes on by listing the logical axes outer first:
    `tensor(x, (1, 0))` is a (C, W) value stored time-major as (W, C), the default for rank 2."""

    def logical_shape(self, value: str) -> tuple[int, ...]:
        """The model's shape of a value without the batch dimension, e.g. (C, W) for NCW."""

    def full_shape(self, value: str) -> tuple[int, ...]:
        """The model's shape including the first (batch) dimension."""

    def const(self, value: str) -> np.ndarray | None:
        """The value as a float/int array when it is a constant, else None."""

    def is_read(self, value: str) -> bool:
        """Whether a model node or output reads the value (an optional output may go unused)."""

    def const_quant(self, value: str) -> ConstQuant | None:
        """How the model file quantized a constant (a QDQ model's weights and biases; `const` gives its
        float value), else None."""

    def activation_quant(self, value: str) -> QuantParams | None:
        """How the model file quantized a computed value (a QDQ model's Q/DQ pair on it), else None."""

    def tensor(self, value: str, axes: tuple[int, ...] | None = None, batched: bool = True) -> str:
        """The IR tensor holding the value in the layout `axes`; binds a node output to a new one."""

    def layout(self, value: str) -> tuple[int, ...]:
        """The axes the value is stored in now: elementwise ops keep it and so copy nothing."""

    def physical_shape(self, tensor: str) -> tuple[int, ...]: ...

    def new_tensor(self, shape: tuple[int, ...], hint: str, calib_name: str | None = None) -> str:
        """A fresh intermediate IR tensor: quantized by its producer, or from `calib_name`'s range."""

    def bind(self, value: str, tensor: str, axes: tuple[int, ...]) -> None:
        """Bind a node output to an IR tensor a handler made (new_tensor) that holds it with its full
        axes (batch included) in `axes` order, e.g. an LSTM's (T, directions, 1, H) Y to the (T, 2H)
        concat of its two directions with axes (0, 1, 3)."""

    def add_node(self, node: Node) -> None:
        """Append an IR node; its op must be one the registry has a handler for."""

    def delegate(self, op: str, node: OnnxNodeView) -> None:
        """Import `node` with the registry's handler for IR op `op` (a plugin that replaced it included):
        how a handler hands a node to another op family, never by instantiating its class."""

    def move(self, outputs: list[str], inputs: list[str], fn: Callable[[list[np.ndarray]], list[np.ndarray]]) -> bool:
        """Pure data movement (see ops/movement.py); False when the inputs come from different tensors."""


class TfliteContext(Protocol):
    """What a handler's `export_tflite` writes the op's TFLite form with (oracle/tflite_writer.py).

    `fb` is TFLite's flatbuffer schema module and `me` tflite-micro's model editor (the [verify]
    extra). A (W, C) IR tensor is a [1, 1, W, C] TFLite tensor, a vector (F,) is [1, F]."""

    fb: Any
    me: Any
    graph: Graph

    def activation(self, name: str, shape: list[int] | None = None) -> Any:
        """The TFLite tensor of an IR tensor (same quantization)."""

    def const(self, values: np.ndarray, dtype: int, name: str, quant: Any = None) -> Any: ...

    def op(self, code: int, inputs: list[Any], outputs: list[Any], options_type: int = 0, options: Any = None) -> None:
        """Append an operator."""

    def reshape(self, src: Any, dst: Any) -> None: ...

    def as_feature_map(self, name: str, output: bool = False) -> Any:
        """The tensor as [1, 1, W, C] (a vector is reshaped to/from [1, 1, 1, F])."""

    def padded(self, src: Any, node: Node) -> Any:
        """src with the node's window padding applied by PAD (the input zero point: CMSIS-NN's skipped taps)."""

    def fused(self, node: Node) -> int:
        """TFLite's fused activation code for node.attrs["act"] (NotExportable if it has none)."""
